//! Every tool-use environment as a run: a task source `T` played by a sequence policy `M` in a
//! protocol `R` (the small transformer on the token protocol; a pretrained LM in its chat format,
//! on the built-in families or on a user's dataset). One implementation does the warm start, the
//! actors, the rows, evaluation and the summary for all of them.
use std::marker::PhantomData;
use std::time::Instant;

use tch::Device;

use super::recorder::Recorder;
use super::runner::{ActorBuilder, EpisodeSink, Runner, WarmstartRecord};
use super::summary::{Summary, ToolUseSummary};
use crate::config::Config;
use crate::device::device_name;
use crate::env::tool_use::reward::ScoreMeans;
use crate::env::{Protocol, Split, TaskSource, ToolSet};
use crate::error::Result;
use crate::policy::{PolicyModel, ToolPolicy};
use crate::rl::actor::ToolActor;
use crate::rl::learner::Learner;
use crate::rl::warmstart::{demos, warm_start};
use crate::rollout::Player;
use crate::store::metrics::{tags, Row};

/// A tool-use run of task source `T`, protocol `R` and policy `M`.
pub(super) struct ToolRun<M, R, T> {
    task: T,
    protocol: R,
    warmstart: WarmstartRecord,
    model: PhantomData<fn() -> M>,
}

impl<M, R, T> ToolRun<M, R, T> {
    pub(super) fn new(task: T, protocol: R) -> Self {
        ToolRun {
            task,
            protocol,
            warmstart: Default::default(),
            model: PhantomData,
        }
    }
}

impl<M, R, T> ToolRun<M, R, T>
where
    M: ToolPolicy + 'static,
    T: TaskSource + ToolSet<T::Item> + Clone + 'static,
    R: Protocol<T> + Clone + 'static,
{
    /// Supervised fine-tuning on scripted demonstrations (their gold calls run for real, then
    /// the gold answer), between two held-out evaluations.
    fn warm_start(&self, cfg: &Config, learner: &Learner) -> Result<WarmstartRecord> {
        let (policy, device) = (learner.policy(), learner.device());
        let episodes = cfg.logging.eval_episodes;
        if cfg.warmstart.steps > 0 && cfg.warmstart.demos > 0 {
            let before = self.evaluate(cfg, policy, device, Split::Heldout, episodes, None)?;
            eprintln!(
                "before the warm start: held-out completion {:.3}, tool F1 {:.3}",
                before.completion, before.f1
            );
        }
        let started = Instant::now();
        let demos = demos(cfg, &self.task, &self.protocol)?;
        let report = warm_start(cfg, M::of(policy)?, learner.vs(), &demos, device)?;
        let seconds = started.elapsed().as_secs_f64();
        let heldout = self.evaluate(cfg, policy, device, Split::Heldout, episodes, None)?;
        eprintln!(
            "warm start: {} steps in {seconds:.1} s; held-out completion {:.3}, tool F1 {:.3}",
            report.steps, heldout.completion, heldout.f1
        );
        Ok((report, heldout, seconds))
    }
}

impl<M, R, T> Runner for ToolRun<M, R, T>
where
    M: ToolPolicy + 'static,
    T: TaskSource + ToolSet<T::Item> + Clone + 'static,
    R: Protocol<T> + Clone + 'static,
{
    fn actors(&self) -> ActorBuilder {
        let (task, protocol) = (self.task.clone(), self.protocol.clone());
        std::sync::Arc::new(move |cfg, source, behaviour| {
            let actor =
                ToolActor::<M, R, T>::new(cfg, source, task.clone(), protocol.clone(), behaviour)?;
            Ok(Box::new(actor))
        })
    }

    fn prepare(
        &mut self,
        cfg: &Config,
        learner: &Learner,
        saved: Option<WarmstartRecord>,
    ) -> Result<()> {
        self.warmstart = match saved {
            Some(w) => w,
            None => self.warm_start(cfg, learner)?,
        };
        Ok(())
    }

    /// The step and its round.
    fn row(&self, cfg: &Config, learner: &Learner, _last_baseline: f64) -> Result<Row> {
        let mut row = Row::new(learner.step());
        row.push(
            tags::ROUND,
            (learner.step() / cfg.env.steps_per_round) as f64,
        );
        Ok(row)
    }

    fn evaluates(&self) -> bool {
        true
    }

    fn evaluate(
        &self,
        cfg: &Config,
        policy: &PolicyModel,
        device: Device,
        split: Split,
        episodes: usize,
        dump: Option<EpisodeSink>,
    ) -> Result<ScoreMeans> {
        let episodes = match self.task.split_len(split) {
            Some(n) => episodes.min(n.max(1)),
            None => episodes,
        };
        let player = Player {
            model: M::of(policy)?,
            task: &self.task,
            protocol: &self.protocol,
            device,
        };
        let (batch, reward) = (M::EVAL_BATCH, &cfg.reward);
        match dump {
            Some(sink) => player.evaluate(split, episodes, batch, reward, |ep| {
                sink(self.protocol.episode_json(&self.task, ep))
            }),
            None => player.evaluate(split, episodes, batch, reward, |_| {}),
        }
    }

    fn warmstart(&self) -> Option<WarmstartRecord> {
        Some(self.warmstart)
    }

    /// Greedy held-out and train evaluations, the last metrics row, and the summary naming
    /// the task source.
    fn summary(
        &self,
        cfg: &Config,
        device: Device,
        learner: &Learner,
        rec: &mut Recorder,
        _last_baseline: f64,
    ) -> Result<Summary> {
        let episodes = cfg.logging.eval_episodes;
        let (policy, on) = (learner.policy(), learner.device());
        let final_heldout = self.evaluate(cfg, policy, on, Split::Heldout, episodes, None)?;
        let final_train = self.evaluate(cfg, policy, on, Split::Train, episodes, None)?;
        let mut row = Row::new(learner.step());
        row.push(tags::HELDOUT_COMPLETION, final_heldout.completion)
            .push(tags::HELDOUT_F1, final_heldout.f1);
        rec.log(row, 0)?;
        rec.finish()?;
        let (warmstart, warmstart_heldout, warmstart_seconds) = self.warmstart;
        Ok(Summary {
            mode: "tool_use".into(),
            device: device_name(device),
            steps: learner.step(),
            wall_time: rec.wall_time(),
            last: rec.last_row_json(),
            bandit: None,
            tool_use: Some(ToolUseSummary {
                task: self.task.name(),
                warmstart_heldout,
                final_heldout,
                final_train,
                warmstart,
                warmstart_seconds,
            }),
        })
    }
}
