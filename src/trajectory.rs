//! The plain data an actor sends to the learner.
use serde::{Deserialize, Serialize};

/// One sampled trajectory y for a prompt x, with what the losses need about its behaviour policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Identifies the prompt x; the G samples of one prompt share it.
    pub prompt: crate::ids::PromptId,
    /// The policy's actions (the bandit: one arm).
    pub actions: Actions,
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
    /// Tool use: how the episode went (boxed: the bandit's samples, which have none, stay small
    /// to copy).
    #[serde(default)]
    pub stats: Option<Box<EpisodeStats>>,
}

/// A trajectory's actions. One action (a bandit arm) is kept inline, so the millions of arm
/// samples a second the bandit sends cost no heap allocation; sequences live on the heap. It reads
/// as a `[u32]` and is stored (checkpoints, JSON) as a plain list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Vec<u32>", into = "Vec<u32>")]
pub enum Actions {
    One(u32),
    Many(Vec<u32>),
}

impl From<Vec<u32>> for Actions {
    fn from(v: Vec<u32>) -> Self {
        match v[..] {
            [a] => Actions::One(a),
            _ => Actions::Many(v),
        }
    }
}

impl From<Actions> for Vec<u32> {
    fn from(a: Actions) -> Self {
        match a {
            Actions::One(a) => vec![a],
            Actions::Many(v) => v,
        }
    }
}

impl std::ops::Deref for Actions {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            Actions::One(a) => std::slice::from_ref(a),
            Actions::Many(v) => v,
        }
    }
}

impl PartialEq for Actions {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

/// How a tool-use episode went: its reward's parts and its generated length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpisodeStats {
    pub score: crate::env::tool_use::reward::Score,
    pub length: u32,
}

impl Trajectory {
    /// A token trajectory written by policy version 0 with log μ = `token_logp` at each token
    /// the policy wrote (`policy_mask`), as the benchmarks and tests build them.
    pub fn synthetic(
        prompt: crate::ids::PromptId,
        actions: Vec<u32>,
        first_policy_token: usize,
        token_logp: f32,
        reward: f32,
    ) -> Self {
        let policy_mask: Vec<bool> = (0..actions.len())
            .map(|i| i >= first_policy_token)
            .collect();
        let written = policy_mask.iter().filter(|&&m| m).count();
        Trajectory {
            prompt,
            behaviour_token_logp: policy_mask
                .iter()
                .map(|&m| if m { token_logp } else { 0.0 })
                .collect(),
            actions: actions.into(),
            reward,
            behaviour_logp: token_logp * written as f32,
            group_mean: 0.0,
            behaviour_value: None,
            policy_version: 0,
            policy_mask,
            stats: None,
            group_std: 1.0,
        }
    }
}

/// One actor message: a batch of trajectories, so the channel carries few, large messages.
#[derive(Debug, Clone)]
pub struct ActorBatch {
    pub actor: usize,
    pub trajectories: Vec<Trajectory>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_and_serialise_as_a_list_whatever_their_length() {
        for v in [vec![], vec![7], vec![1, 2, 3]] {
            let a = Actions::from(v.clone());
            assert_eq!(&a[..], &v[..]);
            assert_eq!(matches!(a, Actions::One(_)), v.len() == 1);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, serde_json::to_string(&v).unwrap());
            assert_eq!(serde_json::from_str::<Actions>(&json).unwrap(), a);
        }
        assert_eq!(Actions::One(4), Actions::Many(vec![4]));
    }
}
