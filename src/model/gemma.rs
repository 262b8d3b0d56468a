//! Gemma 2 and Gemma 3 (text): the Llama family's decoder with Gemma's changes (`Gemma`), read
//! from and written to their `config.json`, and their soft-capped attention.
use super::config::{decoder, window_layers, Config, Raw};
use anyhow::{bail, Result};
use serde_json::Value;
use tch::{Kind, Tensor};

/// What Gemma 2 and 3 add to the Llama family's layers: `(1 + weight)` RMSNorms, a norm after
/// attention and around the MLP (four per layer), GeGLU (tanh GELU), embeddings scaled by
/// `sqrt(hidden_size)`, attention scaled by `query_pre_attn_scalar^-1/2`, and tanh soft-capping of
/// attention scores and of the final logits (Gemma 2; Gemma 3 has none by default).
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma {
    pub query_pre_attn_scalar: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
}

/// Gemma 2's and Gemma 3's `config.json`: always-tied embeddings by default, tanh GELU, the
/// query scale and soft caps; Gemma 2's window on even layers; Gemma 3's q/k norms, window on five
/// of every `sliding_window_pattern` (6) layers (4096 tokens unless said), and the sliding layers'
/// own RoPE base (`rope_local_base_freq`, or `rope_parameters` per layer type in transformers 5).
pub(super) fn config(raw: &Raw, file: &str, common: Config) -> Result<Config> {
    let gemma3 = common.model_type == "gemma3_text";
    match raw.hidden_activation.as_deref() {
        None | Some("gelu_pytorch_tanh") => {}
        Some(other) => bail!("{file}: hidden_activation \"{other}\" is not supported for {} (gelu_pytorch_tanh)", common.model_type),
    }
    if raw.use_bidirectional_attention == Some(true) {
        bail!("{file}: use_bidirectional_attention (an embedding model) is not supported: host runs causal language models");
    }
    let mut raw = raw.clone();
    let mut local_rope_theta = None;
    if gemma3 {
        let params = raw.rope_parameters.clone().unwrap_or(Value::Null);
        local_rope_theta = Some(match (params.get("full_attention"), params.get("sliding_attention")) {
            (Some(full), local) => {
                raw.rope_parameters = Some(full.clone());
                match local {
                    Some(l) => {
                        if super::config::rope_scaling(l, file, 0, None)?.is_some() {
                            bail!("{file}: rope_parameters.sliding_attention: only the default rope_type is supported for the sliding layers");
                        }
                        l.get("rope_theta").and_then(Value::as_f64).unwrap_or(10000.0)
                    }
                    None => 10000.0,
                }
            }
            _ => raw.rope_local_base_freq.unwrap_or(10000.0),
        });
        if raw.rope_theta.is_none() && raw.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).is_none() {
            raw.rope_theta = Some(1e6);
        }
        raw.sliding_window = raw.sliding_window.or(Some(4096));
    }
    let mut cfg = decoder(&raw, file, common)?;
    cfg.tie_word_embeddings = raw.tie_word_embeddings.unwrap_or(true);
    cfg.qk_norm = gemma3;
    cfg.local_rope_theta = local_rope_theta;
    cfg.gemma = Some(Gemma {
        query_pre_attn_scalar: raw.query_pre_attn_scalar.unwrap_or(256.0),
        attn_logit_softcapping: raw.attn_logit_softcapping,
        final_logit_softcapping: raw.final_logit_softcapping,
    });
    if gemma3 {
        let pattern = raw.sliding_window_pattern.unwrap_or(6).max(1);
        window_layers(&mut cfg, &raw, |i| (i + 1) % pattern != 0);
    } else {
        window_layers(&mut cfg, &raw, |i| i % 2 == 0);
    }
    Ok(cfg)
}

/// Gemma's keys and class in a saved `config.json`.
pub(super) fn hf_json(c: &Config, j: &mut Value) -> (&'static str, &'static str) {
    if let Some(g) = &c.gemma {
        j["hidden_activation"] = Value::from("gelu_pytorch_tanh");
        j["hidden_act"] = Value::from("gelu_pytorch_tanh");
        // An integer in HF's config class (256 for Gemma 2 2B and 9B).
        let q = g.query_pre_attn_scalar;
        j["query_pre_attn_scalar"] = if q.fract() == 0.0 { Value::from(q as i64) } else { Value::from(q) };
        j["attn_logit_softcapping"] = serde_json::json!(g.attn_logit_softcapping);
        j["final_logit_softcapping"] = serde_json::json!(g.final_logit_softcapping);
    }
    if let Some(local) = c.local_rope_theta {
        j["rope_local_base_freq"] = Value::from(local);
    }
    if c.model_type == "gemma3_text" {
        ("Gemma3ForCausalLM", "gemma3_text")
    } else {
        ("Gemma2ForCausalLM", "gemma2")
    }
}

/// Attention with Gemma 2's soft cap as HF's eager path computes it: scores `q·kᵀ·scale`,
/// `cap·tanh(scores/cap)`, the additive `mask` (causal when None), softmax in f32, then `·v`.
pub(super) fn softcapped_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64, cap: f64) -> Result<Tensor> {
    let (heads, kv_heads) = (q.size()[1], k.size()[1]);
    let (k, v) = if heads != kv_heads {
        let r = heads / kv_heads;
        (k.f_repeat_interleave_self_int(r, Some(1), None)?, v.f_repeat_interleave_self_int(r, Some(1), None)?)
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scores = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_mul_scalar(scale)?;
    let scores = scores.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?;
    let scores = match mask {
        Some(m) => scores.f_add(m)?,
        None => {
            let (t, s) = (scores.size()[2], scores.size()[3]);
            let causal = Tensor::f_ones([t, s], (Kind::Bool, q.device()))?.f_tril(s - t)?;
            scores.f_masked_fill(&causal.f_logical_not()?, f64::NEG_INFINITY)?
        }
    };
    let p = scores.f_softmax(-1, Kind::Float)?.f_to_kind(q.kind())?;
    Ok(p.f_matmul(&v)?)
}

