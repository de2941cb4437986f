//! The recorder: metric sinks, timing and checkpoint cadence shared by every mode.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::store::checkpoint::{self, Checkpoint};
use crate::store::metrics::{tags, JsonlSink, Metrics, ProgressSink, Row, TensorboardSink};

/// Metric sinks, timing, and checkpoint cadence shared by every mode.
pub(super) struct Recorder {
    run_dir: PathBuf,
    metrics: Metrics,
    progress: ProgressSink,
    started: Instant,
    /// Wall time of earlier sessions of this run.
    wall_offset: f64,
    last_log: (Instant, u64),
    log_every: u64,
    checkpoint_every: u64,
    keep: usize,
    /// `faults.checkpoint_error_at`: the checkpoint of this step fails as if the disk were full.
    fail_checkpoint_at: u64,
    /// `faults.checkpoint_pause_ms`: every checkpoint pauses this long half written.
    checkpoint_pause: Duration,
    total: u64,
    last_row: Option<Row>,
    /// When `metrics.jsonl` was last flushed: rows reach it within seconds, not only at
    /// checkpoints (an LM step can take tens of seconds).
    last_flush: Instant,
}

impl Recorder {
    pub(super) fn new(
        cfg: &Config,
        run_dir: &Path,
        total: u64,
        start_step: u64,
        wall_offset: f64,
    ) -> Result<Self> {
        let mut metrics = Metrics::default();
        metrics.add(Box::new(JsonlSink::append(&run_dir.join("metrics.jsonl"))?));
        if cfg.logging.tensorboard {
            metrics.add(Box::new(TensorboardSink::new(&run_dir.join("tb"))?));
        }
        let now = Instant::now();
        Ok(Recorder {
            run_dir: run_dir.to_path_buf(),
            metrics,
            progress: ProgressSink::new(total, start_step, cfg.logging.progress),
            started: now,
            wall_offset,
            last_log: (now, start_step),
            log_every: cfg.logging.every,
            checkpoint_every: cfg.checkpoint.every,
            keep: cfg.checkpoint.keep,
            fail_checkpoint_at: cfg.faults.checkpoint_error_at,
            checkpoint_pause: Duration::from_millis(cfg.faults.checkpoint_pause_ms),
            total,
            last_row: None,
            last_flush: now,
        })
    }

    pub(super) fn wall_time(&self) -> f64 {
        self.wall_offset + self.started.elapsed().as_secs_f64()
    }

    pub(super) fn should_log(&self, step: u64) -> bool {
        step.is_multiple_of(self.log_every) || step == self.total
    }

    pub(super) fn should_checkpoint(&self, step: u64) -> bool {
        (self.checkpoint_every > 0 && step.is_multiple_of(self.checkpoint_every))
            || step == self.total
    }

    /// Adds the timing columns and writes the row everywhere.
    pub(super) fn log(&mut self, mut row: Row, samples_per_step: u64) -> Result<()> {
        let now = Instant::now();
        let (t0, s0) = self.last_log;
        let dt = now.duration_since(t0).as_secs_f64();
        let rate = if dt > 0.0 {
            (row.step - s0) as f64 * samples_per_step as f64 / dt
        } else {
            0.0
        };
        row.push(tags::SAMPLES_PER_SEC, rate)
            .push(tags::WALL_TIME, self.wall_time());
        self.last_log = (now, row.step);
        self.metrics.write(&row)?;
        use crate::store::metrics::MetricsSink;
        self.progress.write(&row)?;
        self.last_row = Some(row);
        if self.last_flush.elapsed() >= Duration::from_secs(5) {
            self.metrics.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    /// Makes the logs durable, then writes the checkpoint.
    pub(super) fn checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.metrics.flush()?;
        if self.fail_checkpoint_at > 0 && ckpt.step == self.fail_checkpoint_at {
            // Injected: a checkpoint write cut short by a full disk.
            let tmp = self
                .run_dir
                .join("checkpoints")
                .join(format!(".tmp-step_{:09}", ckpt.step));
            std::fs::create_dir_all(&tmp).at(&tmp)?;
            std::fs::write(tmp.join("state.json"), b"{\"step\":").at(&tmp)?;
            return Err(Error::io(
                tmp.join("weights.safetensors"),
                std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space left on device (injected by faults.checkpoint_error_at)",
                ),
            ));
        }
        checkpoint::save_pausing(&self.run_dir, ckpt, self.keep, self.checkpoint_pause)?;
        Ok(())
    }

    pub(super) fn last_row_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.last_row
            .as_ref()
            .and_then(|r| serde_json::from_str(&r.to_json()).ok())
            .unwrap_or_default()
    }

    pub(super) fn finish(&mut self) -> Result<()> {
        self.progress.finish();
        self.metrics.flush()
    }
}
