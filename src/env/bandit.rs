//! The K-armed bandit of the AsymRE paper's controlled setting (SPEC §3.1): arm rewards drawn
//! once per seed from U[0, 1], optionally observed through Bernoulli noise.
use rand::Rng;
use rand_distr::{Distribution, Normal};

use serde::{Deserialize, Serialize};

use crate::rng::{self, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardNoise {
    /// The reward of arm y is r(y) itself.
    None,
    /// The reward of arm y is a Bernoulli(r(y)) draw.
    Bernoulli,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BehaviourInit {
    /// All logits zero.
    Uniform,
    /// Logit of arm i is i / 10.
    Linear,
    /// Logits drawn from N(0, init_scale²).
    Gaussian,
}

/// The bandit's knobs (they live in `[env]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BanditSpec {
    pub arms: usize,
    pub reward_noise: RewardNoise,
    pub behaviour_init: BehaviourInit,
    /// The standard deviation of `gaussian` initial logits.
    pub init_scale: f64,
}

impl Default for BanditSpec {
    /// The paper's: 100 arms, no noise, uniform initial logits.
    fn default() -> Self {
        BanditSpec {
            arms: 100,
            reward_noise: RewardNoise::None,
            behaviour_init: BehaviourInit::Uniform,
            init_scale: 1.0,
        }
    }
}

/// A bandit instance: the arms' expected rewards r(y) and how a pull is observed.
#[derive(Debug, Clone)]
pub struct Bandit {
    arm_rewards: Vec<f64>,
    noise: RewardNoise,
}

impl Bandit {
    /// The instance of `seed`: the same seed gives the same arms whatever else is configured.
    pub fn new(cfg: &BanditSpec, seed: u64) -> Self {
        let mut rng = rng::stream(seed, Role::Env, 0);
        let arm_rewards = (0..cfg.arms).map(|_| rng.gen::<f64>()).collect();
        Bandit {
            arm_rewards,
            noise: cfg.reward_noise,
        }
    }

    /// r(y) for every arm.
    pub fn arm_rewards(&self) -> &[f64] {
        &self.arm_rewards
    }

    pub fn arms(&self) -> usize {
        self.arm_rewards.len()
    }

    /// One observed reward for pulling `arm`.
    pub fn pull(&self, arm: usize, rng: &mut impl Rng) -> f64 {
        let r = self.arm_rewards[arm];
        match self.noise {
            RewardNoise::None => r,
            RewardNoise::Bernoulli => {
                if rng.gen::<f64>() < r {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    /// Σ_y p(y) r(y): the value of a policy with probabilities `probs`.
    pub fn value(&self, probs: &[f64]) -> f64 {
        probs
            .iter()
            .zip(&self.arm_rewards)
            .map(|(p, r)| p * r)
            .sum()
    }
}

/// The initial logits of the policy (and so of the first behaviour policy).
pub fn initial_logits(cfg: &BanditSpec, seed: u64) -> Vec<f64> {
    match cfg.behaviour_init {
        BehaviourInit::Uniform => vec![0.0; cfg.arms],
        BehaviourInit::Linear => (0..cfg.arms).map(|i| i as f64 / 10.0).collect(),
        BehaviourInit::Gaussian => {
            let mut rng = rng::stream(seed, Role::Init, 0);
            let normal = Normal::new(0.0, cfg.init_scale).expect("init_scale is validated >= 0");
            (0..cfg.arms).map(|_| normal.sample(&mut rng)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_are_fixed_per_seed_and_in_unit_interval() {
        let cfg = BanditSpec::default();
        let a = Bandit::new(&cfg, 7);
        let b = Bandit::new(&cfg, 7);
        let c = Bandit::new(&cfg, 8);
        assert_eq!(a.arm_rewards(), b.arm_rewards());
        assert_ne!(a.arm_rewards(), c.arm_rewards());
        assert!(a.arm_rewards().iter().all(|r| (0.0..1.0).contains(r)));
        assert_eq!(a.arms(), 100);
    }

    #[test]
    fn bernoulli_noise_is_unbiased() {
        let cfg = BanditSpec {
            reward_noise: RewardNoise::Bernoulli,
            arms: 3,
            ..BanditSpec::default()
        };
        let b = Bandit::new(&cfg, 1);
        let mut rng = rng::stream(1, Role::Actor, 0);
        let n = 40_000;
        let mean = (0..n).map(|_| b.pull(2, &mut rng)).sum::<f64>() / n as f64;
        assert!(
            (mean - b.arm_rewards()[2]).abs() < 0.01,
            "{mean} vs {}",
            b.arm_rewards()[2]
        );
    }

    #[test]
    fn value_on_a_hand_computed_case() {
        let b = Bandit {
            arm_rewards: vec![0.0, 1.0],
            noise: RewardNoise::None,
        };
        assert!((b.value(&[0.25, 0.75]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn linear_init_is_index_over_ten() {
        let cfg = BanditSpec {
            behaviour_init: BehaviourInit::Linear,
            arms: 4,
            ..BanditSpec::default()
        };
        assert_eq!(initial_logits(&cfg, 0), vec![0.0, 0.1, 0.2, 0.3]);
    }
}
