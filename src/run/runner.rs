//! What a sampled run needs of its environment, behind one trait ([`Runner`]): its actors, its
//! part of the metrics rows, the warm start, evaluation, what a checkpoint keeps of it, and its
//! summary. The bandit ([`super::bandit_run`]) and every tool-use environment
//! ([`super::tool_run`]) implement it; [`super::kinds`] picks one.
use std::sync::Arc;

use tch::Device;

use super::recorder::Recorder;
use super::summary::Summary;
use crate::config::Config;
use crate::env::tool_use::reward::ScoreMeans;
use crate::env::Split;
use crate::error::Result;
use crate::ids::SourceId;
use crate::policy::{PolicyModel, WeightSnapshot};
use crate::rl::actor::Actor;
use crate::rl::learner::Learner;
use crate::rl::warmstart::WarmstartReport;
use crate::store::metrics::{tags, Row};

/// The warm start's report, its held-out evaluation, and its seconds.
pub(super) type WarmstartRecord = (WarmstartReport, ScoreMeans, f64);

/// Builds actor `source` sampling from a snapshot; shared with the actor threads (restarts).
pub(super) type ActorBuilder =
    Arc<dyn Fn(&Config, SourceId, &WeightSnapshot) -> Result<Box<dyn Actor>> + Send + Sync>;

/// Sees each evaluated episode as one JSON line (`asymre eval --dump`).
pub(super) type EpisodeSink<'a> = &'a mut dyn FnMut(serde_json::Value);

/// A sampled run's environment with the policy that plays it.
pub(super) trait Runner: Send {
    /// How to build its actors.
    fn actors(&self) -> ActorBuilder;
    /// Gets the learner's policy ready before RL: the warm start of a tool-use run, or the
    /// record an earlier session of the run `saved`. Nothing by default.
    fn prepare(
        &mut self,
        _cfg: &Config,
        _learner: &Learner,
        _saved: Option<WarmstartRecord>,
    ) -> Result<()> {
        Ok(())
    }
    /// The actors now sample from `snapshot`.
    fn set_behaviour(&mut self, _cfg: &Config, _snapshot: &WeightSnapshot) {}
    /// The environment's part of a metrics row at the learner's step.
    fn row(&self, cfg: &Config, learner: &Learner, last_baseline: f64) -> Result<Row>;
    /// The first row's additions: the warm start's held-out evaluation, if it had one.
    fn first_row(&self, row: &mut Row) {
        if let Some((_, heldout, _)) = self.warmstart() {
            row.push(tags::HELDOUT_COMPLETION, heldout.completion)
                .push(tags::HELDOUT_F1, heldout.f1);
        }
    }
    /// Whether it is evaluated every `logging.eval_every` steps.
    fn evaluates(&self) -> bool {
        false
    }
    /// Greedy evaluation of `policy` on `episodes` items of `split` (fewer when the split
    /// holds fewer); `dump` sees every episode.
    fn evaluate(
        &self,
        cfg: &Config,
        policy: &PolicyModel,
        device: Device,
        split: Split,
        episodes: usize,
        dump: Option<EpisodeSink>,
    ) -> Result<ScoreMeans>;
    /// What a checkpoint keeps of it.
    fn warmstart(&self) -> Option<WarmstartRecord> {
        None
    }
    /// The run's summary (it logs its last rows and closes the sinks first).
    fn summary(
        &self,
        cfg: &Config,
        device: Device,
        learner: &Learner,
        rec: &mut Recorder,
        last_baseline: f64,
    ) -> Result<Summary>;
}
