//! Log-probabilities and scores of many (prompt, response) pairs in one pass: summed response
//! log-probs (the LM head applied only where a response token is predicted), score heads,
//! pooled features; the closed response space of the exact world.
use super::config::Pooling;
use super::layers::{positions_from_mask, Shared, Unpadded};
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

/// One forward pass's batch of sequences to score (`CausalLM::pack`, `CausalLM::pack_pairs`).
pub struct Packed {
    /// Token ids and their positions `[B, T]`, right-padded.
    pub ids: Tensor,
    pub positions: Tensor,
    /// The boolean attention mask `[B, 1, T, T]` where a row holds more than one response;
    /// None: causal.
    pub mask: Option<Tensor>,
    /// Where the batch has padding: the layers run on its tokens alone (`Unpadded`).
    unpadded: Option<Unpadded>,
    /// Each scored token: the index of the position that predicts it (among the tokens where
    /// `unpadded`, else row · T + column), its id, and the output its log-prob sums into.
    predicted_at: Tensor,
    targets: Tensor,
    outputs: Tensor,
    pub n_outputs: usize,
}

impl Packed {
    /// Whether the layers run on the batch's tokens alone (it has padding).
    pub fn unpadded(&self) -> bool {
        self.unpadded.is_some()
    }
}

/// The layer inputs a checkpointed forward pass kept (`logprobs_checkpointed`), to
/// finish its backward pass.
pub struct Checkpoints<'a> {
    model: &'a CausalLM,
    shared: Shared,
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

    /// Each `prompt ++ response` in its own row of a right-padded batch (causal attention).
    pub fn pack(&self, prompts: &[&[i64]], responses: &[&[i64]]) -> Result<Packed> {
        let rows: Vec<(&[i64], Vec<(&[i64], usize)>)> = prompts.iter().zip(responses).enumerate().map(|(i, (&p, &r))| (p, vec![(r, i)])).collect();
        self.layout(&rows)
    }

    /// The two responses of each pair with their prompt; outputs `[2N]`: every `first` response,
    /// then every `second`. With `share`, one row per pair, `prompt ++ first ++ second`, in which
    /// the second response sees the prompt and itself but not the first response (a tree
    /// attention mask; its positions continue from the prompt's end): the prompt goes through
    /// the model once instead of twice, and the log-probs (and their gradients) are those of the
    /// two separate sequences. Without `share`, two rows per pair, as `pack` lays them out.
    pub fn pack_pairs(&self, prompts: &[&[i64]], first: &[&[i64]], second: &[&[i64]], share: bool) -> Result<Packed> {
        let n = prompts.len();
        let rows: Vec<(&[i64], Vec<(&[i64], usize)>)> = if share {
            (0..n).map(|i| (prompts[i], vec![(first[i], i), (second[i], n + i)])).collect()
        } else {
            (0..n).map(|i| (prompts[i], vec![(first[i], i)])).chain((0..n).map(|i| (prompts[i], vec![(second[i], n + i)]))).collect()
        };
        self.layout(&rows)
    }

    /// The batch of `rows`, each a prompt followed by responses ("branches"), each response
    /// tagged with the output its log-prob sums into. Every branch continues the prompt: its
    /// positions start at the prompt's length and, where a row has more than one branch, the
    /// attention mask lets it see the prompt and itself only.
    fn layout(&self, rows: &[(&[i64], Vec<(&[i64], usize)>)]) -> Result<Packed> {
        let b = rows.len();
        let t = rows.iter().map(|(p, br)| p.len() + br.iter().map(|(r, _)| r.len()).sum::<usize>()).max().unwrap_or(0);
        let branched = rows.iter().any(|(_, br)| br.len() > 1);
        let mut ids = vec![self.tokenizer.pad_id; b * t];
        let mut positions = vec![0i64; b * t];
        // Segment of each column: 0 the prompt, k the k-th branch, -1 padding.
        let mut segment = vec![-1i64; b * t];
        let (mut at, mut targets, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (p, branches)) in rows.iter().enumerate() {
            if p.is_empty() {
                bail!("pair {i}: the prompt has no tokens (nothing to condition the first response token on)");
            }
            for (j, &tok) in p.iter().enumerate() {
                (ids[i * t + j], positions[i * t + j], segment[i * t + j]) = (tok, j as i64, 0);
            }
            let mut col = p.len();
            for (k, (r, out)) in branches.iter().enumerate() {
                if let Some(space) = &self.space {
                    if r.len() != space.length {
                        bail!("response {out} has {} tokens; every response of this model's closed response space has exactly {}", r.len(), space.length);
                    }
                }
                for (j, &tok) in r.iter().enumerate() {
                    (ids[i * t + col + j], positions[i * t + col + j], segment[i * t + col + j]) = (tok, (p.len() + j) as i64, k as i64 + 1);
                    // The first token is predicted from the prompt's last position, the others
                    // from the branch's previous one.
                    at.push((i * t + if j == 0 { p.len() - 1 } else { col + j - 1 }) as i64);
                    // In a closed response space the target is the token's row in the restricted head.
                    targets.push(match &self.space {
                        Some(space) => space.index(tok).with_context(|| format!("response {out}"))?,
                        None => tok,
                    });
                    outputs.push(*out as i64);
                }
                col += r.len();
            }
        }
        let dev = self.device;
        let mk = |v: &[i64], shape: &[i64]| -> Result<Tensor> { Ok(Tensor::f_from_slice(v)?.f_reshape(shape)?.f_to_device(dev)?) };
        let token_slots: Vec<i64> = (0..b * t).filter(|&i| segment[i] >= 0).map(|i| i as i64).collect();
        let unpadded = if token_slots.len() < b * t {
            // Scored positions as indices among the tokens.
            let mut token_of = vec![0i64; b * t];
            for (k, &slot) in token_slots.iter().enumerate() {
                token_of[slot as usize] = k as i64;
            }
            for a in at.iter_mut() {
                *a = token_of[*a as usize];
            }
            Some(Unpadded::new(&token_slots, b as i64, t as i64, dev)?)
        } else {
            None
        };
        let (bt, n) = ([b as i64, t as i64], at.len() as i64);
        let mask = if branched {
            // Query column q sees key column k when k <= q, k is a token, and k is in the prompt
            // or in q's own branch (padding queries see the prompt).
            let seg = mk(&segment, &bt)?;
            let (q, k) = (seg.f_unsqueeze(2)?, seg.f_unsqueeze(1)?);
            let causal = Tensor::f_ones([t as i64, t as i64], (Kind::Bool, dev))?.f_tril(0)?;
            let same = k.f_eq(0)?.f_logical_or(&k.f_eq_tensor(&q)?)?.f_logical_and(&k.f_ge(0)?)?;
            Some(same.f_logical_and(&causal)?.f_unsqueeze(1)?)
        } else {
            None // right-padded rows: causal attention is exact (a token never sees padding)
        };
        Ok(Packed { ids: mk(&ids, &bt)?, positions: mk(&positions, &bt)?, mask, unpadded, predicted_at: mk(&at, &[n])?, targets: mk(&targets, &[n])?, outputs: mk(&outputs, &[n])?, n_outputs: rows.iter().map(|(_, br)| br.len()).sum() })
    }

    /// Summed log-probabilities `[N]` (f32) of each response given its prompt (`logprobs` of
    /// `pack`).
    pub fn sequence_logprobs(&self, prompts: &[&[i64]], responses: &[&[i64]], chunk: i64) -> Result<Tensor> {
        self.logprobs(&self.pack(prompts, responses)?, chunk)
    }

    /// Summed log-probabilities `[outputs]` (f32) of the responses of a packed batch. The LM head
    /// is applied only at scored positions, in chunks of `chunk` rows, so `[B, T, V]` logits are
    /// never built. Differentiable when the weights require gradients.
    pub fn logprobs(&self, packed: &Packed, chunk: i64) -> Result<Tensor> {
        self.response_logprobs(&self.packed_hidden(packed)?, packed, chunk)
    }

    /// Final hidden states of a packed batch: `[1, N, H]` where it has padding (the layers run
    /// on its tokens alone), else `[B, T, H]`.
    fn packed_hidden(&self, packed: &Packed) -> Result<Tensor> {
        let (x, shared) = self.embed_packed(packed)?;
        self.layers_and_finish(x, &shared, None, 0)
    }

    /// The embeddings of a packed batch (its tokens alone where it has padding) and what its
    /// layers share.
    fn embed_packed(&self, packed: &Packed) -> Result<(Tensor, Shared)> {
        let (x, mut shared) = self.embed(&packed.ids, &packed.positions, packed.mask.as_ref())?;
        match &packed.unpadded {
            Some(u) => {
                shared.unpadded = Some(u.shallow_clone());
                Ok((u.unpad(&x)?, shared))
            }
            None => Ok((x, shared)),
        }
    }

    /// `logprobs` with activation checkpointing, for training: the layers run without
    /// recording a graph, keeping only each layer's input; the returned log-probs are
    /// differentiable from the last layer's output on, and `Checkpoints::backward`, called after
    /// the loss's backward pass, recomputes one layer at a time to carry the gradient down to the
    /// embeddings. Gradients equal the plain pass's (tests/train.rs). Memory: one `[B, T, H]`
    /// tensor per layer instead of every layer's activations.
    pub fn logprobs_checkpointed(&self, packed: &Packed, chunk: i64) -> Result<(Tensor, Checkpoints<'_>)> {
        if let Some((cfg, _)) = &self.lora {
            if cfg.dropout > 0.0 {
                bail!("{}: activation checkpointing recomputes each layer, which would draw new LoRA dropout masks; use LoRA dropout 0 with checkpoint", self.source);
            }
        }
        let (embedded, shared) = self.embed_packed(packed)?;
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
        let logps = self.response_logprobs(&hidden, packed, chunk)?;
        Ok((logps, Checkpoints { model: self, shared, inputs, top, embedded }))
    }

    /// Summed log-probs `[outputs]` of the scored tokens of `packed` from `hidden` `[B, T, H]`
    /// (`[1, N, H]` where the batch is unpadded).
    fn response_logprobs(&self, hidden: &Tensor, packed: &Packed, chunk: i64) -> Result<Tensor> {
        let flat = hidden.f_reshape([-1, hidden.size()[2]])?;
        let selected = flat.f_index_select(0, &packed.predicted_at)?;
        let n = selected.size()[0];
        let head = self.response_head()?;
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let logits = self.soft_cap(crate::ops::linear(&selected.f_narrow(0, start, len)?, &head, None)?.f_to_kind(Kind::Float)?)?;
            let lp = logits.f_log_softmax(-1, Kind::Float)?;
            let tgt = packed.targets.f_narrow(0, start, len)?.f_unsqueeze(1)?;
            pieces.push(lp.f_gather(1, &tgt, false)?.f_squeeze_dim(1)?);
            start += len;
        }
        let token_lp = if pieces.is_empty() { Tensor::f_zeros([0], (Kind::Float, self.device))? } else { Tensor::f_cat(&pieces, 0)? };
        let sums = Tensor::f_zeros([packed.n_outputs as i64], (Kind::Float, self.device))?;
        Ok(sums.f_index_add(0, &packed.outputs, &token_lp)?)
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
        let packed = self.pack(prompts, responses)?;
        let hidden = self.packed_hidden(&packed)?;
        let hidden = match &packed.unpadded {
            Some(u) => u.pad(&hidden)?, // right-padded rows again, to pool
            None => hidden,
        };
        match pool {
            Pooling::Last => {
                let last: Vec<i64> = prompts.iter().zip(responses).map(|(p, r)| (p.len() + r.len()) as i64 - 1).collect();
                let last = Tensor::f_from_slice(&last)?.f_to_device(hidden.device())?; // [B]
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
