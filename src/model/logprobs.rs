//! Log-probabilities and scores of many (prompt, response) pairs in one pass: summed response
//! log-probs (the LM head applied only where a response token is predicted), score heads,
//! pooled features; the closed response space of the exact world.
use super::config::Pooling;
use super::layers::positions_from_mask;
use super::CausalLM;
use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

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

/// The layer inputs a checkpointed forward pass kept (`sequence_logprobs_checkpointed`), to
/// finish its backward pass.
pub struct Checkpoints<'a> {
    model: &'a CausalLM,
    shared: super::layers::Shared,
    /// The input of each layer, without a graph.
    inputs: Vec<Tensor>,
    /// The last layer's output as a leaf: the loss's backward pass stops here.
    top: Tensor,
    /// The embeddings with their graph (to the embedding weights when they train).
    embedded: Tensor,
}

impl Checkpoints<'_> {
    /// Carries the gradient that the loss's backward pass left at the last layer's output down
    /// through the layers, recomputing each from its kept input (last to first), into the
    /// weights' gradients. Backward of `sum(y * g)` with `g` held constant gives each weight and
    /// the layer input exactly the vector-Jacobian product with `g`.
    pub fn backward(self) -> Result<()> {
        let mut g = self.top.f_grad()?;
        if !g.defined() {
            return Ok(()); // nothing below the loss needs a gradient
        }
        for (l, input) in self.inputs.iter().enumerate().rev() {
            let x = input.f_detach()?.f_set_requires_grad(true)?;
            let y = self.model.layer(l, &x, &self.shared, None)?;
            y.f_mul(&g)?.f_sum(y.kind())?.f_backward()?;
            g = x.f_grad()?;
        }
        if self.embedded.requires_grad() {
            self.embedded.f_mul(&g)?.f_sum(self.embedded.kind())?.f_backward()?;
        }
        Ok(())
    }
}

impl CausalLM {
    /// The rows of the LM head responses are drawn from `[V', H]`: all of them, or those of the
    /// closed response space.
    pub(crate) fn response_head(&self) -> Result<Tensor> {
        match &self.space {
            None => Ok(self.lm_head().shallow_clone()),
            Some(s) => Ok(self.lm_head().f_index_select(0, &Tensor::f_from_slice(&s.allowed)?.f_to_device(self.device)?)?),
        }
    }

    /// Gemma 2's soft cap of the final logits, `cap·tanh(logits/cap)`; the logits unchanged for
    /// every other model.
    pub(crate) fn soft_cap(&self, logits: Tensor) -> Result<Tensor> {
        match self.cfg.gemma.as_ref().and_then(|g| g.final_logit_softcapping) {
            Some(cap) => Ok(logits.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?),
            None => Ok(logits),
        }
    }

    /// Full logits `[B, T, V]` in f32 for unpadded ids `[B, T]` (for tests and small inputs; the
    /// training and scoring paths never build this tensor).
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let valid = Tensor::f_ones([b, t], (Kind::Int64, self.device))?;
        let h = self.hidden(ids, &positions_from_mask(&valid)?, None, None)?;
        self.soft_cap(h.f_matmul(&self.lm_head().f_tr()?)?.f_to_kind(Kind::Float)?)
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
        let hidden = self.hidden(&ids, &positions_from_mask(&valid)?, None, None)?; // right-padded
        self.response_logprobs(&hidden, &rows, &cols, &targets, prompts.len(), chunk)
    }

    /// `sequence_logprobs` with activation checkpointing, for training: the layers run without
    /// recording a graph, keeping only each layer's input; the returned log-probs are
    /// differentiable from the last layer's output on, and `Checkpoints::backward`, called after
    /// the loss's backward pass, recomputes one layer at a time to carry the gradient down to the
    /// embeddings. Gradients equal the plain pass's (tests/train.rs). Memory: one `[B, T, H]`
    /// tensor per layer instead of every layer's activations.
    pub fn sequence_logprobs_checkpointed(&self, prompts: &[&[i64]], responses: &[&[i64]], chunk: i64) -> Result<(Tensor, Checkpoints<'_>)> {
        if let Some((cfg, _)) = &self.lora {
            if cfg.dropout > 0.0 {
                bail!("{}: activation checkpointing recomputes each layer, which would draw new LoRA dropout masks; use LoRA dropout 0 with checkpoint", self.source);
            }
        }
        let (ids, valid, rows, cols, targets) = self.pack(prompts, responses)?;
        let (embedded, shared) = self.embed(&ids, &positions_from_mask(&valid)?, None)?; // right-padded: causal
        let mut inputs = Vec::with_capacity(self.cfg.num_layers);
        let mut x = embedded.f_detach()?;
        tch::no_grad(|| -> Result<()> {
            for l in 0..self.cfg.num_layers {
                let next = self.layer(l, &x, &shared, None)?;
                inputs.push(std::mem::replace(&mut x, next));
            }
            Ok(())
        })?;
        let top = x.f_set_requires_grad(true)?;
        let hidden = self.finish(&top)?;
        let logps = self.response_logprobs(&hidden, &rows, &cols, &targets, prompts.len(), chunk)?;
        Ok((logps, Checkpoints { model: self, shared, inputs, top, embedded }))
    }

    /// Summed log-probs `[N]` of the response tokens at (`rows`, `cols`) of `hidden` `[B, T, H]`.
    fn response_logprobs(&self, hidden: &Tensor, rows: &Tensor, cols: &Tensor, targets: &Tensor, n_rows: usize, chunk: i64) -> Result<Tensor> {
        let (t, h) = (hidden.size()[1], hidden.size()[2]);
        let flat = hidden.f_reshape([-1, h])?;
        let index = rows.f_mul_scalar(t)?.f_add(cols)?;
        let selected = flat.f_index_select(0, &index)?;
        let n = selected.size()[0];
        let head = self.response_head()?;
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let logits = self.soft_cap(selected.f_narrow(0, start, len)?.f_matmul(&head.f_tr()?)?.f_to_kind(Kind::Float)?)?;
            let lp = logits.f_log_softmax(-1, Kind::Float)?;
            let tgt = targets.f_narrow(0, start, len)?.f_unsqueeze(1)?;
            pieces.push(lp.f_gather(1, &tgt, false)?.f_squeeze_dim(1)?);
            start += len;
        }
        let token_lp = if pieces.is_empty() { Tensor::f_zeros([0], (Kind::Float, self.device))? } else { Tensor::f_cat(&pieces, 0)? };
        let sums = Tensor::f_zeros([n_rows as i64], (Kind::Float, self.device))?;
        Ok(sums.f_index_add(0, rows, &token_lp)?)
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
}
