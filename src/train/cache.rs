//! The reference log-prob cache: the reference model's summed log-probability of both responses
//! of every pair, stored on disk under a content hash of (reference weights, token ids, length
//! limits) and verified when loaded. Both responses are cached, so relabelling (which only swaps
//! chosen and rejected) never invalidates it.
use crate::data::batch::TokenizedPair;
use crate::model::CausalLM;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A fast 64-bit hash over words (not cryptographic: it names cache entries, it does not
/// defend against forgery).
pub struct Hasher(u64);

impl Hasher {
    pub fn new() -> Self {
        Hasher(0xcbf2_9ce4_8422_2325)
    }
    pub fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x1000_0000_01b3).rotate_left(29) ^ (w >> 17);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        for c in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
    }
    pub fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

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

fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.reflogp"))
}

/// Loads `[n][2]` log-probs for `key`, verifying the header and the checksum. `Ok(None)` when
/// there is no entry; an entry that fails verification is an error (and is left for inspection).
pub fn load(dir: &Path, key: &str, n: usize) -> Result<Option<Vec<[f32; 2]>>> {
    let p = path(dir, key);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", p.display())),
    };
    let want = 8 + 16 + 8 + n * 8 + 8;
    if bytes.len() != want || &bytes[..8] != MAGIC || &bytes[8..24] != key.as_bytes() {
        bail!("{}: corrupt reference cache entry (bad header or size); delete it to recompute", p.display());
    }
    let count = u64::from_le_bytes(bytes[24..32].try_into()?) as usize;
    if count != n {
        bail!("{}: corrupt reference cache entry ({count} pairs, expected {n}); delete it to recompute", p.display());
    }
    let body = &bytes[32..32 + n * 8];
    let mut h = Hasher::new();
    h.bytes(body);
    if h.finish().to_le_bytes() != bytes[32 + n * 8..] {
        bail!("{}: reference cache entry fails its checksum; delete it to recompute", p.display());
    }
    Ok(Some(body.chunks_exact(8).map(|c| [f32::from_le_bytes(c[..4].try_into().unwrap_or_default()), f32::from_le_bytes(c[4..].try_into().unwrap_or_default())]).collect()))
}

/// Stores `[n][2]` log-probs under `key`, atomically.
pub fn store(dir: &Path, key: &str, values: &[[f32; 2]]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = MAGIC.to_vec();
    out.extend(key.as_bytes());
    out.extend((values.len() as u64).to_le_bytes());
    let start = out.len();
    for v in values {
        out.extend(v[0].to_le_bytes());
        out.extend(v[1].to_le_bytes());
    }
    let mut h = Hasher::new();
    h.bytes(&out[start..]);
    out.extend(h.finish().to_le_bytes());
    crate::run::write_atomic(&path(dir, key), &out)
}

/// The default cache folder: `$DUALIGN_CACHE/refcache` or `~/.cache/dualign/refcache`.
pub fn default_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DUALIGN_CACHE") {
        return PathBuf::from(d).join("refcache");
    }
    crate::model::assets_dir().parent().map(|p| p.join("refcache")).unwrap_or_else(|| PathBuf::from("refcache"))
}
