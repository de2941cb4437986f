//! `asymre eval`: greedy evaluation of a tool-use run's last checkpoint, through the run's own
//! runner.
use std::path::Path;

use crate::env::tool_use::reward::ScoreMeans;
use crate::env::Split;
use crate::error::{Error, IoContext, Result};
use crate::policy::{PolicyModel, WeightSnapshot};
use crate::store::checkpoint;

use super::dir::open_run_dir;
use super::kinds;

/// Greedy evaluation of a tool-use run's last checkpoint on `episodes` items of `split` (fewer
/// when a dataset's split holds fewer); with `dump`, every episode is also written there as a
/// JSON line (the form `asymre score` reads).
pub fn evaluate_run(
    run_dir: &Path,
    split: Split,
    episodes: usize,
    dump: Option<&Path>,
) -> Result<(u64, ScoreMeans)> {
    let (cfg, _) = open_run_dir(run_dir)?;
    if episodes == 0 {
        return Err(Error::input("--episodes: must be >= 1, got 0"));
    }
    let runner = kinds::runner(&cfg, None)?;
    if !runner.evaluates() {
        return Err(Error::input(format!(
            "{}: eval is for tool-use runs (this environment has no episodes)",
            run_dir.display()
        )));
    }
    let (step, _vs, policy, device) = load_run_policy(run_dir, &cfg)?;
    let mut lines = String::new();
    let mut line = |v: serde_json::Value| {
        lines.push_str(&v.to_string());
        lines.push('\n');
    };
    let sink = dump.map(|_| &mut line as &mut dyn FnMut(serde_json::Value));
    let stats = runner.evaluate(&cfg, &policy, device, split, episodes, sink)?;
    if let Some(path) = dump {
        std::fs::write(path, lines).at(path)?;
    }
    Ok((step, stats))
}

/// The policy of `cfg` (a run's config) with the weights of the run's last checkpoint, on the
/// config's device: the checkpoint's step, the variables, the policy and the device.
pub fn load_run_policy(
    run_dir: &Path,
    cfg: &crate::config::Config,
) -> Result<(u64, tch::nn::VarStore, PolicyModel, tch::Device)> {
    let ckpt = checkpoint::load_latest(run_dir)?.ok_or_else(|| {
        Error::input(format!(
            "{}: no checkpoint to evaluate yet",
            run_dir.display()
        ))
    })?;
    tch::set_num_threads(cfg.learner.intra_op_threads as i32);
    let device = crate::device::resolve_device(cfg.device)?;
    let (vs, policy) = PolicyModel::load(cfg, device, &cfg.env.initial_logits(cfg.seed))?;
    WeightSnapshot {
        version: ckpt.step,
        tensors: ckpt.tensors("weights")?.to_vec().into(),
    }
    .load_into(&vs)?;
    Ok((ckpt.step, vs, policy, device))
}
