//! Decoding from packed weights: a linear layer's matrix stored in bf16, f16 or ggml's 8- and
//! 4-bit blocks (Q8_0, Q4_0, Q4_1), and the product of a few rows of f32 inputs with it.
//!
//! A decoding step multiplies a handful of rows by every weight once, so its time is the time
//! to read the weights: f32 reads 4 bytes a weight, these formats 2, 1.125 and 0.75 (scales
//! kept as f32). Output columns are grouped in panels of [`PANEL`] (16: one AVX-512 register of
//! f32 or i32), and a panel's codes are read once per product whatever the number of rows
//! (1–64): each is widened in a register and multiplied into every row's accumulator.
//!
//! - **16-bit formats** (bf16, f16): input j's 16 codes are contiguous; they are widened to f32
//!   and multiplied with the f32 inputs by fused multiply-adds. The inputs are not rounded.
//! - **Block formats** (Q8_0, Q4_0, Q4_1): every weight is `d·u + m` with an unsigned code `u`
//!   and, per block of [`BLOCK`] inputs and per column, a scale `d` and offset `m` (Q8_0:
//!   u = q + 128 stored, the 128 taken off in integers; Q4_0: m = −8·d), which are ggml's
//!   values. The inputs are quantised per row and block of 32 to 16 bits, `x ≈ dx·qx` with qx in
//!   −32767..=32767 (llama.cpp uses 8 bits there, and on SmolLM2 that alone moved logits by up
//!   to 1.7; 16 bits keep the error at the weights'). A block's product is then exact integer
//!   arithmetic, `I = Σ u·qx` (two inputs per 32-bit lane: AVX-512 VNNI's `vpdpwssd`, AVX2's
//!   `vpmaddwd`), and `dx·(d·I + m·Σqx)` in f32.
//!
//! Three implementations of that arithmetic, chosen at run time ([`Isa::best`]): AVX-512 (F, BW
//! and VNNI), AVX2 with FMA, and portable Rust for every other CPU. `ASYMRE_KERNELS=avx2` or
//! `portable` forces a lower one (never one the CPU lacks). The integer sums are exact on every
//! path, and each sum runs in a fixed order, so results do not depend on the number of threads.
use rayon::prelude::*;

use crate::parallel::DisjointOut;

use crate::formats::gguf::{f16_to_f32, f32_to_f16};

use super::vector::{self, Isa, Kernels, Op};

/// Output columns per panel.
pub const PANEL: usize = 16;
/// Inputs per quantisation block (ggml's QK).
pub const BLOCK: usize = 32;
/// Inputs per 32-bit lane of the integer product (two 16-bit ones).
const GROUP: usize = 2;
/// The most rows a packed product is meant for: beyond this (a prompt's prefill) a product is
/// bound by arithmetic, not by reading weights, and libtorch's f32 product is faster.
pub const MAX_ROWS: usize = 64;

/// How a packed matrix stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// bfloat16: f32 with the low 16 bits rounded off.
    Bf16,
    /// IEEE half precision.
    F16,
    /// ggml's Q8_0: per block of 32, `d · q` with q in −127..=127 and `d` an f16.
    Q8_0,
    /// ggml's Q4_0: per block of 32, `d · (q − 8)` with q in 0..=15.
    Q4_0,
    /// ggml's Q4_1: per block of 32, `d · q + m` with q in 0..=15, `d` and `m` f16.
    Q4_1,
}

impl Format {
    /// The name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::Bf16 => "bf16",
            Format::F16 => "f16",
            Format::Q8_0 => "q8_0",
            Format::Q4_0 => "q4_0",
            Format::Q4_1 => "q4_1",
        }
    }

    /// Code bytes of one panel of `k` inputs.
    fn panel_bytes(self, k: usize) -> usize {
        let kb = k.div_ceil(BLOCK);
        match self {
            Format::Bf16 | Format::F16 => k * PANEL * 2,
            // Per block: 16 groups of 2 inputs × 16 columns, one byte each.
            Format::Q8_0 => kb * BLOCK * PANEL,
            // Per block: 8 × 32 bytes; group 2i in the low nibbles, 2i+1 in the high ones.
            Format::Q4_0 | Format::Q4_1 => kb * BLOCK * PANEL / 2,
        }
    }

    /// Scale and offset slots of one panel of `k` inputs: per block, 16 scales then 16 offsets.
    fn panel_scales(self, k: usize) -> usize {
        match self {
            Format::Bf16 | Format::F16 => 0,
            Format::Q8_0 | Format::Q4_0 | Format::Q4_1 => k.div_ceil(BLOCK) * 2 * PANEL,
        }
    }

    fn blocks(self) -> bool {
        self.panel_scales(BLOCK) > 0
    }

    /// Where the code of block-local input `i` (0..32) of column `c` is: (byte offset in the
    /// block, bit shift).
    fn code_at(self, i: usize, c: usize) -> (usize, u32) {
        let (g, lane) = (i / GROUP, c * GROUP + i % GROUP);
        match self {
            Format::Q8_0 => (g * PANEL * GROUP + lane, 0),
            _ => (g / 2 * PANEL * GROUP + lane, 4 * (g % 2) as u32),
        }
    }

    /// The unsigned code of block-local input `i` of column `c` in a block's `codes`.
    fn code(self, codes: &[u8], i: usize, c: usize) -> u8 {
        let (at, bits) = self.code_at(i, c);
        let mask = if self == Format::Q8_0 { 0xff } else { 0x0f };
        (codes[at] >> bits) & mask
    }

    /// A 16-bit format's weight of input `j`, column `c`, from a panel's `codes`.
    fn half(self, codes: &[u8], j: usize, c: usize) -> f32 {
        let at = (j * PANEL + c) * 2;
        let h = u16::from_le_bytes([codes[at], codes[at + 1]]);
        match self {
            Format::F16 => f16_to_f32(h),
            _ => f32::from_bits((h as u32) << 16),
        }
    }
}

/// Rows one kernel call of `isa` takes when `left` remain, for a block format or a 16-bit one:
/// as many as the registers hold (the block kernels keep two accumulators per row).
fn kernel_rows(isa: Isa, blocks: bool, left: usize) -> usize {
    let widths: &[usize] = match (isa, blocks) {
        (Isa::Portable, _) => &[8, 4, 2, 1],
        (Isa::Avx2, _) => &[4, 2, 1],
        (Isa::Avx512, true) => &[8, 4, 2, 1],
        (Isa::Avx512, false) => &[16, 8, 4, 2, 1],
    };
    widths.iter().copied().find(|&w| w <= left).unwrap_or(1)
}

/// A [k, n] matrix (k inputs, n outputs) in one of the packed [`Format`]s.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub format: Format,
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// Per panel, [`Format::panel_bytes`] of codes.
    codes: Vec<u8>,
    /// Per panel, [`Format::panel_scales`] of scales and offsets.
    scales: Vec<f32>,
}

/// bf16 of `x`, rounded to nearest even.
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// An f32 rounded through f16, as ggml stores its block scales.
fn through_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// `x` rounded to an integer, halves away from zero, as C's `roundf` (which ggml's quantiser
/// calls), for |x| < 2²³; ±0 for NaN, ±2³¹ for larger magnitudes. `f32::round` is a call into libm on baseline x86-64, once per weight;
/// this is plain arithmetic the compiler vectorises. (`a − t` is exact: t ≤ a < t + 1.)
#[inline(always)]
fn round_away(x: f32) -> f32 {
    let a = x.abs();
    let t = a as i32 as f32;
    let r = if a - t >= 0.5 { t + 1.0 } else { t };
    r.copysign(x)
}

/// One block of up to 32 weights quantised the way ggml's reference quantisers do: ggml's codes
/// (Q8_0: i8 as u8), its scale and its offset (Q8_0: 0; Q4_0: −8·d). The reference the tests
/// hold `pack_panel` to; it computes the same a block of rows at a time.
#[cfg(test)]
fn quantise_block(format: Format, v: &[f32], q: &mut [u8]) -> (f32, f32) {
    match format {
        Format::Q8_0 => {
            let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (q, x) in q.iter_mut().zip(v) {
                *q = round_away(x * id) as i8 as u8;
            }
            (through_f16(d), 0.0)
        }
        Format::Q4_0 => {
            // The value of largest magnitude, with its sign, maps to −8.
            let max = v
                .iter()
                .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (q, x) in q.iter_mut().zip(v) {
                *q = ((x * id + 8.5) as i8).min(15) as u8;
            }
            let d = through_f16(d);
            (d, -8.0 * d)
        }
        Format::Q4_1 => {
            let min = v.iter().copied().fold(f32::INFINITY, f32::min);
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (q, x) in q.iter_mut().zip(v) {
                *q = (((x - min) * id + 0.5) as i8).min(15) as u8;
            }
            (through_f16(d), through_f16(min))
        }
        Format::Bf16 | Format::F16 => unreachable!("16-bit formats have no blocks"),
    }
}

/// 1.5·2²³: added to and taken from a float of magnitude < 2²², it rounds it to an integer.
const ROUNDER: f32 = 12_582_912.0;

/// Rows of inputs quantised per block of 32 for the integer product: `x ≈ dx·qx`.
struct QuantisedRows {
    /// [m, kb·32], zero past k.
    qx: Vec<i16>,
    /// [m, kb] scales.
    dx: Vec<f32>,
    /// [m, kb] Σ qx of each block (|Σ| ≤ 32·32767: exact in f32).
    sx: Vec<f32>,
    kb: usize,
}

impl QuantisedRows {
    /// `x` [m, k] quantised per block: scale amax/32767, round to nearest even.
    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k.div_ceil(BLOCK);
        let mut q = QuantisedRows {
            qx: vec![0; m * kb * BLOCK],
            dx: vec![0.0; m * kb],
            sx: vec![0.0; m * kb],
            kb,
        };
        for r in 0..m {
            for b in 0..kb {
                let v = &x[r * k + b * BLOCK..r * k + (k - b * BLOCK).min(BLOCK) + b * BLOCK];
                // NaN's and infinities: a scale that is not finite carries them to every output
                // of the block, as an f32 product would (`max` alone would skip a NaN).
                let amax = v.iter().fold(0f32, |a, x| {
                    if a.is_nan() || !x.is_finite() {
                        f32::NAN
                    } else {
                        a.max(x.abs())
                    }
                });
                let d = amax / 32767.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut sum = 0i32;
                for (i, x) in v.iter().enumerate() {
                    // Round to nearest even by adding and taking off 1.5·2²³ (|x·id| ≤ 32767):
                    // `round` is a library call on a baseline x86-64 build.
                    let c = ((x * id + ROUNDER) - ROUNDER).clamp(-32767.0, 32767.0) as i16;
                    q.qx[(r * kb + b) * BLOCK + i] = c;
                    sum += c as i32;
                }
                q.dx[r * kb + b] = d;
                q.sx[r * kb + b] = sum as f32;
            }
        }
        q
    }

    /// Row r's dequantised inputs (for tests' references).
    #[cfg(test)]
    fn row(&self, r: usize, k: usize) -> Vec<f32> {
        (0..k)
            .map(|j| self.qx[r * self.kb * BLOCK + j] as f32 * self.dx[r * self.kb + j / BLOCK])
            .collect()
    }
}

/// Panel `p` of `w` [k, n] packed into `codes` and `scales` ([`PackedMatrix::pack`]). The same
/// arithmetic compiled twice: the AVX2 copy is vectorised wider and gives the same bits.
#[inline(always)]
fn pack_panel(
    format: Format,
    w: &[f32],
    (k, n): (usize, usize),
    p: usize,
    blocks: std::ops::Range<usize>,
    codes: &mut [u8],
    scales: &mut [f32],
) {
    let cols = (n - p * PANEL).min(PANEL);
    let at = |j: usize, c: usize| w[j * n + p * PANEL + c];
    if !format.blocks() {
        for j in blocks.start * BLOCK..(blocks.end * BLOCK).min(k) {
            for c in 0..cols {
                let h = match format {
                    Format::F16 => f32_to_f16(at(j, c)),
                    _ => to_bf16(at(j, c)),
                };
                codes[(j * PANEL + c) * 2..][..2].copy_from_slice(&h.to_le_bytes());
            }
        }
        return;
    }
    let per_block = format.panel_bytes(BLOCK);
    // A block of the panel at a time, read row by row (a row's PANEL weights are adjacent): each
    // column's scale as `quantise_block` computes it, then the codes of two rows at a time (they
    // share 32-bit lanes, interleaved column by column).
    let row = |j: usize| -> [f32; PANEL] {
        let at = j * n + p * PANEL;
        if cols == PANEL {
            w[at..at + PANEL].try_into().unwrap()
        } else {
            let mut r = [0f32; PANEL];
            r[..cols].copy_from_slice(&w[at..at + cols]);
            r
        }
    };
    for b in blocks {
        let (j0, len) = (b * BLOCK, (k - b * BLOCK).min(BLOCK));
        let (mut lo, mut hi) = ([f32::INFINITY; PANEL], [f32::NEG_INFINITY; PANEL]);
        let mut big = [0f32; PANEL]; // the value of largest magnitude, with its sign
        let mut amax = [0f32; PANEL];
        for i in 0..len {
            let r = row(j0 + i);
            match format {
                Format::Q8_0 => (0..PANEL).for_each(|c| amax[c] = amax[c].max(r[c].abs())),
                Format::Q4_0 => (0..PANEL).for_each(|c| {
                    if r[c].abs() > big[c].abs() {
                        big[c] = r[c];
                    }
                }),
                _ => (0..PANEL).for_each(|c| {
                    lo[c] = lo[c].min(r[c]);
                    hi[c] = hi[c].max(r[c]);
                }),
            }
        }
        let (mut id, mut off) = ([0f32; PANEL], [0f32; PANEL]);
        for c in 0..cols {
            let (d, stored) = match format {
                Format::Q8_0 => {
                    let d = amax[c] / 127.0;
                    (d, (through_f16(d), 0.0))
                }
                Format::Q4_0 => {
                    let d = big[c] / -8.0;
                    let s = through_f16(d);
                    (d, (s, -8.0 * s))
                }
                _ => {
                    let d = (hi[c] - lo[c]) / 15.0;
                    (d, (through_f16(d), through_f16(lo[c])))
                }
            };
            id[c] = if d != 0.0 { 1.0 / d } else { 0.0 };
            off[c] = if format == Format::Q4_1 { lo[c] } else { 0.0 };
            scales[b * 2 * PANEL + c] = stored.0;
            scales[b * 2 * PANEL + PANEL + c] = stored.1;
        }
        let codes = &mut codes[b * per_block..];
        let rows = |j: usize| (j < len).then(|| row(j0 + j));
        match format {
            Format::Q8_0 => lay_codes(format, len, cols, codes, rows, |x, c| {
                // Within [−127, 127] for finite weights. `round_away` never gives NaN (a NaN
                // weight rounds to 0, as `as i8` takes it) and saturates ±∞, so after the clamp
                // the value is finite and within i32.
                let q = round_away(x * id[c]).clamp(-128.0, 127.0);
                // SAFETY: finite and within i32 (above).
                (unsafe { q.to_int_unchecked::<i32>() } as u8).wrapping_add(128)
            }),
            Format::Q4_0 => lay_codes(format, len, cols, codes, rows, |x, c| {
                ((x * id[c] + 8.5) as i8).min(15) as u8
            }),
            _ => lay_codes(format, len, cols, codes, rows, |x, c| {
                (((x - off[c]) * id[c] + 0.5) as i8).min(15) as u8
            }),
        }
    }
}

/// The codes of a block's `len` rows (`rows(i)`, None past the end), two rows at a time: they
/// share 32-bit lanes, interleaved column by column.
#[inline(always)]
fn lay_codes(
    format: Format,
    len: usize,
    cols: usize,
    codes: &mut [u8],
    rows: impl Fn(usize) -> Option<[f32; PANEL]>,
    code: impl Fn(f32, usize) -> u8,
) {
    #[inline(always)]
    fn lay(
        format: Format,
        len: usize,
        cols: usize,
        codes: &mut [u8],
        rows: &impl Fn(usize) -> Option<[f32; PANEL]>,
        code: &impl Fn(f32, usize) -> u8,
    ) {
        for i in (0..len).step_by(GROUP) {
            let (at, bits) = format.code_at(i, 0);
            let out = &mut codes[at..][..PANEL * GROUP];
            for (j, r) in [(0, rows(i)), (1, rows(i + 1))] {
                if let Some(r) = r {
                    for c in 0..cols {
                        out[GROUP * c + j] |= code(r[c], c) << bits;
                    }
                }
            }
        }
    }
    // (Whole panels with a constant count, which the compiler unrolls and vectorises.)
    if cols == PANEL {
        lay(format, len, PANEL, codes, &rows, &code)
    } else {
        lay(format, len, cols, codes, &rows, &code)
    }
}

/// [`pack_panel`] as work for [`vector::run`], which compiles it once per instruction set (the
/// wider sets vectorise it wider; every set gives the same bits).
struct PackPanel<'a> {
    format: Format,
    w: &'a [f32],
    shape: (usize, usize),
    p: usize,
    blocks: std::ops::Range<usize>,
    codes: &'a mut [u8],
    scales: &'a mut [f32],
}

impl Op for PackPanel<'_> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<K: Kernels>(self) {
        let PackPanel {
            format,
            w,
            shape,
            p,
            blocks,
            codes,
            scales,
        } = self;
        pack_panel(format, w, shape, p, blocks, codes, scales)
    }
}

impl PackedMatrix {
    /// Packs `w` [k, n] (row-major: input j's n weights at j·n), quantising as ggml does. A
    /// matrix dequantised from a ggml file of the same format packs back to the file's values.
    pub fn pack(format: Format, w: &[f32], k: usize, n: usize) -> PackedMatrix {
        assert_eq!(w.len(), k * n, "a [k, n] matrix");
        let panels = n.div_ceil(PANEL);
        let (pb, ps) = (format.panel_bytes(k), format.panel_scales(k));
        let mut codes = vec![0u8; panels * pb];
        // (16-bit formats have no scales: one unused slot per panel keeps the chunks paired.)
        let mut scales = vec![0f32; panels * ps.max(1)];
        // Panels go to threads up to 16 at a time (fewer where that would leave a thread
        // idle), and a group is packed a block of rows at a time for all its panels: each row
        // is then read up to 1 KiB at once (a panel alone reads 64 bytes a row, one page per
        // row of a wide matrix).
        let at_once = panels.div_ceil(rayon::current_num_threads()).clamp(1, 16);
        let ps1 = ps.max(1);
        let isa = Isa::best();
        codes
            .par_chunks_mut(pb * at_once)
            .zip(scales.par_chunks_mut(ps1 * at_once))
            .enumerate()
            .for_each(|(g, (codes, scales))| {
                for b in 0..k.div_ceil(BLOCK) {
                    let panels = codes.chunks_mut(pb).zip(scales.chunks_mut(ps1));
                    for (i, (codes, scales)) in panels.enumerate() {
                        let panel = PackPanel {
                            format,
                            w,
                            shape: (k, n),
                            p: g * at_once + i,
                            blocks: b..b + 1,
                            codes,
                            scales,
                        };
                        vector::run(isa, panel)
                    }
                }
            });
        PackedMatrix {
            format,
            k,
            n,
            codes,
            scales,
        }
    }

    /// Bytes the packed weights take.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.n.div_ceil(PANEL) * self.format.panel_scales(self.k)
    }

    /// The weights back as f32 [k, n]: what the product multiplies by.
    pub fn unpack(&self) -> Vec<f32> {
        let (k, n, f) = (self.k, self.n, self.format);
        let (pb, ps) = (f.panel_bytes(k), f.panel_scales(k));
        let mut w = vec![0f32; k * n];
        for p in 0..n.div_ceil(PANEL) {
            let (codes, scales) = (&self.codes[p * pb..], &self.scales[p * ps..]);
            for c in 0..(n - p * PANEL).min(PANEL) {
                for j in 0..k {
                    w[j * n + p * PANEL + c] = if f.blocks() {
                        let b = j / BLOCK;
                        let u = f.code(&codes[b * f.panel_bytes(BLOCK)..], j % BLOCK, c) as i32;
                        let (d, m) = (scales[b * 2 * PANEL + c], scales[b * 2 * PANEL + PANEL + c]);
                        match f {
                            Format::Q8_0 => (u - 128) as f32 * d,
                            _ => u as f32 * d + m,
                        }
                    } else {
                        f.half(codes, j, c)
                    };
                }
            }
        }
        w
    }

    /// The offset `m` of the block of input `j`, column `c` (0 for 16-bit formats).
    #[cfg(test)]
    fn offset(&self, j: usize, c: usize) -> f32 {
        let ps = self.format.panel_scales(self.k);
        if ps == 0 {
            return 0.0;
        }
        self.scales[(c / PANEL) * ps + j / BLOCK * 2 * PANEL + PANEL + c % PANEL]
    }

    /// `y` [m, n] = `x` [m, k] · W with the best kernels of this CPU.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        self.matmul_with(Isa::best(), x, m, y)
    }

    /// [`PackedMatrix::matmul`] with the kernels of `isa` (which this CPU must run).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) {
        matmul_all(isa, &[self], x, m, &mut [y]);
    }
}

/// `ys[i]` [m, n_i] = `x` [m, k] · `mats[i]` for matrices of the same input size (a layer's
/// query, key and value, or gate and up): the input is prepared once for each kind of kernel,
/// and one parallel region runs every matrix's panels.
pub fn matmul_all(isa: Isa, mats: &[&PackedMatrix], x: &[f32], m: usize, ys: &mut [&mut [f32]]) {
    assert!(
        isa.available(),
        "this CPU does not run the {} kernels",
        isa.name()
    );
    assert_eq!(mats.len(), ys.len(), "one output per matrix");
    let Some(k) = mats.first().map(|w| w.k) else {
        return;
    };
    assert_eq!(x.len(), m * k, "x is [m, k]");
    for (w, y) in mats.iter().zip(ys.iter()) {
        assert_eq!(w.k, k, "one input size");
        assert_eq!(y.len(), m * w.n, "y is [m, n]");
    }
    if m == 0 {
        return;
    }
    let blocks = mats
        .iter()
        .any(|w| w.format.blocks())
        .then(|| QuantisedRows::new(x, m, k));
    let floats = mats.iter().any(|w| !w.format.blocks()).then(|| {
        // Transposed, [k, m]: the rows' input j side by side.
        let mut xt = vec![0f32; k * m];
        for r in 0..m {
            for j in 0..k {
                xt[j * m + r] = x[r * k + j];
            }
        }
        xt
    });
    // Per matrix: (its first task, panels per task, its output); enough panels per task that a
    // task reads ~64 KB of weights.
    let mut plan = Vec::with_capacity(mats.len());
    let mut tasks = 0;
    for (w, y) in mats.iter().zip(ys.iter_mut()) {
        let per_task = (65_536 / w.format.panel_bytes(k).max(1)).clamp(1, 64);
        plan.push((tasks, per_task, DisjointOut::new(y)));
        tasks += w.n.div_ceil(PANEL).div_ceil(per_task);
    }
    crate::parallel::for_each(tasks, &|t| {
        let j = plan.partition_point(|&(first, _, _)| first <= t) - 1;
        let (w, (first, per_task, out)) = (mats[j], plan[j]);
        let (f, n) = (w.format, w.n);
        let (pb, ps) = (f.panel_bytes(k), f.panel_scales(k));
        let panels = n.div_ceil(PANEL);
        let mut acc = [0f32; 16 * PANEL];
        for p in (t - first) * per_task..((t - first + 1) * per_task).min(panels) {
            let codes = &w.codes[p * pb..][..pb];
            let scales = &w.scales[p * ps..][..ps];
            let cols = (n - p * PANEL).min(PANEL);
            let mut r0 = 0;
            while r0 < m {
                let rows = kernel_rows(isa, f.blocks(), m - r0);
                let dst = &mut acc[..rows * PANEL];
                match (&floats, &blocks) {
                    (Some(xt), _) if !f.blocks() => {
                        kernels::floats(isa, f, codes, k, &xt[r0..], m, rows, dst)
                    }
                    (_, Some(q)) => kernels::blocks(isa, f, codes, scales, q, r0, rows, dst),
                    _ => unreachable!("the inputs of every matrix's kind were prepared"),
                }
                for (r, acc) in dst.chunks(PANEL).enumerate() {
                    // SAFETY: panel p's columns of row r0 + r of output j, written by this
                    // task alone while `ys` lives.
                    let out = unsafe { out.part((r0 + r) * n + p * PANEL, cols) };
                    out.copy_from_slice(&acc[..cols]);
                }
                r0 += rows;
            }
        }
    });
}

mod kernels {
    //! The products of one panel: the portable reference and its AVX2 and AVX-512 versions.
    use super::{Format, Isa, QuantisedRows, BLOCK, PANEL};

    /// 16-bit formats: `out` [rows, 16] = rows r of `xt` [k, m] (column r, from its start) · panel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn floats(
        isa: Isa,
        format: Format,
        codes: &[u8],
        k: usize,
        xt: &[f32],
        m: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        assert!(codes.len() >= k * PANEL * 2 && xt.len() > (k - 1) * m + rows - 1);
        assert!(out.len() >= rows * PANEL && rows <= 16);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU runs the ISA (checked by the caller); the bounds are asserted.
            Isa::Avx2 => unsafe { super::x86::floats_avx2(format, codes, k, xt, m, rows, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx512 => unsafe { super::x86::floats_avx512(format, codes, k, xt, m, rows, out) },
            _ => floats_portable(format, codes, k, xt, m, rows, out),
        }
    }

    fn floats_portable(
        format: Format,
        codes: &[u8],
        k: usize,
        xt: &[f32],
        m: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let mut acc = [[0f32; PANEL]; 16];
        let mut w = [0f32; PANEL];
        for j in 0..k {
            for (c, w) in w.iter_mut().enumerate() {
                *w = format.half(codes, j, c);
            }
            for (acc, &x) in acc.iter_mut().zip(&xt[j * m..][..rows]) {
                for (a, w) in acc.iter_mut().zip(&w) {
                    *a += x * w;
                }
            }
        }
        for (r, acc) in acc.iter().take(rows).enumerate() {
            out[r * PANEL..][..PANEL].copy_from_slice(acc);
        }
    }

    /// Block formats: `out` [rows, 16] = quantised rows r0.. of `q` · panel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn blocks(
        isa: Isa,
        format: Format,
        codes: &[u8],
        scales: &[f32],
        q: &QuantisedRows,
        r0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let kb = q.kb;
        assert!(codes.len() >= kb * format.panel_bytes(BLOCK) && scales.len() >= kb * 2 * PANEL);
        assert!(q.dx.len() >= (r0 + rows) * kb && out.len() >= rows * PANEL && rows <= 16);
        let (qx, dx, sx) = (&q.qx[r0 * kb * BLOCK..], &q.dx[r0 * kb..], &q.sx[r0 * kb..]);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU runs the ISA (checked by the caller); the bounds are asserted.
            Isa::Avx2 => unsafe {
                super::x86::blocks_avx2(format, codes, scales, kb, qx, dx, sx, rows, out)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx512 => unsafe {
                super::x86::blocks_avx512(format, codes, scales, kb, qx, dx, sx, rows, out)
            },
            _ => blocks_portable(format, codes, scales, kb, qx, dx, sx, rows, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn blocks_portable(
        format: Format,
        codes: &[u8],
        scales: &[f32],
        kb: usize,
        qx: &[i16],
        dx: &[f32],
        sx: &[f32],
        rows: usize,
        out: &mut [f32],
    ) {
        let per_block = format.panel_bytes(BLOCK);
        let mut acc = [[0f32; PANEL]; 16];
        let mut u = [[0u8; BLOCK]; PANEL];
        for b in 0..kb {
            for (c, u) in u.iter_mut().enumerate() {
                for (i, u) in u.iter_mut().enumerate() {
                    *u = format.code(&codes[b * per_block..], i, c);
                }
            }
            let (d, m) = (
                &scales[b * 2 * PANEL..][..PANEL],
                &scales[b * 2 * PANEL + PANEL..][..PANEL],
            );
            for (r, acc) in acc.iter_mut().take(rows).enumerate() {
                let x = &qx[(r * kb + b) * BLOCK..][..BLOCK];
                let (dx, sx) = (dx[r * kb + b], sx[r * kb + b]);
                for c in 0..PANEL {
                    // (Integer sums: exact in any order; |I| < 32·255·32767 < 2³¹.)
                    let mut i: i32 = u[c].iter().zip(x).map(|(&u, &x)| u as i32 * x as i32).sum();
                    if format == Format::Q8_0 {
                        // u = q + 128: Σ q·qx = I − 128·Σqx, exactly.
                        i -= 128 * sx as i32;
                    }
                    acc[c] += dx * (d[c] * i as f32 + m[c] * sx);
                }
            }
        }
        for (r, acc) in acc.iter().take(rows).enumerate() {
            out[r * PANEL..][..PANEL].copy_from_slice(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 and AVX-512 kernels: the portable kernels' arithmetic in registers.
    use std::arch::x86_64::*;

    use super::{Format, BLOCK, GROUP, PANEL};

    /// Two consecutive i16 inputs as one i32 (to broadcast).
    #[inline(always)]
    unsafe fn pair(qx: *const i16) -> i32 {
        (qx as *const i32).read_unaligned()
    }

    /// # Safety
    /// AVX2, FMA and F16C; the bounds [`super::kernels::floats`] asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn floats_avx2(
        format: Format,
        codes: &[u8],
        k: usize,
        xt: &[f32],
        m: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let (c, x, o) = (codes.as_ptr(), xt.as_ptr(), out.as_mut_ptr());
        match rows {
            4 => floats_avx2_rows::<4>(format, c, k, x, m, o),
            2 => floats_avx2_rows::<2>(format, c, k, x, m, o),
            1 => floats_avx2_rows::<1>(format, c, k, x, m, o),
            other => unreachable!("no AVX2 kernel for {other} rows"),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn floats_avx2_rows<const R: usize>(
        format: Format,
        codes: *const u8,
        k: usize,
        xt: *const f32,
        m: usize,
        out: *mut f32,
    ) {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for j in 0..k {
            let (a, b) = (
                _mm_loadu_si128(codes.add(j * 32).cast()),
                _mm_loadu_si128(codes.add(j * 32 + 16).cast()),
            );
            let (w_lo, w_hi) = match format {
                Format::F16 => (_mm256_cvtph_ps(a), _mm256_cvtph_ps(b)),
                _ => (
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(a))),
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(b))),
                ),
            };
            let x = xt.add(j * m);
            for r in 0..R {
                let xr = _mm256_broadcast_ss(&*x.add(r));
                lo[r] = _mm256_fmadd_ps(xr, w_lo, lo[r]);
                hi[r] = _mm256_fmadd_ps(xr, w_hi, hi[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out.add(r * PANEL), lo[r]);
            _mm256_storeu_ps(out.add(r * PANEL + 8), hi[r]);
        }
    }

    /// # Safety
    /// AVX-512F; the bounds [`super::kernels::floats`] asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn floats_avx512(
        format: Format,
        codes: &[u8],
        k: usize,
        xt: &[f32],
        m: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let (c, x, o) = (codes.as_ptr(), xt.as_ptr(), out.as_mut_ptr());
        match rows {
            16 => floats_avx512_rows::<16>(format, c, k, x, m, o),
            8 => floats_avx512_rows::<8>(format, c, k, x, m, o),
            4 => floats_avx512_rows::<4>(format, c, k, x, m, o),
            2 => floats_avx512_rows::<2>(format, c, k, x, m, o),
            1 => floats_avx512_rows::<1>(format, c, k, x, m, o),
            other => unreachable!("no AVX-512 kernel for {other} rows"),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn floats_avx512_rows<const R: usize>(
        format: Format,
        codes: *const u8,
        k: usize,
        xt: *const f32,
        m: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        for j in 0..k {
            let h = _mm256_loadu_si256(codes.add(j * 32).cast());
            let w = match format {
                Format::F16 => _mm512_cvtph_ps(h),
                _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))),
            };
            let x = xt.add(j * m);
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(r)), w, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * PANEL), *acc);
        }
    }

    /// # Safety
    /// AVX2 and FMA; the bounds [`super::kernels::blocks`] asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn blocks_avx2(
        format: Format,
        codes: &[u8],
        scales: &[f32],
        kb: usize,
        qx: &[i16],
        dx: &[f32],
        sx: &[f32],
        rows: usize,
        out: &mut [f32],
    ) {
        let (c, s) = (codes.as_ptr(), scales.as_ptr());
        let (x, d, t, o) = (qx.as_ptr(), dx.as_ptr(), sx.as_ptr(), out.as_mut_ptr());
        match rows {
            4 => blocks_avx2_rows::<4>(format, c, s, kb, x, d, t, o),
            2 => blocks_avx2_rows::<2>(format, c, s, kb, x, d, t, o),
            1 => blocks_avx2_rows::<1>(format, c, s, kb, x, d, t, o),
            other => unreachable!("no AVX2 kernel for {other} rows"),
        }
    }

    /// The 16 columns' two codes of group `g` of a block (32 unsigned bytes, column-major).
    #[inline(always)]
    unsafe fn group_codes(format: Format, blk: *const u8, g: usize) -> __m256i {
        match format {
            Format::Q8_0 => _mm256_loadu_si256(blk.add(g * PANEL * GROUP).cast()),
            _ => {
                let v = _mm256_loadu_si256(blk.add(g / 2 * PANEL * GROUP).cast());
                let v = if g.is_multiple_of(2) {
                    v
                } else {
                    _mm256_srli_epi16::<4>(v)
                };
                _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
            }
        }
    }

    /// [`group_codes`] as i16 pairs: columns 0–7, then 8–15.
    #[inline(always)]
    unsafe fn group_avx2(format: Format, blk: *const u8, g: usize) -> (__m256i, __m256i) {
        let bytes = group_codes(format, blk, g);
        (
            _mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes)),
            _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(bytes)),
        )
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn blocks_avx2_rows<const R: usize>(
        format: Format,
        codes: *const u8,
        scales: *const f32,
        kb: usize,
        qx: *const i16,
        dx: *const f32,
        sx: *const f32,
        out: *mut f32,
    ) {
        let per_block = format.panel_bytes(BLOCK);
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let blk = codes.add(b * per_block);
            let mut i_lo = [_mm256_setzero_si256(); R];
            let mut i_hi = [_mm256_setzero_si256(); R];
            if format == Format::Q8_0 {
                // u = q + 128: start from −128·Σqx so the sum is Σ q·qx, exactly.
                for r in 0..R {
                    let fix = _mm256_set1_epi32(-128 * *sx.add(r * kb + b) as i32);
                    (i_lo[r], i_hi[r]) = (fix, fix);
                }
            }
            for g in 0..BLOCK / GROUP {
                let (w_lo, w_hi) = group_avx2(format, blk, g);
                for r in 0..R {
                    let xv = _mm256_set1_epi32(pair(qx.add((r * kb + b) * BLOCK + g * GROUP)));
                    i_lo[r] = _mm256_add_epi32(i_lo[r], _mm256_madd_epi16(w_lo, xv));
                    i_hi[r] = _mm256_add_epi32(i_hi[r], _mm256_madd_epi16(w_hi, xv));
                }
            }
            let sc = scales.add(b * 2 * PANEL);
            for r in 0..R {
                let (s, d) = (
                    _mm256_set1_ps(*sx.add(r * kb + b)),
                    _mm256_set1_ps(*dx.add(r * kb + b)),
                );
                let t_lo = _mm256_fmadd_ps(
                    _mm256_loadu_ps(sc),
                    _mm256_cvtepi32_ps(i_lo[r]),
                    _mm256_mul_ps(_mm256_loadu_ps(sc.add(PANEL)), s),
                );
                let t_hi = _mm256_fmadd_ps(
                    _mm256_loadu_ps(sc.add(8)),
                    _mm256_cvtepi32_ps(i_hi[r]),
                    _mm256_mul_ps(_mm256_loadu_ps(sc.add(PANEL + 8)), s),
                );
                lo[r] = _mm256_fmadd_ps(d, t_lo, lo[r]);
                hi[r] = _mm256_fmadd_ps(d, t_hi, hi[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out.add(r * PANEL), lo[r]);
            _mm256_storeu_ps(out.add(r * PANEL + 8), hi[r]);
        }
    }

    /// # Safety
    /// AVX-512 F, BW and VNNI; the bounds [`super::kernels::blocks`] asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn blocks_avx512(
        format: Format,
        codes: &[u8],
        scales: &[f32],
        kb: usize,
        qx: &[i16],
        dx: &[f32],
        sx: &[f32],
        rows: usize,
        out: &mut [f32],
    ) {
        let (c, s) = (codes.as_ptr(), scales.as_ptr());
        let (x, d, t, o) = (qx.as_ptr(), dx.as_ptr(), sx.as_ptr(), out.as_mut_ptr());
        match rows {
            16 => blocks_avx512_rows::<16>(format, c, s, kb, x, d, t, o),
            8 => blocks_avx512_rows::<8>(format, c, s, kb, x, d, t, o),
            4 => blocks_avx512_rows::<4>(format, c, s, kb, x, d, t, o),
            2 => blocks_avx512_rows::<2>(format, c, s, kb, x, d, t, o),
            1 => blocks_avx512_rows::<1>(format, c, s, kb, x, d, t, o),
            other => unreachable!("no AVX-512 kernel for {other} rows"),
        }
    }

    /// `acc` plus, per 32-bit lane, the products of `w`'s two i16 with the two at `x`
    /// (broadcast): one `vpdpwssd` with an embedded broadcast. Written out: from the intrinsic,
    /// LLVM emitted `vpmaddwd` and `vpaddd` for the 8-row kernel and kept the broadcasts in
    /// spilled registers, which cost this kernel about a third of its rate.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpwssd_broadcast(acc: __m512i, w: __m512i, x: *const i16) -> __m512i {
        let mut acc = acc;
        std::arch::asm!(
            "vpdpwssd {acc}, {w}, dword ptr [{x}]{{1to16}}",
            acc = inout(zmm_reg) acc,
            w = in(zmm_reg) w,
            x = in(reg) x,
            options(pure, readonly, nostack, preserves_flags),
        );
        acc
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn blocks_avx512_rows<const R: usize>(
        format: Format,
        codes: *const u8,
        scales: *const f32,
        kb: usize,
        qx: *const i16,
        dx: *const f32,
        sx: *const f32,
        out: *mut f32,
    ) {
        let per_block = format.panel_bytes(BLOCK);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..kb {
            let blk = codes.add(b * per_block);
            let mut sums = [_mm512_setzero_si512(); R];
            if format == Format::Q8_0 {
                // u = q + 128: start from −128·Σqx so the sum is Σ q·qx, exactly.
                for (r, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_set1_epi32(-128 * *sx.add(r * kb + b) as i32);
                }
            }
            for g in 0..BLOCK / GROUP {
                // The 16 columns' two codes of this group, widened to i16 pairs.
                let w = _mm512_cvtepu8_epi16(group_codes(format, blk, g));
                for (r, sum) in sums.iter_mut().enumerate() {
                    *sum = dpwssd_broadcast(*sum, w, qx.add((r * kb + b) * BLOCK + g * GROUP));
                }
            }
            let (dw, mw) = (
                _mm512_loadu_ps(scales.add(b * 2 * PANEL)),
                _mm512_loadu_ps(scales.add(b * 2 * PANEL + PANEL)),
            );
            for (r, (acc, sum)) in acc.iter_mut().zip(&sums).enumerate() {
                let s = _mm512_set1_ps(*sx.add(r * kb + b));
                let t = _mm512_fmadd_ps(dw, _mm512_cvtepi32_ps(*sum), _mm512_mul_ps(mw, s));
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*dx.add(r * kb + b)), t, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * PANEL), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::{dequantize, GgmlType};
    use proptest::prelude::*;

    const FORMATS: [Format; 5] = [
        Format::Bf16,
        Format::F16,
        Format::Q8_0,
        Format::Q4_0,
        Format::Q4_1,
    ];

    /// A deterministic spread of values in (−1, 1), with a few larger ones.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if i % 97 == 0 {
                    u * 6.0
                } else {
                    u
                }
            })
            .collect()
    }

    /// x · W in f64 with W the unpacked weights (and for block formats x as quantised), and
    /// Σ |x|·|W| (the scale of rounding errors).
    fn reference(p: &PackedMatrix, x: &[f32], m: usize) -> (Vec<f64>, Vec<f64>) {
        let w = p.unpack();
        let x: Vec<f32> = if p.format.blocks() {
            let q = QuantisedRows::new(x, m, p.k);
            (0..m).flat_map(|r| q.row(r, p.k)).collect()
        } else {
            x.to_vec()
        };
        let (mut y, mut a) = (vec![0f64; m * p.n], vec![0f64; m * p.n]);
        for r in 0..m {
            for j in 0..p.k {
                for c in 0..p.n {
                    let v = x[r * p.k + j] as f64 * w[j * p.n + c] as f64;
                    y[r * p.n + c] += v;
                    // d·q and m are summed apart: both magnitudes bound the rounding.
                    let off = 2.0 * p.offset(j, c).abs() as f64 * x[r * p.k + j].abs() as f64;
                    a[r * p.n + c] += v.abs() + off;
                }
            }
        }
        (y, a)
    }

    /// The packing as first written, a column of a block at a time through `quantise_block`.
    fn pack_one_column_at_a_time(format: Format, w: &[f32], k: usize, n: usize) -> PackedMatrix {
        let (pb, ps) = (format.panel_bytes(k), format.panel_scales(k).max(1));
        let panels = n.div_ceil(PANEL);
        let (mut codes, mut scales) = (vec![0u8; panels * pb], vec![0f32; panels * ps]);
        for p in 0..panels {
            let (codes, scales) = (&mut codes[p * pb..], &mut scales[p * ps..]);
            for c in 0..(n - p * PANEL).min(PANEL) {
                let at = |j: usize| w[j * n + p * PANEL + c];
                if !format.blocks() {
                    for j in 0..k {
                        let h = match format {
                            Format::F16 => f32_to_f16(at(j)),
                            _ => to_bf16(at(j)),
                        };
                        codes[(j * PANEL + c) * 2..][..2].copy_from_slice(&h.to_le_bytes());
                    }
                    continue;
                }
                for b in 0..k.div_ceil(BLOCK) {
                    let (j0, len) = (b * BLOCK, (k - b * BLOCK).min(BLOCK));
                    let v: Vec<f32> = (j0..j0 + len).map(at).collect();
                    let mut q = vec![0u8; len];
                    let (d, m) = quantise_block(format, &v, &mut q);
                    scales[b * 2 * PANEL + c] = d;
                    scales[b * 2 * PANEL + PANEL + c] = m;
                    let shift = if format == Format::Q8_0 { 128u8 } else { 0 };
                    for (i, &q) in q.iter().enumerate() {
                        let (at, bits) = format.code_at(i, c);
                        codes[b * format.panel_bytes(BLOCK) + at] |= q.wrapping_add(shift) << bits;
                    }
                }
            }
        }
        PackedMatrix {
            format,
            k,
            n,
            codes,
            scales,
        }
    }

    #[test]
    fn packing_a_block_of_rows_at_a_time_gives_the_same_bits_on_every_instruction_set() {
        // Partial panels and blocks, an odd last block, more panels than a thread's group, and
        // values whose quantised codes land on halves.
        for (k, n, seed) in [
            (64, 48, 7),
            (75, 21, 7),
            (33, 16, 7),
            (1, 3, 7),
            (96, 300, 9),
        ] {
            let mut w = values(k * n, seed);
            w.iter_mut()
                .step_by(13)
                .for_each(|x| *x = (*x * 254.0).round() / 2.0);
            for format in FORMATS {
                let want = pack_one_column_at_a_time(format, &w, k, n);
                let got = PackedMatrix::pack(format, &w, k, n);
                assert_eq!(got.codes, want.codes, "{format:?} {k}×{n}");
                assert_eq!(got.scales, want.scales, "{format:?} {k}×{n}");
                // Each instruction set's copy of the panel packing, called directly.
                let (pb, ps) = (format.panel_bytes(k), format.panel_scales(k).max(1));
                for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                    if !isa.available() {
                        continue;
                    }
                    let mut codes = vec![0u8; want.codes.len()];
                    let mut scales = vec![0f32; want.scales.len()];
                    for p in 0..n.div_ceil(PANEL) {
                        let panel = PackPanel {
                            format,
                            w: &w,
                            shape: (k, n),
                            p,
                            blocks: 0..k.div_ceil(BLOCK),
                            codes: &mut codes[p * pb..][..pb],
                            scales: &mut scales[p * ps..][..ps],
                        };
                        vector::run(isa, panel);
                    }
                    assert_eq!(codes, want.codes, "{isa:?} {format:?} {k}×{n}");
                    assert_eq!(scales, want.scales, "{isa:?} {format:?} {k}×{n}");
                }
            }
        }
    }

    #[test]
    fn round_away_is_roundf() {
        // Halves, their neighbours one ulp either side, and a spread of values, both signs.
        let mut xs: Vec<f32> = (0..=300).map(|i| i as f32 * 0.5).collect();
        xs.extend(xs.clone().iter().flat_map(|&x| [next_up(x), next_down(x)]));
        xs.extend((0..10_000).map(|i| (i as f32 * 0.618_034).sin() * 130.0));
        xs.extend([0.499_999_97, 8_388_607.5, 8_388_607.0, 1e-30]);
        for x in xs.iter().flat_map(|&x| [x, -x]) {
            let (want, got) = (x.round(), round_away(x));
            assert_eq!(got.to_bits(), want.to_bits(), "{x}: {got} against {want}");
        }
        // What the Q8_0 packing's unchecked conversion relies on: never NaN, ±∞ saturated.
        assert_eq!(round_away(f32::NAN), 0.0);
        assert_eq!(round_away(f32::INFINITY), 2f32.powi(31));
        assert_eq!(round_away(f32::NEG_INFINITY), -(2f32.powi(31)));
        // A NaN weight beside finite ones packs to code 0 (128 stored), as `as i8` made it.
        let mut w = values(32 * 16, 3);
        w[5 * 16 + 2] = f32::NAN;
        let p = PackedMatrix::pack(Format::Q8_0, &w, 32, 16);
        let (at, _) = Format::Q8_0.code_at(5, 2);
        assert_eq!(p.codes[at], 128);
    }

    fn next_up(x: f32) -> f32 {
        f32::from_bits(x.to_bits() + 1)
    }

    fn next_down(x: f32) -> f32 {
        if x == 0.0 {
            -f32::from_bits(1)
        } else {
            f32::from_bits(x.to_bits() - 1)
        }
    }

    #[test]
    fn every_kernel_equals_the_unpacked_product() {
        // Shapes with a partial panel, a partial block and an odd number of inputs.
        for (k, n) in [(64, 48), (75, 21), (33, 16), (1, 3)] {
            let w = values(k * n, 1);
            for format in FORMATS {
                let p = PackedMatrix::pack(format, &w, k, n);
                for m in [1, 3, 7, 16, 21] {
                    let x = values(m * k, 2 + m as u64);
                    let (want, size) = reference(&p, &x, m);
                    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                        if !isa.available() {
                            continue;
                        }
                        let mut y = vec![f32::NAN; m * n];
                        p.matmul_with(isa, &x, m, &mut y);
                        for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                // The textbook bound of a k-term f32 sum: k · 2⁻²⁴ · Σ|terms|.
                                (got as f64 - want).abs() <= (k as f64 + 4.0) * 1.2e-7 * size[i],
                                "{} {} k={k} n={n} m={m} at {i}: {got} vs {want}",
                                isa.name(),
                                format.name(),
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_nan_input_reaches_the_outputs_as_in_an_f32_product() {
        let (k, n) = (64, 16);
        let w = values(k * n, 3);
        let mut x = values(2 * k, 4);
        x[k + 40] = f32::NAN;
        for format in FORMATS {
            let p = PackedMatrix::pack(format, &w, k, n);
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                if !isa.available() {
                    continue;
                }
                let mut y = vec![0f32; 2 * n];
                p.matmul_with(isa, &x, 2, &mut y);
                assert!(y[..n].iter().all(|v| v.is_finite()), "{}", format.name());
                assert!(
                    y[n..].iter().all(|v| v.is_nan()),
                    "{} {}",
                    format.name(),
                    isa.name()
                );
            }
        }
    }

    #[test]
    fn the_portable_kernel_is_always_available_and_best_never_exceeds_the_cpu() {
        assert!(Isa::Portable.available());
        assert!(Isa::best().available());
    }

    /// A ggml block file of `format` written from `w` by the GGUF reader's own dequantiser's
    /// inverse: packing the dequantised values gives the file's values back.
    #[test]
    fn packing_a_dequantised_ggml_matrix_gives_its_values_back() {
        let (k, n) = (96, 20);
        let w = values(k * n, 9);
        for (format, ggml, bytes) in [
            (Format::Q8_0, GgmlType::Q8_0, 34),
            (Format::Q4_0, GgmlType::Q4_0, 18),
            (Format::Q4_1, GgmlType::Q4_1, 20),
        ] {
            // Each output's row of k weights as ggml blocks (ggml's blocks run along a row).
            let mut file = Vec::new();
            for c in 0..n {
                let row: Vec<f32> = (0..k).map(|j| w[j * n + c]).collect();
                for blk in row.chunks(BLOCK) {
                    let mut q = [0u8; BLOCK];
                    let (d, m) = quantise_block(format, blk, &mut q);
                    file.extend(f32_to_f16(d).to_le_bytes());
                    match format {
                        Format::Q8_0 => file.extend(q),
                        _ => {
                            if format == Format::Q4_1 {
                                file.extend(f32_to_f16(m).to_le_bytes());
                            }
                            file.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
                        }
                    }
                }
            }
            assert_eq!(file.len(), n * k / BLOCK * bytes);
            let rows = dequantize(ggml, &file, n * k);
            // Transposed to [k, n], packed, unpacked: the file's values exactly.
            let wt: Vec<f32> = (0..k * n).map(|i| rows[(i % n) * k + i / n]).collect();
            let again = PackedMatrix::pack(format, &wt, k, n).unpack();
            assert_eq!(again, wt, "{}", format.name());
        }
    }

    proptest! {
        #[test]
        fn quantisation_error_stays_within_half_a_step(
            seed in 0u64..1000, k in 1usize..80, n in 1usize..40,
        ) {
            let w = values(k * n, seed);
            for format in [Format::Q8_0, Format::Q4_1, Format::Bf16] {
                let p = PackedMatrix::pack(format, &w, k, n);
                let back = p.unpack();
                for c in 0..n {
                    for b in 0..k.div_ceil(BLOCK) {
                        let js = b * BLOCK..((b + 1) * BLOCK).min(k);
                        let blk: Vec<f32> = js.clone().map(|j| w[j * n + c]).collect();
                        let amax = blk.iter().fold(0f32, |a, x| a.max(x.abs()));
                        let span = blk.iter().copied().fold(f32::MIN, f32::max)
                            - blk.iter().copied().fold(f32::MAX, f32::min);
                        let step = match format {
                            Format::Q8_0 => amax / 127.0,
                            Format::Q4_1 => span / 15.0,
                            _ => amax / 128.0,
                        };
                        for j in js {
                            let err = (back[j * n + c] - w[j * n + c]).abs();
                            // Half a step, and the f16 rounding of the scale (and Q4_1's
                            // minimum): ≤ 2^-11 relative, or 2^-25 absolute where the scale is
                            // an f16 subnormal (below 2^-14: a block of tiny weights), times up
                            // to 127 codes.
                            let subnormal = 128.0 * 2f32.powi(-25);
                            prop_assert!(err <= 0.5 * step + 2e-3 * amax + subnormal + 1e-7,
                                "{} err {err} step {step}", format.name());
                        }
                    }
                }
            }
        }
    }
}
