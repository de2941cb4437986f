//! The bandit in sampled mode as a run: arms drawn by actors from a lagged μ, the tabular
//! policy trained by the learner, and the theory's figures in every row and the summary.
use std::sync::Arc;

use tch::Device;

use super::recorder::Recorder;
use super::runner::{ActorBuilder, EpisodeSink, Runner};
use super::summary::{bandit_row, bandit_summary, Summary};
use crate::config::Config;
use crate::env::bandit::Bandit;
use crate::env::tool_use::reward::ScoreMeans;
use crate::env::Split;
use crate::error::{Error, Result};
use crate::math::softmax;
use crate::policy::tabular::sampling_probs;
use crate::policy::{PolicyModel, WeightSnapshot};
use crate::rl::actor::BanditActor;
use crate::rl::learner::Learner;
use crate::store::metrics::Row;

/// The bandit in sampled mode.
pub(super) struct BanditRun {
    bandit: Bandit,
    /// The tabular policy's initial logits.
    initial: Vec<f64>,
    /// μ: the behaviour policy's arm probabilities.
    behaviour_probs: Vec<f64>,
}

impl BanditRun {
    pub(super) fn new(cfg: &Config) -> Self {
        BanditRun {
            bandit: Bandit::new(&cfg.env.bandit_spec(), cfg.seed),
            initial: cfg.env.initial_logits(cfg.seed),
            behaviour_probs: Vec::new(),
        }
    }
}

impl Runner for BanditRun {
    fn actors(&self) -> ActorBuilder {
        let bandit = self.bandit.clone();
        Arc::new(move |cfg, source, behaviour| {
            let actor = BanditActor::new(cfg, source, bandit.clone(), behaviour)?;
            Ok(Box::new(actor))
        })
    }

    fn set_behaviour(&mut self, cfg: &Config, snapshot: &WeightSnapshot) {
        let logits: Vec<f64> = snapshot.tensors[0].data.iter().map(|&x| x as f64).collect();
        self.behaviour_probs = sampling_probs(&logits, cfg.policy.temperature);
    }

    fn row(&self, cfg: &Config, learner: &Learner, last_baseline: f64) -> Result<Row> {
        let pi = softmax(&learner.logits()?);
        let v_mu = self.bandit.value(&self.behaviour_probs);
        Ok(bandit_row(
            learner.step(),
            cfg.env.steps_per_round,
            &self.bandit,
            &pi,
            v_mu,
            last_baseline,
        ))
    }

    fn evaluate(
        &self,
        _cfg: &Config,
        _policy: &PolicyModel,
        _device: Device,
        _split: Split,
        _episodes: usize,
        _dump: Option<EpisodeSink>,
    ) -> Result<ScoreMeans> {
        Err(Error::input(
            "the bandit has no episodes to evaluate (eval is for tool-use runs)",
        ))
    }

    fn summary(
        &self,
        cfg: &Config,
        device: Device,
        learner: &Learner,
        rec: &mut Recorder,
        last_baseline: f64,
    ) -> Result<Summary> {
        rec.finish()?;
        let final_probs = softmax(&learner.logits()?);
        Ok(bandit_summary(
            cfg,
            device,
            learner.step(),
            rec,
            &self.bandit,
            &self.initial,
            self.behaviour_probs.clone(),
            final_probs,
            last_baseline,
        ))
    }
}
