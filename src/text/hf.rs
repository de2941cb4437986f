//! A Hugging Face tokenizer (the `tokenizers` crate, pure Rust), from a `tokenizer.json` or
//! rebuilt from a GGUF file's vocabulary, merges and pre-tokenizer name.
use std::path::Path;

use serde_json::{json, Value as Json};

use super::Tokenizer;
use crate::error::{Error, Result};
use crate::formats::gguf::{Gguf, Value};

/// Names of end-of-turn tokens that stop generation when the vocabulary has them.
const END_OF_TURN: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
];

/// The model's own tokenizer.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids that end a sequence or a turn.
    pub stop: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: u32,
    pad: u32,
    /// Whether text round-trips byte for byte (no normalizer), so a lost byte can be detected.
    exact: bool,
    /// Prepend BOS when encoding a plain prompt (Llama's convention; from GGUF's
    /// `add_bos_token` or the tokenizer's post-processor).
    pub add_bos: bool,
}

impl HfTokenizer {
    /// From a `tokenizer.json`; `eos` are the config's end-of-sequence ids.
    pub fn from_file(path: &Path, bos: Option<u32>, eos: &[u32]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        Self::from_json_str(&text, bos, eos, None, &path.display().to_string())
    }

    fn from_json_str(
        text: &str,
        bos: Option<u32>,
        eos: &[u32],
        add_bos: Option<bool>,
        what: &str,
    ) -> Result<Self> {
        let json: Json = serde_json::from_str(text)
            .map_err(|e| Error::input(format!("{what}: not JSON: {e}")))?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| Error::input(format!("{what}: not a tokenizer: {e}")))?;
        let mut stop: Vec<u32> = eos.to_vec();
        for name in END_OF_TURN {
            if let Some(id) = inner.token_to_id(name) {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        let eos = eos
            .first()
            .copied()
            .or_else(|| stop.first().copied())
            .ok_or_else(|| Error::input(format!("{what}: no end-of-sequence token")))?;
        // Special ids come from files beside the vocabulary (config.json, GGUF metadata): an id
        // past the vocabulary names no token (the model's loader checks the vocabulary against
        // its embedding table).
        let size = inner.get_vocab_size(true);
        for (name, id) in [
            ("end-of-sequence", Some(eos)),
            ("beginning-of-sequence", bos),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= size) {
                return Err(Error::input(format!(
                    "{what}: the {name} token id {id} is outside the vocabulary of {size}"
                )));
            }
        }
        stop.retain(|&id| (id as usize) < size);
        let exact = json.get("normalizer").is_none_or(Json::is_null);
        // A template post-processor that puts BOS first (Llama's) adds it to plain prompts.
        let add_bos = add_bos.unwrap_or_else(|| {
            let pp = json
                .get("post_processor")
                .map(|p| p.to_string())
                .unwrap_or_default();
            bos.and_then(|b| inner.id_to_token(b))
                .is_some_and(|name| pp.contains(&format!("\"{}\"", name)) && pp.contains("single"))
        });
        Ok(HfTokenizer {
            pad: eos,
            inner,
            stop,
            bos,
            eos,
            exact,
            add_bos,
        })
    }

    /// Rebuilds the tokenizer of a GGUF file (`tokenizer.ggml.model = "gpt2"`: byte-level BPE)
    /// with the pre-tokenizer `tokenizer.ggml.pre` names.
    pub fn from_gguf(g: &Gguf, what: &str) -> Result<Self> {
        let s = |k: &str| g.get(k).and_then(Value::as_str);
        let model = s("tokenizer.ggml.model").unwrap_or("(none)");
        if model != "gpt2" {
            return Err(Error::input(format!(
                "{what}: GGUF tokenizer model {model:?} is not supported (supported: gpt2, byte-level BPE); \
                 load the model's Hugging Face directory instead"
            )));
        }
        let pre = s("tokenizer.ggml.pre").unwrap_or("default");
        let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let (pre_tokenizer, normalizer) = match pre {
            "default" | "gpt2" | "gpt-2" => (byte_level(true), Json::Null),
            "smollm" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                Json::Null,
            ),
            "llama-bpe" | "llama3" => (
                json!({"type": "Sequence", "pretokenizers": [split(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ), byte_level(false)]}),
                Json::Null,
            ),
            "qwen2" => (
                json!({"type": "Sequence", "pretokenizers": [split(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ), byte_level(false)]}),
                json!({"type": "NFC"}),
            ),
            other => {
                return Err(Error::input(format!(
                    "{what}: GGUF pre-tokenizer {other:?} is not supported \
                     (supported: default, gpt2, smollm, llama-bpe, qwen2)"
                )))
            }
        };
        let tokens = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::input(format!("{what}: no tokenizer.ggml.tokens")))?;
        let types = g.get("tokenizer.ggml.token_type").and_then(Value::as_array);
        let merges: Vec<&str> = g
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            let tok = tok
                .as_str()
                .ok_or_else(|| Error::input(format!("{what}: token {id} is not a string")))?;
            // 3: control, 4: user-defined (ggml's token types).
            let ty = types
                .and_then(|t| t.get(id))
                .and_then(Value::as_u64)
                .unwrap_or(1);
            if ty == 3 || ty == 4 {
                added.push(
                    json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": ty == 4, "special": ty == 3}),
                );
            }
            vocab.insert(tok.to_string(), id.into());
        }
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .map(|v| matches!(v, Value::Bool(true)))
            .unwrap_or(false);
        let mut t = Self::from_json_str(
            &spec.to_string(),
            id("tokenizer.ggml.bos_token_id"),
            &eos,
            Some(add_bos),
            what,
        )?;
        if let Some(p) = id("tokenizer.ggml.padding_token_id") {
            if (p as usize) < t.vocab_size() {
                t.pad = p;
            }
        }
        Ok(t)
    }

    /// The ids of `text`. Special tokens written in the text (`<|im_start|>`) become their ids;
    /// with `add_special`, BOS is prepended when the model's convention asks for it.
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
    ) -> std::result::Result<Vec<u32>, String> {
        let enc = self.inner.encode(text, false).map_err(|e| e.to_string())?;
        let mut ids = enc.get_ids().to_vec();
        if self.exact {
            let back = self.inner.decode(&ids, false).map_err(|e| e.to_string())?;
            if back != text {
                let at = text
                    .char_indices()
                    .zip(back.chars().chain(std::iter::repeat('\0')))
                    .find(|((_, a), b)| a != b)
                    .map(|((i, c), _)| (i, c));
                return Err(match at {
                    Some((i, c)) => format!(
                        "the vocabulary cannot encode {c:?} (bytes {:02x?}) at byte {i}",
                        c.to_string().as_bytes()
                    ),
                    None => "the vocabulary cannot encode the end of the text".into(),
                });
            }
        }
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens included when `skip_special` is false.
    pub fn decode_with(&self, ids: &[u32], skip_special: bool) -> String {
        self.inner.decode(ids, skip_special).unwrap_or_default()
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The `tokenizer.json` text (the export writes it).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::Corrupt(format!("tokenizer: {e}")))
    }
}

impl Tokenizer for HfTokenizer {
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        self.encode_with(text, false)
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }
    fn eos(&self) -> u32 {
        self.eos
    }
    fn pad(&self) -> u32 {
        self.pad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE whose vocabulary lacks some bytes.
    fn partial_spec() -> Json {
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<eos>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": {"<eos>": 0, "a": 1, "b": 2, "Ġ": 3, "ab": 4}, "merges": ["a b"]},
        })
    }

    fn partial() -> HfTokenizer {
        HfTokenizer::from_json_str(&partial_spec().to_string(), None, &[0], None, "test").unwrap()
    }

    /// A `tokenizer.json` from elsewhere: an unknown model type, merges that name tokens the
    /// vocabulary lacks, special ids past the vocabulary, or random bytes: one error, no panic.
    #[test]
    fn hostile_tokenizer_files_are_refused() {
        let refused = |spec: &Json, eos: &[u32], bos: Option<u32>, want: &str| {
            let err = HfTokenizer::from_json_str(&spec.to_string(), bos, eos, None, "t.json")
                .err()
                .unwrap_or_else(|| panic!("accepted; wanted {want:?}"))
                .to_string();
            assert!(err.starts_with("t.json: ") && err.contains(want), "{err}");
        };
        let mut unknown = partial_spec();
        unknown["model"]["type"] = "Nope".into();
        refused(&unknown, &[0], None, "not a tokenizer");
        let mut merges = partial_spec();
        merges["model"]["merges"] = json!(["a zz"]);
        refused(&merges, &[0], None, "not a tokenizer");
        refused(
            &partial_spec(),
            &[70_000],
            None,
            "end-of-sequence token id 70000",
        );
        refused(
            &partial_spec(),
            &[0],
            Some(9),
            "beginning-of-sequence token id 9",
        );
        for junk in ["", "[]", "{\"model\": 3}", "\u{0}\u{1}"] {
            assert!(
                HfTokenizer::from_json_str(junk, None, &[0], None, "t").is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn a_byte_the_vocabulary_lacks_is_an_error_not_a_drop() {
        let t = partial();
        assert_eq!(t.encode_with("ab a<eos>", false).unwrap(), vec![4, 3, 1, 0]);
        let err = t.encode_with("ab c", false).unwrap_err();
        assert!(err.contains("'c'") && err.contains("byte 3"), "{err}");
        let err = t.encode_with("aé", false).unwrap_err();
        assert!(err.contains("'é'") && err.contains("c3, a9"), "{err}");
    }
}
