//! The learner: owns the replay buffer, the trained policy π and its optimiser; each step samples a
//! batch, computes the loss against the configured baseline V, and steps the optimiser on the
//! configured device. Every `sync_interval` steps it takes a weight snapshot for the actors.
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::config::{Config, LossConfig};
use crate::env::tool_use::reward::ScoreMeans;
use crate::error::{Error, Result};
use crate::policy::{sorted_vars, NamedTensor, PolicyModel, WeightSnapshot};
use crate::rl::loss;
use crate::rl::optim::Optimizer;
use crate::rl::replay::Replay;
use crate::rng::{self, Role};
use crate::trajectory::{ActorBatch, Trajectory};
use crate::transport::{Received, RunControl, TrajectorySource, WeightBoard};

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

/// What a step reports of its batch before the loss, summed one sample at a time so that either
/// step can tally it inside the loop it already runs: mean reward and baseline V, the policy lag,
/// and (tool use) the episodes' statistics.
#[derive(Default)]
struct BatchTally {
    samples: u64,
    reward: f64,
    baseline: f64,
    lag_sum: u64,
    lag_max: u64,
    episodes: ScoreMeans,
}

impl BatchTally {
    /// Adds sample `t`, with baseline V, taken at learner step `step`.
    fn add(&mut self, t: &Trajectory, baseline: f32, step: u64) {
        let lag = step.saturating_sub(t.policy_version);
        self.samples += 1;
        self.reward += t.reward as f64;
        self.baseline += baseline as f64;
        self.lag_sum += lag;
        self.lag_max = self.lag_max.max(lag);
        if let Some(stats) = t.stats.as_deref() {
            self.episodes.add(&stats.score, stats.length as usize);
        }
    }

    fn finish(self) -> StepStats {
        let n = self.samples as f64;
        StepStats {
            batch_reward: self.reward / n,
            baseline: self.baseline / n,
            lag_mean: self.lag_sum as f64 / n,
            lag_max: self.lag_max,
            episode: (self.episodes.episodes > 0).then(|| self.episodes.finish()),
            ..StepStats::default()
        }
    }
}

pub struct Learner {
    vs: VarStore,
    policy: PolicyModel,
    vars: Vec<(String, Tensor)>,
    optimizer: Optimizer,
    replay: Replay,
    rng: ChaCha8Rng,
    loss_cfg: LossConfig,
    device: Device,
    /// Learner steps taken so far.
    step: u64,
    skip_nonfinite: bool,
    /// Trajectories per forward and backward pass (0: the whole batch).
    micro_batch: usize,
    nonfinite_loss_every: u64,
    /// Batches skipped because their loss or gradient was not finite.
    nonfinite_skipped: u64,
    /// Tabular policies on the CPU take their step in closed form on the host
    /// ([`Learner::train_step`]); false forces the autograd path (tests compare the two).
    host_tabular: bool,
    /// Actors whose messages arrived since the last metrics row (the row's `actors`).
    senders: std::collections::BTreeSet<usize>,
}

/// What a checkpoint keeps of a learner besides its weights and its optimiser's moments.
#[derive(Clone)]
pub struct LearnerState {
    pub rng: ChaCha8Rng,
    pub replay: Replay,
    /// The optimiser's step count.
    pub optimizer_t: u64,
    pub nonfinite_skipped: u64,
}

impl Learner {
    /// A learner for the configured policy (`init_logits` seeds a tabular one; an LM is loaded
    /// from its files).
    pub fn new(cfg: &Config, device: Device, init_logits: &[f64]) -> Result<Self> {
        let (vs, policy) = PolicyModel::load(cfg, device, init_logits)?;
        Ok(Self::with_policy(cfg, vs, policy))
    }

    /// A learner for a policy already built in `vs` (a pretrained LM, loaded from its files);
    /// `cfg` gives the optimiser, the replay, the loss and the seed. Only the variables that
    /// train (all of them, or an LM's LoRA adapters) get optimiser state.
    pub fn with_policy(cfg: &Config, vs: VarStore, policy: PolicyModel) -> Self {
        let device = vs.device();
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
            device,
            step: 0,
            skip_nonfinite: cfg.learner.skip_nonfinite,
            micro_batch: cfg.learner.micro_batch,
            nonfinite_loss_every: cfg.faults.nonfinite_loss_every,
            nonfinite_skipped: 0,
            host_tabular: true,
            senders: Default::default(),
        }
    }

    /// Moves an actor message into the replay buffer.
    pub fn ingest(&mut self, batch: ActorBatch) {
        self.senders.insert(batch.actor);
        self.replay.push_many(batch.trajectories);
    }

    /// Whether the next step has the data it needs (drops stale samples first).
    pub fn ready(&mut self) -> bool {
        self.replay.ready(self.step)
    }

    /// One optimisation step. Call only when [`Learner::ready`].
    ///
    /// A tabular policy on the CPU (the bandit) takes it in closed form on the host: its
    /// gradient is Σ_i c_i·(e_{y_i} − π) with c_i = ∂loss/∂log π(y_i)
    /// ([`loss::single_action_term`]), and the optimiser updates the weights in place
    /// ([`Optimizer::step_host`]). A batch of a thousand arms then costs microseconds, where the
    /// same step through libtorch's autograd costs some forty op dispatches. Anything else goes
    /// through autograd.
    pub fn train_step(&mut self) -> Result<StepStats> {
        if self.host_tabular
            && self.device == Device::Cpu
            && matches!(self.policy, PolicyModel::Tabular(_))
            && self.optimizer.host_eligible(&self.vars)
        {
            return self.train_step_tabular();
        }
        let positions = self.replay.sample(self.step, &mut self.rng);
        let batch: Vec<&Trajectory> = positions.iter().map(|&p| self.replay.get(p)).collect();
        let baseline = loss::baseline_values(&self.loss_cfg, &batch);
        let mut tally = BatchTally::default();
        for (t, &v) in batch.iter().zip(&baseline) {
            tally.add(t, v, self.step);
        }
        let stats_base = tally.finish();

        // One forward and backward pass per micro-batch; each loss (a mean over its samples) is
        // weighted by its share of the batch, so the gradients add up to the whole batch's.
        let part = match self.micro_batch {
            0 => batch.len(),
            m => m.min(batch.len()),
        };
        let injected = self.injects_nan();
        let (mut loss_value, mut entropy) = (0.0, Vec::new());
        for (samples, values) in batch.chunks(part).zip(baseline.chunks(part)) {
            let (loss, part_entropy, tokens) = self.part_loss(samples, values)?;
            let loss = if injected {
                loss.f_mul_scalar(f64::NAN)?
            } else if samples.len() < batch.len() {
                loss.f_mul_scalar(samples.len() as f64 / batch.len() as f64)?
            } else {
                loss
            };
            let value = loss.f_double_value(&[])?;
            if !value.is_finite() {
                // Earlier micro-batches' gradients are dropped with the batch.
                Optimizer::zero_grad(&self.vars)?;
                return self.skip_or_fail("loss", stats_base);
            }
            loss.f_backward()?;
            loss_value += value;
            entropy.push((part_entropy, tokens));
        }
        // The batch's mean entropy over its policy positions.
        let entropy = match entropy[..] {
            [(e, _)] => e,
            _ => {
                let tokens: f64 = entropy.iter().map(|(_, n)| n).sum();
                entropy.iter().map(|(e, n)| e * n).sum::<f64>() / tokens.max(1.0)
            }
        };
        let update = self.optimizer.step(&self.vars, self.step);
        self.finish_step(update, loss_value, entropy, stats_base)
    }

    /// The configured loss of `batch` (a step's batch or a micro-batch of it) with baselines
    /// `baseline`, with gradient; π's mean entropy over its policy positions, and their number.
    fn part_loss(&self, batch: &[&Trajectory], baseline: &[f32]) -> Result<(Tensor, f64, f64)> {
        let reward: Vec<f32> = batch.iter().map(|t| t.reward).collect();
        let reward = Tensor::f_from_slice(&reward)?.f_to_device(self.device)?;
        let baseline = Tensor::f_from_slice(baseline)?.f_to_device(self.device)?;
        let scores = self.policy.score(batch, self.device)?;
        let stored = |what: loss::Stored| -> Result<Tensor> {
            let column = |f: fn(&Trajectory) -> f32| -> Result<Tensor> {
                let v: Vec<f32> = batch.iter().map(|t| f(t)).collect();
                Ok(Tensor::f_from_slice(&v)?.f_to_device(self.device)?)
            };
            match what {
                loss::Stored::BehaviourLogp => column(|t| t.behaviour_logp),
                loss::Stored::BehaviourTokenLogp => {
                    self.policy.behaviour_token_logp(batch, self.device)
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
        let tokens = scores.mask.f_sum(tch::Kind::Float)?.f_double_value(&[])?;
        Ok((loss, scores.entropy, tokens))
    }

    /// Ends a step once the optimiser ran: a non-finite gradient skips the batch (or fails), an
    /// update that overflowed the weights fails the run.
    fn finish_step(
        &mut self,
        update: Result<crate::rl::optim::StepInfo>,
        loss: f64,
        entropy: f64,
        stats: StepStats,
    ) -> Result<StepStats> {
        let info = match update {
            Ok(info) => info,
            Err(Error::NonFinite { quantity, .. }) => {
                Optimizer::zero_grad(&self.vars)?;
                return self.skip_or_fail(quantity, stats);
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
            loss,
            grad_norm: info.grad_norm,
            entropy,
            ..stats
        })
    }

    /// [`Learner::train_step`] for a tabular policy, on the host.
    fn train_step_tabular(&mut self) -> Result<StepStats> {
        let logits: Vec<f64> = {
            let (_, var) = &self.vars[0];
            // SAFETY: the learner thread owns the variable and no tensor op runs on it while
            // the slice lives (it is copied out at once).
            let host = unsafe { crate::rl::optim::host_f32(var) }
                .ok_or_else(|| Error::Corrupt("tabular logits are not host f32".into()))?;
            host.iter().map(|&x| x as f64).collect()
        };
        let logp = crate::math::log_softmax(&logits);
        let probs: Vec<f64> = logp.iter().map(|l| l.exp()).collect();
        let entropy = crate::math::entropy(&probs);

        let positions = self.replay.sample(self.step, &mut self.rng);
        let n = positions.len() as f64;
        // per_arm[k] = Σ_{i: y_i = k} c_i, total = Σ_i c_i, with c_i = ∂loss/∂log π(y_i).
        let mut per_arm = vec![0.0f64; logits.len()];
        let (mut total, mut loss_sum) = (0.0, 0.0);
        let mut tally = BatchTally::default();
        for &pos in &positions {
            let t = self.replay.get(pos);
            let baseline = loss::baseline_value(&self.loss_cfg, t);
            tally.add(t, baseline, self.step);
            let arm = match t.actions[..] {
                [arm] if (arm as usize) < logits.len() => arm as usize,
                _ => {
                    return Err(Error::Corrupt(format!(
                        "a bandit sample has actions {:?} for {} arms",
                        &t.actions[..],
                        logits.len()
                    )))
                }
            };
            let sample = loss::ArmSample {
                logp: logp[arm],
                behaviour_logp: t.behaviour_logp as f64,
                reward: t.reward as f64,
                baseline: baseline as f64,
                group_mean: t.group_mean as f64,
                group_std: t.group_std as f64,
            };
            let (objective, slope) = loss::single_action_term(&self.loss_cfg, &sample);
            loss_sum -= objective;
            per_arm[arm] -= slope;
            total -= slope;
        }
        let stats_base = tally.finish();
        let injected = self.injects_nan();
        let loss_value = if injected { f64::NAN } else { loss_sum / n };
        if !loss_value.is_finite() {
            return self.skip_or_fail("loss", stats_base);
        }
        let grad: Vec<f64> = per_arm
            .iter()
            .zip(&probs)
            .map(|(c, p)| (c - total * p) / n)
            .collect();
        let update = self.optimizer.step_host(&self.vars, &[grad], self.step);
        self.finish_step(update, loss_value, entropy, stats_base)
    }

    /// Whether `faults.nonfinite_loss_every` makes this step's loss NaN.
    fn injects_nan(&self) -> bool {
        self.nonfinite_loss_every > 0 && (self.step + 1).is_multiple_of(self.nonfinite_loss_every)
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
        self.policy.logits()
    }

    /// Learner steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The trained policy π and the store of its variables.
    pub fn policy(&self) -> &PolicyModel {
        &self.policy
    }

    pub fn vs(&self) -> &VarStore {
        &self.vs
    }

    pub fn replay(&self) -> &Replay {
        &self.replay
    }

    /// Batches skipped so far because their loss or gradient was not finite.
    pub fn nonfinite_skipped(&self) -> u64 {
        self.nonfinite_skipped
    }

    /// The actors heard from since the last call.
    pub fn take_senders(&mut self) -> std::collections::BTreeSet<usize> {
        std::mem::take(&mut self.senders)
    }

    /// What a checkpoint keeps besides the weights, and the optimiser's moments.
    pub fn state(&self) -> Result<(LearnerState, Vec<NamedTensor>)> {
        let (optimizer_t, moments) = self.optimizer.state(&self.vars)?;
        let state = LearnerState {
            rng: self.rng.clone(),
            replay: self.replay.clone(),
            optimizer_t,
            nonfinite_skipped: self.nonfinite_skipped,
        };
        Ok((state, moments))
    }

    /// Puts the learner back where a checkpoint taken at `step` left it: its `weights`, its
    /// `state` and the optimiser's `moments`.
    pub fn restore(
        &mut self,
        step: u64,
        weights: &[NamedTensor],
        state: LearnerState,
        moments: &[NamedTensor],
    ) -> Result<()> {
        WeightSnapshot {
            version: step,
            tensors: weights.to_vec().into(),
        }
        .load_into(&self.vs)?;
        self.optimizer
            .load_state(&self.vars, state.optimizer_t, moments)?;
        self.rng = state.rng;
        self.replay = state.replay;
        self.nonfinite_skipped = state.nonfinite_skipped;
        self.step = step;
        Ok(())
    }
}

/// What [`learner_loop`] needs of the run around its learner: logging, checkpoints, signals.
pub trait LearnerHost {
    fn learner(&mut self) -> &mut Learner;
    /// Learner steps the run lasts.
    fn total_steps(&self) -> u64;
    /// Learner steps between weight snapshots (`learner.sync_interval`).
    fn sync_interval(&self) -> u64;
    /// The learner's weights as the new behaviour policy.
    fn publish(&mut self) -> Result<WeightSnapshot>;
    /// Called after every step: logging, evaluation, and anything injected by `[faults]`.
    fn after_step(&mut self, stats: &StepStats) -> Result<()>;
    /// Writes a checkpoint when one is due, or now with `now`.
    fn checkpoint(&mut self, now: bool) -> Result<()>;
    /// The exit code of a signal that asked the run to stop.
    fn interrupted(&self) -> Option<i32>;
}

/// The body of the learner thread: take messages while the next step lacks data (what stays
/// in the transport blocks the actors: the back-pressure), step, publish weights every
/// `sync_interval` steps, tell the actors where the learner is (their pacing), log and
/// checkpoint. Returns the signal code when interrupted; an actor's failure is checkpointed
/// and returned.
pub fn learner_loop(
    host: &mut dyn LearnerHost,
    source: &dyn TrajectorySource,
    board: &dyn WeightBoard,
    control: &dyn RunControl,
) -> Result<Option<i32>> {
    let total = host.total_steps();
    while host.learner().step < total {
        if let Some(err) = control.take_failure() {
            // Stop cleanly: what the learner has is sound, so keep it.
            host.checkpoint(true)?;
            return Err(err);
        }
        if let Some(code) = host.interrupted() {
            host.checkpoint(true)?;
            return Ok(Some(code));
        }
        let learner = host.learner();
        if !learner.ready() {
            match source.recv_timeout(Duration::from_millis(50)) {
                Received::Batch(batch) => learner.ingest(batch),
                Received::Empty => {}
                Received::Closed => {
                    return Err(control
                        .take_failure()
                        .unwrap_or_else(|| Error::Corrupt("every actor stopped".into())));
                }
            }
            continue;
        }
        let stats = learner.train_step()?;
        let step = learner.step;
        if step.is_multiple_of(host.sync_interval()) {
            board.publish(host.publish()?);
        }
        let replay = &mut host.learner().replay;
        replay.evict_stale(step);
        control.learner_advanced(step, replay.needed(step));
        host.after_step(&stats)?;
        host.checkpoint(false)?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::Actions;
    use proptest::prelude::*;

    const BANDIT_TOML: &str = include_str!("../../configs/bandit.toml");

    fn config(loss: &str, optimizer: &str, arms: usize, batch: usize) -> Config {
        crate::config::from_toml_str(
            BANDIT_TOML,
            &[
                format!("env.arms={arms}"),
                format!("loss.kind=\"{loss}\""),
                format!("learner.optimizer=\"{optimizer}\""),
                format!("learner.batch_size={batch}"),
                "learner.lr=0.3".into(),
                "learner.max_grad_norm=0.2".into(),
                "loss.ratio_cap=1.5".into(),
            ],
        )
        .unwrap()
    }

    /// (arm, reward, log μ, group mean, group std, V^μ) per sample.
    type Row = (u32, f32, f32, f32, f32, f32);

    fn trajectory(i: usize, r: &Row) -> Trajectory {
        Trajectory {
            prompt: crate::ids::SourceId::new(0, 0, 0).prompt(0, i as u32 / 4),
            actions: Actions::One(r.0),
            reward: r.1,
            behaviour_logp: r.2,
            group_mean: r.3,
            behaviour_value: Some(r.5),
            policy_version: 0,
            policy_mask: Vec::new(),
            behaviour_token_logp: Vec::new(),
            group_std: r.4,
            stats: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// The tabular learner's closed-form host step and the autograd step agree, for every
        /// loss and both optimisers, step after step: loss, gradient norm, entropy, weights.
        #[test]
        fn prop_host_tabular_step_matches_autograd(
            loss in prop::sample::select(vec!["asymre", "reinforce", "is_reinforce", "topr", "grpo"]),
            adam in any::<bool>(),
            init in prop::collection::vec(-2.0f64..2.0, 6),
            rows in prop::collection::vec(
                (0u32..6, 0.0f32..1.0, -4.0f32..-0.1, 0.0f32..1.0, 0.1f32..0.5, 0.0f32..1.0),
                24,
            ),
        ) {
            let cfg = config(loss, if adam { "adam" } else { "sgd" }, 6, 8);
            let mut host = Learner::new(&cfg, Device::Cpu, &init).unwrap();
            let mut autograd = Learner::new(&cfg, Device::Cpu, &init).unwrap();
            autograd.host_tabular = false;
            for l in [&mut host, &mut autograd] {
                l.ingest(ActorBatch {
                    actor: 0,
                    trajectories: rows.iter().enumerate().map(|(i, r)| trajectory(i, r)).collect(),
                });
            }
            for _ in 0..3 {
                prop_assert!(host.ready() && autograd.ready());
                let (h, a) = (host.train_step().unwrap(), autograd.train_step().unwrap());
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * (1.0 + y.abs());
                prop_assert!(close(h.loss, a.loss), "loss {} vs {}", h.loss, a.loss);
                prop_assert!(close(h.grad_norm, a.grad_norm), "norm {} vs {}", h.grad_norm, a.grad_norm);
                prop_assert!(close(h.entropy, a.entropy), "entropy {} vs {}", h.entropy, a.entropy);
                prop_assert!(close(h.baseline, a.baseline) && close(h.batch_reward, a.batch_reward));
                for (x, y) in host.logits().unwrap().iter().zip(autograd.logits().unwrap()) {
                    prop_assert!(close(*x, y), "logit {} vs {}", x, y);
                }
            }
            prop_assert_eq!(host.step, 3);
        }
    }

    #[test]
    fn host_tabular_step_rejects_an_arm_out_of_range_and_skips_an_injected_nan() {
        let mut cfg = config("asymre", "sgd", 4, 2);
        let mut learner = Learner::new(&cfg, Device::Cpu, &[0.0; 4]).unwrap();
        learner.ingest(ActorBatch {
            actor: 0,
            trajectories: vec![trajectory(0, &(9, 1.0, -1.0, 0.5, 0.1, 0.5)); 2],
        });
        assert!(learner.ready());
        let err = learner.train_step().unwrap_err().to_string();
        assert!(err.contains("actions [9] for 4 arms"), "{err}");

        cfg.learner.skip_nonfinite = true;
        cfg.faults.nonfinite_loss_every = 1;
        let mut learner = Learner::new(&cfg, Device::Cpu, &[0.0; 4]).unwrap();
        learner.ingest(ActorBatch {
            actor: 0,
            trajectories: vec![trajectory(0, &(1, 1.0, -1.0, 0.5, 0.1, 0.5)); 2],
        });
        let stats = learner.train_step().unwrap();
        assert!(stats.loss.is_nan());
        assert_eq!((learner.step, learner.nonfinite_skipped), (1, 1));
        assert_eq!(learner.logits().unwrap(), vec![0.0; 4]);
    }

    /// configs/tool_calc.toml with a one-layer transformer and batches of 32, then `extra`.
    fn tiny_tool_config(extra: &[String]) -> Config {
        let mut overrides: Vec<String> = [
            "policy.layers=1",
            "policy.d_model=32",
            "policy.heads=2",
            "actor.batch_size=32",
            "learner.batch_size=32",
        ]
        .map(String::from)
        .to_vec();
        overrides.extend_from_slice(extra);
        crate::config::from_toml_str(include_str!("../../configs/tool_calc.toml"), &overrides)
            .unwrap()
    }

    /// One message of tool-use episodes sampled by an actor with the weights `snapshot`.
    fn tool_batch(cfg: &Config, snapshot: &WeightSnapshot) -> ActorBatch {
        use crate::env::tool_use::tasks::Task;
        use crate::ids::SourceId;
        use crate::rl::actor::{Actor, ToolActor};
        let task = Task::new(cfg.env.task_spec(cfg.seed));
        let protocol = crate::env::tool_use::protocol::TokenProtocol {
            limits: cfg.env.limits(),
        };
        let mut actor: ToolActor<crate::policy::Transformer, _, _> =
            ToolActor::new(cfg, SourceId::new(0, 0, 0), task, protocol, snapshot).unwrap();
        actor.act().unwrap()
    }

    /// On policy (the actor samples with the learner's own weights), the ratio π/μ the learner
    /// hands the ratio losses is 1 at every token the policy wrote: the learner's scoring of a
    /// replayed batch and the actor's stored log μ line up position by position.
    #[test]
    fn on_policy_the_ratio_is_one_at_every_policy_token() {
        let cfg = tiny_tool_config(&[]);
        let mut learner = Learner::new(&cfg, Device::Cpu, &[]).unwrap();
        let snapshot = learner.snapshot().unwrap();
        learner.ingest(tool_batch(&cfg, &snapshot));
        assert!(learner.ready());
        let positions = learner.replay.sample(0, &mut learner.rng);
        let batch: Vec<&Trajectory> = positions.iter().map(|&p| learner.replay.get(p)).collect();
        let scores = learner.policy.score(&batch, Device::Cpu).unwrap();
        let behaviour = learner
            .policy
            .behaviour_token_logp(&batch, Device::Cpu)
            .unwrap();
        let to_vec = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        let (target, behaviour, mask) = (
            to_vec(&scores.token_logp),
            to_vec(&behaviour),
            to_vec(&scores.mask),
        );
        assert_eq!(target.len(), behaviour.len());
        let mut tokens = 0;
        for ((t, b), m) in target.iter().zip(&behaviour).zip(&mask) {
            if *m > 0.0 {
                let ratio = ((t - b) as f64).exp();
                assert!(
                    (ratio - 1.0).abs() < 1e-5,
                    "π/μ = {ratio} (log π {t}, log μ {b})"
                );
                tokens += 1;
            }
        }
        let written: usize = batch
            .iter()
            .map(|t| t.policy_mask.iter().filter(|&&m| m).count())
            .sum();
        assert_eq!(tokens, written, "every policy token is compared");
    }

    /// A step taken in micro-batches (uneven ones: 32 samples in passes of 5) is the step the
    /// whole batch takes in one pass: the same loss, gradient norm, entropy and weights after it,
    /// for AsymRE and for token-level GRPO (whose stored log μ is laid out per micro-batch).
    #[test]
    fn a_step_in_micro_batches_is_the_whole_batchs_step() {
        for loss in ["asymre", "grpo"] {
            let config = |micro: usize| {
                tiny_tool_config(&[
                    "learner.optimizer=\"sgd\"".into(),
                    "learner.lr=0.5".into(),
                    format!("loss.kind=\"{loss}\""),
                    format!("learner.micro_batch={micro}"),
                ])
            };
            let (cfg, micro_cfg) = (config(0), config(5));
            let mut whole = Learner::new(&cfg, Device::Cpu, &[]).unwrap();
            let mut micro = Learner::new(&micro_cfg, Device::Cpu, &[]).unwrap();
            micro.vs.copy(&whole.vs).unwrap();
            let snapshot = whole.snapshot().unwrap();
            let batch = tool_batch(&cfg, &snapshot);
            let rewards: Vec<f32> = batch.trajectories.iter().map(|t| t.reward).collect();
            assert!(
                rewards.iter().any(|&r| r != rewards[0]),
                "the batch's rewards differ, so the loss has a gradient: {rewards:?}"
            );
            whole.ingest(batch.clone());
            micro.ingest(batch);
            assert!(whole.ready() && micro.ready());
            let (w, m) = (whole.train_step().unwrap(), micro.train_step().unwrap());
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * (1.0 + y.abs());
            assert!(
                close(w.loss, m.loss),
                "{loss}: loss {} vs {}",
                w.loss,
                m.loss
            );
            assert!(w.grad_norm > 1e-3, "{loss}: a gradient to compare");
            assert!(
                close(w.grad_norm, m.grad_norm),
                "{loss}: norm {} vs {}",
                w.grad_norm,
                m.grad_norm
            );
            assert!(
                close(w.entropy, m.entropy),
                "{loss}: entropy {} vs {}",
                w.entropy,
                m.entropy
            );
            let before = snapshot
                .tensors
                .iter()
                .map(|t| t.to_tensor(Device::Cpu).unwrap());
            let mut moved = 0.0f64;
            for (((name, a), (_, b)), start) in sorted_vars(&whole.vs)
                .iter()
                .zip(sorted_vars(&micro.vs))
                .zip(before)
            {
                let diff = a.f_sub(&b).unwrap().abs().max().double_value(&[]);
                let scale = a.abs().max().double_value(&[]);
                assert!(
                    diff <= 1e-5 * (1.0 + scale),
                    "{loss}: {name} differs by {diff}"
                );
                moved = moved.max(a.f_sub(&start).unwrap().abs().max().double_value(&[]));
            }
            assert!(moved > 1e-4, "{loss}: the step moved the weights ({moved})");
        }
    }
}
