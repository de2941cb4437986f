//! The one root configuration: typed sections that mirror the modules, documented defaults,
//! unknown keys rejected, `--set` overrides applied before typing, and `validate()` run once.
//!
//! Every error names the full key (`learner.sync_interval`) and what is allowed, on one line.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::bandit::BanditSpec;
pub use crate::env::bandit::{BehaviourInit, RewardNoise};
pub use crate::env::tool_use::reward::RewardConfig;
use crate::env::tool_use::tasks::{TaskKind, TaskSpec};
use crate::error::{Error, IoContext, Result};

/// The root of a run's configuration (`config.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Master seed; every random stream (environment, actors, learner) is derived from it.
    pub seed: u64,
    /// Where the learner runs: `cpu`, `cuda`, or `auto` (CUDA when available).
    pub device: DeviceChoice,
    pub env: EnvConfig,
    pub policy: PolicyConfig,
    pub actor: ActorConfig,
    pub replay: ReplayConfig,
    pub learner: LearnerConfig,
    pub loss: LossConfig,
    pub reward: RewardConfig,
    pub warmstart: WarmstartConfig,
    pub logging: LoggingConfig,
    pub checkpoint: CheckpointConfig,
    pub collapse: CollapseConfig,
    pub faults: FaultsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            device: DeviceChoice::Cpu,
            env: EnvConfig::default(),
            policy: PolicyConfig::default(),
            actor: ActorConfig::default(),
            replay: ReplayConfig::default(),
            learner: LearnerConfig::default(),
            loss: LossConfig::default(),
            reward: RewardConfig::default(),
            warmstart: WarmstartConfig::default(),
            logging: LoggingConfig::default(),
            checkpoint: CheckpointConfig::default(),
            collapse: CollapseConfig::default(),
            faults: FaultsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvKind {
    /// K-armed bandit with a tabular softmax policy (SPEC §3.1).
    Bandit,
    /// Verifiable tool-use tasks over a token protocol (SPEC §3.2).
    ToolUse,
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
    /// Bandit: policy-iteration rounds. The run lasts `rounds * steps_per_round` learner steps.
    pub rounds: u64,
    /// Bandit: steps per round. In exact mode μ ← π at the end of each round.
    pub steps_per_round: u64,
    /// Bandit, exact mode: step size η of the expected-gradient flow.
    pub eta: f64,
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
        }
    }
}

impl EnvConfig {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// One logit per arm (bandit).
    Tabular,
    /// A small causal decoder (tool use).
    Transformer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `tabular` (bandit) or `transformer` (tool use).
    pub kind: PolicyKind,
    /// Sampling temperature of the actors (1 = sample from π itself).
    pub temperature: f64,
    /// Transformer: decoder blocks.
    pub layers: usize,
    /// Transformer: model width.
    pub d_model: usize,
    /// Transformer: attention heads (must divide d_model).
    pub heads: usize,
    /// Transformer: the arithmetic of its matrix products (`f32`, or `bf16` with f32 weights,
    /// optimiser state, norms, attention and log-probabilities).
    pub precision: Precision,
    /// Weights to start from instead of a random initialisation: a safetensors file with the
    /// policy's variables, such as a run's `checkpoints/step_…/weights.safetensors` (a relative
    /// path is taken from the working directory). The warm start, if any, continues from them; a
    /// resumed run takes its checkpoint's weights instead.
    pub init: Option<PathBuf>,
}

/// The number format of the transformer's matrix products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Linear layers multiply bfloat16 copies of their inputs and weights and return f32; the
    /// weights themselves, their gradients and the optimiser stay f32 (mixed precision).
    Bf16,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            kind: PolicyKind::Tabular,
            temperature: 1.0,
            layers: 2,
            d_model: 128,
            heads: 4,
            precision: Precision::F32,
            init: None,
        }
    }
}

/// Behaviour cloning on scripted demonstrations before RL (tool use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmstartConfig {
    /// Demonstrations generated from the train split (0 = start RL from scratch).
    pub demos: usize,
    /// Optimiser steps of behaviour cloning.
    pub steps: u64,
    /// Adam learning rate of behaviour cloning.
    pub lr: f64,
    /// Demonstrations per step.
    pub batch_size: usize,
}

impl Default for WarmstartConfig {
    fn default() -> Self {
        WarmstartConfig {
            demos: 500,
            steps: 200,
            lr: 1e-3,
            batch_size: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorConfig {
    /// Number of actor threads (parallel mode); serial mode steps the same actors in turn.
    pub threads: usize,
    /// Trajectories an actor produces per message.
    pub batch_size: usize,
    /// G: samples drawn per prompt; the relative baseline's V̂ is their mean reward.
    pub group_size: usize,
    /// Messages the actor→learner channel holds before actors block (the back-pressure).
    pub channel_capacity: usize,
    /// Parallel mode: restart an actor thread that panicked (with a fresh RNG stream) instead of
    /// stopping the run.
    pub restart: bool,
    /// Where actors decode: `cpu`, `cuda` or `auto` (each actor holds its own copy of the
    /// weights there).
    pub device: DeviceChoice,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            threads: 2,
            batch_size: 256,
            group_size: 8,
            channel_capacity: 4,
            restart: false,
            device: DeviceChoice::Cpu,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Batches are consecutive windows in arrival order.
    Fifo,
    /// Batches are drawn uniformly, with replacement, from the buffer.
    Uniform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Most trajectories held; the oldest are evicted first.
    pub capacity: usize,
    /// `fifo` or `uniform`.
    pub sampling: Sampling,
    /// Mean number of learner batches each trajectory appears in; paces the learner.
    pub reuse: f64,
    /// Trajectories whose policy is more than this many learner steps old are dropped, and actors
    /// wait for fresh weights rather than produce them (0 = no limit).
    pub max_policy_lag: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            capacity: 16384,
            sampling: Sampling::Fifo,
            reuse: 1.0,
            max_policy_lag: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// `adam` or `sgd`.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// Adam's β1.
    pub beta1: f64,
    /// Adam's β2.
    pub beta2: f64,
    /// Adam's ε.
    pub eps: f64,
    /// Trajectories per learner step.
    pub batch_size: usize,
    /// Learner steps between weight snapshots sent to the actors: the off-policy knob.
    pub sync_interval: u64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub max_grad_norm: f64,
    /// libtorch intra-op threads (set once for the process, so threads do not oversubscribe).
    pub intra_op_threads: usize,
    /// Skip (and count, as `nonfinite_skipped`) a batch whose loss or gradient is not finite,
    /// instead of stopping the run.
    pub skip_nonfinite: bool,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            batch_size: 1024,
            sync_interval: 100,
            max_grad_norm: 0.0,
            intra_op_threads: 1,
            skip_nonfinite: false,
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Learner steps between metric rows.
    pub every: u64,
    /// Also write TensorBoard event files under `tb/`.
    pub tensorboard: bool,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Tool use: learner steps between held-out evaluations (0 = only after the warm start and
    /// at the end).
    pub eval_every: u64,
    /// Tool use: held-out episodes per evaluation (greedy decoding).
    pub eval_episodes: usize,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            every: 50,
            tensorboard: true,
            progress: true,
            eval_every: 0,
            eval_episodes: 200,
        }
    }
}

/// Injected faults, for testing what a run does when things go wrong. Leave at 0 for real runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Parallel mode: the first actor to send this many messages panics, once (0 = never).
    pub actor_panic_after: u64,
    /// Every this many learner steps the loss is made NaN (0 = never).
    pub nonfinite_loss_every: u64,
    /// The checkpoint of this learner step fails half written, as on a full disk (0 = never).
    pub checkpoint_error_at: u64,
    /// Every checkpoint pauses this long half written (state saved, weights not yet): a window
    /// for killing a run during a checkpoint write (0 = no pause).
    pub checkpoint_pause_ms: u64,
    /// The learner sleeps this long after every step: a slow learner (0 = none).
    pub learner_delay_ms: u64,
    /// Every actor sleeps this long after every message: slow actors (0 = none).
    pub actor_delay_ms: u64,
}

/// When a finished run counts as collapsed (sweep tables and plots): its final reward is at least
/// `reward_drop` below its reference, and its final entropy is at most `entropy`. The reference is
/// the run's best reward (a moving average over `window` logged rows), or, for the bandit, the
/// best arm's reward (a policy that locks onto a worse arm has collapsed even if it never fell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollapseConfig {
    pub reward_drop: f64,
    /// Nats: H(π) for the bandit, the mean per-token entropy for tool use.
    pub entropy: f64,
    /// Logged rows averaged for "final" and "best" reward.
    pub window: usize,
}

impl Default for CollapseConfig {
    fn default() -> Self {
        CollapseConfig {
            reward_drop: 0.2,
            entropy: 0.05,
            window: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Learner steps between checkpoints (0 = only at the end).
    pub every: u64,
    /// Checkpoints kept on disk, newest first.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: 2000,
            keep: 2,
        }
    }
}

/// Reads a TOML file, applies `key=value` overrides, types and validates the result.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("cannot read config {}: {e}", path.display())))?;
    from_toml_str(&text, overrides).map_err(|e| match e {
        Error::Input(msg) => Error::input(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Parses, overrides, types and validates a TOML document.
pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Config> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| toml_syntax_error(text, &e))?;
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    let config = from_table(table)?;
    config.validate()?;
    Ok(config)
}

fn toml_syntax_error(text: &str, e: &toml::de::Error) -> Error {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Error::input(format!(
                "TOML syntax error at line {line}, column {col}: {msg}"
            ))
        }
        None => Error::input(format!("TOML syntax error: {msg}")),
    }
}

fn from_table(table: toml::Table) -> Result<Config> {
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string().trim().replace('\n', " ");
        if path == "." || path.is_empty() {
            Error::input(inner)
        } else {
            Error::input(format!("{path}: {inner}"))
        }
    })
}

/// Applies one `section.key=value` override. The value is read as TOML (`0.1`, `true`,
/// `"fifo"`, `[1, 2]`); a bare word that is not valid TOML is taken as a string (`fifo`).
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| Error::input(format!("--set {spec}: expected key=value")))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(Error::input(format!(
            "--set {spec}: the key must be like section.key"
        )));
    }
    let value = parse_value(raw);
    let parts: Vec<&str> = key.split('.').collect();
    let (last, sections) = parts.split_last().expect("split always yields one part");
    let mut cursor = table;
    for (i, part) in sections.iter().enumerate() {
        let entry = cursor
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = match entry {
            toml::Value::Table(t) => t,
            _ => {
                let prefix = parts[..=i].join(".");
                return Err(Error::input(format!(
                    "--set {spec}: {prefix} is a value, not a section"
                )));
            }
        };
    }
    cursor.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Wrapper {
        v: toml::Value,
    }
    match toml::from_str::<Wrapper>(&format!("v = {raw}")) {
        Ok(w) => w.v,
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn range_err(key: &str, allowed: &str, got: impl std::fmt::Display) -> Error {
    Error::input(format!("{key}: must be {allowed}, got {got}"))
}

fn check(cond: bool, key: &str, allowed: &str, got: impl std::fmt::Display) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(range_err(key, allowed, got))
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
        check(e.rounds >= 1, "env.rounds", ">= 1", e.rounds)?;
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

        Ok(())
    }
}

impl PolicyConfig {
    /// Checks `[policy]` on its own.
    pub fn validate(&self) -> Result<()> {
        let p = self;
        check(
            p.temperature.is_finite() && p.temperature > 0.0,
            "policy.temperature",
            "finite and > 0",
            p.temperature,
        )?;
        check(
            p.precision == Precision::F32 || p.kind == PolicyKind::Transformer,
            "policy.precision",
            "f32 for the tabular policy (bf16 applies to the transformer's products)",
            format!("{:?}", p.precision).to_lowercase(),
        )?;
        check(
            (1..=48).contains(&p.layers),
            "policy.layers",
            "between 1 and 48",
            p.layers,
        )?;
        check(
            (1..=64).contains(&p.heads),
            "policy.heads",
            "between 1 and 64",
            p.heads,
        )?;
        check(
            p.d_model >= p.heads && p.d_model.is_multiple_of(p.heads) && p.d_model <= 8192,
            "policy.d_model",
            &format!("a multiple of policy.heads ({}) up to 8192", p.heads),
            p.d_model,
        )?;
        Ok(())
    }
}

impl WarmstartConfig {
    /// Checks `[warmstart]`.
    pub fn validate(&self) -> Result<()> {
        let w = self;
        check(
            w.lr.is_finite() && w.lr > 0.0,
            "warmstart.lr",
            "finite and > 0",
            w.lr,
        )?;
        check(
            w.batch_size >= 1,
            "warmstart.batch_size",
            ">= 1",
            w.batch_size,
        )?;
        Ok(())
    }
}

impl ActorConfig {
    /// Checks `[actor]`.
    pub fn validate(&self) -> Result<()> {
        let a = self;
        check(
            (1..=256).contains(&a.threads),
            "actor.threads",
            "between 1 and 256",
            a.threads,
        )?;
        check(a.batch_size >= 1, "actor.batch_size", ">= 1", a.batch_size)?;
        check(a.group_size >= 1, "actor.group_size", ">= 1", a.group_size)?;
        check(
            a.batch_size.is_multiple_of(a.group_size),
            "actor.batch_size",
            &format!("a multiple of actor.group_size ({})", a.group_size),
            a.batch_size,
        )?;
        check(
            a.channel_capacity >= 1,
            "actor.channel_capacity",
            ">= 1",
            a.channel_capacity,
        )?;

        Ok(())
    }
}

impl ReplayConfig {
    /// Checks `[replay]` on its own.
    pub fn validate(&self) -> Result<()> {
        let r = self;
        check(r.capacity >= 1, "replay.capacity", ">= 1", r.capacity)?;
        check(
            r.reuse.is_finite() && r.reuse > 0.0 && r.reuse <= 1000.0,
            "replay.reuse",
            "in (0, 1000]",
            r.reuse,
        )?;

        Ok(())
    }
}

impl LearnerConfig {
    /// Checks `[learner]` on its own.
    pub fn validate(&self) -> Result<()> {
        let l = self;
        check(
            l.lr.is_finite() && l.lr > 0.0,
            "learner.lr",
            "finite and > 0",
            l.lr,
        )?;
        check(
            (0.0..1.0).contains(&l.beta1),
            "learner.beta1",
            "in [0, 1)",
            l.beta1,
        )?;
        check(
            (0.0..1.0).contains(&l.beta2),
            "learner.beta2",
            "in [0, 1)",
            l.beta2,
        )?;
        check(
            l.eps.is_finite() && l.eps > 0.0,
            "learner.eps",
            "finite and > 0",
            l.eps,
        )?;
        check(
            l.batch_size >= 1,
            "learner.batch_size",
            ">= 1",
            l.batch_size,
        )?;
        check(
            l.sync_interval >= 1,
            "learner.sync_interval",
            ">= 1",
            l.sync_interval,
        )?;
        check(
            l.max_grad_norm.is_finite() && l.max_grad_norm >= 0.0,
            "learner.max_grad_norm",
            "finite and >= 0",
            l.max_grad_norm,
        )?;
        check(
            (1..=256).contains(&l.intra_op_threads),
            "learner.intra_op_threads",
            "between 1 and 256",
            l.intra_op_threads,
        )?;
        Ok(())
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

impl LoggingConfig {
    /// Checks `[logging]`.
    pub fn validate(&self) -> Result<()> {
        check(
            self.eval_episodes >= 1,
            "logging.eval_episodes",
            ">= 1",
            self.eval_episodes,
        )?;
        let g = self;
        check(g.every >= 1, "logging.every", ">= 1", g.every)?;
        Ok(())
    }
}

impl CollapseConfig {
    /// Checks `[collapse]`.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        check(
            c.reward_drop.is_finite() && c.reward_drop >= 0.0,
            "collapse.reward_drop",
            "finite and >= 0",
            c.reward_drop,
        )?;
        check(
            c.entropy.is_finite() && c.entropy >= 0.0,
            "collapse.entropy",
            "finite and >= 0",
            c.entropy,
        )?;
        check(c.window >= 1, "collapse.window", ">= 1", c.window)?;
        Ok(())
    }
}

impl CheckpointConfig {
    /// Checks `[checkpoint]`.
    pub fn validate(&self) -> Result<()> {
        check(self.keep >= 1, "checkpoint.keep", ">= 1", self.keep)?;
        Ok(())
    }
}

impl Config {
    /// Checks every section against its allowed ranges, then what sections require of each
    /// other; the first violation is returned.
    pub fn validate(&self) -> Result<()> {
        self.env.validate()?;
        self.policy.validate()?;
        self.warmstart.validate()?;
        self.logging.validate()?;
        self.actor.validate()?;
        self.replay.validate()?;
        self.learner.validate()?;
        self.loss.validate()?;
        self.collapse.validate()?;
        self.checkpoint.validate()?;
        self.validate_across()
    }

    /// What one section requires of another.
    fn validate_across(&self) -> Result<()> {
        let (e, p, r, l) = (&self.env, &self.policy, &self.replay, &self.learner);
        let wanted = match e.kind {
            EnvKind::Bandit => PolicyKind::Tabular,
            EnvKind::ToolUse => PolicyKind::Transformer,
        };
        check(
            p.kind == wanted,
            "policy.kind",
            &format!("{wanted:?} for env.kind = {:?}", e.kind).to_lowercase(),
            format!("{:?}", p.kind).to_lowercase(),
        )?;
        if self.loss.baseline.estimate == Estimate::Exact {
            check(
                e.kind == EnvKind::Bandit,
                "loss.baseline.estimate",
                "group for env.kind = tool_use",
                "exact",
            )?;
        }

        check(
            l.batch_size <= r.capacity,
            "learner.batch_size",
            &format!("<= replay.capacity ({})", r.capacity),
            l.batch_size,
        )?;
        if r.max_policy_lag != 0 {
            check(
                r.max_policy_lag >= l.sync_interval,
                "replay.max_policy_lag",
                &format!(
                    "0 (no limit) or >= learner.sync_interval ({})",
                    l.sync_interval
                ),
                r.max_policy_lag,
            )?;
        }

        Ok(())
    }

    /// The configuration as TOML, as written to a run's `config.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serialises to TOML")
    }
}

/// Reads a run's resolved `config.toml`.
pub fn load_resolved(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).at(path)?;
    from_toml_str(&text, &[]).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        match from_toml_str(text, &sets) {
            Ok(_) => panic!("expected an error for {text:?} {sets:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2);
                e.to_string()
            }
        }
    }

    #[test]
    fn default_round_trips_through_toml() {
        let c = Config::default();
        let back = from_toml_str(&c.to_toml(), &[]).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let msg = err("[learner]\nsync_intervall = 3\n", &[]);
        assert!(msg.starts_with("learner"), "{msg}");
        assert!(msg.contains("sync_intervall"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn wrong_type_names_the_full_key() {
        let msg = err("[env]\narms = \"many\"\n", &[]);
        assert!(msg.starts_with("env.arms:"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        assert_eq!(
            err("", &["learner.sync_interval=0"]),
            "learner.sync_interval: must be >= 1, got 0"
        );
        assert!(err("", &["learner.lr=-1"]).starts_with("learner.lr: must be finite and > 0"));
        let m = err("[replay]\ncapacity = 100\n", &["learner.batch_size=200"]);
        assert_eq!(
            m,
            "learner.batch_size: must be <= replay.capacity (100), got 200"
        );
    }

    #[test]
    fn overrides_are_typed() {
        let c = from_toml_str(
            "",
            &[
                "loss.baseline.delta_v=0.25".into(),
                "replay.sampling=uniform".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.loss.baseline.delta_v, 0.25);
        assert_eq!(c.replay.sampling, Sampling::Uniform);
        let msg = err("", &["env.arms=1.5"]);
        assert!(msg.starts_with("env.arms:"), "{msg}");
        let msg = err("", &["device=gpu"]);
        assert!(msg.starts_with("device:") && msg.contains("cuda"), "{msg}");
        let msg = err("seed = 1\n", &["seed.x=1"]);
        assert!(msg.contains("seed is a value"), "{msg}");
        let msg = err("", &["seed.x=1"]);
        assert!(msg.starts_with("seed: invalid type"), "{msg}");
        let msg = err("", &["nokey"]);
        assert!(msg.contains("key=value"), "{msg}");
    }

    #[test]
    fn precision_is_parsed_and_checked_against_the_policy() {
        let tool = "[env]\nkind = \"tool_use\"\n[policy]\nkind = \"transformer\"\n";
        let c = from_toml_str(tool, &["policy.precision=bf16".into()]).unwrap();
        assert_eq!(c.policy.precision, Precision::Bf16);
        assert_eq!(
            from_toml_str(tool, &[]).unwrap().policy.precision,
            Precision::F32
        );
        let msg = err(tool, &["policy.precision=fp8"]);
        assert!(
            msg.starts_with("policy.precision:") && msg.contains("bf16"),
            "{msg}"
        );
        let msg = err("", &["policy.precision=bf16"]);
        assert!(
            msg.starts_with("policy.precision: must be f32 for the tabular policy"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let msg = err("seed = 1\n[env\n", &[]);
        assert!(msg.starts_with("TOML syntax error at line 2"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
