//! LoRA: the settings, attaching adapters to target layers, switching them, the trainable
//! tensors, and saving the adapters alone in PEFT's layout.
use super::config::Arch;
use super::layers::{AdapterState, Linear};
use super::params::Linears;
use super::{Body, CausalLM};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Device, Tensor};

/// LoRA settings (`lora: #{rank, alpha, dropout, targets}` in scripts; PEFT's names).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (last component) that get adapters, e.g. `q_proj`, `v_proj`.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        // The published recipe's LoRA rank 8 / alpha 16 (docs/method.md), on all attention and MLP projections.
        let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc"];
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: targets.iter().map(|s| s.to_string()).collect() }
    }
}

impl CausalLM {
    /// Attaches LoRA adapters to every linear layer whose last name component is a target.
    /// Base weights stay frozen; `trainable_parameters` then returns only the adapters.
    pub fn add_lora(&mut self, cfg: LoraConfig) -> Result<()> {
        if self.lora.is_some() {
            bail!("{}: LoRA adapters are already attached", self.source);
        }
        let state = AdapterState::default();
        let mut n = 0;
        for (name, lin) in self.linears_mut()? {
            let last = name.rsplit('.').next().unwrap_or("");
            if cfg.targets.iter().any(|t| t == last) {
                lin.add_lora(cfg.rank, cfg.alpha, cfg.dropout, state.clone())?;
                n += 1;
            }
        }
        if n == 0 {
            bail!("{}: no linear layer matches the LoRA targets {:?}", self.source, cfg.targets);
        }
        self.lora = Some((cfg, state));
        Ok(())
    }

    /// Every linear layer with its HF module name.
    fn linears_mut(&mut self) -> Result<Vec<(String, &mut Linear)>> {
        let mut found = Linears::default();
        match &mut self.body {
            Body::Llama(m) => m.visit_mut(&self.cfg, true, &mut found)?,
            Body::Gpt2(m) => m.visit_mut(&self.cfg, &mut found)?,
        }
        Ok(found.0)
    }

    /// Turns the LoRA adapters on or off (off: the base model). No effect without adapters.
    pub fn set_adapters_enabled(&self, on: bool) {
        if let Some((_, s)) = &self.lora {
            s.enabled.set(on);
        }
    }

    /// Whether the adapters are on (true without adapters: the model is what it computes).
    pub fn adapters_enabled(&self) -> bool {
        self.lora.as_ref().is_none_or(|(_, s)| s.enabled.get())
    }

    /// Training mode (adapter dropout on) or evaluation mode.
    pub fn set_training(&self, on: bool) {
        if let Some((_, s)) = &self.lora {
            s.training.set(on);
        }
    }

    /// The tensors an optimizer updates, with names: the LoRA adapters when attached, else every
    /// weight (full fine-tuning), each marked as requiring gradients.
    pub fn trainable_parameters(&mut self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        if self.lora.is_some() {
            for (name, lin) in self.linears_mut()? {
                if let Some(l) = &lin.lora {
                    out.push((format!("{name}.lora_A.weight"), l.a.shallow_clone()));
                    out.push((format!("{name}.lora_B.weight"), l.b.shallow_clone()));
                }
            }
            return Ok(out);
        }
        for (name, mut t) in self.parameters(false)? {
            let _ = t.f_requires_grad_(true)?;
            out.push((name, t));
        }
        Ok(out)
    }

    /// Writes the adapters alone in PEFT's layout (`adapter_model.safetensors`,
    /// `adapter_config.json`), for use on top of the base model.
    pub fn save_adapter(&mut self, dir: &Path) -> Result<()> {
        let Some((cfg, _)) = self.lora.clone() else { bail!("{}: no LoRA adapters to save", self.source) };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tensors: Vec<(String, Tensor)> = self
            .trainable_parameters()?
            .into_iter()
            .map(|(n, t)| Ok((format!("base_model.model.{n}"), t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?)))
            .collect::<Result<_>>()?;
        crate::run::write_safetensors_atomic(&dir.join("adapter_model.safetensors"), &tensors)?;
        let peft = serde_json::json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank, "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout, "target_modules": cfg.targets, "bias": "none",
            "fan_in_fan_out": self.cfg.arch == Arch::Gpt2, "base_model_name_or_path": self.source,
        });
        crate::run::write_atomic(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&peft)?.as_bytes())
    }
}
