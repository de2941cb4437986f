//! Pretrained causal language models of the Llama family (Llama / SmolLM2 / TinyLlama, Qwen2 and
//! Qwen2.5, Qwen3) as sequence policies, with Hugging Face's numerics.
//!
//! Shapes: B rows, T positions, D = hidden size, H query heads, K key/value heads (H a multiple
//! of K), E = head size, V vocabulary. Each block is pre-norm: `x + attn(rms(x))`, then
//! `x + down(silu(gate(h)) · up(h))` with `h = rms(x)`. Queries and keys get rotary position
//! embeddings in Hugging Face's layout (the two halves of each head rotate together); a GGUF
//! file's permuted Q and K rows are put back in that layout on load ([`weights`]), so one RoPE
//! path serves both formats.
pub mod config;
mod decode_step;
pub use decode_step::fused_steps_taken;
pub mod export;
pub mod packed;
pub mod source;
pub mod step_attention;
pub mod vector;
pub mod weights;

use tch::nn;
use tch::{Device, Kind, Tensor};

pub use config::{Arch, LmConfig};
use packed::{Format, PackedMatrix};
pub use source::{load, resolve, ModelFiles};
use step_attention::Cached;

use crate::config::{DecodeWeights, LoraConfig};
use crate::error::{Error, Result};
use crate::policy::prefix::PrefixBatch;
use crate::policy::transformer::TokenScores;
use crate::policy::{KvCache, SequencePolicy};
use weights::WeightSource;

/// Rows of the output head computed at once when scoring: the [rows, V] logits of one chunk are
/// the largest transient tensor of a learner step.
const HEAD_CHUNK: i64 = 256;

/// A linear layer `y = x Wᵀ + b`, with an optional low-rank adapter `+ s · (x Aᵀ) Bᵀ`. The
/// weight is kept transposed, Wᵀ [in, out] contiguous: with the few rows of a decoding step,
/// libtorch's product with a row-major [in, out] operand ran 4–5× faster on this project's CPUs
/// than `linear` with the [out, in] one, which repacks the weight at every call.
#[derive(Debug)]
struct Linear {
    wt: Tensor,
    b: Option<Tensor>,
    /// (Aᵀ [in, r], Bᵀ [r, out], s = alpha / r)
    lora: Option<(Tensor, Tensor, f64)>,
    /// The format the weight is stored in in the model's file, if a packed one.
    stored: Option<Format>,
    /// A packed copy of the weight that decoding products of up to [`packed::MAX_ROWS`] rows
    /// read instead of `wt` ([`Lm::pack_for_decoding`]).
    packed: Option<PackedMatrix>,
}

/// Whether a product of `x` may read packed weights: no gradient can flow through it (autograd
/// is off, as in every decoding pass, and `x` needs none).
fn decoding(x: &Tensor) -> bool {
    // SAFETY: libtorch's thread-local grad mode, set and restored at once on this thread.
    let enabled = unsafe {
        let was = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(was);
        was != 0
    };
    !enabled && !x.requires_grad()
}

/// The values of a contiguous CPU tensor whose elements are `T`s (f16 read as `u16` bits).
///
/// # Safety
/// `T` is the tensor's element type, the tensor is contiguous and outlives the slice, and
/// nothing writes it while the slice is used.
unsafe fn values<T>(t: &Tensor) -> &[T] {
    if t.numel() == 0 {
        return &[]; // (an empty tensor's data pointer may be null)
    }
    std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel())
}

/// [`values`], writable.
///
/// # Safety
/// As [`values`], and nothing else reads the tensor while the slice is used.
unsafe fn values_mut<T>(t: &mut Tensor) -> &mut [T] {
    if t.numel() == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel())
}

/// `x` [rows, k] (f32 on the CPU) times each packed `w` [k, n]: [rows, n] each, in one call.
fn packed_products(ws: &[&PackedMatrix], x: &Tensor) -> Vec<Tensor> {
    let rows = x.size()[0] as usize;
    let x = x.to_kind(Kind::Float).contiguous();
    let mut ys: Vec<Tensor> = ws
        .iter()
        .map(|w| Tensor::empty([rows as i64, w.n as i64], (Kind::Float, Device::Cpu)))
        .collect();
    if rows == 0 {
        return ys;
    }
    assert_eq!(
        x.size(),
        [rows as i64, ws[0].k as i64],
        "inputs of the packed matrices' size"
    );
    // SAFETY: x is a contiguous f32 CPU tensor of rows·k values and each y a fresh one of
    // rows·n, all alive for the call; nothing else reads the ys meanwhile.
    let xs = unsafe { values::<f32>(&x) };
    let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| unsafe { values_mut(y) }).collect();
    packed::matmul_all(vector::Isa::best(), ws, xs, rows, &mut outs);
    ys
}

/// `x` [.., in] through each of `layers`, which share that input (a layer's query, key and
/// value; gate and up): [.., out] each. The leading dimensions are folded into one explicitly:
/// left to itself, `matmul` of a 3-D input by a frozen weight may broadcast the weight into a
/// batched product instead (three times slower decoding with LoRA's frozen base). When every
/// layer has a packed copy and there are at most [`packed::MAX_ROWS`] rows, one packed call
/// computes them all.
fn forward_all<const N: usize>(layers: [&Linear; N], x: &Tensor) -> [Tensor; N] {
    let kind = layers[0].wt.kind();
    let x = if x.kind() == kind {
        x.shallow_clone()
    } else {
        x.to_kind(kind)
    };
    let shape = x.size();
    let inp = *shape.last().expect("an input with features");
    let x = x.reshape([-1, inp]);
    let rows = x.size()[0] as usize;
    let packed: Option<Vec<&PackedMatrix>> = (rows <= packed::MAX_ROWS && decoding(&x))
        .then(|| layers.iter().map(|l| l.packed.as_ref()).collect())
        .flatten();
    let mut ys = match packed {
        Some(ws) => packed_products(&ws, &x).into_iter(),
        None => layers
            .iter()
            .map(|l| x.mm(&l.wt))
            .collect::<Vec<_>>()
            .into_iter(),
    };
    layers.map(|l| {
        let mut y = ys.next().expect("one output per layer");
        if let Some(b) = &l.b {
            y += b;
        }
        if let Some((a, b, s)) = &l.lora {
            y += x.mm(a).mm(b) * *s;
        }
        let mut shape = shape.clone();
        *shape.last_mut().expect("an input with features") = l.wt.size()[1];
        y.view(shape.as_slice())
    })
}

impl Linear {
    /// `x` [.., in] → [.., out] ([`forward_all`] of one layer).
    fn forward(&self, x: &Tensor) -> Tensor {
        let [y] = forward_all([self], x);
        y
    }

    /// W + s · B A in Hugging Face's [out, in] layout: the weight with the adapter merged.
    fn merged(&self) -> Tensor {
        let wt = match &self.lora {
            Some((a, b, s)) => &self.wt + a.matmul(b) * *s,
            None => self.wt.shallow_clone(),
        };
        wt.tr().contiguous()
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    mlp_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    /// The linear maps with their Hugging Face module names (under `model.layers.N.`).
    fn linears(&self) -> [(&'static str, &Linear); 7] {
        [
            ("self_attn.q_proj", &self.q),
            ("self_attn.k_proj", &self.k),
            ("self_attn.v_proj", &self.v),
            ("self_attn.o_proj", &self.o),
            ("mlp.gate_proj", &self.gate),
            ("mlp.up_proj", &self.up),
            ("mlp.down_proj", &self.down),
        ]
    }

    /// The linear maps, in [`Layer::linears`]' order.
    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

/// A loaded model. Its tensors are variables of the `VarStore` it was built in, under their
/// Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, …; adapters add `.lora_A` and
/// `.lora_B` beside the weight they adapt). Matrices are stored transposed ([in, out]; the
/// embedding [D, V]); [`Lm::merged_tensors`] gives Hugging Face's layout back.
#[derive(Debug)]
pub struct Lm {
    pub cfg: LmConfig,
    /// The embedding transposed, [D, V]: a token's vector is a column, and a tied head is a
    /// product with it (see [`Linear`] on why transposed).
    embed_t: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// An untied head, transposed: [D, V].
    head_t: Option<Tensor>,
    /// [E/2] f32 rotary frequencies (Llama 3's scaling applied).
    inv_freq: Tensor,
    /// Whether the base weights are trained (false with LoRA: only the adapters are).
    pub full: bool,
    device: Device,
    /// What decoding reads ([`Lm::pack_for_decoding`]).
    decode: DecodeWeights,
    /// The head's (or tied embedding's) stored format and packed copy.
    head_stored: Option<Format>,
    head_packed: Option<PackedMatrix>,
}

/// Registers `tensor` under the dotted Hugging Face `name` in `root`.
fn add(root: &nn::Path, name: &str, tensor: Tensor, trainable: bool) -> Tensor {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().expect("a name");
    let mut p = root.clone();
    for part in parts {
        p = &p / part;
    }
    p.add(last, tensor, trainable)
}

impl Lm {
    /// Builds the model from `src` in `root` (on the store's device, weights of `kind`: f32 by
    /// default, bf16 for decoding on CUDA). With `lora`, the base weights are frozen and the
    /// adapted layers get trainable A (random) and B (zero) matrices, so the adapted model starts
    /// equal to the base one.
    pub fn new(
        root: &nn::Path,
        cfg: &LmConfig,
        src: &dyn WeightSource,
        kind: Kind,
        lora: Option<&LoraConfig>,
    ) -> Result<Self> {
        let device = root.device();
        let full = lora.is_none();
        let load = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = src.get(name)?;
            if t.size() != shape {
                return Err(Error::input(format!(
                    "tensor {name} has shape {:?}, the architecture needs {shape:?}",
                    t.size()
                )));
            }
            // Matrices are kept transposed (see `Linear`).
            let t = if t.dim() == 2 { t.f_tr()? } else { t };
            let t = t.f_to_kind(kind)?.f_to_device(device)?.f_contiguous()?;
            Ok(add(root, name, t, full))
        };
        let (d, e) = (cfg.hidden as i64, cfg.head_dim as i64);
        let (h, kv, f, v) = (
            cfg.heads as i64,
            cfg.kv_heads as i64,
            cfg.ffn as i64,
            cfg.vocab as i64,
        );
        let linear =
            |prefix: &str, out: i64, inp: i64, bias: bool, module: &str| -> Result<Linear> {
                let w = load(&format!("{prefix}.weight"), &[out, inp])?;
                let b = if bias {
                    Some(load(&format!("{prefix}.bias"), &[out])?)
                } else {
                    None
                };
                let lora = match lora {
                    Some(l) if l.targets.iter().any(|t| t == module) => {
                        let r = l.rank as i64;
                        let bound = 1.0 / (inp as f64).sqrt();
                        // Registered under dotted names like the base weights.
                        let a_t = Tensor::f_empty([inp, r], (Kind::Float, device))?
                            .f_uniform_(-bound, bound)?
                            .f_to_kind(kind)?;
                        let b_t = Tensor::f_zeros([r, out], (kind, device))?;
                        let a = add(root, &format!("{prefix}.lora_A"), a_t, true);
                        let b = add(root, &format!("{prefix}.lora_B"), b_t, true);
                        Some((a, b, l.alpha / l.rank as f64))
                    }
                    _ => None,
                };
                let stored = src.stored(&format!("{prefix}.weight"));
                Ok(Linear {
                    wt: w,
                    b,
                    lora,
                    stored,
                    packed: None,
                })
            };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let norm = |n: &str, size: i64| load(&format!("{p}.{n}.weight"), &[size]);
            layers.push(Layer {
                attn_norm: norm("input_layernorm", d)?,
                q: linear(
                    &format!("{p}.self_attn.q_proj"),
                    h * e,
                    d,
                    cfg.qkv_bias,
                    "q_proj",
                )?,
                k: linear(
                    &format!("{p}.self_attn.k_proj"),
                    kv * e,
                    d,
                    cfg.qkv_bias,
                    "k_proj",
                )?,
                v: linear(
                    &format!("{p}.self_attn.v_proj"),
                    kv * e,
                    d,
                    cfg.qkv_bias,
                    "v_proj",
                )?,
                o: linear(&format!("{p}.self_attn.o_proj"), d, h * e, false, "o_proj")?,
                q_norm: if cfg.qk_norm {
                    Some(norm("self_attn.q_norm", e)?)
                } else {
                    None
                },
                k_norm: if cfg.qk_norm {
                    Some(norm("self_attn.k_norm", e)?)
                } else {
                    None
                },
                mlp_norm: norm("post_attention_layernorm", d)?,
                gate: linear(&format!("{p}.mlp.gate_proj"), f, d, false, "gate_proj")?,
                up: linear(&format!("{p}.mlp.up_proj"), f, d, false, "up_proj")?,
                down: linear(&format!("{p}.mlp.down_proj"), d, f, false, "down_proj")?,
            });
        }
        let embed_t = load("model.embed_tokens.weight", &[v, d])?;
        let head_t = if cfg.tied || !src.has("lm_head.weight") {
            None
        } else {
            Some(load("lm_head.weight", &[v, d])?)
        };
        let head_stored = src.stored(if head_t.is_some() {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        });
        let norm = load("model.norm.weight", &[d])?;
        let inv_freq = rope_frequencies(cfg, src)?.to_device(device);
        Ok(Lm {
            cfg: cfg.clone(),
            embed_t,
            layers,
            norm,
            head_t,
            inv_freq,
            full,
            device,
            decode: DecodeWeights::F32,
            head_stored,
            head_packed: None,
        })
    }

    /// Decodes from packed copies of the matrices (`how`; f32 drops them): every product of up
    /// to [`packed::MAX_ROWS`] rows (a decoding step, a prompt's last position) reads them
    /// instead of the f32 weights, which stay for longer products and for training. With
    /// `file`, each matrix takes its type in the model's file (f32 ones stay f32). Only on the
    /// CPU, with f32 weights.
    pub fn pack_for_decoding(&mut self, how: DecodeWeights) -> Result<()> {
        if how != DecodeWeights::F32 && (self.device != Device::Cpu || self.kind() != Kind::Float) {
            return Err(Error::input(format!(
                "policy.decode_weights = \"{}\" decodes on the CPU from f32 weights; this model \
                 is on {:?} in {:?}",
                how.name(),
                self.device,
                self.kind()
            )));
        }
        self.decode = how;
        self.repack()
    }

    /// Packs the decoding copies again from the f32 weights (after a snapshot changed them).
    pub fn repack(&mut self) -> Result<()> {
        let how = self.decode;
        let format = |stored: Option<Format>| match how {
            DecodeWeights::F32 => None,
            DecodeWeights::Bf16 => Some(Format::Bf16),
            DecodeWeights::Q8_0 => Some(Format::Q8_0),
            DecodeWeights::File => stored,
        };
        let pack = |w: &Tensor, format: Option<Format>| -> Result<Option<PackedMatrix>> {
            let Some(format) = format else {
                return Ok(None);
            };
            let (k, n) = w.size2()?;
            let w = w.f_contiguous()?;
            // SAFETY: an f32 tensor on the CPU (pack_for_decoding checks both), contiguous,
            // only read while it lives here.
            let data = unsafe { values::<f32>(&w) };
            Ok(Some(PackedMatrix::pack(
                format, data, k as usize, n as usize,
            )))
        };
        for layer in &mut self.layers {
            for l in layer.linears_mut() {
                l.packed = pack(&l.wt, format(l.stored))?;
            }
        }
        let head = self.head_t.as_ref().unwrap_or(&self.embed_t);
        self.head_packed = pack(head, format(self.head_stored))?;
        Ok(())
    }

    /// The bytes of the matrices a decoding step reads (packed or f32).
    pub fn decode_bytes(&self) -> usize {
        let bytes = |packed: &Option<PackedMatrix>, w: &Tensor| {
            packed
                .as_ref()
                .map_or_else(|| w.numel() * 4, PackedMatrix::bytes)
        };
        let head = self.head_t.as_ref().unwrap_or(&self.embed_t);
        self.layers
            .iter()
            .flat_map(|layer| layer.linears())
            .map(|(_, l)| bytes(&l.packed, &l.wt))
            .sum::<usize>()
            + bytes(&self.head_packed, head)
    }

    /// After new weights were copied in: the packed copies follow when the base trains (with
    /// LoRA it is frozen and the adapters are applied beside the packed product).
    pub fn weights_changed(&mut self) -> Result<()> {
        if self.full && self.decode != DecodeWeights::F32 {
            self.repack()?;
        }
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The kind of the weights (f32, or bf16 for decoding).
    pub fn kind(&self) -> Kind {
        self.embed_t.kind()
    }

    /// Embeddings [N, D] of `tokens` [N].
    fn embed(&self, tokens: &Tensor) -> Tensor {
        self.embed_t.index_select(1, tokens).tr()
    }

    /// Hugging Face's RMSNorm: in f32, then back to the input's kind, times the weight.
    fn rms(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let y = xf * (var + self.cfg.rms_eps).rsqrt();
        y.to_kind(w.kind()) * w
    }

    /// cos and sin [.., E] for `positions` [..] (int64), in f32.
    fn rope(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    /// Rotates `x` [.., heads, E] by (cos, sin) [.., 1, E].
    fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let e = x.size()[x.dim() - 1];
        let x1 = x.narrow(-1, 0, e / 2);
        let x2 = x.narrow(-1, e / 2, e / 2);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        let kind = x.kind();
        (x.to_kind(Kind::Float) * cos + rotated.to_kind(Kind::Float) * sin).to_kind(kind)
    }

    /// Queries [.., H, E] and keys and values [.., K, E] of `h` [.., D] (already normed), RoPE
    /// applied with `rope` = (cos, sin) [.., 1, E] of their positions ([`Lm::rope_of`]).
    fn qkv(&self, layer: &Layer, h: &Tensor, rope: &(Tensor, Tensor)) -> (Tensor, Tensor, Tensor) {
        let e = self.cfg.head_dim as i64;
        let heads = |t: Tensor| {
            let mut shape = t.size();
            let last = shape.pop().expect("a last axis");
            shape.extend([last / e, e]);
            t.view(shape.as_slice())
        };
        let [q, k, v] = forward_all([&layer.q, &layer.k, &layer.v], h);
        let (mut q, mut k, v) = (heads(q), heads(k), heads(v));
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = self.rms(&q, qn);
            k = self.rms(&k, kn);
        }
        let (cos, sin) = rope;
        (Self::rotate(&q, cos, sin), Self::rotate(&k, cos, sin), v)
    }

    /// (cos, sin) [.., 1, E] for `positions` [..]: computed once per pass, used by every layer.
    fn rope_of(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let (cos, sin) = self.rope(positions);
        (cos.unsqueeze(-2), sin.unsqueeze(-2))
    }

    /// The MLP half of a block, with its residual.
    fn mlp(&self, layer: &Layer, x: &Tensor) -> Tensor {
        let h = self.rms(x, &layer.mlp_norm);
        let [gate, up] = forward_all([&layer.gate, &layer.up], &h);
        let a = gate.silu() * up;
        x + layer.down.forward(&a).to_kind(x.kind())
    }

    /// Attention of `q` [B, H, T, E] over `k`, `v` [B, K, S, E], grouped-query. With an explicit
    /// mask [B, 1, T, S], the H/K query heads of a key/value head become extra query rows
    /// ([B, K, H/K · T, E]), so the cache is read in place; the causal (mask-free) paths repeat
    /// the keys and values instead.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Tensor {
        let g = (self.cfg.heads / self.cfg.kv_heads) as i64;
        if g == 1 {
            return Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None, false);
        }
        match mask {
            Some(mask) => {
                let (b, h, t, e) = q.size4().expect("[B, H, T, E]");
                let kv = h / g;
                let s = mask.size()[3];
                let q = q.reshape([b, kv, g * t, e]);
                let mask = mask.expand([b, g, t, s], false).reshape([b, 1, g * t, s]);
                // CUDA's attention kernels may return other strides than the CPU's: reshape,
                // not view.
                Tensor::scaled_dot_product_attention(&q, k, v, Some(&mask), 0.0, false, None, false)
                    .reshape([b, h, t, e])
            }
            None => {
                let k = k.repeat_interleave_self_int(g, 1, None);
                let v = v.repeat_interleave_self_int(g, 1, None);
                Tensor::scaled_dot_product_attention(
                    q,
                    &k,
                    &v,
                    None::<&Tensor>,
                    0.0,
                    causal,
                    None,
                    false,
                )
            }
        }
    }

    /// A decoding step's attention ([`step_attention`]) of `q` [B, 1, H, E] over the first `s`
    /// cached positions of `kc`, `vc` [B, K, cap, E] (the first `shared` the same in every row)
    /// under `mask` [B, 1, 1, s]: [B, H, 1, E]; None where it does not apply (several positions,
    /// a GPU, bf16, gradients, a strided cache).
    fn step_attention(
        q: &Tensor,
        kc: &Tensor,
        vc: &Tensor,
        mask: &Tensor,
        s: i64,
        shared: i64,
    ) -> Option<Tensor> {
        let (b, t, h, e) = q.size4().ok()?;
        let (_, kv, cap, _) = kc.size4().ok()?;
        let cpu = |x: &Tensor, kind: Kind| x.device() == Device::Cpu && x.kind() == kind;
        // The cache in f32, or in f16 ([`Lm::decode_step`]'s, here when that step declined).
        let cache_kind = kc.kind();
        if t != 1
            || !(cpu(q, Kind::Float) && cpu(kc, cache_kind) && cpu(vc, cache_kind))
            || !matches!(cache_kind, Kind::Float | Kind::Half)
            || q.requires_grad()
            || !(kc.is_contiguous() && vc.is_contiguous())
            || mask.size() != [b, 1, 1, s]
        {
            return None;
        }
        let q = q.contiguous();
        let mask: Vec<bool> = Vec::try_from(mask.contiguous().view([-1])).ok()?;
        let n = |x: i64| x as usize;
        let sh = step_attention::Shape {
            b: n(b),
            h: n(h),
            kv: n(kv),
            e: n(e),
            cap: n(cap),
            s: n(s),
            shared: n(shared.clamp(0, s)),
        };
        // SAFETY: contiguous CPU tensors of the kinds checked above, alive for the call and
        // only read.
        let (kc, vc) = unsafe {
            if cache_kind == Kind::Half {
                (Cached::F16(values(kc)), Cached::F16(values(vc)))
            } else {
                (Cached::F32(values(kc)), Cached::F32(values(vc)))
            }
        };
        // SAFETY: as above.
        let q = unsafe { values::<f32>(&q) };
        let out = step_attention::attend(vector::Isa::best(), q, kc, vc, &mask, sh);
        Some(Tensor::from_slice(&out).view([b, h, 1, e]))
    }

    /// The output head: logits [.., V] in f32 of final hidden states `x` [.., D] (normed here).
    fn logits(&self, x: &Tensor) -> Tensor {
        let h = self.rms(x, &self.norm);
        let w = self.head_t.as_ref().unwrap_or(&self.embed_t);
        // A 2-D product, whatever the leading dimensions (see `Linear::forward`).
        let mut shape = h.size();
        let d = *shape.last().expect("hidden states");
        *shape.last_mut().expect("hidden states") = w.size()[1];
        let h = h.reshape([-1, d]);
        let y = match &self.head_packed {
            Some(p) if h.size()[0] as usize <= packed::MAX_ROWS && decoding(&h) => {
                packed_products(&[p], &h).remove(0)
            }
            _ => h.mm(w),
        };
        y.view(shape.as_slice()).to_kind(Kind::Float)
    }

    /// Logits [B, T, V] of every position of `tokens` [B, T] (no padding): the plain reference
    /// the cached and shared paths are checked against.
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let (b, t) = tokens.size2().expect("[B, T]");
        let positions = Tensor::arange(t, (Kind::Int64, tokens.device()))
            .unsqueeze(0)
            .expand([b, t], false);
        let mut x = self.embed(&tokens.reshape([-1])).view([b, t, -1]);
        let rope = self.rope_of(&positions);
        for layer in &self.layers {
            let (q, k, v) = self.qkv(layer, &self.rms(&x, &layer.attn_norm), &rope);
            let att = self.attend(
                &q.transpose(1, 2),
                &k.transpose(1, 2),
                &v.transpose(1, 2),
                None,
                true,
            );
            let att = att.transpose(1, 2).contiguous().view([b, t, -1]);
            x = &x + layer.o.forward(&att).to_kind(x.kind());
            x = self.mlp(layer, &x);
        }
        self.logits(&x)
    }

    /// Runs `tokens` [B, T] at `positions` [B, T] through the blocks, writing their keys and
    /// values into `cache` at `cache.len`; `mask` [B, 1, T, S] (true = may attend). Returns the
    /// logits [B, V] of the last position.
    fn run_cached(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
        mask: &Tensor,
    ) -> Tensor {
        if let Some(logits) = self.decode_step(tokens, positions, cache, mask) {
            return logits;
        }
        let (b, t) = tokens.size2().expect("[B, T]");
        let (start, shared) = (cache.len, cache.shared);
        let mut x = self.embed(&tokens.reshape([-1])).view([b, t, -1]);
        let rope = self.rope_of(positions);
        for (i, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = self.qkv(layer, &self.rms(&x, &layer.attn_norm), &rope);
            let (kc, vc) = (&mut cache.k[i], &mut cache.v[i]);
            kc.narrow(2, start, t).copy_(&k.transpose(1, 2));
            vc.narrow(2, start, t).copy_(&v.transpose(1, 2));
            let att = match Self::step_attention(&q, kc, vc, mask, start + t, shared) {
                Some(att) => att,
                // An f16 cache ([`Lm::decode_step`]'s) is read in the queries' kind.
                None => self.attend(
                    &q.transpose(1, 2),
                    &kc.narrow(2, 0, start + t).to_kind(q.kind()),
                    &vc.narrow(2, 0, start + t).to_kind(q.kind()),
                    Some(mask),
                    false,
                ),
            };
            let att = att.transpose(1, 2).contiguous().view([b, t, -1]);
            x = &x + layer.o.forward(&att).to_kind(x.kind());
            x = self.mlp(layer, &x);
        }
        self.logits(&x.narrow(1, t - 1, 1)).squeeze_dim(1)
    }

    /// log π of every policy-written token of a [`PrefixBatch`], each distinct prefix computed
    /// once: the per-token layers see each node once and attention lays the nodes out as the
    /// padded rows, the rows' common trunk attending once. The output head and its log-softmax over V run only at the nodes that
    /// predict a policy-written token, [`HEAD_CHUNK`] rows at a time.
    pub fn score_prefixes(&self, batch: &PrefixBatch, device: Device) -> Result<TokenScores> {
        let index = |v: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?.f_to_device(self.device)?)
        };
        let (b, w) = (batch.rows as i64, batch.width as i64);
        let slots = index(&batch.slot_node)?;
        let positions = index(&batch.node_pos)?;
        // The trunk: the leading slots every row shares (a chat prompt's system message and tool
        // list). Its queries run once, as one row; the other slots' queries run per row against
        // the row's keys. Each node's output is read from its first slot, remapped into
        // [trunk slots | rows × rest].
        let (bu, wu) = (batch.rows, batch.width);
        let trunk = (0..wu)
            .take_while(|&i| (1..bu).all(|r| batch.slot_node[r * wu + i] == batch.slot_node[i]))
            .count() as i64;
        let rest = w - trunk;
        let reps: Vec<i64> = batch
            .node_slot
            .iter()
            .map(|&slot| {
                let (r, i) = (slot / w, slot % w);
                if i < trunk {
                    i
                } else {
                    trunk + r * rest + (i - trunk)
                }
            })
            .collect();
        let reps = index(&reps)?;
        let rest_mask = (trunk > 0 && rest > 0).then(|| {
            // The query at slot trunk + j sees the keys at slots ≤ trunk + j.
            let q = Tensor::arange_start(trunk, w, (Kind::Int64, self.device)).view([rest, 1]);
            let k = Tensor::arange(w, (Kind::Int64, self.device)).view([1, w]);
            k.le_tensor(&q).view([1, 1, rest, w])
        });
        let mut x = self.embed(&index(&batch.node_token)?);
        let rope = self.rope_of(&positions);
        for layer in &self.layers {
            let (q, k, v) = self.qkv(layer, &self.rms(&x, &layer.attn_norm), &rope);
            let rows = |t: &Tensor| {
                let s = t.size();
                t.index_select(0, &slots)
                    .view([b, w, s[1], s[2]])
                    .transpose(1, 2)
            };
            let (q, k, v) = (rows(&q), rows(&k), rows(&v));
            let flat = |t: Tensor, n: i64| t.transpose(1, 2).contiguous().view([n, -1]);
            let att = match &rest_mask {
                None => flat(self.attend(&q, &k, &v, None, true), b * w),
                Some(mask) => {
                    let head = |t: &Tensor| t.narrow(0, 0, 1).narrow(2, 0, trunk);
                    let shared = self.attend(&head(&q), &head(&k), &head(&v), None, true);
                    let own = self.attend(&q.narrow(2, trunk, rest), &k, &v, Some(mask), false);
                    Tensor::cat(&[flat(shared, trunk), flat(own, b * rest)], 0)
                }
            };
            let att = att.index_select(0, &reps);
            x = &x + layer.o.forward(&att).to_kind(x.kind());
            x = self.mlp(layer, &x);
        }
        let heads = x.f_index_select(0, &index(&batch.head_nodes)?)?;
        let m = heads.size()[0];
        let mut parts = Vec::new();
        let mut entropy_sum = 0.0;
        let uses = Tensor::f_from_slice(&batch.head_uses)?.f_to_device(self.device)?;
        let mut start = 0;
        while start < m {
            let n = HEAD_CHUNK.min(m - start);
            let logp = self
                .logits(&heads.narrow(0, start, n))
                .f_log_softmax(-1, Kind::Float)?;
            entropy_sum += tch::no_grad(|| -> Result<f64> {
                let per_row = (logp.exp() * &logp).f_sum_dim_intlist(-1, false, Kind::Float)?;
                Ok(-(per_row * uses.narrow(0, start, n))
                    .f_sum(Kind::Double)?
                    .double_value(&[]))
            })?;
            parts.push(logp);
            start += n;
        }
        let logp = Tensor::f_cat(&parts, 0)?;
        let vocab = self.cfg.vocab as i64;
        let picked: Vec<i64> = batch
            .slot_head
            .iter()
            .zip(&batch.slot_target)
            .map(|(&h, &t)| h * vocab + t)
            .collect();
        let mask = Tensor::f_from_slice(&batch.mask)?
            .f_view([b, w])?
            .f_to_device(self.device)?;
        let token_logp = logp
            .f_view([-1])?
            .f_index_select(0, &index(&picked)?)?
            .f_view([b, w])?
            * &mask;
        let n_uses: f64 = batch.head_uses.iter().map(|&u| u as f64).sum();
        Ok(TokenScores {
            token_logp: token_logp.f_to_device(device)?,
            mask: mask.f_to_device(device)?,
            entropy: entropy_sum / n_uses.max(1.0),
        })
    }

    /// Every tensor under its Hugging Face name with adapters merged into their weights: what
    /// an export writes. A tied head is not repeated.
    pub fn merged_tensors(&self) -> std::collections::BTreeMap<String, Tensor> {
        let mut out = std::collections::BTreeMap::new();
        out.insert(
            "model.embed_tokens.weight".into(),
            self.embed_t.tr().contiguous(),
        );
        out.insert("model.norm.weight".into(), self.norm.shallow_clone());
        if let Some(h) = &self.head_t {
            out.insert("lm_head.weight".into(), h.tr().contiguous());
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.insert(
                format!("{p}.input_layernorm.weight"),
                l.attn_norm.shallow_clone(),
            );
            out.insert(
                format!("{p}.post_attention_layernorm.weight"),
                l.mlp_norm.shallow_clone(),
            );
            for (name, lin) in l.linears() {
                out.insert(format!("{p}.{name}.weight"), lin.merged());
                if let Some(b) = &lin.b {
                    out.insert(format!("{p}.{name}.bias"), b.shallow_clone());
                }
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                out.insert(format!("{p}.self_attn.q_norm.weight"), qn.shallow_clone());
                out.insert(format!("{p}.self_attn.k_norm.weight"), kn.shallow_clone());
            }
        }
        out
    }
}

/// RoPE's inverse frequencies [E/2] as Hugging Face computes them, with Llama 3's scaling from
/// the config or, in a GGUF file, from its `rope_freqs` factors.
fn rope_frequencies(cfg: &LmConfig, src: &dyn WeightSource) -> Result<Tensor> {
    let e = cfg.head_dim as i64;
    let exps = Tensor::arange_start_step(0, e, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float)
        / e as f64;
    let inv = Tensor::from(cfg.rope_theta as f32).pow(&exps).reciprocal();
    if let Some(s) = cfg.rope_llama3 {
        let old = s.original_max_position_embeddings;
        let low_wl = old / s.low_freq_factor;
        let high_wl = old / s.high_freq_factor;
        let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
        let scaled = inv.where_self(&wavelen.le(low_wl), &(&inv / s.factor));
        let smooth = (wavelen.reciprocal() * old - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        let smoothed = (smooth.ones_like() - &smooth) * &scaled / s.factor + &smooth * &scaled;
        let medium = wavelen.ge(high_wl).logical_and(&wavelen.le(low_wl));
        return Ok(smoothed.where_self(&medium, &scaled));
    }
    if src.has(ROPE_FREQS) {
        let freqs = src.get(ROPE_FREQS)?;
        if freqs.size() != inv.size() {
            return Err(Error::input(format!(
                "{ROPE_FREQS} has shape {:?}, expected {:?} (half the head size)",
                freqs.size(),
                inv.size()
            )));
        }
        return Ok(inv.f_div(&freqs.f_to_device(inv.device())?)?);
    }
    Ok(inv)
}

/// The GGUF tensor of Llama 3's per-frequency RoPE divisors, under the name [`weights`] maps.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

impl SequencePolicy for Lm {
    type Cache = KvCache;

    fn vocab_size(&self) -> usize {
        self.cfg.vocab
    }

    fn context_len(&self) -> usize {
        self.cfg.max_positions
    }

    fn prefill(&self, prompts: &Tensor, valid: &Tensor, capacity: usize) -> (KvCache, Tensor) {
        self.prefill_shared(prompts, valid, 0, capacity)
    }

    fn prefill_shared(
        &self,
        prompts: &Tensor,
        valid: &Tensor,
        shared: usize,
        capacity: usize,
    ) -> (KvCache, Tensor) {
        let (kv, e) = (self.cfg.kv_heads as i64, self.cfg.head_dim as i64);
        // Decoding steps from packed weights keep the keys and values in f16.
        let kind = if self.fused_steps() {
            Kind::Half
        } else {
            self.kind()
        };
        KvCache::for_prompts(self.layers.len(), valid, capacity, kv, e, kind).prefill_shared(
            prompts,
            valid,
            shared,
            |t, p, c, m| self.run_cached(t, p, c, m),
        )
    }

    fn step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        real: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        cache.step(tokens, positions, real, |t, p, c, m| {
            self.run_cached(t, p, c, m)
        })
    }

    fn score_prefixes(&self, batch: &PrefixBatch, device: Device) -> Result<TokenScores> {
        Lm::score_prefixes(self, batch, device)
    }
}
