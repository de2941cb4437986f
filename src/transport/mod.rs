//! The actor/learner boundary. Actors put what they sampled into a [`TrajectorySink`] and read
//! behaviour weights from a [`WeightBoard`]; the learner takes messages from a
//! [`TrajectorySource`] and publishes weights to the board; both watch the [`RunControl`]: stop,
//! failure, and the learner's position, which paces the actors for `replay.max_policy_lag`.
//!
//! [`local`] implements them in one process: a bounded crossbeam channel (its bound is the
//! back-pressure), a snapshot board, and atomics. The learner owns versions and staleness
//! whatever the transport: it drops any sample past the lag limit on arrival order alone.
pub mod codec;
pub mod local;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::policy::WeightSnapshot;
use crate::trajectory::ActorBatch;

/// The learner is gone: an actor stops sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Where actors send messages.
pub trait TrajectorySink: Send + Sync {
    /// Sends one message, blocking while the transport is full.
    fn send(&self, batch: ActorBatch) -> Result<(), Closed>;
}

/// What [`TrajectorySource::recv_timeout`] got.
#[derive(Debug)]
pub enum Received {
    Batch(ActorBatch),
    /// Nothing within the timeout.
    Empty,
    /// Every actor hung up.
    Closed,
}

/// Where the learner takes messages from.
pub trait TrajectorySource {
    fn recv_timeout(&self, timeout: Duration) -> Received;
}

/// The latest behaviour weights, versioned by learner step.
pub trait WeightBoard: Sync {
    fn publish(&self, snapshot: WeightSnapshot);
    /// The version of the latest snapshot.
    fn version(&self) -> u64;
    fn latest(&self) -> Arc<WeightSnapshot>;
}

/// What actors and learner share about the run itself.
pub trait RunControl: Sync {
    /// Asks everyone to stop.
    fn stop(&self);
    fn stopped(&self) -> bool;
    /// Records why the run must stop (the first failure wins) and stops it.
    fn fail(&self, error: Error);
    /// The recorded failure, if any, taken.
    fn take_failure(&self) -> Option<Error>;
    /// The learner finished a step: it is at `step` and needs `needed` arrivals for it
    /// (`Replay::needed`).
    fn learner_advanced(&self, step: u64, needed: u64);
    /// Claims `n` samples of weights `version` when they will still be fresh when trained.
    fn try_claim(&self, version: u64, n: u64) -> bool;
    /// Waits until the learner steps again or `timeout` passes.
    fn wait_for_learner(&self, timeout: Duration);
}

/// Pacing for `max_policy_lag`: the arrival count up to which samples of a policy of version
/// `version` are still fresh when the learner reaches them. The learner is at step `step` and
/// needs `needed` arrivals for it; each later step consumes `per_step` more, so a sample arriving
/// as number `a` is first trained around step `step + (a − needed) / per_step`, which must not be
/// more than `max_lag` past `version`. Actors start a message only while the samples already
/// claimed plus theirs stay under this limit, so a fast actor waits instead of producing samples
/// that would be dropped.
pub fn admission_limit(needed: u64, step: u64, per_step: f64, version: u64, max_lag: u64) -> u64 {
    let steps_left = (version + max_lag).saturating_sub(step);
    needed + (steps_left as f64 * per_step).floor() as u64
}
