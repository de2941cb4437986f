//! `asymre eval`: greedy evaluation of a tool-use run's last checkpoint.
use std::path::Path;

use crate::config::EnvKind;
use crate::env::tool_use::reward::ScoreMeans;
use crate::env::tool_use::tasks::{Split, Task};
use crate::error::{Error, IoContext, Result};
use crate::policy::{PolicyModel, WeightSnapshot};
use crate::rollout::{evaluate, evaluate_with};
use crate::store::checkpoint;

use super::*;

/// Greedy evaluation of a tool-use run's last checkpoint on `episodes` items of `split`; with
/// `dump`, every episode is also written there as a JSON line (the form `asymre score` reads).
pub fn evaluate_run(
    run_dir: &Path,
    split: Split,
    episodes: usize,
    dump: Option<&Path>,
) -> Result<(u64, ScoreMeans)> {
    let (cfg, _) = open_run_dir(run_dir)?;
    if cfg.env.kind == EnvKind::Bandit {
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
    let (vs, policy) = PolicyModel::load(&cfg, device, &[])?;
    WeightSnapshot {
        version: ckpt.step,
        tensors: ckpt.tensors("weights")?.to_vec(),
    }
    .load_into(&vs)?;
    let task = Task::new(cfg.env.task_spec(cfg.seed));
    let limits = cfg.env.limits();
    let mut lines = String::new();
    let mut line = |v: serde_json::Value| {
        if dump.is_some() {
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
    };
    let stats = match (&policy, super::envs::chat_protocol(&cfg)?) {
        // A dataset's tasks: chat episodes, dumped with the task's id.
        (PolicyModel::Lm(model), Some((_, protocol))) if cfg.env.kind == EnvKind::Dataset => {
            let source = super::envs::dataset_source(&cfg, None)?;
            evaluate_with(
                model.as_ref(),
                &source,
                &protocol,
                split,
                episodes,
                super::envs::LM_EVAL_BATCH,
                &cfg.reward,
                device,
                |ep| {
                    let id = &source.task(&ep.item).id;
                    line(serde_json::json!({ "id": id, "messages": ep.messages }))
                },
            )?
        }
        // A pretrained LM: its chat episodes, dumped as OpenAI `messages` logs.
        (PolicyModel::Lm(model), Some((_, protocol))) => evaluate_with(
            model.as_ref(),
            &task,
            &protocol,
            split,
            episodes,
            super::envs::LM_EVAL_BATCH,
            &cfg.reward,
            device,
            |ep| line(serde_json::json!({ "messages": ep.messages })),
        )?,
        (policy, _) => evaluate(
            policy.transformer()?,
            &task,
            split,
            episodes,
            limits,
            &cfg.reward,
            device,
            |ep| line(crate::env::tool_use::episode_json(&task, ep)),
        )?,
    };
    if let Some(path) = dump {
        std::fs::write(path, lines).at(path)?;
    }
    Ok((ckpt.step, stats))
}
