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

/// A Hugging Face `config.json`: the keys the blocks need (the rest is ignored).
#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    /// Newer configs: `{rope_theta, rope_type, …}`.
    rope_parameters: Option<HfRope>,
    /// Older configs: `{rope_type | type, …}` beside `rope_theta`.
    rope_scaling: Option<HfRope>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
}

/// RoPE's parameters or scaling.
#[derive(Deserialize)]
struct HfRope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

/// One token id or several (`eos_token_id` may be either).
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn ids(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// Llama 3's scaling from a `rope_scaling` / `rope_parameters` section (none for the default
/// type; any other type is refused).
fn llama3_scaling(s: &HfRope, what: &str) -> Result<Option<Llama3Scaling>> {
    let ty = s
        .rope_type
        .as_deref()
        .or(s.legacy_type.as_deref())
        .unwrap_or("default");
    match ty {
        "default" => Ok(None),
        "llama3" => {
            let num = |v: Option<f64>, k: &str| {
                v.ok_or_else(|| Error::input(format!("{what}: llama3 rope scaling has no {k:?}")))
            };
            Ok(Some(Llama3Scaling {
                factor: num(s.factor, "factor")?,
                low_freq_factor: num(s.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: num(s.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: num(
                    s.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            }))
        }
        other => Err(Error::input(format!(
            "{what}: rope type {other:?} is not supported (supported: default, llama3)"
        ))),
    }
}

/// The largest sizes a checkpoint may declare: far above any model this trainer runs, far
/// below what would make a bad header allocate without bound.
const MAX_VOCAB: usize = 1 << 22;
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_POSITIONS: usize = 1 << 22;
/// Parameters at most (embeddings and blocks): 2^36 f32 values are 256 GiB.
const MAX_PARAMETERS: u128 = 1 << 36;

impl LmConfig {
    /// From a Hugging Face `config.json` (its older `rope_theta` / `rope_scaling` and newer
    /// `rope_parameters` forms). `what` names the file in errors.
    pub fn from_hf(cfg: &Json, what: &str) -> Result<Self> {
        let c: HfConfig = serde_path_to_error::deserialize(cfg)
            .map_err(|e| Error::input(format!("{what}: {e}")))?;
        let arch = Arch::parse(&c.model_type)?;
        let heads = c.num_attention_heads;
        let scaling = c.rope_parameters.as_ref().or(c.rope_scaling.as_ref());
        let rope_theta = c
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(c.rope_theta)
            .unwrap_or(10_000.0);
        let rope_llama3 = match scaling {
            Some(s) => llama3_scaling(s, what)?,
            None => None,
        };
        let lm = LmConfig {
            arch,
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            ffn: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads,
            kv_heads: c.num_key_value_heads.unwrap_or(heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / heads.max(1)),
            rope_theta,
            rope_llama3,
            rms_eps: c.rms_norm_eps.unwrap_or(1e-6),
            tied: c.tie_word_embeddings.unwrap_or(arch != Arch::Llama),
            qkv_bias: match arch {
                Arch::Qwen2 => true,
                Arch::Qwen3 => false,
                Arch::Llama => c.attention_bias.unwrap_or(false),
            },
            qk_norm: arch == Arch::Qwen3,
            max_positions: c.max_position_embeddings.unwrap_or(2048),
            bos: c
                .bos_token_id
                .map(TokenIds::ids)
                .and_then(|ids| ids.first().copied()),
            eos: c.eos_token_id.map(TokenIds::ids).unwrap_or_default(),
        };
        lm.check(what)?;
        Ok(lm)
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

    /// Refuses an inconsistent architecture, and sizes no real model has, before anything is
    /// allocated for them.
    fn check(&self, what: &str) -> Result<()> {
        let bounds = [
            ("vocabulary", self.vocab, MAX_VOCAB),
            ("hidden size", self.hidden, MAX_WIDTH),
            ("feed-forward size", self.ffn, 4 * MAX_WIDTH),
            ("head size", self.head_dim, MAX_WIDTH),
            ("layers", self.layers, MAX_LAYERS),
            ("heads", self.heads, MAX_HEADS),
            ("KV heads", self.kv_heads, MAX_HEADS),
            ("positions", self.max_positions, MAX_POSITIONS),
        ];
        for (name, value, max) in bounds {
            if value > max {
                return Err(Error::input(format!(
                    "{what}: {name} {value} is beyond any supported model (at most {max})"
                )));
            }
        }
        let parameters = self.parameters();
        if parameters > MAX_PARAMETERS {
            return Err(Error::input(format!(
                "{what}: {parameters} parameters is beyond any supported model (at most {MAX_PARAMETERS})"
            )));
        }
        let ok = self.heads > 0
            && self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim > 0
            && self.head_dim.is_multiple_of(2)
            && self.layers > 0
            && self.vocab > 0
            && self.hidden > 0
            && self.ffn > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::input(format!(
                "{what}: inconsistent architecture ({} heads, {} KV heads, head size {}, {} layers)",
                self.heads, self.kv_heads, self.head_dim, self.layers
            )))
        }
    }

    /// The parameters the architecture declares (embeddings, attention and MLP weights and
    /// norms, the final norm, the head when untied; biases left out), in exact arithmetic.
    pub fn parameters(&self) -> u128 {
        let (v, h, f) = (self.vocab as u128, self.hidden as u128, self.ffn as u128);
        let (q, kv) = (
            self.heads as u128 * self.head_dim as u128,
            self.kv_heads as u128 * self.head_dim as u128,
        );
        let block = h * q * 2 + h * kv * 2 + 3 * h * f + 2 * h;
        let head = if self.tied { 0 } else { v * h };
        v * h + head + self.layers as u128 * block + h
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// SmolLM2-135M's `config.json`, as its Hugging Face repository has it (the keys read).
    fn smollm2() -> Json {
        json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rope_theta": 100000, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true, "max_position_embeddings": 8192,
            "bos_token_id": 1, "eos_token_id": [2], "rope_scaling": null,
            "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"
        })
    }

    #[test]
    fn a_real_config_reads_with_its_parameter_count() {
        let c = LmConfig::from_hf(&smollm2(), "config.json").unwrap();
        assert_eq!((c.heads, c.kv_heads, c.head_dim), (9, 3, 64));
        assert_eq!((c.bos, c.eos.as_slice()), (Some(1), &[2u32][..]));
        assert!(c.tied && c.rope_llama3.is_none());
        // 134.5 M parameters (the model card's figure).
        assert_eq!(c.parameters(), 134_515_008);
    }

    /// Sizes no model has, an overflowing product, missing keys and wrong types are one line
    /// naming the file, before anything is allocated.
    #[test]
    fn absurd_sizes_and_bad_types_are_refused() {
        let cases: [(&str, Json, &str); 6] = [
            (
                "vocab_size",
                json!(1u64 << 40),
                "vocabulary 1099511627776 is beyond",
            ),
            (
                "num_hidden_layers",
                json!(100_000),
                "layers 100000 is beyond",
            ),
            ("hidden_size", json!(65_536), "parameters is beyond"),
            ("hidden_size", json!("576"), "hidden_size: invalid type"),
            (
                "num_attention_heads",
                json!(-3),
                "num_attention_heads: invalid value",
            ),
            ("eos_token_id", json!("</s>"), "eos_token_id"),
        ];
        for (key, value, want) in cases {
            let mut cfg = smollm2();
            cfg[key] = value;
            let err = LmConfig::from_hf(&cfg, "bad/config.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("bad/config.json") && err.contains(want),
                "{key}: {err}"
            );
        }
        let mut cfg = smollm2();
        cfg.as_object_mut().unwrap().remove("intermediate_size");
        let err = LmConfig::from_hf(&cfg, "c.json").unwrap_err().to_string();
        assert!(err.contains("missing field `intermediate_size`"), "{err}");
        let mut cfg = smollm2();
        cfg["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let err = LmConfig::from_hf(&cfg, "c.json").unwrap_err().to_string();
        assert!(err.contains("rope type \"yarn\" is not supported"), "{err}");
    }
}
