//! `[faults]`: injected faults for tests.
use serde::{Deserialize, Serialize};

/// Injected faults, for testing what a run does when things go wrong. Leave at 0 for real runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Parallel mode: the first actor to send this many messages panics, once (0 = never).
    pub actor_panic_after: u64,
    /// Every this many learner steps the loss is made NaN (0 = never).
    pub nonfinite_loss_every: u64,
    /// The checkpoint of this learner step fails half written, as on a full disk (0 = never).
    pub checkpoint_error_at: u64,
    /// Every checkpoint pauses this long half written (state saved, weights not yet): a window
    /// for killing a run during a checkpoint write (0 = no pause).
    pub checkpoint_pause_ms: u64,
    /// The learner sleeps this long after every step: a slow learner (0 = none).
    pub learner_delay_ms: u64,
    /// Every actor sleeps this long after every message: slow actors (0 = none).
    pub actor_delay_ms: u64,
}
