//! The Llama family (Llama 2/3, Qwen2, Qwen3, Mistral, Gemma 2 and 3, Phi-3, SmolLM2, TinyLlama): RMSNorm,
//! rotary position embeddings with `rope_theta`, Llama-3 / linear / LongRoPE scaling and partial
//! rotation, grouped-query attention, SwiGLU, optional q/k/v biases, optional per-head q/k RMSNorm
//! (Qwen3, Gemma 3), Gemma's four (1 + w) norms per layer, GeGLU, scaled embeddings and soft caps
//! (`config::Gemma`), sliding-window layers with their own RoPE base (Gemma 3), Phi-3's fused `qkv_proj` and `gate_up_proj`, tied or untied LM head. Weight
//! names equal HF keys.
use super::config::{Config, Raw, RopeScaling};
use serde_json::Value;
use super::layers::{KvCache, Linear, RmsNorm, Shared, Unpadded};
use super::params::{placeholder_linear, Bias, Init, Load, LinearSpec, TensorSpec, Visit, VisitMut};
use super::weights::Weights;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// The q, k and v projections: three linears, or one (Phi-3's `qkv_proj`, q then k then v rows).
pub enum Qkv {
    Separate { q_proj: Linear, k_proj: Linear, v_proj: Linear },
    Fused { qkv_proj: Linear },
}

/// The MLP's gate and up projections: two linears, or one (Phi-3's `gate_up_proj`, gate rows first).
pub enum GateUp {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused { gate_up_proj: Linear },
}

pub struct Attention {
    pub qkv: Qkv,
    pub o_proj: Linear,
    /// Qwen3's RMSNorm over each head of q and of k (`head_dim` weights), before RoPE.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    /// Scale of q·k (None: 1/sqrt(head_dim)) and Gemma 2's soft cap of the scores.
    scale: Option<f64>,
    softcap: Option<f64>,
}

pub struct Mlp {
    pub gate_up: GateUp,
    pub down_proj: Linear,
    /// GeGLU (tanh GELU, Gemma) instead of SwiGLU.
    gelu: bool,
}

pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    /// Before the MLP (Llama); on the attention's output (Gemma 2, with the two below).
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
    /// Gemma 2's norms before and after the MLP.
    pub feedforward_layernorms: Option<(RmsNorm, RmsNorm)>,
}

pub struct Llama {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `lm_head.weight`, or the embedding matrix when tied.
    pub lm_head: Tensor,
    rope: Rope,
    /// The sliding layers' own tables (Gemma 3's local base), when they differ.
    local_rope: Option<Rope>,
    /// Gemma multiplies the embeddings by sqrt(hidden_size), rounded to the activation dtype.
    embed_scale: Option<f64>,
    /// The local attention span of sliding-window layers, and which layers those are.
    sliding_window: Option<usize>,
    sliding_layers: Vec<bool>,
}

/// The rotary tables' inputs: the inverse frequencies, LongRoPE's long ones with the context past
/// which a sequence uses them, and the factor on cos/sin.
struct Rope {
    inv_freq: Tensor,
    long: Option<(Tensor, i64)>,
    attention_factor: f64,
}

impl Rope {
    fn new(cfg: &Config, device: Device) -> Result<Self> {
        let table = |long: bool| -> Result<Tensor> { Ok(Tensor::f_from_slice(&inverse_frequencies(cfg, long))?.f_to_device(device)?) };
        let (long, attention_factor) = match &cfg.rope_scaling {
            Some(RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, attention_factor }) => {
                ((short_factor != long_factor).then(|| Ok::<_, anyhow::Error>((table(true)?, *original_max_position_embeddings as i64))).transpose()?, *attention_factor)
            }
            _ => (None, 1.0),
        };
        Ok(Rope { inv_freq: table(false)?, long, attention_factor })
    }

    /// cos and sin `[B, 1, T, rotary_dim]` at `positions` `[B, T]`, in f32 as HF computes them,
    /// then cast to `kind`. With LongRoPE, a row whose longest position in this pass is past the
    /// original context uses the long factors (HF decides for the whole batch at once, which is
    /// the same for a batch of one).
    fn tables(&self, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        let pos = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
        let mut freqs = pos.f_mul(&self.inv_freq)?;
        if let Some((long, original)) = &self.long {
            let rows = positions.f_amax(&[-1i64][..], true)?.f_ge(*original)?.f_unsqueeze(-1)?;
            freqs = freqs.f_where_self(&rows.f_logical_not()?, &pos.f_mul(long)?)?;
        }
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let (mut cos, mut sin) = (emb.f_cos()?, emb.f_sin()?);
        if self.attention_factor != 1.0 {
            cos = cos.f_mul_scalar(self.attention_factor)?;
            sin = sin.f_mul_scalar(self.attention_factor)?;
        }
        Ok((cos.f_to_kind(kind)?.f_unsqueeze(1)?, sin.f_to_kind(kind)?.f_unsqueeze(1)?))
    }
}

/// `1 / theta^(2i/d)` over the rotary dimension `d`, rescaled as `rope_scaling` says (HF
/// `_compute_llama3_parameters`, `_compute_longrope_parameters` with the short or `long` factors).
pub fn inverse_frequencies(cfg: &Config, long: bool) -> Vec<f32> {
    let d = cfg.rotary_dim;
    let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    match cfg.rope_scaling {
        None => base.iter().map(|&f| f as f32).collect(),
        Some(RopeScaling::Linear { factor }) => base.iter().map(|&f| (f / factor) as f32).collect(),
        Some(RopeScaling::LongRope { ref short_factor, ref long_factor, .. }) => {
            base.iter().zip(if long { long_factor } else { short_factor }).map(|(&f, &x)| (f / x) as f32).collect()
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old }) => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    if medium {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect()
        }
    }
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = *x.size().last().unwrap_or(&0);
    let x1 = x.f_narrow(-1, 0, d / 2)?;
    let x2 = x.f_narrow(-1, d / 2, d / 2)?;
    Ok(Tensor::f_cat(&[x2.f_neg()?, x1], -1)?)
}

/// Rotates the leading `cos.size(-1)` dimensions of each head of `x`; the rest pass (partial
/// rotation, as HF's Phi-3 applies it).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (d, r) = (*x.size().last().unwrap_or(&0), *cos.size().last().unwrap_or(&0));
    if r < d {
        let rotated = apply_rope(&x.f_narrow(-1, 0, r)?, cos, sin)?;
        return Ok(Tensor::f_cat(&[rotated, x.f_narrow(-1, r, d - r)?], -1)?);
    }
    Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?)
}

impl Attention {
    /// Attention on `x` `[B, T, H]`, or on the tokens alone `[1, N, H]` with `unpadded`
    /// (attention itself runs on the padded layout).
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>, cache: Option<(&mut KvCache, usize)>, unpadded: Option<&Unpadded>) -> Result<Tensor> {
        let pad = |t: Tensor| -> Result<Tensor> {
            match unpadded {
                Some(u) => u.pad(&t),
                None => Ok(t),
            }
        };
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q_proj, k_proj, v_proj } => (pad(q_proj.forward(x)?)?, pad(k_proj.forward(x)?)?, pad(v_proj.forward(x)?)?),
            Qkv::Fused { qkv_proj } => {
                let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
                let mut parts = pad(qkv_proj.forward(x)?)?.f_split_with_sizes(&[q, kv, kv][..], -1)?.into_iter();
                let mut next = || parts.next().ok_or_else(|| anyhow::anyhow!("internal: qkv_proj split"));
                (next()?, next()?, next()?)
            }
        };
        let (b, t) = (q.size()[0], q.size()[1]);
        let shape = |n: i64| [b, t, n, self.head_dim];
        let mut q = q.f_view(shape(self.heads))?;
        let mut k = k.f_view(shape(self.kv_heads))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let v = v.f_view(shape(self.kv_heads))?.f_transpose(1, 2)?;
        // Rotate q and k heads together: one set of element-wise ops instead of two.
        let qk = apply_rope(&Tensor::f_cat(&[q, k], 2)?.f_transpose(1, 2)?, cos, sin)?;
        let q = qk.f_narrow(1, 0, self.heads)?;
        let k = qk.f_narrow(1, self.heads, self.kv_heads)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let gqa = self.kv_heads != self.heads;
        let y = match self.softcap {
            None => Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask, 0.0, mask.is_none(), self.scale, gqa)?,
            Some(cap) => super::gemma::softcapped_attention(&q, &k, &v, mask, self.scale.unwrap_or(1.0 / (self.head_dim as f64).sqrt()), cap)?,
        };
        let y = y.f_transpose(1, 2)?.f_reshape([b, t, self.heads * self.head_dim])?;
        match unpadded {
            Some(u) => self.o_proj.forward(&u.unpad(&y)?),
            None => self.o_proj.forward(&y),
        }
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate_proj, up_proj } => (gate_proj.forward(x)?, up_proj.forward(x)?),
            GateUp::Fused { gate_up_proj } => {
                let both = gate_up_proj.forward(x)?;
                let half = both.size().last().copied().unwrap_or(0) / 2;
                (both.f_narrow(-1, 0, half)?, both.f_narrow(-1, half, half)?)
            }
        };
        let gate = if self.gelu { gate.f_gelu("tanh")? } else { gate.f_silu()? };
        self.down_proj.forward(&gate.f_mul(&up)?)
    }
}

/// The family's parameters: the one place their HF names and shapes are written. Expands to a
/// walk over `&$m` or, with `mut`, `&mut $m`.
macro_rules! walk {
    ($m:expr, $cfg:expr, $tied:expr, $v:expr, $iter:ident $(, $mu:tt)?) => {{
        let cfg = $cfg;
        let (h, i, hd, vocab) = (cfg.hidden_size as i64, cfg.intermediate_size as i64, cfg.head_dim as i64, cfg.vocab_size as i64);
        let (q, kv) = (cfg.num_heads as i64 * hd, cfg.num_kv_heads as i64 * hd);
        let bias = |b: bool| if b { Bias::Required } else { Bias::Optional };
        let lin = |out, inp, b: bool| LinearSpec { out, inp, bias: bias(b), conv1d: false };
        // Gemma's norms scale by 1 + weight: the identity is weight 0.
        let norm_init = if cfg.gemma.is_some() { Init::Zeros } else { Init::Ones };
        $v.tensor("model.embed_tokens.weight", & $($mu)? $m.embed_tokens, TensorSpec::new(&[vocab, h], Init::Normal))?;
        for (l, layer) in $m.layers.$iter().enumerate() {
            let p = format!("model.layers.{l}");
            $v.tensor(&format!("{p}.input_layernorm.weight"), & $($mu)? layer.input_layernorm.weight, TensorSpec::new(&[h], norm_init))?;
            match & $($mu)? layer.self_attn.qkv {
                Qkv::Separate { q_proj, k_proj, v_proj } => {
                    $v.linear(&format!("{p}.self_attn.q_proj"), q_proj, lin(q, h, cfg.qkv_bias))?;
                    $v.linear(&format!("{p}.self_attn.k_proj"), k_proj, lin(kv, h, cfg.qkv_bias))?;
                    $v.linear(&format!("{p}.self_attn.v_proj"), v_proj, lin(kv, h, cfg.qkv_bias))?;
                }
                Qkv::Fused { qkv_proj } => $v.linear(&format!("{p}.self_attn.qkv_proj"), qkv_proj, lin(q + 2 * kv, h, cfg.qkv_bias))?,
            }
            $v.linear(&format!("{p}.self_attn.o_proj"), & $($mu)? layer.self_attn.o_proj, lin(h, q, cfg.o_bias))?;
            if let (Some(qn), Some(kn)) = (& $($mu)? layer.self_attn.q_norm, & $($mu)? layer.self_attn.k_norm) {
                $v.tensor(&format!("{p}.self_attn.q_norm.weight"), & $($mu)? qn.weight, TensorSpec::new(&[hd], Init::Ones))?;
                $v.tensor(&format!("{p}.self_attn.k_norm.weight"), & $($mu)? kn.weight, TensorSpec::new(&[hd], Init::Ones))?;
            }
            $v.tensor(&format!("{p}.post_attention_layernorm.weight"), & $($mu)? layer.post_attention_layernorm.weight, TensorSpec::new(&[h], norm_init))?;
            if let Some((pre, post)) = & $($mu)? layer.feedforward_layernorms {
                $v.tensor(&format!("{p}.pre_feedforward_layernorm.weight"), & $($mu)? pre.weight, TensorSpec::new(&[h], norm_init))?;
                $v.tensor(&format!("{p}.post_feedforward_layernorm.weight"), & $($mu)? post.weight, TensorSpec::new(&[h], norm_init))?;
            }
            match & $($mu)? layer.mlp.gate_up {
                GateUp::Separate { gate_proj, up_proj } => {
                    $v.linear(&format!("{p}.mlp.gate_proj"), gate_proj, lin(i, h, cfg.mlp_bias))?;
                    $v.linear(&format!("{p}.mlp.up_proj"), up_proj, lin(i, h, cfg.mlp_bias))?;
                }
                GateUp::Fused { gate_up_proj } => $v.linear(&format!("{p}.mlp.gate_up_proj"), gate_up_proj, lin(2 * i, h, cfg.mlp_bias))?,
            }
            $v.linear(&format!("{p}.mlp.down_proj"), & $($mu)? layer.mlp.down_proj, lin(h, i, cfg.mlp_bias))?;
        }
        $v.tensor("model.norm.weight", & $($mu)? $m.norm.weight, TensorSpec::new(&[h], norm_init))?;
        if !$tied {
            $v.tensor("lm_head.weight", & $($mu)? $m.lm_head, TensorSpec { optional: true, ..TensorSpec::new(&[vocab, h], Init::Normal) })?;
        }
        Ok(())
    }};
}

impl Llama {
    /// The model with placeholder tensors, for a visitor to fill (`params::Load`, `params::Random`).
    pub fn skeleton(cfg: &Config, device: Device) -> Result<Self> {
        let gemma = cfg.gemma.as_ref();
        let norm = || RmsNorm { weight: Tensor::new(), eps: cfg.norm_eps, plus_one: gemma.is_some() };
        let layers = (0..cfg.num_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    qkv: if cfg.fused_projections {
                        Qkv::Fused { qkv_proj: placeholder_linear() }
                    } else {
                        Qkv::Separate { q_proj: placeholder_linear(), k_proj: placeholder_linear(), v_proj: placeholder_linear() }
                    },
                    o_proj: placeholder_linear(),
                    q_norm: cfg.qk_norm.then(norm),
                    k_norm: cfg.qk_norm.then(norm),
                    heads: cfg.num_heads as i64,
                    kv_heads: cfg.num_kv_heads as i64,
                    head_dim: cfg.head_dim as i64,
                    scale: gemma.map(|g| 1.0 / g.query_pre_attn_scalar.sqrt()),
                    softcap: gemma.and_then(|g| g.attn_logit_softcapping),
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_up: if cfg.fused_projections {
                        GateUp::Fused { gate_up_proj: placeholder_linear() }
                    } else {
                        GateUp::Separate { gate_proj: placeholder_linear(), up_proj: placeholder_linear() }
                    },
                    down_proj: placeholder_linear(),
                    gelu: gemma.is_some(),
                },
                feedforward_layernorms: gemma.map(|_| (norm(), norm())),
            })
            .collect();
        let rope = Rope::new(cfg, device)?;
        let local_rope = cfg.local_rope_theta.map(|theta| Rope::new(&Config { rope_theta: theta, rope_scaling: None, ..cfg.clone() }, device)).transpose()?;
        let embed_scale = gemma.map(|_| (cfg.hidden_size as f64).sqrt());
        let (sliding_window, sliding_layers) = (cfg.sliding_window, cfg.sliding_layers.clone());
        Ok(Llama { embed_tokens: Tensor::new(), layers, norm: norm(), lm_head: Tensor::new(), rope, local_rope, embed_scale, sliding_window, sliding_layers })
    }

    /// Builds the model from HF-named weights (`model.layers.N...`, `lm_head.weight`); the LM
    /// head is the embedding when tied or absent.
    pub fn load(cfg: &Config, w: &mut Weights) -> Result<Self> {
        let mut m = Self::skeleton(cfg, w.device)?;
        m.visit_mut(cfg, cfg.tie_word_embeddings, &mut Load(w))?;
        if !m.lm_head.defined() {
            m.lm_head = m.embed_tokens.shallow_clone();
        }
        Ok(m)
    }

    /// The token embeddings `[B, T, H]` and what every layer shares: RoPE's cos/sin at
    /// `positions` and the additive form of `mask`.
    pub fn embed(&self, ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Shared)> {
        let kind = self.embed_tokens.kind();
        let mut x = Tensor::f_embedding(&self.embed_tokens, ids, -1, false, false)?;
        if let Some(scale) = self.embed_scale {
            // HF: hidden * torch.tensor(hidden_size**0.5, dtype=hidden.dtype)
            x = x.f_mul(&Tensor::f_from_slice(&[scale])?.f_to_kind(kind)?.f_to_device(x.device())?)?;
        }
        // The window's own mask, when some position reaches past it (else it changes nothing).
        let mut window_mask = None;
        if let Some(w) = self.sliding_window.filter(|_| self.sliding_layers.contains(&true)) {
            let last = if positions.numel() == 0 { 0 } else { positions.f_max()?.f_int64_value(&[])? };
            if last >= w as i64 {
                // Keys: every cached and new position (the mask's width), or the new ones alone.
                // A mask over the new tokens alone may lay them out in any order (`pack_pairs`):
                // their positions say where each key is; else key columns are positions.
                let keys = mask.map_or(ids.size()[1], |m| m.size()[3]);
                let key_positions = if mask.is_some() && keys == ids.size()[1] { positions.shallow_clone() } else { Tensor::f_arange(keys, (Kind::Int64, positions.device()))? };
                let band = super::layers::window_mask(positions, &key_positions, w, mask)?;
                window_mask = Some(super::layers::additive_mask(&band, kind)?);
            }
        }
        let (cos, sin) = self.rope.tables(positions, kind)?;
        let local_rope = self.local_rope.as_ref().map(|r| r.tables(positions, kind)).transpose()?;
        let mask = mask.map(|m| super::layers::additive_mask(m, kind)).transpose()?;
        Ok((x, Shared { rope: Some((cos, sin)), local_rope, mask, window_mask, unpadded: None }))
    }

    /// Decoder layer `l` on `x` `[B, T, H]` (or `[1, N, H]`: `Shared::unpadded`), its keys and
    /// values appended to `cache`.
    pub fn layer(&self, l: usize, x: &Tensor, shared: &Shared, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let layer = &self.layers[l];
        let sliding = self.sliding_layers.get(l).copied().unwrap_or(false);
        let rope = match &shared.local_rope {
            Some(local) if sliding => Some(local),
            _ => shared.rope.as_ref(),
        };
        let Some((cos, sin)) = rope else { anyhow::bail!("internal: the Llama family's layers need RoPE tables") };
        let mask = match &shared.window_mask {
            Some(w) if sliding => Some(w),
            _ => shared.mask.as_ref(),
        };
        let a = layer.self_attn.forward(&layer.input_layernorm.forward(x)?, cos, sin, mask, cache.map(|c| (c, l)), shared.unpadded.as_ref())?;
        if let Some((pre, post)) = &layer.feedforward_layernorms {
            // Gemma 2: norms on the attention's output and around the MLP.
            let x = x.f_add(&layer.post_attention_layernorm.forward(&a)?)?;
            let m = post.forward(&layer.mlp.forward(&pre.forward(&x)?)?)?;
            return Ok(x.f_add(&m)?);
        }
        let x = x.f_add(&a)?;
        let m = layer.mlp.forward(&layer.post_attention_layernorm.forward(&x)?)?;
        Ok(x.f_add(&m)?)
    }

    /// The final norm, after the last layer.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }

    /// Every parameter in HF order (the LM head only when not `tied`).
    pub fn visit(&self, cfg: &Config, tied: bool, v: &mut impl Visit) -> Result<()> {
        walk!(self, cfg, tied, v, iter)
    }

    /// Every parameter in HF order, to change (the LM head only when not `tied`).
    pub fn visit_mut<'a>(&'a mut self, cfg: &Config, tied: bool, v: &mut impl VisitMut<'a>) -> Result<()> {
        walk!(self, cfg, tied, v, iter_mut, mut)
    }
}

/// Llama's `config.json` (and Mistral's, the same fields with a sliding window on every layer):
/// the family's common reading, unchanged.
pub(super) fn config(raw: &Raw, file: &str, common: super::config::Config) -> Result<Config> {
    super::config::decoder(raw, file, common)
}

/// Llama's and Mistral's class in a saved `config.json` (Mistral's window applies to every layer,
/// which its config says without `layer_types`).
pub(super) fn hf_json(c: &Config, j: &mut Value) -> (&'static str, &'static str) {
    if c.model_type == "mistral" {
        if let Some(m) = j.as_object_mut() {
            m.remove("layer_types");
        }
        return ("MistralForCausalLM", "mistral");
    }
    ("LlamaForCausalLM", "llama")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_are_read_where_the_family_uses_them() {
        let cfg = |model_type: &str, extra: &str| {
            let json = format!(r#"{{"model_type":"{model_type}","vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":4,"num_attention_heads":1,"sliding_window":4096{extra}}}"#);
            let c = Config::from_json(&json, "c").unwrap();
            (c.sliding_window, c.sliding_layers)
        };
        // Mistral v0.1 and Phi-3 use theirs on every layer, Gemma 2 on even layers, Qwen2/Qwen3 only
        // with use_sliding_window and from max_window_layers on (transformers' rules); layer_types
        // when the config has it.
        let (t, f) = (true, false);
        assert_eq!(cfg("mistral", ""), (Some(4096), vec![t, t, t, t]));
        assert_eq!(cfg("phi3", ""), (Some(4096), vec![t, t, t, t]));
        assert_eq!(cfg("gemma2", ""), (Some(4096), vec![t, f, t, f]));
        assert_eq!(cfg("qwen2", ""), (None, vec![]));
        assert_eq!(cfg("qwen3", r#","use_sliding_window":false"#), (None, vec![]));
        assert_eq!(cfg("qwen2", r#","use_sliding_window":true,"max_window_layers":3"#), (Some(4096), vec![f, f, f, t]));
        let types = r#","layer_types":["full_attention","sliding_attention","sliding_attention","full_attention"]"#;
        assert_eq!(cfg("gemma2", types), (Some(4096), vec![f, t, t, f]));
        let e = Config::from_json(r#"{"model_type":"gemma2","vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":2,"num_attention_heads":1,"sliding_window":4,"layer_types":["full_attention"]}"#, "c").unwrap_err();
        assert_eq!(e.to_string(), "c: layer_types has 1 entries for 2 layers");
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        // Llama 3.1 settings: factor 8, low 1, high 4, original context 8192, theta 500000.
        let cfg = Config::from_json(r#"{"model_type":"llama","vocab_size":8,"hidden_size":128,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#, "c").unwrap();
        let scaled = inverse_frequencies(&cfg, false);
        let plain: Vec<f64> = (0..64).map(|i| 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0)).collect();
        // Wavelength 2π/f below 8192/4 = 2048 is untouched; above 8192 it is divided by 8.
        assert_eq!(scaled[0], plain[0] as f32);
        assert_eq!(scaled[63], (plain[63] / 8.0) as f32);
        // In between, a smooth blend strictly between the two.
        let mid = (0..64).find(|&i| { let w = 2.0 * std::f64::consts::PI / plain[i]; w > 2048.0 && w < 8192.0 }).unwrap();
        assert!((scaled[mid] as f64) < plain[mid] && (scaled[mid] as f64) > plain[mid] / 8.0);
    }
}
