//! The command line.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DeviceChoice;
use crate::env::tool_use::tasks::{Split, TaskKind};

#[derive(Debug, Parser)]
#[command(
    name = "asymre",
    version,
    about = "Asymmetric REINFORCE trainer on libtorch"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train from a config file into a new run directory.
    Train(TrainArgs),
    /// Continue a run from its last checkpoint.
    Resume(ResumeArgs),
    /// Join a run from any host: read its config from Redis, load the latest weights, and send
    /// trajectories until the run ends.
    Actor(ActorArgs),
    /// Evaluate a tool-use run's last checkpoint with greedy decoding.
    Eval(EvalArgs),
    /// Continue a prompt with a pretrained language model.
    Generate(GenerateArgs),
    /// Write a model as a Hugging Face directory (config, model.safetensors with any LoRA
    /// adapters merged, tokenizer, chat template) that transformers and --model DIR load.
    Export(ExportArgs),
    /// Print the configuration.
    Config(ConfigArgs),
    /// Score JSON-lines episodes from any model with the task's verifiable rewards.
    Score(ScoreArgs),
    /// Run the Cartesian product of grid values × seeds, one run per point, resumably; write
    /// summary.csv, table.txt and plots.
    Sweep(SweepArgs),
    /// Plot runs or sweeps. A run directory gives curves (several runs are overlaid); a sweep
    /// directory gives final.png and curves.png (several sweeps share the figures).
    Plot(PlotArgs),
    /// Measure throughput (bandit and tool use, actors, learner, end to end), the matmul rate
    /// and peak memory, next to a plain eager PyTorch baseline; print one table.
    Bench(BenchArgs),
    /// Judge a model on BFCL's single-turn categories: greedy decoding in its chat format,
    /// graded by BFCL's AST rules; print the accuracy table and write BFCL result lines and
    /// messages logs.
    Bfcl(BfclArgs),
}

/// `asymre bfcl`.
#[derive(Debug, Args)]
pub struct BfclArgs {
    /// A run directory of a pretrained LM: its last checkpoint is judged. Give this or --model.
    #[arg(required_unless_present = "model", conflicts_with = "model")]
    pub run_dir: Option<PathBuf>,
    /// A model name (smollm2-135m), a .gguf file or a Hugging Face directory.
    #[arg(long)]
    pub model: Option<String>,
    /// BFCL categories, comma-separated (default: all ten single-turn ones; the multi-turn
    /// ones are multi_turn_base, multi_turn_miss_func, multi_turn_miss_param,
    /// multi_turn_long_context).
    #[arg(long, value_delimiter = ',', default_values_t = asymre_categories())]
    pub categories: Vec<String>,
    /// Which tasks of the non-live categories: heldout, train or all (the live categories,
    /// never trained on, are played whole).
    #[arg(long, value_enum, default_value = "heldout")]
    pub split: BfclSplitArg,
    /// At most this many tasks per category, chosen by a hash of their ids.
    #[arg(long)]
    pub limit: Option<usize>,
    /// BFCL's data directory (default: the installed bfcl-eval's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to write results (default: bfcl/<model>-<UTC time>); must not exist or be empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The longest episode in tokens, prompt included.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// The most tokens the model writes.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Episodes decoded together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Where to run (default: the run's device, or the CPU).
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
}

fn asymre_categories() -> Vec<String> {
    crate::env::tool_use::bfcl::CATEGORIES
        .iter()
        .map(|c| c.to_string())
        .collect()
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BfclSplitArg {
    Heldout,
    Train,
    All,
}

/// `asymre train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key, e.g. --set loss.baseline.delta_v=-0.2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Override the config's device.
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Run actors and learner on one thread, bit-reproducibly.
    #[arg(long)]
    pub serial: bool,
    /// Run directory (default: runs/<config name>-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Send trajectories and weights through Redis (redis://HOST:PORT/DB), so that actor
    /// processes on other hosts can join (`asymre actor`); the run is named by its directory.
    #[arg(long, value_name = "URL")]
    pub transport: Option<String>,
}

/// `asymre resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// As for train: through Redis, where the run's actors wait.
    #[arg(long, value_name = "URL")]
    pub transport: Option<String>,
}

/// `asymre actor`.
#[derive(Debug, Args)]
pub struct ActorArgs {
    /// The Redis the run uses (redis://HOST:PORT/DB).
    #[arg(long, value_name = "URL")]
    pub transport: String,
    /// The run's name (its directory's name on the learner's host).
    #[arg(long)]
    pub run: String,
    /// Actor threads in this process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Where this process decodes (default: the config's actor.device).
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
}

/// `asymre eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Which split: heldout or train.
    #[arg(long, value_enum, default_value = "heldout")]
    pub split: SplitArg,
    /// Episodes to evaluate.
    #[arg(long, default_value_t = 500)]
    pub episodes: usize,
    /// Also write every episode to this file as JSON lines (readable by `asymre score`).
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// `asymre generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model name (smollm2-135m), a .gguf file or a Hugging Face directory.
    #[arg(long)]
    pub model: String,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt as one user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message before the user's (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// New tokens at most (0: only tokenise).
    #[arg(long, default_value_t = 64)]
    pub max_new: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub temperature: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object {"prompt_tokens", "output_tokens", "text"}.
    #[arg(long)]
    pub json: bool,
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Weights and arithmetic: f32, or bf16 (for CUDA).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
}

/// `asymre export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory of a pretrained LM: its last checkpoint is exported (on its base
    /// model, adapters merged). Give this or --model.
    #[arg(required_unless_present = "model", conflicts_with = "model")]
    pub run_dir: Option<PathBuf>,
    /// A model name, a .gguf file or a Hugging Face directory.
    #[arg(long)]
    pub model: Option<String>,
    /// The directory to write (new or empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// `asymre config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print the default configuration as TOML.
    #[arg(long)]
    pub print_default: bool,
    /// Print this config file resolved (defaults filled in, overrides applied, validated).
    #[arg(long, conflicts_with = "print_default")]
    pub config: Option<PathBuf>,
    /// Override a config key (with --config).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    pub overrides: Vec<String>,
}

/// `asymre score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The task family the prompts come from (not with a dataset config, whose lines are
    /// matched to its tasks by "id").
    #[arg(long, value_enum, required_unless_present = "config")]
    pub task: Option<TaskArg>,
    /// The episodes, one JSON object per line: "prompt" with "calls" and "answer", an OpenAI
    /// "messages" log, or "prompt" with a raw "completion" (Hermes <tool_call> blocks).
    pub file: PathBuf,
    /// Take the task's knobs, seed and reward weights from this config (e.g. a run's config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The seed of the task's database (default: the config's seed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `asymre sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The TOML config every point starts from.
    #[arg(long)]
    pub config: PathBuf,
    /// A swept key and its values, e.g. --grid loss.baseline.delta_v=-0.2,-0.1,0 (repeatable).
    #[arg(long, value_name = "KEY=V1,V2,…", required = true)]
    pub grid: Vec<crate::app::experiments::report::Axis>,
    /// Seeds per grid point: the config's seed, seed + 1, ….
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Runs at a time (default: cores / threads per run).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Sweep directory (default: sweeps/<config name>-<UTC time>). Give an existing one to
    /// finish it: finished points are skipped, interrupted ones resumed.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override a config key for every point (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run each point in serial mode (bit-reproducible).
    #[arg(long)]
    pub serial: bool,
}

/// `asymre plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run or sweep directories.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output PNG for runs (default: <run>/curves.png for one run, curves.png otherwise);
    /// output directory for sweeps (default: the first sweep's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Plot title.
    #[arg(long)]
    pub title: Option<String>,
}

/// `asymre bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A few seconds per measurement instead of fifteen.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per measurement (overrides --quick).
    #[arg(long, value_parser = positive_seconds)]
    pub seconds: Option<f64>,
    /// Python with PyTorch for the baseline (default: .venv/bin/python, else python3).
    #[arg(long, conflicts_with = "no_baseline")]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Where the learners run (actors decode on the CPU).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Also write the measurements as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Benchmark the pretrained LM instead (decoding and the learner step against
    /// transformers on the same weights).
    #[arg(long)]
    pub lm: bool,
    /// The LM to benchmark (with --lm): a name, a .gguf file or a Hugging Face directory.
    #[arg(long, default_value = "smollm2-135m", requires = "lm")]
    pub model: String,
    /// The LM's weights and arithmetic (with --lm): f32, or bf16 (for CUDA).
    #[arg(long, value_enum, default_value = "f32", requires = "lm")]
    pub precision: PrecisionArg,
    /// With --lm: decoding alone, as llama-batched-bench measures it (128-token prompts, 48
    /// new tokens, batch 1 and 16), one JSON line per batch size; `scripts/bench.sh --llamacpp`
    /// sets it beside llama.cpp.
    #[arg(long, requires = "lm", conflicts_with = "trl")]
    pub decoding: bool,
    /// With --decoding: the weights decoding reads, comma-separated (f32, bf16, q8_0, file:
    /// policy.decode_weights), one set of rows each; with --trl: one of them, what asymre's
    /// actors decode from.
    #[arg(long, default_value = "f32", requires = "lm", value_parser = decode_weights_list)]
    pub decode_weights: DecodeWeightsList,
    /// With --lm: the GRPO workload end to end, asymre's training loop against Hugging
    /// Face TRL's GRPOTrainer (needs trl in the baseline's Python).
    #[arg(long, requires = "lm", conflicts_with = "no_baseline")]
    pub trl: bool,
    /// With --trl: the workloads, comma-separated: tool (a long tool prompt shared by every
    /// prompt), short (the question alone), bfcl (each prompt with its own functions); none
    /// with --contention for that section alone.
    #[arg(long, default_value = "tool,short,bfcl", requires = "trl",
          value_parser = crate::app::experiments::bench_grpo::Workloads::parse)]
    pub workloads: crate::app::experiments::bench_grpo::Workloads,
    /// With --trl: also a contention section (tool workload): asymre serial alone and beside a
    /// busy loop (nice 19 and nice 0), before and after its waiting policy, and with
    /// learner.adapt_threads.
    #[arg(long, requires = "trl")]
    pub contention: bool,
    /// With --trl: print the tables of a report that --json wrote, instead of running.
    #[arg(long, requires = "trl", value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Benchmark the Redis transport instead (against redis-benchmark's XADD rate on a
    /// redis-server of its own, and weight publishing).
    #[arg(long, conflicts_with = "lm")]
    pub transport: bool,
}

/// A comma-separated list of `policy.decode_weights` values.
#[derive(Debug, Clone)]
pub struct DecodeWeightsList(pub Vec<crate::config::DecodeWeights>);

fn decode_weights_list(s: &str) -> Result<DecodeWeightsList, String> {
    s.split(',')
        .map(|w| {
            crate::config::DecodeWeights::parse(w.trim())
                .ok_or_else(|| format!("{w:?}: one of f32, bf16, q8_0, file"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(DecodeWeightsList)
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("must be a finite number >= 0, got {s:?}")),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PrecisionArg {
    F32,
    Bf16,
}

impl PrecisionArg {
    pub fn kind(self) -> tch::Kind {
        match self {
            PrecisionArg::F32 => tch::Kind::Float,
            PrecisionArg::Bf16 => tch::Kind::BFloat16,
        }
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("must be a positive number of seconds, got {s:?}")),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    Heldout,
    Train,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Heldout => Split::Heldout,
            SplitArg::Train => Split::Train,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TaskArg {
    Calc,
    Lookup,
    Chain,
    Fanout,
    Menu,
    Recall,
}

impl From<TaskArg> for TaskKind {
    fn from(t: TaskArg) -> Self {
        match t {
            TaskArg::Calc => TaskKind::Calc,
            TaskArg::Lookup => TaskKind::Lookup,
            TaskArg::Chain => TaskKind::Chain,
            TaskArg::Fanout => TaskKind::Fanout,
            TaskArg::Menu => TaskKind::Menu,
            TaskArg::Recall => TaskKind::Recall,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
            DeviceArg::Auto => DeviceChoice::Auto,
        }
    }
}
