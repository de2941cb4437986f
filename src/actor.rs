//! Actors: each owns a copy of the policy (its own `VarStore`) and an RNG stream, samples
//! trajectories from the behaviour policy μ (the last weights it loaded), scores them, and sends
//! them to the learner in batches tagged with `policy_version` and log μ(y).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Device;

use crate::config::Config;
use crate::env::Bandit;
use crate::error::Result;
use crate::policy::tabular::sampling_probs;
use crate::policy::{TabularPolicy, WeightSnapshot};
use crate::rng::{self, Role};
use crate::trajectory::{ActorBatch, Trajectory};

/// The part of an actor that must survive a checkpoint for an exact resume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActorState {
    pub rng: ChaCha8Rng,
    pub next_prompt: u64,
}

/// A bandit actor.
#[derive(Debug)]
pub struct BanditActor {
    pub id: usize,
    vs: VarStore,
    policy: TabularPolicy,
    bandit: Bandit,
    temperature: f64,
    batch_size: usize,
    group_size: usize,
    state: ActorState,
    version: u64,
    /// μ as a cumulative distribution, rebuilt when weights are loaded.
    cdf: Vec<f64>,
    /// log μ(y) per arm.
    log_probs: Vec<f64>,
    /// V^μ = Σ μ(y) r(y).
    value: f64,
}

impl BanditActor {
    /// Actor `id` holding the weights of `snapshot`.
    pub fn new(cfg: &Config, id: usize, bandit: Bandit, snapshot: &WeightSnapshot) -> Result<Self> {
        let (vs, policy) = TabularPolicy::build(Device::Cpu, &vec![0.0; bandit.arms()]);
        let mut actor = BanditActor {
            id,
            vs,
            policy,
            bandit,
            temperature: cfg.policy.temperature,
            batch_size: cfg.actor.batch_size,
            group_size: cfg.actor.group_size,
            state: ActorState {
                rng: rng::stream(cfg.seed, Role::Actor, id as u64),
                next_prompt: 0,
            },
            version: 0,
            cdf: Vec::new(),
            log_probs: Vec::new(),
            value: 0.0,
        };
        actor.load(snapshot)?;
        Ok(actor)
    }

    /// Loads new behaviour weights.
    pub fn load(&mut self, snapshot: &WeightSnapshot) -> Result<()> {
        snapshot.load_into(&self.vs)?;
        self.version = snapshot.version;
        let mu = sampling_probs(&self.policy.logits()?, self.temperature);
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

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn state(&self) -> &ActorState {
        &self.state
    }

    pub fn set_state(&mut self, state: ActorState) {
        self.state = state;
    }

    fn sample_arm(&mut self) -> usize {
        let u: f64 = self.state.rng.gen::<f64>() * self.cdf.last().copied().unwrap_or(1.0);
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    /// Samples one message: `batch_size / group_size` prompts × G arms each.
    pub fn act(&mut self) -> ActorBatch {
        let mut trajectories = Vec::with_capacity(self.batch_size);
        for _ in 0..self.batch_size / self.group_size {
            let prompt = self.state.next_prompt;
            self.state.next_prompt += 1;
            let first = trajectories.len();
            for _ in 0..self.group_size {
                let arm = self.sample_arm();
                let reward = self.bandit.pull(arm, &mut self.state.rng);
                trajectories.push(Trajectory {
                    prompt,
                    actions: vec![arm as u32],
                    reward: reward as f32,
                    behaviour_logp: self.log_probs[arm] as f32,
                    group_mean: 0.0,
                    behaviour_value: Some(self.value as f32),
                    policy_version: self.version,
                });
            }
            let group = &mut trajectories[first..];
            let mean = group.iter().map(|t| t.reward as f64).sum::<f64>() / group.len() as f64;
            for t in group {
                t.group_mean = mean as f32;
            }
        }
        ActorBatch {
            actor: self.id,
            trajectories,
        }
    }
}

/// The latest published weights, read by every actor thread.
#[derive(Debug)]
pub struct SnapshotBoard {
    latest: Mutex<Arc<WeightSnapshot>>,
    version: AtomicU64,
}

impl SnapshotBoard {
    pub fn new(first: WeightSnapshot) -> Self {
        let version = first.version;
        SnapshotBoard {
            latest: Mutex::new(Arc::new(first)),
            version: AtomicU64::new(version),
        }
    }

    pub fn publish(&self, snapshot: WeightSnapshot) {
        let version = snapshot.version;
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        *latest = Arc::new(snapshot);
        self.version.store(version, Ordering::Release);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn latest(&self) -> Arc<WeightSnapshot> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What an actor thread shares with the rest of the run.
pub struct ActorShared<'a> {
    pub board: &'a SnapshotBoard,
    pub stop: &'a AtomicBool,
    /// The learner's current step, for pacing by `max_policy_lag`.
    pub learner_step: &'a AtomicU64,
    pub max_policy_lag: u64,
}

/// The body of an actor thread: refresh weights, respect the lag limit, sample, send; until the
/// run stops or the learner hangs up.
pub fn actor_loop(
    mut actor: BanditActor,
    tx: Sender<ActorBatch>,
    shared: ActorShared<'_>,
) -> Result<()> {
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.board.version() != actor.version() {
            actor.load(&shared.board.latest())?;
        }
        let lag = shared
            .learner_step
            .load(Ordering::Relaxed)
            .saturating_sub(actor.version());
        if shared.max_policy_lag > 0 && lag > shared.max_policy_lag {
            // Pace rather than produce samples the learner would drop.
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let batch = actor.act();
        if tx.send(batch).is_err() {
            break;
        }
    }
    Ok(())
}
