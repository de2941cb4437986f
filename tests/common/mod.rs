//! Helpers shared by the integration tests: the real binary, a tiny config, metrics reading.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
            for timing in ["samples_per_sec", "wall_time", "act_secs", "learn_secs"] {
                row.remove(timing);
            }
            row
        })
        .collect()
}

/// The checkpoint step `checkpoints/latest` names, or 0.
fn latest_checkpoint(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("checkpoints/latest"))
        .ok()
        .and_then(|name| name.trim().trim_start_matches("step_").parse().ok())
        .unwrap_or(0)
}

/// Starts `first` (a `train` into `run`), SIGKILLs it as soon as a checkpoint is written,
/// `asymre resume`s it and kills it again once a later checkpoint is written, then resumes it
/// to the end, which must succeed. Each round waits at most `patience` for its checkpoint.
/// Returns the last checkpoint step written before a kill.
pub fn kill_twice_then_finish(first: Command, run: &Path, patience: Duration) -> u64 {
    let mut last_step = 0;
    let mut first = Some(first);
    for round in 0..2 {
        let mut cmd = first.take().unwrap_or_else(|| {
            let mut c = bin();
            c.arg("resume").arg(run);
            c
        });
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let step = latest_checkpoint(run);
            if step > last_step {
                last_step = step;
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: ended first"
            );
            assert!(start.elapsed() < patience, "round {round}: no checkpoint");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
    }
    let o = resume(run);
    assert!(o.status.success(), "{}", stderr(&o));
    last_step
}
