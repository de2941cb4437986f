//! The run directory: what a new run writes before it starts (`config.toml`, `run.json`), how a
//! run is opened again, and the learner a new run starts from (`policy.init`).
use std::path::{Path, PathBuf};

use tch::Device;

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::policy::{PolicyModel, WeightSnapshot};
use crate::rl::learner::Learner;
use crate::store::checkpoint;

/// Writes a run's `config.toml` and `run.json` in a new directory. A `policy.init` file must
/// load into the configured policy before anything is written; the run's config records its
/// full path.
pub fn create_run_dir(dir: &Path, cfg: &Config, serial: bool) -> Result<()> {
    let mut cfg = cfg.clone();
    if let Some(init) = &cfg.policy.init {
        let (vs, _policy) =
            PolicyModel::load(&cfg, Device::Cpu, &cfg.env.initial_logits(cfg.seed))?;
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
    let mut meta = serde_json::json!({ "serial": serial, "version": env!("CARGO_PKG_VERSION") });
    if let Some(model) = cfg.policy.pretrained() {
        // The base the checkpoints' weights apply to (they hold only what trains).
        meta["base_model"] = base_reference(model)?;
    }
    checkpoint::write_atomic(&dir.join("run.json"), meta.to_string().as_bytes())
}

/// What a run records of its base model: the name it was given, the file or directory it
/// resolved to, and that file's size (or the directory's weight files' total).
pub fn base_reference(model: &str) -> Result<serde_json::Value> {
    use crate::policy::lm::source::{resolve, ModelFiles};
    let files = resolve(model)?;
    let path = match &files {
        ModelFiles::Gguf(p) | ModelFiles::HfDir(p) => p.canonicalize().at(p)?,
    };
    let bytes: u64 = match &files {
        ModelFiles::Gguf(p) => std::fs::metadata(p).at(p)?.len(),
        ModelFiles::HfDir(d) => std::fs::read_dir(d)
            .at(d)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum(),
    };
    Ok(serde_json::json!({ "model": model, "path": path, "bytes": bytes }))
}

/// A learner for a new run: [`Learner::new`], then the weights of `policy.init` if it is set.
pub fn new_learner(cfg: &Config, device: Device, init_logits: &[f64]) -> Result<Learner> {
    let learner = Learner::new(cfg, device, init_logits)?;
    if let Some(init) = &cfg.policy.init {
        load_init(learner.vs(), init)?;
    }
    Ok(learner)
}

/// Overwrites the variables of `vs` with the `policy.init` file at `path`.
pub(super) fn load_init(vs: &tch::nn::VarStore, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| init_error(path, e))?;
    // The parser's errors name the file already.
    let tensors = checkpoint::parse_safetensors(&bytes, path)
        .map_err(|e| Error::input(format!("policy.init: {e}")))?;
    WeightSnapshot {
        version: 0,
        tensors: tensors.into(),
    }
    .load_into(vs)
    .map_err(|e| init_error(path, e))
}

pub(super) fn init_error(path: &Path, e: impl std::fmt::Display) -> Error {
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

/// `<root>/<config stem>-<UTC yyyymmdd-hhmmss>`.
pub fn default_dir(root: &str, config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    let t = crate::clock::now_utc();
    let base = format!(
        "{root}/{stem}-{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    let mut dir = PathBuf::from(&base);
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = PathBuf::from(format!("{base}-{n}"));
    }
    dir
}
