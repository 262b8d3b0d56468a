//! Bradley-Terry score heads: a linear head on a frozen model's last-token features, trained so
//! that `σ(s(chosen) - s(rejected))` fits the preference labels ("better" for a reward model,
//! "safer" for a safety model). Features are computed once; the head trains full-batch on
//! standardised features, and the standardisation is folded back into the head's weights.
use crate::data::batch::TokenizedPair;
use crate::data::Rng;
use crate::model::layers::Linear;
use crate::model::config::Pooling;
use crate::model::CausalLM;
use crate::run::progress::Progress;
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct ScorerOptions {
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of pairs held out to measure accuracy.
    pub eval_fraction: f64,
    pub seed: u64,
}

impl Default for ScorerOptions {
    fn default() -> Self {
        ScorerOptions { steps: 300, lr: 0.05, weight_decay: 0.0, eval_fraction: 0.1, seed: 0 }
    }
}

fn accuracy(w: &Tensor, fc: &Tensor, fr: &Tensor) -> Result<(f64, f64)> {
    if fc.size()[0] == 0 {
        return Ok((f64::NAN, f64::NAN));
    }
    let d = fc.f_sub(fr)?.f_matmul(w)?;
    let acc = d.f_gt(0.0)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?.double_value(&[]);
    let loss = d.f_log_sigmoid()?.f_neg()?.f_mean(Kind::Double)?.double_value(&[]);
    Ok((acc, loss))
}

/// Trains a head on `model`'s features of both responses of each pair, pooled as `pool` says,
/// `chosen[i]` preferred. Returns the head (`[1, H]` weight and a bias) and a summary with train
/// and held-out accuracy; the caller records `pool` in the score model's config.
pub fn train_head(model: &CausalLM, pairs: &[TokenizedPair], chosen: &[usize], pool: Pooling, opts: &ScorerOptions, stop: &dyn Fn() -> bool) -> Result<(Linear, Map<String, Value>)> {
    let feats = features(model, pairs, pool, stop)?;
    train_head_on(model, &feats, chosen, opts, stop)
}

/// Features `[N, 2, H]` of both responses of every pair, pooled as `pool` says (no gradients).
pub fn features(model: &CausalLM, pairs: &[TokenizedPair], pool: Pooling, stop: &dyn Fn() -> bool) -> Result<Tensor> {
    let n = pairs.len();
    let mut progress = Progress::new("scorer features", n);
    let lengths: Vec<usize> = pairs.iter().map(TokenizedPair::len).collect();
    let mut feats: Option<Tensor> = None;
    for batch in crate::data::batch::by_length(&lengths, 2) {
        if stop() {
            bail!("interrupted");
        }
        let (prompts, responses) = crate::data::batch::both_responses(pairs, &batch);
        let f = tch::no_grad(|| model.features(&prompts, &responses, pool))?.f_to_kind(Kind::Float)?;
        let m = batch.len() as i64;
        let f = Tensor::f_stack(&[f.f_narrow(0, 0, m)?, f.f_narrow(0, m, m)?], 1)?; // [m, 2, H]
        let all = match &mut feats {
            Some(t) => t,
            None => feats.insert(Tensor::f_zeros([n as i64, 2, f.size()[2]], (Kind::Float, f.device()))?),
        };
        let index = Tensor::f_from_slice(&batch.iter().map(|&i| i as i64).collect::<Vec<_>>())?.f_to_device(f.device())?;
        let _ = all.f_index_copy_(0, &index, &f)?;
        progress.tick(batch.len(), "");
    }
    progress.finish("");
    feats.ok_or_else(|| anyhow::anyhow!("train_scorer: needs at least 2 pairs, got 0"))
}

/// Trains the head on precomputed features `[N, 2, H]`.
pub fn train_head_on(model: &CausalLM, all: &Tensor, chosen: &[usize], opts: &ScorerOptions, stop: &dyn Fn() -> bool) -> Result<(Linear, Map<String, Value>)> {
    let n = all.size()[0] as usize;
    if n < 2 {
        bail!("train_scorer: needs at least 2 pairs, got {n}");
    }
    if n != chosen.len() {
        bail!("train_scorer: {} labels for {n} pairs", chosen.len());
    }
    let h = all.size()[2];
    let dev = all.device();
    let pick = |which: usize| -> Result<Tensor> {
        let idx: Vec<i64> = chosen.iter().map(|&c| if which == 0 { c as i64 } else { 1 - c as i64 }).collect();
        let idx = Tensor::f_from_slice(&idx)?.f_to_device(dev)?.f_view([-1, 1, 1])?.f_expand([-1, 1, h], false)?;
        Ok(all.f_gather(1, &idx, false)?.f_squeeze_dim(1)?)
    };
    let (fc, fr) = (pick(0)?, pick(1)?);
    let mut order: Vec<i64> = (0..n as i64).collect();
    Rng::new(opts.seed).shuffle(&mut order);
    let n_eval = ((n as f64) * opts.eval_fraction).round() as usize;
    let n_eval = n_eval.min(n - 1);
    let train_idx = Tensor::f_from_slice(&order[n_eval..])?.f_to_device(dev)?;
    let eval_idx = Tensor::f_from_slice(&order[..n_eval])?.f_to_device(dev)?;
    // Standardise with statistics of the training features (both responses).
    let both = Tensor::f_cat(&[fc.f_index_select(0, &train_idx)?, fr.f_index_select(0, &train_idx)?], 0)?;
    let mu = both.f_mean_dim(&[0i64][..], true, Kind::Float)?;
    let sd = both.f_std_dim(&[0i64][..], false, true)?.f_clamp_min(1e-6)?;
    let z = |f: &Tensor| -> Result<Tensor> { Ok(f.f_sub(&mu)?.f_div(&sd)?) };
    let (zc, zr) = (z(&fc)?, z(&fr)?);
    let (tc, tr) = (zc.f_index_select(0, &train_idx)?, zr.f_index_select(0, &train_idx)?);
    let (ec, er) = (zc.f_index_select(0, &eval_idx)?, zr.f_index_select(0, &eval_idx)?);
    let w = Tensor::f_zeros([h, 1], (Kind::Float, dev))?.f_set_requires_grad(true)?;
    let mut opt = super::optim::AdamW::new(vec![("score.weight".into(), w.shallow_clone())])?;
    let cfg = super::optim::AdamWConfig { lr: opts.lr, weight_decay: opts.weight_decay, ..Default::default() };
    for _ in 0..opts.steps {
        if stop() {
            bail!("interrupted");
        }
        let loss = tc.f_sub(&tr)?.f_matmul(&w)?.f_log_sigmoid()?.f_neg()?.f_mean(Kind::Float)?;
        loss.f_backward()?;
        opt.step(&cfg, opts.lr)?;
        opt.zero_grad();
    }
    let w = w.f_detach()?;
    // Scores are rescaled to mean 0 and standard deviation 1 over the training responses, so
    // thresholds and dual variables read in standard deviations of the score, whatever scale
    // the (separable) Bradley-Terry fit drifted to. Ordering and accuracy are unchanged.
    let train_scores = Tensor::f_cat(&[tc.f_matmul(&w)?, tr.f_matmul(&w)?], 0)?;
    let s_mean = train_scores.f_mean(Kind::Float)?.double_value(&[]);
    let s_std = train_scores.f_std(true)?.double_value(&[]).max(1e-6);
    let w = w.f_div_scalar(s_std)?;
    let (train_acc, train_loss) = accuracy(&w, &tc, &tr)?;
    let (eval_acc, eval_loss) = accuracy(&w, &ec, &er)?;
    // s(f) = w·(f - μ)/σ - m = (w/σ)·f - (w/σ)·μ - m: one linear layer on raw features.
    let weight = w.f_squeeze_dim(1)?.f_div(&sd.f_squeeze_dim(0)?)?; // [H]
    let bias = weight.f_dot(&mu.f_squeeze_dim(0)?)?.f_neg()?.f_sub_scalar(s_mean / s_std)?.f_reshape([1])?;
    let head = Linear::new(weight.f_unsqueeze(0)?.f_to_kind(model.kind)?, Some(bias.f_to_kind(model.kind)?));
    let summary: Map<String, Value> = [
        ("pairs", json!(n)),
        ("held_out", json!(n_eval)),
        ("train_accuracy", json!(train_acc)),
        ("train_loss", json!(train_loss)),
        ("eval_accuracy", json!(if eval_acc.is_nan() { Value::Null } else { json!(eval_acc) })),
        ("eval_loss", json!(if eval_loss.is_nan() { Value::Null } else { json!(eval_loss) })),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok((head, summary))
}
