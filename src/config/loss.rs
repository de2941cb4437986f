//! `[loss]`: which loss and its baseline.
use serde::{Deserialize, Serialize};

use super::{check, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// −mean((r − V)·log π(y)) with the configured baseline V.
    Asymre,
    /// −mean(r·log π(y)): plain REINFORCE, V = 0, baseline ignored.
    Reinforce,
    /// −mean(sg[min(π/μ, c)]·(r − V)·log π(y)): importance-weighted REINFORCE with the ratio
    /// truncated at `ratio_cap` and no gradient through it.
    IsReinforce,
    /// Tapered off-policy REINFORCE: plain −(r − V)·log π on samples with r − V ≥ 0, weighted by
    /// sg[clip(π/μ, 0, 1)] on the others.
    Topr,
    /// PPO-clip objective on the ratio π/μ with ε = `clip_epsilon` and the group-normalised
    /// advantage (r − mean)/std; per token or per sequence (`grpo_level`). Ignores `baseline`.
    Grpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLevel {
    /// One ratio per token, averaged over the sequence's tokens (the original GRPO).
    Token,
    /// One ratio per sequence: π(y)/μ(y).
    Sequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineKind {
    /// A fixed V (`v`).
    Absolute,
    /// V_i = V̂(x_i) + `delta_v`.
    Relative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimate {
    /// V̂ is the mean reward of the G samples drawn for the same prompt (the sample included).
    Group,
    /// V̂ is the behaviour policy's exact value V^μ = Σ μ(y) r(y) (bandit only).
    Exact,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// `absolute` (fixed `v`) or `relative` (V̂ + `delta_v`).
    pub kind: BaselineKind,
    /// The fixed baseline of `absolute`.
    pub v: f64,
    /// δV of `relative`: negative is the stable side (the paper recommends −0.1 with ±1 rewards).
    pub delta_v: f64,
    /// How `relative` estimates V̂: `group` (mean of the G samples) or `exact` (bandit's V^μ).
    pub estimate: Estimate,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            kind: BaselineKind::Relative,
            v: 0.0,
            delta_v: -0.1,
            estimate: Estimate::Group,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// `asymre`, `reinforce`, `is_reinforce`, `topr` or `grpo`.
    pub kind: LossKind,
    /// `is_reinforce`: the truncation c of the importance ratio min(π/μ, c).
    pub ratio_cap: f64,
    /// `grpo`: the clip range ε of the ratio, [1 − ε, 1 + ε].
    pub clip_epsilon: f64,
    /// `grpo`: `token` or `sequence` ratios.
    pub grpo_level: GrpoLevel,
    /// V for `asymre`, `is_reinforce` and `topr`.
    pub baseline: BaselineConfig,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: LossKind::Asymre,
            ratio_cap: 1.0,
            clip_epsilon: 0.2,
            grpo_level: GrpoLevel::Token,
            baseline: BaselineConfig::default(),
        }
    }
}

impl LossConfig {
    /// Checks `[loss]`.
    pub fn validate(&self) -> Result<()> {
        let b = &self.baseline;
        check(b.v.is_finite(), "loss.baseline.v", "finite", b.v)?;
        check(
            b.delta_v.is_finite(),
            "loss.baseline.delta_v",
            "finite",
            b.delta_v,
        )?;
        let ls = self;
        check(
            ls.ratio_cap > 0.0 && ls.ratio_cap.is_finite(),
            "loss.ratio_cap",
            "finite and > 0",
            ls.ratio_cap,
        )?;
        check(
            ls.clip_epsilon > 0.0 && ls.clip_epsilon < 1.0,
            "loss.clip_epsilon",
            "between 0 and 1 (exclusive)",
            ls.clip_epsilon,
        )?;

        Ok(())
    }
}
