//! Runs a training job; the only place that spawns threads.
//!
//! `run_serial` steps the actors and the learner in a fixed order on one thread (bit-identical for
//! a seed on CPU, and across a checkpoint/resume); `run_parallel` runs the same components with N
//! actor threads and a learner thread joined by a bounded channel. `run_exact` is the bandit's
//! expected-gradient flow.
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::{BanditMode, Config, DeviceChoice, EnvKind};
use crate::env::bandit::{self, Bandit};
use crate::env::tool_use::protocol::Limits;
use crate::env::tool_use::reward::ScoreMeans;
use crate::env::tool_use::tasks::{Split, Task};
use crate::error::{Error, IoContext, Result};
use crate::ids::SourceId;
use crate::math::{entropy, softmax, support_size};
use crate::policy::tabular::sampling_probs;
use crate::policy::{PolicyModel, WeightSnapshot};
use crate::rl::actor::{
    actor_loop, Actor, ActorShared, ActorState, BanditActor, Pacer, SnapshotBoard, ToolActor,
};
use crate::rl::exact::{self, ExactFlow};
use crate::rl::learner::{Learner, StepStats};
use crate::rl::replay::Replay;
use crate::rl::trajectory::ActorBatch;
use crate::rl::warmstart::{warm_start, WarmstartReport};
use crate::rollout::evaluate;
use crate::store::checkpoint::{self, Checkpoint};
use crate::store::metrics::{tags, JsonlSink, Metrics, ProgressSink, Row, TensorboardSink};

/// How a run is driven, beside its config.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    /// One thread, deterministic.
    pub serial: bool,
    /// Set to a signal's exit code (130, 143) to stop after the current step with a checkpoint.
    pub interrupt: &'a AtomicUsize,
    /// When given, the learner stores its step here after every step (for a watcher).
    pub progress: Option<&'a AtomicU64>,
}

/// How a run ended.
// Returned once per run, so the size gap between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    Finished(Summary),
    /// Stopped by a signal after checkpointing `step`; the code is the process exit code.
    Interrupted {
        step: u64,
        code: i32,
    },
}

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

/// Resolves `device` against what this machine has.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::input(
            "device: cuda was requested but libtorch sees no CUDA device (use cpu or auto)",
        )),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
    }
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Metric sinks, timing, and checkpoint cadence shared by every mode.
struct Recorder {
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
}

impl Recorder {
    fn new(
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
        })
    }

    fn wall_time(&self) -> f64 {
        self.wall_offset + self.started.elapsed().as_secs_f64()
    }

    fn should_log(&self, step: u64) -> bool {
        step.is_multiple_of(self.log_every) || step == self.total
    }

    fn should_checkpoint(&self, step: u64) -> bool {
        (self.checkpoint_every > 0 && step.is_multiple_of(self.checkpoint_every))
            || step == self.total
    }

    /// Adds the timing columns and writes the row everywhere.
    fn log(&mut self, mut row: Row, samples_per_step: u64) -> Result<()> {
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
        Ok(())
    }

    /// Makes the logs durable, then writes the checkpoint.
    fn checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
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

    fn last_row_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.last_row
            .as_ref()
            .and_then(|r| serde_json::from_str(&r.to_json()).ok())
            .unwrap_or_default()
    }

    fn finish(&mut self) -> Result<()> {
        self.progress.finish();
        self.metrics.flush()
    }
}

fn interrupted(opts: &RunOptions) -> Option<i32> {
    match opts.interrupt.load(Ordering::Relaxed) {
        0 => None,
        code => Some(code as i32),
    }
}

/// Trains `cfg` in `run_dir`, from `resume` when given.
pub fn train(
    cfg: &Config,
    run_dir: &Path,
    opts: RunOptions,
    resume: Option<Checkpoint>,
) -> Result<Outcome> {
    tch::set_num_threads(cfg.learner.intra_op_threads as i32);
    let device = resolve_device(cfg.device)?;
    if cfg.policy.precision == crate::config::Precision::Bf16 {
        // Actors decode on the CPU whatever the learner's device.
        let warning = crate::cpu::bf16_warning(Device::Cpu).or(crate::cpu::bf16_warning(device));
        if let Some(w) = warning {
            eprintln!("{w}");
        }
    }
    if let Some(ckpt) = &resume {
        crate::store::metrics::truncate_jsonl(&run_dir.join("metrics.jsonl"), ckpt.step)?;
    } else {
        // A fresh start (or a resume with no checkpoint yet) logs from step 0 again.
        let path = run_dir.join("metrics.jsonl");
        if path.exists() {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    let outcome = match (cfg.env.kind, cfg.env.mode) {
        (EnvKind::Bandit, BanditMode::Exact) => run_exact(cfg, run_dir, &opts, resume)?,
        _ => run_sampled(cfg, run_dir, device, &opts, resume)?,
    };
    if let Outcome::Finished(summary) = &outcome {
        let path = run_dir.join("summary.json");
        let text = serde_json::to_string_pretty(summary).expect("a Summary serialises");
        checkpoint::write_atomic(&path, text.as_bytes())?;
    }
    Ok(outcome)
}

fn bandit_row(
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
fn bandit_summary(
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

#[derive(Serialize, Deserialize)]
struct ExactState {
    flow: ExactFlow,
    wall_time: f64,
}

fn run_exact(
    cfg: &Config,
    run_dir: &Path,
    opts: &RunOptions,
    resume: Option<Checkpoint>,
) -> Result<Outcome> {
    let bandit = Bandit::new(&cfg.env, cfg.seed);
    let initial = bandit::initial_logits(&cfg.env, cfg.seed);
    let total = cfg.env.total_steps();
    let per_round = cfg.env.steps_per_round;
    let (mut flow, mut step, wall) = match resume {
        Some(ckpt) => {
            let s: ExactState = serde_json::from_value(ckpt.state)
                .map_err(|e| Error::Corrupt(format!("checkpoint state: {e}")))?;
            (s.flow, ckpt.step, s.wall_time)
        }
        None => (ExactFlow::new(initial.clone()), 0, 0.0),
    };
    let mut rec = Recorder::new(cfg, run_dir, total, step, wall)?;
    let mut v = exact::baseline(&cfg.loss, bandit.value(&flow.behaviour));
    if step == 0 {
        let row = bandit_row(
            0,
            per_round,
            &bandit,
            &softmax(&flow.logits),
            bandit.value(&flow.behaviour),
            v,
        );
        rec.log(row, 0)?;
    }
    let save = |rec: &mut Recorder, flow: &ExactFlow, step: u64| -> Result<()> {
        let state = ExactState {
            flow: flow.clone(),
            wall_time: rec.wall_time(),
        };
        let state = serde_json::to_value(state).expect("exact state serialises");
        rec.checkpoint(&Checkpoint {
            step,
            state,
            tensors: vec![],
        })
    };
    while step < total {
        if let Some(code) = interrupted(opts) {
            save(&mut rec, &flow, step)?;
            rec.finish()?;
            return Ok(Outcome::Interrupted { step, code });
        }
        if step > 0 && step % per_round == 0 {
            flow.new_round();
        }
        let v_mu = bandit.value(&flow.behaviour);
        v = exact::baseline(&cfg.loss, v_mu);
        let stats = flow.step(&bandit, v, cfg.env.eta);
        step += 1;
        if !stats.loss.is_finite() || flow.logits.iter().any(|l| !l.is_finite()) {
            return Err(Error::NonFinite {
                quantity: "logits",
                step,
            });
        }
        if rec.should_log(step) {
            let mut row = bandit_row(step, per_round, &bandit, &softmax(&flow.logits), v_mu, v);
            row.push(tags::LOSS, stats.loss)
                .push(tags::GRAD_NORM, stats.grad_norm);
            rec.log(row, 0)?;
        }
        if rec.should_checkpoint(step) {
            save(&mut rec, &flow, step)?;
        }
    }
    rec.finish()?;
    let final_probs = softmax(&flow.logits);
    let behaviour = flow.behaviour.clone();
    Ok(Outcome::Finished(bandit_summary(
        cfg,
        Device::Cpu,
        step,
        &rec,
        &bandit,
        &initial,
        behaviour,
        final_probs,
        v,
    )))
}

/// Checkpointed state of a sampled run beyond its tensors.
#[derive(Serialize, Deserialize)]
struct SampledState {
    learner_rng: ChaCha8Rng,
    replay: Replay,
    optimizer_t: u64,
    /// Serial runs only: the actors' RNG streams and counters, for an exact resume.
    actors: Vec<ActorState>,
    next_actor: usize,
    last_baseline: f64,
    wall_time: f64,
    /// Tool use: the warm start's report and held-out evaluation, kept for the summary.
    #[serde(default)]
    warmstart: Option<(WarmstartReport, ScoreMeans, f64)>,
    /// Batches skipped for a non-finite loss or gradient (`learner.skip_nonfinite`).
    #[serde(default)]
    nonfinite_skipped: u64,
    /// Parallel resumes so far: the session number of the actors' ids.
    #[serde(default)]
    session: u32,
}

/// What a sampled run logs and summarises, per environment.
enum EnvView {
    Bandit {
        bandit: Bandit,
        initial: Vec<f64>,
        behaviour_probs: Vec<f64>,
    },
    ToolUse {
        task: Task,
        limits: Limits,
        warmstart: (WarmstartReport, ScoreMeans, f64),
    },
}

/// The learner side of a sampled run: the learner plus what logging needs.
struct SampledRun<'a> {
    cfg: &'a Config,
    env: EnvView,
    learner: Learner,
    /// The weights the actors currently sample from.
    behaviour: WeightSnapshot,
    last_baseline: f64,
    rec: Recorder,
    /// The session of this process's actors ([`crate::ids::SourceId`]).
    session: u32,
}

impl SampledRun<'_> {
    fn publish(&mut self) -> Result<WeightSnapshot> {
        let snap = self.learner.snapshot()?;
        self.set_behaviour(snap.clone());
        Ok(snap)
    }

    fn set_behaviour(&mut self, snap: WeightSnapshot) {
        if let EnvView::Bandit {
            behaviour_probs, ..
        } = &mut self.env
        {
            let logits: Vec<f64> = snap.tensors[0].data.iter().map(|&x| x as f64).collect();
            *behaviour_probs = sampling_probs(&logits, self.cfg.policy.temperature);
        }
        self.behaviour = snap;
    }

    fn evaluate(&self, split: Split, episodes: usize) -> Result<ScoreMeans> {
        let EnvView::ToolUse { task, limits, .. } = &self.env else {
            return Err(Error::Corrupt("only tool-use runs are evaluated".into()));
        };
        evaluate(
            self.learner.policy.transformer()?,
            task,
            split,
            episodes,
            *limits,
            &self.cfg.reward,
            self.learner.device(),
            |_| {},
        )
    }

    /// The environment's part of a metrics row.
    fn row(&self) -> Result<Row> {
        let step = self.learner.step;
        match &self.env {
            EnvView::Bandit {
                bandit,
                behaviour_probs,
                ..
            } => {
                let pi = softmax(&self.learner.logits()?);
                let v_mu = bandit.value(behaviour_probs);
                Ok(bandit_row(
                    step,
                    self.cfg.env.steps_per_round,
                    bandit,
                    &pi,
                    v_mu,
                    self.last_baseline,
                ))
            }
            EnvView::ToolUse { .. } => {
                let mut row = Row::new(step);
                row.push(tags::ROUND, (step / self.cfg.env.steps_per_round) as f64);
                Ok(row)
            }
        }
    }

    fn after_step(&mut self, stats: &StepStats) -> Result<()> {
        self.last_baseline = stats.baseline;
        let step = self.learner.step;
        let eval_due = matches!(self.env, EnvView::ToolUse { .. })
            && self.cfg.logging.eval_every > 0
            && step.is_multiple_of(self.cfg.logging.eval_every);
        if !self.rec.should_log(step) && !eval_due {
            return Ok(());
        }
        let mut row = self.row()?;
        row.push(tags::BATCH_REWARD, stats.batch_reward);
        if let Some(e) = stats.episode {
            row.push(tags::COMPLETION, e.completion)
                .push(tags::TOOL_PRECISION, e.precision)
                .push(tags::TOOL_RECALL, e.recall)
                .push(tags::TOOL_F1, e.f1)
                .push(tags::FORMAT_ERRORS, e.format_errors)
                .push(tags::CALLS, e.calls)
                .push(tags::LENGTH, e.length)
                .push(tags::V, stats.baseline)
                .push(tags::ENTROPY, stats.entropy);
        }
        row.push(tags::LOSS, stats.loss)
            .push(tags::GRAD_NORM, stats.grad_norm)
            .push(tags::POLICY_LAG_MEAN, stats.lag_mean)
            .push(tags::POLICY_LAG_MAX, stats.lag_max as f64)
            .push(tags::REPLAY_SIZE, self.learner.replay.len() as f64)
            .push(
                tags::STALE_DROPPED,
                self.learner.replay.stale_dropped() as f64,
            )
            .push(
                tags::NONFINITE_SKIPPED,
                self.learner.nonfinite_skipped as f64,
            );
        if eval_due {
            let e = self.evaluate(Split::Heldout, self.cfg.logging.eval_episodes)?;
            row.push(tags::HELDOUT_COMPLETION, e.completion)
                .push(tags::HELDOUT_F1, e.f1);
        }
        self.rec.log(row, self.cfg.learner.batch_size as u64)
    }

    fn checkpoint(&mut self, actors: Vec<ActorState>, next_actor: usize) -> Result<()> {
        let (optimizer_t, optimizer) = self.learner.optimizer_state()?;
        let warmstart = match &self.env {
            EnvView::ToolUse { warmstart, .. } => Some(*warmstart),
            EnvView::Bandit { .. } => None,
        };
        let state = SampledState {
            learner_rng: self.learner.rng.clone(),
            replay: self.learner.replay.clone(),
            optimizer_t,
            actors,
            next_actor,
            last_baseline: self.last_baseline,
            wall_time: self.rec.wall_time(),
            warmstart,
            nonfinite_skipped: self.learner.nonfinite_skipped,
            session: self.session,
        };
        let ckpt = Checkpoint {
            step: self.learner.step,
            state: serde_json::to_value(state).expect("sampled state serialises"),
            tensors: vec![
                ("weights".into(), self.learner.snapshot()?.tensors),
                ("behaviour".into(), self.behaviour.tensors.clone()),
                ("optimizer".into(), optimizer),
            ],
        };
        self.rec.checkpoint(&ckpt)
    }

    fn summary(&mut self, device: Device) -> Result<Summary> {
        match &self.env {
            EnvView::Bandit {
                bandit,
                initial,
                behaviour_probs,
            } => {
                self.rec.finish()?;
                let final_probs = softmax(&self.learner.logits()?);
                Ok(bandit_summary(
                    self.cfg,
                    device,
                    self.learner.step,
                    &self.rec,
                    bandit,
                    initial,
                    behaviour_probs.clone(),
                    final_probs,
                    self.last_baseline,
                ))
            }
            EnvView::ToolUse {
                task, warmstart, ..
            } => {
                let final_heldout =
                    self.evaluate(Split::Heldout, self.cfg.logging.eval_episodes)?;
                let final_train = self.evaluate(Split::Train, self.cfg.logging.eval_episodes)?;
                let mut row = Row::new(self.learner.step);
                row.push(tags::HELDOUT_COMPLETION, final_heldout.completion)
                    .push(tags::HELDOUT_F1, final_heldout.f1);
                self.rec.log(row, 0)?;
                self.rec.finish()?;
                let details = ToolUseSummary {
                    task: format!("{:?}", task.spec.kind).to_lowercase(),
                    warmstart_heldout: warmstart.1,
                    final_heldout,
                    final_train,
                    warmstart: warmstart.0,
                    warmstart_seconds: warmstart.2,
                };
                Ok(Summary {
                    mode: "tool_use".into(),
                    device: device_name(device),
                    steps: self.learner.step,
                    wall_time: self.rec.wall_time(),
                    last: self.rec.last_row_json(),
                    bandit: None,
                    tool_use: Some(details),
                })
            }
        }
    }
}

fn run_sampled(
    cfg: &Config,
    run_dir: &Path,
    device: Device,
    opts: &RunOptions,
    resume: Option<Checkpoint>,
) -> Result<Outcome> {
    let total = cfg.env.total_steps();
    let initial = initial_logits(cfg);
    tch::manual_seed(cfg.seed as i64);
    let mut learner = if resume.is_some() {
        Learner::new(cfg, device, &initial)
    } else {
        new_learner(cfg, device, &initial)?
    };
    let mut saved = None;
    let mut behaviour = None;
    if let Some(ckpt) = &resume {
        let s: SampledState = serde_json::from_value(ckpt.state.clone())
            .map_err(|e| Error::Corrupt(format!("checkpoint state: {e}")))?;
        WeightSnapshot {
            version: ckpt.step,
            tensors: ckpt.tensors("weights")?.to_vec(),
        }
        .load_into(&learner.vs)?;
        learner.load_optimizer_state(s.optimizer_t, ckpt.tensors("optimizer")?)?;
        learner.rng = s.learner_rng.clone();
        learner.replay = s.replay.clone();
        learner.nonfinite_skipped = s.nonfinite_skipped;
        learner.step = ckpt.step;
        let version = ckpt.step - ckpt.step % cfg.learner.sync_interval;
        behaviour = Some(WeightSnapshot {
            version,
            tensors: ckpt.tensors("behaviour")?.to_vec(),
        });
        saved = Some(s);
    }
    let wall = saved.as_ref().map_or(0.0, |s| s.wall_time);
    let env = match cfg.env.kind {
        EnvKind::Bandit => EnvView::Bandit {
            bandit: Bandit::new(&cfg.env, cfg.seed),
            initial: initial.clone(),
            behaviour_probs: Vec::new(),
        },
        EnvKind::ToolUse => {
            let task = Task::new(cfg.env.task_spec(cfg.seed));
            let limits = Limits {
                max_tokens: cfg.env.max_tokens,
                max_calls: cfg.env.max_calls,
            };
            let warmstart = match saved.as_ref().and_then(|s| s.warmstart) {
                Some(w) => w,
                None => {
                    let started = Instant::now();
                    let model = learner.policy.transformer()?;
                    let report = warm_start(cfg, model, &learner.vs, &task, device)?;
                    let seconds = started.elapsed().as_secs_f64();
                    let heldout = evaluate(
                        model,
                        &task,
                        Split::Heldout,
                        cfg.logging.eval_episodes,
                        limits,
                        &cfg.reward,
                        device,
                        |_| {},
                    )?;
                    eprintln!(
                        "warm start: {} steps in {seconds:.1} s; held-out completion {:.3}, tool F1 {:.3}",
                        report.steps, heldout.completion, heldout.f1
                    );
                    (report, heldout, seconds)
                }
            };
            EnvView::ToolUse {
                task,
                limits,
                warmstart,
            }
        }
    };
    let behaviour = match behaviour {
        Some(b) => b,
        None => learner.snapshot()?,
    };
    let rec = Recorder::new(cfg, run_dir, total, learner.step, wall)?;
    let last_baseline = saved.as_ref().map_or(0.0, |s| s.last_baseline);
    let mut run = SampledRun {
        cfg,
        env,
        learner,
        behaviour: behaviour.clone(),
        last_baseline,
        rec,
        session: 0,
    };
    run.set_behaviour(behaviour.clone());
    if run.learner.step == 0 {
        let mut row = run.row()?;
        if let EnvView::ToolUse { warmstart, .. } = &run.env {
            row.push(tags::HELDOUT_COMPLETION, warmstart.1.completion)
                .push(tags::HELDOUT_F1, warmstart.1.f1);
        }
        run.rec.log(row, 0)?;
    }
    // What an actor needs of the environment, owned, so actors can also be rebuilt mid-run.
    enum ActorEnv {
        Bandit(Bandit),
        ToolUse(Task),
    }
    let actor_env = match &run.env {
        EnvView::Bandit { bandit, .. } => ActorEnv::Bandit(bandit.clone()),
        EnvView::ToolUse { task, .. } => ActorEnv::ToolUse(task.clone()),
    };
    // A parallel resume is a new session: its actors draw from streams of their own, so they
    // repeat no prompt and no draw of the sessions before ([`crate::ids`]). A serial resume
    // restores every actor's state instead, and continues the same session exactly.
    let session = saved
        .as_ref()
        .map_or(0, |s| s.session + u32::from(!opts.serial));
    run.session = session;
    let build_actor = |id: usize, restart: u32| -> Result<Box<dyn Actor>> {
        let source = SourceId::new(session, id as u32, restart);
        Ok(match &actor_env {
            ActorEnv::Bandit(b) => Box::new(BanditActor::new(cfg, source, b.clone(), &behaviour)?),
            ActorEnv::ToolUse(t) => Box::new(ToolActor::new(cfg, source, t.clone(), &behaviour)?),
        })
    };
    let actors: Vec<Box<dyn Actor>> = (0..cfg.actor.threads)
        .map(|id| build_actor(id, 0))
        .collect::<Result<Vec<_>>>()?;
    let (actor_states, next_actor) = saved.map_or((Vec::new(), 0), |s| (s.actors, s.next_actor));
    let interrupted_at = if opts.serial {
        serial_loop(&mut run, actors, actor_states, next_actor, opts)?
    } else {
        // A restarted actor is a new source: fresh streams, no prompt of its earlier life.
        let factory = |id: usize, restart: u64| build_actor(id, restart as u32);
        parallel_loop(&mut run, actors, &factory, opts)?
    };
    if let Some(code) = interrupted_at {
        run.rec.finish()?;
        return Ok(Outcome::Interrupted {
            step: run.learner.step,
            code,
        });
    }
    Ok(Outcome::Finished(run.summary(device)?))
}

/// Actors and learner interleaved on one thread in a fixed order. Returns the signal code when
/// interrupted (after checkpointing).
fn serial_loop(
    run: &mut SampledRun,
    mut actors: Vec<Box<dyn Actor>>,
    saved: Vec<ActorState>,
    mut next_actor: usize,
    opts: &RunOptions,
) -> Result<Option<i32>> {
    if !saved.is_empty() {
        if saved.len() != actors.len() {
            return Err(Error::Corrupt(format!(
                "checkpoint has {} actors, config has {}",
                saved.len(),
                actors.len()
            )));
        }
        for (actor, state) in actors.iter_mut().zip(saved) {
            actor.set_state(state);
        }
    }
    let total = run.cfg.env.total_steps();
    let states =
        |actors: &[Box<dyn Actor>]| actors.iter().map(|a| a.state().clone()).collect::<Vec<_>>();
    while run.learner.step < total {
        if let Some(code) = interrupted(opts) {
            run.checkpoint(states(&actors), next_actor)?;
            return Ok(Some(code));
        }
        while !run.learner.ready() {
            let batch = actors[next_actor].act()?;
            next_actor = (next_actor + 1) % actors.len();
            run.learner.ingest(batch);
        }
        let stats = run.learner.train_step()?;
        if let Some(progress) = opts.progress {
            progress.store(run.learner.step, Ordering::Relaxed);
        }
        if run
            .learner
            .step
            .is_multiple_of(run.cfg.learner.sync_interval)
        {
            let snap = run.publish()?;
            for actor in &mut actors {
                actor.load(&snap)?;
            }
        }
        run.after_step(&stats)?;
        if run.rec.should_checkpoint(run.learner.step) {
            run.checkpoint(states(&actors), next_actor)?;
        }
    }
    Ok(None)
}

/// Why the actors stopped, if one failed.
#[derive(Default)]
struct ActorFailure(Mutex<Option<Error>>);

impl ActorFailure {
    fn set(&self, err: Error) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(err);
    }

    fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Builds actor `id` afresh, for restarting one that panicked (`restart` counts from 1).
type ActorFactory<'a> = dyn Fn(usize, u64) -> Result<Box<dyn Actor>> + Sync + 'a;

/// N actor threads feeding the learner thread through a bounded channel.
fn parallel_loop(
    run: &mut SampledRun,
    actors: Vec<Box<dyn Actor>>,
    factory: &ActorFactory,
    opts: &RunOptions,
) -> Result<Option<i32>> {
    let board = SnapshotBoard::new(run.behaviour.clone());
    let stop = AtomicBool::new(false);
    let pacer = Pacer::new(
        run.cfg.replay.max_policy_lag,
        run.learner.replay.per_step(),
        run.learner.replay.inserted(),
        run.learner.step,
        run.learner.replay.needed(run.learner.step),
    );
    let failure = ActorFailure::default();
    let (tx, rx) = bounded::<ActorBatch>(run.cfg.actor.channel_capacity);
    let restart = run.cfg.actor.restart;
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for actor in actors {
            let id = actor.id();
            let tx = tx.clone();
            let (board, pacer) = (&board, &pacer);
            let panic_after = run.cfg.faults.actor_panic_after;
            let delay = Duration::from_millis(run.cfg.faults.actor_delay_ms);
            let (stop, failure) = (&stop, &failure);
            let handle = std::thread::Builder::new()
                .name(format!("actor-{id}"))
                .spawn_scoped(scope, move || {
                    let mut next = Some(actor);
                    let mut restarts = 0u64;
                    loop {
                        let actor = match next.take() {
                            Some(a) => a,
                            None => match factory(id, restarts) {
                                Ok(a) => a,
                                Err(e) => {
                                    failure.set(e);
                                    stop.store(true, Ordering::Relaxed);
                                    return;
                                }
                            },
                        };
                        let shared = ActorShared {
                            board,
                            stop,
                            pacer,
                            panic_after,
                            delay,
                        };
                        let tx = tx.clone();
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            actor_loop(actor, tx, shared)
                        }));
                        let err = match result {
                            Ok(Ok(())) => return,
                            Ok(Err(e)) => e,
                            Err(payload) => {
                                let message = panic_message(payload.as_ref());
                                if restart && !stop.load(Ordering::Relaxed) {
                                    restarts += 1;
                                    eprintln!(
                                        "actor {id} panicked: {message}; restarting it (restart {restarts})"
                                    );
                                    continue;
                                }
                                Error::ActorPanic { id, message }
                            }
                        };
                        failure.set(err);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                })
                .map_err(|e| Error::io("actor thread", e))?;
            handles.push(handle);
        }
        drop(tx);
        let shared = LearnerShared {
            board: &board,
            pacer: &pacer,
            failure: &failure,
        };
        let result = std::thread::Builder::new()
            .name("learner".into())
            .spawn_scoped(scope, || learner_loop(run, rx, shared, opts))
            .map_err(|e| Error::io("learner thread", e))?
            .join()
            .unwrap_or_else(|payload| {
                Err(Error::Corrupt(format!(
                    "learner panicked: {}",
                    panic_message(payload.as_ref())
                )))
            });
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        result
    })
}

struct LearnerShared<'a> {
    board: &'a SnapshotBoard,
    pacer: &'a Pacer,
    failure: &'a ActorFailure,
}

/// The body of the learner thread: drain the channel into the replay buffer, step when the buffer
/// allows, publish snapshots, log and checkpoint. Returns the signal code when interrupted.
fn learner_loop(
    run: &mut SampledRun,
    rx: Receiver<ActorBatch>,
    shared: LearnerShared,
    opts: &RunOptions,
) -> Result<Option<i32>> {
    let total = run.cfg.env.total_steps();
    while run.learner.step < total {
        if let Some(err) = shared.failure.take() {
            // Stop cleanly: what the learner has is sound, so keep it.
            run.checkpoint(Vec::new(), 0)?;
            return Err(err);
        }
        if let Some(code) = interrupted(opts) {
            run.checkpoint(Vec::new(), 0)?;
            return Ok(Some(code));
        }
        // Take messages only while the next step lacks data: what stays in the bounded channel
        // blocks the actors, which bounds the policy lag (the channel is the back-pressure).
        if !run.learner.ready() {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(batch) => run.learner.ingest(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(shared
                        .failure
                        .take()
                        .unwrap_or_else(|| Error::Corrupt("every actor stopped".into())));
                }
            }
            continue;
        }
        let stats = run.learner.train_step()?;
        if let Some(progress) = opts.progress {
            progress.store(run.learner.step, Ordering::Relaxed);
        }
        if run.cfg.faults.learner_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(run.cfg.faults.learner_delay_ms));
        }
        if run
            .learner
            .step
            .is_multiple_of(run.cfg.learner.sync_interval)
        {
            let snap = run.publish()?;
            shared.board.publish(snap);
        }
        let step = run.learner.step;
        run.learner.replay.evict_stale(step);
        shared.pacer.advance(step, run.learner.replay.needed(step));
        run.after_step(&stats)?;
        if run.rec.should_checkpoint(run.learner.step) {
            run.checkpoint(Vec::new(), 0)?;
        }
    }
    Ok(None)
}

/// Greedy evaluation of a tool-use run's last checkpoint on `episodes` items of `split`.
/// Greedy evaluation of a tool-use run's last checkpoint on `episodes` items of `split`; with
/// `dump`, every episode is also written there as a JSON line (the form `asymre score` reads).
pub fn evaluate_run(
    run_dir: &Path,
    split: Split,
    episodes: usize,
    dump: Option<&Path>,
) -> Result<(u64, ScoreMeans)> {
    let (cfg, _) = open_run_dir(run_dir)?;
    if cfg.env.kind != EnvKind::ToolUse {
        return Err(Error::input(format!(
            "{}: eval is for tool-use runs",
            run_dir.display()
        )));
    }
    if episodes == 0 {
        return Err(Error::input("--episodes: must be >= 1, got 0"));
    }
    let ckpt = checkpoint::load_latest(run_dir)?.ok_or_else(|| {
        Error::input(format!(
            "{}: no checkpoint to evaluate yet",
            run_dir.display()
        ))
    })?;
    tch::set_num_threads(cfg.learner.intra_op_threads as i32);
    let device = resolve_device(cfg.device)?;
    let vs = tch::nn::VarStore::new(device);
    let model = PolicyModel::build(&cfg, &vs.root(), &[]).into_transformer()?;
    WeightSnapshot {
        version: ckpt.step,
        tensors: ckpt.tensors("weights")?.to_vec(),
    }
    .load_into(&vs)?;
    let task = Task::new(cfg.env.task_spec(cfg.seed));
    let limits = Limits {
        max_tokens: cfg.env.max_tokens,
        max_calls: cfg.env.max_calls,
    };
    let mut lines = String::new();
    let stats = evaluate(
        &model,
        &task,
        split,
        episodes,
        limits,
        &cfg.reward,
        device,
        |ep| {
            if dump.is_some() {
                lines.push_str(&crate::env::tool_use::episode_json(&task, ep).to_string());
                lines.push('\n');
            }
        },
    )?;
    if let Some(path) = dump {
        std::fs::write(path, lines).at(path)?;
    }
    Ok((ckpt.step, stats))
}

/// Writes a run's `config.toml` and `run.json` in a new directory. A `policy.init` file must
/// load into the configured policy before anything is written; the run's config records its
/// full path.
pub fn create_run_dir(dir: &Path, cfg: &Config, serial: bool) -> Result<()> {
    let mut cfg = cfg.clone();
    if let Some(init) = &cfg.policy.init {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _policy = PolicyModel::build(&cfg, &vs.root(), &initial_logits(&cfg));
        load_init(&vs, init)?;
        let full = init.canonicalize().map_err(|e| init_error(init, e))?;
        cfg.policy.init = Some(full);
    }
    if dir.exists() && std::fs::read_dir(dir).at(dir)?.next().is_some() {
        return Err(Error::input(format!(
            "--out {}: the directory exists and is not empty (resume it with `asymre resume {}` or choose another)",
            dir.display(),
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).at(dir)?;
    checkpoint::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    let meta = serde_json::json!({ "serial": serial, "version": env!("CARGO_PKG_VERSION") });
    checkpoint::write_atomic(&dir.join("run.json"), meta.to_string().as_bytes())
}

/// The bandit's initial logits for the tabular policy (none for tool use).
fn initial_logits(cfg: &Config) -> Vec<f64> {
    match cfg.env.kind {
        EnvKind::Bandit => bandit::initial_logits(&cfg.env, cfg.seed),
        EnvKind::ToolUse => Vec::new(),
    }
}

/// A learner for a new run: [`Learner::new`], then the weights of `policy.init` if it is set.
pub fn new_learner(cfg: &Config, device: Device, init_logits: &[f64]) -> Result<Learner> {
    let learner = Learner::new(cfg, device, init_logits);
    if let Some(init) = &cfg.policy.init {
        load_init(&learner.vs, init)?;
    }
    Ok(learner)
}

/// Overwrites the variables of `vs` with the `policy.init` file at `path`.
fn load_init(vs: &tch::nn::VarStore, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| init_error(path, e))?;
    // The parser's errors name the file already.
    let tensors = checkpoint::parse_safetensors(&bytes, path)
        .map_err(|e| Error::input(format!("policy.init: {e}")))?;
    WeightSnapshot {
        version: 0,
        tensors,
    }
    .load_into(vs)
    .map_err(|e| init_error(path, e))
}

fn init_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::input(format!("policy.init: {}: {e}", path.display()))
}

/// Reads what [`create_run_dir`] wrote: the config and whether the run is serial.
pub fn open_run_dir(dir: &Path) -> Result<(Config, bool)> {
    let cfg_path = dir.join("config.toml");
    if !cfg_path.exists() {
        return Err(Error::input(format!(
            "{}: not a run directory (no config.toml)",
            dir.display()
        )));
    }
    let cfg = crate::config::load_resolved(&cfg_path)?;
    let meta_path = dir.join("run.json");
    let meta: serde_json::Value = std::fs::read_to_string(&meta_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| Error::Corrupt(format!("{}: missing or unreadable", meta_path.display())))?;
    Ok((
        cfg,
        meta.get("serial")
            .and_then(|s| s.as_bool())
            .unwrap_or(false),
    ))
}
