//! Writing a model as a Hugging Face directory: `config.json`, `model.safetensors` (f32, LoRA
//! adapters merged), `tokenizer.json`, `tokenizer_config.json` with the chat template, and
//! `generation_config.json`. transformers loads it, and so does `--model DIR`.
use std::path::{Path, PathBuf};

use serde_json::json;

use super::weights::write_safetensors;
use super::Lm;
use crate::error::{Error, IoContext, Result};
use crate::text::ModelText;

/// Writes `lm` with its tokenizer and template into `out` (created; it must be empty or absent).
pub fn write_hf_dir(lm: &Lm, text: &ModelText, out: &Path) -> Result<()> {
    if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
        return Err(Error::input(format!(
            "{}: exists and is not empty; export writes a new directory",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).at(out)?;
    let write = |name: &str, body: String| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, body).at(&p)
    };
    let cfg = lm.cfg.to_hf();
    write(
        "config.json",
        serde_json::to_string_pretty(&cfg).expect("JSON"),
    )?;
    tch::no_grad(|| write_safetensors(&out.join("model.safetensors"), &lm.merged_tensors()))?;
    let tok = &text.tokenizer;
    write("tokenizer.json", tok.to_json()?)?;
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": lm.cfg.max_positions,
        "clean_up_tokenization_spaces": false,
        "add_bos_token": tok.add_bos,
        "eos_token": name(Some(tok.eos)),
        "pad_token": name(Some(tok.pad_id())),
    });
    if let Some(b) = name(tok.bos) {
        tc["bos_token"] = b.into();
    }
    if let Some(t) = &text.template {
        tc["chat_template"] = t.source.clone().into();
    }
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&tc).expect("JSON"),
    )?;
    let mut gen = json!({"do_sample": false, "eos_token_id": tok.stop});
    if let Some(b) = tok.bos {
        gen["bos_token_id"] = b.into();
    }
    write(
        "generation_config.json",
        serde_json::to_string_pretty(&gen).expect("JSON"),
    )?;
    Ok(())
}

/// `asymre export --model M --out DIR`: a model as a Hugging Face directory (a GGUF file's
/// weights dequantised to f32).
pub fn export_model(spec: &str, out: &Path) -> Result<PathBuf> {
    let model = super::load(spec, tch::Device::Cpu, tch::Kind::Float, None)?;
    write_hf_dir(&model.lm, &model.text, out)?;
    Ok(out.to_path_buf())
}
