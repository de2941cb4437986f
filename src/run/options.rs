//! How a run is driven beside its config, and how it ended.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::summary::Summary;
use crate::config::Config;

/// How a run is driven, beside its config.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    /// One thread, deterministic.
    pub serial: bool,
    /// Set to a signal's exit code (130, 143) to stop after the current step with a checkpoint.
    pub interrupt: &'a AtomicUsize,
    /// When given, the learner stores its step here after every step (for a watcher).
    pub progress: Option<&'a AtomicU64>,
    /// `redis://HOST:PORT/DB`: trajectories and weights go through Redis, and actor processes
    /// on other hosts may join (`asymre actor`); `None`: the in-process transport.
    pub transport: Option<&'a str>,
}

impl RunOptions<'_> {
    /// The exit code of a signal that asked the run to stop.
    pub(super) fn interrupted(&self) -> Option<i32> {
        match self.interrupt.load(Ordering::Relaxed) {
            0 => None,
            code => Some(code as i32),
        }
    }
}

/// How a run ended.
// Returned once per run, so the size gap between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    Finished(Summary),
    /// Stopped by a signal after checkpointing `step`; the code is the process exit code.
    Interrupted {
        step: u64,
        code: i32,
    },
}

/// Threads a run of `cfg` keeps busy: its actors and learner, or one in serial mode and for the
/// bandit's exact flow.
pub fn threads_used(cfg: &Config, serial: bool) -> usize {
    if serial || cfg.env.exact_flow() {
        1
    } else {
        cfg.actor.threads + 1
    }
}
