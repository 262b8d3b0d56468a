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
    /// Modules that get adapters, matched as PEFT matches a list: a module's full name equals an
    /// entry or ends with `.` and the entry (`q_proj`, `self_attn.v_proj`, `model.layers.0.mlp.up_proj`).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        // The published recipe's LoRA rank 8 / alpha 16 (docs/method.md), on all attention and MLP projections.
        let targets = ["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj", "c_attn", "c_proj", "c_fc"];
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, targets: targets.iter().map(|s| s.to_string()).collect() }
    }
}

impl CausalLM {
    /// Attaches LoRA adapters to every linear layer that one of the targets names (PEFT's rule:
    /// the full name, or a suffix of it after a `.`).
    /// Base weights stay frozen; `trainable_parameters` then returns only the adapters.
    pub fn add_lora(&mut self, cfg: LoraConfig) -> Result<()> {
        if self.lora.is_some() {
            bail!("{}: LoRA adapters are already attached", self.source);
        }
        let state = AdapterState::default();
        let mut n = 0;
        for (name, lin) in self.linears_mut()? {
            if cfg.targets.iter().any(|t| names_module(t, &name)) {
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

    /// Attaches the LoRA adapter in `dir`, in PEFT's layout (`adapter_config.json`: `r`,
    /// `lora_alpha`, `lora_dropout`, `target_modules`; `adapter_model.safetensors`:
    /// `base_model.model.{module}.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`), as
    /// `save_adapter` or PEFT writes it, to evaluate it or to keep training it. A missing,
    /// misshapen or unexpected tensor is an error naming it.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let config_file = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_file).with_context(|| format!("{}: cannot read", config_file.display()))?;
        let c: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_file.display()))?;
        let field = |k: &str| c.get(k).with_context(|| format!("{}: missing {k}", config_file.display()));
        if let Some(t) = c.get("peft_type").and_then(|v| v.as_str()).filter(|t| *t != "LORA") {
            bail!("{}: peft_type {t} is not LoRA", config_file.display());
        }
        let rank = field("r")?.as_i64().filter(|&r| r >= 1).with_context(|| format!("{}: r must be a positive integer", config_file.display()))?;
        let alpha = field("lora_alpha")?.as_f64().with_context(|| format!("{}: lora_alpha must be a number", config_file.display()))?;
        let dropout = c.get("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0);
        refuse_unsupported_peft_fields(&c, &config_file)?;
        // rsLoRA scales by alpha / sqrt(r) instead of alpha / r: the same as plain LoRA with
        // alpha * sqrt(r), which is what a re-saved adapter then states.
        let alpha = if c.get("use_rslora").and_then(|v| v.as_bool()) == Some(true) { alpha * (rank as f64).sqrt() } else { alpha };
        let names: Vec<String> = self.linears_mut()?.into_iter().map(|(n, _)| n).collect();
        let selects = |key: &str| -> Result<Option<ModuleSelector>> {
            match c.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => ModuleSelector::from_json(v).map(Some).with_context(|| format!("{}: {key}", config_file.display())),
            }
        };
        let target = selects("target_modules")?.with_context(|| format!("{}: missing target_modules", config_file.display()))?;
        let exclude = selects("exclude_modules")?;
        // The adapted modules by their full names, so that matching them again selects exactly these.
        let targets: Vec<String> = names.into_iter().filter(|n| target.selects(n) && !exclude.as_ref().is_some_and(|e| e.selects(n))).collect();
        if targets.is_empty() {
            bail!("{}: target_modules selects no linear layer of this model", config_file.display());
        }
        self.add_lora(LoraConfig { rank, alpha, dropout, targets })?;
        let file = dir.join("adapter_model.safetensors");
        let mut tensors: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&file)
            .map_err(|e| anyhow::anyhow!("{}: cannot read safetensors: {}", file.display(), crate::util::first_line(&e.to_string())))?
            .into_iter()
            .collect();
        let source = file.display().to_string();
        for (name, lin) in self.linears_mut()? {
            let Some(l) = &mut lin.lora else { continue };
            for (part, slot) in [("lora_A", &mut l.a), ("lora_B", &mut l.b)] {
                let key = format!("base_model.model.{name}.{part}.weight");
                let t = tensors.remove(&key).with_context(|| format!("{source}: tensor {key} is missing (another base model or other target modules?)"))?;
                if t.size() != slot.size() {
                    bail!("{source}: tensor {key} has shape {:?}; this base model with r = {rank} needs {:?}", t.size(), slot.size());
                }
                tch::no_grad(|| slot.f_copy_(&t))?;
            }
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("{source}: tensor {extra} matches no adapted layer of this model ({} unexpected tensors)", tensors.len());
        }
        Ok(())
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

/// PEFT's rule for a listed target: the module's full name is the entry, or ends with `.entry`.
fn names_module(entry: &str, name: &str) -> bool {
    name == entry || name.strip_suffix(entry).is_some_and(|head| head.ends_with('.'))
}

/// Which modules a PEFT `target_modules` / `exclude_modules` field names: a list (a module's full
/// name equals an entry or ends with `.entry`), a regular expression that must match the whole
/// name, or `"all-linear"` (every linear layer; this model's output layer is not one).
enum ModuleSelector {
    Names(Vec<String>),
    Pattern(regex::Regex),
    AllLinear,
}

impl ModuleSelector {
    fn from_json(v: &serde_json::Value) -> Result<Self> {
        match v {
            serde_json::Value::String(s) if s == "all-linear" => Ok(ModuleSelector::AllLinear),
            serde_json::Value::String(s) => Ok(ModuleSelector::Pattern(regex::Regex::new(&format!("^(?:{s})$")).with_context(|| format!("{s:?} is not a valid regular expression"))?)),
            serde_json::Value::Array(a) => Ok(ModuleSelector::Names(a.iter().map(|t| t.as_str().map(String::from).context("expected module names (strings)")).collect::<Result<_>>()?)),
            _ => bail!("expected a list of module names or a regular expression"),
        }
    }

    fn selects(&self, name: &str) -> bool {
        match self {
            ModuleSelector::Names(list) => list.iter().any(|t| names_module(t, name)),
            ModuleSelector::Pattern(re) => re.is_match(name),
            ModuleSelector::AllLinear => true,
        }
    }
}

/// PEFT's LoRA variants this loader does not compute (DoRA, per-module ranks, biases, layer
/// subsets, extra trained modules, ...): any field outside the ones read here that holds more than
/// its neutral value (null, false, empty, PEFT's defaults) is an error naming it, so an adapter is
/// never loaded as something it is not.
fn refuse_unsupported_peft_fields(c: &serde_json::Value, file: &Path) -> Result<()> {
    const READ: &[&str] = &["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "use_rslora"];
    // Bookkeeping and initialisation settings: they do not change what a loaded adapter computes.
    const INERT: &[&str] = &[
        "task_type", "base_model_name_or_path", "revision", "inference_mode", "init_lora_weights", "auto_mapping",
        "peft_version", "fan_in_fan_out", "megatron_core", "qalora_group_size", "loftq_config", "ensure_weight_tying",
        "layers_pattern",
    ];
    let Some(map) = c.as_object() else { bail!("{}: expected a JSON object", file.display()) };
    for (k, v) in map {
        if READ.contains(&k.as_str()) || INERT.contains(&k.as_str()) {
            continue;
        }
        let neutral = match v {
            serde_json::Value::Null | serde_json::Value::Bool(false) => true,
            serde_json::Value::Object(o) => o.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::String(s) => k == "bias" && s == "none",
            _ => false,
        };
        if !neutral {
            bail!("{}: {k} = {v} is not supported (this loader computes plain LoRA and rsLoRA on linear layers)", file.display());
        }
    }
    Ok(())
}
