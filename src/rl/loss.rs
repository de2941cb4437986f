//! The policy-gradient losses, as pure functions of per-sample tensors.
//!
//! AsymRE (Arnal et al. 2025, arXiv 2506.20520): loss = −mean_i[(r_i − V_i)·log π(y_i)], no ratio,
//! no clipping. With V below the behaviour policy's value V^μ training is stable; at or above it the
//! support of π collapses. The comparison losses (`is_reinforce`, `topr`, `grpo`) reweight by the
//! ratio π/μ to the stored behaviour log-probabilities. `naive` holds f64 oracles the tensor
//! versions are tested against.
use tch::{Kind, Tensor};

use crate::config::{BaselineKind, Estimate, GrpoLevel, LossConfig, LossKind};
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

/// sg[π/μ] per sample from sequence log-probabilities ([B] each): no gradient flows through it.
fn ratio(target_logp: &Tensor, behaviour_logp: &Tensor) -> Result<Tensor> {
    Ok(target_logp.detach().f_sub(behaviour_logp)?.f_exp()?)
}

/// Truncated importance-sampled REINFORCE: −mean(sg[min(π/μ, cap)]·(r − V)·log π). [B] inputs.
pub fn is_reinforce(
    target_logp: &Tensor,
    behaviour_logp: &Tensor,
    reward: &Tensor,
    baseline: &Tensor,
    cap: f64,
) -> Result<Tensor> {
    let weight = ratio(target_logp, behaviour_logp)?.f_clamp_max(cap)?;
    let advantage = reward.f_sub(baseline)?;
    Ok(weight
        .f_mul(&advantage)?
        .f_mul(target_logp)?
        .f_mean(Kind::Float)?
        .f_neg()?)
}

/// Tapered off-policy REINFORCE: −mean(w·(r − V)·log π) with w = 1 where r − V ≥ 0 and
/// w = sg[clip(π/μ, 0, 1)] where r − V < 0. [B] inputs.
pub fn topr(
    target_logp: &Tensor,
    behaviour_logp: &Tensor,
    reward: &Tensor,
    baseline: &Tensor,
) -> Result<Tensor> {
    let advantage = reward.f_sub(baseline)?;
    let tapered = ratio(target_logp, behaviour_logp)?.f_clamp(0.0, 1.0)?;
    let weight = tapered
        .f_ones_like()?
        .f_where_self(&advantage.f_ge(0.0)?, &tapered)?;
    Ok(weight
        .f_mul(&advantage)?
        .f_mul(target_logp)?
        .f_mean(Kind::Float)?
        .f_neg()?)
}

/// GRPO's advantage (r − group mean)/(group std + 1e-6) ([B] each).
pub fn group_advantage(reward: &Tensor, mean: &Tensor, std: &Tensor) -> Result<Tensor> {
    Ok(reward.f_sub(mean)?.f_div(&std.f_add_scalar(1e-6)?)?)
}

/// The PPO-clip surrogate min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A) with ρ = exp(logp − behaviour).
fn clipped_surrogate(
    logp: &Tensor,
    behaviour: &Tensor,
    advantage: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let rho = logp.f_sub(behaviour)?.f_exp()?;
    let unclipped = rho.f_mul(advantage)?;
    let clipped = rho.f_clamp(1.0 - eps, 1.0 + eps)?.f_mul(advantage)?;
    Ok(unclipped.f_minimum(&clipped)?)
}

/// Sequence-level GRPO: −mean_i min(ρ_i A_i, clip(ρ_i)A_i), ρ_i = π(y_i)/μ(y_i). [B] inputs.
pub fn grpo_sequence(
    target_logp: &Tensor,
    behaviour_logp: &Tensor,
    advantage: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    Ok(
        clipped_surrogate(target_logp, behaviour_logp, advantage, eps)?
            .f_mean(Kind::Float)?
            .f_neg()?,
    )
}

/// Token-level GRPO: −mean_i (1/|y_i|) Σ_t min(ρ_it A_i, clip(ρ_it)A_i) over the policy's tokens.
/// `token_logp`, `behaviour_token_logp`, `mask` are [B, L]; `advantage` is [B].
pub fn grpo_token(
    token_logp: &Tensor,
    behaviour_token_logp: &Tensor,
    mask: &Tensor,
    advantage: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let per_token = clipped_surrogate(
        token_logp,
        behaviour_token_logp,
        &advantage.f_unsqueeze(1)?,
        eps,
    )?
    .f_mul(mask)?;
    let lengths = mask
        .f_sum_dim_intlist(-1, false, Kind::Float)?
        .f_clamp_min(1.0)?;
    Ok(per_token
        .f_sum_dim_intlist(-1, false, Kind::Float)?
        .f_div(&lengths)?
        .f_mean(Kind::Float)?
        .f_neg()?)
}

/// V_i for each trajectory, from the configured baseline. `reinforce` uses V = 0; `grpo` does
/// not use V (it is reported as the group mean).
pub fn baseline_values(cfg: &LossConfig, batch: &[&Trajectory]) -> Vec<f32> {
    batch.iter().map(|t| baseline_value(cfg, t)).collect()
}

/// V for one trajectory, from the configured baseline.
pub fn baseline_value(cfg: &LossConfig, t: &Trajectory) -> f32 {
    match cfg.kind {
        LossKind::Reinforce => return 0.0,
        LossKind::Grpo => return t.group_mean,
        _ => {}
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

/// Stored per-trajectory data a loss may read. Only the losses that read an item have it built,
/// so AsymRE's step pays for none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// [B] log μ(y).
    BehaviourLogp,
    /// [B, L] log μ per position, laid out like `token_logp`.
    BehaviourTokenLogp,
    /// [B] mean and standard deviation of the rewards of the prompt's G samples.
    GroupMean,
    GroupStd,
}

/// What a loss sees of a batch (all on one device).
pub struct LossInputs<'a> {
    /// [B, L] log π per position (0 where `mask` is 0), with gradient.
    pub token_logp: &'a Tensor,
    /// [B, L] 1 where the policy chose the token.
    pub mask: &'a Tensor,
    /// [B] each.
    pub reward: &'a Tensor,
    pub baseline: &'a Tensor,
    /// Builds the stored data on demand.
    pub stored: &'a dyn Fn(Stored) -> Result<Tensor>,
}

/// Applies the configured loss.
pub fn compute(cfg: &LossConfig, x: &LossInputs) -> Result<Tensor> {
    let target_logp = || x.token_logp.f_sum_dim_intlist(-1, false, Kind::Float);
    let stored = x.stored;
    match cfg.kind {
        LossKind::Asymre => asymre(&target_logp()?, x.reward, x.baseline),
        LossKind::Reinforce => reinforce(&target_logp()?, x.reward),
        LossKind::IsReinforce => is_reinforce(
            &target_logp()?,
            &stored(Stored::BehaviourLogp)?,
            x.reward,
            x.baseline,
            cfg.ratio_cap,
        ),
        LossKind::Topr => topr(
            &target_logp()?,
            &stored(Stored::BehaviourLogp)?,
            x.reward,
            x.baseline,
        ),
        LossKind::Grpo => {
            let advantage = group_advantage(
                x.reward,
                &stored(Stored::GroupMean)?,
                &stored(Stored::GroupStd)?,
            )?;
            match cfg.grpo_level {
                GrpoLevel::Sequence => grpo_sequence(
                    &target_logp()?,
                    &stored(Stored::BehaviourLogp)?,
                    &advantage,
                    cfg.clip_epsilon,
                ),
                GrpoLevel::Token => grpo_token(
                    x.token_logp,
                    &stored(Stored::BehaviourTokenLogp)?,
                    x.mask,
                    &advantage,
                    cfg.clip_epsilon,
                ),
            }
        }
    }
}

/// What the host-side losses need of one single-action sample (the bandit's), in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmSample {
    /// log π(y) under the weights being trained.
    pub logp: f64,
    /// log μ(y), stored by the actor.
    pub behaviour_logp: f64,
    pub reward: f64,
    /// V from [`baseline_value`].
    pub baseline: f64,
    pub group_mean: f64,
    pub group_std: f64,
}

/// The configured loss's term for one single-action sample: `(o, ∂o/∂log π(y))` with
/// loss = −mean(o). It is what [`compute`] builds with tensors, in closed form: a tabular policy's
/// gradient is then ∂loss/∂θ_k = −(1/B) Σ_i ∂o_i/∂log π(y_i) · ([y_i = k] − π_k), with no
/// autograd graph and no tensor op (with one action, token- and sequence-level GRPO agree).
pub fn single_action_term(cfg: &LossConfig, s: &ArmSample) -> (f64, f64) {
    let advantage = s.reward - s.baseline;
    let sample: naive::Sample = (s.logp, s.behaviour_logp, s.reward, s.baseline);
    let weighted = |w: f64| (w * advantage * s.logp, w * advantage);
    match cfg.kind {
        LossKind::Asymre | LossKind::Reinforce => weighted(1.0),
        LossKind::IsReinforce => weighted(naive::is_weight(&sample, cfg.ratio_cap)),
        LossKind::Topr => weighted(naive::topr_weight(&sample)),
        LossKind::Grpo => {
            let a = (s.reward - s.group_mean) / (s.group_std + 1e-6);
            naive::surrogate(s.logp, s.behaviour_logp, a, cfg.clip_epsilon)
        }
    }
}

/// Straightforward f64 versions, the oracles of the property tests: each loss's value and its
/// gradient with respect to log π. [`single_action_term`] builds the tabular learner's closed
/// form from the same weights.
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

    /// One sample of a ratio-weighted REINFORCE loss: (log π, log μ, r, V).
    pub type Sample = (f64, f64, f64, f64);

    /// The weight of `is_reinforce`: min(π/μ, cap).
    pub fn is_weight(s: &Sample, cap: f64) -> f64 {
        (s.0 - s.1).exp().min(cap)
    }

    /// The weight of `topr`: 1 if r − V ≥ 0, else clip(π/μ, 0, 1).
    pub fn topr_weight(s: &Sample) -> f64 {
        if s.2 - s.3 >= 0.0 {
            1.0
        } else {
            (s.0 - s.1).exp().clamp(0.0, 1.0)
        }
    }

    /// −(1/B) Σ w_i (r_i − V_i) logp_i and its gradient −w_i (r_i − V_i)/B (w has no gradient).
    pub fn weighted(samples: &[Sample], weight: impl Fn(&Sample) -> f64) -> (f64, Vec<f64>) {
        let n = samples.len() as f64;
        let value = -samples
            .iter()
            .map(|s| weight(s) * (s.2 - s.3) * s.0)
            .sum::<f64>()
            / n;
        let grad = samples
            .iter()
            .map(|s| -weight(s) * (s.2 - s.3) / n)
            .collect();
        (value, grad)
    }

    /// min(ρA, clip(ρ, 1 − ε, 1 + ε)A) and its derivative with respect to log π.
    pub fn surrogate(logp: f64, behaviour: f64, advantage: f64, eps: f64) -> (f64, f64) {
        let rho = (logp - behaviour).exp();
        let unclipped = rho * advantage;
        let clipped = rho.clamp(1.0 - eps, 1.0 + eps) * advantage;
        if unclipped <= clipped {
            (unclipped, unclipped)
        } else {
            (clipped, 0.0)
        }
    }

    /// Token-level GRPO over rows of (log π, log μ, in-mask) with one advantage per row: the loss
    /// and its gradient per token.
    pub fn grpo_token(
        rows: &[Vec<(f64, f64, bool)>],
        advantage: &[f64],
        eps: f64,
    ) -> (f64, Vec<Vec<f64>>) {
        let b = rows.len() as f64;
        let mut value = 0.0;
        let mut grads = Vec::new();
        for (row, &a) in rows.iter().zip(advantage) {
            let len = row.iter().filter(|t| t.2).count().max(1) as f64;
            let mut g = Vec::new();
            for &(l, m, on) in row {
                let (v, d) = if on {
                    surrogate(l, m, a, eps)
                } else {
                    (0.0, 0.0)
                };
                value -= v / len / b;
                g.push(-d / len / b);
            }
            grads.push(g);
        }
        (value, grads)
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

    fn grad_of(x: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(x.grad().to_kind(Kind::Double).view([-1])).unwrap()
    }

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-4 * (1.0 + want.abs())
    }

    /// Samples (log π, log μ, r, V) with ratios π/μ between e^-2 and e^2.
    fn samples() -> impl Strategy<Value = Vec<naive::Sample>> {
        prop::collection::vec(
            (-8.0f64..-0.1, -2.0f64..2.0, -1.0f64..1.0, -1.0f64..1.0)
                .prop_map(|(l, d, r, v)| (l, l - d, r, v)),
            1..48,
        )
    }

    /// Runs a [B]-input loss on `samples` and compares value and gradient with the oracle.
    fn check_weighted(
        samples: &[naive::Sample],
        f: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
        weight: impl Fn(&naive::Sample) -> f64,
    ) -> std::result::Result<(), TestCaseError> {
        let col = |k: fn(&naive::Sample) -> f64| t(&samples.iter().map(k).collect::<Vec<_>>());
        let lp = col(|s| s.0).set_requires_grad(true);
        let loss = f(&lp, &col(|s| s.1), &col(|s| s.2), &col(|s| s.3)).unwrap();
        let (want, want_grad) = naive::weighted(samples, weight);
        prop_assert!(
            close(loss.double_value(&[]), want),
            "{} vs {}",
            loss.double_value(&[]),
            want
        );
        loss.backward();
        for (g, w) in grad_of(&lp).iter().zip(want_grad) {
            prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{} vs {}", g, w);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn prop_is_reinforce_matches_naive(s in samples(), cap in 0.2f64..3.0) {
            check_weighted(&s, |l, m, r, v| is_reinforce(l, m, r, v, cap), |x| naive::is_weight(x, cap))?;
        }

        #[test]
        fn prop_topr_matches_naive(s in samples()) {
            check_weighted(&s, topr, naive::topr_weight)?;
        }

        #[test]
        fn prop_grpo_sequence_matches_naive(s in samples(), eps in 0.05f64..0.5) {
            let col = |k: fn(&naive::Sample) -> f64| t(&s.iter().map(k).collect::<Vec<_>>());
            let lp = col(|x| x.0).set_requires_grad(true);
            // The reward column stands in for the advantage.
            let loss = grpo_sequence(&lp, &col(|x| x.1), &col(|x| x.2), eps).unwrap();
            let b = s.len() as f64;
            let parts: Vec<(f64, f64)> = s.iter().map(|x| naive::surrogate(x.0, x.1, x.2, eps)).collect();
            let want = -parts.iter().map(|p| p.0).sum::<f64>() / b;
            prop_assert!(close(loss.double_value(&[]), want));
            loss.backward();
            for (g, p) in grad_of(&lp).iter().zip(&parts) {
                prop_assert!((g + p.1 / b).abs() <= 1e-4 * (1.0 + p.1.abs()), "{} vs {}", g, -p.1 / b);
            }
        }

        #[test]
        fn prop_grpo_token_matches_naive(
            rows in prop::collection::vec(
                (prop::collection::vec((-6.0f64..-0.05, -1.0f64..1.0, prop::bool::weighted(0.7)), 6),
                 -2.0f64..2.0),
                1..16),
            eps in 0.05f64..0.5,
        ) {
            let table: Vec<Vec<(f64, f64, bool)>> = rows
                .iter()
                .map(|(r, _)| r.iter().map(|&(l, d, on)| (l, l - d, on)).collect())
                .collect();
            let adv: Vec<f64> = rows.iter().map(|r| r.1).collect();
            let flat = |k: fn(&(f64, f64, bool)) -> f64| {
                t(&table.iter().flatten().map(k).collect::<Vec<_>>()).view([table.len() as i64, 6])
            };
            let mask = flat(|x| if x.2 { 1.0 } else { 0.0 });
            let lp = (flat(|x| x.0) * &mask).detach().set_requires_grad(true);
            let loss = grpo_token(&lp, &flat(|x| x.1), &mask, &t(&adv), eps).unwrap();
            let (want, want_grad) = naive::grpo_token(&table, &adv, eps);
            prop_assert!(close(loss.double_value(&[]), want), "{} vs {}", loss.double_value(&[]), want);
            loss.backward();
            for (g, w) in grad_of(&lp).iter().zip(want_grad.iter().flatten()) {
                prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{} vs {}", g, w);
            }
        }
    }

    /// On-policy (π = μ) with no truncation, the ratio losses reduce to AsymRE.
    #[test]
    fn ratio_losses_equal_asymre_on_policy() {
        let lp = t(&[-1.0, -2.5, -0.3]);
        let (r, v) = (t(&[1.0, -0.5, 0.2]), t(&[0.1, 0.1, 0.4]));
        let base = asymre(&lp, &r, &v).unwrap().double_value(&[]);
        let is = is_reinforce(&lp, &lp, &r, &v, 1.0)
            .unwrap()
            .double_value(&[]);
        let tp = topr(&lp, &lp, &r, &v).unwrap().double_value(&[]);
        assert!(
            (is - base).abs() < 1e-6 && (tp - base).abs() < 1e-6,
            "{base} {is} {tp}"
        );
    }

    /// GRPO's group advantage is zero-mean and unit-scale within a group; a group whose rewards
    /// are all equal gets no gradient.
    #[test]
    fn group_advantage_normalises() {
        let r = t(&[1.0, 0.0, 0.0, 1.0]);
        let a = group_advantage(&r, &t(&[0.5; 4]), &t(&[0.5; 4])).unwrap();
        let a = Vec::<f64>::try_from(a.to_kind(Kind::Double)).unwrap();
        for (x, want) in a.iter().zip([1.0, -1.0, -1.0, 1.0]) {
            assert!((x - want).abs() < 1e-5, "{a:?}");
        }
        let lp = t(&[-1.0, -2.0]).set_requires_grad(true);
        let adv = group_advantage(&t(&[1.0, 1.0]), &t(&[1.0, 1.0]), &t(&[0.0, 0.0])).unwrap();
        grpo_sequence(&lp, &lp.detach(), &adv, 0.2)
            .unwrap()
            .backward();
        assert_eq!(grad_of(&lp), vec![0.0, 0.0]);
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
            prompt: crate::ids::SourceId::new(0, 0, 0).prompt(0, 0),
            actions: vec![1].into(),
            reward: 1.0,
            behaviour_logp: -1.0,
            group_mean: 0.5,
            behaviour_value: Some(0.4),
            policy_version: 0,
            policy_mask: Vec::new(),
            stats: None,
            behaviour_token_logp: Vec::new(),
            group_std: 0.0,
        };
        let cfg = |kind, estimate, loss| LossConfig {
            kind: loss,
            baseline: BaselineConfig {
                kind,
                v: 0.3,
                delta_v: -0.1,
                estimate,
            },
            ..LossConfig::default()
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
