//! The learner side of a sampled run (the bandit's `sampled` mode, tool use): the learner with
//! what logging, checkpoints and the summary need, started fresh or from a checkpoint. The loops
//! that drive it (serial, parallel, through Redis) are beside it.
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::dir::new_learner;
use super::kinds;
use super::recorder::Recorder;
use super::runner::{Runner, WarmstartRecord};
use super::summary::Summary;
use crate::config::Config;
use crate::env::Split;
use crate::error::{Error, Result};
use crate::policy::WeightSnapshot;
use crate::rl::actor::ActorState;
use crate::rl::learner::{Learner, LearnerState, StepStats};
use crate::store::checkpoint::Checkpoint;
use crate::store::metrics::{tags, Row};
use crate::transport::redis::Gauges;

/// Checkpointed state of a sampled run beyond its tensors.
#[derive(Serialize, Deserialize)]
pub(super) struct SampledState {
    learner_rng: rand_chacha::ChaCha8Rng,
    replay: crate::rl::replay::Replay,
    optimizer_t: u64,
    /// Batches skipped for a non-finite loss or gradient (`learner.skip_nonfinite`).
    #[serde(default)]
    nonfinite_skipped: u64,
    /// Serial runs only: the actors' RNG streams and counters, for an exact resume.
    actors: Vec<ActorState>,
    next_actor: usize,
    last_baseline: f64,
    wall_time: f64,
    /// Tool use: the warm start's report and held-out evaluation, kept for the summary.
    #[serde(default)]
    warmstart: Option<WarmstartRecord>,
    /// Parallel resumes so far: the session number of the actors' ids.
    #[serde(default)]
    session: u32,
}

/// Where a serial run's actors were when it was checkpointed.
pub(super) struct SavedActors {
    pub states: Vec<ActorState>,
    pub next: usize,
}

/// The learner side of a sampled run: the learner plus what logging needs.
pub(super) struct SampledRun<'a> {
    pub(super) cfg: &'a Config,
    pub(super) runner: Box<dyn Runner>,
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
    /// Through Redis: the actor processes whose heartbeat is alive and the messages that did
    /// not decode, for the rows.
    pub(super) remote: Option<Gauges>,
    /// Serial mode: seconds spent sampling and learning since the last row.
    pub(super) phases: Phases,
}

/// Seconds a serial run spent in its two phases since its last row, and the steps they cover.
#[derive(Default)]
pub(super) struct Phases {
    pub act: f64,
    pub learn: f64,
    pub steps: u64,
}

impl<'a> SampledRun<'a> {
    /// The learner side of `cfg` in `run_dir`: a new learner, warm-started when the
    /// environment has a warm start, or the one `resume` checkpointed. Returns the run and,
    /// for a serial resume, where its actors were.
    pub(super) fn start(
        cfg: &'a Config,
        run_dir: &Path,
        device: Device,
        serial: bool,
        resume: Option<Checkpoint>,
    ) -> Result<(Self, SavedActors)> {
        let initial = cfg.env.initial_logits(cfg.seed);
        tch::manual_seed(cfg.seed as i64);
        let mut learner = match &resume {
            Some(_) => Learner::new(cfg, device, &initial)?,
            None => new_learner(cfg, device, &initial)?,
        };
        let mut saved = None;
        let mut behaviour = None;
        if let Some(ckpt) = &resume {
            let s: SampledState = serde_json::from_value(ckpt.state.clone())
                .map_err(|e| Error::Corrupt(format!("checkpoint state: {e}")))?;
            let state = LearnerState {
                rng: s.learner_rng.clone(),
                replay: s.replay.clone(),
                optimizer_t: s.optimizer_t,
                nonfinite_skipped: s.nonfinite_skipped,
            };
            let (weights, moments) = (ckpt.tensors("weights")?, ckpt.tensors("optimizer")?);
            learner.restore(ckpt.step, weights, state, moments)?;
            let version = ckpt.step - ckpt.step % cfg.learner.sync_interval;
            behaviour = Some(WeightSnapshot {
                version,
                tensors: ckpt.tensors("behaviour")?.to_vec().into(),
            });
            saved = Some(s);
        }
        let mut runner = kinds::runner(cfg, Some(run_dir.join("tools.log")))?;
        runner.prepare(cfg, &learner, saved.as_ref().and_then(|s| s.warmstart))?;
        let behaviour = match behaviour {
            Some(b) => b,
            None => learner.snapshot()?,
        };
        let wall = saved.as_ref().map_or(0.0, |s| s.wall_time);
        let total = cfg.env.total_steps();
        let rec = Recorder::new(cfg, run_dir, total, learner.step(), wall)?;
        // A parallel resume is a new session: its actors draw from streams of their own, so
        // they repeat no prompt and no draw of the sessions before ([`crate::ids`]). A serial
        // resume restores every actor's state instead, and continues the same session exactly.
        let session = saved.as_ref().map_or(0, |s| s.session + u32::from(!serial));
        let mut run = SampledRun {
            cfg,
            runner,
            learner,
            behaviour: behaviour.clone(),
            last_baseline: saved.as_ref().map_or(0.0, |s| s.last_baseline),
            rec,
            session,
            parallel: !serial,
            remote: None,
            phases: Phases::default(),
        };
        run.set_behaviour(behaviour);
        if run.learner.step() == 0 {
            let mut row = run.row()?;
            run.runner.first_row(&mut row);
            run.rec.log(row, 0)?;
        }
        let actors = match saved {
            Some(s) => SavedActors {
                states: s.actors,
                next: s.next_actor,
            },
            None => SavedActors {
                states: Vec::new(),
                next: 0,
            },
        };
        Ok((run, actors))
    }

    pub(super) fn publish(&mut self) -> Result<WeightSnapshot> {
        let snap = self.learner.snapshot()?;
        self.set_behaviour(snap.clone());
        Ok(snap)
    }

    pub(super) fn set_behaviour(&mut self, snap: WeightSnapshot) {
        self.runner.set_behaviour(self.cfg, &snap);
        self.behaviour = snap;
    }

    /// The environment's part of a metrics row.
    pub(super) fn row(&self) -> Result<Row> {
        self.runner.row(self.cfg, &self.learner, self.last_baseline)
    }

    pub(super) fn after_step(&mut self, stats: &StepStats) -> Result<()> {
        self.last_baseline = stats.baseline;
        let step = self.learner.step();
        let eval_due = self.runner.evaluates()
            && self.cfg.logging.eval_every > 0
            && step.is_multiple_of(self.cfg.logging.eval_every);
        if !self.rec.should_log(step) && !eval_due {
            return Ok(());
        }
        let mut row = self.row()?;
        push_step_stats(&mut row, stats);
        let replay = self.learner.replay();
        row.push(tags::REPLAY_SIZE, replay.len() as f64)
            .push(tags::STALE_DROPPED, replay.stale_dropped() as f64)
            .push(
                tags::NONFINITE_SKIPPED,
                self.learner.nonfinite_skipped() as f64,
            );
        if self.parallel {
            row.push(tags::ACTORS, self.learner.take_senders().len() as f64);
        }
        let phases = std::mem::take(&mut self.phases);
        if phases.steps > 0 {
            row.push(tags::ACT_SECS, phases.act / phases.steps as f64)
                .push(tags::LEARN_SECS, phases.learn / phases.steps as f64);
        }
        if let Some(g) = &self.remote {
            let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed) as f64;
            row.push(tags::ACTORS_ALIVE, get(&g.alive))
                .push(tags::UNDECODABLE, get(&g.undecodable));
        }
        if eval_due {
            let (policy, device) = (self.learner.policy(), self.learner.device());
            let episodes = self.cfg.logging.eval_episodes;
            let e =
                self.runner
                    .evaluate(self.cfg, policy, device, Split::Heldout, episodes, None)?;
            row.push(tags::HELDOUT_COMPLETION, e.completion)
                .push(tags::HELDOUT_F1, e.f1);
        }
        self.rec.log(row, self.cfg.learner.batch_size as u64)
    }

    pub(super) fn checkpoint(&mut self, actors: Vec<ActorState>, next_actor: usize) -> Result<()> {
        let (learner, optimizer) = self.learner.state()?;
        let state = SampledState {
            learner_rng: learner.rng,
            replay: learner.replay,
            optimizer_t: learner.optimizer_t,
            nonfinite_skipped: learner.nonfinite_skipped,
            actors,
            next_actor,
            last_baseline: self.last_baseline,
            wall_time: self.rec.wall_time(),
            warmstart: self.runner.warmstart(),
            session: self.session,
        };
        let ckpt = Checkpoint {
            step: self.learner.step(),
            state: serde_json::to_value(state).expect("sampled state serialises"),
            tensors: vec![
                // (A fresh snapshot's values are its own: unwrapping them copies nothing.)
                (
                    "weights".into(),
                    Arc::unwrap_or_clone(self.learner.snapshot()?.tensors),
                ),
                ("behaviour".into(), self.behaviour.tensors.to_vec()),
                ("optimizer".into(), optimizer),
            ],
        };
        self.rec.checkpoint(&ckpt)
    }

    pub(super) fn summary(&mut self, device: Device) -> Result<Summary> {
        self.runner.summary(
            self.cfg,
            device,
            &self.learner,
            &mut self.rec,
            self.last_baseline,
        )
    }
}

/// A learner step's figures in a row: the batch's reward, the episodes' statistics (tool use),
/// the loss and the policy lag.
fn push_step_stats(row: &mut Row, stats: &StepStats) {
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
        .push(tags::POLICY_LAG_MAX, stats.lag_max as f64);
}
