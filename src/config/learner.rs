//! `[learner]`: the optimiser and the step.
use serde::{Deserialize, Serialize};

use super::{check, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// `adam` or `sgd`.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// Adam's β1.
    pub beta1: f64,
    /// Adam's β2.
    pub beta2: f64,
    /// Adam's ε.
    pub eps: f64,
    /// Trajectories per learner step.
    pub batch_size: usize,
    /// Trajectories scored per forward and backward pass within a step (0: the whole batch in
    /// one). Every loss is a mean over samples, so the passes' gradients, each weighted by its
    /// share of the batch, add up to the whole batch's: the step is the same (up to the order of
    /// float sums) while the activations held at once are a micro-batch's, not the batch's.
    pub micro_batch: usize,
    /// Learner steps between weight snapshots sent to the actors: the off-policy knob.
    pub sync_interval: u64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub max_grad_norm: f64,
    /// libtorch intra-op threads (set once for the process, so threads do not oversubscribe).
    pub intra_op_threads: usize,
    /// Serial mode: before each step, run on the cores other processes leave free (at most
    /// `intra_op_threads`), measured from `/proc` over the last step. A step then slows down
    /// in proportion to the cores lost, not more; but sums reduce in another order on another
    /// number of threads, so a run is no longer bit-identical to another. Off: a warning names
    /// the busy process instead.
    pub adapt_threads: bool,
    /// Skip (and count, as `nonfinite_skipped`) a batch whose loss or gradient is not finite,
    /// instead of stopping the run.
    pub skip_nonfinite: bool,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            batch_size: 1024,
            micro_batch: 0,
            sync_interval: 100,
            max_grad_norm: 0.0,
            intra_op_threads: 1,
            adapt_threads: false,
            skip_nonfinite: false,
        }
    }
}

impl LearnerConfig {
    /// Checks `[learner]` on its own.
    pub fn validate(&self) -> Result<()> {
        let l = self;
        check(
            l.lr.is_finite() && l.lr > 0.0,
            "learner.lr",
            "finite and > 0",
            l.lr,
        )?;
        check(
            (0.0..1.0).contains(&l.beta1),
            "learner.beta1",
            "in [0, 1)",
            l.beta1,
        )?;
        check(
            (0.0..1.0).contains(&l.beta2),
            "learner.beta2",
            "in [0, 1)",
            l.beta2,
        )?;
        check(
            l.eps.is_finite() && l.eps > 0.0,
            "learner.eps",
            "finite and > 0",
            l.eps,
        )?;
        check(
            l.batch_size >= 1,
            "learner.batch_size",
            ">= 1",
            l.batch_size,
        )?;
        check(
            l.sync_interval >= 1,
            "learner.sync_interval",
            ">= 1",
            l.sync_interval,
        )?;
        check(
            l.max_grad_norm.is_finite() && l.max_grad_norm >= 0.0,
            "learner.max_grad_norm",
            "finite and >= 0",
            l.max_grad_norm,
        )?;
        check(
            (1..=256).contains(&l.intra_op_threads),
            "learner.intra_op_threads",
            "between 1 and 256",
            l.intra_op_threads,
        )?;
        Ok(())
    }
}
