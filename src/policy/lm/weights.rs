//! Where a checkpoint's tensors come from: a GGUF file (names mapped to Hugging Face's, llama.cpp's
//! RoPE permutation of Q and K undone) or a Hugging Face directory of safetensors files (one
//! `model.safetensors`, or shards listed in `model.safetensors.index.json`), memory-mapped.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use super::config::{Arch, LmConfig};
use super::packed::Format;
use crate::error::{Error, IoContext, Result};
use crate::formats::gguf::{GgmlType, Gguf};

/// Tensors by their Hugging Face names, as f32 on the CPU.
pub trait WeightSource {
    fn has(&self, name: &str) -> bool;
    fn get(&self, name: &str) -> Result<Tensor>;
    /// The packed format a tensor is stored in, if one ([`Format`]); None for f32 (and for
    /// what the packed products do not read).
    fn stored(&self, _name: &str) -> Option<Format> {
        None
    }
}

/// GGUF's name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        "rope_freqs.weight" => Some("rope_freqs.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// A GGUF file as a weight source.
pub struct GgufWeights<'a> {
    pub file: &'a Gguf,
    pub cfg: &'a LmConfig,
}

impl WeightSource for GgufWeights<'_> {
    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensors.contains_key(&g))
    }

    fn stored(&self, name: &str) -> Option<Format> {
        let info = self.file.tensors.get(&gguf_name(name)?)?;
        match info.kind.as_ref().ok()? {
            GgmlType::F32 => None,
            GgmlType::F16 => Some(Format::F16),
            GgmlType::Bf16 => Some(Format::Bf16),
            GgmlType::Q8_0 => Some(Format::Q8_0),
            GgmlType::Q4_0 => Some(Format::Q4_0),
            GgmlType::Q4_1 => Some(Format::Q4_1),
        }
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        let g = gguf_name(name)
            .ok_or_else(|| Error::input(format!("no GGUF name for tensor {name}")))?;
        let (shape, data) = self.file.tensor_f32(&g)?;
        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_slice(&data)?.f_view(shape.as_slice())?;
        // llama.cpp's converter interleaves the two halves of each head's Q and K rows for its
        // RoPE (Llama only; Qwen keeps Hugging Face's layout): undo it.
        if self.cfg.arch == Arch::Llama {
            let heads = if name.contains("self_attn.q_proj.") {
                Some(self.cfg.heads)
            } else if name.contains("self_attn.k_proj.") {
                Some(self.cfg.kv_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                return unpermute(&t, h as i64);
            }
        }
        Ok(t)
    }
}

/// The inverse of llama.cpp's `permute(w, n_head)`: rows [h, hd/2, 2] back to [h, 2, hd/2].
pub fn unpermute(t: &Tensor, heads: i64) -> Result<Tensor> {
    let size = t.size();
    let rows = size[0];
    let mut shape = vec![heads, rows / heads / 2, 2];
    shape.extend_from_slice(&size[1..]);
    Ok(t.f_reshape(shape.as_slice())?
        .f_transpose(1, 2)?
        .f_reshape(size.as_slice())?
        .f_contiguous()?)
}

/// llama.cpp's `permute(w, n_head)`, for writing GGUF files in the tests and benches.
pub fn permute(t: &Tensor, heads: i64) -> Result<Tensor> {
    let size = t.size();
    let rows = size[0];
    let mut shape = vec![heads, 2, rows / heads / 2];
    shape.extend_from_slice(&size[1..]);
    Ok(t.f_reshape(shape.as_slice())?
        .f_transpose(1, 2)?
        .f_reshape(size.as_slice())?
        .f_contiguous()?)
}

/// The safetensors files of a Hugging Face directory, memory-mapped; each file's header is
/// parsed once, on opening.
pub struct SafetensorsWeights {
    maps: Vec<(PathBuf, Mmap)>,
    /// tensor name → (index into `maps`, where its data starts in that file, its description)
    index: HashMap<String, (usize, usize, safetensors::tensor::TensorInfo)>,
}

impl SafetensorsWeights {
    /// Opens `dir/model.safetensors`, or the shards `dir/model.safetensors.index.json` lists.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_file = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_file.exists() {
            let text = std::fs::read_to_string(&index_file).at(&index_file)?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::input(format!("{}: not JSON: {e}", index_file.display())))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::input(format!("{}: no weight_map", index_file.display())))?;
            let shards: std::collections::BTreeSet<&str> =
                map.values().filter_map(|v| v.as_str()).collect();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::input(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).at(&path)?;
            // SAFETY: read-only map of a checkpoint file.
            let map = unsafe { Mmap::map(&file) }.at(&path)?;
            let (header, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                Error::input(format!("{}: not a safetensors file: {e}", path.display()))
            })?;
            let data_start = 8 + header;
            for (name, info) in meta.tensors() {
                let end = data_start + info.data_offsets.1;
                if end > map.len() {
                    return Err(Error::input(format!(
                        "{}: tensor {name} runs past the end of the file",
                        path.display()
                    )));
                }
                index.insert(name, (maps.len(), data_start, info.clone()));
            }
            maps.push((path, map));
        }
        Ok(SafetensorsWeights { maps, index })
    }
}

impl WeightSource for SafetensorsWeights {
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn stored(&self, name: &str) -> Option<Format> {
        match self.index.get(name)?.2.dtype {
            Dtype::F16 => Some(Format::F16),
            Dtype::BF16 => Some(Format::Bf16),
            _ => None,
        }
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        let (i, data_start, info) = self
            .index
            .get(name)
            .ok_or_else(|| Error::input(format!("checkpoint has no tensor {name}")))?;
        let (path, map) = &self.maps[*i];
        let (from, to) = info.data_offsets;
        let data = &map[data_start + from..data_start + to];
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(Error::input(format!(
                    "{}: tensor {name} has dtype {other:?}; supported: F32, F16, BF16",
                    path.display()
                )))
            }
        };
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(data, &shape, kind)?.f_to_kind(Kind::Float)?)
    }
}

/// Writes named f32 tensors as one safetensors file (the export and the tests' checkpoints).
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let t = t
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let data = Vec::<f32>::try_from(&t.f_view([-1])?)?;
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        owned.push((name.clone(), shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Corrupt(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, &Some(meta), path)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `model.safetensors` with this header and `data_len` zero bytes of data, in a directory.
    fn dir_with(header: &serde_json::Value, data_len: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let text = header.to_string();
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend(text.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        dir
    }

    fn refused(header: serde_json::Value, data_len: usize) -> String {
        let dir = dir_with(&header, data_len);
        match SafetensorsWeights::open(dir.path()) {
            Ok(_) => panic!("accepted {header}"),
            Err(e) => e.to_string(),
        }
    }

    /// Headers from elsewhere that lie: offsets past the end, a shape that overflows or does
    /// not match its bytes, overlapping tensors, a header length past the file. One error each.
    #[test]
    fn hostile_safetensors_headers_are_refused() {
        use serde_json::json;
        let ok = json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}});
        let dir = dir_with(&ok, 16);
        let w = SafetensorsWeights::open(dir.path()).unwrap();
        assert_eq!(w.get("w").unwrap().size(), vec![2, 2]);
        let past = json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}});
        let err = refused(past, 8);
        assert!(
            err.contains("past the end") || err.contains("not a safetensors file"),
            "{err}"
        );
        let overflow = json!({"w": {"dtype": "F32", "shape": [1u64 << 40, 1u64 << 40], "data_offsets": [0, 16]}});
        assert!(refused(overflow, 16).contains("not a safetensors file"));
        let mismatch = json!({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}});
        assert!(refused(mismatch, 16).contains("not a safetensors file"));
        let overlap = json!({
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}});
        assert!(refused(overlap, 24).contains("not a safetensors file"));
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend(b"{}");
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let err = SafetensorsWeights::open(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
