//! `asymre bench`: how many samples per second the pipelines turn into learning, measured in one
//! process on the current machine, next to a plain eager PyTorch baseline
//! (`scripts/reference/baseline.py`) run in the same invocation, so that the ratios hold on a
//! noisy machine.
//!
//! Measured: the bandit in sampled mode end to end; tool use (`calc`, default model) as the actors
//! alone, the learner alone and end to end (with the mean policy lag), then the learner alone and
//! end to end again with `policy.precision = "bf16"` (the baseline stays f32); the same from the
//! default experiment's warm start, which both sides load from one saved file; actor scaling from
//! one to two threads; the fp32 matmul rate through libtorch and the learner step's achieved rate
//! at d_model 256, batch 256 × 64 tokens; peak resident memory. Both sides start tool use from the
//! same seeded weights.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::config::{self, Config, Precision};
use crate::env::tool_use::protocol::TokenProtocol;
use crate::env::tool_use::tasks::Task;
use crate::error::{Error, IoContext, Result};
use crate::ids::{PromptId, SourceId};
use crate::policy::{PrefixBatch, ToolPolicy, Transformer};
use crate::rl::actor::{Actor, ToolActor};
use crate::rl::learner::Learner;
use crate::rl::warmstart::{demos, warm_start};
use crate::run::{self, Outcome, RunOptions};
use crate::store::checkpoint;
use crate::text::words as vocab;
use crate::trajectory::{ActorBatch, Trajectory};

const BANDIT_TOML: &str = include_str!("../../../configs/bandit.toml");
const CALC_TOML: &str = include_str!("../../../configs/tool_calc.toml");

/// What `asymre bench` was asked for.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Short measurements (a few seconds each) instead of the full ones.
    pub quick: bool,
    /// The Python interpreter for the baseline; `None` skips it.
    pub python: Option<PathBuf>,
    /// Also write the results as JSON here.
    pub json: Option<PathBuf>,
    /// Where the learners (and the matmul measurement) run.
    pub device: crate::config::DeviceChoice,
    /// Seconds per measurement, overriding `quick`'s 3 and the default 15.
    pub seconds: Option<f64>,
}

/// Seconds spent on each measurement.
fn budget(quick: bool) -> f64 {
    if quick {
        3.0
    } else {
        15.0
    }
}

/// The bandit of the paper in sampled mode: 100 arms, batch 1024, μ refreshed every 500 steps.
pub fn bandit_config() -> Result<Config> {
    config::from_toml_str(
        BANDIT_TOML,
        &[
            "actor.batch_size=1024".into(),
            "learner.batch_size=1024".into(),
            "env.rounds=100000".into(),
        ],
    )
}

/// The default tool-use experiment, from a random initialisation (no warm start) so that the
/// baseline, which has no demonstrations, decodes the same kind of episodes.
pub fn calc_config() -> Result<Config> {
    config::from_toml_str(
        CALC_TOML,
        &[
            "warmstart.demos=0".into(),
            "env.rounds=100000".into(),
            "logging.every=4".into(),
        ],
    )
}

/// Runs the benchmark and prints its table.
pub fn run(opts: &BenchOptions) -> Result<()> {
    let secs = opts.seconds.unwrap_or_else(|| budget(opts.quick));
    let device = run::resolve_device(opts.device)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut ours = serde_json::Map::new();
    let mut put = |k: &str, v: f64| {
        ours.insert(k.into(), json!(v));
    };

    progress("fp32 matmul through libtorch");
    tch::set_num_threads(cores as i32);
    let n = if opts.quick { 512 } else { 1024 };
    let matmul = matmul_gflops(n, secs / 3.0, device);
    put("matmul_gflops", matmul);

    progress("learner step, d_model 256, batch 256 × 64 tokens");
    let (step_s, flops) = learner_step_seconds(256, 256, 64, secs, device)?;
    put("learner_d256_step_s", step_s);
    put("learner_d256_gflops", flops / step_s / 1e9);

    tch::set_num_threads(1);
    let mut calc = calc_config()?;
    calc.device = opts.device;
    // The baseline starts from the same random weights, so both decode the same kind of episodes.
    let scratch = ScratchDir::new()?;
    let init = scratch.0.join("init.safetensors");
    save_weights(&new_learner_for(&calc, Device::Cpu)?, &init)?;
    progress("tool-use actors, 1 thread");
    let one = actor_rates(&calc, 1, secs)?;
    progress("tool-use actors, 2 threads");
    let two = actor_rates(&calc, 2, secs)?;
    put("tool_actor_tokens_per_s", one.tokens);
    put("tool_actor_episodes_per_s", one.episodes);
    put("tool_actor_2_threads_episodes_per_s", two.episodes);
    put(
        "tool_actor_mean_episode_tokens",
        one.tokens / one.episodes.max(1e-9),
    );

    let (traj, tokens, e2e) = learner_and_end_to_end(&calc, secs, "tool_", "", &mut put)?;
    // bf16 rows only where bf16 products are native: emulated ones measure the emulation.
    let bf16_native = crate::device::native_bf16(Device::Cpu) && crate::device::native_bf16(device);
    put("bf16_native", if bf16_native { 1.0 } else { 0.0 });
    if bf16_native {
        let mut calc_bf16 = calc.clone();
        calc_bf16.policy.precision = Precision::Bf16;
        let bf16 = ", bf16 products";
        learner_and_end_to_end(&calc_bf16, secs, "tool_bf16_", bf16, &mut put)?;
    } else {
        progress("bf16 rows skipped: no native bf16 on this CPU");
    }

    // The default experiment trains from its warm start, whose episodes are shorter and whose G
    // samples of a prompt often agree. Both sides start from the same saved weights here.
    progress("the default experiment's warm start");
    let weights = warm_start_weights(&scratch.0)?;
    let mut warm = calc.clone();
    warm.policy.init = Some(weights.clone());
    progress("tool-use actor from the warm start");
    let warm_actor = actor_rates(&warm, 1, secs)?;
    put("tool_warm_actor_episodes_per_s", warm_actor.episodes);
    put("tool_warm_actor_tokens_per_s", warm_actor.tokens);
    put(
        "tool_warm_actor_mean_episode_tokens",
        warm_actor.tokens / warm_actor.episodes.max(1e-9),
    );
    let from_warm = " from the warm start";
    learner_and_end_to_end(&warm, secs, "tool_warm_", from_warm, &mut put)?;
    if bf16_native {
        let mut warm_bf16 = warm.clone();
        warm_bf16.policy.precision = Precision::Bf16;
        let label = " from the warm start, bf16 products";
        learner_and_end_to_end(&warm_bf16, secs, "tool_warm_bf16_", label, &mut put)?;
    }

    progress("bandit end to end");
    let mut bandit = bandit_config()?;
    bandit.device = opts.device;
    let bandit = end_to_end(&bandit, secs.max(2.0))?;
    put("bandit_samples_per_s", bandit.samples_per_s);
    put("bandit_policy_lag", bandit.lag);
    put("peak_rss_mib", peak_rss_mib());

    let base = match &opts.python {
        Some(python) => {
            progress("PyTorch eager baseline (scripts/reference/baseline.py)");
            Some(baseline(python, secs, &init, &weights)?)
        }
        None => None,
    };
    // The arithmetic an episode costs when computed on its own: the learner's forward and
    // backward over its tokens and the actor's forward over the same tokens, without padding.
    // Above the matmul rate, a throughput is out of reach unless work is shared between
    // episodes (a prompt's G samples, repeated continuations).
    let full_len = tokens / traj;
    let prompt_len = full_len - one.tokens / one.episodes.max(1e-9);
    let episode_gflop = |len: f64| {
        let (p, vocab) = (&calc.policy, crate::text::words::size());
        let len = len.round().max(1.0) as usize;
        transformer_step_flops(p.layers, p.d_model, vocab, StepShape::dense(1, len)) * 4.0
            / 3.0
            / 1e9
    };
    put(
        "tool_model_gflops",
        e2e.samples_per_s * episode_gflop(prompt_len + e2e.length),
    );
    let mut base = base;
    if let Some(Value::Object(b)) = &mut base {
        let field = |k: &str| b.get(k).and_then(Value::as_f64);
        if let (Some(eps), Some(len)) = (
            field("tool_episodes_per_s"),
            field("tool_mean_episode_tokens"),
        ) {
            let gflops = eps * episode_gflop(prompt_len + len);
            b.insert("tool_model_gflops".into(), json!(gflops));
        }
    }
    let ours = Value::Object(ours);
    print_table(&ours, base.as_ref(), cores, n, opts.quick, device);
    if let Some(path) = &opts.json {
        let all = json!({ "asymre": ours, "baseline": base, "cores": cores, "quick": opts.quick });
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap_or_default()).at(path)?;
    }
    Ok(())
}

/// The tool-use learner alone, then end to end, for `cfg`: recorded under `prefix` and returned
/// as the learner's trajectories/s and tokens/s and the end-to-end rates.
fn learner_and_end_to_end(
    cfg: &Config,
    secs: f64,
    prefix: &str,
    label: &str,
    put: &mut impl FnMut(&str, f64),
) -> Result<(f64, f64, EndToEnd)> {
    progress(&format!("tool-use learner{label}"));
    let (traj, tokens) = learner_rates(cfg, secs)?;
    put(&format!("{prefix}learner_trajectories_per_s"), traj);
    put(&format!("{prefix}learner_tokens_per_s"), tokens);
    progress(&format!("tool use end to end{label}"));
    // End to end needs a few logged rows whatever the budget.
    let e2e = end_to_end(cfg, secs.max(4.0))?;
    put(&format!("{prefix}episodes_per_s"), e2e.samples_per_s);
    put(
        &format!("{prefix}tokens_per_s"),
        e2e.samples_per_s * e2e.length,
    );
    put(&format!("{prefix}policy_lag"), e2e.lag);
    // Episodes lengthen or shorten as the policy trains; compare these, not the frozen actor's.
    put(&format!("{prefix}mean_episode_tokens"), e2e.length);
    put(&format!("{prefix}mean_reward"), e2e.reward);
    Ok((traj, tokens, e2e))
}

fn progress(what: &str) {
    eprintln!("bench: {what} …");
}

/// fp32 GFLOP/s of an n × n matmul (2n³ flops) over about `secs` seconds.
pub fn matmul_gflops(n: i64, secs: f64, device: Device) -> f64 {
    let _guard = tch::no_grad_guard();
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let _ = a.matmul(&b).double_value(&[0, 0]); // warm-up
    let start = Instant::now();
    let mut reps = 0u32;
    let mut c = a.shallow_clone();
    while reps < 3 || start.elapsed().as_secs_f64() < secs {
        c = a.matmul(&b);
        reps += 1;
    }
    let _ = c.double_value(&[0, 0]); // waits for the device
    let dt = start.elapsed().as_secs_f64();
    2.0 * (n as f64).powi(3) * reps as f64 / dt / 1e9
}

/// What one learner step feeds the transformer ([`crate::policy::PrefixBatch`]): the distinct
/// prefixes the per-token layers compute, the padded rows × width attention spans, and the rows
/// of the output head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepShape {
    pub nodes: usize,
    pub rows: usize,
    pub width: usize,
    pub head_rows: usize,
}

impl StepShape {
    /// `b` unrelated sequences of `t` positions, each scored at every position.
    pub fn dense(b: usize, t: usize) -> Self {
        StepShape {
            nodes: b * t,
            rows: b,
            width: t,
            head_rows: b * t,
        }
    }
}

/// Forward + backward flops of one learner step of the transformer: the matmuls of each block
/// (QKV, output projection, MLP: 24 d² per node), attention over the width (4 W d per slot), and
/// the output head (2 d V per head row); backward costs twice the forward. Only what is computed
/// counts: prefixes shared by several rows once, padding not at all.
pub fn transformer_step_flops(layers: usize, d: usize, vocab: usize, shape: StepShape) -> f64 {
    let d = d as f64;
    let (nodes, slots) = (shape.nodes as f64, (shape.rows * shape.width) as f64);
    let blocks = layers as f64 * (24.0 * d * d * nodes + 4.0 * shape.width as f64 * d * slots);
    3.0 * (blocks + 2.0 * d * vocab as f64 * shape.head_rows as f64)
}

/// A trajectory of `len` random tokens: a short prompt, then tokens the policy wrote.
fn synthetic_trajectory(rng: &mut impl Rng, len: usize, prompt: PromptId) -> Trajectory {
    let actions: Vec<u32> = (0..len)
        .map(|_| rng.gen_range(3..vocab::size() as u32))
        .collect();
    Trajectory::synthetic(prompt, actions, 8, -3.0, rng.gen_range(-1.0..1.0))
}

/// Seconds per learner step (AsymRE, Adam) at `d_model` on a batch of `b` trajectories of `t`
/// tokens, and the step's flops.
fn learner_step_seconds(
    d_model: usize,
    b: usize,
    t: usize,
    secs: f64,
    device: Device,
) -> Result<(f64, f64)> {
    let cfg = config::from_toml_str(
        CALC_TOML,
        &[
            format!("policy.d_model={d_model}"),
            format!("learner.batch_size={b}"),
            format!("env.max_tokens={t}"),
        ],
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let trajectories: Vec<Trajectory> = (0..b)
        .map(|i| {
            synthetic_trajectory(
                &mut rng,
                t,
                SourceId::new(0, 0, 0).prompt(0, (i / 8) as u32),
            )
        })
        .collect();
    let fed = PrefixBatch::new(
        trajectories
            .iter()
            .map(|t| (&t.actions[..], &t.policy_mask[..])),
    );
    let shape = StepShape {
        nodes: fed.nodes(),
        rows: fed.rows,
        width: fed.width,
        head_rows: fed.head_nodes.len(),
    };
    let batch = ActorBatch {
        actor: 0,
        trajectories,
    };
    let flops = transformer_step_flops(cfg.policy.layers, d_model, vocab::size(), shape);
    Ok((
        seconds_per_step(&cfg, device, &[batch], 2, secs / 2.0)?,
        flops,
    ))
}

/// Seconds per learner step for `cfg` (FIFO replay, as configured), fed `batches` again and
/// again in order as the training loop feeds it: whole actor messages, each trajectory used once
/// per pass. Timed after one warm-up step, over at least `min_steps` steps and about `secs`
/// seconds.
fn seconds_per_step(
    cfg: &Config,
    device: Device,
    batches: &[ActorBatch],
    min_steps: u32,
    secs: f64,
) -> Result<f64> {
    let mut cfg = cfg.clone();
    cfg.replay.sampling = crate::config::Sampling::Fifo;
    cfg.replay.reuse = 1.0;
    cfg.replay.max_policy_lag = 0;
    let mut learner = new_learner_for(&cfg, device)?;
    let mut next = batches.iter().cycle();
    let mut step = |learner: &mut Learner| -> Result<()> {
        while !learner.ready() {
            let batch = next
                .next()
                .ok_or_else(|| Error::Corrupt("no bench batches".into()))?;
            learner.ingest(batch.clone());
        }
        learner.train_step()?;
        Ok(())
    };
    step(&mut learner)?;
    let start = Instant::now();
    let mut steps = 0u32;
    while steps < min_steps || start.elapsed().as_secs_f64() < secs {
        step(&mut learner)?;
        steps += 1;
    }
    Ok(start.elapsed().as_secs_f64() / steps as f64)
}

struct ActorRates {
    episodes: f64,
    /// Tokens after the prompt (sampled and forced).
    tokens: f64,
}

/// `threads` tool-use actors sampling side by side for about `secs` seconds, summed.
fn actor_rates(cfg: &Config, threads: usize, secs: f64) -> Result<ActorRates> {
    let snapshot = new_learner_for(cfg, Device::Cpu)?.snapshot()?;
    let barrier = Barrier::new(threads);
    let results: Vec<Result<(u64, u64, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|id| {
                let (snapshot, barrier) = (&snapshot, &barrier);
                s.spawn(move || -> Result<(u64, u64, f64)> {
                    let mut actor = token_actor(cfg, SourceId::new(0, id as u32, 0), snapshot)?;
                    actor.act()?; // warm-up
                    barrier.wait();
                    let start = Instant::now();
                    let (mut episodes, mut tokens) = (0u64, 0u64);
                    while start.elapsed().as_secs_f64() < secs / 2.0 {
                        let batch = actor.act()?;
                        episodes += batch.trajectories.len() as u64;
                        tokens += batch
                            .trajectories
                            .iter()
                            .filter_map(|t| t.stats.as_ref().map(|s| s.length as u64))
                            .sum::<u64>();
                    }
                    Ok((episodes, tokens, start.elapsed().as_secs_f64()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Corrupt("bench actor panicked".into())))
            })
            .collect()
    });
    let mut rates = ActorRates {
        episodes: 0.0,
        tokens: 0.0,
    };
    for r in results {
        let (episodes, tokens, dt) = r?;
        rates.episodes += episodes as f64 / dt;
        rates.tokens += tokens as f64 / dt;
    }
    Ok(rates)
}

/// The tool-use learner alone on episodes its own actor sampled: trajectories/s and tokens/s
/// (prompt and tool results included, the positions it scores).
fn learner_rates(cfg: &Config, secs: f64) -> Result<(f64, f64)> {
    let device = run::resolve_device(cfg.device)?;
    let snapshot = new_learner_for(cfg, Device::Cpu)?.snapshot()?;
    let mut actor = token_actor(cfg, SourceId::new(0, 0, 0), &snapshot)?;
    let mut tokens = 0usize;
    let mut count = 0usize;
    let mut batches = Vec::new();
    while count < cfg.replay.capacity.min(16 * cfg.learner.batch_size) {
        let batch = actor.act()?;
        count += batch.trajectories.len();
        tokens += batch
            .trajectories
            .iter()
            .map(|t| t.actions.len())
            .sum::<usize>();
        batches.push(batch);
    }
    let mean_len = tokens as f64 / count as f64;
    let per_s =
        cfg.learner.batch_size as f64 / seconds_per_step(cfg, device, &batches, 3, secs / 2.0)?;
    Ok((per_s, per_s * mean_len))
}

pub(super) struct EndToEnd {
    /// Samples (episodes, arm pulls) the learner consumed per second.
    pub samples_per_s: f64,
    pub lag: f64,
    /// Tool use: mean generated tokens per episode (NaN for the bandit).
    pub length: f64,
    /// Mean reward of the learner's batches.
    pub reward: f64,
}

/// The real training loop (actor threads, channel, replay, learner) in a scratch run directory,
/// stopped after about `secs` seconds; rates from its `metrics.jsonl` after the first row.
fn end_to_end(cfg: &Config, secs: f64) -> Result<EndToEnd> {
    let mut cfg = cfg.clone();
    cfg.logging.tensorboard = false;
    cfg.logging.progress = false;
    cfg.logging.eval_every = 0;
    cfg.checkpoint.every = u64::MAX / 2;
    let scratch = ScratchDir::new()?;
    let dir = &scratch.0;
    run::create_run_dir(dir, &cfg, false)?;
    let interrupt = AtomicUsize::new(0);
    let (progress, done) = (AtomicU64::new(0), AtomicBool::new(false));
    // Enough steps for three logged rows, however slow the machine: the rates come from the
    // logged rows, so the run lasts `secs` or until those steps are done, whichever is later.
    let min_steps = 3 * cfg.logging.every.max(1);
    let outcome = std::thread::scope(|s| {
        let timer = s.spawn(|| {
            let start = Instant::now();
            while !done.load(Ordering::Relaxed)
                && (start.elapsed().as_secs_f64() < secs
                    || progress.load(Ordering::Relaxed) < min_steps)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            interrupt.store(143, Ordering::Relaxed);
        });
        let out = run::train(
            &cfg,
            dir,
            RunOptions {
                serial: false,
                interrupt: &interrupt,
                progress: Some(&progress),
                transport: None,
            },
            None,
        );
        done.store(true, Ordering::Relaxed);
        let _ = timer.join();
        out
    })?;
    if let Outcome::Finished(_) = outcome {
        return Err(Error::Corrupt("bench run finished before its time".into()));
    }
    read_rates(&dir.join("metrics.jsonl"), cfg.learner.batch_size)
}

/// The default experiment's behaviour-cloning warm start (`configs/tool_calc.toml`), saved as
/// `warm_start.safetensors` in `dir` for `policy.init` and the baseline's `--warm`.
fn warm_start_weights(dir: &Path) -> Result<PathBuf> {
    let cfg = config::from_toml_str(CALC_TOML, &[])?;
    let learner = new_learner_for(&cfg, Device::Cpu)?;
    let task = Task::new(cfg.env.task_spec(cfg.seed));
    let model = Transformer::of(learner.policy())?;
    let demos = demos(
        &cfg,
        &task,
        &TokenProtocol {
            limits: cfg.env.limits(),
        },
    )?;
    warm_start(&cfg, model, learner.vs(), &demos, Device::Cpu)?;
    let path = dir.join("warm_start.safetensors");
    save_weights(&learner, &path)?;
    Ok(path)
}

/// A tool-use actor of the small transformer on the tasks of `cfg`.
fn token_actor(
    cfg: &Config,
    source: SourceId,
    snapshot: &crate::policy::WeightSnapshot,
) -> Result<ToolActor<Transformer, TokenProtocol, Task>> {
    let task = Task::new(cfg.env.task_spec(cfg.seed));
    ToolActor::new(
        cfg,
        source,
        task,
        TokenProtocol {
            limits: cfg.env.limits(),
        },
        snapshot,
    )
}

/// The learner a run of `cfg` starts with: the seeded initialisation (or `policy.init`).
fn new_learner_for(cfg: &Config, device: Device) -> Result<Learner> {
    tch::manual_seed(cfg.seed as i64);
    run::new_learner(cfg, device, &[])
}

fn save_weights(learner: &Learner, path: &Path) -> Result<()> {
    let bytes = checkpoint::safetensors_bytes(&learner.snapshot()?.tensors)?;
    checkpoint::write_atomic(path, &bytes)
}

/// A scratch directory, removed with everything in it when dropped.
pub(super) struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A new, empty directory under the temp dir.
    pub fn new() -> Result<Self> {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let dir = base.join(format!("asymre-bench-{}-{i}", std::process::id()));
            if !dir.exists() {
                std::fs::create_dir_all(&dir).at(&dir)?;
                return Ok(ScratchDir(dir));
            }
        }
        Err(Error::input("no free scratch directory under the temp dir"))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Samples per second between the first and last logged rows, and the mean policy lag.
pub(super) fn read_rates(path: &Path, batch: usize) -> Result<EndToEnd> {
    let text = std::fs::read_to_string(path).at(path)?;
    let rows: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &Value| r.get("policy_lag_mean").is_some())
        .collect();
    let field = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err(Error::Corrupt("bench run logged no rows".into()));
    };
    let dt = field(last, "wall_time") - field(first, "wall_time");
    let steps = field(last, "step") - field(first, "step");
    if rows.len() < 2 || dt <= 0.0 {
        return Err(Error::Corrupt("bench run too short to measure".into()));
    }
    let mean = |k: &str| rows.iter().map(|r| field(r, k)).sum::<f64>() / rows.len() as f64;
    Ok(EndToEnd {
        samples_per_s: steps * batch as f64 / dt,
        lag: mean("policy_lag_mean"),
        length: if first.get("length").is_some() {
            mean("length")
        } else {
            f64::NAN
        },
        reward: mean("batch_reward"),
    })
}

/// Peak resident memory of this process so far, MiB.
pub fn peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    if ok {
        usage.ru_maxrss as f64 / 1024.0
    } else {
        f64::NAN
    }
}

/// Runs `scripts/reference/baseline.py` and returns its JSON.
fn baseline(python: &Path, secs: f64, init: &Path, warm: &Path) -> Result<Value> {
    let secs = format!("{}", secs / 2.0);
    let args = [
        "--seconds".as_ref(),
        secs.as_ref(),
        "--init".as_ref(),
        init.as_os_str(),
        "--warm".as_ref(),
        warm.as_os_str(),
    ];
    run_reference(python, "baseline.py", &args, "baseline")
}

/// Runs `scripts/reference/SCRIPT ARGS…` with `python` and returns the JSON object on the last
/// line it prints; `what` names it in errors (its last stderr line when it fails).
pub fn run_reference(
    python: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
    what: &str,
) -> Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/reference")
        .join(script);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| Error::io(python, e))?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = out.status.signal() {
            return Err(Error::input(format!(
                "{what} was killed by signal {signal}{}",
                if signal == 9 {
                    " (out of memory, most likely: see `dmesg`)"
                } else {
                    ""
                }
            )));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // The last line that is not a warning's echo of its source.
        let last = err
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("warnings.warn("))
            .unwrap_or("no output");
        return Err(Error::input(format!("{what} failed: {last}")));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim().lines().last().unwrap_or(""))
        .map_err(|e| Error::Corrupt(format!("{what} output: {e}")))
}

fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The rows that set a measure of ours beside the baseline's: (what, our key, the baseline's
/// key, goal). The model-GFLOP/s row's goal is computed from the figures.
const COMPARED: [(&str, &str, &str, &str); 19] = [
    (
        "bandit sampled, end to end: arm samples/s",
        "bandit_samples_per_s",
        "bandit_samples_per_s",
        "≥ 3×",
    ),
    (
        "tool use (calc) end to end: episodes/s",
        "tool_episodes_per_s",
        "tool_episodes_per_s",
        "",
    ),
    (
        "tool use (calc) end to end: generated tokens/s",
        "tool_tokens_per_s",
        "tool_tokens_per_s",
        "≥ 3×",
    ),
    (
        "tool use (calc) end to end: model GFLOP/s",
        "tool_model_gflops",
        "tool_model_gflops",
        "",
    ),
    (
        "tool use end to end, bf16 products: episodes/s",
        "tool_bf16_episodes_per_s",
        "tool_episodes_per_s",
        "",
    ),
    (
        "tool use end to end, bf16 products: tokens/s",
        "tool_bf16_tokens_per_s",
        "tool_tokens_per_s",
        "",
    ),
    (
        "tool-use actor alone: tokens/s",
        "tool_actor_tokens_per_s",
        "tool_actor_tokens_per_s",
        "",
    ),
    (
        "tool-use actor alone: episodes/s",
        "tool_actor_episodes_per_s",
        "tool_actor_episodes_per_s",
        "",
    ),
    (
        "tool-use learner alone: trajectories/s",
        "tool_learner_trajectories_per_s",
        "tool_learner_trajectories_per_s",
        "",
    ),
    (
        "tool-use learner alone: tokens/s",
        "tool_learner_tokens_per_s",
        "tool_learner_tokens_per_s",
        "",
    ),
    (
        "tool-use learner alone, bf16 products: traj/s",
        "tool_bf16_learner_trajectories_per_s",
        "tool_learner_trajectories_per_s",
        "",
    ),
    (
        "tool-use tokens per episode (same work?)",
        "tool_mean_episode_tokens",
        "tool_mean_episode_tokens",
        "",
    ),
    (
        "from the warm start, end to end: episodes/s",
        "tool_warm_episodes_per_s",
        "tool_warm_episodes_per_s",
        "≥ 3×",
    ),
    (
        "from the warm start, bf16 products: episodes/s",
        "tool_warm_bf16_episodes_per_s",
        "tool_warm_episodes_per_s",
        "",
    ),
    (
        "from the warm start, actor alone: episodes/s",
        "tool_warm_actor_episodes_per_s",
        "tool_warm_actor_episodes_per_s",
        "",
    ),
    (
        "from the warm start, learner alone: traj/s",
        "tool_warm_learner_trajectories_per_s",
        "tool_warm_learner_trajectories_per_s",
        "",
    ),
    (
        "from the warm start, tokens per episode (same?)",
        "tool_warm_mean_episode_tokens",
        "tool_warm_mean_episode_tokens",
        "",
    ),
    (
        "from the warm start, mean reward (same?)",
        "tool_warm_mean_reward",
        "tool_warm_mean_reward",
        "",
    ),
    (
        "peak resident memory, MiB",
        "peak_rss_mib",
        "peak_rss_mib",
        "",
    ),
];

/// Prints the benchmark's table: our measures beside the baseline's, then ours alone.
fn print_table(
    ours: &Value,
    base: Option<&Value>,
    cores: usize,
    n: i64,
    quick: bool,
    device: Device,
) {
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let o = |k: &str| get(ours, k);
    let b = |k: &str| base.map_or(f64::NAN, |v| get(v, k));
    let bf16_skipped = o("bf16_native") == 0.0;
    let mut rows: Vec<[String; 5]> = Vec::new();
    for (what, key, base_key, goal) in COMPARED {
        if bf16_skipped && key.contains("bf16") {
            let why = "skipped: no native bf16 on this CPU";
            rows.push([what.into(), "—".into(), "—".into(), "—".into(), why.into()]);
            continue;
        }
        let (x, y) = (o(key), b(base_key));
        let ratio = if y.is_finite() && y > 0.0 {
            format!("{:.2}×", x / y)
        } else {
            "—".into()
        };
        let goal = match key {
            "tool_model_gflops" if y.is_finite() => {
                format!("3× = {:.0} (matmul {:.0})", 3.0 * y, o("matmul_gflops"))
            }
            _ => goal.to_string(),
        };
        rows.push([what.into(), fmt_rate(x), fmt_rate(y), ratio, goal]);
    }
    let own = |what: &str, value: String, goal: &str| {
        [what.into(), value, "—".into(), "—".into(), goal.into()]
    };
    rows.push(own(
        "tool-use mean policy lag, learner steps",
        format!("{:.1}", o("tool_policy_lag")),
        "",
    ));
    rows.push(own(
        "actor scaling, 1 → 2 threads",
        format!(
            "{:.2}×",
            o("tool_actor_2_threads_episodes_per_s") / o("tool_actor_episodes_per_s")
        ),
        "≥ 1.7× (free cores)",
    ));
    rows.push(own(
        &format!("fp32 matmul {n}², {cores} threads: GFLOP/s"),
        format!("{:.1}", o("matmul_gflops")),
        "",
    ));
    rows.push(own(
        "learner step d256, 256 × 64: GFLOP/s (of matmul)",
        format!(
            "{:.1} ({:.0}%)",
            o("learner_d256_gflops"),
            100.0 * o("learner_d256_gflops") / o("matmul_gflops")
        ),
        "≥ 50%",
    ));
    println!(
        "asymre bench{} — {cores} cores, learner on {device:?}; baseline: PyTorch {} eager, {} threads",
        if quick { " --quick" } else { "" },
        base.and_then(|v| v.get("torch")).and_then(Value::as_str).unwrap_or("(skipped)"),
        base.and_then(|v| v.get("threads")).map_or("—".into(), |t| t.to_string()),
    );
    let header = ["measure", "asymre", "PyTorch eager", "ratio", "goal"];
    let mut table = vec![header.map(String::from).to_vec()];
    table.extend(rows.into_iter().map(Vec::from));
    crate::app::experiments::table::print_markdown(&table);
}

pub use crate::formats::venv::python as find_python;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_matches_a_hand_count() {
        // One layer, d 2, vocab 3, one sequence of 1 token: 24·4 + 4·1·2 + 2·2·3 = 116 forward.
        let one = StepShape::dense(1, 1);
        assert_eq!(transformer_step_flops(1, 2, 3, one), 3.0 * 116.0);
        // Two rows of 2 sharing their first position, one head row: 3 nodes, 4 slots.
        let shared = StepShape {
            nodes: 3,
            rows: 2,
            width: 2,
            head_rows: 1,
        };
        let want = 24.0 * 4.0 * 3.0 + 4.0 * 2.0 * 2.0 * 4.0 + 2.0 * 2.0 * 3.0;
        assert_eq!(transformer_step_flops(1, 2, 3, shared), 3.0 * want);
    }

    #[test]
    fn rates_come_from_the_first_and_last_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(
            &path,
            "{\"step\":0,\"heldout_completion\":0.1}\n\
             {\"step\":10,\"wall_time\":1.0,\"policy_lag_mean\":2.0}\n\
             {\"step\":30,\"wall_time\":3.0,\"policy_lag_mean\":4.0}\n",
        )
        .unwrap();
        let r = read_rates(&path, 64).unwrap();
        assert_eq!(r.samples_per_s, 20.0 * 64.0 / 2.0);
        assert_eq!(r.lag, 3.0);
        assert!(r.length.is_nan());
    }
}
