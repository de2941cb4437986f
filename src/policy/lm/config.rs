//! The architecture of a Llama-family checkpoint, read from a Hugging Face `config.json` or from
//! a GGUF file's metadata.
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::formats::gguf::Gguf;

/// The supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Llama 2/3.x, SmolLM, TinyLlama: RMSNorm, SwiGLU, RoPE, grouped-query attention.
    Llama,
    /// Qwen2 / Qwen2.5: Llama with biases on the q, k and v projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm of queries and keys, an explicit head size, no biases.
    Qwen3,
}

pub const SUPPORTED: &str = "llama, qwen2, qwen3";

impl Arch {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" | "mistral" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            other => Err(Error::input(format!(
                "model architecture {other:?} is not supported (supported: {SUPPORTED})"
            ))),
        }
    }

    /// The name in `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// The class name in `config.json`'s `architectures`.
    pub fn class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// Llama 3's frequency-dependent RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// What the blocks need to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    pub arch: Arch,
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_llama3: Option<Llama3Scaling>,
    pub rms_eps: f64,
    pub tied: bool,
    /// Biases on q, k and v (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of q and k (Qwen3).
    pub qk_norm: bool,
    pub max_positions: usize,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

fn field<'a>(cfg: &'a Json, key: &str, what: &str) -> Result<&'a Json> {
    cfg.get(key)
        .ok_or_else(|| Error::input(format!("{what}: config.json has no {key:?}")))
}

fn usize_of(cfg: &Json, key: &str, what: &str) -> Result<usize> {
    field(cfg, key, what)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| {
            Error::input(format!(
                "{what}: config.json's {key:?} is not a whole number"
            ))
        })
}

fn ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl LmConfig {
    /// From a Hugging Face `config.json` (its older `rope_theta` / `rope_scaling` and newer
    /// `rope_parameters` forms). `what` names the file in errors.
    pub fn from_hf(cfg: &Json, what: &str) -> Result<Self> {
        let model_type = field(cfg, "model_type", what)?
            .as_str()
            .ok_or_else(|| Error::input(format!("{what}: model_type is not a string")))?;
        let arch = Arch::parse(model_type)?;
        let hidden = usize_of(cfg, "hidden_size", what)?;
        let heads = usize_of(cfg, "num_attention_heads", what)?;
        let kv_heads = cfg
            .get("num_key_value_heads")
            .and_then(Json::as_u64)
            .map_or(heads, |v| v as usize);
        let head_dim = cfg
            .get("head_dim")
            .and_then(Json::as_u64)
            .map_or(hidden / heads.max(1), |v| v as usize);
        // Newer configs: rope_parameters {rope_theta, rope_type, ...}; older: rope_theta plus
        // an optional rope_scaling {rope_type | type, ...}.
        let params = cfg.get("rope_parameters").filter(|v| v.is_object());
        let scaling = params.or(cfg.get("rope_scaling").filter(|v| v.is_object()));
        let rope_theta = params
            .and_then(|p| p.get("rope_theta"))
            .or(cfg.get("rope_theta"))
            .and_then(Json::as_f64)
            .unwrap_or(10_000.0);
        let rope_llama3 = match scaling {
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or(s.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("default");
                match ty {
                    "default" => None,
                    "llama3" => {
                        let num = |k: &str| {
                            s.get(k).and_then(Json::as_f64).ok_or_else(|| {
                                Error::input(format!("{what}: llama3 rope scaling has no {k:?}"))
                            })
                        };
                        Some(Llama3Scaling {
                            factor: num("factor")?,
                            low_freq_factor: num("low_freq_factor")?,
                            high_freq_factor: num("high_freq_factor")?,
                            original_max_position_embeddings: num(
                                "original_max_position_embeddings",
                            )?,
                        })
                    }
                    other => {
                        return Err(Error::input(format!(
                        "{what}: rope type {other:?} is not supported (supported: default, llama3)"
                    )))
                    }
                }
            }
            None => None,
        };
        let c = LmConfig {
            arch,
            vocab: usize_of(cfg, "vocab_size", what)?,
            hidden,
            ffn: usize_of(cfg, "intermediate_size", what)?,
            layers: usize_of(cfg, "num_hidden_layers", what)?,
            heads,
            kv_heads,
            head_dim,
            rope_theta,
            rope_llama3,
            rms_eps: cfg
                .get("rms_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-6),
            tied: cfg
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(arch != Arch::Llama),
            qkv_bias: match arch {
                Arch::Qwen2 => true,
                Arch::Qwen3 => false,
                Arch::Llama => cfg
                    .get("attention_bias")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            },
            qk_norm: arch == Arch::Qwen3,
            max_positions: cfg
                .get("max_position_embeddings")
                .and_then(Json::as_u64)
                .unwrap_or(2048) as usize,
            bos: ids(cfg.get("bos_token_id")).first().copied(),
            eos: ids(cfg.get("eos_token_id")),
        };
        c.check(what)?;
        Ok(c)
    }

    /// From a GGUF file's metadata (`{arch}.block_count`, …); `tied` when it has no
    /// `output.weight`.
    pub fn from_gguf(g: &Gguf, what: &str) -> Result<Self> {
        let arch_name = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::input(format!("{what}: no general.architecture")))?;
        let arch = Arch::parse(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let num = |k: &str| -> Result<usize> {
            g.get(&key(k))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| Error::input(format!("{what}: no {}", key(k))))
        };
        let hidden = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let head_dim = num("attention.key_length").unwrap_or(hidden / heads.max(1));
        let vocab = match num("vocab_size") {
            Ok(v) => v,
            Err(_) => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(<[_]>::len)
                .ok_or_else(|| Error::input(format!("{what}: no vocabulary size")))?,
        };
        let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let c = LmConfig {
            arch,
            vocab,
            hidden,
            ffn: num("feed_forward_length")?,
            layers: num("block_count")?,
            heads,
            kv_heads: num("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rope_theta: g
                .get(&key("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0),
            // Llama 3's scaling travels as the rope_freqs tensor (see `Lm::load_gguf`).
            rope_llama3: None,
            rms_eps: g
                .get(&key("attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5),
            tied: !g.tensors.contains_key("output.weight"),
            qkv_bias: g.tensors.contains_key("blk.0.attn_q.bias"),
            qk_norm: g.tensors.contains_key("blk.0.attn_q_norm.weight"),
            max_positions: num("context_length").unwrap_or(2048),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        c.check(what)?;
        Ok(c)
    }

    fn check(&self, what: &str) -> Result<()> {
        let ok = self.heads > 0
            && self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim > 0
            && self.head_dim.is_multiple_of(2)
            && self.layers > 0
            && self.vocab > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::input(format!(
                "{what}: inconsistent architecture ({} heads, {} KV heads, head size {}, {} layers)",
                self.heads, self.kv_heads, self.head_dim, self.layers
            )))
        }
    }

    /// The `config.json` of an exported checkpoint (the older `rope_theta` form, which every
    /// transformers version reads).
    pub fn to_hf(&self) -> Json {
        let mut c = serde_json::json!({
            "architectures": [self.arch.class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "float32",
        });
        if self.arch == Arch::Llama {
            c["attention_bias"] = self.qkv_bias.into();
            c["mlp_bias"] = false.into();
        }
        if let Some(s) = self.rope_llama3 {
            c["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        if let Some(b) = self.bos {
            c["bos_token_id"] = b.into();
        }
        match self.eos.as_slice() {
            [] => {}
            [e] => c["eos_token_id"] = (*e).into(),
            many => c["eos_token_id"] = many.to_vec().into(),
        }
        c
    }
}
