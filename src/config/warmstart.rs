//! `[warmstart]`: behaviour cloning before RL.
use serde::{Deserialize, Serialize};

use super::{check, Result};

/// Behaviour cloning on scripted demonstrations before RL (tool use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmstartConfig {
    /// Demonstrations generated from the train split (0 = start RL from scratch).
    pub demos: usize,
    /// Optimiser steps of behaviour cloning.
    pub steps: u64,
    /// Adam learning rate of behaviour cloning.
    pub lr: f64,
    /// Demonstrations per step.
    pub batch_size: usize,
}

impl Default for WarmstartConfig {
    fn default() -> Self {
        WarmstartConfig {
            demos: 500,
            steps: 200,
            lr: 1e-3,
            batch_size: 64,
        }
    }
}

impl WarmstartConfig {
    /// Checks `[warmstart]`.
    pub fn validate(&self) -> Result<()> {
        let w = self;
        check(
            w.lr.is_finite() && w.lr > 0.0,
            "warmstart.lr",
            "finite and > 0",
            w.lr,
        )?;
        check(
            w.batch_size >= 1,
            "warmstart.batch_size",
            ">= 1",
            w.batch_size,
        )?;
        Ok(())
    }
}
