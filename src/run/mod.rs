//! Runs a training job; the only place that spawns threads.
//!
//! A sampled run's learner side ([`sampled`]) is driven by one of three loops: [`serial`]
//! (actors and learner in a fixed order on one thread, bit-identical for a seed on CPU and
//! across a checkpoint and resume), [`parallel`] (N actor threads and a learner thread joined by
//! a bounded channel) or [`remote`] (the same through Redis, with actor processes on other
//! hosts). What it trains on is a [`runner::Runner`], chosen once in [`kinds`]. [`flow`] is the
//! bandit's expected-gradient flow.
use std::path::Path;

use tch::Device;

use crate::config::Config;
use crate::error::{IoContext, Result};
use crate::ids::SourceId;
use crate::rl::actor::Actor;
use crate::store::checkpoint::{self, Checkpoint};

mod bandit_run;
pub mod contention;
mod dir;
mod eval;
mod export;
mod flow;
mod kinds;
mod options;
mod parallel;
mod recorder;
mod remote;
mod runner;
mod sampled;
mod serial;
mod summary;
mod tool_run;

pub use crate::device::{device_name, resolve_device};
pub use dir::{create_run_dir, default_dir, new_learner, open_run_dir};
pub use eval::{evaluate_run, load_run_policy};
pub use export::export_run;
pub use kinds::{chat_protocol, check_inputs, line_scorer, train_prompts, PromptRow};
pub use options::{threads_used, Outcome, RunOptions};
pub use remote::remote_actors;
pub use summary::{print_summary, BanditSummary, Summary, ToolUseSummary};

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
    let outcome = if cfg.env.exact_flow() {
        flow::run_exact(cfg, run_dir, &opts, resume)?
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

/// A sampled run: its learner side, its actors, and the loop `opts` asks for.
fn run_sampled(
    cfg: &Config,
    run_dir: &Path,
    device: Device,
    opts: &RunOptions,
    resume: Option<Checkpoint>,
) -> Result<Outcome> {
    let resumed = resume.is_some();
    let (mut run, saved) = sampled::SampledRun::start(cfg, run_dir, device, opts.serial, resume)?;
    if run.learner.step() >= cfg.env.total_steps() {
        // Nothing to train (`env.rounds = 0`: the warm start and the evaluations only, or a
        // resume of a run that had reached its end): no actor is started. A fresh one keeps
        // its warm-started weights as the step-0 checkpoint, for `eval`, `bfcl`, `export` and
        // other runs' `policy.init`.
        if !resumed {
            run.checkpoint(Vec::new(), 0)?;
        }
        return Ok(Outcome::Finished(run.summary(device)?));
    }
    // Owned, so that actor threads can rebuild an actor mid-run.
    let new_actor = run.runner.actors();
    let (session, behaviour) = (run.session, run.behaviour.clone());
    let build_actor = |id: usize, restart: u32| -> Result<Box<dyn Actor>> {
        new_actor(cfg, SourceId::new(session, id as u32, restart), &behaviour)
    };
    let actors: Vec<Box<dyn Actor>> = (0..cfg.actor.threads)
        .map(|id| build_actor(id, 0))
        .collect::<Result<Vec<_>>>()?;
    // A restarted actor is a new source: fresh streams, no prompt of its earlier life.
    let factory = |id: usize, restart: u64| build_actor(id, restart as u32);
    let interrupted_at = match (opts.serial, opts.transport) {
        (true, _) => serial::serial_loop(&mut run, actors, saved, opts)?,
        (false, Some(url)) => {
            let name = run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            remote::redis_loop(&mut run, actors, &factory, opts, url, &name)?
        }
        (false, None) => parallel::parallel_loop(&mut run, actors, &factory, opts)?,
    };
    if let Some(code) = interrupted_at {
        run.rec.finish()?;
        return Ok(Outcome::Interrupted {
            step: run.learner.step(),
            code,
        });
    }
    Ok(Outcome::Finished(run.summary(device)?))
}
