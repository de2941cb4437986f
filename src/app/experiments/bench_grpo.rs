//! `asymre bench --lm --trl`: asymre's training loop and Hugging Face TRL's `GRPOTrainer` on the
//! same workload, end to end. Both start from asymre's export of the model; both see the same
//! chat prompts (`calc` questions with the tools listed), G completions per prompt, a batch of
//! episodes per learner step, at most [`NEW_TOKENS`] tokens per completion, one assistant turn
//! (calls are scored, not answered), full fine-tuning with Adam, and the same reward (TRL's reward
//! function calls `asymre score` on the raw completions). Each side runs in its own process, so its
//! peak resident memory is its own; rates are steady-state (the first step left out).
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::bench::{read_rates, run_reference, ScratchDir};
use crate::config;
use crate::env::tool_use::tasks::{Split, Task};
use crate::env::TaskSource;
use crate::error::{Error, IoContext, Result};

/// Episodes per learner step, and completions per prompt.
pub const BATCH: usize = 16;
pub const GROUP: usize = 8;
/// Most tokens one completion writes.
pub const NEW_TOKENS: usize = 48;
/// TRL's default learning rate, used on both sides.
const LR: f64 = 1e-6;
/// Distinct train prompts offered to TRL (asymre draws its own from the same split).
const PROMPTS: u64 = 256;

/// The asymre side's config; `{model}` and `{steps}` are filled in.
const CONFIG: &str = r#"# asymre bench --lm --trl: the GRPO workload, end to end.
seed = 0
device = "cpu"

[env]
kind = "tool_use"
task = "calc"
digits = 2
no_call_share = 0.2
max_tokens = 2048
max_new_tokens = {new}
max_turns = 1
max_calls = 4
rounds = 1
steps_per_round = {steps}

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

[reward]
w_task = 1.0
w_tool = 0.5
w_format = 0.0
w_cost = 0.0

[logging]
every = 1
eval_every = 0
eval_episodes = 16
tensorboard = false
progress = false

[checkpoint]
every = 0
keep = 1
"#;

/// What the section measures.
pub struct GrpoBench<'a> {
    pub model: &'a str,
    pub python: &'a Path,
    pub quick: bool,
    pub json: Option<&'a Path>,
}

fn progress(what: &str) {
    eprintln!("bench: {what} …");
}

/// The asymre config of the workload, for `steps` learner steps from the weights in `model`.
pub fn config_text(model: &Path, steps: u64) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    CONFIG
        .replace(
            "{model}",
            &model.display().to_string().replace('\\', "\\\\"),
        )
        .replace("{steps}", &steps.to_string())
        .replace("{new}", &NEW_TOKENS.to_string())
        .replace("{batch}", &BATCH.to_string())
        .replace("{group}", &GROUP.to_string())
        .replace("{capacity}", &(4 * BATCH).to_string())
        .replace("{lr}", &format!("{LR:e}"))
        .replace("{threads}", &cores.to_string())
}

pub fn run(opts: &GrpoBench) -> Result<()> {
    let scratch = ScratchDir::new()?;
    let dir = &scratch.0;
    let (asymre_steps, trl_steps) = if opts.quick { (6, 3) } else { (16, 6) };

    progress(&format!(
        "exporting {} as the starting weights of both sides",
        opts.model
    ));
    let start = dir.join("start");
    crate::policy::lm::export::export_model(opts.model, &start)?;
    let cfg_path = dir.join("grpo.toml");
    std::fs::write(&cfg_path, config_text(&start, asymre_steps)).at(&cfg_path)?;
    let cfg = config::load(&cfg_path, &[])?;

    let prompts = dir.join("prompts.jsonl");
    write_prompts(&cfg, &prompts)?;

    let exe =
        std::env::current_exe().map_err(|e| Error::input(format!("no asymre binary: {e}")))?;
    let mut ours = Vec::new();
    for serial in [false, true] {
        let mode = if serial { "serial" } else { "parallel" };
        progress(&format!(
            "asymre train ({mode}): {asymre_steps} steps of {BATCH} episodes"
        ));
        ours.push(asymre_side(&exe, &cfg_path, &dir.join(mode), serial)?);
    }

    progress(&format!(
        "TRL GRPOTrainer (scripts/reference/trl_grpo.py): {trl_steps} steps of {BATCH} episodes, \
         each some tens of seconds on a 2-core CPU"
    ));
    let trl = trl_side(opts.python, &exe, &start, &prompts, &cfg_path, trl_steps)?;

    print_table(&ours, &trl, opts.model);
    if let Some(path) = opts.json {
        let all = json!({"asymre_parallel": ours[0], "asymre_serial": ours[1], "trl": trl,
            "model": opts.model, "batch": BATCH, "group": GROUP, "new_tokens": NEW_TOKENS});
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap_or_default()).at(path)?;
    }
    Ok(())
}

/// The chat prompts of the first train items, rendered as the run renders them: the text (with
/// special tokens), its ids, and the question `asymre score` reads.
fn write_prompts(cfg: &config::Config, path: &Path) -> Result<()> {
    let protocol = crate::run::chat_protocol(cfg)?;
    let f = &protocol.format;
    let task = Task::new(cfg.env.task_spec(cfg.seed));
    let mut lines = String::new();
    for i in 0..PROMPTS {
        let item = task.item(Split::Train, i);
        let question = task.question(&item);
        let tools = task.tools(&item);
        let ids = f.prompt_ids(&f.opening(&question, &tools), &tools)?;
        let text = f.tokenizer.decode_with(&ids, false);
        lines.push_str(
            &json!({"prompt": text, "prompt_ids": ids, "question": question}).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(path, lines).at(path)
}

/// `asymre train` on the workload in a child process: its steady-state rates from the run's
/// metrics (rows after the first) and its own peak resident memory.
fn asymre_side(exe: &Path, cfg: &Path, out: &Path, serial: bool) -> Result<Value> {
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
    let (status, peak_mib) = run_measured(&mut cmd)?;
    if status != 0 {
        return Err(Error::input(format!(
            "the asymre side exited with status {status}"
        )));
    }
    let rates = read_rates(&out.join("metrics.jsonl"), BATCH)?;
    Ok(json!({
        "mode": if serial { "serial" } else { "parallel" },
        "episodes_per_s": rates.samples_per_s,
        "generated_tokens_per_s": rates.samples_per_s * rates.length,
        "tokens_per_episode": rates.length,
        "mean_reward": rates.reward,
        "policy_lag": rates.lag,
        "peak_rss_mib": peak_mib,
    }))
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

fn trl_side(
    python: &Path,
    exe: &Path,
    model: &Path,
    prompts: &Path,
    cfg: &Path,
    steps: u64,
) -> Result<Value> {
    let s = |v: &dyn ToString| v.to_string();
    let args: Vec<std::ffi::OsString> = vec![
        model.into(),
        prompts.into(),
        "--asymre".into(),
        exe.into(),
        "--config".into(),
        cfg.into(),
        "--steps".into(),
        s(&steps).into(),
        "--batch".into(),
        s(&BATCH).into(),
        "--group".into(),
        s(&GROUP).into(),
        "--new".into(),
        s(&NEW_TOKENS).into(),
        "--lr".into(),
        s(&LR).into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_reference(python, "trl_grpo.py", &args, "TRL GRPOTrainer").map_err(|e| {
        Error::input(format!(
            "{e} (is trl installed? scripts/bench.sh --trl installs trl==1.16.0 into .venv)"
        ))
    })
}

fn print_table(ours: &[Value], trl: &Value, model: &str) {
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "GRPO workload, end to end: {model} (asymre's f32 export), {cores} CPU threads, {BATCH} \
         episodes per step ({} prompts × G = {GROUP}), ≤ {NEW_TOKENS} new tokens, one turn, \
         full fine-tuning, Adam",
        BATCH / GROUP
    );
    println!(
        "{:<28} {:>12} {:>16} {:>14} {:>12} {:>10}",
        "", "episodes/s", "generated tok/s", "tokens/episode", "peak MiB", "vs TRL"
    );
    let t = get(trl, "episodes_per_s");
    let row = |name: &str, v: &Value| {
        let e = get(v, "episodes_per_s");
        let ratio = if t > 0.0 && e.is_finite() {
            format!("{:.2}×", e / t)
        } else {
            "—".into()
        };
        println!(
            "{name:<28} {e:>12.3} {:>16.1} {:>14.1} {:>12.0} {ratio:>10}",
            get(v, "generated_tokens_per_s"),
            get(v, "tokens_per_episode"),
            get(v, "peak_rss_mib"),
        );
    };
    for v in ours {
        let mode = v.get("mode").and_then(Value::as_str).unwrap_or("");
        row(&format!("asymre ({mode})"), v);
    }
    let version = trl.get("trl").and_then(Value::as_str).unwrap_or("?");
    row(&format!("TRL {version} GRPOTrainer"), trl);
    println!(
        "goal: asymre ≥ 4× TRL episodes/s. Mean reward: asymre {:.3} (parallel), TRL {:.3}; TRL \
         prompts re-tokenised differently from asymre's ids: {}",
        get(&ours[0], "mean_reward"),
        get(trl, "mean_reward"),
        get(trl, "prompt_token_mismatches"),
    );
}
