//! A sampled run (the bandit's `sampled` mode, tool use): the learner side, what it logs,
//! checkpoints and summarises, and how its actors are built; serial or parallel.
use std::path::Path;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::Config;
use crate::env::tool_use::tasks::Split;
use crate::error::{Error, Result};
use crate::ids::SourceId;
use crate::policy::WeightSnapshot;
use crate::rl::actor::{Actor, ActorState};
use crate::rl::learner::{Learner, StepStats};
use crate::rl::replay::Replay;
use crate::store::checkpoint::Checkpoint;
use crate::store::metrics::{tags, Row};

use super::envs::{sampled_env, SampledEnv, WarmstartRecord};
use super::*;

/// Checkpointed state of a sampled run beyond its tensors.
#[derive(Serialize, Deserialize)]
pub(super) struct SampledState {
    learner_rng: ChaCha8Rng,
    replay: Replay,
    optimizer_t: u64,
    /// Serial runs only: the actors' RNG streams and counters, for an exact resume.
    actors: Vec<ActorState>,
    next_actor: usize,
    last_baseline: f64,
    wall_time: f64,
    /// Tool use: the warm start's report and held-out evaluation, kept for the summary.
    #[serde(default)]
    warmstart: Option<WarmstartRecord>,
    /// Batches skipped for a non-finite loss or gradient (`learner.skip_nonfinite`).
    #[serde(default)]
    nonfinite_skipped: u64,
    /// Parallel resumes so far: the session number of the actors' ids.
    #[serde(default)]
    session: u32,
}

/// The learner side of a sampled run: the learner plus what logging needs.
pub(super) struct SampledRun<'a> {
    pub(super) cfg: &'a Config,
    pub(super) env: Box<dyn SampledEnv>,
    pub(super) learner: Learner,
    /// The weights the actors currently sample from.
    pub(super) behaviour: WeightSnapshot,
    pub(super) last_baseline: f64,
    pub(super) rec: Recorder,
    /// The session of this process's actors ([`crate::ids::SourceId`]).
    pub(super) session: u32,
    /// Parallel mode: rows count the actors heard from (serial rows stay those of a resumed
    /// run exactly).
    pub(super) parallel: bool,
    /// Through Redis: the actor processes whose heartbeat is alive (rows' `actors_alive`) and
    /// the messages skipped because they did not decode (`messages_undecodable`).
    pub(super) remote: Option<RemoteGauges>,
}

/// What a run through Redis counts for its rows.
#[derive(Clone)]
pub(super) struct RemoteGauges {
    pub alive: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub undecodable: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SampledRun<'_> {
    pub(super) fn publish(&mut self) -> Result<WeightSnapshot> {
        let snap = self.learner.snapshot()?;
        self.set_behaviour(snap.clone());
        Ok(snap)
    }

    pub(super) fn set_behaviour(&mut self, snap: WeightSnapshot) {
        self.env.set_behaviour(self.cfg, &snap);
        self.behaviour = snap;
    }

    /// The environment's part of a metrics row.
    pub(super) fn row(&self) -> Result<Row> {
        self.env.row(self.cfg, &self.learner, self.last_baseline)
    }

    pub(super) fn after_step(&mut self, stats: &StepStats) -> Result<()> {
        self.last_baseline = stats.baseline;
        let step = self.learner.step;
        let eval_due = self.env.evaluates()
            && self.cfg.logging.eval_every > 0
            && step.is_multiple_of(self.cfg.logging.eval_every);
        if !self.rec.should_log(step) && !eval_due {
            return Ok(());
        }
        let mut row = self.row()?;
        row.push(tags::BATCH_REWARD, stats.batch_reward);
        if let Some(e) = stats.episode {
            row.push(tags::COMPLETION, e.completion)
                .push(tags::TOOL_PRECISION, e.precision)
                .push(tags::TOOL_RECALL, e.recall)
                .push(tags::TOOL_F1, e.f1)
                .push(tags::FORMAT_ERRORS, e.format_errors)
                .push(tags::CALLS, e.calls)
                .push(tags::LENGTH, e.length)
                .push(tags::V, stats.baseline)
                .push(tags::ENTROPY, stats.entropy);
        }
        row.push(tags::LOSS, stats.loss)
            .push(tags::GRAD_NORM, stats.grad_norm)
            .push(tags::POLICY_LAG_MEAN, stats.lag_mean)
            .push(tags::POLICY_LAG_MAX, stats.lag_max as f64)
            .push(tags::REPLAY_SIZE, self.learner.replay.len() as f64)
            .push(
                tags::STALE_DROPPED,
                self.learner.replay.stale_dropped() as f64,
            )
            .push(
                tags::NONFINITE_SKIPPED,
                self.learner.nonfinite_skipped as f64,
            );
        if self.parallel {
            row.push(
                tags::ACTORS,
                std::mem::take(&mut self.learner.senders).len() as f64,
            );
        }
        if let Some(g) = &self.remote {
            let get = |n: &std::sync::atomic::AtomicU64| {
                n.load(std::sync::atomic::Ordering::Relaxed) as f64
            };
            row.push(tags::ACTORS_ALIVE, get(&g.alive))
                .push(tags::UNDECODABLE, get(&g.undecodable));
        }
        if eval_due {
            let episodes = self.cfg.logging.eval_episodes;
            let e = self
                .env
                .evaluate(self.cfg, &self.learner, Split::Heldout, episodes)?;
            row.push(tags::HELDOUT_COMPLETION, e.completion)
                .push(tags::HELDOUT_F1, e.f1);
        }
        self.rec.log(row, self.cfg.learner.batch_size as u64)
    }

    pub(super) fn checkpoint(&mut self, actors: Vec<ActorState>, next_actor: usize) -> Result<()> {
        let (optimizer_t, optimizer) = self.learner.optimizer_state()?;
        let warmstart = self.env.warmstart();
        let state = SampledState {
            learner_rng: self.learner.rng.clone(),
            replay: self.learner.replay.clone(),
            optimizer_t,
            actors,
            next_actor,
            last_baseline: self.last_baseline,
            wall_time: self.rec.wall_time(),
            warmstart,
            nonfinite_skipped: self.learner.nonfinite_skipped,
            session: self.session,
        };
        let ckpt = Checkpoint {
            step: self.learner.step,
            state: serde_json::to_value(state).expect("sampled state serialises"),
            tensors: vec![
                ("weights".into(), self.learner.snapshot()?.tensors),
                ("behaviour".into(), self.behaviour.tensors.clone()),
                ("optimizer".into(), optimizer),
            ],
        };
        self.rec.checkpoint(&ckpt)
    }

    pub(super) fn summary(&mut self, device: Device) -> Result<Summary> {
        self.env.summary(
            self.cfg,
            device,
            &self.learner,
            &mut self.rec,
            self.last_baseline,
        )
    }
}

pub(super) fn run_sampled(
    cfg: &Config,
    run_dir: &Path,
    device: Device,
    opts: &RunOptions,
    resume: Option<Checkpoint>,
) -> Result<Outcome> {
    let total = cfg.env.total_steps();
    let initial = initial_logits(cfg);
    tch::manual_seed(cfg.seed as i64);
    let mut learner = if resume.is_some() {
        Learner::new(cfg, device, &initial)?
    } else {
        new_learner(cfg, device, &initial)?
    };
    let mut saved = None;
    let mut behaviour = None;
    if let Some(ckpt) = &resume {
        let s: SampledState = serde_json::from_value(ckpt.state.clone())
            .map_err(|e| Error::Corrupt(format!("checkpoint state: {e}")))?;
        WeightSnapshot {
            version: ckpt.step,
            tensors: ckpt.tensors("weights")?.to_vec(),
        }
        .load_into(&learner.vs)?;
        learner.load_optimizer_state(s.optimizer_t, ckpt.tensors("optimizer")?)?;
        learner.rng = s.learner_rng.clone();
        learner.replay = s.replay.clone();
        learner.nonfinite_skipped = s.nonfinite_skipped;
        learner.step = ckpt.step;
        let version = ckpt.step - ckpt.step % cfg.learner.sync_interval;
        behaviour = Some(WeightSnapshot {
            version,
            tensors: ckpt.tensors("behaviour")?.to_vec(),
        });
        saved = Some(s);
    }
    let wall = saved.as_ref().map_or(0.0, |s| s.wall_time);
    let env = sampled_env(
        cfg,
        &learner,
        device,
        &initial,
        saved.as_ref().and_then(|s| s.warmstart),
        run_dir,
    )?;
    let behaviour = match behaviour {
        Some(b) => b,
        None => learner.snapshot()?,
    };
    let rec = Recorder::new(cfg, run_dir, total, learner.step, wall)?;
    let last_baseline = saved.as_ref().map_or(0.0, |s| s.last_baseline);
    // A parallel resume is a new session: its actors draw from streams of their own, so they
    // repeat no prompt and no draw of the sessions before ([`crate::ids`]). A serial resume
    // restores every actor's state instead, and continues the same session exactly.
    let session = saved
        .as_ref()
        .map_or(0, |s| s.session + u32::from(!opts.serial));
    let mut run = SampledRun {
        cfg,
        env,
        learner,
        behaviour: behaviour.clone(),
        last_baseline,
        rec,
        session,
        parallel: !opts.serial,
        remote: None,
    };
    run.set_behaviour(behaviour.clone());
    if run.learner.step == 0 {
        let mut row = run.row()?;
        run.env.first_row(&mut row);
        run.rec.log(row, 0)?;
    }
    // Owned, so that actor threads can rebuild an actor mid-run.
    let new_actor = run.env.actors();
    let build_actor = |id: usize, restart: u32| -> Result<Box<dyn Actor>> {
        new_actor(cfg, SourceId::new(session, id as u32, restart), &behaviour)
    };
    let actors: Vec<Box<dyn Actor>> = (0..cfg.actor.threads)
        .map(|id| build_actor(id, 0))
        .collect::<Result<Vec<_>>>()?;
    let (actor_states, next_actor) = saved.map_or((Vec::new(), 0), |s| (s.actors, s.next_actor));
    let interrupted_at = if opts.serial {
        serial_loop(&mut run, actors, actor_states, next_actor, opts)?
    } else {
        // A restarted actor is a new source: fresh streams, no prompt of its earlier life.
        let factory = |id: usize, restart: u64| build_actor(id, restart as u32);
        match opts.transport {
            Some(url) => {
                let name = run_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "run".into());
                super::remote::redis_loop(&mut run, actors, &factory, opts, url, &name)?
            }
            None => parallel_loop(&mut run, actors, &factory, opts)?,
        }
    };
    if let Some(code) = interrupted_at {
        run.rec.finish()?;
        return Ok(Outcome::Interrupted {
            step: run.learner.step,
            code,
        });
    }
    Ok(Outcome::Finished(run.summary(device)?))
}
