//! `asymre bench --lm --trl`: asymre's training loop and Hugging Face TRL's `GRPOTrainer` on the
//! same workloads, end to end. Both start from asymre's export of the model; both see the same
//! chat prompts, G completions per prompt, a batch of episodes per learner step, at most a
//! workload's new tokens per completion, one assistant turn (calls are scored, not answered),
//! full fine-tuning with Adam, the same learning rate, as many threads as this process may use
//! (`sched_getaffinity`), and the same reward (TRL's reward function calls `asymre score` on
//! the raw completions). Each side runs in its own process, so its peak resident memory is its
//! own. Rates are steady-state (each run's first step, which warms up, left out), per step, so
//! that a median and a spread can be given; asymre and TRL are alternated so that a slow spell
//! of a shared machine falls on both.
//!
//! Three workloads: `tool` (calc questions with four tools listed: a ~430-token system prompt
//! shared by every prompt), `short` (the question alone, ~30 tokens, no tools) and `bfcl`
//! (BFCL's train tasks, each with its own functions: no prefix shared across prompts). The
//! headline is serial asymre (each step samples with the weights it trains) against TRL with
//! its defaults (gradient checkpointing on); asymre's parallel mode trains on episodes up to
//! `replay.max_policy_lag` versions old and is labelled asynchronous, with its measured lag.
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::bench::{run_reference, ScratchDir};
use crate::config;
use crate::error::{Error, IoContext, Result};

/// Episodes per learner step, and completions per prompt.
pub const BATCH: usize = 16;
pub const GROUP: usize = 8;
/// TRL's default learning rate, used on both sides.
const LR: f64 = 1e-6;
/// Distinct train prompts offered to TRL (asymre draws its own from the same split).
const PROMPTS: u64 = 256;

/// A workload of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// calc questions with four tools listed (one long system prompt shared by all).
    Tool,
    /// The question alone: no tools, no system prompt of ours.
    Short,
    /// BFCL's train tasks, each with its own functions.
    Bfcl,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Tool, Workload::Short, Workload::Bfcl];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Tool => "tool",
            Workload::Short => "short",
            Workload::Bfcl => "bfcl",
        }
    }

    /// A comma-separated list of workload names.
    pub fn parse_list(s: &str) -> std::result::Result<Vec<Workload>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let w = Self::ALL
                .into_iter()
                .find(|w| w.name() == name)
                .ok_or_else(|| format!("unknown workload {name:?} (tool, short, bfcl)"))?;
            if !out.contains(&w) {
                out.push(w);
            }
        }
        if out.is_empty() {
            return Err("no workload named (tool, short, bfcl)".into());
        }
        Ok(out)
    }

    /// Most tokens one completion writes (a BFCL call is longer than a calc one).
    pub fn new_tokens(self) -> usize {
        match self {
            Workload::Bfcl => 64,
            _ => 48,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::Tool => "calc questions with 4 tools listed (a ~430-token system prompt shared by every prompt)",
            Workload::Short => "the question alone (~30 tokens: no tools, no system prompt of ours)",
            Workload::Bfcl => "BFCL train tasks, each with its own functions (no prefix shared across prompts)",
        }
    }

    /// The `[env]` and `[reward]` sections of the workload's config.
    fn env(self, steps: u64, data: &Path) -> String {
        let new = self.new_tokens();
        match self {
            Workload::Tool => format!(
                "[env]\nkind = \"tool_use\"\ntask = \"calc\"\ndigits = 2\nno_call_share = 0.2\n\
                 max_tokens = 2048\nmax_new_tokens = {new}\nmax_turns = 1\nmax_calls = 4\n\
                 rounds = 1\nsteps_per_round = {steps}\n\n\
                 [reward]\nw_task = 1.0\nw_tool = 0.5\nw_format = 0.0\nw_cost = 0.0\n"
            ),
            Workload::Short => format!(
                "[env]\nkind = \"dataset\"\npath = {}\nmax_tokens = 512\n\
                 max_new_tokens = {new}\nmax_turns = 1\nmax_calls = 4\n\
                 rounds = 1\nsteps_per_round = {steps}\n\n\
                 [reward]\nw_task = 1.0\nw_tool = 0.0\nw_format = 0.0\nw_cost = 0.0\n",
                toml_string(&data.display().to_string())
            ),
            Workload::Bfcl => format!(
                "[env]\nkind = \"bfcl\"\ncategories = [\"simple_python\", \"multiple\", \"parallel\", \
                 \"parallel_multiple\"]\nmax_tokens = 1280\nmax_new_tokens = {new}\n\
                 max_turns = 1\nrounds = 1\nsteps_per_round = {steps}\n\n\
                 [reward]\nw_task = 1.0\nw_tool = 0.0\nw_names = 0.2\nw_params = 0.2\n\
                 w_values = 0.4\nw_format = 0.1\nw_cost = 0.0\ntool_match = \"exact\"\n"
            ),
        }
    }
}

/// The workloads a command line names (`--workloads tool,short`).
#[derive(Clone, Debug)]
pub struct Workloads(pub Vec<Workload>);

impl Workloads {
    /// A list of workload names, or `none` (only the contention section).
    pub fn parse(s: &str) -> std::result::Result<Workloads, String> {
        if s.trim() == "none" {
            return Ok(Workloads(Vec::new()));
        }
        Workload::parse_list(s).map(Workloads)
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The asymre side's config beyond `[env]` and `[reward]`.
const CONFIG: &str = r#"# asymre bench --lm --trl: a GRPO-style workload, end to end.
seed = 0
device = "cpu"

{env}
[policy]
kind = "lm"
model = "{model}"
temperature = 1.0

[warmstart]
demos = 0
steps = 0

[actor]
threads = 1
batch_size = {batch}
group_size = {group}

[replay]
capacity = {capacity}
sampling = "fifo"
reuse = 1.0
max_policy_lag = 2

[learner]
optimizer = "adam"
lr = {lr}
batch_size = {batch}
sync_interval = 1
max_grad_norm = 1.0
intra_op_threads = {threads}

[loss]
kind = "asymre"

[loss.baseline]
kind = "relative"
delta_v = -0.1
estimate = "group"

[logging]
every = 1
eval_every = 0
eval_episodes = 1
tensorboard = false
progress = false

[checkpoint]
every = 0
keep = 1
"#;

/// The threads this process may run on (`sched_getaffinity`, through the standard library).
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The asymre config of `workload`, for `steps` learner steps from the weights in `model`; a
/// `short` workload reads its tasks from `data`.
pub fn config_text(workload: Workload, model: &Path, steps: u64, data: &Path) -> String {
    CONFIG
        .replace("{env}", &workload.env(steps, data))
        .replace(
            "{model}",
            &model.display().to_string().replace('\\', "\\\\"),
        )
        .replace("{batch}", &BATCH.to_string())
        .replace("{group}", &GROUP.to_string())
        .replace("{capacity}", &(4 * BATCH).to_string())
        .replace("{lr}", &format!("{LR:e}"))
        .replace("{threads}", &usable_cores().to_string())
}

/// The short workload's tasks: two-operand arithmetic questions answered in words, no tools.
pub fn short_tasks(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (a, b) = (10 + (i * 37) % 90, 10 + (i * 53 + 11) % 90);
        let (op, answer) = match i % 3 {
            0 => ("plus", a + b),
            1 => ("times", a * b),
            _ => ("minus", a.max(b) - a.min(b)),
        };
        let (x, y) = if i % 3 == 2 {
            (a.max(b), a.min(b))
        } else {
            (a, b)
        };
        let split = if i % 5 == 4 { "heldout" } else { "train" };
        out.push_str(
            &json!({"id": format!("s-{i}"), "split": split,
                "prompt": format!("What is {x} {op} {y}? Answer with the number."),
                "tools": [], "answer": answer, "rule": "number"})
            .to_string(),
        );
        out.push('\n');
    }
    out
}

/// One side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    /// asymre: serial or parallel, its loss.
    Asymre { serial: bool, grpo: bool },
    /// TRL's GRPOTrainer, gradient checkpointing on (its default) or off.
    Trl { checkpointing: bool },
    /// asymre serial beside a busy loop at `nice` (none: alone), with libgomp's own waiting
    /// (`omp_defaults`, as before asymre set it) and/or `learner.adapt_threads`.
    Busy {
        nice: Option<i32>,
        omp_defaults: bool,
        adapt: bool,
    },
}

impl Side {
    fn label(self) -> String {
        match self {
            Side::Asymre { serial: true, grpo } => {
                format!(
                    "asymre serial, loss {}",
                    if grpo { "grpo" } else { "asymre" }
                )
            }
            Side::Asymre { serial: false, .. } => "asymre parallel (asynchronous)".into(),
            Side::Trl {
                checkpointing: true,
            } => "TRL GRPOTrainer, checkpointing on".into(),
            Side::Trl {
                checkpointing: false,
            } => "TRL GRPOTrainer, checkpointing off".into(),
            Side::Busy {
                nice,
                omp_defaults,
                adapt,
            } => {
                let beside = nice.map_or("alone".to_string(), |n| format!("busy loop nice {n}"));
                let how = match (omp_defaults, adapt) {
                    (true, _) => "libgomp defaults",
                    (false, true) => "adapt_threads",
                    (false, false) => "spinning",
                };
                format!("asymre serial, {beside}, {how}")
            }
        }
    }
}

impl Side {
    /// Every side a report can hold: those the plans run.
    fn all() -> Vec<Side> {
        distinct(plan(false).into_iter().chain(contention_plan()))
    }

    /// The side a saved report's row names.
    fn from_label(label: &str) -> Option<Side> {
        Side::all().into_iter().find(|s| s.label() == label)
    }
}

/// `sides` in their first order, each once.
fn distinct(sides: impl IntoIterator<Item = Side>) -> Vec<Side> {
    let mut out: Vec<Side> = Vec::new();
    for side in sides {
        if !out.contains(&side) {
            out.push(side);
        }
    }
    out
}

/// A busy loop (one core's worth of work) at a nice value, killed when dropped.
struct BusyLoop(std::process::Child);

impl BusyLoop {
    fn start(nice: i32) -> Result<Self> {
        Command::new("nice")
            .args(["-n", &nice.to_string(), "sh", "-c", "while :; do :; done"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(BusyLoop)
            .map_err(|e| Error::input(format!("cannot start a busy loop (nice, sh): {e}")))
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One measured run: its steady steps' seconds, with the generation and training parts where
/// the side reports them.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub step_secs: Vec<f64>,
    pub gen_secs: Vec<f64>,
    pub train_secs: Vec<f64>,
    pub tokens_per_episode: f64,
    pub reward: f64,
    pub peak_mib: f64,
    pub lag: f64,
}

impl Measured {
    /// Episodes per second over the run's steady steps.
    pub fn rate(&self) -> f64 {
        let secs: f64 = self.step_secs.iter().sum();
        if secs > 0.0 {
            (BATCH * self.step_secs.len()) as f64 / secs
        } else {
            f64::NAN
        }
    }
}

/// The median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The runs of one side, pooled: the median step's episodes/s over all their steady steps, and
/// the range of the runs' own median-step rates (the pooled median lies within it).
#[derive(Debug)]
pub struct Pooled {
    pub runs: usize,
    pub steps: usize,
    pub median_rate: f64,
    pub low: f64,
    pub high: f64,
    pub gen: f64,
    pub train: f64,
    pub tokens: f64,
    pub reward: f64,
    pub peak_mib: f64,
    pub lag: f64,
}

pub fn pool(runs: &[Measured]) -> Pooled {
    let all = |f: fn(&Measured) -> &Vec<f64>| runs.iter().flat_map(f).copied().collect::<Vec<_>>();
    let steps = all(|m| &m.step_secs);
    let rates: Vec<f64> = runs
        .iter()
        .map(|m| BATCH as f64 / median(&m.step_secs))
        .collect();
    let mean = |f: fn(&Measured) -> f64| runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64;
    Pooled {
        runs: runs.len(),
        steps: steps.len(),
        median_rate: BATCH as f64 / median(&steps),
        low: rates.iter().copied().fold(f64::INFINITY, f64::min),
        high: rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        gen: median(&all(|m| &m.gen_secs)),
        train: median(&all(|m| &m.train_secs)),
        tokens: mean(|m| m.tokens_per_episode),
        reward: mean(|m| m.reward),
        peak_mib: runs.iter().map(|m| m.peak_mib).fold(0.0, f64::max),
        lag: mean(|m| m.lag),
    }
}

/// What the section measures.
pub struct GrpoBench<'a> {
    pub model: &'a str,
    pub python: &'a Path,
    pub quick: bool,
    pub workloads: &'a [Workload],
    /// Also the contention rows (tool workload): asymre beside a busy loop.
    pub contention: bool,
    pub json: Option<&'a Path>,
    /// What asymre's actors decode from (`policy.decode_weights`).
    pub decode_weights: crate::config::DecodeWeights,
}

fn progress(what: &str) {
    eprintln!("bench: {what} …");
}

/// The comparison's headline: asymre serial with its own loss.
const HEADLINE: Side = Side::Asymre {
    serial: true,
    grpo: false,
};

/// The runs of one workload, in the order they run: asymre serial and TRL (its defaults)
/// alternated (twice, once with `--quick`), then the other rows once.
fn plan(quick: bool) -> Vec<Side> {
    let (ours, trl) = (
        HEADLINE,
        Side::Trl {
            checkpointing: true,
        },
    );
    if quick {
        return vec![ours, trl];
    }
    vec![
        ours,
        trl,
        ours,
        trl,
        Side::Asymre {
            serial: true,
            grpo: true,
        },
        Side::Asymre {
            serial: false,
            grpo: false,
        },
        Side::Trl {
            checkpointing: false,
        },
    ]
}

/// asymre serial alone, as it runs now: the contention section's reference.
const ALONE: Side = Side::Busy {
    nice: None,
    omp_defaults: false,
    adapt: false,
};

/// A section of the report: one workload's comparison, or the contention rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Compare(Workload),
    /// asymre serial alone and beside a busy loop, on the tool workload.
    Contention,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Compare(w) => w.name(),
            Section::Contention => "contention",
        }
    }

    fn workload(self) -> Workload {
        match self {
            Section::Compare(w) => w,
            Section::Contention => Workload::Tool,
        }
    }

    /// How progress lines and the table's title name it.
    fn title(self) -> String {
        match self {
            Section::Compare(w) => format!("{} workload", w.name()),
            Section::Contention => "contention, on the tool workload".into(),
        }
    }

    fn parse(name: &str) -> Option<Section> {
        if name == "contention" {
            return Some(Section::Contention);
        }
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .map(Section::Compare)
    }
}

/// The contention section (`--contention`, on the tool workload): asymre serial alone (its
/// reference, first) and beside a busy loop at nice 19 and nice 0, with libgomp's defaults
/// (before) and as asymre runs now, and with `learner.adapt_threads`.
fn contention_plan() -> Vec<Side> {
    let busy = |nice, omp_defaults, adapt| Side::Busy {
        nice,
        omp_defaults,
        adapt,
    };
    vec![
        ALONE,
        busy(None, true, false),
        busy(Some(19), true, false),
        busy(Some(19), false, false),
        busy(Some(0), true, false),
        busy(Some(0), false, false),
        busy(Some(0), false, true),
    ]
}

pub fn run(opts: &GrpoBench) -> Result<()> {
    if opts.workloads.is_empty() && !opts.contention {
        return Err(Error::input(
            "--workloads none measures nothing without --contention".to_string(),
        ));
    }
    if !opts.workloads.is_empty() {
        let ok = Command::new(opts.python)
            .args(["-c", "import trl"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(Error::input(format!(
                "{} cannot import trl (scripts/bench.sh --trl installs trl==1.16.0 into .venv)",
                opts.python.display()
            )));
        }
    }
    let scratch = ScratchDir::new()?;
    let dir = &scratch.0;
    // Steps per run: the first warms up and is left out.
    let (asymre_steps, trl_steps) = if opts.quick { (4, 3) } else { (8, 7) };
    let threads = usable_cores();

    progress(&format!(
        "exporting {} as the starting weights of both sides",
        opts.model
    ));
    let start = dir.join("start");
    crate::policy::lm::export::export_model(opts.model, &start)?;
    let exe =
        std::env::current_exe().map_err(|e| Error::input(format!("no asymre binary: {e}")))?;
    let mut report = serde_json::Map::new();
    let mut sections: Vec<Section> = opts
        .workloads
        .iter()
        .map(|&w| Section::Compare(w))
        .collect();
    if opts.contention {
        sections.push(Section::Contention);
    }
    for &section in &sections {
        let workload = section.workload();
        let wdir = dir.join(section.name());
        std::fs::create_dir_all(&wdir).at(&wdir)?;
        let data = wdir.join("tasks.jsonl");
        std::fs::write(&data, short_tasks(400)).at(&data)?;
        let cfg_path = wdir.join("bench.toml");
        std::fs::write(
            &cfg_path,
            config_text(workload, &start, asymre_steps, &data),
        )
        .at(&cfg_path)?;
        let cfg = config::load(&cfg_path, &[])?;
        let prompts = wdir.join("prompts.jsonl");
        let prompt_tokens = write_prompts(&cfg, &prompts)?;

        let sides = match section {
            Section::Compare(_) => plan(opts.quick),
            Section::Contention => contention_plan(),
        };
        let mut results: Vec<(Side, Measured)> = Vec::new();
        let mut failed: Vec<(Side, String)> = Vec::new();
        for (k, side) in sides.iter().enumerate() {
            progress(&format!(
                "{}, run {}/{}: {} ({} steps of {BATCH} episodes)",
                section.title(),
                k + 1,
                sides.len(),
                side.label(),
                if matches!(side, Side::Trl { .. }) {
                    trl_steps
                } else {
                    asymre_steps
                }
            ));
            let m: Result<Measured> = match *side {
                Side::Asymre { serial, grpo } => asymre_side(
                    &exe,
                    &cfg_path,
                    &wdir.join(format!("run{k}")),
                    &AsymreRun {
                        serial,
                        grpo,
                        decode: opts.decode_weights,
                        ..AsymreRun::default()
                    },
                ),
                Side::Busy {
                    nice,
                    omp_defaults,
                    adapt,
                } => {
                    let _busy = nice.map(BusyLoop::start).transpose()?;
                    asymre_side(
                        &exe,
                        &cfg_path,
                        &wdir.join(format!("run{k}")),
                        &AsymreRun {
                            serial: true,
                            omp_defaults,
                            adapt,
                            decode: opts.decode_weights,
                            ..AsymreRun::default()
                        },
                    )
                }
                Side::Trl { checkpointing } => trl_side(&TrlRun {
                    python: opts.python,
                    exe: &exe,
                    model: &start,
                    prompts: &prompts,
                    cfg: &cfg_path,
                    steps: trl_steps,
                    new_tokens: workload.new_tokens(),
                    threads,
                    checkpointing,
                    task: (workload == Workload::Tool).then_some("calc"),
                }),
            };
            match m {
                Ok(m) => results.push((*side, m)),
                // One side failing (a process killed for memory, say) costs its row, not the
                // runs already measured: the row says why, and the bench goes on.
                Err(e) => {
                    eprintln!("bench: {} failed: {e}", side.label());
                    failed.push((*side, e.to_string()));
                }
            }
        }
        let table = table(section, &results, prompt_tokens, opts.model, threads);
        let decoding = match opts.decode_weights {
            crate::config::DecodeWeights::F32 => String::new(),
            w => format!(
                "asymre's actors decode from {} weights (policy.decode_weights)\n",
                w.name()
            ),
        };
        println!("{table}{decoding}{}", failed_rows(&failed));
        report.insert(
            section.name().into(),
            to_json(&results, &failed, prompt_tokens),
        );
        // Written after every section, so that a later failure loses nothing measured.
        if let Some(path) = opts.json {
            let all = json!({"model": opts.model, "decode_weights": opts.decode_weights.name(),
                "batch": BATCH, "group": GROUP,
                "threads": threads, "workloads": report});
            std::fs::write(path, serde_json::to_string_pretty(&all).unwrap_or_default())
                .at(path)?;
        }
    }
    Ok(())
}

/// The sides of a section that failed, one line each.
fn failed_rows(failed: &[(Side, String)]) -> String {
    failed
        .iter()
        .map(|(side, why)| format!("{}: failed: {why}\n", side.label()))
        .collect()
}

/// The prompts TRL is given, rendered as the run renders them: the text (with special tokens),
/// its ids, the question and the task's id that `asymre score` reads. Returns their mean length.
fn write_prompts(cfg: &config::Config, path: &Path) -> Result<f64> {
    let protocol = crate::run::chat_protocol(cfg)?;
    let rows = crate::run::train_prompts(cfg, PROMPTS)?;
    let mut lines = String::new();
    let mut tokens = 0usize;
    for r in &rows {
        tokens += r.ids.len();
        let text = protocol.format.tokenizer.decode_with(&r.ids, false);
        let mut line = json!({"prompt": text, "prompt_ids": r.ids, "question": r.question});
        if let Some(id) = &r.id {
            line["id"] = json!(id);
        }
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).at(path)?;
    Ok(tokens as f64 / rows.len().max(1) as f64)
}

/// How one asymre run is started.
#[derive(Default)]
struct AsymreRun {
    serial: bool,
    grpo: bool,
    /// `policy.decode_weights` of the actors.
    decode: crate::config::DecodeWeights,
    /// libgomp's own waiting policy (`ASYMRE_OMP_DEFAULTS`).
    omp_defaults: bool,
    adapt: bool,
}

/// `asymre train` on the workload in a child process: its steady steps from the run's metrics
/// (the rows after the first) and its own peak resident memory.
fn asymre_side(exe: &Path, cfg: &Path, out: &Path, how: &AsymreRun) -> Result<Measured> {
    let AsymreRun {
        serial,
        grpo,
        decode,
        omp_defaults,
        adapt,
    } = *how;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if serial {
        cmd.arg("--serial");
    }
    if grpo {
        cmd.args(["--set", "loss.kind=grpo"]);
    }
    cmd.args(["--set", &format!("policy.decode_weights={}", decode.name())]);
    if adapt {
        cmd.args(["--set", "learner.adapt_threads=true"]);
    }
    // The child decides its waiting policy from these (see main.rs).
    cmd.env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .env_remove("ASYMRE_OMP_DEFAULTS");
    if omp_defaults {
        cmd.env("ASYMRE_OMP_DEFAULTS", "1");
    }
    let (status, peak_mib) = run_measured(&mut cmd)?;
    if status != 0 {
        return Err(Error::input(format!(
            "the asymre side exited with status {status}"
        )));
    }
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).at(out)?;
    let mut m = steps_of(&text)?;
    m.peak_mib = peak_mib;
    Ok(m)
}

/// A run's steady steps from its metrics rows (one per step): the seconds between rows after
/// the first, with the serial loop's sampling and learning seconds.
pub fn steps_of(metrics: &str) -> Result<Measured> {
    let rows: Vec<Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &Value| r.get("policy_lag_mean").is_some())
        .collect();
    if rows.len() < 2 {
        return Err(Error::Corrupt(
            "bench run logged fewer than two steps".into(),
        ));
    }
    let field = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64);
    let mut m = Measured::default();
    for pair in rows.windows(2) {
        let (Some(t0), Some(t1)) = (field(&pair[0], "wall_time"), field(&pair[1], "wall_time"))
        else {
            continue;
        };
        m.step_secs.push(t1 - t0);
        if let (Some(a), Some(l)) = (field(&pair[1], "act_secs"), field(&pair[1], "learn_secs")) {
            m.gen_secs.push(a);
            m.train_secs.push(l);
        }
    }
    let steady = &rows[1..];
    let mean =
        |k: &str| steady.iter().filter_map(|r| field(r, k)).sum::<f64>() / steady.len() as f64;
    m.tokens_per_episode = mean("length");
    m.reward = mean("batch_reward");
    m.lag = mean("policy_lag_mean");
    Ok(m)
}

/// Runs `cmd` to its end; its exit status and its peak resident memory in MiB (from `wait4`, so
/// the child's own, not the largest of all children).
fn run_measured(cmd: &mut Command) -> Result<(i32, f64)> {
    let child = cmd
        .spawn()
        .map_err(|e| Error::input(format!("cannot start {cmd:?}: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the child is ours and not yet reaped; wait4 writes into locals we own.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if got != pid {
        return Err(Error::input("lost the asymre child process".to_string()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, usage.ru_maxrss as f64 / 1024.0))
}

/// What one TRL run is given.
struct TrlRun<'a> {
    python: &'a Path,
    exe: &'a Path,
    model: &'a Path,
    prompts: &'a Path,
    cfg: &'a Path,
    steps: u64,
    new_tokens: usize,
    threads: usize,
    checkpointing: bool,
    /// `asymre score --task`, for a built-in task.
    task: Option<&'a str>,
}

fn trl_side(r: &TrlRun) -> Result<Measured> {
    let s = |v: &dyn ToString| std::ffi::OsString::from(v.to_string());
    let mut args: Vec<std::ffi::OsString> = vec![
        r.model.into(),
        r.prompts.into(),
        "--asymre".into(),
        r.exe.into(),
        "--config".into(),
        r.cfg.into(),
        "--steps".into(),
        s(&r.steps),
        "--batch".into(),
        s(&BATCH),
        "--group".into(),
        s(&GROUP),
        "--new".into(),
        s(&r.new_tokens),
        "--lr".into(),
        s(&LR),
        "--threads".into(),
        s(&r.threads),
        "--checkpointing".into(),
        (if r.checkpointing { "on" } else { "off" }).into(),
    ];
    if let Some(task) = r.task {
        args.extend(["--task".into(), task.into()]);
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let v = run_reference(r.python, "trl_grpo.py", &args, "TRL GRPOTrainer")?;
    let list = |k: &str| -> Vec<f64> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let num = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let step_secs = list("step_secs");
    let gen_secs = list("gen_secs");
    let train_secs = step_secs
        .iter()
        .zip(&gen_secs)
        .map(|(s, g)| s - g)
        .collect();
    Ok(Measured {
        step_secs,
        gen_secs,
        train_secs,
        tokens_per_episode: num("tokens_per_episode"),
        reward: num("mean_reward"),
        peak_mib: num("peak_rss_mib"),
        lag: 0.0,
    })
}

/// A section's table: one row per side, runs pooled.
fn table(
    section: Section,
    results: &[(Side, Measured)],
    prompt_tokens: f64,
    model: &str,
    threads: usize,
) -> String {
    use std::fmt::Write;
    let sides = distinct(results.iter().map(|(side, _)| *side));
    let pooled: Vec<(Side, String, Pooled)> = sides
        .iter()
        .map(|side| {
            let runs: Vec<Measured> = results
                .iter()
                .filter(|(s, _)| s == side)
                .map(|(_, m)| m.clone())
                .collect();
            (*side, side.label(), pool(&runs))
        })
        .collect();
    let rate_of = |side: Side| {
        pooled
            .iter()
            .find(|(s, _, _)| *s == side)
            .map_or(f64::NAN, |(_, _, p)| p.median_rate)
    };
    let trl = rate_of(Side::Trl {
        checkpointing: true,
    });
    // Beside a busy loop, a step is set against asymre serial alone as it runs now: the
    // section's own row, or (in reports without one) the comparison's headline.
    let reference = if sides.contains(&ALONE) {
        ALONE
    } else {
        HEADLINE
    };
    let (alone, alone_label) = (rate_of(reference), reference.label());
    let name_of = |label: &String, p: &Pooled| {
        if label.starts_with("asymre parallel") {
            format!("{label}, lag {:.1}", p.lag)
        } else {
            label.clone()
        }
    };
    let width = pooled
        .iter()
        .map(|(_, label, p)| name_of(label, p).chars().count())
        .max()
        .unwrap_or(0)
        .max(36);
    let workload = section.workload();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{}: {} — {model} (f32), {threads} threads, {BATCH} episodes a step ({} prompts × \
         G = {GROUP}), ≤ {} new tokens, prompts {prompt_tokens:.0} tokens on average, full \
         fine-tuning, Adam",
        section.title(),
        workload.describe(),
        BATCH / GROUP,
        workload.new_tokens(),
    );
    let _ = writeln!(
        t,
        "{:<width$} {:>4} {:>5} {:>22} {:>9} {:>9} {:>8} {:>9} {:>10}",
        "",
        "runs",
        "steps",
        "episodes/s: median (range)",
        "gen s",
        "train s",
        "tok/ep",
        "peak MiB",
        match section {
            Section::Compare(_) => "vs TRL",
            Section::Contention => "vs alone",
        }
    );
    for (side, label, p) in &pooled {
        let name = name_of(label, p);
        let range = if p.runs > 1 {
            format!("{:.3} ({:.3}–{:.3})", p.median_rate, p.low, p.high)
        } else {
            format!("{:.3}", p.median_rate)
        };
        let ratio = match side {
            // Beside a busy loop: how much longer a step takes than alone.
            Side::Busy { .. } if *side == ALONE => "1.00× step".into(),
            Side::Busy { .. } if alone > 0.0 => format!("{:.2}× step", alone / p.median_rate),
            Side::Busy { .. } => "—".into(),
            _ if trl.is_finite() && trl > 0.0 => format!("{:.2}×", p.median_rate / trl),
            _ => "—".into(),
        };
        let cell = |x: f64| {
            if x.is_finite() {
                format!("{x:.1}")
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            t,
            "{name:<width$} {:>4} {:>5} {range:>22} {:>9} {:>9} {:>8.1} {:>9.0} {ratio:>10}",
            p.runs,
            p.steps,
            cell(p.gen),
            cell(p.train),
            p.tokens,
            p.peak_mib,
        );
    }
    let _ = writeln!(
        t,
        "episodes/s: the median step over all runs' steady steps; the range: each run's own \
         median step; gen s and train s: the median step's seconds sampling (with scoring) and \
         learning"
    );
    if let Section::Compare(_) = section {
        let _ = writeln!(
            t,
            "serial asymre is the headline (it samples with the weights it trains, as TRL does); \
             parallel trains on episodes sampled up to its lag in versions before"
        );
    }
    if pooled
        .iter()
        .any(|(s, _, _)| matches!(s, Side::Busy { .. }))
    {
        let _ = writeln!(
            t,
            "\"× step\": a step's time against \"{alone_label}\"; a busy loop at nice 0 \
             takes 1 of {threads} cores, so a step slowed in proportion to the cores lost takes \
             {:.2}× as long; \"spinning\" is how asymre runs now (OMP_WAIT_POLICY=ACTIVE, \
             bounded), \"libgomp defaults\" how it ran before",
            threads as f64 / (threads as f64 - 1.0).max(1.0)
        );
    }
    t
}

/// `--replay FILE`: the tables of a report that `--json` wrote, printed again (by this
/// version's rules: a report is the measurements, the table is derived).
pub fn replay(path: &Path) -> Result<()> {
    let bad = |why: String| {
        Error::input(format!(
            "{}: not a bench --trl report: {why}",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path).at(path)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = v["model"]
        .as_str()
        .ok_or_else(|| bad("no \"model\"".into()))?;
    let threads = v["threads"]
        .as_u64()
        .ok_or_else(|| bad("no \"threads\"".into()))? as usize;
    let sections = v["workloads"]
        .as_object()
        .ok_or_else(|| bad("no \"workloads\"".into()))?;
    let mut order: Vec<Section> = Vec::new();
    for name in sections.keys() {
        order.push(Section::parse(name).ok_or_else(|| bad(format!("unknown section {name:?}")))?);
    }
    // The order they run in: the workloads, then contention.
    order.sort_by_key(|s| match s {
        Section::Compare(w) => Workload::ALL.iter().position(|x| x == w).unwrap_or(0),
        Section::Contention => Workload::ALL.len(),
    });
    for section in order {
        let sec = &sections[section.name()];
        let prompt_tokens = sec["prompt_tokens"].as_f64().unwrap_or(f64::NAN);
        let runs = sec["runs"]
            .as_array()
            .ok_or_else(|| bad(format!("{}: no \"runs\"", section.name())))?;
        let mut results = Vec::new();
        for r in runs {
            let label = r["side"].as_str().unwrap_or("");
            let side =
                Side::from_label(label).ok_or_else(|| bad(format!("unknown side {label:?}")))?;
            let secs = |k: &str| -> Vec<f64> {
                r[k].as_array()
                    .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
                    .unwrap_or_default()
            };
            let num = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            let m = Measured {
                step_secs: secs("step_secs"),
                gen_secs: secs("gen_secs"),
                train_secs: secs("train_secs"),
                tokens_per_episode: num("tokens_per_episode"),
                reward: num("mean_reward"),
                peak_mib: num("peak_rss_mib"),
                lag: num("policy_lag"),
            };
            if m.step_secs.is_empty() {
                return Err(bad(format!("{label:?} has no steps")));
            }
            results.push((side, m));
        }
        let failed: Vec<(Side, String)> = sec["failed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| {
                        Some((
                            Side::from_label(f["side"].as_str()?)?,
                            f["error"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{}{}",
            table(section, &results, prompt_tokens, model, threads),
            failed_rows(&failed)
        );
    }
    Ok(())
}

fn to_json(results: &[(Side, Measured)], failed: &[(Side, String)], prompt_tokens: f64) -> Value {
    let failed: Vec<Value> = failed
        .iter()
        .map(|(side, why)| json!({"side": side.label(), "error": why}))
        .collect();
    let runs: Vec<Value> = results
        .iter()
        .map(|(side, m)| {
            json!({"side": side.label(), "episodes_per_s": m.rate(), "step_secs": m.step_secs,
                "gen_secs": m.gen_secs, "train_secs": m.train_secs,
                "tokens_per_episode": m.tokens_per_episode, "mean_reward": m.reward,
                "peak_rss_mib": m.peak_mib, "policy_lag": m.lag})
        })
        .collect();
    json!({"prompt_tokens": prompt_tokens, "runs": runs, "failed": failed})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_come_from_the_rows_after_the_first_with_their_phases() {
        let text = "{\"step\":0,\"wall_time\":0.1}\n\
            {\"step\":1,\"wall_time\":50.0,\"policy_lag_mean\":0.0,\"length\":40,\"batch_reward\":1.0,\"act_secs\":40.0,\"learn_secs\":10.0}\n\
            {\"step\":2,\"wall_time\":70.0,\"policy_lag_mean\":0.0,\"length\":30,\"batch_reward\":0.5,\"act_secs\":12.0,\"learn_secs\":8.0}\n\
            {\"step\":3,\"wall_time\":86.0,\"policy_lag_mean\":0.0,\"length\":50,\"batch_reward\":0.0,\"act_secs\":10.0,\"learn_secs\":6.0}\n";
        let m = steps_of(text).unwrap();
        assert_eq!(m.step_secs, vec![20.0, 16.0]);
        assert_eq!(m.gen_secs, vec![12.0, 10.0]);
        assert_eq!(m.train_secs, vec![8.0, 6.0]);
        assert_eq!(m.tokens_per_episode, 40.0);
        assert_eq!(m.reward, 0.25);
        assert!((m.rate() - 32.0 / 36.0).abs() < 1e-12);
        assert!(steps_of("{\"step\":1,\"wall_time\":1.0,\"policy_lag_mean\":0}\n").is_err());
    }

    #[test]
    fn pooled_runs_give_the_median_step_and_the_runs_range() {
        let run = |secs: &[f64]| Measured {
            step_secs: secs.to_vec(),
            ..Measured::default()
        };
        let p = pool(&[run(&[16.0, 16.0, 32.0]), run(&[8.0, 16.0])]);
        assert_eq!(p.runs, 2);
        assert_eq!(p.steps, 5);
        assert_eq!(p.median_rate, 1.0);
        // Each run's median step: 16 s, and 12 s.
        assert!((p.low - 1.0).abs() < 1e-12);
        assert!((p.high - 16.0 / 12.0).abs() < 1e-12);
        // The pooled median lies within the runs' range even where their overall rates do not
        // bracket it (one fast outlier step lifts a run's overall rate).
        let p = pool(&[run(&[10.0, 10.0, 10.0, 2.0]), run(&[10.0, 10.0, 10.0, 2.0])]);
        assert!(p.low <= p.median_rate && p.median_rate <= p.high);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_report_replays_to_the_same_tables() {
        for side in Side::all() {
            assert_eq!(Side::from_label(&side.label()), Some(side));
        }
        assert_eq!(Side::from_label("asymre turbo"), None);
        let m = |secs: f64| Measured {
            step_secs: vec![secs, secs + 2.0, secs - 1.0],
            gen_secs: vec![secs / 2.0; 3],
            train_secs: vec![secs / 2.0; 3],
            tokens_per_episode: 30.0,
            reward: 0.25,
            peak_mib: 8000.0,
            lag: 0.0,
        };
        let busy0 = Side::Busy {
            nice: Some(0),
            omp_defaults: false,
            adapt: false,
        };
        let results = vec![(ALONE, m(10.0)), (busy0, m(20.0))];
        let t = table(Section::Contention, &results, 430.0, "smollm2-135m", 2);
        // The section's own alone row is the reference: 16/10 ep/s against 16/20.
        assert!(t.contains("1.00× step") && t.contains("2.00× step"), "{t}");
        assert!(t.starts_with("contention, on the tool workload"), "{t}");
        assert!(t.contains("vs alone") && !t.contains("vs TRL"), "{t}");

        let dir = std::env::temp_dir().join(format!("asymre-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.json");
        let report = json!({"model": "smollm2-135m", "batch": BATCH, "group": GROUP,
            "threads": 2, "workloads": {"contention": to_json(&results, &[], 430.0)}});
        std::fs::write(&path, report.to_string()).unwrap();
        replay(&path).unwrap();
        std::fs::write(&path, "{\"model\": \"x\"}").unwrap();
        assert!(replay(&path)
            .unwrap_err()
            .to_string()
            .contains("not a bench --trl report"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn workloads_parse_from_a_list_and_unknown_names_are_refused() {
        assert_eq!(
            Workload::parse_list("short, tool,short").unwrap(),
            vec![Workload::Short, Workload::Tool]
        );
        assert!(Workload::parse_list("tool,long")
            .unwrap_err()
            .contains("long"));
        assert!(Workload::parse_list("").is_err());
    }

    #[test]
    fn every_workload_config_loads_and_the_short_tasks_have_no_tools() {
        let dir = std::env::temp_dir().join(format!("asymre-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("tasks.jsonl");
        std::fs::write(&data, short_tasks(50)).unwrap();
        for w in Workload::ALL {
            let path = dir.join(format!("{}.toml", w.name()));
            std::fs::write(&path, config_text(w, Path::new("smollm2-135m"), 8, &data)).unwrap();
            let cfg = config::load(&path, &[]).unwrap();
            assert_eq!(cfg.env.max_new_tokens, w.new_tokens());
            assert_eq!(cfg.env.total_steps(), 8);
        }
        let data = crate::env::tool_use::dataset::Dataset::load(&data, &[]).unwrap();
        assert_eq!(data.len(), 50);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
