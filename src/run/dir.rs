//! The run directory: what a new run writes before it starts (`config.toml`, `run.json`), how a
//! run is opened again, and the learner a new run starts from (`policy.init`).
use std::path::{Path, PathBuf};

use tch::Device;

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::policy::{PolicyModel, WeightSnapshot};
use crate::rl::learner::Learner;
use crate::store::checkpoint;

use super::envs::initial_logits;

/// Writes a run's `config.toml` and `run.json` in a new directory. A `policy.init` file must
/// load into the configured policy before anything is written; the run's config records its
/// full path.
pub fn create_run_dir(dir: &Path, cfg: &Config, serial: bool) -> Result<()> {
    let mut cfg = cfg.clone();
    if let Some(init) = &cfg.policy.init {
        let (vs, _policy) = PolicyModel::load(&cfg, Device::Cpu, &initial_logits(&cfg))?;
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
    if let Some(model) = &cfg.policy.model {
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
        load_init(&learner.vs, init)?;
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
        tensors,
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
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let base = format!(
        "{root}/{stem}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let mut dir = PathBuf::from(&base);
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = PathBuf::from(format!("{base}-{n}"));
    }
    dir
}

/// Days since 1970-01-01 to a (year, month, day) date (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates_on_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
    }
}
