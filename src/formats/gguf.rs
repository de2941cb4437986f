//! A reader for GGUF files (llama.cpp's model format, version 2 and 3), memory-mapped.
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, the metadata (typed key–value
//! pairs), the tensor descriptions (name, dimensions with the fastest-varying first, element type,
//! offset), then the tensor data, aligned to `general.alignment` (32 bytes by default). Tensors of
//! type F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are dequantised to f32 on load; any other type is an
//! error that names it.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Metadata arrays nest at most this deep (GGUF's own files nest none): a file of nested array
/// headers would otherwise recurse once per 12 bytes.
const MAX_ARRAY_DEPTH: usize = 4;
/// The largest `general.alignment` accepted (GGUF's default is 32).
const MAX_ALIGNMENT: u64 = 1 << 20;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// The element types this reader dequantises (ggml's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Bf16,
}

impl GgmlType {
    fn from_id(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            other => return Err(type_name(other)),
        })
    }

    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
        }
    }
}

/// ggml's name of a type id, for errors.
fn type_name(id: u32) -> String {
    let names = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    names
        .get(id as usize)
        .map_or_else(|| format!("type {id}"), |n| n.to_string())
}

/// A tensor's description.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// PyTorch order: the slowest-varying dimension first (GGUF stores the reverse).
    pub shape: Vec<usize>,
    pub kind: std::result::Result<GgmlType, String>,
    /// Byte offset from the start of the data section.
    pub offset: usize,
}

/// An open GGUF file.
pub struct Gguf {
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
    what: String,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!("truncated at byte {}", self.pos)),
        }
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len(&mut self) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(format!(
                "a length of {n} at byte {} is past the file's end",
                self.pos - 8
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("a string before byte {} is not UTF-8", self.pos))
    }
    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U64(self.take(1)?[0] as u64),
            1 => Value::I64(self.take(1)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "arrays nested deeper than {MAX_ARRAY_DEPTH} at byte {}",
                        self.pos
                    ));
                }
                let item = self.u32()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            other => {
                return Err(format!(
                    "unknown metadata type {other} at byte {}",
                    self.pos - 4
                ))
            }
        })
    }
}

impl Gguf {
    /// Opens and parses `path`; the tensor data stays mapped, not read.
    pub fn open(path: &Path) -> Result<Self> {
        let what = path.display().to_string();
        let shown = what.clone();
        let bad = move |m: String| Error::input(format!("{shown}: not a readable GGUF file: {m}"));
        let file = File::open(path).map_err(|e| Error::input(format!("{what}: {e}")))?;
        // SAFETY: the map is read-only; a file changed under a running process is outside what
        // any model loader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::input(format!("{what}: {e}")))?;
        let mut c = Cursor { buf: &map, pos: 0 };
        if c.take(4).map_err(&bad)? != b"GGUF" {
            return Err(bad("it does not start with GGUF".into()));
        }
        let version = c.u32().map_err(&bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "version {version} (this reader knows 2 and 3)"
            )));
        }
        let n_tensors = c.len().map_err(&bad)?;
        let n_kv = c.len().map_err(&bad)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string().map_err(&bad)?;
            let ty = c.u32().map_err(&bad)?;
            let v = c.value(ty, 0).map_err(&bad)?;
            metadata.insert(key, v);
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = c.string().map_err(&bad)?;
            let dims = c.u32().map_err(&bad)?;
            if !(1..=8).contains(&dims) {
                return Err(bad(format!("tensor {name} has {dims} dimensions")));
            }
            let mut shape = (0..dims)
                .map(|_| c.len())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(&bad)?;
            shape.reverse();
            let kind = GgmlType::from_id(c.u32().map_err(&bad)?);
            let offset = c.len().map_err(&bad)?;
            let info = TensorInfo {
                shape,
                kind,
                offset,
            };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(bad(format!("tensor {name} is described twice")));
            }
        }
        let align = match metadata.get("general.alignment").map(Value::as_u64) {
            None => 32,
            Some(Some(a)) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a as usize,
            Some(other) => {
                return Err(bad(format!(
                    "general.alignment {other:?} (a power of two up to {MAX_ALIGNMENT})"
                )))
            }
        };
        let data_start = c.pos.next_multiple_of(align);
        check_extents(&tensors, data_start, map.len()).map_err(&bad)?;
        Ok(Gguf {
            map,
            version,
            metadata,
            tensors,
            data_start,
            what,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor dequantised to f32, with its shape (PyTorch order).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::input(format!("{}: no tensor {name}", self.what)))?;
        let kind = info.kind.clone().map_err(|t| {
            Error::input(format!(
                "{}: tensor {name} has type {t}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1",
                self.what
            ))
        })?;
        // Checked when the file was opened: in the file, no overflow.
        let len = byte_len(kind, &info.shape).unwrap_or(0);
        let start = self.data_start + info.offset;
        let bytes = &self.map[start..start + len];
        let n: usize = info.shape.iter().product();
        Ok((info.shape.clone(), dequantize(kind, bytes, n)))
    }
}

/// The bytes a tensor of `shape` takes; `None` when that overflows.
fn byte_len(kind: GgmlType, shape: &[usize]) -> Option<usize> {
    let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let (per, bytes) = kind.block();
    n.div_ceil(per).checked_mul(bytes)
}

/// Every tensor of a known type lies inside the data section (`data_start`..`file_len`) and
/// none overlaps another.
fn check_extents(
    tensors: &BTreeMap<String, TensorInfo>,
    data_start: usize,
    file_len: usize,
) -> std::result::Result<(), String> {
    let mut extents: Vec<(usize, usize, &str)> = Vec::new();
    for (name, info) in tensors {
        let Ok(kind) = info.kind else { continue };
        let len = byte_len(kind, &info.shape)
            .ok_or_else(|| format!("tensor {name}'s shape {:?} overflows", info.shape))?;
        let start = data_start
            .checked_add(info.offset)
            .ok_or_else(|| format!("tensor {name}'s offset overflows"))?;
        match start.checked_add(len) {
            Some(end) if end <= file_len => extents.push((start, end, name)),
            _ => return Err(format!("tensor {name} runs past the end of the file")),
        }
    }
    extents.sort_unstable();
    for pair in extents.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(format!("tensors {a} and {b} overlap"));
        }
    }
    Ok(())
}

/// IEEE half precision to f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m · 2^-24.
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE half precision (round to nearest even), for writing test files.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut v = m >> shift;
        if rest > half || (rest == half && v & 1 == 1) {
            v += 1;
        }
        return sign | v as u16;
    }
    let mut v = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && v & 1 == 1) {
        v += 1;
    }
    sign | v as u16
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Dequantises `n` elements of `kind` from `bytes` (ggml's block layouts).
pub fn dequantize(kind: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match kind {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| half_at(c, 0))),
        GgmlType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
        ),
        GgmlType::Q8_0 => {
            for blk in bytes.chunks_exact(34) {
                let d = half_at(blk, 0);
                out.extend(blk[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for blk in bytes.chunks_exact(18) {
                let d = half_at(blk, 0);
                let qs = &blk[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xf) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for blk in bytes.chunks_exact(20) {
                let (d, m) = (half_at(blk, 0), half_at(blk, 2));
                let qs = &blk[4..];
                out.extend(qs.iter().map(|&q| (q & 0xf) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A GGUF file written by hand: metadata and tensor descriptions as given, then `data`.
    struct Builder {
        kv: Vec<u8>,
        n_kv: u64,
        tensors: Vec<u8>,
        n_tensors: u64,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                kv: Vec::new(),
                n_kv: 0,
                tensors: Vec::new(),
                n_tensors: 0,
            }
        }

        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }

        fn kv_u32(mut self, key: &str, v: u32) -> Self {
            Self::string(&mut self.kv, key);
            self.kv.extend(4u32.to_le_bytes());
            self.kv.extend(v.to_le_bytes());
            self.n_kv += 1;
            self
        }

        fn kv_raw(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
            Self::string(&mut self.kv, key);
            self.kv.extend(ty.to_le_bytes());
            self.kv.extend(value);
            self.n_kv += 1;
            self
        }

        /// An F32 tensor of `dims` (GGUF order) at `offset`.
        fn tensor(mut self, name: &str, dims: &[u64], offset: u64) -> Self {
            Self::string(&mut self.tensors, name);
            self.tensors.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.tensors.extend(d.to_le_bytes());
            }
            self.tensors.extend(0u32.to_le_bytes());
            self.tensors.extend(offset.to_le_bytes());
            self.n_tensors += 1;
            self
        }

        fn bytes(&self, data_len: usize) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend(self.n_tensors.to_le_bytes());
            out.extend(self.n_kv.to_le_bytes());
            out.extend(&self.kv);
            out.extend(&self.tensors);
            out.resize(out.len().next_multiple_of(32) + data_len, 0);
            out
        }
    }

    fn open_bytes(bytes: &[u8]) -> Result<Gguf> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        Gguf::open(&path)
    }

    fn refused(bytes: &[u8], want: &str) {
        match open_bytes(bytes) {
            Ok(_) => panic!("accepted; wanted an error with {want:?}"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("not a readable GGUF file") && text.contains(want),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn a_well_formed_file_reads_back() {
        let b = Builder::new()
            .kv_u32("general.alignment", 32)
            .tensor("a", &[4, 2], 0)
            .tensor("b", &[3], 32);
        let g = open_bytes(&b.bytes(64)).unwrap();
        assert_eq!(g.tensors["a"].shape, vec![2, 4]);
        let (shape, values) = g.tensor_f32("b").unwrap();
        assert_eq!((shape, values), (vec![3], vec![0.0; 3]));
    }

    /// Headers that lie about sizes are one error each, never a panic, a hang or an
    /// allocation of what they claim.
    #[test]
    fn hostile_headers_are_refused() {
        let mut counts = b"GGUF".to_vec();
        counts.extend(3u32.to_le_bytes());
        counts.extend((1u64 << 60).to_le_bytes());
        counts.extend(0u64.to_le_bytes());
        refused(&counts, "past the file's end");
        let long_key = Builder::new().kv_raw("k", 8, &(u64::MAX - 3).to_le_bytes());
        refused(&long_key.bytes(0), "past the file's end");
        let mut nested = Vec::new();
        for _ in 0..10_000 {
            nested.extend(9u32.to_le_bytes());
            nested.extend(1u64.to_le_bytes());
        }
        let deep = Builder::new().kv_raw("k", 9, &nested[..]);
        refused(&deep.bytes(0), "nested deeper");
        refused(
            &Builder::new().tensor("a", &[8], 64).bytes(32),
            "runs past the end",
        );
        // Each dimension fits in the file; their product (2^64) does not fit in memory.
        let huge = Builder::new().tensor("a", &[256; 8], 0);
        refused(&huge.bytes(256), "overflows");
        let overlap = Builder::new().tensor("a", &[8], 0).tensor("b", &[8], 16);
        refused(&overlap.bytes(64), "overlap");
        let twice = Builder::new().tensor("a", &[8], 0).tensor("a", &[8], 32);
        refused(&twice.bytes(64), "described twice");
        let align = Builder::new().kv_raw("general.alignment", 10, &(1u64 << 62).to_le_bytes());
        refused(&align.bytes(0), "general.alignment");
        let dims = Builder::new().tensor("a", &[1; 9], 0);
        refused(&dims.bytes(32), "9 dimensions");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Random bytes after the magic, and random damage to a good file: errors, no panic.
        #[test]
        fn prop_random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
            bytes.extend(&tail);
            let _ = open_bytes(&bytes);
        }

        #[test]
        fn prop_damaged_files_never_panic(at in 0usize..200, byte in any::<u8>()) {
            let good = Builder::new()
                .kv_u32("general.alignment", 32)
                .kv_raw("tokenizer.ggml.tokens", 9, &{
                    let mut v = 8u32.to_le_bytes().to_vec();
                    v.extend(2u64.to_le_bytes());
                    for t in ["a", "bc"] {
                        v.extend((t.len() as u64).to_le_bytes());
                        v.extend(t.as_bytes());
                    }
                    v
                })
                .tensor("a", &[4, 2], 0)
                .bytes(32);
            let mut bytes = good.clone();
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(g) = open_bytes(&bytes) {
                for name in g.tensors.keys() {
                    let _ = g.tensor_f32(name);
                }
            }
        }
    }

    #[test]
    fn half_conversions_round_trip_and_match_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        for h in 0u16..=0xffff {
            let x = f16_to_f32(h);
            if x.is_finite() {
                assert_eq!(f32_to_f16(x), h, "{h:#06x} → {x}");
            }
        }
    }

    #[test]
    fn q4_1_and_q8_0_blocks_dequantise_by_hand() {
        let mut q8 = f32_to_f16(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &q8, 32);
        assert_eq!(x[0], -8.0);
        assert_eq!(x[31], 7.5);
        let mut q41 = f32_to_f16(2.0).to_le_bytes().to_vec();
        q41.extend(f32_to_f16(-1.0).to_le_bytes());
        q41.extend((0..16).map(|i| (i as u8) | (15 - i as u8) << 4));
        let x = dequantize(GgmlType::Q4_1, &q41, 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[15], 29.0);
        assert_eq!(x[16], 29.0);
        assert_eq!(x[31], -1.0);
    }
}
