//! Plain text decoding: `asymre generate` and the decoding benchmark. Prompts run through the
//! same batched loop and sampler as tool-use episodes ([`super::decode`]), as sequences that end
//! at a stop token or after `max_new` tokens.
use rand_chacha::ChaCha8Rng;
use tch::Kind;

use super::decode::{decode as decode_batch, BATCHING};
use super::Decoding;
use crate::env::Decodable;
use crate::error::Result;
use crate::policy::lm::source;
use crate::policy::SequencePolicy;
use crate::rng::{self, Role};

/// How [`decode`] samples.
#[derive(Debug, Clone, Copy)]
pub struct Sampling<'a> {
    /// New tokens per row, at most.
    pub max_new: usize,
    /// 0: greedy; otherwise softmax(logits / temperature).
    pub temperature: f64,
    /// A row ends after writing one of these (which is kept).
    pub stop: &'a [u32],
}

/// A prompt and what the policy wrote after it; it ends at a stop token or after `max_new`.
#[derive(Debug, Clone)]
struct Text<'a> {
    tokens: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    stop: &'a [u32],
    done: bool,
}

impl Decodable for Text<'_> {
    fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    fn done(&self) -> bool {
        self.done
    }

    fn take_forced(&mut self) -> Option<u32> {
        None
    }

    fn push_token(&mut self, token: u32) {
        self.tokens.push(token);
        self.done =
            self.stop.contains(&token) || self.tokens.len() - self.prompt_len >= self.max_new;
    }

    fn truncate(&mut self) {
        self.done = true;
    }
}

/// The new tokens of each prompt; prompt `i` samples from stream `i` of `seed`.
pub fn decode<P: SequencePolicy>(
    policy: &P,
    prompts: &[Vec<u32>],
    how: &Sampling,
    seed: u64,
    device: tch::Device,
) -> Result<Vec<Vec<u32>>> {
    let seqs: Vec<Text> = prompts
        .iter()
        .map(|p| Text {
            tokens: p.clone(),
            prompt_len: p.len(),
            max_new: how.max_new,
            stop: how.stop,
            done: how.max_new == 0,
        })
        .collect();
    let streams: Vec<ChaCha8Rng> = (0..prompts.len() as u64)
        .map(|i| rng::keyed(seed, Role::Episode, 0, 0, i))
        .collect();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let done = decode_batch(
        policy,
        seqs,
        longest + how.max_new,
        Decoding::at(how.temperature),
        streams,
        device,
        BATCHING,
        |_| {},
    )?;
    Ok(done
        .into_iter()
        .map(|r| r.episode.tokens[r.episode.prompt_len..].to_vec())
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
    let files = source::resolve(req.model)?;
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
        let (_, text) = source::read_text(&files)?;
        return Ok(Generated {
            prompt_tokens: prompt_ids(&text)?,
            output_tokens: Vec::new(),
            text: String::new(),
        });
    }
    let model = source::load_files(files, req.device, req.kind, None)?;
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
    let how = Sampling {
        max_new: req.max_new,
        temperature: req.temperature,
        stop: &tok.stop,
    };
    let out = decode(
        &model.lm,
        std::slice::from_ref(&ids),
        &how,
        req.seed,
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
