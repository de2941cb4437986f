//! `[env]`: the bandit's and the tool-use tasks' knobs.
use serde::{Deserialize, Serialize};

use super::{check, range_err, Result};
use crate::env::bandit::{BanditSpec, BehaviourInit, RewardNoise};
use crate::env::tool_use::protocol::Limits;
use crate::env::tool_use::tasks::{TaskKind, TaskSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvKind {
    /// K-armed bandit with a tabular softmax policy (SPEC §3.1).
    Bandit,
    /// Verifiable tool-use tasks over a token protocol (SPEC §3.2).
    ToolUse,
    /// Users' own tasks from a JSON-lines file (`env.path`) with the tools of `[[tools]]`
    /// (SPEC §3.4); needs `policy.kind = "lm"`.
    Dataset,
    /// BFCL's categories (`env.categories`) from its data directory (`env.path`; empty: the
    /// installed `bfcl-eval`): the single-turn ones with their own call-only tools, graded by
    /// BFCL's AST checker, or the multi-turn ones with BFCL's stateful API classes, graded by
    /// its state rule (one kind or the other in a run); needs `policy.kind = "lm"`.
    Bfcl,
    /// Users' own multi-turn tasks (`env.path`, BFCL's multi-turn form) with tools that keep a
    /// state per episode: Python classes served by `env.command` (`scripts/pytools.py --class
    /// NAME`), one instance per episode; needs `policy.kind = "lm"`.
    Stateful,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanditMode {
    /// The expected-gradient flow with policy-iteration rounds; no sampling, no threads.
    Exact,
    /// The actor/learner pipeline with sampled arms and a lagged behaviour policy.
    Sampled,
}

/// The environment. Bandit keys are the paper's controlled setting (SPEC §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Which environment: `bandit`.
    pub kind: EnvKind,
    /// Bandit: `exact` (expected-gradient flow) or `sampled` (actor/learner pipeline).
    pub mode: BanditMode,
    /// Bandit: number of arms K.
    pub arms: usize,
    /// Bandit: `none` (reward r(y)) or `bernoulli` (reward ~ Bernoulli(r(y))).
    pub reward_noise: RewardNoise,
    /// Bandit: initial logits of the policy, hence of the first behaviour policy.
    pub behaviour_init: BehaviourInit,
    /// Bandit: standard deviation of the `gaussian` initial logits.
    pub init_scale: f64,
    /// Bandit: policy-iteration rounds. The run lasts `rounds * steps_per_round` learner steps
    /// (tool use and datasets: 0 runs the warm start and the final evaluations only).
    pub rounds: u64,
    /// Bandit: steps per round. In exact mode μ ← π at the end of each round.
    pub steps_per_round: u64,
    /// Bandit, exact mode: step size η of the expected-gradient flow.
    pub eta: f64,
    /// Dataset: the JSON-lines file of tasks (relative to the working directory). BFCL: its data
    /// directory (empty: the one of the `bfcl-eval` package in `.venv`).
    pub path: String,
    /// BFCL: the categories played (trained on: the non-live ones only).
    pub categories: Vec<String>,
    /// Stateful: the program serving the tools' classes and its arguments, e.g.
    /// `["python3", "scripts/pytools.py", "shop.py", "--class", "Shop"]`.
    pub command: Vec<String>,
    /// Tool use: the task family (`calc`, `lookup`, `chain`, `fanout`, `menu`).
    pub task: TaskKind,
    /// Tool use (calc, menu): operands have up to this many digits.
    pub digits: u32,
    /// Tool use (calc, menu): share of items that need no call.
    pub no_call_share: f64,
    /// Tool use: entities in the seeded database.
    pub entities: usize,
    /// Tool use: share of entities (lookup, chain, fanout) held out for evaluation.
    pub heldout_share: f64,
    /// Tool use (chain): add a constant to the looked-up value, a third call.
    pub chain_arith: bool,
    /// Tool use (fanout): entities per question, 2 or 3.
    pub width: usize,
    /// Tool use (menu): tools listed beside the one needed.
    pub distractors: usize,
    /// Tool use: longest episode in tokens, prompt and tool results included.
    pub max_tokens: usize,
    /// Tool use: most calls per episode.
    pub max_calls: usize,
    /// Tool use: most tokens the policy writes in an episode, or in each user turn of a
    /// multi-turn one (0: no limit besides `max_tokens`); reaching it truncates the episode, a
    /// format error.
    pub max_new_tokens: usize,
    /// Tool use on an LM: most assistant turns, per user turn in a multi-turn episode (0: no
    /// limit). A last turn that calls tools has its calls run and scored and ends the episode
    /// without their results.
    pub max_turns: usize,
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig {
            kind: EnvKind::Bandit,
            mode: BanditMode::Sampled,
            arms: 100,
            reward_noise: RewardNoise::None,
            behaviour_init: BehaviourInit::Uniform,
            init_scale: 1.0,
            rounds: 40,
            steps_per_round: 500,
            eta: 1.0,
            path: String::new(),
            categories: crate::env::tool_use::bfcl::CATEGORIES[..5]
                .iter()
                .map(|c| c.to_string())
                .collect(),
            command: Vec::new(),
            task: TaskKind::Calc,
            digits: 2,
            no_call_share: 0.2,
            entities: 200,
            heldout_share: 0.2,
            chain_arith: false,
            width: 2,
            distractors: 2,
            max_tokens: 64,
            max_calls: 4,
            max_new_tokens: 0,
            max_turns: 0,
        }
    }
}

impl EnvConfig {
    /// The episode limits these keys set (0 in `max_new_tokens` or `max_turns`: no limit).
    pub fn limits(&self) -> Limits {
        let or_none = |n: usize| if n == 0 { usize::MAX } else { n };
        Limits {
            max_new: or_none(self.max_new_tokens),
            max_turns: or_none(self.max_turns),
            ..Limits::new(self.max_tokens, self.max_calls)
        }
    }

    /// Whether `categories` are BFCL's multi-turn ones (judged by their first).
    pub fn multi_turn_categories(&self) -> bool {
        self.categories.first().is_some_and(|c| {
            crate::env::tool_use::bfcl::multi::MULTI_CATEGORIES.contains(&c.as_str())
        })
    }

    /// Whether the run is the bandit's expected-gradient flow (no actors, no learner).
    pub fn exact_flow(&self) -> bool {
        self.kind == EnvKind::Bandit && self.mode == BanditMode::Exact
    }

    /// The tabular policy's initial logits (the bandit's `behaviour_init`); none for a sequence
    /// task, whose policy starts from its own initialisation or files.
    pub fn initial_logits(&self, seed: u64) -> Vec<f64> {
        match self.kind {
            EnvKind::Bandit => crate::env::bandit::initial_logits(&self.bandit_spec(), seed),
            EnvKind::ToolUse | EnvKind::Dataset | EnvKind::Bfcl | EnvKind::Stateful => Vec::new(),
        }
    }

    /// Total learner steps of a bandit run.
    pub fn total_steps(&self) -> u64 {
        self.rounds.saturating_mul(self.steps_per_round)
    }

    /// The bandit's knobs.
    pub fn bandit_spec(&self) -> BanditSpec {
        BanditSpec {
            arms: self.arms,
            reward_noise: self.reward_noise,
            behaviour_init: self.behaviour_init,
            init_scale: self.init_scale,
        }
    }

    /// The task generators' knobs, seeded with the run's seed.
    pub fn task_spec(&self, seed: u64) -> TaskSpec {
        TaskSpec {
            kind: self.task,
            seed,
            digits: self.digits,
            no_call_share: self.no_call_share,
            entities: self.entities,
            heldout_share: self.heldout_share,
            chain_arith: self.chain_arith,
            width: self.width,
            distractors: self.distractors,
        }
    }
}

impl EnvConfig {
    /// Checks `[env]` on its own.
    pub fn validate(&self) -> Result<()> {
        let e = self;
        check(
            (2..=1_000_000).contains(&e.arms),
            "env.arms",
            "between 2 and 1000000",
            e.arms,
        )?;
        check(
            e.init_scale.is_finite() && e.init_scale >= 0.0,
            "env.init_scale",
            "finite and >= 0",
            e.init_scale,
        )?;
        check(
            e.rounds >= 1 || e.kind != EnvKind::Bandit,
            "env.rounds",
            ">= 1 (0 is for tool use and datasets: the warm start only)",
            e.rounds,
        )?;
        check(
            e.steps_per_round >= 1,
            "env.steps_per_round",
            ">= 1",
            e.steps_per_round,
        )?;
        check(
            e.total_steps() <= 1_000_000_000,
            "env.rounds",
            "such that rounds * steps_per_round <= 1e9",
            e.rounds,
        )?;
        check(
            e.eta.is_finite() && e.eta > 0.0,
            "env.eta",
            "finite and > 0",
            e.eta,
        )?;
        let single = &crate::env::tool_use::bfcl::CATEGORIES;
        let multi = &crate::env::tool_use::bfcl::multi::MULTI_CATEGORIES;
        let known = || single.iter().chain(multi).copied();
        if let Some(c) = e
            .categories
            .iter()
            .find(|c| !known().any(|k| k == c.as_str()))
        {
            return Err(range_err(
                "env.categories",
                &format!(
                    "BFCL categories among {}",
                    known().collect::<Vec<_>>().join(", ")
                ),
                format!("{c:?}"),
            ));
        }
        let multi_turn = e.multi_turn_categories();
        check(
            e.categories
                .iter()
                .all(|c| multi.contains(&c.as_str()) == multi_turn),
            "env.categories",
            "all single-turn or all multi-turn (one kind of episode per run)",
            format!("{:?}", e.categories),
        )?;
        check(
            !e.categories.is_empty() || e.kind != EnvKind::Bfcl,
            "env.categories",
            "at least one category for env.kind = bfcl",
            "[]",
        )?;
        Ok(())
    }
}
