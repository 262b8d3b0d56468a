//! The reference log-prob cache: the reference model's summed log-probability of both responses
//! of every pair, stored on disk under a content hash of (reference weights, token ids, length
//! limits) and verified when loaded. Both responses are cached, so relabelling (which only swaps
//! chosen and rejected) never invalidates it. Score-model features (the frozen model's
//! last-token states of both responses of every pair) are kept the same way, so the scorers of a
//! job are trained without a forward pass when the model and data have not changed.
use crate::data::batch::TokenizedPair;
use crate::model::CausalLM;
use crate::util::Hasher;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A hash of every weight of the model as it computes now (LoRA adapters merged when on).
pub fn weights_fingerprint(model: &CausalLM) -> Result<u64> {
    let mut h = Hasher::new();
    for (name, t) in model.named_parameters()? {
        h.bytes(name.as_bytes());
        let flat = t.f_detach()?.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_flatten(0, -1)?;
        let n = flat.numel();
        let mut v = vec![0f32; n];
        flat.f_copy_data(&mut v, n)?;
        h.word(n as u64);
        for pair in v.chunks(2) {
            h.word(pair[0].to_bits() as u64 | (pair.get(1).map_or(0, |x| x.to_bits()) as u64) << 32);
        }
    }
    // A closed response space changes every log-probability of the same weights.
    if let Some(space) = &model.space {
        h.bytes(b"response space");
        h.word(space.length as u64);
        for &t in &space.allowed {
            h.word(t as u64);
        }
    }
    Ok(h.finish())
}

/// The cache key of a reference model over tokenised pairs.
pub fn key(weights: u64, pairs: &[TokenizedPair], max_prompt: usize, max_len: usize) -> String {
    let mut h = Hasher::new();
    h.word(weights);
    h.word(max_prompt as u64);
    h.word(max_len as u64);
    for p in pairs {
        for seq in [&p.prompt, &p.responses[0], &p.responses[1]] {
            h.word(seq.len() as u64);
            for &t in seq {
                h.word(t as u64);
            }
        }
    }
    format!("{:016x}", h.finish())
}

const MAGIC: &[u8; 8] = b"DREFLP01";
const FEATURES_MAGIC: &[u8; 8] = b"DFEATS01";

/// One kind of cache entry: its file magic, extension and what it holds (for messages).
struct Entry {
    magic: &'static [u8; 8],
    ext: &'static str,
    what: &'static str,
}

const REFERENCE: Entry = Entry { magic: MAGIC, ext: "reflogp", what: "reference cache entry" };
const FEATURES: Entry = Entry { magic: FEATURES_MAGIC, ext: "features", what: "score-feature cache entry" };

fn path(dir: &Path, key: &str, e: &Entry) -> PathBuf {
    dir.join(format!("{key}.{}", e.ext))
}

/// Loads `n` rows of `cols` f32 values stored under `key`, verifying the header and the checksum.
/// `Ok(None)` when there is no entry, or when the entry fails verification: a corrupt or truncated
/// entry is removed with one warning line, so the caller recomputes and stores it again.
fn load_rows(dir: &Path, key: &str, n: usize, cols: usize, e: &Entry) -> Result<Option<Vec<f32>>> {
    let p = path(dir, key, e);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("{}: cannot read", p.display())),
    };
    match verify(&bytes, key, n, cols, e) {
        Ok(values) => Ok(Some(values)),
        Err(problem) => {
            eprintln!("warning: {}: {} {problem}; discarded, recomputing", p.display(), e.what);
            let _ = std::fs::remove_file(&p);
            Ok(None)
        }
    }
}

/// The values of an entry's bytes, or what is wrong with them.
fn verify(bytes: &[u8], key: &str, n: usize, cols: usize, e: &Entry) -> std::result::Result<Vec<f32>, String> {
    let body_len = n * cols * 4;
    if bytes.len() != 8 + 16 + 8 + body_len + 8 || &bytes[..8] != e.magic || &bytes[8..24] != key.as_bytes() {
        return Err(format!("is corrupt (bad header or size: {} bytes, expected {})", bytes.len(), 8 + 16 + 8 + body_len + 8));
    }
    let count = u64::from_le_bytes(bytes[24..32].try_into().map_err(|_| "has a bad row count".to_string())?) as usize;
    if count != n {
        return Err(format!("is corrupt ({count} rows, expected {n})"));
    }
    let body = &bytes[32..32 + body_len];
    let mut h = Hasher::new();
    h.bytes(body);
    if h.finish().to_le_bytes() != bytes[32 + body_len..] {
        return Err("fails its checksum".into());
    }
    Ok(body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Stores rows of f32 values (`values.len() = rows × cols`) under `key`, atomically.
fn store_rows(dir: &Path, key: &str, rows: usize, values: &[f32], e: &Entry) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = e.magic.to_vec();
    out.extend(key.as_bytes());
    out.extend((rows as u64).to_le_bytes());
    let start = out.len();
    for v in values {
        out.extend(v.to_le_bytes());
    }
    let mut h = Hasher::new();
    h.bytes(&out[start..]);
    out.extend(h.finish().to_le_bytes());
    crate::run::write_atomic(&path(dir, key, e), &out)
}

/// Loads `[n][2]` reference log-probs for `key` (see `load_rows`).
pub fn load(dir: &Path, key: &str, n: usize) -> Result<Option<Vec<[f32; 2]>>> {
    Ok(load_rows(dir, key, n, 2, &REFERENCE)?.map(|v| v.chunks_exact(2).map(|c| [c[0], c[1]]).collect()))
}

/// Stores `[n][2]` reference log-probs under `key`, atomically.
pub fn store(dir: &Path, key: &str, values: &[[f32; 2]]) -> Result<()> {
    let flat: Vec<f32> = values.iter().flatten().copied().collect();
    store_rows(dir, key, values.len(), &flat, &REFERENCE)
}

/// Loads score-model features of the given shape (rows first; f32, on the CPU) for `key`, if stored.
pub fn load_features(dir: &Path, key: &str, shape: &[i64]) -> Result<Option<tch::Tensor>> {
    let rows = shape.first().copied().unwrap_or(0) as usize;
    let cols = shape.iter().skip(1).product::<i64>() as usize;
    match load_rows(dir, key, rows, cols, &FEATURES)? {
        Some(v) => Ok(Some(tch::Tensor::f_from_slice(&v)?.f_reshape(shape)?)),
        None => Ok(None),
    }
}

/// Stores score-model features (rows first) under `key`, atomically.
pub fn store_features(dir: &Path, key: &str, features: &tch::Tensor) -> Result<()> {
    let f = features.f_detach()?.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    let n = f.size().first().copied().unwrap_or(0) as usize;
    let mut v = vec![0f32; f.numel()];
    let len = v.len();
    f.f_copy_data(&mut v, len)?;
    store_rows(dir, key, n, &v, &FEATURES)
}

/// The default cache folder (reference log-probs and score-model features):
/// `$DUALIGN_CACHE/refcache` or `~/.cache/dualign/refcache`.
pub fn default_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DUALIGN_CACHE") {
        return PathBuf::from(d).join("refcache");
    }
    crate::model::assets_dir().parent().map(|p| p.join("refcache")).unwrap_or_else(|| PathBuf::from("refcache"))
}
