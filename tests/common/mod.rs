//! Helpers shared by the integration tests: the real binary, a tiny config, metrics reading.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Map, Value};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_asymre"))
}

/// A small sampled bandit run: 20 arms, 4 rounds × 50 steps.
pub const TINY: &str = r#"
seed = 3
[env]
mode = "sampled"
arms = 20
behaviour_init = "linear"
rounds = 4
steps_per_round = 50
[actor]
threads = 2
batch_size = 64
group_size = 4
[replay]
capacity = 1024
[learner]
optimizer = "sgd"
lr = 1.0
batch_size = 64
sync_interval = 10
[logging]
every = 10
tensorboard = true
progress = false
[checkpoint]
every = 50
"#;

/// A small tool-use run: `lookup` on a one-block transformer, warm start, 2 rounds × 5 steps.
pub const TINY_TOOL: &str = r#"
[env]
kind = "tool_use"
task = "lookup"
entities = 30
max_tokens = 40
rounds = 2
steps_per_round = 5
[policy]
kind = "transformer"
layers = 1
d_model = 32
heads = 2
[warmstart]
demos = 50
steps = 20
batch_size = 16
[actor]
threads = 2
batch_size = 16
group_size = 4
[replay]
capacity = 256
[learner]
batch_size = 16
sync_interval = 2
[logging]
every = 5
eval_every = 5
eval_episodes = 20
progress = false
[checkpoint]
every = 5
"#;

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn train(config: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// `asymre resume RUN`, run to the end.
pub fn resume(run: &Path) -> Output {
    bin().arg("resume").arg(run).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// metrics.jsonl rows without the wall-clock columns.
pub fn metrics(run: &Path) -> Vec<Map<String, Value>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut row: Map<String, Value> =
                serde_json::from_str(l).expect("every line is complete JSON");
            row.remove("samples_per_sec");
            row.remove("wall_time");
            row
        })
        .collect()
}
