//! Named weight tensors (HF keys) from safetensors files, single or sharded, with shape checks
//! that name the file and the tensor.
use crate::util::first_line;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct Weights {
    pub map: BTreeMap<String, Tensor>,
    /// What the weights came from, for error messages.
    pub source: String,
    pub device: Device,
    pub kind: Kind,
}

impl Weights {
    pub fn new(map: BTreeMap<String, Tensor>, source: String, device: Device, kind: Kind) -> Self {
        Weights { map, source, device, kind }
    }

    /// All `*.safetensors` weights of an HF folder: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    pub fn from_hf_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<std::path::PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("{}: cannot read", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
            let map = json["weight_map"].as_object().with_context(|| format!("{}: missing weight_map", index.display()))?;
            let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else {
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        };
        let mut map = BTreeMap::new();
        for file in &files {
            if !file.is_file() {
                bail!("{}: weight file is missing", file.display());
            }
            let tensors = Tensor::read_safetensors(file).map_err(|e| anyhow::anyhow!("{}: cannot read safetensors: {}", file.display(), first_line(&e.to_string())))?;
            for (name, t) in tensors {
                map.insert(name, t);
            }
        }
        Ok(Weights { map, source: dir.display().to_string(), device, kind })
    }

    /// Removes and returns `name`, checking its shape, converted to the model's dtype and device.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.take_opt(name, shape)?.with_context(|| format!("{}: tensor {name} is missing", self.source))
    }

    /// Like `take`, for tensors a checkpoint may or may not have.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some(t) = self.map.remove(name) else { return Ok(None) };
        let want: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if t.size() != want {
            bail!("{}: tensor {name} has shape {:?}, expected {:?}", self.source, t.size(), want);
        }
        let t = t.f_to_kind(self.kind)?.f_to_device(self.device)?;
        Ok(Some(t))
    }

    /// Whether a tensor with this name exists (without taking it).
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}
