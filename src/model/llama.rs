//! The Llama family (Llama 2/3, Qwen2, Mistral, SmolLM2, TinyLlama): RMSNorm, rotary position
//! embeddings with `rope_theta` and Llama-3 / linear scaling, grouped-query attention, SwiGLU,
//! optional q/k/v biases, tied or untied LM head. Weight names equal HF keys.
use super::config::{Config, RopeScaling};
use super::layers::{KvCache, Linear, RmsNorm};
use super::weights::Weights;
use anyhow::Result;
use tch::{Kind, Tensor};

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

pub struct Llama {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `lm_head.weight`, or the embedding matrix when tied.
    pub lm_head: Tensor,
    inv_freq: Tensor,
}

/// `1 / theta^(2i/d)`, rescaled as `rope_scaling` says (HF `_compute_llama3_parameters`).
pub fn inverse_frequencies(cfg: &Config) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    match cfg.rope_scaling {
        None => base.iter().map(|&f| f as f32).collect(),
        Some(RopeScaling::Linear { factor }) => base.iter().map(|&f| (f / factor) as f32).collect(),
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

fn linear(w: &mut Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let weight = w.take(&format!("{name}.weight"), &[out, inp])?;
    let bias = if bias { Some(w.take(&format!("{name}.bias"), &[out])?) } else { w.take_opt(&format!("{name}.bias"), &[out])? };
    Ok(Linear::new(weight, bias))
}

fn rms(w: &mut Weights, name: &str, n: usize, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm { weight: w.take(&format!("{name}.weight"), &[n])?, eps })
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = *x.size().last().unwrap_or(&0);
    let x1 = x.f_narrow(-1, 0, d / 2)?;
    let x2 = x.f_narrow(-1, d / 2, d / 2)?;
    Ok(Tensor::f_cat(&[x2.f_neg()?, x1], -1)?)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?)
}

impl Attention {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let shape = |n: i64| [b, t, n, self.head_dim];
        let q = self.q_proj.forward(x)?.f_view(shape(self.heads))?;
        let k = self.k_proj.forward(x)?.f_view(shape(self.kv_heads))?;
        let v = self.v_proj.forward(x)?.f_view(shape(self.kv_heads))?.f_transpose(1, 2)?;
        // Rotate q and k heads together: one set of element-wise ops instead of two.
        let qk = apply_rope(&Tensor::f_cat(&[q, k], 2)?.f_transpose(1, 2)?, cos, sin)?;
        let q = qk.f_narrow(1, 0, self.heads)?;
        let k = qk.f_narrow(1, self.heads, self.kv_heads)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let gqa = self.kv_heads != self.heads;
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask, 0.0, mask.is_none(), None, gqa)?;
        let y = y.f_transpose(1, 2)?.f_reshape([b, t, self.heads * self.head_dim])?;
        self.o_proj.forward(&y)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.f_silu()?;
        self.down_proj.forward(&gate.f_mul(&self.up_proj.forward(x)?)?)
    }
}

impl Llama {
    /// Builds the model from HF-named weights (`model.layers.N...`, `lm_head.weight`).
    pub fn load(cfg: &Config, w: &mut Weights) -> Result<Self> {
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let embed_tokens = w.take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::new(); // not with_capacity: the count is untrusted until its tensors are found
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(DecoderLayer {
                input_layernorm: rms(w, &format!("{p}.input_layernorm"), h, cfg.norm_eps)?,
                self_attn: Attention {
                    q_proj: linear(w, &format!("{p}.self_attn.q_proj"), nh * hd, h, cfg.qkv_bias)?,
                    k_proj: linear(w, &format!("{p}.self_attn.k_proj"), nkv * hd, h, cfg.qkv_bias)?,
                    v_proj: linear(w, &format!("{p}.self_attn.v_proj"), nkv * hd, h, cfg.qkv_bias)?,
                    o_proj: linear(w, &format!("{p}.self_attn.o_proj"), h, nh * hd, cfg.o_bias)?,
                    heads: nh as i64,
                    kv_heads: nkv as i64,
                    head_dim: hd as i64,
                },
                post_attention_layernorm: rms(w, &format!("{p}.post_attention_layernorm"), h, cfg.norm_eps)?,
                mlp: Mlp {
                    gate_proj: linear(w, &format!("{p}.mlp.gate_proj"), i, h, cfg.mlp_bias)?,
                    up_proj: linear(w, &format!("{p}.mlp.up_proj"), i, h, cfg.mlp_bias)?,
                    down_proj: linear(w, &format!("{p}.mlp.down_proj"), h, i, cfg.mlp_bias)?,
                },
            });
        }
        let norm = rms(w, "model.norm", h, cfg.norm_eps)?;
        let lm_head = match w.take_opt("lm_head.weight", &[cfg.vocab_size, h])? {
            Some(t) if !cfg.tie_word_embeddings => t,
            _ => embed_tokens.shallow_clone(),
        };
        let inv_freq = Tensor::f_from_slice(&inverse_frequencies(cfg))?.f_to_device(w.device)?;
        Ok(Llama { embed_tokens, layers, norm, lm_head, inv_freq })
    }

    /// Final hidden states `[B, T, H]` for token ids `[B, T]` at `positions` `[B, T]`, with the
    /// boolean `mask` `[B, 1, T, S]` (S = cached + new positions), or causal attention when None.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let kind = self.embed_tokens.kind();
        let mut x = Tensor::f_embedding(&self.embed_tokens, ids, -1, false, false)?;
        // cos/sin in f32 as HF computes them, then cast to the activation dtype.
        let freqs = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?.f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let cos = emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        let sin = emb.f_sin()?.f_to_kind(kind)?.f_unsqueeze(1)?;
        let mask = mask.map(|m| super::layers::additive_mask(m, kind)).transpose()?;
        for (l, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| (c, l));
            let a = layer.self_attn.forward(&layer.input_layernorm.forward(&x)?, &cos, &sin, mask.as_ref(), c)?;
            x = x.f_add(&a)?;
            let m = layer.mlp.forward(&layer.post_attention_layernorm.forward(&x)?)?;
            x = x.f_add(&m)?;
        }
        if let Some(c) = cache {
            c.advance(ids.size()[1]);
        }
        self.norm.forward(&x)
    }

    /// Every parameter with its HF name (the LM head only when untied).
    /// LoRA adapters are merged into the weights they adapt.
    pub fn named_parameters(&self, tied: bool) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.shallow_clone())];
        let lin = |out: &mut Vec<(String, Tensor)>, name: String, l: &Linear| -> Result<()> {
            out.push((format!("{name}.weight"), l.effective_weight()?));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b.shallow_clone()));
            }
            Ok(())
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), layer.input_layernorm.weight.shallow_clone()));
            lin(&mut out, format!("{p}.self_attn.q_proj"), &layer.self_attn.q_proj)?;
            lin(&mut out, format!("{p}.self_attn.k_proj"), &layer.self_attn.k_proj)?;
            lin(&mut out, format!("{p}.self_attn.v_proj"), &layer.self_attn.v_proj)?;
            lin(&mut out, format!("{p}.self_attn.o_proj"), &layer.self_attn.o_proj)?;
            out.push((format!("{p}.post_attention_layernorm.weight"), layer.post_attention_layernorm.weight.shallow_clone()));
            lin(&mut out, format!("{p}.mlp.gate_proj"), &layer.mlp.gate_proj)?;
            lin(&mut out, format!("{p}.mlp.up_proj"), &layer.mlp.up_proj)?;
            lin(&mut out, format!("{p}.mlp.down_proj"), &layer.mlp.down_proj)?;
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.shallow_clone()));
        if !tied {
            out.push(("lm_head.weight".to_string(), self.lm_head.shallow_clone()));
        }
        Ok(out)
    }

    /// Every linear layer with its HF module name, for attaching adapters.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut layer.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            let m = &mut layer.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        // Llama 3.1 settings: factor 8, low 1, high 4, original context 8192, theta 500000.
        let cfg = Config::from_json(r#"{"model_type":"llama","vocab_size":8,"hidden_size":128,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#, "c").unwrap();
        let scaled = inverse_frequencies(&cfg);
        let plain: Vec<f64> = (0..64).map(|i| 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0)).collect();
        // Wavelength 2π/f below 8192/4 = 2048 is untouched; above 8192 it is divided by 8.
        assert_eq!(scaled[0], plain[0] as f32);
        assert_eq!(scaled[63], (plain[63] / 8.0) as f32);
        // In between, a smooth blend strictly between the two.
        let mid = (0..64).find(|&i| { let w = 2.0 * std::f64::consts::PI / plain[i]; w > 2048.0 && w < 8192.0 }).unwrap();
        assert!((scaled[mid] as f64) < plain[mid] && (scaled[mid] as f64) > plain[mid] / 8.0);
    }
}
