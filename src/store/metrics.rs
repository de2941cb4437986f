//! Metrics: stable tag names in one place, and the sinks a logged row goes to
//! (`metrics.jsonl`, TensorBoard event files, the progress bar).
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::{IoContext, Result};

/// Metric keys: the same names in `metrics.jsonl` and (with their group) in TensorBoard.
pub mod tags {
    pub const STEP: &str = "step";
    /// Policy-iteration round (bandit).
    pub const ROUND: &str = "round";
    /// E_π[r] under the current policy (bandit: exact).
    pub const EXPECTED_REWARD: &str = "expected_reward";
    /// Mean reward of the learner's batch.
    pub const BATCH_REWARD: &str = "batch_reward";
    /// H(π) in nats.
    pub const ENTROPY: &str = "entropy";
    /// Arms with π > 1e-3.
    pub const SUPPORT_SIZE: &str = "support_size";
    /// V^μ of the current behaviour policy.
    pub const V_MU: &str = "v_mu";
    /// Mean baseline V used by the loss.
    pub const V: &str = "v";
    pub const LOSS: &str = "loss";
    pub const GRAD_NORM: &str = "grad_norm";
    pub const POLICY_LAG_MEAN: &str = "policy_lag_mean";
    pub const POLICY_LAG_MAX: &str = "policy_lag_max";
    pub const REPLAY_SIZE: &str = "replay_size";
    /// Actors whose messages arrived since the previous row.
    pub const ACTORS: &str = "actors";
    /// Through Redis: actor processes whose heartbeat is alive.
    pub const ACTORS_ALIVE: &str = "actors_alive";
    /// Through Redis: messages that did not decode and were skipped, so far.
    pub const UNDECODABLE: &str = "messages_undecodable";
    pub const STALE_DROPPED: &str = "stale_dropped";
    /// Batches skipped so far for a non-finite loss or gradient.
    pub const NONFINITE_SKIPPED: &str = "nonfinite_skipped";
    /// Tool use: share of the batch's episodes whose answer was exactly right.
    pub const COMPLETION: &str = "completion";
    pub const TOOL_PRECISION: &str = "tool_precision";
    pub const TOOL_RECALL: &str = "tool_recall";
    pub const TOOL_F1: &str = "tool_f1";
    /// Tool use: mean format errors per episode.
    pub const FORMAT_ERRORS: &str = "format_errors";
    /// Tool use: mean calls per episode.
    pub const CALLS: &str = "calls";
    /// Tool use: mean generated tokens per episode (tool results included).
    pub const LENGTH: &str = "length";
    /// Tool use: greedy held-out completion and tool F1 (logged at evaluations).
    pub const HELDOUT_COMPLETION: &str = "heldout_completion";
    pub const HELDOUT_F1: &str = "heldout_f1";
    /// Trajectories consumed by the learner per second of wall time (not reproducible).
    pub const SAMPLES_PER_SEC: &str = "samples_per_sec";
    /// Seconds since the run started, resumed runs included (not reproducible).
    pub const WALL_TIME: &str = "wall_time";

    /// Serial mode: seconds per step spent sampling episodes (the actors' turn) and in the
    /// learner's step with the weights' publication (not reproducible).
    pub const ACT_SECS: &str = "act_secs";
    pub const LEARN_SECS: &str = "learn_secs";

    /// Keys whose values depend on the machine's speed, excluded from reproducibility checks.
    pub const TIMING: &[&str] = &[SAMPLES_PER_SEC, WALL_TIME, ACT_SECS, LEARN_SECS];

    /// The TensorBoard group of a key, CleanRL-style (`charts/…`, `losses/…`).
    pub fn group(key: &str) -> &'static str {
        match key {
            LOSS | GRAD_NORM | V | V_MU => "losses",
            POLICY_LAG_MEAN | POLICY_LAG_MAX | REPLAY_SIZE | STALE_DROPPED | SAMPLES_PER_SEC
            | WALL_TIME | ACT_SECS | LEARN_SECS => "perf",
            _ => "charts",
        }
    }
}

/// One logged row: a step and named values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub step: u64,
    pub values: Vec<(&'static str, f64)>,
}

impl Row {
    pub fn new(step: u64) -> Self {
        Row {
            step,
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.values.push((key, value));
        self
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
    }

    /// One JSON object, keys in insertion order; non-finite values become `null`.
    pub fn to_json(&self) -> String {
        let mut s = format!("{{\"{}\":{}", tags::STEP, self.step);
        for (k, v) in &self.values {
            let num = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
            s.push_str(&format!(",\"{k}\":{num}"));
        }
        s.push('}');
        s
    }
}

/// Where rows go.
pub trait MetricsSink: Send {
    fn write(&mut self, row: &Row) -> Result<()>;
    /// Makes everything written so far durable (called before each checkpoint).
    fn flush(&mut self) -> Result<()>;
}

/// `metrics.jsonl`: one JSON object per row, appended.
pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlSink {
    pub fn append(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .at(path)?;
        Ok(JsonlSink {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }
}

impl MetricsSink for JsonlSink {
    fn write(&mut self, row: &Row) -> Result<()> {
        writeln!(self.out, "{}", row.to_json()).at(&self.path)
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().at(&self.path)?;
        self.out.get_ref().sync_data().at(&self.path)
    }
}

/// TensorBoard event files under a directory.
pub struct TensorboardSink {
    writer: tensorboard_rs::summary_writer::SummaryWriter,
}

impl TensorboardSink {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).at(dir)?;
        Ok(TensorboardSink {
            writer: tensorboard_rs::summary_writer::SummaryWriter::new(dir),
        })
    }
}

impl MetricsSink for TensorboardSink {
    fn write(&mut self, row: &Row) -> Result<()> {
        for (k, v) in &row.values {
            if v.is_finite() {
                let tag = format!("{}/{k}", tags::group(k));
                self.writer.add_scalar(&tag, *v as f32, row.step as usize);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush();
        Ok(())
    }
}

/// A progress bar on stderr showing reward, steps/s and policy lag, drawn on a terminal;
/// elsewhere (a log file) one line every 30 seconds instead.
pub struct ProgressSink {
    bar: ProgressBar,
    /// Not a terminal: when the last plain line was printed (None when disabled).
    plain: Option<std::time::Instant>,
    total: u64,
}

impl ProgressSink {
    pub fn new(total: u64, start: u64, enabled: bool) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_position(start);
        bar.enable_steady_tick(Duration::from_millis(500));
        use std::io::IsTerminal;
        let plain = (enabled && !std::io::stderr().is_terminal()).then(std::time::Instant::now);
        ProgressSink { bar, plain, total }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl MetricsSink for ProgressSink {
    fn write(&mut self, row: &Row) -> Result<()> {
        self.bar.set_position(row.step);
        let mut msg = String::new();
        if let Some(r) = row
            .get(tags::EXPECTED_REWARD)
            .or(row.get(tags::BATCH_REWARD))
        {
            msg.push_str(&format!("reward {r:.3}"));
        }
        if let Some(h) = row.get(tags::ENTROPY) {
            msg.push_str(&format!(" H {h:.2}"));
        }
        if let Some(l) = row.get(tags::POLICY_LAG_MEAN) {
            msg.push_str(&format!(" lag {l:.0}"));
        }
        if let Some(last) = &mut self.plain {
            if last.elapsed() >= Duration::from_secs(30) {
                let wall = row.get(tags::WALL_TIME).unwrap_or(0.0);
                eprintln!("step {}/{} {msg} ({wall:.0} s)", row.step, self.total);
                *last = std::time::Instant::now();
            }
        }
        self.bar.set_message(msg);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// All sinks of a run.
#[derive(Default)]
pub struct Metrics {
    sinks: Vec<Box<dyn MetricsSink>>,
}

impl Metrics {
    pub fn add(&mut self, sink: Box<dyn MetricsSink>) {
        self.sinks.push(sink);
    }

    pub fn write(&mut self, row: &Row) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.write(row))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.flush())
    }
}

/// Reads `metrics.jsonl` as JSON objects, skipping a torn last line.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let file = File::open(path).at(path)?;
    let mut rows = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.at(path)?;
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(&line) {
            rows.push(obj);
        }
    }
    Ok(rows)
}

/// Keeps only the complete rows with `step <= max_step`: after a resume from step `max_step`,
/// the rows logged after that checkpoint will be logged again. Replaces the file atomically.
pub fn truncate_jsonl(path: &Path, max_step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).at(path)?;
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // torn by a kill mid-write
        }
        let step = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get(tags::STEP).and_then(|s| s.as_u64()));
        match step {
            Some(s) if s <= max_step => kept.push_str(line),
            Some(_) => break,
            None => break,
        }
    }
    crate::store::checkpoint::write_atomic(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_serialise_in_order_with_null_for_nan() {
        let mut row = Row::new(7);
        row.push(tags::LOSS, 0.5).push(tags::ENTROPY, f64::NAN);
        assert_eq!(row.to_json(), r#"{"step":7,"loss":0.5,"entropy":null}"#);
    }

    #[test]
    fn truncation_drops_later_and_torn_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(
            &p,
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4,\"lo",
        )
        .unwrap();
        truncate_jsonl(&p, 2).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n"
        );
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2,\"x\":").unwrap();
        truncate_jsonl(&p, 10).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\n");
    }
}
