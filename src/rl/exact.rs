//! The bandit's expected-gradient flow (SPEC §3.1, `env.mode = "exact"`): no sampling, the
//! exact gradient of E_{y~μ}[(r(y) − V) log π(y)] with respect to the logits,
//!
//! ```text
//! l ← l + η (μ⊙(r − V) − (Σ_y μ(y)(r(y) − V)) · softmax(l)),
//! ```
//!
//! with policy-iteration rounds: every `steps_per_round` steps the behaviour policy μ ← π.
//! Plain f64 arithmetic: bit-reproducible and far cheaper than dispatching tensor ops.
use serde::{Deserialize, Serialize};

use crate::config::{BaselineKind, LossConfig, LossKind};
use crate::env::Bandit;
use crate::math::softmax;

/// The flow's state: π's logits and the behaviour policy μ of the current round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExactFlow {
    pub logits: Vec<f64>,
    pub behaviour: Vec<f64>,
}

/// What one step of the flow measured.
#[derive(Debug, Clone, Copy)]
pub struct FlowStats {
    /// −Σ_y μ(y)(r(y) − V) log π(y), the expected AsymRE loss.
    pub loss: f64,
    /// L2 norm of the logits' gradient.
    pub grad_norm: f64,
}

/// The baseline V for behaviour value `v_mu`: `reinforce` uses 0, `relative` uses the exact V^μ.
pub fn baseline(cfg: &LossConfig, v_mu: f64) -> f64 {
    if cfg.kind == LossKind::Reinforce {
        return 0.0;
    }
    match cfg.baseline.kind {
        BaselineKind::Absolute => cfg.baseline.v,
        BaselineKind::Relative => v_mu + cfg.baseline.delta_v,
    }
}

impl ExactFlow {
    /// Starts with μ = π = softmax(logits).
    pub fn new(logits: Vec<f64>) -> Self {
        let behaviour = softmax(&logits);
        ExactFlow { logits, behaviour }
    }

    /// μ ← π: the start of a new policy-iteration round.
    pub fn new_round(&mut self) {
        self.behaviour = softmax(&self.logits);
    }

    /// One step of size `eta` against baseline `v`.
    pub fn step(&mut self, bandit: &Bandit, v: f64, eta: f64) -> FlowStats {
        let pi = softmax(&self.logits);
        // log π through log-sum-exp: ln(softmax) underflows to −∞ once the support collapses.
        let max = self
            .logits
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = max
            + self
                .logits
                .iter()
                .map(|l| (l - max).exp())
                .sum::<f64>()
                .ln();
        let r = bandit.arm_rewards();
        let weighted: Vec<f64> = self
            .behaviour
            .iter()
            .zip(r)
            .map(|(m, r)| m * (r - v))
            .collect();
        let total: f64 = weighted.iter().sum();
        let loss = -weighted
            .iter()
            .zip(&self.logits)
            .map(|(w, l)| w * (l - lse))
            .sum::<f64>();
        let mut norm2 = 0.0;
        for ((l, w), p) in self.logits.iter_mut().zip(&weighted).zip(&pi) {
            let ascent = w - total * p;
            norm2 += ascent * ascent;
            *l += eta * ascent;
        }
        FlowStats {
            loss,
            grad_norm: norm2.sqrt(),
        }
    }
}

/// The limit of the flow from a fixed μ when V < V^μ (derived from its fixed-point condition):
/// with a_y = μ(y)(r(y) − V) and c = V^μ − V > 0, π*(y) = (a_y − λ)₊ / c where λ ≥ 0 solves
/// Σ_y (a_y − λ)₊ = c. Arms with r(y) > V keep mass when V is well below V^μ: the support is
/// wide. Returns `None` when V ≥ V^μ, where the flow collapses instead.
pub fn limit_policy(mu: &[f64], rewards: &[f64], v: f64) -> Option<Vec<f64>> {
    let a: Vec<f64> = mu.iter().zip(rewards).map(|(m, r)| m * (r - v)).collect();
    let c: f64 = a.iter().sum();
    if c <= 0.0 {
        return None;
    }
    // Water-filling: sort a descending, find the largest k with a_(k) > λ_k.
    let mut sorted = a.clone();
    sorted.sort_by(|x, y| y.total_cmp(x));
    let mut lambda = 0.0;
    let mut acc = 0.0;
    for (k, &ak) in sorted.iter().enumerate() {
        acc += ak;
        let candidate = (acc - c) / (k + 1) as f64;
        if ak > candidate {
            lambda = candidate.max(0.0);
        } else {
            break;
        }
    }
    Some(a.iter().map(|&ay| (ay - lambda).max(0.0) / c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::bandit::BanditSpec;
    use crate::math::{entropy, support_size};
    use tch::{Kind, Tensor};

    fn bandit(arms: usize, seed: u64) -> Bandit {
        Bandit::new(
            &BanditSpec {
                arms,
                ..BanditSpec::default()
            },
            seed,
        )
    }

    /// The flow's update is exactly the negative autograd gradient of the AsymRE loss with the
    /// samples weighted by μ.
    #[test]
    fn step_matches_autograd_of_the_asymre_loss() {
        let b = bandit(7, 3);
        let mut flow = ExactFlow::new(vec![0.3, -0.2, 0.0, 0.5, 0.1, -0.4, 0.2]);
        flow.behaviour = softmax(&[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let v = 0.45;
        let before = flow.logits.clone();
        let l = Tensor::from_slice(&before).set_requires_grad(true);
        let logp = l.log_softmax(0, Kind::Double);
        let w: Vec<f64> = flow
            .behaviour
            .iter()
            .zip(b.arm_rewards())
            .map(|(m, r)| m * (r - v))
            .collect();
        let loss = -(Tensor::from_slice(&w) * logp).sum(Kind::Double);
        loss.backward();
        let grad = Vec::<f64>::try_from(l.grad()).unwrap();
        let stats = flow.step(&b, v, 1.0);
        for ((after, before), g) in flow.logits.iter().zip(&before).zip(&grad) {
            assert!((after - before + g).abs() < 1e-12, "{after} {before} {g}");
        }
        assert!((stats.loss - loss.double_value(&[])).abs() < 1e-12);
    }

    #[test]
    fn below_v_mu_converges_to_the_predicted_wide_limit() {
        let b = bandit(20, 5);
        let mut flow = ExactFlow::new(vec![0.0; 20]);
        let v_mu = b.value(&flow.behaviour);
        let v = v_mu - 0.2;
        for _ in 0..200_000 {
            flow.step(&b, v, 1.0);
        }
        let pi = softmax(&flow.logits);
        let want = limit_policy(&flow.behaviour, b.arm_rewards(), v).unwrap();
        let max_err = pi
            .iter()
            .zip(&want)
            .map(|(p, w)| (p - w).abs())
            .fold(0.0, f64::max);
        assert!(max_err < 2e-3, "max |π − π*| = {max_err}");
        assert!(support_size(&pi) >= 10, "support {}", support_size(&pi));
        assert!(b.value(&pi) > v_mu, "improves on μ");
    }

    #[test]
    fn above_v_mu_collapses_to_one_arm() {
        let b = bandit(20, 5);
        let mut flow = ExactFlow::new(vec![0.0; 20]);
        let v = b.value(&flow.behaviour) + 0.1;
        for _ in 0..5000 {
            flow.step(&b, v, 1.0);
        }
        let pi = softmax(&flow.logits);
        assert_eq!(support_size(&pi), 1);
        assert!(entropy(&pi) < 0.05);
        assert!(limit_policy(&flow.behaviour, b.arm_rewards(), v).is_none());
    }

    #[test]
    fn limit_policy_on_a_hand_computed_case() {
        // μ uniform over 2 arms, r = (1, 0), V = 0.25: a = (0.375, −0.125), c = 0.25.
        // λ = 0.375 − 0.25 = 0.125 → π* = (1, 0): the losing arm leaves the support.
        let pi = limit_policy(&[0.5, 0.5], &[1.0, 0.0], 0.25).unwrap();
        assert!((pi[0] - 1.0).abs() < 1e-12 && pi[1] == 0.0);
        // All rewards above V: λ = 0 and π* ∝ μ(r − V).
        let pi = limit_policy(&[0.5, 0.5], &[1.0, 0.5], 0.0).unwrap();
        assert!((pi[0] - 2.0 / 3.0).abs() < 1e-12);
    }
}
