//! GPT-2: learned absolute positions, pre-LayerNorm blocks, fused q/k/v projection, GELU (tanh
//! approximation, HF's `gelu_new`), tied LM head. HF stores its projections as `Conv1D` with
//! weights `[in, out]`; they are transposed at load and back at save.
use super::config::Config;
use super::layers::{KvCache, LayerNorm, Linear};
use super::weights::Weights;
use anyhow::Result;
use tch::Tensor;

pub struct Block {
    pub ln_1: LayerNorm,
    pub c_attn: Linear,
    pub c_proj: Linear,
    pub ln_2: LayerNorm,
    pub c_fc: Linear,
    pub mlp_proj: Linear,
}

pub struct Gpt2 {
    pub wte: Tensor,
    pub wpe: Tensor,
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    heads: i64,
    /// "transformer." for GPT2LMHeadModel checkpoints, "" for bare GPT2Model ones.
    prefix: String,
}

/// A `Conv1D` (`[in, out]`) loaded as a `Linear` (`[out, in]`).
fn conv1d(w: &mut Weights, name: &str, inp: usize, out: usize) -> Result<Linear> {
    let weight = w.take(&format!("{name}.weight"), &[inp, out])?.f_t_copy()?;
    let bias = Some(w.take(&format!("{name}.bias"), &[out])?);
    Ok(Linear::new(weight, bias))
}

fn layer_norm(w: &mut Weights, name: &str, n: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm { weight: w.take(&format!("{name}.weight"), &[n])?, bias: w.take(&format!("{name}.bias"), &[n])?, eps })
}

impl Gpt2 {
    pub fn load(cfg: &Config, w: &mut Weights) -> Result<Self> {
        let prefix = if w.has("transformer.wte.weight") { "transformer." } else { "" }.to_string();
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let wte = w.take(&format!("{prefix}wte.weight"), &[cfg.vocab_size, h])?;
        let wpe = w.take(&format!("{prefix}wpe.weight"), &[cfg.max_position_embeddings, h])?;
        let mut blocks = Vec::new(); // not with_capacity: the count is untrusted until its tensors are found
        for l in 0..cfg.num_layers {
            let p = format!("{prefix}h.{l}");
            blocks.push(Block {
                ln_1: layer_norm(w, &format!("{p}.ln_1"), h, cfg.norm_eps)?,
                c_attn: conv1d(w, &format!("{p}.attn.c_attn"), h, 3 * h)?,
                c_proj: conv1d(w, &format!("{p}.attn.c_proj"), h, h)?,
                ln_2: layer_norm(w, &format!("{p}.ln_2"), h, cfg.norm_eps)?,
                c_fc: conv1d(w, &format!("{p}.mlp.c_fc"), h, i)?,
                mlp_proj: conv1d(w, &format!("{p}.mlp.c_proj"), i, h)?,
            });
        }
        let ln_f = layer_norm(w, &format!("{prefix}ln_f"), h, cfg.norm_eps)?;
        Ok(Gpt2 { wte, wpe, blocks, ln_f, heads: cfg.num_heads as i64, prefix })
    }

    pub fn lm_head(&self) -> &Tensor {
        &self.wte
    }

    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let mut x = Tensor::f_embedding(&self.wte, ids, -1, false, false)?.f_add(&Tensor::f_embedding(&self.wpe, positions, -1, false, false)?)?;
        let h = x.size()[2];
        let d = h / self.heads;
        let mask = mask.map(|m| super::layers::additive_mask(m, x.kind())).transpose()?;
        for (l, blk) in self.blocks.iter().enumerate() {
            let qkv = blk.c_attn.forward(&blk.ln_1.forward(&x)?)?;
            let parts = qkv.f_split(h, -1)?;
            let heads = |t_: &Tensor| -> Result<Tensor> { Ok(t_.f_view([b, t, self.heads, d])?.f_transpose(1, 2)?) };
            let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(l, &k, &v)?,
                None => (k, v),
            };
            let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), 0.0, mask.is_none(), None, false)?;
            let y = y.f_transpose(1, 2)?.f_reshape([b, t, h])?;
            x = x.f_add(&blk.c_proj.forward(&y)?)?;
            let m = blk.c_fc.forward(&blk.ln_2.forward(&x)?)?.f_gelu("tanh")?;
            x = x.f_add(&blk.mlp_proj.forward(&m)?)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.ln_f.forward(&x)
    }

    /// Every parameter with its HF name and layout (`Conv1D` weights transposed back to `[in, out]`).
    pub fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        let p = &self.prefix;
        let mut out = vec![(format!("{p}wte.weight"), self.wte.shallow_clone()), (format!("{p}wpe.weight"), self.wpe.shallow_clone())];
        let ln = |out: &mut Vec<(String, Tensor)>, name: String, n: &LayerNorm| {
            out.push((format!("{name}.weight"), n.weight.shallow_clone()));
            out.push((format!("{name}.bias"), n.bias.shallow_clone()));
        };
        let conv = |out: &mut Vec<(String, Tensor)>, name: String, l: &Linear| -> Result<()> {
            out.push((format!("{name}.weight"), l.effective_weight()?.f_t_copy()?));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b.shallow_clone()));
            }
            Ok(())
        };
        for (i, b) in self.blocks.iter().enumerate() {
            let q = format!("{p}h.{i}");
            ln(&mut out, format!("{q}.ln_1"), &b.ln_1);
            conv(&mut out, format!("{q}.attn.c_attn"), &b.c_attn)?;
            conv(&mut out, format!("{q}.attn.c_proj"), &b.c_proj)?;
            ln(&mut out, format!("{q}.ln_2"), &b.ln_2);
            conv(&mut out, format!("{q}.mlp.c_fc"), &b.c_fc)?;
            conv(&mut out, format!("{q}.mlp.c_proj"), &b.mlp_proj)?;
        }
        ln(&mut out, format!("{p}ln_f"), &self.ln_f);
        Ok(out)
    }

    /// The model's own tensors (linear weights in `[out, in]` layout), for an optimizer.
    pub fn own_tensors(&self) -> Vec<(String, Tensor)> {
        let p = &self.prefix;
        let mut out = vec![(format!("{p}wte.weight"), self.wte.shallow_clone()), (format!("{p}wpe.weight"), self.wpe.shallow_clone())];
        let mut push = |name: String, t: &Tensor| out.push((name, t.shallow_clone()));
        for (i, b) in self.blocks.iter().enumerate() {
            let q = format!("{p}h.{i}");
            for (n, norm) in [("ln_1", &b.ln_1), ("ln_2", &b.ln_2)] {
                push(format!("{q}.{n}.weight"), &norm.weight);
                push(format!("{q}.{n}.bias"), &norm.bias);
            }
            for (n, l) in [("attn.c_attn", &b.c_attn), ("attn.c_proj", &b.c_proj), ("mlp.c_fc", &b.c_fc), ("mlp.c_proj", &b.mlp_proj)] {
                push(format!("{q}.{n}.weight"), &l.weight);
                if let Some(bias) = &l.bias {
                    push(format!("{q}.{n}.bias"), bias);
                }
            }
        }
        push(format!("{p}ln_f.weight"), &self.ln_f.weight);
        push(format!("{p}ln_f.bias"), &self.ln_f.bias);
        out
    }

    /// Every linear (`Conv1D`) layer with its HF module name, for attaching adapters.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let p = self.prefix.clone();
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            out.push((format!("{p}h.{i}.attn.c_attn"), &mut b.c_attn));
            out.push((format!("{p}h.{i}.attn.c_proj"), &mut b.c_proj));
            out.push((format!("{p}h.{i}.mlp.c_fc"), &mut b.c_fc));
            out.push((format!("{p}h.{i}.mlp.c_proj"), &mut b.mlp_proj));
        }
        out
    }
}
