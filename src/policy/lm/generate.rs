//! Batched decoding with the KV cache: greedy at temperature 0, sampling otherwise. What
//! `asymre generate` and the decoding benchmark run.
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::policy::{DecodeCache, SequencePolicy};

/// How [`decode`] samples.
#[derive(Debug, Clone, Copy)]
pub struct Sampling<'a> {
    /// New tokens per row, at most.
    pub max_new: usize,
    /// 0: greedy; otherwise softmax(logits / temperature).
    pub temperature: f64,
    /// A row ends after writing one of these (which is kept).
    pub stop: &'a [u32],
    /// The id left padding uses.
    pub pad: u32,
}

/// The new tokens of each prompt. `prompts` may differ in length (they are left-padded).
pub fn decode<P: SequencePolicy>(
    policy: &P,
    prompts: &[Vec<u32>],
    how: &Sampling,
    rng: &mut ChaCha8Rng,
    device: tch::Device,
) -> Result<Vec<Vec<u32>>> {
    let Sampling {
        max_new,
        temperature,
        stop,
        pad,
    } = *how;
    let b = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    if b == 0 || max_new == 0 {
        return Ok(out);
    }
    // Rows with the same prompt (a prompt's G samples) share its prefill: each distinct prompt
    // is computed once and its cache row forked.
    let mut distinct: Vec<&Vec<u32>> = Vec::new();
    let mut source: Vec<i64> = Vec::with_capacity(b);
    for row in prompts {
        let at = distinct.iter().position(|d| *d == row).unwrap_or_else(|| {
            distinct.push(row);
            distinct.len() - 1
        });
        source.push(at as i64);
    }
    let u = distinct.len();
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut tokens = vec![pad as i64; u * p];
    let mut valid = vec![false; u * p];
    for (i, row) in distinct.iter().enumerate() {
        let off = p - row.len();
        for (j, &t) in row.iter().enumerate() {
            tokens[i * p + off + j] = t as i64;
            valid[i * p + off + j] = true;
        }
    }
    let shape = [u as i64, p as i64];
    let tokens = Tensor::f_from_slice(&tokens)?
        .f_view(shape)?
        .f_to_device(device)?;
    let valid = Tensor::f_from_slice(&valid)?
        .f_view(shape)?
        .f_to_device(device)?;
    let mut next_pos: Vec<i64> = prompts.iter().map(|r| r.len() as i64).collect();
    tch::no_grad(|| -> Result<()> {
        let (mut cache, mut logits) = policy.prefill(&tokens, &valid, p + max_new);
        if u < b {
            let fork = Tensor::f_from_slice(&source)?.f_to_device(device)?;
            cache.keep_rows(&fork);
            logits = logits.f_index_select(0, &fork)?;
        }
        // Rows still decoding, as indices into `out`.
        let mut live: Vec<usize> = (0..b).collect();
        for step in 0..max_new {
            let picked = pick(&logits, temperature, rng)?;
            let mut keep = Vec::new();
            for (r, &tok) in picked.iter().enumerate() {
                let row = live[r];
                out[row].push(tok);
                if !stop.contains(&tok) {
                    keep.push(r);
                }
            }
            if keep.is_empty() || step + 1 == max_new {
                break;
            }
            let (toks, pos): (Vec<i64>, Vec<i64>) = keep
                .iter()
                .map(|&r| {
                    let row = live[r];
                    let at = next_pos[row];
                    next_pos[row] += 1;
                    (picked[r] as i64, at)
                })
                .unzip();
            if keep.len() != live.len() {
                let idx: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
                cache.keep_rows(&Tensor::f_from_slice(&idx)?.f_to_device(device)?);
                live = keep.iter().map(|&r| live[r]).collect();
            }
            let n = live.len();
            let real = Tensor::f_ones([n as i64], (Kind::Bool, device))?;
            logits = policy.step(
                &Tensor::f_from_slice(&toks)?.f_to_device(device)?,
                &Tensor::f_from_slice(&pos)?.f_to_device(device)?,
                &real,
                &mut cache,
            );
        }
        Ok(())
    })?;
    Ok(out)
}

/// One token per row of `logits` [B, V]: the argmax at temperature 0, else a sample of
/// softmax(logits / T) drawn with `rng`.
fn pick(logits: &Tensor, temperature: f64, rng: &mut ChaCha8Rng) -> Result<Vec<u32>> {
    if temperature <= 0.0 {
        let ids = logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?;
        return Ok(Vec::<i64>::try_from(&ids)?
            .into_iter()
            .map(|x| x as u32)
            .collect());
    }
    let probs = (logits.f_to_kind(Kind::Float)? / temperature)
        .f_softmax(-1, Kind::Float)?
        .f_to_device(tch::Device::Cpu)?;
    let (b, v) = probs.size2()?;
    let flat = Vec::<f32>::try_from(&probs.f_contiguous()?.f_view([-1])?)?;
    Ok((0..b as usize)
        .map(|i| {
            let row = &flat[i * v as usize..(i + 1) * v as usize];
            let u: f32 = rng.gen::<f32>() * row.iter().sum::<f32>();
            let mut acc = 0.0;
            for (j, &p) in row.iter().enumerate() {
                acc += p;
                if acc > u {
                    return j as u32;
                }
            }
            row.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
        })
        .collect())
}

/// What `asymre generate` asks for.
pub struct Request<'a> {
    pub model: &'a str,
    pub prompt: &'a str,
    pub chat: bool,
    pub system: Option<&'a str>,
    pub max_new: usize,
    pub temperature: f64,
    pub seed: u64,
    pub device: tch::Device,
    pub kind: Kind,
}

/// The prompt's ids, the new ids and their text (special tokens left out).
pub struct Generated {
    pub prompt_tokens: Vec<u32>,
    pub output_tokens: Vec<u32>,
    pub text: String,
}

/// Loads the model, renders and tokenises the prompt, decodes.
pub fn generate(req: &Request) -> Result<Generated> {
    use rand::SeedableRng;
    let files = super::resolve(req.model)?;
    let prompt_ids = |text: &crate::text::ModelText| -> Result<Vec<u32>> {
        let tok = &text.tokenizer;
        let (rendered, add_special) = if req.chat {
            let template = text.template.as_ref().ok_or_else(|| {
                crate::error::Error::input(format!(
                    "model {}: it has no chat template (drop --chat)",
                    req.model
                ))
            })?;
            let mut messages = Vec::new();
            if let Some(s) = req.system {
                messages.push(serde_json::json!({"role": "system", "content": s}));
            }
            messages.push(serde_json::json!({"role": "user", "content": req.prompt}));
            (template.render(&messages, None, true)?, false)
        } else {
            (req.prompt.to_string(), true)
        };
        tok.encode_with(&rendered, add_special)
            .map_err(|e| crate::error::Error::input(format!("prompt: {e}")))
    };
    if req.max_new == 0 {
        let (_, text) = super::source::read_text(&files)?;
        return Ok(Generated {
            prompt_tokens: prompt_ids(&text)?,
            output_tokens: Vec::new(),
            text: String::new(),
        });
    }
    let model = super::source::load_files(files, req.device, req.kind, None)?;
    let ids = prompt_ids(&model.text)?;
    if ids.len() + req.max_new > model.cfg.max_positions {
        return Err(crate::error::Error::input(format!(
            "prompt ({} tokens) + --max-new {} exceeds the model's {} positions",
            ids.len(),
            req.max_new,
            model.cfg.max_positions
        )));
    }
    let tok = &model.text.tokenizer;
    let mut rng = ChaCha8Rng::seed_from_u64(req.seed);
    let how = Sampling {
        max_new: req.max_new,
        temperature: req.temperature,
        stop: &tok.stop,
        pad: tok.pad_id(),
    };
    let out = decode(
        &model.lm,
        std::slice::from_ref(&ids),
        &how,
        &mut rng,
        req.device,
    )?
    .pop()
    .unwrap_or_default();
    Ok(Generated {
        text: tok.decode_with(&out, true),
        prompt_tokens: ids,
        output_tokens: out,
    })
}
