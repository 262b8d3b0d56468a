//! Qwen2 and Qwen3: the Llama family's decoder with Qwen's q/k/v biases (Qwen2, always, without
//! a flag) or per-head q/k RMSNorm (Qwen3), and a sliding window only when `use_sliding_window`
//! says so, on the layers from `max_window_layers` on.
use super::config::{decoder, window_layers, Config, Raw};
use anyhow::Result;
use serde_json::Value;

pub(super) fn config(raw: &Raw, file: &str, common: Config) -> Result<Config> {
    let mut raw = raw.clone();
    if raw.use_sliding_window != Some(true) {
        raw.sliding_window = None;
    }
    let mut cfg = decoder(&raw, file, common)?;
    if cfg.model_type == "qwen2" {
        cfg.qkv_bias = true;
        cfg.o_bias = false;
    } else {
        cfg.qk_norm = true;
    }
    let first = raw.max_window_layers.unwrap_or(28);
    window_layers(&mut cfg, &raw, |i| i >= first);
    Ok(cfg)
}

/// Qwen's keys and class in a saved `config.json`.
pub(super) fn hf_json(c: &Config, j: &mut Value) -> (&'static str, &'static str) {
    if c.sliding_window.is_some() {
        j["use_sliding_window"] = Value::Bool(true);
    }
    if c.model_type == "qwen2" {
        // Qwen2's biases need no flag.
        if let Some(m) = j.as_object_mut() {
            m.remove("attention_bias");
            m.remove("mlp_bias");
        }
        return ("Qwen2ForCausalLM", "qwen2");
    }
    ("Qwen3ForCausalLM", "qwen3")
}
