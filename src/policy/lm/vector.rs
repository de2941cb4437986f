//! The f32 arithmetic of a decoding step outside the matrix products, in vector registers: dot
//! products and `y += w·x` over a head's E values (keys and values read from f32 or f16), the
//! f16 conversions of the key/value cache (F16C, or ggml's scalar ones, rounding as libtorch's),
//! and `exp` over a slice (softmax's and SiLU's). Compiled three times, for AVX-512, for AVX2 with
//! FMA and F16C, and portably; [`Isa::best`] picks one at run time (`ASYMRE_KERNELS` lowers
//! it, as for the products).
//!
//! The vector `exp` is Cephes' single-precision one: the argument reduced by n·ln 2, a degree-6
//! polynomial, then 2ⁿ as two powers of two put in exponents (so that n = 128 does not
//! overflow); within 2 ulp of the exact value over f32's range, 0 below −87.3 (where the exact
//! value is subnormal), +∞ above 88.72, NaN kept. The portable path calls the standard
//! library's `exp`.

/// The instruction sets the kernels (these and the packed products) are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The best this CPU runs, lowered by `ASYMRE_KERNELS` (`portable`, `avx2`, `avx512`).
    pub fn best() -> Isa {
        let cap = match std::env::var("ASYMRE_KERNELS").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .find(|i| *i <= cap && i.available())
            .unwrap_or(Isa::Portable)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// One instruction set's kernels; every function requires that set.
pub trait Kernels {
    /// Σ a·b (equal lengths).
    ///
    /// # Safety
    /// The CPU runs this instruction set.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
    /// y += w·x (equal lengths).
    ///
    /// # Safety
    /// As [`Kernels::dot`].
    unsafe fn axpy(y: &mut [f32], w: f32, x: &[f32]);
    /// f16 bits to f32 (equal lengths).
    ///
    /// # Safety
    /// As [`Kernels::dot`].
    unsafe fn widen(src: &[u16], dst: &mut [f32]);
    /// f32 to f16 bits, rounded to nearest even (beyond f16's range, ±∞), as libtorch rounds
    /// (equal lengths).
    ///
    /// # Safety
    /// As [`Kernels::dot`].
    unsafe fn narrow(src: &[f32], dst: &mut [u16]);
    /// x ← exp(x).
    ///
    /// # Safety
    /// As [`Kernels::dot`].
    unsafe fn exp(x: &mut [f32]);
}

pub struct Portable;

impl Kernels for Portable {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
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

    #[inline(always)]
    unsafe fn axpy(y: &mut [f32], w: f32, x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += w * x;
        }
    }

    #[inline(always)]
    unsafe fn widen(src: &[u16], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = crate::formats::gguf::f16_to_f32(s);
        }
    }

    #[inline(always)]
    unsafe fn narrow(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = crate::formats::gguf::f32_to_f16(s);
        }
    }

    #[inline(always)]
    unsafe fn exp(x: &mut [f32]) {
        for x in x {
            *x = x.exp();
        }
    }
}

/// Cephes' expf constants.
/// ln of f32's largest value: above it exp overflows.
const EXP_HI: f32 = 88.722_84;
const EXP_LO: f32 = -87.336_54;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Kernels, Portable, EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO, LOG2E};

    pub struct Avx2;
    pub struct Avx512;

    impl Kernels for Avx2 {
        #[inline(always)]
        unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len()) / 8 * 8;
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= n {
                s0 = _mm256_fmadd_ps(ld8(a, i), ld8(b, i), s0);
                s1 = _mm256_fmadd_ps(ld8(a, i + 8), ld8(b, i + 8), s1);
                i += 16;
            }
            if i < n {
                s0 = _mm256_fmadd_ps(ld8(a, i), ld8(b, i), s0);
            }
            let s = _mm256_add_ps(s0, s1);
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s) + Portable::dot(&a[n..], &b[n..])
        }

        #[inline(always)]
        unsafe fn axpy(y: &mut [f32], w: f32, x: &[f32]) {
            let n = y.len().min(x.len()) / 8 * 8;
            let wv = _mm256_set1_ps(w);
            for i in (0..n).step_by(8) {
                let p = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(wv, ld8(x, i), _mm256_loadu_ps(p)));
            }
            Portable::axpy(&mut y[n..], w, &x[n..]);
        }

        #[inline(always)]
        unsafe fn widen(src: &[u16], dst: &mut [f32]) {
            let n = src.len().min(dst.len()) / 8 * 8;
            for i in (0..n).step_by(8) {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            Portable::widen(&src[n..], &mut dst[n..]);
        }

        #[inline(always)]
        unsafe fn narrow(src: &[f32], dst: &mut [u16]) {
            let n = src.len().min(dst.len()) / 8 * 8;
            for i in (0..n).step_by(8) {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(ld8(src, i));
                _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            }
            Portable::narrow(&src[n..], &mut dst[n..]);
        }

        #[inline(always)]
        unsafe fn exp(x: &mut [f32]) {
            let n = x.len() / 8 * 8;
            let c = |v: f32| _mm256_set1_ps(v);
            for i in (0..n).step_by(8) {
                let p = x.as_mut_ptr().add(i);
                let v = _mm256_loadu_ps(p);
                // max/min return their second operand when either is NaN: NaN goes through.
                let xc = _mm256_min_ps(c(EXP_HI), _mm256_max_ps(c(EXP_LO), v));
                let n = _mm256_round_ps(
                    _mm256_mul_ps(xc, c(LOG2E)),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                let r = _mm256_fnmadd_ps(n, c(LN2_HI), xc);
                let r = _mm256_fnmadd_ps(n, c(LN2_LO), r);
                let mut y = c(EXP_POLY[0]);
                for &k in &EXP_POLY[1..] {
                    y = _mm256_fmadd_ps(y, r, c(k));
                }
                let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, c(1.0)));
                // 2ⁿ = 2^(n>>1) · 2^(n − n>>1), each a normal f32 for n in −126..=128.
                let n = _mm256_cvtps_epi32(n);
                let n1 = _mm256_srai_epi32(n, 1);
                let pow = |k: __m256i| {
                    _mm256_castsi256_ps(_mm256_slli_epi32(
                        _mm256_add_epi32(k, _mm256_set1_epi32(127)),
                        23,
                    ))
                };
                let y = _mm256_mul_ps(_mm256_mul_ps(y, pow(n1)), pow(_mm256_sub_epi32(n, n1)));
                // Below the range: 0; above it: +∞.
                let y = _mm256_andnot_ps(_mm256_cmp_ps(v, c(EXP_LO), _CMP_LT_OQ), y);
                let y =
                    _mm256_blendv_ps(y, c(f32::INFINITY), _mm256_cmp_ps(v, c(EXP_HI), _CMP_GT_OQ));
                _mm256_storeu_ps(p, y);
            }
            Portable::exp(&mut x[n..]);
        }
    }

    impl Kernels for Avx512 {
        #[inline(always)]
        unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len()) / 16 * 16;
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            while i + 32 <= n {
                s0 = _mm512_fmadd_ps(ld16(a, i), ld16(b, i), s0);
                s1 = _mm512_fmadd_ps(ld16(a, i + 16), ld16(b, i + 16), s1);
                i += 32;
            }
            if i < n {
                s0 = _mm512_fmadd_ps(ld16(a, i), ld16(b, i), s0);
            }
            _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) + Portable::dot(&a[n..], &b[n..])
        }

        #[inline(always)]
        unsafe fn axpy(y: &mut [f32], w: f32, x: &[f32]) {
            let n = y.len().min(x.len()) / 16 * 16;
            let wv = _mm512_set1_ps(w);
            for i in (0..n).step_by(16) {
                let p = y.as_mut_ptr().add(i);
                _mm512_storeu_ps(p, _mm512_fmadd_ps(wv, ld16(x, i), _mm512_loadu_ps(p)));
            }
            Portable::axpy(&mut y[n..], w, &x[n..]);
        }

        #[inline(always)]
        unsafe fn widen(src: &[u16], dst: &mut [f32]) {
            let n = src.len().min(dst.len()) / 16 * 16;
            for i in (0..n).step_by(16) {
                let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            }
            Portable::widen(&src[n..], &mut dst[n..]);
        }

        #[inline(always)]
        unsafe fn narrow(src: &[f32], dst: &mut [u16]) {
            let n = src.len().min(dst.len()) / 16 * 16;
            for i in (0..n).step_by(16) {
                let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(ld16(src, i));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
            }
            Portable::narrow(&src[n..], &mut dst[n..]);
        }

        #[inline(always)]
        unsafe fn exp(x: &mut [f32]) {
            let n = x.len() / 16 * 16;
            let c = |v: f32| _mm512_set1_ps(v);
            for i in (0..n).step_by(16) {
                let p = x.as_mut_ptr().add(i);
                let v = _mm512_loadu_ps(p);
                let xc = _mm512_min_ps(c(EXP_HI), _mm512_max_ps(c(EXP_LO), v));
                let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(xc, c(LOG2E)),
                );
                let r = _mm512_fnmadd_ps(n, c(LN2_HI), xc);
                let r = _mm512_fnmadd_ps(n, c(LN2_LO), r);
                let mut y = c(EXP_POLY[0]);
                for &k in &EXP_POLY[1..] {
                    y = _mm512_fmadd_ps(y, r, c(k));
                }
                let y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, c(1.0)));
                // 2ⁿ = 2^(n>>1) · 2^(n − n>>1), each a normal f32 for n in −126..=128.
                let n = _mm512_cvtps_epi32(n);
                let n1 = _mm512_srai_epi32::<1>(n);
                let pow = |k: __m512i| {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                        k,
                        _mm512_set1_epi32(127),
                    )))
                };
                let y = _mm512_mul_ps(_mm512_mul_ps(y, pow(n1)), pow(_mm512_sub_epi32(n, n1)));
                let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, c(EXP_LO));
                let above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, c(EXP_HI));
                let y = _mm512_mask_blend_ps(below, y, _mm512_setzero_ps());
                let y = _mm512_mask_blend_ps(above, y, c(f32::INFINITY));
                _mm512_storeu_ps(p, y);
            }
            Portable::exp(&mut x[n..]);
        }
    }

    #[inline(always)]
    unsafe fn ld8(x: &[f32], i: usize) -> __m256 {
        _mm256_loadu_ps(x.as_ptr().add(i))
    }

    #[inline(always)]
    unsafe fn ld16(x: &[f32], i: usize) -> __m512 {
        _mm512_loadu_ps(x.as_ptr().add(i))
    }
}

/// Work written once over [`Kernels`] and compiled for each instruction set ([`run`]).
pub trait Op {
    type Out;
    /// # Safety
    /// The CPU runs `K`'s instruction set.
    unsafe fn run<K: Kernels>(self) -> Self::Out;
}

/// `op` with `isa`'s kernels (asserted to be one this CPU runs). The generic body is inlined
/// into a function compiled with that set's features, so the kernels' intrinsics inline too.
pub fn run<O: Op>(isa: Isa, op: O) -> O::Out {
    assert!(isa.available(), "this CPU does not run {}", isa.name());
    match isa {
        // SAFETY: `isa` is one this CPU runs.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(op) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_avx2(op) },
        // SAFETY: plain Rust.
        _ => unsafe { op.run::<Portable>() },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<O: Op>(op: O) -> O::Out {
    op.run::<Avx512>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<O: Op>(op: O) -> O::Out {
    op.run::<Avx2>()
}

struct Exp<'a>(&'a mut [f32]);

impl Op for Exp<'_> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<K: Kernels>(self) {
        K::exp(self.0)
    }
}

struct Narrow<'a>(&'a [f32], &'a mut [u16]);

impl Op for Narrow<'_> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<K: Kernels>(self) {
        K::narrow(self.0, self.1)
    }
}

/// x ← exp(x), with `isa`'s kernels.
pub fn exp(isa: Isa, x: &mut [f32]) {
    run(isa, Exp(x))
}

/// `dst` ← `src` rounded to f16 ([`Kernels::narrow`]), with `isa`'s kernels.
pub fn narrow(isa: Isa, src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "one f16 per f32");
    run(isa, Narrow(src, dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isas() -> impl Iterator<Item = Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
    }

    struct Widen<'a>(&'a [u16]);

    impl Op for Widen<'_> {
        type Out = Vec<f32>;
        unsafe fn run<K: Kernels>(self) -> Vec<f32> {
            let mut dst = vec![0f32; self.0.len()];
            K::widen(self.0, &mut dst);
            dst
        }
    }

    /// Every instruction set rounds to f16 as libtorch does (what a prefill writes into the
    /// cache), over normal values, f16's subnormals, its overflow and exact ties, and widens
    /// exactly; NaN stays NaN. Lengths leave a scalar tail.
    #[test]
    fn f16_conversions_agree_with_libtorch() {
        use tch::{Kind, Tensor};
        let mut xs: Vec<f32> = (0..20_000)
            .map(|i| {
                let u = ((i as u64 * 2_654_435_761) % 1_000_003) as f32 / 1_000_003.0;
                let scale = [1e-7, 3e-5, 1e-3, 0.5, 7.0, 300.0, 6e4, 7e4][i % 8];
                (u - 0.5) * 2.0 * scale
            })
            .collect();
        // Ties between two f16s, the largest f16 and the first value that rounds past it.
        xs.extend([
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            65504.0,
            65520.0,
            -0.0,
            0.0,
        ]);
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            5.96e-8,
            2.98e-8,
        ]);
        let half: Vec<i16> = Tensor::from_slice(&xs)
            .to_kind(Kind::Half)
            .view_dtype(Kind::Int16)
            .try_into()
            .unwrap();
        let wide: Vec<f32> = Tensor::from_slice(&xs)
            .to_kind(Kind::Half)
            .to_kind(Kind::Float)
            .try_into()
            .unwrap();
        for isa in isas() {
            let mut got = vec![0u16; xs.len()];
            narrow(isa, &xs, &mut got);
            let back = run(isa, Widen(&got));
            for (i, x) in xs.iter().enumerate() {
                assert_eq!(got[i], half[i] as u16, "{}: narrow({x})", isa.name());
                assert_eq!(
                    back[i].to_bits(),
                    wide[i].to_bits(),
                    "{}: widen",
                    isa.name()
                );
            }
            let mut nan = [0u16; 19];
            narrow(isa, &[f32::NAN; 19], &mut nan);
            assert!(
                run(isa, Widen(&nan)).iter().all(|x| x.is_nan()),
                "{}: NaN",
                isa.name()
            );
        }
    }

    /// exp within 2 ulp of the exact value (in f64) across f32's range, 0 far below it, +∞
    /// above it, NaN kept, on every instruction set; lengths that leave a scalar tail.
    #[test]
    fn exp_is_within_two_ulp_and_keeps_the_edges() {
        let mut xs: Vec<f32> = (0..40_001)
            .map(|i| -90.0 + 180.0 * i as f32 / 40_000.0)
            .collect();
        xs.extend((0..2_001).map(|i| -1.0 + i as f32 / 1_000.0));
        xs.extend([
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            -1e30,
            -87.0,
            88.0,
            88.7,
            88.72,
            88.722_84,
            89.0,
        ]);
        for isa in isas() {
            let mut y = xs.clone();
            exp(isa, &mut y);
            for (&x, &y) in xs.iter().zip(&y) {
                let want = (x as f64).exp();
                if want < f32::MIN_POSITIVE as f64 {
                    assert!(y.abs() < 1.2e-38, "{}: exp({x}) = {y}", isa.name());
                } else if want > f32::MAX as f64 {
                    assert_eq!(y, f32::INFINITY, "{}: exp({x})", isa.name());
                } else {
                    let ulp = (want as f32).abs() * f32::EPSILON;
                    assert!(
                        ((y as f64) - want).abs() <= 2.0 * ulp as f64,
                        "{}: exp({x}) = {y}, want {want}",
                        isa.name()
                    );
                }
            }
            let mut nan = [f32::NAN; 21];
            exp(isa, &mut nan);
            assert!(nan.iter().all(|x| x.is_nan()), "{}: NaN", isa.name());
        }
    }
}
