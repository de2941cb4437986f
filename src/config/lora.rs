//! `[policy.lora]`: low-rank adapters on the pretrained LM's linear layers ([`crate::policy::lm`]).
use serde::{Deserialize, Serialize};

/// `[policy.lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// r: the adapters' rank.
    pub rank: usize,
    /// The scale is alpha / r.
    pub alpha: f64,
    /// Which linear layers get adapters, by their Hugging Face module names.
    pub targets: Vec<String>,
}

/// The module names adapters may target.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            targets: MODULES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    /// Checks the rank, alpha and target names.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1024).contains(&self.rank) {
            return Err(format!(
                "policy.lora.rank: expected between 1 and 1024, got {}",
                self.rank
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!(
                "policy.lora.alpha: expected finite and > 0, got {}",
                self.alpha
            ));
        }
        if self.targets.is_empty() {
            return Err("policy.lora.targets: expected at least one module".into());
        }
        for t in &self.targets {
            if !MODULES.contains(&t.as_str()) {
                return Err(format!(
                    "policy.lora.targets: unknown module {t:?} (known: {})",
                    MODULES.join(", ")
                ));
            }
        }
        Ok(())
    }
}
