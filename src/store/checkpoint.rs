//! Checkpoints, written atomically: every file goes into a temporary directory that is synced and
//! renamed into place, and only then does `checkpoints/latest` (itself replaced by rename) point at
//! it. A kill at any moment leaves the previous checkpoint intact and loadable.
//!
//! Layout: `checkpoints/step_000001000/{state.json, <name>.safetensors…}`.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, IoContext, Result};
use crate::policy::NamedTensor;

/// What a checkpoint holds: the step, a JSON state (RNGs, counters, replay…) and tensor files.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub step: u64,
    pub state: serde_json::Value,
    /// (file stem, tensors) pairs, e.g. ("weights", …), ("optimizer", …).
    pub tensors: Vec<(String, Vec<NamedTensor>)>,
}

impl Checkpoint {
    /// The tensors of file `stem`.
    pub fn tensors(&self, stem: &str) -> Result<&[NamedTensor]> {
        self.tensors
            .iter()
            .find(|(s, _)| s == stem)
            .map(|(_, t)| t.as_slice())
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "checkpoint at step {} has no {stem}.safetensors",
                    self.step
                ))
            })
    }
}

const LATEST: &str = "latest";
const STATE: &str = "state.json";
const ORDER_KEY: &str = "order";

fn step_name(step: u64) -> String {
    format!("step_{step:09}")
}

/// Writes `bytes` to `path` via a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

/// safetensors bytes of `tensors` (f32, little-endian), keeping their order in the metadata.
pub fn safetensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    let raw: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&raw)
        .map(|(t, bytes)| {
            TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Corrupt(format!("tensor {}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let order = tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let meta = Some(HashMap::from([(ORDER_KEY.to_string(), order)]));
    safetensors::tensor::serialize(views, &meta)
        .map_err(|e| Error::Corrupt(format!("safetensors: {e}")))
}

/// Parses what [`safetensors_bytes`] wrote, in the original order.
pub fn parse_safetensors(bytes: &[u8], origin: &Path) -> Result<Vec<NamedTensor>> {
    let bad = |e: String| Error::Corrupt(format!("{}: {e}", origin.display()));
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let order: Vec<String> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(ORDER_KEY))
        .map(|o| {
            o.split('\n')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_else(|| {
            let mut names: Vec<String> = st.names().into_iter().cloned().collect();
            names.sort();
            names
        });
    order
        .into_iter()
        .map(|name| {
            let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(NamedTensor {
                name,
                shape: view.shape().to_vec(),
                data,
            })
        })
        .collect()
}

/// Writes `ckpt` under `run_dir/checkpoints/`, points `latest` at it, and keeps the newest `keep`.
pub fn save(run_dir: &Path, ckpt: &Checkpoint, keep: usize) -> Result<PathBuf> {
    save_pausing(run_dir, ckpt, keep, Duration::ZERO)
}

/// [`save`], pausing for `pause` once the state is written and before the tensors are (fault
/// injection: a window in which a kill lands mid-write).
pub fn save_pausing(
    run_dir: &Path,
    ckpt: &Checkpoint,
    keep: usize,
    pause: Duration,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    fs::create_dir_all(&root).at(&root)?;
    let name = step_name(ckpt.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir(&tmp).at(&tmp)?;
    let state = serde_json::json!({ "step": ckpt.step, "state": ckpt.state });
    write_file_synced(&tmp.join(STATE), state.to_string().as_bytes())?;
    if !pause.is_zero() {
        eprintln!(
            "checkpoint {name}: paused half written for {} ms (faults.checkpoint_pause_ms)",
            pause.as_millis()
        );
        std::thread::sleep(pause);
    }
    for (stem, tensors) in &ckpt.tensors {
        write_file_synced(
            &tmp.join(format!("{stem}.safetensors")),
            &safetensors_bytes(tensors)?,
        )?;
    }
    sync_dir(&tmp)?;
    let dest = root.join(&name);
    if dest.exists() {
        // Same step saved again (e.g. the final checkpoint right after a resume).
        let old = root.join(format!(".old-{name}"));
        fs::rename(&dest, &old).at(&dest)?;
        fs::rename(&tmp, &dest).at(&dest)?;
        fs::remove_dir_all(&old).at(&old)?;
    } else {
        fs::rename(&tmp, &dest).at(&dest)?;
    }
    sync_dir(&root)?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    prune(&root, keep, &name)?;
    Ok(dest)
}

fn checkpoint_dirs(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(root).at(root)? {
        let entry = entry.at(root)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("step_")
            .and_then(|s| s.parse::<u64>().ok())
        {
            dirs.push((step, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Removes all but the newest `keep` checkpoints (never `current`), and what killed or failed
/// earlier writes left half written (`.tmp-*`).
fn prune(root: &Path, keep: usize, current: &str) -> Result<()> {
    for entry in fs::read_dir(root).at(root)? {
        let entry = entry.at(root)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".tmp-") {
            let path = entry.path();
            if path.is_dir() {
                fs::remove_dir_all(&path).at(&path)?;
            }
        }
    }
    let dirs = checkpoint_dirs(root)?;
    let excess = dirs.len().saturating_sub(keep);
    for (_, dir) in dirs.into_iter().take(excess) {
        if dir.file_name().is_some_and(|n| n != current) {
            fs::remove_dir_all(&dir).at(&dir)?;
        }
    }
    Ok(())
}

fn load_dir(dir: &Path) -> Result<Checkpoint> {
    let state_path = dir.join(STATE);
    let text = fs::read_to_string(&state_path).at(&state_path)?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", state_path.display())))?;
    let step = value
        .get("step")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| Error::Corrupt(format!("{}: no step", state_path.display())))?;
    let state = value
        .get_mut("state")
        .map(serde_json::Value::take)
        .unwrap_or_default();
    let mut tensors = Vec::new();
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for path in files {
        let bytes = fs::read(&path).at(&path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        tensors.push((stem, parse_safetensors(&bytes, &path)?));
    }
    Ok(Checkpoint {
        step,
        state,
        tensors,
    })
}

/// The newest loadable checkpoint of a run: the one `latest` names, or else the newest complete
/// one on disk. `None` when there is none.
pub fn load_latest(run_dir: &Path) -> Result<Option<Checkpoint>> {
    let root = run_dir.join("checkpoints");
    if !root.exists() {
        return Ok(None);
    }
    if let Ok(name) = fs::read_to_string(root.join(LATEST)) {
        if let Ok(ckpt) = load_dir(&root.join(name.trim())) {
            return Ok(Some(ckpt));
        }
    }
    for (_, dir) in checkpoint_dirs(&root)?.into_iter().rev() {
        if let Ok(ckpt) = load_dir(&dir) {
            return Ok(Some(ckpt));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt(step: u64) -> Checkpoint {
        Checkpoint {
            step,
            state: serde_json::json!({"rng": [1, 2, 3], "x": 0.1f32}),
            tensors: vec![(
                "weights".into(),
                vec![
                    NamedTensor {
                        name: "z".into(),
                        shape: vec![2],
                        data: vec![1.5, -2.0],
                    },
                    NamedTensor {
                        name: "a".into(),
                        shape: vec![1, 3],
                        data: vec![0.1, f32::MIN_POSITIVE, 3.0],
                    },
                ],
            )],
        }
    }

    #[test]
    fn round_trip_keeps_values_and_order() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &ckpt(5), 2).unwrap();
        let back = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(back, ckpt(5));
    }

    #[test]
    fn keeps_the_newest_and_survives_a_torn_latest() {
        let dir = tempfile::tempdir().unwrap();
        for s in [1, 2, 3] {
            save(dir.path(), &ckpt(s), 2).unwrap();
        }
        let root = dir.path().join("checkpoints");
        assert_eq!(
            checkpoint_dirs(&root)
                .unwrap()
                .iter()
                .map(|d| d.0)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        // A half-written newer checkpoint and a garbage `latest` fall back to the newest good one.
        fs::create_dir(root.join("step_000000009")).unwrap();
        fs::write(root.join("step_000000009/state.json"), "{\"st").unwrap();
        fs::write(root.join(LATEST), "nonsense").unwrap();
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().step, 3);
        // Saving the same step twice replaces it, and a save clears what a killed write left.
        fs::create_dir(root.join(".tmp-step_000000004")).unwrap();
        save(dir.path(), &ckpt(3), 2).unwrap();
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().step, 3);
        assert!(!root.join(".tmp-step_000000004").exists());
    }

    #[test]
    fn corrupt_tensor_file_is_an_error_not_a_panic() {
        let err = parse_safetensors(
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("x: "), "{err}");
    }
}
