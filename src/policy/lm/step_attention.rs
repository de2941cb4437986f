//! Attention of a decoding step (one query position per row) over the key/value cache, in f32 on
//! the CPU. Its cost is reading the cache: at batch 16 over a 430-token tool prompt, SmolLM2's
//! f32 keys and values are 470 MB a step, more than its weights. The rows of a batch share
//! their prompt's first tokens (a chat prompt's system message and tool list,
//! [`crate::policy::KvCache::prefill_shared`]), and every row's cache holds a copy of them; here
//! every row reads row 0's copy, which stays in the processor's caches, so a step reads the
//! shared part once instead of once per row. Rows and key/value heads are split over libtorch's
//! OpenMP workers.

/// Shapes of one step's attention: B rows, H query heads over K key/value heads (H a multiple of
/// K), E per head, the cache's capacity, the `s` positions in use and the first `shared` of them
/// the same in every row.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub h: usize,
    pub kv: usize,
    pub e: usize,
    pub cap: usize,
    pub s: usize,
    pub shared: usize,
}

use super::vector::Isa;
use super::vector::{self, Kernels, Op};

/// A cache's keys or values, [B, K, cap, E], as stored: f32, or f16 bits
/// ([`vector::Kernels::narrow`]; a decoding step from packed weights keeps its cache in f16).
#[derive(Debug, Clone, Copy)]
pub enum Cached<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl<'a> Cached<'a> {
    fn len(self) -> usize {
        match self {
            Cached::F32(x) => x.len(),
            Cached::F16(x) => x.len(),
        }
    }

    /// The `buf.len()` values from `start`, in f32 (widened into `buf` when stored in f16).
    ///
    /// # Safety
    /// The CPU runs `K`'s instruction set.
    #[inline(always)]
    unsafe fn read<'b, K: Kernels>(self, start: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Cached::F32(x) => &x[start..start + buf.len()],
            Cached::F16(x) => {
                K::widen(&x[start..start + buf.len()], buf);
                buf
            }
        }
    }
}

/// softmax(q·kᵀ/√E, masked) · v for every row and query head: `q` [B, H, E], `k` and `v`
/// [B, K, cap, E] (positions 0..s used; 0..shared equal in every row), `mask` [B, s] (true: may
/// attend; each row attends to at least its own position). Returns [B, H, E]. Each cached key
/// and value is read once for the H/K query heads that share it. The arithmetic runs in
/// [`vector`]'s kernels for `isa` (one this CPU runs).
pub fn attend(isa: Isa, q: &[f32], k: Cached, v: Cached, mask: &[bool], sh: Shape) -> Vec<f32> {
    let Shape {
        b,
        h,
        kv,
        e,
        cap,
        s,
        shared,
    } = sh;
    assert!(q.len() == b * h * e && mask.len() == b * s && shared <= s && s <= cap);
    assert!(k.len() == b * kv * cap * e && v.len() == k.len() && h % kv == 0);
    let g = h / kv;
    let mut out = vec![0f32; b * h * e];
    let parts = crate::parallel::DisjointOut::new(&mut out);
    crate::parallel::for_each(b * kv, &|task| {
        let (row, head) = (task / kv, task % kv);
        let t = Task {
            queries: &q[(row * h + head * g) * e..][..g * e],
            k,
            v,
            mask: &mask[row * s..][..s],
            sh,
            row,
            head,
        };
        // SAFETY: row `row`, query heads head·g.., written by this task alone while `out`
        // lives.
        let o = unsafe { parts.part((row * h + head * g) * e, g * e) };
        vector::run(isa, (&t, o));
    });
    out
}

/// One row's attention for the query heads of one key/value head.
struct Task<'a> {
    /// [H/K, E].
    queries: &'a [f32],
    k: Cached<'a>,
    v: Cached<'a>,
    /// [s].
    mask: &'a [bool],
    sh: Shape,
    row: usize,
    head: usize,
}

impl Task<'_> {
    /// Writes the heads' outputs, [H/K, E], into `o`.
    ///
    /// # Safety
    /// The CPU runs `K`'s instruction set.
    #[inline(always)]
    unsafe fn run<K: Kernels>(&self, o: &mut [f32]) {
        let Shape {
            kv,
            e,
            cap,
            s,
            shared,
            ..
        } = self.sh;
        let scale = 1.0 / (e as f32).sqrt();
        // Where position j's key (or value) starts: row 0's for the shared positions.
        let at = |j: usize| {
            let r = if j < shared { 0 } else { self.row };
            ((r * kv + self.head) * cap + j) * e
        };
        let g = self.queries.len() / e;
        let mut buf = vec![0f32; e];
        // p[i][j]: query head i's score, then weight, of position j.
        let mut p = vec![f32::NEG_INFINITY; g * s];
        for j in (0..s).filter(|&j| self.mask[j]) {
            let key = self.k.read::<K>(at(j), &mut buf);
            for (i, query) in self.queries.chunks_exact(e).enumerate() {
                p[i * s + j] = K::dot(query, key) * scale;
            }
        }
        for p in p.chunks_exact_mut(s) {
            let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            for p in p.iter_mut() {
                *p -= max;
            }
            K::exp(p);
            let total: f32 = p.iter().sum();
            for p in p.iter_mut() {
                *p /= total;
            }
        }
        o.fill(0.0);
        for j in (0..s).filter(|&j| self.mask[j]) {
            let value = self.v.read::<K>(at(j), &mut buf);
            for (i, o) in o.chunks_exact_mut(e).enumerate() {
                K::axpy(o, p[i * s + j], value);
            }
        }
    }
}

impl Op for (&Task<'_>, &mut [f32]) {
    type Out = ();
    #[inline(always)]
    unsafe fn run<K: Kernels>(self) {
        self.0.run::<K>(self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// Against libtorch's attention, with left padding, grouped heads and a shared prefix (its
    /// copies in rows 1.. spoiled: they must not be read).
    #[test]
    fn step_attention_equals_libtorch_with_a_mask_grouped_heads_and_a_shared_prefix() {
        let (b, h, kv, e, cap, s, shared) = (3i64, 6i64, 2i64, 16i64, 12i64, 9i64, 4i64);
        let cpu = (Kind::Float, tch::Device::Cpu);
        let q = Tensor::randn([b, h, 1, e], cpu);
        let k = Tensor::randn([b, kv, cap, e], cpu);
        let v = Tensor::randn([b, kv, cap, e], cpu);
        for t in [&k, &v] {
            t.narrow(0, 1, b - 1)
                .narrow(2, 0, shared)
                .copy_(&t.narrow(0, 0, 1).narrow(2, 0, shared));
        }
        // Row 2 has two left-padding positions after the shared part; every row sees its own
        // last position.
        let mut m = vec![true; (b * s) as usize];
        m[(2 * s + shared) as usize] = false;
        m[(2 * s + shared + 1) as usize] = false;
        let mask = Tensor::from_slice(&m).view([b, 1, 1, s]);
        let g = h / kv;
        let flat = |t: &Tensor| Vec::<f32>::try_from(t.contiguous().view(-1)).unwrap();
        let n = |x: i64| x as usize;
        let shape = Shape {
            b: n(b),
            h: n(h),
            kv: n(kv),
            e: n(e),
            cap: n(cap),
            s: n(s),
            shared: n(shared),
        };
        // In f32, and in f16 against libtorch over the same f16 values.
        for half in [false, true] {
            let (k, v) = if half {
                let round = |t: &Tensor| t.to_kind(Kind::Half).to_kind(Kind::Float);
                (round(&k), round(&v))
            } else {
                (k.shallow_clone(), v.shallow_clone())
            };
            let want = Tensor::scaled_dot_product_attention(
                &q,
                &k.narrow(2, 0, s).repeat_interleave_self_int(g, 1, None),
                &v.narrow(2, 0, s).repeat_interleave_self_int(g, 1, None),
                Some(&mask),
                0.0,
                false,
                None,
                false,
            );
            let (kf, vf) = (k.copy(), v.copy());
            for t in [&kf, &vf] {
                let _ = t.narrow(0, 1, b - 1).narrow(2, 0, shared).fill_(f64::NAN);
            }
            let bits = |t: &Tensor| -> Vec<u16> {
                let h: Vec<i16> = t
                    .to_kind(Kind::Half)
                    .view_dtype(Kind::Int16)
                    .view(-1)
                    .try_into()
                    .unwrap();
                h.into_iter().map(|x| x as u16).collect()
            };
            let (kf32, vf32, kf16, vf16) = (flat(&kf), flat(&vf), bits(&kf), bits(&vf));
            let (kc, vc) = if half {
                (Cached::F16(&kf16), Cached::F16(&vf16))
            } else {
                (Cached::F32(&kf32), Cached::F32(&vf32))
            };
            let want = flat(&want);
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                if !isa.available() {
                    continue;
                }
                let got = attend(isa, &flat(&q), kc, vc, &m, shape);
                let d = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(d < 1e-5, "{} f16 {half}: max |Δ| {d}", isa.name());
            }
        }
    }
}
