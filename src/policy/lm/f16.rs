//! IEEE half precision for a decoding cache's keys and values: f32 rounded to nearest even on
//! the way in (widened exactly on the way out by [`super::vector::Kernels::widen`]). With F16C
//! (every AVX2 processor) eight values convert per instruction; elsewhere, and under
//! `ASYMRE_KERNELS=portable`, the scalar conversion of [`crate::formats::gguf`] gives the same
//! bits.

use std::sync::OnceLock;

use crate::formats::gguf::f32_to_f16;

/// Whether the F16C conversions run (chosen once).
fn f16c() -> bool {
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::packed::Isa::best() != super::packed::Isa::Portable
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("avx")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `dst[i]` = `src[i]` rounded to f16 (nearest even; beyond f16's range, ±infinity).
pub fn narrow(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "one f16 per f32");
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: F16C and AVX were detected; the slices have equal lengths.
        unsafe { x86::narrow(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32_to_f16(s);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::formats::gguf::f32_to_f16;

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn narrow(src: &[f32], dst: &mut [u16]) {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        }
        for i in n..src.len() {
            dst[i] = f32_to_f16(src[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{packed::Isa, vector};
    use super::*;
    use tch::{Kind, Tensor};

    /// Both paths round as libtorch's f16 does (what a prefill writes into the cache), over
    /// normal values, f16's subnormals, its overflow and exact ties; widening is exact.
    #[test]
    fn conversions_agree_with_libtorch_and_between_paths() {
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
        let want: Vec<i16> = Tensor::from_slice(&xs)
            .to_kind(Kind::Half)
            .view_dtype(Kind::Int16)
            .try_into()
            .unwrap();
        let mut got = vec![0u16; xs.len()];
        narrow(&xs, &mut got);
        let portable: Vec<u16> = xs.iter().map(|&x| f32_to_f16(x)).collect();
        for (i, x) in xs.iter().enumerate() {
            assert_eq!(got[i], want[i] as u16, "narrow({x})");
            assert_eq!(portable[i], want[i] as u16, "portable narrow({x})");
        }
        let want: Vec<f32> = Tensor::from_slice(&xs)
            .to_kind(Kind::Half)
            .to_kind(Kind::Float)
            .try_into()
            .unwrap();
        let isas = [Isa::Portable, Isa::Avx2, Isa::Avx512];
        for isa in isas.into_iter().filter(|i| i.available()) {
            let back = vector::widen(isa, &got);
            for (i, (b, w)) in back.iter().zip(&want).enumerate() {
                assert_eq!(
                    b.to_bits(),
                    w.to_bits(),
                    "{} widen of {}",
                    isa.name(),
                    xs[i]
                );
            }
            let mut nan = [0u16; 19];
            narrow(&[f32::NAN; 19], &mut nan);
            assert!(
                vector::widen(isa, &nan).iter().all(|x| x.is_nan()),
                "NaN stays NaN"
            );
        }
    }
}
