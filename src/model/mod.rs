//! Causal language models and score models on libtorch. This file holds the model type and
//! dispatches to the architectures (`llama.rs`: the decoder of the Llama family, which Qwen,
//! Gemma, Phi-3 and Mistral share; `gpt2.rs`); each family's own file (`llama.rs`, `qwen.rs`,
//! `gemma.rs`, `phi3.rs`, `gpt2.rs`) reads and writes its `config.json`; each concern has its own
//! file: `load.rs` (sources, GGUF mapping, built-ins), `logprobs.rs` (log-probs, scores,
//! features), `lora.rs` (adapters), `params.rs` (each family's parameters walked by visitors:
//! loading, listing, LoRA targets, random initialisation), `save.rs` (parameters out, HF folders), `sampler.rs`
//! (generation).
pub mod chat;
pub mod config;
pub mod gemma;
pub mod gguf;
pub mod gpt2;
pub mod layers;
pub mod llama;
mod load;
mod logprobs;
mod lora;
pub mod params;
pub mod phi3;
pub mod qwen;
pub mod sampler;
mod save;
pub mod tokenizer;
pub mod weights;

use anyhow::Result;
use config::Config;
use layers::{AdapterState, KvCache, Linear};
use std::rc::Rc;
use tch::{Device, Kind, Tensor};
use tokenizer::Tokenizer;

pub use load::{assets_dir, smollm2_path, LoadOptions};
pub use logprobs::{Checkpoints, Packed, ResponseSpace};
pub use lora::LoraConfig;
pub use sampler::{sample, Decoding, SampleOptions};

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

impl CausalLM {
    /// Final hidden states `[B, T, H]`. `mask` is a boolean attention mask `[B, 1, T, S]` (true:
    /// query may see key; S = cached + new positions, as the sampler builds it); None
    /// means plain causal attention, exact for unpadded or right-padded rows without a cache
    /// (a real position never sees padding, and padded positions' outputs are never read), and
    /// lets SDPA use its fused causal kernels.
    pub fn hidden(&self, ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (x, shared) = self.embed(ids, positions, mask)?;
        self.layers_and_finish(x, &shared, cache, ids.size()[1])
    }

    /// Every layer on the embeddings `x`, then the final norm; the cache (if any) advanced by
    /// `new` positions.
    pub(crate) fn layers_and_finish(&self, mut x: Tensor, shared: &layers::Shared, mut cache: Option<&mut KvCache>, new: i64) -> Result<Tensor> {
        for l in 0..self.cfg.num_layers {
            x = self.layer(l, &x, shared, cache.as_deref_mut())?;
        }
        if let Some(c) = cache {
            c.advance(new);
        }
        self.finish(&x)
    }

    /// The stages of `hidden`, for a caller that runs the layers one by one (activation
    /// checkpointing): the embeddings and what the layers share.
    pub fn embed(&self, ids: &Tensor, positions: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, layers::Shared)> {
        match &self.body {
            Body::Llama(m) => m.embed(ids, positions, mask),
            Body::Gpt2(m) => m.embed(ids, positions, mask),
        }
    }

    /// Decoder layer `l` (a stage of `hidden`), its keys and values appended to `cache`.
    pub fn layer(&self, l: usize, x: &Tensor, shared: &layers::Shared, cache: Option<&mut KvCache>) -> Result<Tensor> {
        match &self.body {
            Body::Llama(m) => m.layer(l, x, shared, cache),
            Body::Gpt2(m) => m.layer(l, x, shared, cache),
        }
    }

    /// The final norm (the last stage of `hidden`).
    pub fn finish(&self, x: &Tensor) -> Result<Tensor> {
        match &self.body {
            Body::Llama(m) => m.finish(x),
            Body::Gpt2(m) => m.finish(x),
        }
    }

    /// The LM head matrix `[V, H]`.
    pub fn lm_head(&self) -> &Tensor {
        match &self.body {
            Body::Llama(m) => &m.lm_head,
            Body::Gpt2(m) => m.lm_head(),
        }
    }
}
