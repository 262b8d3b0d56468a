//! Building blocks shared by the model files: linear layers, norms, the KV cache, masks and
//! positions.
use anyhow::Result;
use std::cell::Cell;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// Switches shared by every LoRA adapter of one model: adapters on or off (off gives the base
/// model, which serves as the reference without a second copy), and training mode (dropout).
#[derive(Clone)]
pub struct AdapterState {
    pub enabled: Rc<Cell<bool>>,
    pub training: Rc<Cell<bool>>,
}

impl Default for AdapterState {
    fn default() -> Self {
        AdapterState { enabled: Rc::new(Cell::new(true)), training: Rc::new(Cell::new(false)) }
    }
}

/// A LoRA adapter (Hu et al. 2021, as PEFT implements it): `ΔW = (alpha / rank) · B A`, with
/// `A [rank, in]` Kaiming-uniform and `B [out, rank]` zero at initialisation, so training starts
/// from the base model exactly.
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
    pub state: AdapterState,
}

/// `y = x Wᵀ + b` with `W` stored `[out, in]` as in PyTorch, plus an optional LoRA adapter.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias, lora: None }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = crate::ops::linear(x, &self.weight, self.bias.as_ref())?;
        match &self.lora {
            Some(l) if l.state.enabled.get() => {
                let h = if l.state.training.get() && l.dropout > 0.0 { x.f_dropout(l.dropout, true)? } else { x.shallow_clone() };
                // As PEFT: the input cast to the adapter's dtype (f32 adapters on a bf16 or f16
                // model), the update cast back to the layer's.
                let h = if h.kind() != l.a.kind() { h.f_to_kind(l.a.kind())? } else { h };
                let delta = h.f_linear::<Tensor>(&l.a, None)?.f_linear::<Tensor>(&l.b, None)?.f_mul_scalar(l.scale)?;
                let delta = if delta.kind() != y.kind() { delta.f_to_kind(y.kind())? } else { delta };
                Ok(y.f_add(&delta)?)
            }
            _ => Ok(y),
        }
    }

    /// The weight with the adapter merged in (`W + scale · B A`) while adapters are on, else the
    /// weight itself.
    pub fn effective_weight(&self) -> Result<Tensor> {
        match &self.lora {
            Some(l) if l.state.enabled.get() => Ok(self.weight.f_add(&l.b.f_matmul(&l.a)?.f_mul_scalar(l.scale)?.f_to_kind(self.weight.kind())?)?),
            _ => Ok(self.weight.shallow_clone()),
        }
    }

    /// Adds a fresh adapter of `rank` (A Kaiming-uniform with bound 1/sqrt(in), B zero).
    pub fn add_lora(&mut self, rank: i64, alpha: f64, dropout: f64, state: AdapterState) -> Result<()> {
        let size = self.weight.size();
        let (out, inp) = (size[0], size[1]);
        let opts = (Kind::Float, self.weight.device());
        let bound = 1.0 / (inp as f64).sqrt();
        let a = Tensor::f_rand([rank, inp], opts)?.f_mul_scalar(2.0 * bound)?.f_sub_scalar(bound)?.f_set_requires_grad(true)?;
        let b = Tensor::f_zeros([out, rank], opts)?.f_set_requires_grad(true)?;
        self.lora = Some(Lora { a, b, scale: alpha / rank as f64, dropout, state });
        Ok(())
    }
}

/// RMSNorm as HF Llama computes it: normalise in f32, cast back, then scale. Gemma's
/// (`plus_one`) scales by `1 + weight`, in f32 before the cast.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub plus_one: bool,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        if self.plus_one {
            let n = *x.size().last().unwrap_or(&0);
            let scale = self.weight.f_to_kind(Kind::Float)?.f_add_scalar(1.0)?;
            return Ok(x.f_to_kind(Kind::Float)?.f_rms_norm(&[n][..], Some(&scale), self.eps)?.f_to_kind(kind)?);
        }
        if kind == Kind::Float {
            // One fused op; in f32 it is the same arithmetic as the explicit form below.
            let n = *x.size().last().unwrap_or(&0);
            return Ok(x.f_rms_norm(&[n][..], Some(&self.weight), self.eps)?);
        }
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf.f_pow_tensor_scalar(2)?.f_mean_dim(&[-1i64][..], true, Kind::Float)?;
        let normed = xf.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?.f_to_kind(kind)?;
        Ok(normed.f_mul(&self.weight)?)
    }
}

/// LayerNorm with weight and bias (GPT-2).
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = *x.size().last().unwrap_or(&0);
        Ok(x.f_layer_norm(&[n][..], Some(&self.weight), Some(&self.bias), self.eps, false)?)
    }
}

/// Keys and values of every layer for incremental decoding, preallocated to `capacity`
/// positions so each step writes in place instead of concatenating.
///
/// Two ways of writing: every row at the shared length `len` (prefill, lock-step decoding), or,
/// when `row_positions` is set, one new token per row at that row's own position (the slots of
/// continuous batching, each holding a sequence of its own length); `len` is then the number of
/// positions attention reads, set by the caller before each step.
pub struct KvCache {
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
    /// Positions filled so far (shared length), or read by attention (per-row mode).
    pub len: i64,
    pub capacity: i64,
    /// Per-row write positions `[B]` (per-row mode), else None.
    pub row_positions: Option<Tensor>,
}

impl KvCache {
    pub fn new(layers: usize, batch: i64, kv_heads: i64, capacity: i64, head_dim: i64, kind: Kind, device: Device) -> Result<Self> {
        let shape = [batch, kv_heads, capacity, head_dim];
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for _ in 0..layers {
            keys.push(Tensor::f_zeros(shape, (kind, device))?);
            values.push(Tensor::f_zeros(shape, (kind, device))?);
        }
        Ok(KvCache { keys, values, len: 0, capacity, row_positions: None })
    }

    /// Writes this step's `k`, `v` (`[B, kvH, T, D]`) for `layer` at the current length (or at
    /// each row's position) and returns the keys and values attention reads.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        if let Some(pos) = &self.row_positions {
            anyhow::ensure!(t == 1, "per-row KV cache writes take one token per row, got {t}");
            anyhow::ensure!(self.len <= self.capacity, "KV cache overflow: {} > {}", self.len, self.capacity);
            let index = pos.f_view([-1, 1, 1, 1])?.f_expand(k.size(), false)?;
            let _ = self.keys[layer].f_scatter_(2, &index, k)?;
            let _ = self.values[layer].f_scatter_(2, &index, v)?;
            return Ok((self.keys[layer].f_narrow(2, 0, self.len)?, self.values[layer].f_narrow(2, 0, self.len)?));
        }
        anyhow::ensure!(self.len + t <= self.capacity, "KV cache overflow: {} + {t} > {}", self.len, self.capacity);
        self.keys[layer].f_narrow(2, self.len, t)?.f_copy_(k)?;
        self.values[layer].f_narrow(2, self.len, t)?.f_copy_(v)?;
        Ok((self.keys[layer].f_narrow(2, 0, self.len + t)?, self.values[layer].f_narrow(2, 0, self.len + t)?))
    }

    /// Called by a model after a forward of `t` new positions: the shared length grows (in
    /// per-row mode the caller moves each row's position itself).
    pub fn advance(&mut self, t: i64) {
        if self.row_positions.is_none() {
            self.len += t;
        }
    }

    /// Keeps only the rows in `index`.
    pub fn select_rows(&mut self, index: &Tensor) -> Result<()> {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.f_index_select(0, index)?;
        }
        Ok(())
    }
}

/// The boolean mask as an additive one (0 where allowed, -inf elsewhere) in the activation
/// dtype, built once per forward instead of being converted by every layer's attention.
pub fn additive_mask(mask: &Tensor, kind: Kind) -> Result<Tensor> {
    let zeros = Tensor::f_zeros(mask.size(), (kind, mask.device()))?;
    Ok(zeros.f_masked_fill(&mask.f_logical_not()?, f64::NEG_INFINITY)?)
}

/// Position ids for a left-padded batch: the count of real tokens before each position.
pub fn positions_from_mask(mask: &Tensor) -> Result<Tensor> {
    Ok(mask.f_to_kind(Kind::Int64)?.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_clamp_min(0)?)
}

/// What every layer of one forward pass shares, computed once by the family's `embed`: RoPE's
/// cos/sin tables (the Llama family; the sliding layers' own where they differ), the additive attention mask (None: causal) and, where a
/// sliding window reaches back less far than the longest position, the sliding layers' mask.
/// With `unpadded`, the layers' hidden states hold the batch's tokens alone (`Unpadded`).
pub struct Shared {
    pub rope: Option<(Tensor, Tensor)>,
    /// The sliding layers' own cos/sin (Gemma 3's local RoPE base), when they differ.
    pub local_rope: Option<(Tensor, Tensor)>,
    pub mask: Option<Tensor>,
    pub window_mask: Option<Tensor>,
    pub unpadded: Option<Unpadded>,
}

/// A right-padded batch `[B, T]` whose hidden states hold its `N` tokens alone, `[1, N, H]`: the
/// projections, MLPs and norms (nearly all of a layer's work) skip the padding, and attention
/// alone runs on the padded `[B, T]` layout (`pad` before, `unpad` after), where the RoPE tables
/// and masks are laid out. What padding slots hold there never reaches a token: a real query
/// never sees a padding key (the masks and right padding), and what padding queries compute is
/// dropped by `unpad`, so their gradient is zero.
pub struct Unpadded {
    /// For each of the `B·T` slots, the token it holds (padding: any token, see above) `[B·T]`.
    slot_token: Tensor,
    /// For each token, its slot (row · T + column) `[N]`.
    token_slot: Tensor,
    rows: i64,
    cols: i64,
}

impl Unpadded {
    /// The layout of a right-padded `[rows, cols]` batch whose tokens are in `token_slots` (flat
    /// indices, increasing).
    pub fn new(token_slots: &[i64], rows: i64, cols: i64, device: tch::Device) -> Result<Self> {
        let mut slot_token = vec![0i64; (rows * cols) as usize];
        let mut k = 0;
        for (slot, v) in slot_token.iter_mut().enumerate() {
            // Padding takes the last token before it (or the first one): any real token will do.
            while k + 1 < token_slots.len() && token_slots[k + 1] <= slot as i64 {
                k += 1;
            }
            *v = k as i64;
        }
        let mk = |v: &[i64]| -> Result<Tensor> { Ok(Tensor::f_from_slice(v)?.f_to_device(device)?) };
        Ok(Unpadded { slot_token: mk(&slot_token)?, token_slot: mk(token_slots)?, rows, cols })
    }

    /// The batch's tokens `[1, N, ...]` from its padded layout `[B, T, ...]`.
    pub fn unpad(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let flat = x.f_reshape([&[self.rows * self.cols][..], &size[2..]].concat())?;
        Ok(flat.f_index_select(0, &self.token_slot)?.f_unsqueeze(0)?)
    }

    /// The padded layout `[B, T, ...]` of the batch's tokens `[1, N, ...]`.
    pub fn pad(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let padded = x.f_squeeze_dim(0)?.f_index_select(0, &self.slot_token)?;
        Ok(padded.f_reshape([&[self.rows, self.cols][..], &size[2..]].concat())?)
    }

    /// A second handle on the same layout.
    pub fn shallow_clone(&self) -> Self {
        Unpadded { slot_token: self.slot_token.shallow_clone(), token_slot: self.token_slot.shallow_clone(), rows: self.rows, cols: self.cols }
    }
}

/// The boolean mask `[B, 1, T, S]` of a sliding window: the query at position `positions[b, t]`
/// sees key `j` when `p - window < key_positions[.., j] <= p`, and where `mask` (if any) allows
/// it. `key_positions`: `[S]` (key columns are positions: the sampler's caches and every
/// right-padded batch keep them so) or `[B, S]` (a packed batch's own positions).
pub fn window_mask(positions: &Tensor, key_positions: &Tensor, window: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let p = positions.f_unsqueeze(-1)?;
    let j = if key_positions.dim() == 2 { key_positions.f_unsqueeze(1)? } else { key_positions.shallow_clone() };
    let band = j.f_le_tensor(&p)?.f_logical_and(&p.f_sub(&j)?.f_lt(window as i64)?)?.f_unsqueeze(1)?;
    Ok(match mask {
        Some(m) => band.f_logical_and(m)?,
        None => band,
    })
}
