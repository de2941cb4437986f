//! `[policy]`: which policy and its shape.
use serde::{Deserialize, Serialize};

use std::path::PathBuf;

pub use super::lora::LoraConfig;

use super::{check, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// One logit per arm (bandit).
    Tabular,
    /// A small causal decoder (tool use on the 60-word protocol).
    Transformer,
    /// A pretrained language model (`policy.model`): tool use in its chat format.
    Lm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `tabular` (bandit), `transformer` (tool use on the 60-word protocol) or `lm` (a
    /// pretrained language model, tool use in its chat format).
    pub kind: PolicyKind,
    /// LM: a model name (`smollm2-135m`), a `.gguf` file or a Hugging Face directory.
    pub model: Option<String>,
    /// LM: LoRA adapters with the base frozen; absent, every weight trains (full fine-tuning).
    pub lora: Option<LoraConfig>,
    /// Sampling temperature of the actors (1 = sample from π itself).
    pub temperature: f64,
    /// Transformer: decoder blocks.
    pub layers: usize,
    /// Transformer: model width.
    pub d_model: usize,
    /// Transformer: attention heads (must divide d_model).
    pub heads: usize,
    /// Transformer: the arithmetic of its matrix products (`f32`, or `bf16` with f32 weights,
    /// optimiser state, norms, attention and log-probabilities). LM: the weights' type (`bf16`
    /// is for CUDA; on the CPU it is slower than f32).
    pub precision: Precision,
    /// Weights to start from instead of a random initialisation: a safetensors file with the
    /// policy's variables, such as a run's `checkpoints/step_…/weights.safetensors` (a relative
    /// path is taken from the working directory). The warm start, if any, continues from them; a
    /// resumed run takes its checkpoint's weights instead.
    pub init: Option<PathBuf>,
    /// LM, CPU actors: the weights the actors decode from (`f32`, `bf16`, `q8_0`, or `file`:
    /// each matrix in its type in the model's file). The learner keeps f32, and the behaviour
    /// log-probabilities are those of what the actor sampled with.
    pub decode_weights: DecodeWeights,
}

/// The weights an actor's decoding products read (`policy.decode_weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecodeWeights {
    /// The f32 weights, through libtorch.
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// bfloat16 copies (half the bytes).
    #[serde(rename = "bf16")]
    Bf16,
    /// ggml's Q8_0 blocks (8-bit codes, a scale per 32).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Each matrix in its type in the model's file (Q8_0, Q4_0, Q4_1, f16, bf16; f32 stays f32).
    #[serde(rename = "file")]
    File,
}

impl DecodeWeights {
    pub fn name(self) -> &'static str {
        match self {
            DecodeWeights::F32 => "f32",
            DecodeWeights::Bf16 => "bf16",
            DecodeWeights::Q8_0 => "q8_0",
            DecodeWeights::File => "file",
        }
    }

    /// Parses a name as [`DecodeWeights::name`] gives it.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::F32, Self::Bf16, Self::Q8_0, Self::File]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

/// The number format of the transformer's matrix products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Linear layers multiply bfloat16 copies of their inputs and weights and return f32; the
    /// weights themselves, their gradients and the optimiser stay f32 (mixed precision).
    Bf16,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            kind: PolicyKind::Tabular,
            temperature: 1.0,
            layers: 2,
            d_model: 128,
            heads: 4,
            precision: Precision::F32,
            init: None,
            model: None,
            lora: None,
            decode_weights: DecodeWeights::F32,
        }
    }
}

impl PolicyConfig {
    /// The pretrained model this policy is (`policy.model` of an `lm` policy).
    pub fn pretrained(&self) -> Option<&str> {
        match self.kind {
            PolicyKind::Lm => self.model.as_deref(),
            PolicyKind::Tabular | PolicyKind::Transformer => None,
        }
    }

    /// Checks `[policy]` on its own.
    pub fn validate(&self) -> Result<()> {
        let p = self;
        check(
            p.temperature.is_finite() && p.temperature > 0.0,
            "policy.temperature",
            "finite and > 0",
            p.temperature,
        )?;
        check(
            p.precision == Precision::F32 || p.kind != PolicyKind::Tabular,
            "policy.precision",
            "f32 for the tabular policy (bf16 applies to the transformer and the LM)",
            format!("{:?}", p.precision).to_lowercase(),
        )?;
        check(
            p.model.is_some() == (p.kind == PolicyKind::Lm),
            "policy.model",
            "set exactly when policy.kind = \"lm\" (a model name, .gguf file or HF directory)",
            p.model.as_deref().unwrap_or("(unset)"),
        )?;
        check(
            p.decode_weights == DecodeWeights::F32
                || (p.kind == PolicyKind::Lm && p.precision == Precision::F32),
            "policy.decode_weights",
            "f32 unless policy.kind = \"lm\" with policy.precision = \"f32\"",
            p.decode_weights.name(),
        )?;
        if let Some(lora) = &p.lora {
            check(
                p.kind == PolicyKind::Lm,
                "policy.lora",
                "only with policy.kind = \"lm\"",
                format!("rank {}", lora.rank),
            )?;
            lora.validate().map_err(crate::error::Error::input)?;
        }
        check(
            (1..=48).contains(&p.layers),
            "policy.layers",
            "between 1 and 48",
            p.layers,
        )?;
        check(
            (1..=64).contains(&p.heads),
            "policy.heads",
            "between 1 and 64",
            p.heads,
        )?;
        check(
            p.d_model >= p.heads && p.d_model.is_multiple_of(p.heads) && p.d_model <= 8192,
            "policy.d_model",
            &format!("a multiple of policy.heads ({}) up to 8192", p.heads),
            p.d_model,
        )?;
        Ok(())
    }
}
