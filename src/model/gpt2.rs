//! GPT-2: learned absolute positions, pre-LayerNorm blocks, fused q/k/v projection, GELU (tanh
//! approximation, HF's `gelu_new`), tied LM head. HF stores its projections as `Conv1D` with
//! weights `[in, out]`; they are transposed at load and back at save.
use super::config::{need, Arch, Config, Raw};
use anyhow::bail;
use serde_json::Value;
use super::layers::{KvCache, LayerNorm, Linear, Shared};
use super::params::{placeholder_linear, Bias, Init, Load, LinearSpec, TensorSpec, Visit, VisitMut};
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

/// The family's parameters: the one place their HF names and shapes are written (`Conv1D`
/// weights are `[in, out]` there). Expands to a walk over `&$m` or, with `mut`, `&mut $m`.
macro_rules! walk {
    ($m:expr, $cfg:expr, $v:expr, $iter:ident $(, $mu:tt)?) => {{
        let cfg = $cfg;
        let p = $m.prefix.clone();
        let (h, i) = (cfg.hidden_size as i64, cfg.intermediate_size as i64);
        let conv = |inp, out| LinearSpec { out, inp, bias: Bias::Required, conv1d: true };
        $v.tensor(&format!("{p}wte.weight"), & $($mu)? $m.wte, TensorSpec::new(&[cfg.vocab_size as i64, h], Init::Normal))?;
        $v.tensor(&format!("{p}wpe.weight"), & $($mu)? $m.wpe, TensorSpec::new(&[cfg.max_position_embeddings as i64, h], Init::Normal))?;
        for (l, b) in $m.blocks.$iter().enumerate() {
            let q = format!("{p}h.{l}");
            $v.tensor(&format!("{q}.ln_1.weight"), & $($mu)? b.ln_1.weight, TensorSpec::new(&[h], Init::Ones))?;
            $v.tensor(&format!("{q}.ln_1.bias"), & $($mu)? b.ln_1.bias, TensorSpec::new(&[h], Init::Zeros))?;
            $v.linear(&format!("{q}.attn.c_attn"), & $($mu)? b.c_attn, conv(h, 3 * h))?;
            $v.linear(&format!("{q}.attn.c_proj"), & $($mu)? b.c_proj, conv(h, h))?;
            $v.tensor(&format!("{q}.ln_2.weight"), & $($mu)? b.ln_2.weight, TensorSpec::new(&[h], Init::Ones))?;
            $v.tensor(&format!("{q}.ln_2.bias"), & $($mu)? b.ln_2.bias, TensorSpec::new(&[h], Init::Zeros))?;
            $v.linear(&format!("{q}.mlp.c_fc"), & $($mu)? b.c_fc, conv(h, i))?;
            $v.linear(&format!("{q}.mlp.c_proj"), & $($mu)? b.mlp_proj, conv(i, h))?;
        }
        $v.tensor(&format!("{p}ln_f.weight"), & $($mu)? $m.ln_f.weight, TensorSpec::new(&[h], Init::Ones))?;
        $v.tensor(&format!("{p}ln_f.bias"), & $($mu)? $m.ln_f.bias, TensorSpec::new(&[h], Init::Zeros))?;
        Ok(())
    }};
}

impl Gpt2 {
    /// The model with placeholder tensors; `prefix` is "transformer." (GPT2LMHeadModel
    /// checkpoints) or "" (bare GPT2Model ones).
    pub fn skeleton(cfg: &Config, prefix: &str) -> Self {
        let norm = || LayerNorm { weight: Tensor::new(), bias: Tensor::new(), eps: cfg.norm_eps };
        let blocks = (0..cfg.num_layers)
            .map(|_| Block { ln_1: norm(), c_attn: placeholder_linear(), c_proj: placeholder_linear(), ln_2: norm(), c_fc: placeholder_linear(), mlp_proj: placeholder_linear() })
            .collect();
        Gpt2 { wte: Tensor::new(), wpe: Tensor::new(), blocks, ln_f: norm(), heads: cfg.num_heads as i64, prefix: prefix.to_string() }
    }

    pub fn load(cfg: &Config, w: &mut Weights) -> Result<Self> {
        let prefix = if w.has("transformer.wte.weight") { "transformer." } else { "" };
        let mut m = Self::skeleton(cfg, prefix);
        m.visit_mut(cfg, &mut Load(w))?;
        Ok(m)
    }

    pub fn lm_head(&self) -> &Tensor {
        &self.wte
    }

    /// Token plus position embeddings `[B, T, H]`, and the additive form of `mask`.
    pub fn embed(&self, ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Shared)> {
        let x = Tensor::f_embedding(&self.wte, ids, -1, false, false)?.f_add(&Tensor::f_embedding(&self.wpe, positions, -1, false, false)?)?;
        let mask = mask.map(|m| super::layers::additive_mask(m, x.kind())).transpose()?;
        Ok((x, Shared { rope: None, local_rope: None, mask, window_mask: None, unpadded: None }))
    }

    /// Block `l` on `x` `[B, T, H]` (or `[1, N, H]`: `Shared::unpadded`), its keys and values
    /// appended to `cache`.
    pub fn layer(&self, l: usize, x: &Tensor, shared: &Shared, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let blk = &self.blocks[l];
        let qkv = blk.c_attn.forward(&blk.ln_1.forward(x)?)?;
        let qkv = match &shared.unpadded {
            Some(u) => u.pad(&qkv)?,
            None => qkv,
        };
        let (b, t, h) = (qkv.size()[0], qkv.size()[1], x.size()[2]);
        let d = h / self.heads;
        let parts = qkv.f_split(h, -1)?;
        let heads = |t_: &Tensor| -> Result<Tensor> { Ok(t_.f_view([b, t, self.heads, d])?.f_transpose(1, 2)?) };
        let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
        let (k, v) = match cache {
            Some(c) => c.append(l, &k, &v)?,
            None => (k, v),
        };
        let mask = shared.mask.as_ref();
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask, 0.0, mask.is_none(), None, false)?;
        let y = y.f_transpose(1, 2)?.f_reshape([b, t, h])?;
        let y = match &shared.unpadded {
            Some(u) => u.unpad(&y)?,
            None => y,
        };
        let x = x.f_add(&blk.c_proj.forward(&y)?)?;
        let m = blk.c_fc.forward(&blk.ln_2.forward(&x)?)?.f_gelu("tanh")?;
        Ok(x.f_add(&blk.mlp_proj.forward(&m)?)?)
    }

    /// The final layer norm, after the last block.
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        self.ln_f.forward(x)
    }

    /// Every parameter in HF order.
    pub fn visit(&self, cfg: &Config, v: &mut impl Visit) -> Result<()> {
        walk!(self, cfg, v, iter)
    }

    /// Every parameter in HF order, to change.
    pub fn visit_mut<'a>(&'a mut self, cfg: &Config, v: &mut impl VisitMut<'a>) -> Result<()> {
        walk!(self, cfg, v, iter_mut, mut)
    }
}

/// GPT-2's `config.json` (its own names: `n_embd`, `n_layer`, ...): learned positions, fused
/// biased projections, tied embeddings.
pub(super) fn config(raw: &Raw, file: &str, common: Config) -> Result<Config> {
    let hidden = need(raw.n_embd, file, "n_embd")?;
    let heads = need(raw.n_head, file, "n_head")?;
    if let Some(act) = raw.activation_function.as_deref() {
        if act != "gelu_new" && act != "gelu_pytorch_tanh" && act != "gelu" {
            bail!("{file}: activation_function \"{act}\" is not supported (gelu_new, gelu_pytorch_tanh, gelu)");
        }
    }
    Ok(Config {
        arch: Arch::Gpt2,
        vocab_size: need(raw.vocab_size, file, "vocab_size")?,
        hidden_size: hidden,
        intermediate_size: raw.n_inner.unwrap_or(4 * hidden),
        num_layers: need(raw.n_layer, file, "n_layer")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim: if heads > 0 { hidden / heads } else { 0 },
        norm_eps: raw.layer_norm_epsilon.unwrap_or(1e-5),
        max_position_embeddings: raw.n_positions.unwrap_or(1024),
        tie_word_embeddings: true,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        ..common
    })
}

/// The `config.json` `save` writes for GPT-2.
pub(super) fn hf_json(c: &Config) -> Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
        "n_embd": c.hidden_size, "n_layer": c.num_layers, "n_head": c.num_heads, "n_inner": c.intermediate_size,
        "n_positions": c.max_position_embeddings, "layer_norm_epsilon": c.norm_eps, "activation_function": "gelu_new",
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_ids.first(), "tie_word_embeddings": true,
    })
}
