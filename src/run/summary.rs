//! `summary.json`: a run's final figures, and the bandit's metrics row and summary.

use serde::Serialize;
use tch::Device;

use crate::config::Config;
use crate::device::device_name;
use crate::env::bandit::Bandit;
use crate::env::tool_use::reward::ScoreMeans;
use crate::math::{entropy, support_size};
use crate::policy::tabular::sampling_probs;
use crate::rl::exact;
use crate::rl::warmstart::WarmstartReport;
use crate::store::metrics::{tags, Row};

use super::recorder::Recorder;

/// `summary.json`: final figures, plus what is needed to check a bandit run against the theory
/// or to compare a tool-use run with its warm start.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: String,
    pub device: String,
    pub steps: u64,
    pub wall_time: f64,
    /// The last metrics row.
    pub last: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub bandit: Option<BanditSummary>,
    #[serde(flatten)]
    pub tool_use: Option<ToolUseSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BanditSummary {
    /// r(y) of every arm.
    pub arm_rewards: Vec<f64>,
    /// V^μ of the initial behaviour policy.
    pub initial_v_mu: f64,
    /// μ of the last round.
    pub behaviour_probs: Vec<f64>,
    /// π at the end.
    pub final_probs: Vec<f64>,
    /// V^μ of `behaviour_probs`.
    pub v_mu: f64,
    /// The baseline V used in the last round (sampled: the last batch's mean).
    pub v: f64,
    pub final_expected_reward: f64,
    pub final_entropy: f64,
    pub final_support_size: usize,
    pub best_arm_reward: f64,
    /// The theory's limit of the flow from `behaviour_probs` with baseline `v`
    /// ([`exact::limit_policy`]): its support size and E[r]; absent when V ≥ V^μ (collapse).
    pub predicted_limit_support: Option<usize>,
    pub predicted_limit_reward: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolUseSummary {
    pub task: String,
    /// Held-out greedy evaluation right after the warm start.
    pub warmstart_heldout: ScoreMeans,
    /// Held-out greedy evaluation at the end.
    pub final_heldout: ScoreMeans,
    /// Train-split greedy evaluation at the end.
    pub final_train: ScoreMeans,
    pub warmstart: WarmstartReport,
    pub warmstart_seconds: f64,
}

pub(super) fn bandit_row(
    step: u64,
    steps_per_round: u64,
    bandit: &Bandit,
    pi: &[f64],
    v_mu: f64,
    v: f64,
) -> Row {
    let mut row = Row::new(step);
    row.push(tags::ROUND, (step / steps_per_round) as f64)
        .push(tags::EXPECTED_REWARD, bandit.value(pi))
        .push(tags::ENTROPY, entropy(pi))
        .push(tags::SUPPORT_SIZE, support_size(pi) as f64)
        .push(tags::V_MU, v_mu)
        .push(tags::V, v);
    row
}

#[allow(clippy::too_many_arguments)]
pub(super) fn bandit_summary(
    cfg: &Config,
    device: Device,
    steps: u64,
    rec: &Recorder,
    bandit: &Bandit,
    initial: &[f64],
    behaviour: Vec<f64>,
    final_probs: Vec<f64>,
    v: f64,
) -> Summary {
    let limit = exact::limit_policy(&behaviour, bandit.arm_rewards(), v);
    let details = BanditSummary {
        arm_rewards: bandit.arm_rewards().to_vec(),
        initial_v_mu: bandit.value(&sampling_probs(initial, cfg.policy.temperature)),
        v_mu: bandit.value(&behaviour),
        final_expected_reward: bandit.value(&final_probs),
        final_entropy: entropy(&final_probs),
        final_support_size: support_size(&final_probs),
        best_arm_reward: bandit
            .arm_rewards()
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max),
        predicted_limit_support: limit.as_ref().map(|p| support_size(p)),
        predicted_limit_reward: limit.as_ref().map(|p| bandit.value(p)),
        behaviour_probs: behaviour,
        final_probs,
        v,
    };
    Summary {
        mode: format!("{:?}", cfg.env.mode).to_lowercase(),
        device: device_name(device),
        steps,
        wall_time: rec.wall_time(),
        last: rec.last_row_json(),
        bandit: Some(details),
        tool_use: None,
    }
}

/// The final figures (the run's directory was named on stderr when it started).
pub fn print_summary(s: &Summary) {
    println!(
        "finished {} steps ({} mode, {}) in {:.1} s",
        s.steps, s.mode, s.device, s.wall_time
    );
    if let Some(b) = &s.bandit {
        println!(
            "E_π[r] = {:.4} (initial V^μ = {:.4}, best arm {:.4}); entropy {:.3} nats; support {} of {} arms",
            b.final_expected_reward,
            b.initial_v_mu,
            b.best_arm_reward,
            b.final_entropy,
            b.final_support_size,
            b.arm_rewards.len()
        );
        println!("last round: V^μ = {:.4}, V = {:.4}", b.v_mu, b.v);
    }
    if let Some(t) = &s.tool_use {
        let show = |name: &str, e: &crate::env::tool_use::reward::ScoreMeans| {
            println!(
                "{name}: completion {:.3}, tool F1 {:.3} (P {:.3} R {:.3}), format errors {:.3}, calls {:.2}, length {:.1}",
                e.completion, e.f1, e.precision, e.recall, e.format_errors, e.calls, e.length
            )
        };
        show(
            &format!(
                "{} held-out after warm start ({:.1} s)",
                t.task, t.warmstart_seconds
            ),
            &t.warmstart_heldout,
        );
        show(&format!("{} held-out after RL", t.task), &t.final_heldout);
        show(&format!("{} train after RL", t.task), &t.final_train);
    }
}
