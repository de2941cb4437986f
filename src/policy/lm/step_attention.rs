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

/// softmax(q·kᵀ/√E, masked) · v for every row and query head: `q` [B, H, E], `k` and `v`
/// [B, K, cap, E] (positions 0..s used; 0..shared equal in every row), `mask` [B, s] (true: may
/// attend; each row attends to at least its own position). Returns [B, H, E].
pub fn attend(q: &[f32], k: &[f32], v: &[f32], mask: &[bool], sh: Shape) -> Vec<f32> {
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
    let scale = 1.0 / (e as f32).sqrt();
    let mut out = vec![0f32; b * h * e];
    let parts = crate::parallel::DisjointOut::new(&mut out);
    crate::parallel::for_each(b * kv, &|task| {
        let (row, head) = (task / kv, task % kv);
        // Position j's key (or value) of this row and head: row 0's for the shared positions.
        let at = |j: usize| {
            let r = if j < shared { 0 } else { row };
            let start = ((r * kv + head) * cap + j) * e;
            start..start + e
        };
        let mask = &mask[row * s..][..s];
        let mut p = vec![0f32; s];
        for qh in head * g..(head + 1) * g {
            let query = &q[(row * h + qh) * e..][..e];
            let mut max = f32::NEG_INFINITY;
            for (j, p) in p.iter_mut().enumerate() {
                *p = if mask[j] {
                    dot(query, &k[at(j)]) * scale
                } else {
                    f32::NEG_INFINITY
                };
                max = max.max(*p);
            }
            let mut total = 0f32;
            for p in p.iter_mut() {
                *p = (*p - max).exp();
                total += *p;
            }
            // SAFETY: row `row`, query head `qh`: written by this task alone while `out` lives.
            let o = unsafe { parts.part((row * h + qh) * e, e) };
            o.fill(0.0);
            for (j, &p) in p.iter().enumerate() {
                if p != 0.0 {
                    let w = p / total;
                    for (o, &x) in o.iter_mut().zip(&v[at(j)]) {
                        *o += w * x;
                    }
                }
            }
        }
    });
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: the compiler keeps them in vector registers.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
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
        let flat = |t: &Tensor| Vec::<f32>::try_from(t.contiguous().view(-1)).unwrap();
        let (kf, vf) = (k.copy(), v.copy());
        for t in [&kf, &vf] {
            let _ = t.narrow(0, 1, b - 1).narrow(2, 0, shared).fill_(f64::NAN);
        }
        let n = |x: i64| x as usize;
        let got = attend(
            &flat(&q),
            &flat(&kf),
            &flat(&vf),
            &m,
            Shape {
                b: n(b),
                h: n(h),
                kv: n(kv),
                e: n(e),
                cap: n(cap),
                s: n(s),
                shared: n(shared),
            },
        );
        let want = flat(&want);
        let d = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(d < 1e-5, "max |Δ| {d}");
    }
}
