//! Supervised fine-tuning on prompt/response pairs: the mean negative log-likelihood of the
//! response tokens (prompt tokens are context, not targets), e.g. to build a reference model.
use super::{row, steps_per_epoch, Loop, LoopOptions, TrainingMode};
use crate::data::batch::{self, BatchOptions};
use crate::model::CausalLM;
use crate::run::progress::Progress;
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct SftOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub loop_opts: LoopOptions,
}

impl Default for SftOptions {
    fn default() -> Self {
        // 2e-5: a full fine-tuning learning rate (TRL's SFTConfig default).
        SftOptions { epochs: 1, batch_size: 8, seed: 0, loop_opts: LoopOptions { adamw: super::optim::AdamWConfig { lr: 2e-5, ..Default::default() }, ..Default::default() } }
    }
}

/// Trains on `(prompt ids, response ids)` examples; each step's loss is the mean over all
/// response tokens of the step. Returns a summary with the first and last epoch's mean loss.
pub fn train(model: &CausalLM, opt: &mut super::optim::AdamW, data: &[(Vec<i64>, Vec<i64>)], opts: &SftOptions, log: &mut dyn FnMut(Map<String, Value>) -> Result<()>, stop: &dyn Fn() -> bool) -> Result<Map<String, Value>> {
    if data.is_empty() {
        bail!("sft: no examples");
    }
    let lengths: Vec<usize> = data.iter().map(|(p, r)| p.len() + r.len()).collect();
    let bopts = BatchOptions { batch_size: opts.batch_size, token_budget: None, rows_per_item: 1, group_by_length: true, seed: Some(opts.seed) };
    let accum = opts.loop_opts.grad_accum.max(1);
    let total = steps_per_epoch(batch::plan(&lengths, &bopts, 0).len(), accum) * opts.epochs;
    let dist = opts.loop_opts.dist.clone();
    if let Some(g) = &dist {
        // Every rank starts from rank 0's weights.
        g.broadcast_parameters(&opt.parameters())?;
    }
    let mut lp = Loop::new(opt, opts.loop_opts.clone(), total);
    let mut progress = Progress::new("sft", total);
    let mut epoch_losses = Vec::new();
    let training = TrainingMode::on(model);
    for epoch in 0..opts.epochs {
        let plan = batch::plan(&lengths, &bopts, epoch as u64);
        let step_tokens: Vec<usize> = plan.chunks(accum).map(|c| c.iter().flatten().map(|&i| data[i].1.len()).sum()).collect();
        let n_micro = plan.len();
        let (mut sum, mut count, mut step_sum) = (0.0, 0usize, 0.0);
        for (k, idx) in plan.iter().enumerate() {
            if stop() {
                bail!("interrupted");
            }
            // Data-parallel: micro-batch k is rank k mod world's (as in dpo); the losses are
            // divided by the step's token count over all ranks, so the summed gradient is one
            // process's.
            if dist.as_ref().is_none_or(|g| k % g.world == g.rank) {
                let prompts: Vec<&[i64]> = idx.iter().map(|&i| data[i].0.as_slice()).collect();
                let responses: Vec<&[i64]> = idx.iter().map(|&i| data[i].1.as_slice()).collect();
                let (lps, checkpoints) = super::train_logprobs(model, &model.pack(&prompts, &responses)?, opts.loop_opts.checkpoint)?;
                let nll = lps.f_sum(Kind::Float)?.f_neg()?;
                let loss = nll.f_div_scalar(step_tokens[k / accum].max(1) as f64)?;
                let nll_value = nll.f_double_value(&[])?; // the one read-back of this micro-batch
                lp.backward(&loss, checkpoints, nll_value, format!("batch {} (examples {idx:?})", k + 1))?;
                step_sum += nll_value;
            }
            if (k + 1) % accum == 0 || k + 1 == n_micro {
                if let Some(g) = &dist {
                    let mut sum = Tensor::from_slice(&[step_sum]);
                    g.all_reduce_sum(&mut sum)?;
                    step_sum = sum.f_double_value(&[0])?;
                }
                let tokens = step_tokens[k / accum].max(1);
                let report = lp.step()?;
                let mean = step_sum / tokens as f64;
                progress.tick(1, &format!("loss {mean:.4}"));
                if report.step % opts.loop_opts.log_every.max(1) == 0 || report.step == total {
                    log(row(&[("phase", json!("sft")), ("epoch", json!(epoch)), ("step", json!(report.step)), ("loss", json!(mean)), ("grad_norm", json!(report.grad_norm)), ("lr", json!(report.lr))]))?;
                }
                sum += step_sum;
                count += tokens;
                step_sum = 0.0;
            }
        }
        epoch_losses.push(sum / count.max(1) as f64);
    }
    drop(training);
    progress.finish("");
    Ok(row(&[
        ("steps", json!(lp.opt.steps)),
        ("skipped_steps", json!(lp.skipped.len())),
        ("first_epoch_loss", json!(epoch_losses.first())),
        ("loss", json!(epoch_losses.last())),
        ("peak_rss_mib", json!(crate::run::progress::peak_rss_mib())),
    ]))
}
