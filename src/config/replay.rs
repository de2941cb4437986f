//! `[replay]`: the ring, its sampling, reuse and lag limit.
use serde::{Deserialize, Serialize};

use super::{check, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Batches are consecutive windows in arrival order.
    Fifo,
    /// Batches are drawn uniformly, with replacement, from the buffer.
    Uniform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Most trajectories held; the oldest are evicted first.
    pub capacity: usize,
    /// `fifo` or `uniform`.
    pub sampling: Sampling,
    /// Mean number of learner batches each trajectory appears in; paces the learner.
    pub reuse: f64,
    /// Trajectories whose policy is more than this many learner steps old are dropped, and actors
    /// wait for fresh weights rather than produce them (0 = no limit).
    pub max_policy_lag: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            capacity: 16384,
            sampling: Sampling::Fifo,
            reuse: 1.0,
            max_policy_lag: 0,
        }
    }
}

impl ReplayConfig {
    /// Checks `[replay]` on its own.
    pub fn validate(&self) -> Result<()> {
        let r = self;
        check(r.capacity >= 1, "replay.capacity", ">= 1", r.capacity)?;
        check(
            r.reuse.is_finite() && r.reuse > 0.0 && r.reuse <= 1000.0,
            "replay.reuse",
            "in (0, 1000]",
            r.reuse,
        )?;

        Ok(())
    }
}
