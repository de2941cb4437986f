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
    /// How each step's demonstrations are drawn.
    pub sampling: DemoSampling,
    /// How the learning rate moves over the steps.
    pub schedule: LrSchedule,
}

/// `warmstart.sampling`: how a step's demonstrations are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoSampling {
    /// Each independently and uniformly, with replacement.
    Uniform,
    /// In passes: every demonstration once, in a fresh random order, before any twice.
    Epochs,
}

/// `warmstart.schedule`: the learning rate over the warm start's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr` at every step.
    Constant,
    /// A linear warm-up over the first 5% of the steps (at least one), then a cosine from `lr`
    /// down to `lr` / 10 at the last step.
    Cosine,
}

impl LrSchedule {
    /// The learning rate of step `step` (0-based) of `steps`, peaking at `lr`.
    pub fn lr(self, lr: f64, step: u64, steps: u64) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                let warmup = steps.div_ceil(20).max(1);
                if step < warmup {
                    return lr * (step + 1) as f64 / warmup as f64;
                }
                let span = steps.saturating_sub(warmup + 1).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                let floor = lr / 10.0;
                floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

impl Default for WarmstartConfig {
    fn default() -> Self {
        WarmstartConfig {
            demos: 500,
            steps: 200,
            lr: 1e-3,
            batch_size: 64,
            sampling: DemoSampling::Uniform,
            schedule: LrSchedule::Constant,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cosine_schedule_warms_up_peaks_and_ends_at_a_tenth() {
        let lrs: Vec<f64> = (0..100)
            .map(|s| LrSchedule::Cosine.lr(1.0, s, 100))
            .collect();
        // Five warm-up steps rising to the peak.
        assert_eq!(&lrs[..5], &[0.2, 0.4, 0.6, 0.8, 1.0]);
        assert!((lrs[5] - 1.0).abs() < 1e-12, "{}", lrs[5]);
        assert!(lrs[5..].windows(2).all(|w| w[1] <= w[0]), "not falling");
        assert!((lrs[99] - 0.1).abs() < 1e-12, "{}", lrs[99]);
        // Halfway down the cosine: half way between the peak and the floor.
        assert!((LrSchedule::Cosine.lr(1.0, 52, 100) - 0.55).abs() < 1e-12);
        // Short and degenerate runs stay finite and within [lr / 10, lr].
        for steps in 1..8 {
            for s in 0..steps {
                let lr = LrSchedule::Cosine.lr(2.0, s, steps);
                assert!((0.2..=2.0).contains(&lr), "{steps} {s} {lr}");
            }
        }
        assert_eq!(LrSchedule::Constant.lr(0.3, 7, 10), 0.3);
    }
}
