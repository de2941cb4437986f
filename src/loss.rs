//! The policy-gradient losses, as pure functions of per-sample tensors.
//!
//! AsymRE (Arnal et al. 2025, arXiv 2506.20520): loss = −mean_i[(r_i − V_i)·log π(y_i)], no ratio,
//! no clipping. With V below the behaviour policy's value V^μ training is stable; at or above it the
//! support of π collapses. `naive` holds f64 oracles the tensor versions are tested against.
use tch::{Kind, Tensor};

use crate::config::{BaselineKind, Estimate, LossConfig, LossKind};
use crate::error::Result;
use crate::trajectory::Trajectory;

/// −mean((reward − baseline) · target_logp). All arguments are [B]; the result is a scalar.
pub fn asymre(target_logp: &Tensor, reward: &Tensor, baseline: &Tensor) -> Result<Tensor> {
    let advantage = reward.f_sub(baseline)?;
    Ok(advantage.f_mul(target_logp)?.f_mean(Kind::Float)?.f_neg()?)
}

/// Plain REINFORCE: −mean(reward · target_logp), i.e. AsymRE with V = 0.
pub fn reinforce(target_logp: &Tensor, reward: &Tensor) -> Result<Tensor> {
    Ok(reward.f_mul(target_logp)?.f_mean(Kind::Float)?.f_neg()?)
}

/// V_i for each trajectory, from the configured baseline. `reinforce` uses V = 0.
pub fn baseline_values(cfg: &LossConfig, batch: &[&Trajectory]) -> Vec<f32> {
    batch.iter().map(|t| baseline_value(cfg, t)).collect()
}

fn baseline_value(cfg: &LossConfig, t: &Trajectory) -> f32 {
    if cfg.kind == LossKind::Reinforce {
        return 0.0;
    }
    let b = &cfg.baseline;
    match b.kind {
        BaselineKind::Absolute => b.v as f32,
        BaselineKind::Relative => {
            let v_hat = match b.estimate {
                Estimate::Group => t.group_mean,
                Estimate::Exact => t.behaviour_value.unwrap_or(t.group_mean),
            };
            v_hat + b.delta_v as f32
        }
    }
}

/// Applies the configured loss.
pub fn compute(
    cfg: &LossConfig,
    target_logp: &Tensor,
    reward: &Tensor,
    baseline: &Tensor,
) -> Result<Tensor> {
    match cfg.kind {
        LossKind::Asymre => asymre(target_logp, reward, baseline),
        LossKind::Reinforce => reinforce(target_logp, reward),
    }
}

/// Straightforward f64 versions, the oracles of the property tests.
pub mod naive {
    /// −(1/B) Σ (r_i − V_i) logp_i.
    pub fn asymre(target_logp: &[f64], reward: &[f64], baseline: &[f64]) -> f64 {
        let n = target_logp.len() as f64;
        -target_logp
            .iter()
            .zip(reward)
            .zip(baseline)
            .map(|((l, r), v)| (r - v) * l)
            .sum::<f64>()
            / n
    }

    /// ∂loss/∂logp_i = −(r_i − V_i)/B.
    pub fn asymre_grad(reward: &[f64], baseline: &[f64]) -> Vec<f64> {
        let n = reward.len() as f64;
        reward
            .iter()
            .zip(baseline)
            .map(|(r, v)| -(r - v) / n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BaselineConfig, LossConfig};
    use crate::policy::TabularPolicy;
    use proptest::prelude::*;
    use tch::Device;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v).to_kind(Kind::Float)
    }

    proptest! {
        #[test]
        fn prop_asymre_matches_naive(
            rows in prop::collection::vec((-20.0f64..0.0, -1.0f64..1.0, -1.0f64..1.0), 1..64)
        ) {
            let logp: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let reward: Vec<f64> = rows.iter().map(|r| r.1).collect();
            let baseline: Vec<f64> = rows.iter().map(|r| r.2).collect();
            let lp = t(&logp).set_requires_grad(true);
            let loss = asymre(&lp, &t(&reward), &t(&baseline)).unwrap();
            let want = naive::asymre(&logp, &reward, &baseline);
            let got = loss.double_value(&[]);
            prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} vs {}", got, want);
            loss.backward();
            let grad = Vec::<f64>::try_from(lp.grad().to_kind(Kind::Double)).unwrap();
            for (g, w) in grad.iter().zip(naive::asymre_grad(&reward, &baseline)) {
                prop_assert!((g - w).abs() <= 1e-6, "{} vs {}", g, w);
            }
        }

        #[test]
        fn prop_reinforce_is_asymre_with_zero_baseline(
            rows in prop::collection::vec((-20.0f64..0.0, -1.0f64..1.0), 1..32)
        ) {
            let logp: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let reward: Vec<f64> = rows.iter().map(|r| r.1).collect();
            let zeros = vec![0.0; rows.len()];
            let got = reinforce(&t(&logp), &t(&reward)).unwrap().double_value(&[]);
            prop_assert!((got - naive::asymre(&logp, &reward, &zeros)).abs() < 1e-4);
        }
    }

    /// A gradient-descent step on one sampled arm raises its logit iff r > V.
    #[test]
    fn gradient_sign_on_sampled_action_follows_advantage() {
        for (reward, v) in [(0.8, 0.5), (0.2, 0.5), (0.5, 0.5)] {
            let (_vs, policy) = TabularPolicy::build(Device::Cpu, &[0.0, 0.3, -0.2, 0.1]);
            let arms = Tensor::from_slice(&[2i64]);
            let logp = policy.target_logp(&arms).unwrap();
            let loss = asymre(&logp, &t(&[reward]), &t(&[v])).unwrap();
            loss.backward();
            let grad =
                Vec::<f64>::try_from(_vs.trainable_variables()[0].grad().to_kind(Kind::Double))
                    .unwrap();
            // d loss / d logit_a = −(r − V)(1 − π_a): descent moves the logit by +(r − V)(1 − π_a).
            let descent = -grad[2];
            if reward > v {
                assert!(descent > 0.0, "r={reward} V={v} descent={descent}");
            } else if reward < v {
                assert!(descent < 0.0, "r={reward} V={v} descent={descent}");
            } else {
                assert_eq!(descent, 0.0);
            }
            // The other arms move the opposite way.
            assert!(grad[0] * grad[2] <= 0.0);
        }
    }

    #[test]
    fn baselines_follow_the_config() {
        let traj = Trajectory {
            prompt: 0,
            actions: vec![1],
            reward: 1.0,
            behaviour_logp: -1.0,
            group_mean: 0.5,
            behaviour_value: Some(0.4),
            policy_version: 0,
            policy_mask: Vec::new(),
            stats: None,
        };
        let cfg = |kind, estimate, loss| LossConfig {
            kind: loss,
            baseline: BaselineConfig {
                kind,
                v: 0.3,
                delta_v: -0.1,
                estimate,
            },
        };
        let v = |c: LossConfig| baseline_values(&c, &[&traj])[0];
        assert_eq!(
            v(cfg(
                BaselineKind::Absolute,
                Estimate::Group,
                LossKind::Asymre
            )),
            0.3
        );
        assert!(
            (v(cfg(
                BaselineKind::Relative,
                Estimate::Group,
                LossKind::Asymre
            )) - 0.4)
                .abs()
                < 1e-7
        );
        assert!(
            (v(cfg(
                BaselineKind::Relative,
                Estimate::Exact,
                LossKind::Asymre
            )) - 0.3)
                .abs()
                < 1e-7
        );
        assert_eq!(
            v(cfg(
                BaselineKind::Relative,
                Estimate::Exact,
                LossKind::Reinforce
            )),
            0.0
        );
    }
}
