//! Runs a training job; the only place that spawns threads.
//!
//! `run_serial` steps the actors and the learner in a fixed order on one thread (bit-identical for
//! a seed on CPU, and across a checkpoint/resume); `run_parallel` runs the same components with N
//! actor threads and a learner thread joined by a bounded channel. `run_exact` is the bandit's
//! expected-gradient flow.
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::config::{BanditMode, Config, EnvKind};
use crate::error::{IoContext, Result};
use crate::store::checkpoint::{self, Checkpoint};

mod dir;
mod envs;
mod eval;
mod export;
mod flow;
mod parallel;
mod recorder;
mod remote;
mod sampled;
mod serial;
mod summary;

pub use dir::{create_run_dir, default_dir, new_learner, open_run_dir};
use envs::initial_logits;
pub use envs::{chat_protocol, check_inputs, dataset_source};
pub use eval::evaluate_run;
pub use export::export_run;
use flow::run_exact;
use parallel::parallel_loop;
use recorder::Recorder;
pub use remote::remote_actors;
use sampled::run_sampled;
use sampled::SampledRun;
use serial::serial_loop;
use summary::{bandit_row, bandit_summary};
pub use summary::{print_summary, BanditSummary, Summary, ToolUseSummary};

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

pub use crate::device::{device_name, resolve_device};

/// Threads a run of `cfg` keeps busy: its actors and learner, or one in serial mode and for the
/// bandit's exact flow.
pub fn threads_used(cfg: &Config, serial: bool) -> usize {
    if serial || exact_flow(cfg) {
        1
    } else {
        cfg.actor.threads + 1
    }
}

/// Whether `cfg` runs the bandit's expected-gradient flow rather than actors and a learner.
fn exact_flow(cfg: &Config) -> bool {
    cfg.env.kind == EnvKind::Bandit && cfg.env.mode == BanditMode::Exact
}

pub(crate) fn interrupted(opts: &RunOptions) -> Option<i32> {
    match opts.interrupt.load(Ordering::Relaxed) {
        0 => None,
        code => Some(code as i32),
    }
}

/// Trains `cfg` in `run_dir`, from `resume` when given.
pub fn train(
    cfg: &Config,
    run_dir: &Path,
    opts: RunOptions,
    resume: Option<Checkpoint>,
) -> Result<Outcome> {
    tch::set_num_threads(cfg.learner.intra_op_threads as i32);
    let device = resolve_device(cfg.device)?;
    if cfg.policy.precision == crate::config::Precision::Bf16 {
        // Actors decode on `actor.device`, the learner on `device`: one warning for either.
        let actors = resolve_device(cfg.actor.device)?;
        let warning =
            crate::device::bf16_warning(actors).or_else(|| crate::device::bf16_warning(device));
        if let Some(w) = warning {
            eprintln!("{w}");
        }
    }
    if let Some(ckpt) = &resume {
        crate::store::metrics::truncate_jsonl(&run_dir.join("metrics.jsonl"), ckpt.step)?;
    } else {
        // A fresh start (or a resume with no checkpoint yet) logs from step 0 again.
        let path = run_dir.join("metrics.jsonl");
        if path.exists() {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    let outcome = if exact_flow(cfg) {
        run_exact(cfg, run_dir, &opts, resume)?
    } else {
        run_sampled(cfg, run_dir, device, &opts, resume)?
    };
    if let Outcome::Finished(summary) = &outcome {
        let path = run_dir.join("summary.json");
        let text = serde_json::to_string_pretty(summary).expect("a Summary serialises");
        checkpoint::write_atomic(&path, text.as_bytes())?;
    }
    Ok(outcome)
}
