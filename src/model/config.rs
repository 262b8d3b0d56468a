//! Model configuration from HF `config.json` (or from GGUF metadata), validated so that a bad
//! file fails at load with the field named, not later with a shape error.
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The most decoder layers a checkpoint may declare (`validate`).
pub const MAX_LAYERS: usize = 4096;

/// RoPE frequency scaling (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// LongRoPE (Phi-3's `longrope`, formerly `su`): each frequency divided by its factor, the
    /// `short_factor`s while a sequence is at most `original_max_position_embeddings` long and the
    /// `long_factor`s past it (decided per sequence, at its longest position in the forward pass),
    /// and cos/sin multiplied by `attention_factor`. A GGUF's `rope_freqs.weight` (llama.cpp's
    /// form of Llama 3.1's scaling) is this with equal factors and attention factor 1.
    LongRope { short_factor: Vec<f64>, long_factor: Vec<f64>, original_max_position_embeddings: usize, attention_factor: f64 },
}

/// Where a score head reads the final hidden states of `prompt ++ response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// At the last token, as HF's `*ForSequenceClassification` does.
    #[default]
    Last,
    /// Their mean over the response tokens (the prompt's last token for an empty response).
    /// HF has no such head: `save` records it as `dualign_score_pooling` in config.json.
    Mean,
}

impl Pooling {
    /// The option value: "last" or "mean".
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Pooling::Last),
            "mean" => Ok(Pooling::Mean),
            other => bail!("pool \"{other}\" is not known (known: last, mean)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Last => "last",
            Pooling::Mean => "mean",
        }
    }

    /// Mixed into feature cache keys; 0 for `Last` so keys from before pooling existed still hold.
    pub fn salt(self) -> u64 {
        match self {
            Pooling::Last => 0,
            Pooling::Mean => 0x6d65_616e_706f_6f6c,
        }
    }
}

/// Which transformer family, and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Arch {
    /// Llama, Qwen2, Mistral-style decoders: RMSNorm, RoPE, GQA, SwiGLU.
    #[default]
    Llama,
    Gpt2,
}

/// Everything the model files need, in one struct for both families. `Default` is a base for the
/// readers (every size zero, no biases or extras), never a usable model: `validate` refuses it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub arch: Arch,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The sliding-window layers' own RoPE base, unscaled (Gemma 3's `rope_local_base_freq`, or
    /// `rope_parameters.sliding_attention`); None: every layer uses `rope_theta` and `rope_scaling`.
    pub local_rope_theta: Option<f64>,
    /// How many leading dimensions of each head RoPE rotates (`head_dim` × `partial_rotary_factor`).
    pub rotary_dim: usize,
    /// Phi-3's fused projections: `qkv_proj` (q, k, v stacked) and `gate_up_proj` (gate, up).
    pub fused_projections: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q, k and v projections (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm over each head's query and key before RoPE (Qwen3's `q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Gemma 2 and 3's changes to the Llama family's layers (`model_type` gemma2, gemma3_text).
    pub gemma: Option<super::gemma::Gemma>,
    /// The local attention span of sliding-window layers (Mistral v0.1, Gemma 2, Phi-3, Qwen2/Qwen3
    /// with `use_sliding_window`): a query at position p sees keys at positions above p - window.
    pub sliding_window: Option<usize>,
    /// Which layers use the window (`layer_types`, else the family's rule: every layer for Mistral
    /// and Phi-3, even layers for Gemma 2, layers from `max_window_layers` on for Qwen); empty
    /// without a window.
    pub sliding_layers: Vec<bool>,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    /// Number of outputs of a score head (`num_labels`), when the checkpoint has one.
    pub num_labels: usize,
    /// Where the score head reads the hidden states (`dualign_score_pooling`; HF's is `last`).
    pub score_pooling: Pooling,
}

/// `config.json` as written, every field optional; the family readers (`llama.rs`, `qwen.rs`,
/// `gemma.rs`, `phi3.rs`, `gpt2.rs`) turn it into a `Config`.
#[derive(Deserialize, Default, Clone)]
pub(super) struct Raw {
    pub(super) model_type: Option<String>,
    pub(super) vocab_size: Option<usize>,
    pub(super) hidden_size: Option<usize>,
    pub(super) intermediate_size: Option<usize>,
    pub(super) num_hidden_layers: Option<usize>,
    pub(super) num_attention_heads: Option<usize>,
    pub(super) num_key_value_heads: Option<usize>,
    pub(super) head_dim: Option<usize>,
    pub(super) rms_norm_eps: Option<f64>,
    pub(super) rope_theta: Option<f64>,
    pub(super) rope_scaling: Option<Value>,
    pub(super) rope_parameters: Option<Value>,
    pub(super) original_max_position_embeddings: Option<usize>,
    pub(super) partial_rotary_factor: Option<f64>,
    pub(super) hidden_act: Option<String>,
    pub(super) query_pre_attn_scalar: Option<f64>,
    pub(super) attn_logit_softcapping: Option<f64>,
    pub(super) final_logit_softcapping: Option<f64>,
    pub(super) sliding_window: Option<usize>,
    pub(super) use_sliding_window: Option<bool>,
    pub(super) max_window_layers: Option<usize>,
    pub(super) sliding_window_pattern: Option<usize>,
    pub(super) rope_local_base_freq: Option<f64>,
    pub(super) use_bidirectional_attention: Option<bool>,
    pub(super) layer_types: Option<Vec<String>>,
    pub(super) hidden_activation: Option<String>,
    pub(super) max_position_embeddings: Option<usize>,
    pub(super) tie_word_embeddings: Option<bool>,
    pub(super) attention_bias: Option<bool>,
    pub(super) mlp_bias: Option<bool>,
    pub(super) bos_token_id: Option<Value>,
    pub(super) eos_token_id: Option<Value>,
    pub(super) pad_token_id: Option<Value>,
    pub(super) num_labels: Option<usize>,
    pub(super) dualign_score_pooling: Option<String>,
    pub(super) id2label: Option<serde_json::Map<String, Value>>,
    // GPT-2 names
    pub(super) n_positions: Option<usize>,
    pub(super) n_embd: Option<usize>,
    pub(super) n_layer: Option<usize>,
    pub(super) n_head: Option<usize>,
    pub(super) n_inner: Option<usize>,
    pub(super) layer_norm_epsilon: Option<f64>,
    pub(super) activation_function: Option<String>,
}

fn ids(v: &Option<Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => vec![],
    }
}

/// `rope_scaling` / `rope_parameters` `v`; `max_positions` and `original` are the config's
/// `max_position_embeddings` and top-level `original_max_position_embeddings` (Phi-3 keeps it there).
pub(super) fn rope_scaling(v: &Value, file: &str, max_positions: usize, original: Option<usize>) -> Result<Option<RopeScaling>> {
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| v.get(k).and_then(Value::as_f64).with_context(|| format!("{file}: rope_scaling.{k} is missing or not a number"));
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        // Phi-3's older name for it.
        "longrope" | "su" => {
            let factors = |k: &str| -> Result<Vec<f64>> {
                v.get(k).and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_f64).collect()).with_context(|| format!("{file}: rope_scaling.{k} is missing or not a list of numbers"))
            };
            // As HF's _compute_longrope_parameters: the original context from the parameters, else
            // the config, else max_position_embeddings; the default attention factor from the
            // ratio of the two contexts (or `factor`).
            let original = match v.get("original_max_position_embeddings") {
                Some(o) => o.as_u64().with_context(|| format!("{file}: rope_scaling.original_max_position_embeddings is not a positive integer"))? as usize,
                None => original.unwrap_or(max_positions),
            };
            if original == 0 {
                bail!("{file}: original_max_position_embeddings must be positive");
            }
            let factor = v.get("factor").and_then(Value::as_f64).unwrap_or(max_positions as f64 / original as f64);
            let attention_factor = match v.get("attention_factor").and_then(Value::as_f64) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            Some(RopeScaling::LongRope { short_factor: factors("short_factor")?, long_factor: factors("long_factor")?, original_max_position_embeddings: original, attention_factor })
        }
        other => bail!("{file}: rope_scaling type \"{other}\" is not supported (supported: default, linear, llama3, longrope)"),
    })
}

/// A required field, or an error naming it.
pub(super) fn need(v: Option<usize>, file: &str, key: &str) -> Result<usize> {
    v.with_context(|| format!("{file}: missing {key}"))
}

/// What every decoder of the Llama family reads the same way: sizes, RoPE (`rope_theta` and
/// `rope_scaling`, or `rope_parameters`; partial rotation), biases, the sliding window and its
/// layers (`layer_types`, else every layer; a family with another rule sets it with
/// `window_layers`). A family's reader starts here and changes what it does differently.
pub(super) fn decoder(raw: &Raw, file: &str, common: Config) -> Result<Config> {
    let hidden = need(raw.hidden_size, file, "hidden_size")?;
    let heads = need(raw.num_attention_heads, file, "num_attention_heads")?;
    let params = raw.rope_parameters.clone().unwrap_or(Value::Null);
    let max_positions = raw.max_position_embeddings.unwrap_or(2048);
    let scaling = match (&raw.rope_scaling, &params) {
        (Some(v), _) if !v.is_null() => rope_scaling(v, file, max_positions, raw.original_max_position_embeddings)?,
        (_, p) if !p.is_null() => rope_scaling(p, file, max_positions, raw.original_max_position_embeddings)?,
        _ => None,
    };
    let head_dim = raw.head_dim.unwrap_or(if heads > 0 { hidden / heads } else { 0 });
    let in_dicts = |k: &str| [&raw.rope_scaling, &raw.rope_parameters].into_iter().flatten().find_map(|d| d.get(k).and_then(Value::as_f64));
    let partial = raw.partial_rotary_factor.or_else(|| in_dicts("partial_rotary_factor")).unwrap_or(1.0);
    if !(partial > 0.0 && partial <= 1.0) {
        bail!("{file}: partial_rotary_factor {partial} must be in (0, 1]");
    }
    let layers = need(raw.num_hidden_layers, file, "num_hidden_layers")?;
    if raw.sliding_window == Some(0) {
        bail!("{file}: sliding_window must be positive");
    }
    let sliding_layers: Vec<bool> = match (&raw.sliding_window, &raw.layer_types) {
        (None, _) => vec![],
        (Some(_), Some(types)) => {
            if types.len() != layers {
                bail!("{file}: layer_types has {} entries for {layers} layers", types.len());
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => bail!("{file}: layer_types entry \"{other}\" is not supported (sliding_attention, full_attention)"),
                })
                .collect::<Result<_>>()?
        }
        (Some(_), None) => vec![true; layers],
    };
    Ok(Config {
        arch: Arch::Llama,
        vocab_size: need(raw.vocab_size, file, "vocab_size")?,
        hidden_size: hidden,
        intermediate_size: need(raw.intermediate_size, file, "intermediate_size")?,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: raw.num_key_value_heads.unwrap_or(heads),
        head_dim,
        norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta: raw.rope_theta.or_else(|| params.get("rope_theta").and_then(Value::as_f64)).unwrap_or(10000.0),
        rope_scaling: scaling,
        // As HF: int(head_dim * partial_rotary_factor).
        rotary_dim: (head_dim as f64 * partial) as usize,
        max_position_embeddings: max_positions,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        qkv_bias: raw.attention_bias.unwrap_or(false),
        o_bias: raw.attention_bias.unwrap_or(false),
        mlp_bias: raw.mlp_bias.unwrap_or(false),
        sliding_window: raw.sliding_window,
        sliding_layers,
        ..common
    })
}

/// A family's rule for which layers slide, where the config has a window but no `layer_types`.
pub(super) fn window_layers(cfg: &mut Config, raw: &Raw, sliding: impl Fn(usize) -> bool) {
    if cfg.sliding_window.is_some() && raw.layer_types.is_none() {
        cfg.sliding_layers = (0..cfg.num_layers).map(sliding).collect();
    }
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read"))?;
        Self::from_json(&text, &file)
    }

    /// Parses a `config.json` text; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{file}:{}:{}: {e}", e.line(), e.column()))?;
        let model_type = raw.model_type.clone().with_context(|| format!("{file}: missing model_type"))?;
        let num_labels = raw.num_labels.or(raw.id2label.as_ref().map(|m| m.len())).unwrap_or(1);
        let score_pooling = match raw.dualign_score_pooling.as_deref() {
            Some(s) => Pooling::parse(s).with_context(|| format!("{file}: dualign_score_pooling"))?,
            None => Pooling::Last,
        };
        // The fields every family reads the same way.
        let common = Config {
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
            pad_token_id: ids(&raw.pad_token_id).first().copied(),
            num_labels,
            score_pooling,
            model_type: model_type.clone(),
            ..Config::default()
        };
        let cfg = match model_type.as_str() {
            "llama" | "mistral" => super::llama::config(&raw, file, common)?,
            "qwen2" | "qwen3" => super::qwen::config(&raw, file, common)?,
            "gemma2" | "gemma3_text" => super::gemma::config(&raw, file, common)?,
            "phi3" => super::phi3::config(&raw, file, common)?,
            "gpt2" => super::gpt2::config(&raw, file, common)?,
            other => bail!("{file}: model_type \"{other}\" is not supported (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, gpt2)"),
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Checks the relations the model code relies on.
    pub fn validate(&self, file: &str) -> Result<()> {
        let c = self;
        for (name, v) in [("vocab_size", c.vocab_size), ("hidden_size", c.hidden_size), ("num_layers", c.num_layers), ("num_heads", c.num_heads), ("num_kv_heads", c.num_kv_heads), ("head_dim", c.head_dim)] {
            if v == 0 {
                bail!("{file}: {name} must be positive");
            }
        }
        // Every layer is laid out before its weights are read: an untrusted count must be
        // bounded (the deepest released models have under 200 layers).
        if c.num_layers > MAX_LAYERS {
            bail!("{file}: num_layers {} is more than {MAX_LAYERS}, beyond any real model", c.num_layers);
        }
        if c.num_heads % c.num_kv_heads != 0 {
            bail!("{file}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", c.num_heads, c.num_kv_heads);
        }
        if c.head_dim % 2 != 0 && c.arch == Arch::Llama {
            bail!("{file}: head_dim ({}) must be even for rotary embeddings", c.head_dim);
        }
        if c.arch == Arch::Llama && (c.rotary_dim % 2 != 0 || c.rotary_dim == 0 || c.rotary_dim > c.head_dim) {
            bail!("{file}: the rotary dimension ({}, head_dim × partial_rotary_factor) must be even and in 2..=head_dim ({})", c.rotary_dim, c.head_dim);
        }
        if let Some(RopeScaling::LongRope { short_factor, long_factor, attention_factor, .. }) = &c.rope_scaling {
            for (name, d) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if d.len() != c.rotary_dim / 2 || d.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
                    bail!("{file}: RoPE {name} needs {} positive frequency divisors (rotary dimension / 2); found {} ({:?})", c.rotary_dim / 2, d.len(), &d[..d.len().min(4)]);
                }
            }
            if !(*attention_factor > 0.0 && attention_factor.is_finite()) {
                bail!("{file}: RoPE attention_factor {attention_factor} must be positive");
            }
        }
        if c.arch == Arch::Gpt2 && c.hidden_size % c.num_heads != 0 {
            bail!("{file}: n_embd ({}) must be a multiple of n_head ({})", c.hidden_size, c.num_heads);
        }
        Ok(())
    }

    /// The JSON written by `save`, loadable by HF transformers.
    pub fn to_hf_json(&self) -> Value {
        let c = self;
        let mut j = self.to_hf_json_body();
        if c.score_pooling != Pooling::Last {
            j["dualign_score_pooling"] = Value::String(c.score_pooling.name().into());
        }
        j
    }

    fn to_hf_json_body(&self) -> Value {
        let c = self;
        if c.arch == Arch::Gpt2 {
            return super::gpt2::hf_json(c);
        }
        let scaling = match &c.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => serde_json::json!({"rope_type": "linear", "factor": factor}),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings,
            }),
            Some(RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, attention_factor }) => serde_json::json!({
                "rope_type": "longrope", "short_factor": short_factor, "long_factor": long_factor, "attention_factor": attention_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        // What `decoder` reads, written back; then each family's own keys and class.
        let mut j = serde_json::json!({
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta, "rope_scaling": scaling, "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings, "hidden_act": "silu",
            "attention_bias": c.qkv_bias, "mlp_bias": c.mlp_bias,
            "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_ids.clone(), "pad_token_id": c.pad_token_id,
        });
        if c.rotary_dim != c.head_dim {
            j["partial_rotary_factor"] = Value::from(c.rotary_dim as f64 / c.head_dim as f64);
        }
        if c.sliding_window.is_some() {
            j["sliding_window"] = serde_json::json!(c.sliding_window);
            let types: Vec<&str> = c.sliding_layers.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
            j["layer_types"] = serde_json::json!(types);
        }
        let (class, model_type) = match c.model_type.as_str() {
            "qwen2" | "qwen3" => super::qwen::hf_json(c, &mut j),
            "gemma2" | "gemma3_text" => super::gemma::hf_json(c, &mut j),
            "phi3" => super::phi3::hf_json(c, &mut j),
            _ => super::llama::hf_json(c, &mut j),
        };
        j["architectures"] = serde_json::json!([class]);
        j["model_type"] = Value::from(model_type);
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rope_theta_from_rope_parameters_and_rejects_unknown_types() {
        let c = Config::from_json(r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}}"#, "c.json").unwrap();
        assert_eq!((c.rope_theta, c.head_dim, c.num_kv_heads, c.qkv_bias), (500000.0, 4, 1, false));
        let e = Config::from_json(r#"{"model_type":"bert"}"#, "c.json").unwrap_err().to_string();
        assert_eq!(e, "c.json: model_type \"bert\" is not supported (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, gpt2)");
        let e = Config::from_json(r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2}"#, "c.json").unwrap_err().to_string();
        assert!(e.contains("must be a multiple of num_key_value_heads"), "{e}");
        let e = Config::from_json("{\"model_type\": \"llama\",\n \"vocab_size\": \"ten\"}", "c.json").unwrap_err().to_string();
        assert!(e.starts_with("c.json:2:"), "{e}");
    }

    #[test]
    fn a_mean_pooled_score_head_survives_save_and_load_and_a_bad_pooling_is_named() {
        let text = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#;
        let mut c = Config::from_json(text, "c.json").unwrap();
        assert_eq!(c.score_pooling, Pooling::Last);
        assert!(c.to_hf_json().get("dualign_score_pooling").is_none(), "HF's own pooling is not written");
        c.score_pooling = Pooling::Mean;
        let back = Config::from_json(&c.to_hf_json().to_string(), "c.json").unwrap();
        assert_eq!(back.score_pooling, Pooling::Mean);
        let e = Config::from_json(&text.replace("}", r#","dualign_score_pooling":"max"}"#), "c.json").unwrap_err();
        assert_eq!(format!("{e:#}"), "c.json: dualign_score_pooling: pool \"max\" is not known (known: last, mean)");
    }

    #[test]
    fn phi3_longrope_reads_its_contexts_and_defaults_as_transformers_does() {
        // Phi-3-mini-128k's layout: `su` (the old name), the original context at the top level, no
        // attention factor: HF's default sqrt(1 + ln(131072 / 4096) / ln 4096).
        let base = r#""model_type":"phi3","vocab_size":10,"hidden_size":16,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2"#;
        let factors = "[1.0, 1.0, 1.0, 1.0]";
        let json = format!(r#"{{{base},"max_position_embeddings":131072,"original_max_position_embeddings":4096,"rope_scaling":{{"type":"su","short_factor":{factors},"long_factor":{factors}}}}}"#);
        let c = Config::from_json(&json, "c.json").unwrap();
        let Some(RopeScaling::LongRope { original_max_position_embeddings, attention_factor, .. }) = c.rope_scaling.clone() else { panic!("{c:?}") };
        assert_eq!(original_max_position_embeddings, 4096);
        assert!((attention_factor - (1.0 + 32f64.ln() / 4096f64.ln()).sqrt()).abs() < 1e-15, "{attention_factor}");
        assert!(c.fused_projections && c.rotary_dim == 8);
        // Saved and read back: the same configuration.
        assert_eq!(Config::from_json(&c.to_hf_json().to_string(), "c.json").unwrap(), c);
        // Factors must cover the rotary dimension: half of 8 with the whole head, half of 4 with
        // partial_rotary_factor 0.5.
        let e = Config::from_json(&json.replace(r#""type":"su""#, r#""type":"su","partial_rotary_factor":0.5"#), "c.json").unwrap_err().to_string();
        assert_eq!(e, "c.json: RoPE short_factor needs 2 positive frequency divisors (rotary dimension / 2); found 4 ([1.0, 1.0, 1.0, 1.0])");
        let e = Config::from_json(&json.replace("\"max_position_embeddings\"", "\"hidden_act\":\"gelu\",\"max_position_embeddings\""), "c.json").unwrap_err().to_string();
        assert_eq!(e, "c.json: hidden_act \"gelu\" is not supported for phi3 (silu)");
    }

    #[test]
    fn gemma3_reads_the_hub_layout_and_the_per_layer_type_layout_alike() {
        // google/gemma-3-1b-it's layout (transformers 4.5x): one theta, a local base and a pattern.
        let base = r#""model_type":"gemma3_text","vocab_size":10,"hidden_size":16,"intermediate_size":16,"num_hidden_layers":6,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,"query_pre_attn_scalar":8"#;
        let old = Config::from_json(&format!(r#"{{{base},"rope_theta":1000000.0,"rope_local_base_freq":10000.0,"sliding_window":512,"sliding_window_pattern":3,"rope_scaling":{{"rope_type":"linear","factor":8.0}}}}"#), "c.json").unwrap();
        assert_eq!((old.rope_theta, old.local_rope_theta, old.sliding_window), (1e6, Some(10000.0), Some(512)));
        assert_eq!(old.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(old.sliding_layers, vec![true, true, false, true, true, false]);
        assert!(old.qk_norm && old.tie_word_embeddings && old.gemma.as_ref().is_some_and(|g| g.attn_logit_softcapping.is_none()));
        // transformers 5's layout: the same model.
        let new = format!(r#"{{{base},"sliding_window":512,"layer_types":["sliding_attention","sliding_attention","full_attention","sliding_attention","sliding_attention","full_attention"],"rope_parameters":{{"full_attention":{{"rope_type":"linear","factor":8.0,"rope_theta":1000000.0}},"sliding_attention":{{"rope_type":"default","rope_theta":10000.0}}}}}}"#);
        assert_eq!(Config::from_json(&new, "c.json").unwrap(), old);
        // What save writes reads back as the same configuration.
        assert_eq!(Config::from_json(&old.to_hf_json().to_string(), "c.json").unwrap(), old);
        let e = Config::from_json(&format!(r#"{{{base},"use_bidirectional_attention":true}}"#), "c.json").unwrap_err().to_string();
        assert_eq!(e, "c.json: use_bidirectional_attention (an embedding model) is not supported: host runs causal language models");
    }
}
