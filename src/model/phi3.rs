//! Phi-3 (and Phi-3.5, Phi-4-mini): the Llama family's decoder with fused `qkv_proj` and
//! `gate_up_proj`, LongRoPE (read by `config::rope_scaling`, with the original context that Phi-3
//! keeps at the top level of its config) and partial rotation.
use super::config::{decoder, Config, Raw, RopeScaling};
use anyhow::{bail, Result};
use serde_json::Value;

pub(super) fn config(raw: &Raw, file: &str, common: Config) -> Result<Config> {
    if !matches!(raw.hidden_act.as_deref(), None | Some("silu")) {
        bail!("{file}: hidden_act \"{}\" is not supported for phi3 (silu)", raw.hidden_act.as_deref().unwrap_or_default());
    }
    let mut cfg = decoder(raw, file, common)?;
    cfg.fused_projections = true;
    Ok(cfg)
}

/// Phi-3's keys and class in a saved `config.json`.
pub(super) fn hf_json(c: &Config, j: &mut Value) -> (&'static str, &'static str) {
    if let Some(RopeScaling::LongRope { original_max_position_embeddings, .. }) = &c.rope_scaling {
        // Phi-3 reads its original context from the config itself.
        j["original_max_position_embeddings"] = Value::from(*original_max_position_embeddings);
    }
    ("Phi3ForCausalLM", "phi3")
}
