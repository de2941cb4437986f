//! `[collapse]`: when a finished run counts as collapsed.
use serde::{Deserialize, Serialize};

use super::{check, Result};

/// When a finished run counts as collapsed (sweep tables and plots): its final reward is at least
/// `reward_drop` below its reference, and its final entropy is at most `entropy`. The reference is
/// the run's best reward (a moving average over `window` logged rows), or, for the bandit, the
/// best arm's reward (a policy that locks onto a worse arm has collapsed even if it never fell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollapseConfig {
    pub reward_drop: f64,
    /// Nats: H(π) for the bandit, the mean per-token entropy for tool use.
    pub entropy: f64,
    /// Logged rows averaged for "final" and "best" reward.
    pub window: usize,
}

impl Default for CollapseConfig {
    fn default() -> Self {
        CollapseConfig {
            reward_drop: 0.2,
            entropy: 0.05,
            window: 5,
        }
    }
}

impl CollapseConfig {
    /// Checks `[collapse]`.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        check(
            c.reward_drop.is_finite() && c.reward_drop >= 0.0,
            "collapse.reward_drop",
            "finite and >= 0",
            c.reward_drop,
        )?;
        check(
            c.entropy.is_finite() && c.entropy >= 0.0,
            "collapse.entropy",
            "finite and >= 0",
            c.entropy,
        )?;
        check(c.window >= 1, "collapse.window", ">= 1", c.window)?;
        Ok(())
    }
}
