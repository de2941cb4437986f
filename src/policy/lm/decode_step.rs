//! A decoding step from packed weights ([`Lm::pack_for_decoding`]) in one pass of plain Rust over
//! each layer. At batch 16 a layer's tensors are a few thousand values, and the libtorch path
//! spent more time dispatching its forty-odd small operations per layer (norms, RoPE's halves,
//! casts, views, the cache's copies) than computing them. Here those run as loops over flat
//! buffers ([`vector`]'s `exp` for SiLU); the matrices go through the packed kernels
//! ([`packed::matmul_all`], several matrices that share an input in one call), the attention
//! through [`step_attention`]. LoRA's adapters, matrices left in f32 (a file's f32 tensors
//! under `file`), the embedding lookup and the output head ([`Lm::logits`], once a step) stay
//! libtorch calls.
//!
//! The cache holds keys and values in f16: after the weights, the cache is what a step reads
//! (at batch 16 and 176 positions, SmolLM2's f32 cache is 130 MB a step), and f16 halves it. A
//! prefill writes the cache through libtorch's f16 rounding and a step through
//! [`vector::narrow`]; both round to nearest even. Otherwise the numerics are the libtorch path's:
//! f32 arithmetic, Hugging Face's RMSNorm and RoPE.

use std::cell::Cell;

use tch::{Device, Kind, Tensor};

use super::step_attention::Cached;
use super::{packed, step_attention, values_mut, vector, Layer, Linear, Lm};
use crate::config::DecodeWeights;
use crate::policy::KvCache;

/// `x` [rows, k] through each of `layers` (which share that input): [rows, out] each, with
/// their biases and adapters. As in the libtorch path, the packed copies are read only when
/// every layer of the group has one (a file may store a layer's matrices in different types).
fn products(layers: &[&Linear], x: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let mut ys: Vec<Vec<f32>> = layers
        .iter()
        .map(|l| vec![0f32; rows * l.wt.size()[1] as usize])
        .collect();
    let packed: Option<Vec<&packed::PackedMatrix>> =
        layers.iter().map(|l| l.packed.as_ref()).collect();
    if let Some(mats) = &packed {
        let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(Vec::as_mut_slice).collect();
        packed::matmul_all(vector::Isa::best(), mats, x, rows, &mut outs);
    }
    // What libtorch computes: an f32 matrix, the adapters' x A B s.
    let k = x.len() / rows.max(1);
    let needs_libtorch = packed.is_none() || layers.iter().any(|l| l.lora.is_some());
    let xt = needs_libtorch.then(|| Tensor::from_slice(x).view([rows as i64, k as i64]));
    for (l, y) in layers.iter().zip(&mut ys) {
        let Some(xt) = &xt else {
            add_bias(l, y);
            continue;
        };
        let mut extra: Option<Tensor> = None;
        if packed.is_none() {
            extra = Some(xt.mm(&l.wt));
        }
        if let Some((a, b, s)) = &l.lora {
            let d = xt.mm(a).mm(b) * *s;
            extra = Some(match extra {
                Some(e) => e + d,
                None => d,
            });
        }
        if let Some(e) = extra {
            for (y, e) in y.iter_mut().zip(floats(&e)) {
                *y += e;
            }
        }
        add_bias(l, y);
    }
    ys
}

/// Adds `l`'s bias, if any, to each row of `y`.
fn add_bias(l: &Linear, y: &mut [f32]) {
    if let Some(b) = &l.b {
        let b = floats(b);
        for row in y.chunks_exact_mut(b.len()) {
            for (y, b) in row.iter_mut().zip(&b) {
                *y += b;
            }
        }
    }
}

/// Hugging Face's RMSNorm of each row of `x` ([rows, w.len()]; a row may be one head) times
/// `w`.
fn rms(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for (y, x) in y.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        let var = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
            *y = (x * inv) * w;
        }
    }
    y
}

/// Rotates every head of `x` ([heads, E], one row's) by `cs` = (cos, sin) of its position,
/// [E/2] each: Hugging Face's layout, where element i turns with element i + E/2.
fn rotate(x: &mut [f32], e: usize, (cos, sin): (&[f32], &[f32])) {
    let half = e / 2;
    for head in x.chunks_exact_mut(e) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// What every layer of one decoding step shares.
struct Step {
    /// The kernels' instruction set.
    isa: vector::Isa,
    rows: usize,
    shape: step_attention::Shape,
    /// [rows, s]: which cached positions each row attends to.
    mask: Vec<bool>,
    /// [rows, E/2]: the rotary angles' cosines and sines at each row's position.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Step {
    /// Row `r`'s (cos, sin).
    fn rope(&self, r: usize) -> (&[f32], &[f32]) {
        let half = self.shape.e / 2;
        (&self.cos[r * half..][..half], &self.sin[r * half..][..half])
    }
}

/// The values of a CPU f32 tensor (copied).
fn floats(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.contiguous().view([-1])).expect("f32 values")
}

thread_local! {
    /// Decoding steps [`Lm::decode_step`] took on this thread.
    static STEPS: Cell<usize> = const { Cell::new(0) };
}

/// How many decoding steps took the fused path on this thread (tests check that it ran).
pub fn fused_steps_taken() -> usize {
    STEPS.with(Cell::get)
}

impl Lm {
    /// Whether decoding steps take [`Lm::decode_step`] (and caches keep f16 keys and values):
    /// weights packed for decoding, on the CPU in f32.
    pub fn fused_steps(&self) -> bool {
        self.decode != DecodeWeights::F32
            && self.device == Device::Cpu
            && self.kind() == Kind::Float
    }

    /// One decoding step: `tokens` [B, 1] at `positions` [B, 1] through every layer, their keys
    /// and values written into `cache` at `cache.len`, under `mask` [B, 1, 1, len + 1].
    /// Returns the next-token logits [B, V]; None where it does not apply (f32 decoding,
    /// gradients, more than [`packed::MAX_ROWS`] rows, a cache not in f16), and the libtorch
    /// path runs instead.
    pub(super) fn decode_step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
        mask: &Tensor,
    ) -> Option<Tensor> {
        let (b, t) = tokens.size2().ok()?;
        let f16_cache =
            |c: &Tensor| c.device() == Device::Cpu && c.kind() == Kind::Half && c.is_contiguous();
        if t != 1
            || !self.fused_steps()
            || b as usize > packed::MAX_ROWS
            || !cache.k.iter().chain(&cache.v).all(f16_cache)
        {
            return None;
        }
        let x = self.embed(&tokens.reshape([-1]));
        if !super::decoding(&x) {
            return None;
        }
        let cfg = &self.cfg;
        let (rows, d, e) = (b as usize, cfg.hidden, cfg.head_dim);
        let (h, kv) = (cfg.heads, cfg.kv_heads);
        let eps = cfg.rms_eps as f32;
        let s = cache.len as usize + 1;
        let cap = cache.k[0].size()[2] as usize;
        let mask: Vec<bool> = Vec::try_from(mask.contiguous().view([-1])).ok()?;
        if mask.len() != rows * s || s > cap {
            return None;
        }
        let shape = step_attention::Shape {
            b: rows,
            h,
            kv,
            e,
            cap,
            s,
            shared: (cache.shared.max(0) as usize).min(s),
        };
        // (cos, sin) [rows, E/2] of each row's position, as the libtorch path computes them.
        let inv_freq = floats(&self.inv_freq);
        let positions: Vec<i64> = Vec::try_from(positions.contiguous().view([-1])).ok()?;
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|&p| inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let step = Step {
            isa: vector::Isa::best(),
            rows,
            shape,
            mask,
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
        };
        let mut x = floats(&x);
        for (i, layer) in self.layers.iter().enumerate() {
            self.attention_half(layer, &mut x, &step, cache, i);
            let Layer {
                mlp_norm,
                gate,
                up,
                down,
                ..
            } = layer;
            let hn = rms(&x, &floats(mlp_norm), eps);
            let [g, u]: [Vec<f32>; 2] = products(&[gate, up], &hn, rows)
                .try_into()
                .expect("two outputs");
            // silu(g) · u = g / (1 + e^−g) · u.
            let mut a: Vec<f32> = g.iter().map(|g| -g).collect();
            vector::exp(step.isa, &mut a);
            for ((a, g), u) in a.iter_mut().zip(&g).zip(&u) {
                *a = g / (1.0 + *a) * u;
            }
            let y = products(&[down], &a, rows).remove(0);
            for (x, y) in x.iter_mut().zip(&y) {
                *x += y;
            }
        }
        let logits = self.logits(&Tensor::from_slice(&x).view([b, d as i64]));
        STEPS.with(|n| n.set(n.get() + 1));
        Some(logits)
    }

    /// The attention half of layer `i` for a decoding step, its residual added into `x`
    /// [rows, D].
    fn attention_half(
        &self,
        layer: &Layer,
        x: &mut [f32],
        step: &Step,
        cache: &mut KvCache,
        i: usize,
    ) {
        let (e, eps) = (self.cfg.head_dim, self.cfg.rms_eps as f32);
        let (rows, shape) = (step.rows, step.shape);
        let (h, kv, cap) = (shape.h, shape.kv, shape.cap);
        let hn = rms(x, &floats(&layer.attn_norm), eps);
        let [mut q, mut k, v]: [Vec<f32>; 3] = products(&[&layer.q, &layer.k, &layer.v], &hn, rows)
            .try_into()
            .expect("three outputs");
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = rms(&q, &floats(qn), eps);
            k = rms(&k, &floats(kn), eps);
        }
        for r in 0..rows {
            rotate(&mut q[r * h * e..][..h * e], e, step.rope(r));
            rotate(&mut k[r * kv * e..][..kv * e], e, step.rope(r));
        }
        // SAFETY: the cache's contiguous f16 tensors (checked by the caller), alive and used
        // by this step alone; written here, then only read.
        let (kc, vc): (&mut [u16], &mut [u16]) =
            unsafe { (values_mut(&mut cache.k[i]), values_mut(&mut cache.v[i])) };
        let start = shape.s - 1;
        for r in 0..rows {
            for head in 0..kv {
                let at = ((r * kv + head) * cap + start) * e;
                let from = (r * kv + head) * e;
                vector::narrow(step.isa, &k[from..from + e], &mut kc[at..at + e]);
                vector::narrow(step.isa, &v[from..from + e], &mut vc[at..at + e]);
            }
        }
        let (kc, vc) = (Cached::F16(kc), Cached::F16(vc));
        let att = step_attention::attend(step.isa, &q, kc, vc, &step.mask, shape);
        let o = products(&[&layer.o], &att, rows).remove(0);
        for (x, o) in x.iter_mut().zip(&o) {
            *x += o;
        }
    }
}
