//! The plain data an actor sends to the learner.
use serde::{Deserialize, Serialize};

/// One sampled trajectory y for a prompt x, with what the losses need about its behaviour policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Identifies the prompt x; the G samples of one prompt share it.
    pub prompt: u64,
    /// The policy's actions (the bandit: one arm).
    pub actions: Vec<u32>,
    /// The verifiable reward r(y).
    pub reward: f32,
    /// log μ(y): the behaviour policy's log-probability of the actions, summed.
    pub behaviour_logp: f32,
    /// V̂(x): the mean reward of the G samples drawn for this prompt, this one included.
    pub group_mean: f32,
    /// V^μ(x) = E_{y~μ}[r(y)] when the environment can compute it exactly (the bandit).
    pub behaviour_value: Option<f32>,
    /// The learner step of the weights that produced it.
    pub policy_version: u64,
    /// Sequence tasks: true where the policy wrote `actions[i]` (prompt and tool results are
    /// masked out of the loss). Empty for the bandit.
    #[serde(default)]
    pub policy_mask: Vec<bool>,
    /// Sequence tasks: log μ of each token the policy wrote, aligned with `actions` (0 elsewhere);
    /// token-level GRPO's ratios. Empty for the bandit (`behaviour_logp` is its one action's).
    #[serde(default)]
    pub behaviour_token_logp: Vec<f32>,
    /// Standard deviation of the rewards of the prompt's G samples (GRPO's advantage scale).
    #[serde(default)]
    pub group_std: f32,
    /// Tool use: how the episode went.
    #[serde(default)]
    pub stats: Option<EpisodeStats>,
}

/// How a tool-use episode went: its reward's parts and its generated length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodeStats {
    pub score: crate::reward::Score,
    pub length: u32,
}

/// One actor message: a batch of trajectories, so the channel carries few, large messages.
#[derive(Debug, Clone)]
pub struct ActorBatch {
    pub actor: usize,
    pub trajectories: Vec<Trajectory>,
}
