//! GGUF files (llama.cpp's format): header, metadata and tensor table parsed with bounds checks
//! on every read, and tensors dequantised to f32 at load (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
//! Layouts follow ggml's `ggml-common.h` block definitions.
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
    Q8_0,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }
    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

fn type_name(id: u32) -> String {
    let known = [
        (0, "F32"), (1, "F16"), (2, "Q4_0"), (3, "Q4_1"), (6, "Q5_0"), (7, "Q5_1"), (8, "Q8_0"), (9, "Q8_1"), (10, "Q2_K"),
        (11, "Q3_K"), (12, "Q4_K"), (13, "Q5_K"), (14, "Q6_K"), (15, "Q8_K"), (16, "IQ2_XXS"), (24, "I8"), (25, "I16"),
        (26, "I32"), (27, "I64"), (28, "F64"), (30, "BF16"),
    ];
    known.iter().find(|(i, _)| *i == id).map_or(format!("type {id}"), |(_, n)| n.to_string())
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
                    if n % block != 0 {
                        bail!("tensor {}: {n} elements is not a multiple of the {block}-element {:?} block", t.name, ty);
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
                "{}: tensor {} has type {}, which this loader does not dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                self.path.display(),
                info.name,
                type_name(info.type_id)
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
    }
    out
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
        let path = dir.join("q4k.gguf");
        std::fs::write(&path, one_tensor_file(12, 144)).unwrap(); // 12 = Q4_K
        let g = Gguf::open(&path).unwrap();
        let e = g.dequantize(&g.tensors[0]).unwrap_err().to_string();
        assert!(e.ends_with("q4k.gguf: tensor w has type Q4_K, which this loader does not dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"), "{e}");
        // The same file declaring F32 needs 1024 bytes of data after the 64-byte header: 144 is a truncated file.
        std::fs::write(&path, one_tensor_file(0, 144)).unwrap();
        let e = format!("{:#}", Gguf::open(&path).err().unwrap());
        assert!(e.contains("not a valid GGUF file: truncated: tensor w needs bytes 64..1088 but the file has 208"), "{e}");
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
