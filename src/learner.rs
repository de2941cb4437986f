//! The learner: owns the replay buffer, the trained policy π and its optimiser; each step samples a
//! batch, computes the loss against the configured baseline V, and steps the optimiser on the
//! configured device. Every `sync_interval` steps it takes a weight snapshot for the actors.
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::config::{Config, LossConfig};
use crate::error::{Error, Result};
use crate::loss;
use crate::optim::Optimizer;
use crate::policy::{sorted_vars, PolicyModel, WeightSnapshot};
use crate::replay::Replay;
use crate::reward::ScoreMeans;
use crate::rng::{self, Role};
use crate::trajectory::{ActorBatch, Trajectory};

/// What one learner step measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
    /// Mean reward of the batch.
    pub batch_reward: f64,
    /// Mean baseline V_i of the batch.
    pub baseline: f64,
    /// Mean and max of (learner step − policy_version) over the batch.
    pub lag_mean: f64,
    pub lag_max: u64,
    /// Mean entropy (nats) of π over the batch's policy positions (the bandit: H(π)).
    pub entropy: f64,
    /// Tool use: the batch's mean episode statistics.
    pub episode: Option<ScoreMeans>,
}

fn episode_means(batch: &[&Trajectory]) -> Option<ScoreMeans> {
    let mut means = ScoreMeans::default();
    for stats in batch.iter().filter_map(|t| t.stats) {
        means.add(&stats.score, stats.length as usize);
    }
    (means.episodes > 0).then(|| means.finish())
}

pub struct Learner {
    pub vs: VarStore,
    pub policy: PolicyModel,
    vars: Vec<(String, Tensor)>,
    optimizer: Optimizer,
    pub replay: Replay,
    pub rng: ChaCha8Rng,
    loss_cfg: LossConfig,
    max_policy_lag: u64,
    device: Device,
    /// Learner steps taken so far.
    pub step: u64,
    skip_nonfinite: bool,
    nonfinite_loss_every: u64,
    /// Batches skipped because their loss or gradient was not finite.
    pub nonfinite_skipped: u64,
}

impl Learner {
    /// A learner for the configured policy (`init_logits` seeds a tabular one).
    pub fn new(cfg: &Config, device: Device, init_logits: &[f64]) -> Self {
        let vs = VarStore::new(device);
        let policy = PolicyModel::build(cfg, &vs.root(), init_logits);
        let vars = sorted_vars(&vs);
        let optimizer = Optimizer::new(&cfg.learner, &vars);
        Learner {
            vs,
            policy,
            vars,
            optimizer,
            replay: Replay::new(&cfg.replay, cfg.learner.batch_size),
            rng: rng::stream(cfg.seed, Role::Learner, 0),
            loss_cfg: cfg.loss.clone(),
            max_policy_lag: cfg.replay.max_policy_lag,
            device,
            step: 0,
            skip_nonfinite: cfg.learner.skip_nonfinite,
            nonfinite_loss_every: cfg.faults.nonfinite_loss_every,
            nonfinite_skipped: 0,
        }
    }

    /// Moves an actor message into the replay buffer.
    pub fn ingest(&mut self, batch: ActorBatch) {
        for t in batch.trajectories {
            self.replay.push(t);
        }
    }

    /// Whether the next step has the data it needs (drops stale samples first).
    pub fn ready(&mut self) -> bool {
        self.replay.evict_stale(self.step, self.max_policy_lag);
        self.replay.ready(self.step)
    }

    /// One optimisation step. Call only when [`Learner::ready`].
    pub fn train_step(&mut self) -> Result<StepStats> {
        let positions = self.replay.sample(self.step, &mut self.rng);
        let batch: Vec<&Trajectory> = positions.iter().map(|&p| self.replay.get(p)).collect();
        let baseline = loss::baseline_values(&self.loss_cfg, &batch);
        let reward: Vec<f32> = batch.iter().map(|t| t.reward).collect();
        let (lag_sum, lag_max) = batch.iter().fold((0u64, 0u64), |(s, m), t| {
            let lag = self.step.saturating_sub(t.policy_version);
            (s + lag, m.max(lag))
        });
        let n = batch.len() as f64;
        let stats_base = StepStats {
            batch_reward: reward.iter().map(|&r| r as f64).sum::<f64>() / n,
            baseline: baseline.iter().map(|&v| v as f64).sum::<f64>() / n,
            lag_mean: lag_sum as f64 / n,
            lag_max,
            episode: episode_means(&batch),
            ..StepStats::default()
        };

        let reward = Tensor::f_from_slice(&reward)?.f_to_device(self.device)?;
        let baseline = Tensor::f_from_slice(&baseline)?.f_to_device(self.device)?;
        let scores = self.policy.score(&batch, self.device)?;
        let stored = |what: loss::Stored| -> Result<Tensor> {
            let column = |f: fn(&Trajectory) -> f32| -> Result<Tensor> {
                let v: Vec<f32> = batch.iter().map(|t| f(t)).collect();
                Ok(Tensor::f_from_slice(&v)?.f_to_device(self.device)?)
            };
            match what {
                loss::Stored::BehaviourLogp => column(|t| t.behaviour_logp),
                loss::Stored::BehaviourTokenLogp => {
                    self.policy.behaviour_token_logp(&batch, self.device)
                }
                loss::Stored::GroupMean => column(|t| t.group_mean),
                loss::Stored::GroupStd => column(|t| t.group_std),
            }
        };
        let loss = loss::compute(
            &self.loss_cfg,
            &loss::LossInputs {
                token_logp: &scores.token_logp,
                mask: &scores.mask,
                reward: &reward,
                baseline: &baseline,
                stored: &stored,
            },
        )?;
        let injected =
            self.nonfinite_loss_every > 0 && (self.step + 1) % self.nonfinite_loss_every == 0;
        let loss = if injected {
            loss.f_mul_scalar(f64::NAN)?
        } else {
            loss
        };
        let loss_value = loss.f_double_value(&[])?;
        if !loss_value.is_finite() {
            return self.skip_or_fail("loss", stats_base);
        }
        loss.f_backward()?;
        let info = match self.optimizer.step(&self.vars, self.step) {
            Ok(info) => info,
            Err(Error::NonFinite { quantity, .. }) => {
                Optimizer::zero_grad(&self.vars)?;
                return self.skip_or_fail(quantity, stats_base);
            }
            Err(e) => return Err(e),
        };
        if !Optimizer::all_finite(&self.vars)? {
            // The update itself overflowed: the weights are lost, so no skipping; the run stops
            // and the last checkpoint (written before this step) stays the last good one.
            return Err(Error::NonFinite {
                quantity: "weights after the update",
                step: self.step + 1,
            });
        }
        self.step += 1;
        Ok(StepStats {
            loss: loss_value,
            grad_norm: info.grad_norm,
            entropy: scores.entropy,
            ..stats_base
        })
    }

    /// A non-finite `quantity` at this step: skip the batch (counted) or stop with an error.
    fn skip_or_fail(&mut self, quantity: &'static str, stats: StepStats) -> Result<StepStats> {
        self.step += 1;
        if !self.skip_nonfinite {
            return Err(Error::NonFinite {
                quantity,
                step: self.step,
            });
        }
        self.nonfinite_skipped += 1;
        Ok(StepStats {
            loss: f64::NAN,
            grad_norm: f64::NAN,
            ..stats
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The current weights as a snapshot versioned by the current step.
    pub fn snapshot(&self) -> Result<WeightSnapshot> {
        WeightSnapshot::take(&self.vs, self.step)
    }

    /// π's logits on the host (tabular policies).
    pub fn logits(&self) -> Result<Vec<f64>> {
        match &self.policy {
            PolicyModel::Tabular(p) => p.logits(),
            PolicyModel::Transformer(_) => {
                Err(Error::Corrupt("a transformer has no logit table".into()))
            }
        }
    }

    pub fn optimizer_state(&self) -> Result<(u64, Vec<crate::policy::NamedTensor>)> {
        self.optimizer.state(&self.vars)
    }

    pub fn load_optimizer_state(
        &mut self,
        t: u64,
        saved: &[crate::policy::NamedTensor],
    ) -> Result<()> {
        self.optimizer.load_state(&self.vars, t, saved)
    }
}
