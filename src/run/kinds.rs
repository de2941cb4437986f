//! The one place a run looks at which environment it plays and with which policy: each legal
//! (environment, policy) pair becomes one [`Runner`], with its task source and protocol, and
//! each environment's task source alone scores other models' lines ([`line_scorer`]). A new kind
//! of environment is a task source (and a protocol, if it needs one) plus one line in each.
use std::path::PathBuf;
use std::sync::Arc;

use super::bandit_run::BanditRun;
use super::runner::Runner;
use super::tool_run::ToolRun;
use crate::config::{Config, EnvKind, PolicyKind};
use crate::env::tool_use::bfcl::{self, source::BfclSource};
use crate::env::tool_use::dataset::{Dataset, DatasetSource};
use crate::env::tool_use::json::score_line;
use crate::env::tool_use::protocol::chat::{ChatFormat, ChatProtocol};
use crate::env::tool_use::protocol::TokenProtocol;
use crate::env::tool_use::reward::Score;
use crate::env::tool_use::stateful::{StatefulSource, WorkerSpec};
use crate::env::tool_use::tasks::Task;
use crate::env::tool_use::toolbox::ToolBox;
use crate::env::{Protocol, Split, TaskSource, ToolSet};
use crate::error::{Error, Result};
use crate::policy::lm::source::{read_text, resolve};
use crate::policy::lm::Lm;
use crate::policy::Transformer;

/// The runner of `cfg`'s environment and policy; a dataset's external tools write their stderr
/// to `tools_log`.
pub(super) fn runner(cfg: &Config, tools_log: Option<PathBuf>) -> Result<Box<dyn Runner>> {
    Ok(match (cfg.env.kind, cfg.policy.kind) {
        (EnvKind::Bandit, PolicyKind::Tabular) => Box::new(BanditRun::new(cfg)),
        (EnvKind::ToolUse, PolicyKind::Transformer) => Box::new(ToolRun::<Transformer, _, _>::new(
            task(cfg),
            token_protocol(cfg),
        )),
        (EnvKind::ToolUse, PolicyKind::Lm) => {
            Box::new(ToolRun::<Lm, _, _>::new(task(cfg), chat_protocol(cfg)?))
        }
        (EnvKind::Dataset, PolicyKind::Lm) => Box::new(ToolRun::<Lm, _, _>::new(
            dataset_source(cfg, tools_log)?,
            chat_protocol(cfg)?,
        )),
        (EnvKind::Bfcl, PolicyKind::Lm) if cfg.env.multi_turn_categories() => {
            let protocol = chat_protocol(cfg)?;
            let source = stateful_training(bfcl_multi_source(cfg, tools_log)?, cfg, &protocol)?;
            Box::new(ToolRun::<Lm, _, _>::new(source, protocol))
        }
        (EnvKind::Bfcl, PolicyKind::Lm) => {
            let protocol = chat_protocol(cfg)?;
            Box::new(ToolRun::<Lm, _, _>::new(
                bfcl_training(cfg, &protocol)?,
                protocol,
            ))
        }
        (EnvKind::Stateful, PolicyKind::Lm) => {
            let protocol = chat_protocol(cfg)?;
            let source = stateful_training(stateful_source(cfg, tools_log)?, cfg, &protocol)?;
            Box::new(ToolRun::<Lm, _, _>::new(source, protocol))
        }
        (env, policy) => {
            return Err(Error::input(format!(
                "env.kind = {env:?} is not played by policy.kind = {policy:?}"
            )))
        }
    })
}

/// The built-in task family of `[env]`.
fn task(cfg: &Config) -> Task {
    Task::new(cfg.env.task_spec(cfg.seed))
}

/// The 60-word token protocol with the limits of `[env]`.
fn token_protocol(cfg: &Config) -> TokenProtocol {
    TokenProtocol {
        limits: cfg.env.limits(),
    }
}

/// The pretrained LM's chat format (its tokenizer and template) with the limits of `[env]`.
pub fn chat_protocol(cfg: &Config) -> Result<ChatProtocol> {
    let model = cfg
        .policy
        .pretrained()
        .ok_or_else(|| Error::input("policy.model: the chat protocol needs a pretrained LM"))?;
    let (_, text) = read_text(&resolve(model)?)?;
    Ok(ChatProtocol {
        format: Arc::new(ChatFormat::new(text, model)?),
        limits: cfg.env.limits(),
    })
}

/// The dataset of `cfg` with its tools; external tools' stderr goes to `tools_log`.
fn dataset_source(cfg: &Config, tools_log: Option<PathBuf>) -> Result<DatasetSource> {
    let tools: Arc<[crate::config::ToolConfig]> = cfg.tools.clone().into();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    let data = Dataset::load(std::path::Path::new(&cfg.env.path), &names)?;
    Ok(DatasetSource {
        data: Arc::new(data),
        tools: ToolBox::new(tools.clone(), tools_log),
        seed: cfg.seed,
    })
}

/// The BFCL categories of `[env]`, all their tasks in their fixed splits.
fn bfcl_source(cfg: &Config) -> Result<BfclSource> {
    let dir = match cfg.env.path.trim() {
        "" => bfcl::data_dir()?,
        path => PathBuf::from(path),
    };
    let mut entries = Vec::new();
    for category in &cfg.env.categories {
        entries.extend(bfcl::load(&dir, category)?);
    }
    Ok(BfclSource::new(entries, cfg.seed))
}

/// BFCL's multi-turn categories of `[env]`, served by `scripts/pytools.py --bfcl`.
fn bfcl_multi_source(cfg: &Config, tools_log: Option<PathBuf>) -> Result<StatefulSource> {
    let dir = match cfg.env.path.trim() {
        "" => bfcl::data_dir()?,
        path => PathBuf::from(path),
    };
    StatefulSource::bfcl(&dir, &cfg.env.categories, cfg.seed, tools_log)
}

/// A user's multi-turn tasks (`env.path`) with the classes `env.command` serves.
fn stateful_source(cfg: &Config, tools_log: Option<PathBuf>) -> Result<StatefulSource> {
    let worker = WorkerSpec {
        command: cfg.env.command.clone(),
        timeout: std::time::Duration::from_secs(60),
        stderr_log: tools_log,
    };
    StatefulSource::from_lines(std::path::Path::new(&cfg.env.path), worker, cfg.seed)
}

/// The multi-turn tasks a run trains on: those that fit `env.max_tokens` (the others counted
/// on stderr).
fn stateful_training(
    source: StatefulSource,
    cfg: &Config,
    protocol: &ChatProtocol,
) -> Result<StatefulSource> {
    let (source, dropped) = source.fitting(protocol, cfg.env.max_tokens)?;
    report_fitting(
        &source.name(),
        "ground-truth conversation",
        &dropped,
        source.len(Split::Train),
        cfg,
    )?;
    Ok(source)
}

/// What `fitting` left out, per category, on stderr (a task's `what` does not fit the
/// episode's limits); a run with no training task left is refused.
fn report_fitting(
    name: &str,
    what: &str,
    dropped: &[(String, usize)],
    train: usize,
    cfg: &Config,
) -> Result<()> {
    let limits = format!(
        "env.max_tokens = {} and env.max_new_tokens = {}",
        cfg.env.max_tokens, cfg.env.max_new_tokens
    );
    if !dropped.is_empty() {
        let counts: Vec<String> = dropped.iter().map(|(c, n)| format!("{c} {n}")).collect();
        eprintln!(
            "{name}: skipped {} tasks whose {what} does not fit {limits} ({})",
            dropped.iter().map(|(_, n)| n).sum::<usize>(),
            counts.join(", ")
        );
    }
    if train == 0 {
        return Err(Error::input(format!(
            "{name}: no training task fits {limits}"
        )));
    }
    Ok(())
}

/// The BFCL categories of `[env]` when none is live (the live ones are never trained on).
fn bfcl_trainable(cfg: &Config) -> Result<BfclSource> {
    if let Some(live) = cfg.env.categories.iter().find(|c| c.starts_with("live")) {
        return Err(Error::input(format!(
            "env.categories: {live:?} is a live category, never trained on (evaluate it with `asymre bfcl`)"
        )));
    }
    bfcl_source(cfg)
}

/// The BFCL tasks a run trains and evaluates on: the non-live categories of `[env]` (the live
/// ones are the out-of-distribution test, never trained on), without those that cannot be
/// played within `env.max_tokens` (counted on stderr).
fn bfcl_training(cfg: &Config, protocol: &ChatProtocol) -> Result<BfclSource> {
    let (source, dropped) = bfcl_trainable(cfg)?.fitting(protocol, cfg.env.max_tokens);
    report_fitting(
        "bfcl",
        "prompt with its gold calls",
        &dropped,
        source.len(Split::Train),
        cfg,
    )?;
    Ok(source)
}

/// Checks what a run reads besides its config before anything is written, by building its
/// runner once: a dataset's every line (`FILE:LINE: reason` for each bad one), a pretrained
/// model's tokenizer and chat template.
pub fn check_inputs(cfg: &Config) -> Result<()> {
    match (cfg.env.kind, cfg.policy.kind) {
        // BFCL's files and the chat format; which tasks fit is counted when the run starts.
        (EnvKind::Bfcl, PolicyKind::Lm) if cfg.env.multi_turn_categories() => {
            chat_protocol(cfg)?;
            bfcl_multi_source(cfg, None).map(drop)
        }
        (EnvKind::Bfcl, PolicyKind::Lm) => {
            chat_protocol(cfg)?;
            bfcl_trainable(cfg).map(drop)
        }
        (EnvKind::Stateful, PolicyKind::Lm) => {
            chat_protocol(cfg)?;
            stateful_source(cfg, None).map(drop)
        }
        _ => runner(cfg, None).map(drop),
    }
}

/// A scorer of JSON lines of any model's episodes.
pub type LineScorer = Box<dyn Fn(&str) -> std::result::Result<Score, String>>;

/// One train prompt as a run of `cfg` renders it for its LM: the ids, the question, and the
/// task's id where its source names tasks (what [`line_scorer`] needs to find it again).
pub struct PromptRow {
    pub ids: Vec<u32>,
    pub question: String,
    pub id: Option<String>,
}

/// The first `n` train prompts of `cfg`'s single-turn environment played by a pretrained LM,
/// so that another trainer can be given the same prompts.
pub fn train_prompts(cfg: &Config, n: u64) -> Result<Vec<PromptRow>> {
    let protocol = chat_protocol(cfg)?;
    match cfg.env.kind {
        EnvKind::ToolUse => prompts_of(&task(cfg), &protocol, n),
        EnvKind::Dataset => prompts_of(&dataset_source(cfg, None)?, &protocol, n),
        EnvKind::Bfcl if !cfg.env.multi_turn_categories() => {
            prompts_of(&bfcl_training(cfg, &protocol)?, &protocol, n)
        }
        kind => Err(Error::input(format!(
            "env.kind = {kind:?}: prompts are listed for single-turn environments only"
        ))),
    }
}

fn prompts_of<T: TaskSource + ToolSet<T::Item>>(
    source: &T,
    protocol: &ChatProtocol,
    n: u64,
) -> Result<Vec<PromptRow>> {
    (0..n)
        .map(|i| {
            let item = source.item(Split::Train, i);
            let question = source.question(&item);
            let id = source.item_id(&item);
            let ids = Protocol::<T>::start(protocol, source, item)?.tokens;
            Ok(PromptRow { ids, question, id })
        })
        .collect()
}

/// Scores JSON lines of any model's episodes with the task source of `cfg` (its tools and gold)
/// and `cfg`'s rewards, one result per line. Only the task source is built: scoring another
/// model's output needs no policy.
pub fn line_scorer(cfg: &Config) -> Result<LineScorer> {
    let reward = cfg.reward.clone();
    Ok(match cfg.env.kind {
        EnvKind::ToolUse => {
            let task = task(cfg);
            Box::new(move |line: &str| score_line(&task, &reward, line))
        }
        EnvKind::Dataset => {
            let source = dataset_source(cfg, None)?;
            Box::new(move |line: &str| score_line(&source, &reward, line))
        }
        EnvKind::Bfcl if cfg.env.multi_turn_categories() => {
            return Err(Error::input(
                "multi-turn episodes are graded as they are played (asymre bfcl, asymre eval), not from lines",
            ))
        }
        EnvKind::Bfcl => {
            let source = bfcl_source(cfg)?;
            Box::new(move |line: &str| score_line(&source, &reward, line))
        }
        EnvKind::Stateful => {
            return Err(Error::input(
                "multi-turn episodes are graded as they are played (asymre eval), not from lines",
            ))
        }
        EnvKind::Bandit => return Err(Error::input("the bandit has no episodes to score")),
    })
}
