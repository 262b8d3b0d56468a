//! The weights out: every parameter by its HF name, a deep copy (the reference model), and an
//! HF folder written atomically.
use super::params::{List, Visit};
use super::weights::Weights;
use super::{Body, CausalLM};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

/// A new tensor with `t`'s values and no autograd history: a leaf the copy can train
/// (`detach_copy` of a tensor that requires grad is recorded by autograd as an op it cannot
/// differentiate).
fn fresh(t: &Tensor) -> Result<Tensor> {
    let t = t.f_detach()?;
    let mut out = t.f_zeros_like()?;
    out.f_copy_(&t)?;
    Ok(out)
}

impl CausalLM {
    /// A deep copy with its own weights (the reference model for training), sharing the tokenizer.
    pub fn deep_copy(&self) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, t) in self.named_parameters()? {
            map.insert(name, fresh(&t)?);
        }
        if let Some((name, head)) = &self.score_head {
            map.insert(format!("{name}.weight"), fresh(&head.weight)?);
            if let Some(b) = &head.bias {
                map.insert(format!("{name}.bias"), fresh(b)?);
            }
        }
        let mut w = Weights::new(map, self.source.clone(), self.device, self.kind);
        let mut copy = Self::from_weights(self.cfg.clone(), &mut w, self.tokenizer.clone(), &self.source)?;
        copy.space = self.space.clone();
        Ok(copy)
    }

    /// Every parameter with its HF name and layout, LoRA merged into the weights it adapts.
    pub fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        self.parameters(true)
    }

    /// Every parameter with its HF name: `hf`, as `named_parameters`; else the tensors the model
    /// holds (linear weights `[out, in]`, adapters not merged), which an optimizer updates.
    pub(crate) fn parameters(&self, hf: bool) -> Result<Vec<(String, Tensor)>> {
        let mut list = List { hf, out: Vec::new() };
        self.visit(&mut list)?;
        Ok(list.out)
    }

    /// Hands every parameter, with its HF name and spec, to `v` (the LM head only when untied).
    pub fn visit(&self, v: &mut impl Visit) -> Result<()> {
        match &self.body {
            Body::Llama(m) => m.visit(&self.cfg, self.cfg.tie_word_embeddings || self.lm_head_is_tied(), v),
            Body::Gpt2(m) => m.visit(&self.cfg, v),
        }
    }

    fn lm_head_is_tied(&self) -> bool {
        match &self.body {
            Body::Llama(m) => m.lm_head.data_ptr() == m.embed_tokens.data_ptr(),
            Body::Gpt2(_) => true,
        }
    }

    /// Writes an HF folder: `config.json`, `generation_config.json`, `model.safetensors`,
    /// `tokenizer.json`, `tokenizer_config.json`; files are written to temporary names and renamed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut cfg = self.cfg.clone();
        cfg.tie_word_embeddings = self.lm_head_is_tied();
        crate::run::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg.to_hf_json())?.as_bytes())?;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in self.named_parameters()? {
            tensors.push((name, t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?));
        }
        if let Some((name, head)) = &self.score_head {
            tensors.push((format!("{name}.weight"), head.weight.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?));
            // HF's heads have no bias; train_scorer's has one (the folded standardisation), and
            // without it a reloaded scorer's scores would shift by a constant.
            if let Some(b) = &head.bias {
                tensors.push((format!("{name}.bias"), b.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?));
            }
        }
        crate::run::write_safetensors_atomic(&dir.join("model.safetensors"), &tensors)?;
        let json = self.tokenizer.inner.to_string(false).map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
        crate::run::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let (tokenizer_config, generation_config) = self.tokenizer.hf_configs(self.cfg.max_position_embeddings)?;
        crate::run::write_atomic(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tokenizer_config)?.as_bytes())?;
        crate::run::write_atomic(&dir.join("generation_config.json"), serde_json::to_string_pretty(&generation_config)?.as_bytes())
    }
}
