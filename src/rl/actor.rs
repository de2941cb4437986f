//! Actors: each owns a copy of the policy (its own `VarStore`) and an RNG stream, samples
//! trajectories from the behaviour policy μ (the last weights it loaded), scores them, and sends
//! them to the learner in batches tagged with `policy_version` and log μ(y).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Device;

use crate::config::{Config, RewardConfig};
use crate::env::tool_use::reward;
use crate::env::Bandit;
use crate::env::{Decodable, Protocol, ProtocolEpisode, TaskSource, ToolSet};
use crate::error::{Error, Result};
use crate::ids::SourceId;
use crate::policy::tabular::sampling_probs;
use crate::policy::{PolicyModel, TabularPolicy, ToolPolicy, WeightSnapshot};
use crate::rollout::{Decoding, Player};
use crate::trajectory::{Actions, ActorBatch, EpisodeStats, Trajectory};
use crate::transport::{RunControl, TrajectorySink, WeightBoard};

/// The part of an actor that must survive a checkpoint for an exact resume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActorState {
    /// Who it is: its session, id and restart count ([`crate::ids`]).
    pub source: SourceId,
    /// Its own stream (the bandit's arm draws).
    pub rng: ChaCha8Rng,
    /// Messages sent so far; the next one's number.
    pub messages: u64,
}

impl ActorState {
    /// A fresh state for `source`: its own stream, no message sent.
    pub fn new(seed: u64, source: SourceId) -> Self {
        ActorState {
            source,
            rng: source.stream(seed),
            messages: 0,
        }
    }
}

/// What every actor keeps besides its environment: its own `VarStore` for the behaviour weights,
/// the learner step of those weights, its ids, RNG and message counter, and the sampling
/// settings.
#[derive(Debug)]
pub struct ActorCore {
    pub vs: VarStore,
    /// Where it decodes (`actor.device`).
    pub device: Device,
    /// The learner step of the weights it samples from.
    pub version: u64,
    pub state: ActorState,
    pub seed: u64,
    pub temperature: f64,
    /// Trajectories per message.
    pub batch_size: usize,
    /// G: samples per prompt.
    pub group_size: usize,
}

impl ActorCore {
    /// The core of the actor `source`, with an empty `VarStore` on `actor.device`.
    pub fn new(cfg: &Config, source: SourceId) -> Result<Self> {
        let device = crate::device::resolve_device(cfg.actor.device)?;
        Ok(ActorCore {
            vs: VarStore::new(device),
            device,
            version: 0,
            state: ActorState::new(cfg.seed, source),
            seed: cfg.seed,
            temperature: cfg.policy.temperature,
            batch_size: cfg.actor.batch_size,
            group_size: cfg.actor.group_size,
        })
    }

    /// Copies the snapshot's weights into the `VarStore` and takes its version.
    fn load(&mut self, snapshot: &WeightSnapshot) -> Result<()> {
        snapshot.load_into(&self.vs)?;
        self.version = snapshot.version;
        Ok(())
    }

    /// The next message's number.
    fn next_message(&mut self) -> u64 {
        let n = self.state.messages;
        self.state.messages += 1;
        n
    }
}

/// What the actor/learner loops need from an actor.
pub trait Actor: Send {
    fn core(&self) -> &ActorCore;
    fn core_mut(&mut self) -> &mut ActorCore;
    /// Loads new behaviour weights.
    fn load(&mut self, snapshot: &WeightSnapshot) -> Result<()>;
    /// Samples and scores one message of trajectories.
    fn act(&mut self) -> Result<ActorBatch>;

    fn id(&self) -> usize {
        self.core().state.source.actor as usize
    }

    /// The learner step of the weights it samples from.
    fn version(&self) -> u64 {
        self.core().version
    }

    fn state(&self) -> &ActorState {
        &self.core().state
    }

    fn set_state(&mut self, state: ActorState) {
        self.core_mut().state = state;
    }
}

/// Sets each trajectory's `group_mean` and `group_std` to the mean and standard deviation of the
/// rewards of its run of `group_size` samples.
fn fill_group_stats(trajectories: &mut [Trajectory], group_size: usize) {
    for group in trajectories.chunks_mut(group_size) {
        let n = group.len() as f64;
        let mean = group.iter().map(|t| t.reward as f64).sum::<f64>() / n;
        let var = group
            .iter()
            .map(|t| (t.reward as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        for t in group {
            t.group_mean = mean as f32;
            t.group_std = var.sqrt() as f32;
        }
    }
}

/// A bandit actor.
#[derive(Debug)]
pub struct BanditActor {
    core: ActorCore,
    policy: TabularPolicy,
    bandit: Bandit,
    /// μ as a cumulative distribution, rebuilt when weights are loaded.
    cdf: Vec<f64>,
    /// log μ(y) per arm.
    log_probs: Vec<f64>,
    /// V^μ = Σ μ(y) r(y).
    value: f64,
}

impl BanditActor {
    /// Actor `source` holding the weights of `snapshot`.
    pub fn new(
        cfg: &Config,
        source: SourceId,
        bandit: Bandit,
        snapshot: &WeightSnapshot,
    ) -> Result<Self> {
        let core = ActorCore::new(cfg, source)?;
        let policy = TabularPolicy::new(&core.vs.root(), &vec![0.0; bandit.arms()]);
        let mut actor = BanditActor {
            core,
            policy,
            bandit,
            cdf: Vec::new(),
            log_probs: Vec::new(),
            value: 0.0,
        };
        actor.load(snapshot)?;
        Ok(actor)
    }

    fn sample_arm(&mut self) -> usize {
        let u: f64 = self.core.state.rng.gen::<f64>() * self.cdf.last().copied().unwrap_or(1.0);
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

impl Actor for BanditActor {
    fn core(&self) -> &ActorCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut ActorCore {
        &mut self.core
    }

    fn load(&mut self, snapshot: &WeightSnapshot) -> Result<()> {
        self.core.load(snapshot)?;
        let mu = sampling_probs(&self.policy.logits()?, self.core.temperature);
        self.value = self.bandit.value(&mu);
        self.log_probs = mu.iter().map(|p| p.ln()).collect();
        let mut acc = 0.0;
        self.cdf = mu
            .iter()
            .map(|p| {
                acc += p;
                acc
            })
            .collect();
        Ok(())
    }

    /// One message: `batch_size / group_size` prompts × G arms each.
    fn act(&mut self) -> Result<ActorBatch> {
        let (batch_size, group_size) = (self.core.batch_size, self.core.group_size);
        let mut trajectories = Vec::with_capacity(batch_size);
        let message = self.core.next_message();
        for slot in 0..batch_size / group_size {
            let prompt = self.core.state.source.prompt(message, slot as u32);
            for _ in 0..group_size {
                let arm = self.sample_arm();
                let reward = self.bandit.pull(arm, &mut self.core.state.rng);
                trajectories.push(Trajectory {
                    prompt,
                    actions: Actions::One(arm as u32),
                    reward: reward as f32,
                    behaviour_logp: self.log_probs[arm] as f32,
                    group_mean: 0.0,
                    behaviour_value: Some(self.value as f32),
                    policy_version: self.core.version,
                    policy_mask: Vec::new(),
                    stats: None,
                    behaviour_token_logp: Vec::new(),
                    group_std: 0.0,
                });
            }
        }
        fill_group_stats(&mut trajectories, group_size);
        Ok(ActorBatch {
            actor: self.id(),
            trajectories,
        })
    }
}

/// A tool-use actor: decodes `batch_size / group_size` train-split prompts, G episodes each, in
/// lockstep with its own copy of the policy on `actor.device` (the small transformer on the
/// token protocol, or a pretrained LM in its chat format), playing the items of `task`.
pub struct ToolActor<M, R, T> {
    core: ActorCore,
    model: M,
    protocol: R,
    task: T,
    reward: RewardConfig,
}

impl<M: ToolPolicy, R, T> ToolActor<M, R, T> {
    /// Actor `source` with its own copy of the configured policy (a pretrained LM's base is
    /// loaded from its files; the snapshots it loads hold only what trains), playing `task` in
    /// `protocol`, sampling from the weights of `snapshot`.
    pub fn new(
        cfg: &Config,
        source: SourceId,
        task: T,
        protocol: R,
        snapshot: &WeightSnapshot,
    ) -> Result<Self> {
        let mut core = ActorCore::new(cfg, source)?;
        let (vs, model) = PolicyModel::load(cfg, core.device, &[])?;
        core.vs = vs;
        let mut actor = ToolActor {
            core,
            model: M::from_model(model)?,
            protocol,
            task,
            reward: cfg.reward.clone(),
        };
        actor.core.load(snapshot)?;
        actor.model.decode_from(cfg.policy.decode_weights)?;
        Ok(actor)
    }
}

impl<M, R, T> Actor for ToolActor<M, R, T>
where
    M: ToolPolicy,
    T: TaskSource + ToolSet<T::Item> + Send,
    R: Protocol<T> + Send,
{
    fn core(&self) -> &ActorCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut ActorCore {
        &mut self.core
    }

    fn load(&mut self, snapshot: &WeightSnapshot) -> Result<()> {
        self.core.load(snapshot)?;
        self.model.weights_changed()
    }

    fn act(&mut self) -> Result<ActorBatch> {
        let (batch_size, group_size) = (self.core.batch_size, self.core.group_size);
        let mut items = Vec::with_capacity(batch_size);
        let mut prompts = Vec::with_capacity(batch_size);
        let message = self.core.next_message();
        let source = self.core.state.source;
        for slot in 0..batch_size / group_size {
            let prompt = source.prompt(message, slot as u32);
            let item = self.task.prompt_item(&prompt);
            for _ in 0..group_size {
                items.push(item.clone());
                prompts.push(prompt);
            }
        }
        let streams = (0..batch_size as u32)
            .map(|slot| source.episode_stream(self.core.seed, message, slot))
            .collect();
        let decoding = Decoding::Sample {
            temperature: self.core.temperature,
        };
        let player = Player {
            model: &self.model,
            task: &self.task,
            protocol: &self.protocol,
            device: self.core.device,
        };
        let rollouts = player.rollout(items, decoding, streams)?;
        let mut trajectories = Vec::with_capacity(rollouts.len());
        for (r, prompt) in rollouts.into_iter().zip(prompts) {
            let ep = &r.episode;
            let gold = self
                .task
                .gold(ep.item())
                .ok_or_else(|| Error::Corrupt("a generated item has no gold answer".into()))?;
            let s = reward::score(&self.reward, ep.attempt(), &gold);
            trajectories.push(Trajectory {
                prompt,
                reward: s.reward as f32,
                behaviour_logp: r.behaviour_logp as f32,
                group_mean: 0.0,
                behaviour_value: None,
                policy_version: self.core.version,
                stats: Some(Box::new(EpisodeStats {
                    score: s,
                    length: (ep.tokens().len() - ep.prompt_len()) as u32,
                })),
                actions: ep.tokens().to_vec().into(),
                policy_mask: ep.policy_mask().to_vec(),
                behaviour_token_logp: r.token_logp,
                group_std: 0.0,
            });
        }
        fill_group_stats(&mut trajectories, group_size);
        Ok(ActorBatch {
            actor: self.id(),
            trajectories,
        })
    }
}

/// What an actor thread is given besides its actor: the run's transport, and the injected
/// faults of `[faults]`.
pub struct ActorLinks<'a> {
    pub sink: &'a dyn TrajectorySink,
    pub board: &'a dyn WeightBoard,
    pub control: &'a dyn RunControl,
    /// `faults.actor_panic_after`: the first actor to send this many messages panics, once
    /// per process (0 = never).
    pub panic_after: u64,
    /// `faults.actor_delay_ms`: sleep this long after every message (a slow actor).
    pub delay: Duration,
}

/// Whether the injected actor fault already fired in this process (it fires once).
static INJECTED_PANIC: AtomicBool = AtomicBool::new(false);

/// The body of an actor thread: refresh weights, wait until its samples would still be fresh
/// when trained, sample, send; until the run stops or the learner hangs up.
pub fn actor_loop(mut actor: Box<dyn Actor>, links: ActorLinks<'_>) -> Result<()> {
    let mut sent = 0u64;
    let message = actor.core().batch_size as u64;
    while !links.control.stopped() {
        if links.board.version() != actor.version() {
            actor.load(&links.board.latest())?;
        }
        if !links.control.try_claim(actor.version(), message) {
            // Its samples would be stale by the time the learner reached them: wait for the
            // learner to move on (the timeout keeps `stop` responsive).
            links.control.wait_for_learner(Duration::from_millis(50));
            continue;
        }
        let batch = actor.act()?;
        if links.sink.send(batch).is_err() {
            break;
        }
        sent += 1;
        if !links.delay.is_zero() {
            std::thread::sleep(links.delay);
        }
        if links.panic_after > 0
            && sent >= links.panic_after
            && !INJECTED_PANIC.swap(true, Ordering::SeqCst)
        {
            panic!("injected fault after {sent} messages (faults.actor_panic_after)");
        }
    }
    Ok(())
}
