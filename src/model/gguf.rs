//! GGUF files (llama.cpp's format): header, metadata and tensor table parsed with bounds checks
//! on every read, and tensors dequantised to f32 at load (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). Layouts follow ggml's `ggml-common.h` block definitions;
//! the arithmetic (f32, in the order written) is that of llama.cpp's `gguf` Python package, so the
//! values are equal bit for bit (tests/models.rs).
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
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
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this loader dequantises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

/// Every supported type: (ggml id, the type, its name, elements per block, bytes per block), the
/// sizes from ggml's `ggml-common.h` (QK_K = 256 for the K-quants).
const TYPES: [(u32, GgmlType, &str, usize, usize); 13] = [
    (0, GgmlType::F32, "F32", 1, 4),
    (1, GgmlType::F16, "F16", 1, 2),
    (30, GgmlType::BF16, "BF16", 1, 2),
    (8, GgmlType::Q8_0, "Q8_0", 32, 34),
    (2, GgmlType::Q4_0, "Q4_0", 32, 18),
    (3, GgmlType::Q4_1, "Q4_1", 32, 20),
    (6, GgmlType::Q5_0, "Q5_0", 32, 22),
    (7, GgmlType::Q5_1, "Q5_1", 32, 24),
    (10, GgmlType::Q2K, "Q2_K", 256, 84),
    (11, GgmlType::Q3K, "Q3_K", 256, 110),
    (12, GgmlType::Q4K, "Q4_K", 256, 144),
    (13, GgmlType::Q5K, "Q5_K", 256, 176),
    (14, GgmlType::Q6K, "Q6_K", 256, 210),
];

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.0 == id).map(|t| t.1)
    }
    fn entry(self) -> &'static (u32, GgmlType, &'static str, usize, usize) {
        TYPES.iter().find(|t| t.1 == self).expect("every GgmlType is in TYPES")
    }
    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        let e = self.entry();
        (e.3, e.4)
    }
    /// ggml's name of the type (`Q4_K`).
    pub fn name(self) -> &'static str {
        self.entry().2
    }
}

/// The names of the supported types, for error messages.
fn supported_types() -> String {
    TYPES.iter().map(|t| t.2).collect::<Vec<_>>().join(", ")
}

fn type_name(id: u32) -> String {
    let known = [
        (9, "Q8_1"), (15, "Q8_K"), (16, "IQ2_XXS"), (17, "IQ2_XS"), (18, "IQ3_XXS"), (19, "IQ1_S"), (20, "IQ4_NL"),
        (21, "IQ3_S"), (22, "IQ2_S"), (23, "IQ4_XS"), (24, "I8"), (25, "I16"), (26, "I32"), (27, "I64"), (28, "F64"),
        (29, "IQ1_M"), (34, "TQ1_0"), (35, "TQ2_0"),
    ];
    match GgmlType::from_id(id) {
        Some(t) => t.name().to_string(),
        None => known.iter().find(|(i, _)| *i == id).map_or(format!("type {id}"), |(_, n)| n.to_string()),
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in PyTorch order (GGUF stores the fastest-varying dimension first; this is reversed).
    pub shape: Vec<usize>,
    pub type_id: u32,
    /// Offset of the data from the start of the file.
    pub offset: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed GGUF file; tensor data stays in the memory map until dequantised.
pub struct Gguf {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: memmap2::Mmap,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!("truncated header: {what} needs {n} bytes at offset {} but the file has {}", self.pos, self.buf.len());
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap_or_default()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.buf.len() as u64 {
            bail!("bad header: {what} claims a string of {n} bytes at offset {}", self.pos);
        }
        let bytes = self.take(n as usize, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.take(1, what)?[0] as u64),
            1 => Value::I64(self.take(1, what)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap_or_default()) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2, what)?.try_into().unwrap_or_default()) as i64),
            4 => Value::U64(self.u32(what)? as u64),
            5 => Value::I64(self.u32(what)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(what)?) as f64),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth > 4 {
                    bail!("bad header: arrays nested too deeply in {what}");
                }
                let item_ty = self.u32(what)?;
                let n = self.u64(what)?;
                // Every item takes at least one byte: a count beyond the file is corrupt.
                if n > (self.buf.len() - self.pos) as u64 {
                    bail!("bad header: {what} claims {n} array items at offset {}", self.pos);
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            _ => bail!("bad header: unknown metadata value type {ty} for {what}"),
        })
    }
}

impl Gguf {
    /// Opens and parses the header, metadata and tensor table. Errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: the map is read-only and this process does not modify the file; a file changed
        // underneath us by another process is outside what any loader can guard against.
        let data = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
        Self::parse(path, data).with_context(|| format!("{}: not a valid GGUF file", path.display()))
    }

    fn parse(path: &Path, data: memmap2::Mmap) -> Result<Self> {
        let mut r = Reader { buf: &data, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != b"GGUF" {
            bail!("bad magic {:?} (expected \"GGUF\")", String::from_utf8_lossy(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version} (supported: 2 and 3)");
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each metadata entry takes at least 13 bytes (key length, type, a one-byte value) and
        // each tensor entry 24 (name length, dimension count, type, offset): counts the rest of
        // the file cannot hold are corrupt, caught before anything is reserved for them.
        let left = (r.buf.len() - r.pos) as u64;
        if n_tensors > 1 << 24 || n_kv > 1 << 24 || n_kv > left / 13 || n_tensors > left / 24 {
            bail!("bad header: {n_tensors} tensors and {n_kv} metadata entries cannot fit in the {left} bytes left");
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name {i}"))?;
            let n_dims = r.u32(&name)?;
            if n_dims > 8 {
                bail!("tensor {name}: {n_dims} dimensions");
            }
            let mut dims = Vec::new();
            for _ in 0..n_dims {
                dims.push(r.u64(&name)? as usize);
            }
            let type_id = r.u32(&name)?;
            let offset = r.u64(&name)? as usize;
            dims.reverse();
            tensors.push(TensorInfo { name, shape: dims, type_id, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        if alignment == 0 || !alignment.is_power_of_two() {
            bail!("bad general.alignment {alignment}");
        }
        let start = r.pos.div_ceil(alignment) * alignment;
        for t in &mut tensors {
            let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let ty = GgmlType::from_id(t.type_id);
            let bytes = match (numel, ty) {
                (Some(n), Some(ty)) => {
                    let (block, size) = ty.block();
                    // ggml quantises row by row: each row (the innermost dimension) is whole blocks.
                    let row = t.shape.last().copied().unwrap_or(1);
                    if row % block != 0 {
                        bail!("tensor {}: rows of {row} elements are not a multiple of the {block}-element {} block", t.name, ty.name());
                    }
                    // Checked: 2^62 F32 elements would wrap to 0 bytes and pass the bounds check.
                    Some((n / block).checked_mul(size).ok_or_else(|| anyhow::anyhow!("tensor {}: shape {:?} overflows", t.name, t.shape))?)
                }
                (None, _) => bail!("tensor {}: shape {:?} overflows", t.name, t.shape),
                (_, None) => None, // unsupported type: reported if the tensor is read
            };
            t.offset = start.checked_add(t.offset).ok_or_else(|| anyhow::anyhow!("tensor {}: bad offset", t.name))?;
            if let Some(bytes) = bytes {
                if t.offset.checked_add(bytes).is_none_or(|end| end > data.len()) {
                    // The end as u128: offset + size can exceed usize (fuzz target `gguf`, crash-29afca55).
                    bail!("truncated: tensor {} needs bytes {}..{} but the file has {}", t.name, t.offset, t.offset as u128 + bytes as u128, data.len());
                }
            }
        }
        Ok(Gguf { path: path.to_path_buf(), metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata entry, with an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).with_context(|| format!("{}: missing metadata {key}", self.path.display()))
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantises one tensor to f32 values in row-major (PyTorch) order.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let ty = GgmlType::from_id(info.type_id).with_context(|| {
            format!(
                "{}: tensor {} has type {}, which this loader does not dequantise (supported: {})",
                self.path.display(),
                info.name,
                type_name(info.type_id),
                supported_types()
            )
        })?;
        let n = info.numel();
        let (block, size) = ty.block();
        let raw = &self.data[info.offset..info.offset + n / block * size];
        Ok(dequantize(ty, raw, n))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `n` elements of type `ty` from `raw` (whose length the caller has checked).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        // block_q8_0 { half d; int8 qs[32]; }: x = d * q
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        // block_q4_0 { half d; uint8 qs[16]; }: low nibbles are elements 0..16, high 16..32; x = d * (q - 8)
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0F) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        // block_q4_1 { half d; half m; uint8 qs[16]; }: x = d * q + m
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        // block_q5_0 { half d; uint32 qh; uint8 qs[16]; }: bit i of qh is the fifth bit of element
        // i; x = d * (q - 16)
        GgmlType::Q5_0 => {
            for b in raw.chunks_exact(22) {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                out.extend((0..32).map(|i| d * (q5(&b[6..22], qh, i) as i32 - 16) as f32));
            }
        }
        // block_q5_1 { half d; half m; uint32 qh; uint8 qs[16]; }: x = d * q + m
        GgmlType::Q5_1 => {
            for b in raw.chunks_exact(24) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                out.extend((0..32).map(|i| d * q5(&b[8..24], qh, i) as f32 + m));
            }
        }
        // block_q2_K { uint8 scales[16]; uint8 qs[64]; half d; half dmin; }: 16 groups of 16, each
        // with a 4-bit scale (low nibble) and min (high nibble); element j*128 + s*32 + l is bits
        // 2s..2s+2 of qs[j*32 + l]; x = d*sc * q - dmin*m
        GgmlType::Q2K => {
            for b in raw.chunks_exact(84) {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                for e in 0..256 {
                    let (j, s, l) = (e / 128, e % 128 / 32, e % 32);
                    let q = (qs[j * 32 + l] >> (2 * s)) & 3;
                    let g = scales[e / 16];
                    out.push(d * (g & 0xF) as f32 * q as f32 - dmin * (g >> 4) as f32);
                }
            }
        }
        // block_q3_K { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d; }: 16 groups of 16
        // with 6-bit scales (low 4 bits in scales[0..8] nibbles, high 2 bits in scales[8..12]),
        // offset by 32; the low 2 bits of element j*128 + s*32 + l as in Q2_K, and bit b of
        // hmask[l] for element b*32 + l: when it is clear, 4 is subtracted; x = d*(sc - 32) * q
        GgmlType::Q3K => {
            for b in raw.chunks_exact(110) {
                let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16_at(b, 108);
                let scale = |i: usize| {
                    let low = (sc[i % 8] >> (4 * (i / 8))) & 0xF;
                    let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
                    ((low | high << 4) as i8 - 32) as f32
                };
                for e in 0..256 {
                    let (j, s, l) = (e / 128, e % 128 / 32, e % 32);
                    let low = ((qs[j * 32 + l] >> (2 * s)) & 3) as i8;
                    let high = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
                    out.push(d * scale(e / 16) * (low - (high << 2) as i8) as f32);
                }
            }
        }
        // block_q4_K { half d; half dmin; uint8 scales[12]; uint8 qs[128]; }: 8 groups of 32 with
        // 6-bit scales and mins (`k_scale_min`); element j*64 + h*32 + l is nibble h of
        // qs[j*32 + l]; x = d*sc * q - dmin*m
        GgmlType::Q4K => {
            for b in raw.chunks_exact(144) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, qs) = (&b[4..16], &b[16..144]);
                for e in 0..256 {
                    let q = (qs[e / 64 * 32 + e % 32] >> (4 * (e / 32 % 2))) & 0xF;
                    let (scale, min) = k_scale_min(sc, e / 32);
                    out.push(d * scale as f32 * q as f32 - dmin * min as f32);
                }
            }
        }
        // block_q5_K { half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; }: Q4_K
        // plus a fifth bit, bit b of qh[l] for element b*32 + l
        GgmlType::Q5K => {
            for b in raw.chunks_exact(176) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for e in 0..256 {
                    let low = (qs[e / 64 * 32 + e % 32] >> (4 * (e / 32 % 2))) & 0xF;
                    let q = low | ((qh[e % 32] >> (e / 32)) & 1) << 4;
                    let (scale, min) = k_scale_min(sc, e / 32);
                    out.push(d * scale as f32 * q as f32 - dmin * min as f32);
                }
            }
        }
        // block_q6_K { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }: 16 groups of 16
        // with signed 8-bit scales; element j*128 + h*64 + l takes nibble h of ql[j*64 + l] and,
        // as element j*128 + s*32 + l', bits 2s..2s+2 of qh[j*32 + l']; x = d*sc * (q - 32)
        GgmlType::Q6K => {
            for b in raw.chunks_exact(210) {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for e in 0..256 {
                    let (j, r) = (e / 128, e % 128);
                    let low = (ql[j * 64 + r % 64] >> (4 * (r / 64))) & 0xF;
                    let high = (qh[j * 32 + r % 32] >> (2 * (r / 32))) & 3;
                    out.push(d * (sc[e / 16] as i8) as f32 * ((low | high << 4) as i8 - 32) as f32);
                }
            }
        }
    }
    out
}

/// Element `i` (0..32) of a Q5_0 / Q5_1 block: nibble `i / 16` of `qs[i % 16]` and bit `i` of `qh`.
fn q5(qs: &[u8], qh: u32, i: usize) -> u8 {
    (qs[i % 16] >> (4 * (i / 16))) & 0xF | (((qh >> i) & 1) as u8) << 4
}

/// Scale and min of group `g` (0..8) of a Q4_K / Q5_K block: 6 bits each, packed in 12 bytes
/// (ggml's `get_scale_min_k4`).
fn k_scale_min(sc: &[u8], g: usize) -> (u8, u8) {
    if g < 4 {
        (sc[g] & 63, sc[g + 4] & 63)
    } else {
        ((sc[g + 4] & 0xF) | ((sc[g - 4] >> 6) << 4), (sc[g + 4] >> 4) | ((sc[g] >> 6) << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF v3 file: no metadata, one 1-d tensor `w` of 256 elements of `type_id`.
    fn one_tensor_file(type_id: u32, data_len: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(0u64.to_le_bytes()); // metadata entries
        b.extend(1u64.to_le_bytes());
        b.extend(b"w");
        b.extend(1u32.to_le_bytes());
        b.extend(256u64.to_le_bytes());
        b.extend(type_id.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend(vec![0u8; data_len]);
        b
    }

    #[test]
    fn unsupported_tensor_type_is_named_when_read() {
        let dir = std::env::temp_dir().join(format!("dualign-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("iq4xs.gguf");
        std::fs::write(&path, one_tensor_file(23, 136)).unwrap(); // 23 = IQ4_XS
        let g = Gguf::open(&path).unwrap();
        let e = g.dequantize(&g.tensors[0]).unwrap_err().to_string();
        assert!(e.ends_with("iq4xs.gguf: tensor w has type IQ4_XS, which this loader does not dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"), "{e}");
        // The same file declaring F32 needs 1024 bytes of data after the 64-byte header: 136 is a truncated file.
        std::fs::write(&path, one_tensor_file(0, 136)).unwrap();
        let e = format!("{:#}", Gguf::open(&path).err().unwrap());
        assert!(e.contains("not a valid GGUF file: truncated: tensor w needs bytes 64..1088 but the file has 200"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn q4_blocks_follow_ggml_layout() {
        // One Q4_0 block with d = 2.0: byte 0x91 holds element 0 (low nibble 1 -> (1-8)*2 = -14)
        // and element 16 (high nibble 9 -> (9-8)*2 = 2).
        let mut raw = f16::from_f32(2.0).to_le_bytes().to_vec();
        raw.extend([0x91u8; 16]);
        let x = dequantize(GgmlType::Q4_0, &raw, 32);
        assert_eq!((x[0], x[15], x[16], x[31]), (-14.0, -14.0, 2.0, 2.0));
        // Q4_1 with d = 0.5, m = -1: low nibble 1 -> -0.5, high nibble 9 -> 3.5.
        let mut raw = f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend(f16::from_f32(-1.0).to_le_bytes());
        raw.extend([0x91u8; 16]);
        let x = dequantize(GgmlType::Q4_1, &raw, 32);
        assert_eq!((x[0], x[16]), (-0.5, 3.5));
        // Q8_0 with d = 0.25: q = -4 -> -1.0.
        let mut raw = f16::from_f32(0.25).to_le_bytes().to_vec();
        raw.extend([(-4i8) as u8; 32]);
        assert_eq!(dequantize(GgmlType::Q8_0, &raw, 32)[5], -1.0);
    }
}
