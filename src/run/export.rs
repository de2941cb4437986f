//! `asymre export RUN_DIR --out DIR`: an LM run's last checkpoint as a Hugging Face directory.
use std::path::Path;

use crate::error::{Error, Result};
use crate::policy::lm::export::write_hf_dir;
use crate::policy::lm::source::{load_files, resolve};
use crate::policy::WeightSnapshot;
use crate::store::checkpoint;

use super::dir::open_run_dir;

/// Loads the run's base model (`policy.model`, with its adapters when `policy.lora` is set),
/// puts the last checkpoint's trained weights in, and writes the result, LoRA merged, to `out`.
/// Returns the checkpoint's step.
pub fn export_run(run_dir: &Path, out: &Path) -> Result<u64> {
    let (cfg, _) = open_run_dir(run_dir)?;
    let model = cfg.policy.pretrained().ok_or_else(|| {
        Error::input(format!(
            "{}: export is for runs of a pretrained LM (policy.kind = \"lm\")",
            run_dir.display()
        ))
    })?;
    let ckpt = checkpoint::load_latest(run_dir)?.ok_or_else(|| {
        Error::input(format!(
            "{}: no checkpoint to export yet",
            run_dir.display()
        ))
    })?;
    let loaded = load_files(
        resolve(model)?,
        tch::Device::Cpu,
        tch::Kind::Float,
        cfg.policy.lora.as_ref(),
    )?;
    WeightSnapshot {
        version: ckpt.step,
        tensors: ckpt.tensors("weights")?.to_vec().into(),
    }
    .load_into(&loaded.vs)?;
    write_hf_dir(&loaded.lm, &loaded.text, out)?;
    Ok(ckpt.step)
}
