//! The one root configuration: typed sections that mirror the modules, documented defaults,
//! unknown keys rejected, `--set` overrides applied before typing, and `validate()` run once.
//!
//! Every error names the full key (`learner.sync_interval`) and what is allowed, on one line.
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::env::bandit::{BehaviourInit, RewardNoise};
pub use crate::env::tool_use::reward::RewardConfig;
use crate::error::{Error, IoContext, Result};

mod actor;
mod collapse;
mod env;
mod faults;
mod learner;
mod logging;
mod lora;
mod loss;
mod policy;
mod replay;
mod tools;
mod transport;
mod warmstart;

pub use actor::*;
pub use collapse::*;
pub use env::*;
pub use faults::*;
pub use learner::*;
pub use logging::*;
pub use loss::*;
pub use policy::*;
pub use replay::*;
pub use tools::{ToolConfig, BUILTINS};
pub use transport::TransportConfig;
pub use warmstart::*;

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
    /// `[transport]`: used with `--transport`.
    pub transport: TransportConfig,
    /// `[[tools]]`: the tools of a dataset's tasks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolConfig>,
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
            transport: TransportConfig::default(),
            tools: Vec::new(),
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

impl Config {
    /// The config `asymre score` scores with: a dataset's as it is (its lines name their tasks
    /// by id); otherwise the built-in family `task`, played by this config's LM when it has one
    /// (its chat answers are read the same way) and by the small transformer otherwise.
    pub fn for_scoring(
        mut self,
        task: Option<crate::env::tool_use::tasks::TaskKind>,
    ) -> Result<Self> {
        match (self.env.kind, task) {
            (EnvKind::Dataset, Some(_)) => Err(Error::input(
                "--task: not with a dataset config (its lines are matched by \"id\")",
            )),
            (EnvKind::Dataset, None) => Ok(self),
            (EnvKind::Bfcl, Some(_)) => Err(Error::input(
                "--task: not with a BFCL config (its lines are matched by \"id\")",
            )),
            (EnvKind::Bfcl, None) => Ok(self),
            (EnvKind::Stateful, Some(_)) => Err(Error::input(
                "--task: not with a stateful config (its lines are matched by \"id\")",
            )),
            (EnvKind::Stateful, None) => Ok(self),
            (_, None) => Err(Error::input(
                "--task: needed unless the config is a dataset's",
            )),
            (_, Some(task)) => {
                self.env.kind = EnvKind::ToolUse;
                self.env.task = task;
                if self.policy.pretrained().is_none() {
                    self.policy.kind = PolicyKind::Transformer;
                }
                Ok(self)
            }
        }
    }

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
        self.transport.validate()?;
        tools::validate(&self.tools)?;
        self.validate_across()
    }

    /// What one section requires of another.
    fn validate_across(&self) -> Result<()> {
        let (e, p, r, l) = (&self.env, &self.policy, &self.replay, &self.learner);
        let (fits, wanted) = match e.kind {
            EnvKind::Bandit => (p.kind == PolicyKind::Tabular, "tabular"),
            EnvKind::ToolUse => (
                matches!(p.kind, PolicyKind::Transformer | PolicyKind::Lm),
                "transformer or lm",
            ),
            // A dataset's prompts are free text: they need a model's own tokenizer.
            EnvKind::Dataset | EnvKind::Bfcl | EnvKind::Stateful => {
                (p.kind == PolicyKind::Lm, "lm")
            }
        };
        check(
            fits,
            "policy.kind",
            &format!("{wanted} for env.kind = {:?}", e.kind).to_lowercase(),
            format!("{:?}", p.kind).to_lowercase(),
        )?;
        check(
            p.decode_weights == DecodeWeights::F32 || self.actor.device == DeviceChoice::Cpu,
            "policy.decode_weights",
            "f32 unless actor.device = \"cpu\" (the packed products run on the CPU)",
            p.decode_weights.name(),
        )?;
        if e.kind == EnvKind::Dataset {
            check(
                !e.path.trim().is_empty(),
                "env.path",
                "the JSON-lines file of tasks for env.kind = dataset",
                "\"\"",
            )?;
        }
        if e.kind == EnvKind::Stateful {
            check(
                !e.path.trim().is_empty(),
                "env.path",
                "the JSON-lines file of multi-turn tasks for env.kind = stateful",
                "\"\"",
            )?;
            check(
                !e.command.is_empty(),
                "env.command",
                "the program serving the tools' classes for env.kind = stateful",
                "[]",
            )?;
        }
        if e.max_turns != 0 {
            check(
                p.kind == PolicyKind::Lm,
                "env.max_turns",
                "0 unless policy.kind = lm (the token protocol has no turns)",
                e.max_turns,
            )?;
        }
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
    fn decode_weights_are_parsed_and_checked_against_the_policy_and_device() {
        let lm = "[env]\nkind = \"tool_use\"\n[policy]\nkind = \"lm\"\nmodel = \"m.gguf\"\n";
        for (text, want) in [
            ("q8_0", DecodeWeights::Q8_0),
            ("bf16", DecodeWeights::Bf16),
            ("file", DecodeWeights::File),
            ("f32", DecodeWeights::F32),
        ] {
            let c = from_toml_str(lm, &[format!("policy.decode_weights={text}")]).unwrap();
            assert_eq!(c.policy.decode_weights, want);
            assert_eq!(DecodeWeights::parse(want.name()), Some(want));
        }
        assert_eq!(
            from_toml_str(lm, &[]).unwrap().policy.decode_weights,
            DecodeWeights::F32
        );
        let msg = err(lm, &["policy.decode_weights=q4"]);
        assert!(msg.starts_with("policy.decode_weights:"), "{msg}");
        let tool = "[env]\nkind = \"tool_use\"\n[policy]\nkind = \"transformer\"\n";
        let msg = err(tool, &["policy.decode_weights=q8_0"]);
        assert!(
            msg.starts_with("policy.decode_weights: must be f32 unless"),
            "{msg}"
        );
        for device in ["cuda", "auto"] {
            let msg = err(
                lm,
                &[
                    "policy.decode_weights=q8_0",
                    &format!("actor.device={device}"),
                ],
            );
            assert!(msg.contains("the packed products run on the CPU"), "{msg}");
        }
        let msg = err(lm, &["policy.decode_weights=q8_0", "policy.precision=bf16"]);
        assert!(msg.starts_with("policy.decode_weights:"), "{msg}");
    }

    #[test]
    fn tools_are_read_checked_and_written_back() {
        let text = r#"
[[tools]]
name = "geo"
description = "Distance between two cities, km."
parameters = { type = "object", properties = { from = { type = "string" }, to = { type = "string" } } }
command = ["python3", "tools/geo.py"]

[[tools]]
name = "add"
parameters = { type = "object", properties = { a = { type = "integer" }, b = { type = "integer" } } }
builtin = "add"
"#;
        let c = from_toml_str(text, &[]).unwrap();
        assert_eq!(c.tools.len(), 2);
        assert_eq!(c.tools[0].timeout_ms, 10_000);
        assert_eq!(c.tools[0].parameters["properties"]["to"]["type"], "string");
        assert_eq!(from_toml_str(&c.to_toml(), &[]).unwrap(), c);
        let bad = |extra: &str| err(&format!("{text}{extra}"), &[]);
        let m = bad(
            "[[tools]]\nname = \"geo\"\nparameters = { type = \"object\" }\nbuiltin = \"add\"\n",
        );
        assert!(m.contains("used twice"), "{m}");
        let m =
            bad("[[tools]]\nname = \"x\"\nparameters = { type = \"object\" }\nbuiltin = \"pow\"\n");
        assert!(m.contains("unknown builtin \"pow\""), "{m}");
        let m =
            bad("[[tools]]\nname = \"x\"\nparameters = { type = \"string\" }\ncommand = [\"t\"]\n");
        assert!(m.starts_with("tools[2] (\"x\"): parameters"), "{m}");
        let m = bad("[[tools]]\nname = \"x\"\nparameters = { type = \"object\" }\n");
        assert!(m.contains("needs builtin or command"), "{m}");
    }

    #[test]
    fn turn_limits_need_an_lm() {
        let tool = "[env]\nkind = \"tool_use\"\n[policy]\nkind = \"transformer\"\n";
        let c = from_toml_str(tool, &["env.max_new_tokens=48".into()]).unwrap();
        assert_eq!(c.env.max_new_tokens, 48);
        let msg = err(tool, &["env.max_turns=1"]);
        assert!(msg.starts_with("env.max_turns: must be 0 unless"), "{msg}");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let msg = err("seed = 1\n[env\n", &[]);
        assert!(msg.starts_with("TOML syntax error at line 2"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
