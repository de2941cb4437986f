//! The in-process transport: a bounded crossbeam channel for messages, a snapshot board behind
//! a mutex, and [`LocalControl`]: a stop flag, the first failure, and the [`Pacer`].
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{Closed, Received, RunControl, TrajectorySink, TrajectorySource, WeightBoard};
use crate::error::Error;
use crate::policy::WeightSnapshot;
use crate::trajectory::ActorBatch;

/// A bounded channel's two ends: `capacity` messages in flight at most.
pub fn channel(capacity: usize) -> (ChannelSink, ChannelSource) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (ChannelSink(tx), ChannelSource(rx))
}

/// The actors' end of [`channel`]; cloned once per actor.
#[derive(Clone)]
pub struct ChannelSink(Sender<ActorBatch>);

impl TrajectorySink for ChannelSink {
    fn send(&self, batch: ActorBatch) -> Result<(), Closed> {
        self.0.send(batch).map_err(|_| Closed)
    }
}

/// The learner's end of [`channel`].
pub struct ChannelSource(Receiver<ActorBatch>);

impl TrajectorySource for ChannelSource {
    fn recv_timeout(&self, timeout: Duration) -> Received {
        match self.0.recv_timeout(timeout) {
            Ok(batch) => Received::Batch(batch),
            Err(RecvTimeoutError::Timeout) => Received::Empty,
            Err(RecvTimeoutError::Disconnected) => Received::Closed,
        }
    }
}

/// The latest published weights, read by every actor thread.
#[derive(Debug)]
pub struct SnapshotBoard {
    latest: Mutex<Arc<WeightSnapshot>>,
    version: AtomicU64,
}

impl SnapshotBoard {
    pub fn new(first: WeightSnapshot) -> Self {
        let version = first.version;
        SnapshotBoard {
            latest: Mutex::new(Arc::new(first)),
            version: AtomicU64::new(version),
        }
    }
}

/// Pacing for `replay.max_policy_lag`, shared by the actors and the learner: an actor starts a
/// message only when its samples will reach a learner step at most `max_policy_lag` past its
/// weights' version ([`super::admission_limit`]), counting the samples other actors
/// already claimed. Actors that out-produce the learner wait here instead of producing samples
/// that the learner would have to drop.
#[derive(Debug)]
pub struct Pacer {
    max_lag: u64,
    per_step: f64,
    /// Samples claimed by messages started so far, counted like `Replay::inserted`.
    claimed: AtomicU64,
    /// The learner's step and the arrivals it needs for it, as of its last step.
    learner: Mutex<(u64, u64)>,
    advanced: Condvar,
}

impl Pacer {
    /// `inserted`: arrivals so far; `(step, needed)`: the learner's position.
    pub fn new(max_lag: u64, per_step: f64, inserted: u64, step: u64, needed: u64) -> Self {
        Pacer {
            max_lag,
            per_step,
            claimed: AtomicU64::new(inserted),
            learner: Mutex::new((step, needed)),
            advanced: Condvar::new(),
        }
    }

    /// The learner took a step: it is at `step` and needs `needed` arrivals for it.
    pub fn advance(&self, step: u64, needed: u64) {
        *self.learner.lock().unwrap_or_else(|e| e.into_inner()) = (step, needed);
        self.advanced.notify_all();
    }

    /// Claims `n` samples of a policy of `version` if they will still be fresh when trained
    /// (always when the learner is short of data, so pacing never stalls the run).
    pub fn try_claim(&self, version: u64, n: u64) -> bool {
        if self.max_lag == 0 {
            return true;
        }
        let (step, needed) = *self.learner.lock().unwrap_or_else(|e| e.into_inner());
        let limit = super::admission_limit(needed, step, self.per_step, version, self.max_lag);
        self.claimed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |claimed| {
                (claimed + n <= limit || claimed < needed).then_some(claimed + n)
            })
            .is_ok()
    }

    /// Waits until the learner steps again or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let guard = self.learner.lock().unwrap_or_else(|e| e.into_inner());
        let seen = *guard;
        let _ = self
            .advanced
            .wait_timeout_while(guard, timeout, |now| *now == seen);
    }
}

impl WeightBoard for SnapshotBoard {
    fn publish(&self, snapshot: WeightSnapshot) {
        let version = snapshot.version;
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        *latest = Arc::new(snapshot);
        self.version.store(version, Ordering::Release);
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn latest(&self) -> Arc<WeightSnapshot> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Stop, failure and pacing for threads of one process.
#[derive(Debug)]
pub struct LocalControl {
    stop: AtomicBool,
    failure: Mutex<Option<Error>>,
    pacer: Pacer,
}

impl LocalControl {
    pub fn new(pacer: Pacer) -> Self {
        LocalControl {
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            pacer,
        }
    }
}

impl RunControl for LocalControl {
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn fail(&self, error: Error) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
        self.stop();
    }

    fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn learner_advanced(&self, step: u64, needed: u64) {
        self.pacer.advance(step, needed)
    }

    fn try_claim(&self, version: u64, n: u64) -> bool {
        self.pacer.try_claim(version, n)
    }

    fn wait_for_learner(&self, timeout: Duration) {
        self.pacer.wait(timeout)
    }
}
