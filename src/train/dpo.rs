//! Direct Preference Optimization (Rafailov et al. 2023) against a fixed reference, the policy
//! step of the method: for each pair, with `h = (log π(y_c) - log π(y_r)) - (log π_ref(y_c) -
//! log π_ref(y_r))`, the sigmoid loss `-(1-ε) log σ(β h) - ε log σ(-β h)` (ε = label smoothing)
//! or IPO's `(h - 1/(2β))²`. Chosen and rejected responses go through the policy in one forward;
//! reference log-probs come from the on-disk cache (or are recomputed online).
use super::{cache, matmul_peak, row, steps_per_epoch, FlopCount, Loop, LoopOptions, TrainingMode};
use crate::data::batch::{self, BatchOptions, TokenizedPair};
use crate::model::CausalLM;
use crate::run::progress::{peak_rss_mib, Progress};
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DpoLoss {
    Sigmoid,
    Ipo,
}

impl DpoLoss {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sigmoid" => Ok(DpoLoss::Sigmoid),
            "ipo" => Ok(DpoLoss::Ipo),
            other => anyhow::bail!("loss \"{other}\" is not sigmoid or ipo"),
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Ipo => "ipo",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DpoOptions {
    pub beta: f64,
    pub label_smoothing: f64,
    pub loss: DpoLoss,
    pub epochs: usize,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    pub max_len: usize,
    pub max_prompt_len: usize,
    pub group_by_length: bool,
    pub seed: u64,
    /// Where reference log-probs are cached; `None` recomputes them for every batch.
    pub cache_dir: Option<PathBuf>,
    /// One pass over each pair's prompt for both responses (`CausalLM::pack_pairs`).
    pub share_prompt: bool,
    pub loop_opts: LoopOptions,
}

impl Default for DpoOptions {
    fn default() -> Self {
        DpoOptions {
            beta: 0.1,
            label_smoothing: 0.0,
            loss: DpoLoss::Sigmoid,
            epochs: 1,
            batch_size: 8,
            max_len: 512,
            max_prompt_len: 256,
            group_by_length: true,
            seed: 0,
            cache_dir: Some(cache::default_dir()),
            share_prompt: true,
            // 5e-4: a LoRA learning rate (the published recipe's; full fine-tuning wants ~1e-6).
            loop_opts: LoopOptions { adamw: super::optim::AdamWConfig { lr: 5e-4, ..Default::default() }, ..Default::default() },
        }
    }
}

/// How reference log-probs are obtained.
pub enum Reference<'a> {
    /// `[pair][response]` log-probs computed beforehand.
    Table(Arc<Vec<[f32; 2]>>),
    /// Computed batch by batch.
    Online(PairLogprobs<'a>),
}

/// Log-probs `[2N]` of pairs' two responses: `(prompts, first, second)` to every first response's
/// log-prob, then every second's (`CausalLM::pack_pairs` then `logprobs`).
pub type PairLogprobs<'a> = &'a dyn Fn(&[&[i64]], &[&[i64]], &[&[i64]]) -> Result<Tensor>;

/// Reference log-probs of both responses of every pair, in batches, without gradients.
pub fn reference_table(reference: PairLogprobs, pairs: &[TokenizedPair], stop: &dyn Fn() -> bool) -> Result<Vec<[f32; 2]>> {
    let mut out = vec![[0f32; 2]; pairs.len()];
    let mut progress = Progress::new("reference log-probs", pairs.len());
    let lengths: Vec<usize> = pairs.iter().map(TokenizedPair::len).collect();
    for batch in crate::data::batch::by_length(&lengths, 2) {
        if stop() {
            bail!("interrupted");
        }
        let (prompts, first, second) = batch::pair_parts(pairs, &batch);
        let lp = tch::no_grad(|| reference(&prompts, &first, &second))?;
        let n = batch.len();
        let mut v = vec![0f32; 2 * n];
        lp.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float)?.f_copy_data(&mut v, 2 * n)?;
        for (k, &i) in batch.iter().enumerate() {
            out[i] = [v[k], v[n + k]];
        }
        progress.tick(n, "");
    }
    progress.finish("");
    Ok(out)
}

/// Reference log-probs from the disk cache when present (verified), else computed and stored.
/// Returns the table and whether it was a cache hit.
/// In a distributed run every rank computes its share of the table and every rank gets all of
/// it; rank 0 writes the cache.
pub fn cached_reference(reference: &CausalLM, eval: PairLogprobs, pairs: &[TokenizedPair], opts: &DpoOptions, dist: Option<&crate::dist::Group>, stop: &dyn Fn() -> bool) -> Result<(Vec<[f32; 2]>, bool)> {
    let table = || -> Result<Vec<[f32; 2]>> {
        let all = crate::dist::sharded(dist, pairs.len(), |range| {
            let part: Vec<f32> = reference_table(eval, &pairs[range], stop)?.concat();
            Ok(Tensor::f_from_slice(&part)?.f_view([-1, 2])?)
        })?;
        Ok(Vec::<f32>::try_from(all.f_view([-1])?)?.chunks(2).map(|c| [c[0], c[1]]).collect())
    };
    let Some(dir) = &opts.cache_dir else {
        return Ok((table()?, false));
    };
    let key = cache::key(cache::weights_fingerprint(reference)?, pairs, opts.max_prompt_len, opts.max_len);
    let found = cache::load(dir, &key, pairs.len())?;
    // Every rank uses the cache, or none does (rank 0 may be writing this entry right now).
    if let (true, Some(table)) = (crate::dist::all(dist, found.is_some())?, found) {
        return Ok((table, true));
    }
    let table = table()?;
    if dist.is_none_or(|g| g.rank == 0) {
        cache::store(dir, &key, &table)?;
    }
    Ok((table, false))
}

/// Per-pair DPO losses from summed log-probs of the policy (`pc`, `pr`) and the reference (`rc`,
/// `rr`) for chosen and rejected responses.
/// `smoothing`, when given, is each pair's own label smoothing (soft labels) in place of the
/// global `label_smoothing`.
pub fn losses(pc: &Tensor, pr: &Tensor, rc: &Tensor, rr: &Tensor, smoothing: Option<&Tensor>, opts: &DpoOptions) -> Result<Tensor> {
    let beta = opts.beta;
    let h = pc.f_sub(pr)?.f_sub(&rc.f_sub(rr)?)?;
    Ok(match opts.loss {
        DpoLoss::Sigmoid => {
            let pos = h.f_mul_scalar(beta)?.f_log_sigmoid()?.f_neg()?;
            let neg = h.f_mul_scalar(-beta)?.f_log_sigmoid()?.f_neg()?;
            match smoothing {
                None => pos.f_mul_scalar(1.0 - opts.label_smoothing)?.f_add(&neg.f_mul_scalar(opts.label_smoothing)?)?,
                Some(eps) => pos.f_mul(&eps.f_neg()?.f_add_scalar(1.0)?)?.f_add(&neg.f_mul(eps)?)?,
            }
        }
        DpoLoss::Ipo => h.f_sub_scalar(1.0 / (2.0 * beta))?.f_pow_tensor_scalar(2)?,
    })
}

/// Borrowed token slices of owned sequences.
fn slices(v: &[Vec<i64>]) -> Vec<&[i64]> {
    v.iter().map(Vec::as_slice).collect()
}

/// One micro-batch, built by the prefetch thread.
struct Micro {
    ids: Vec<usize>,
    prompts: Vec<Vec<i64>>,
    chosen: Vec<Vec<i64>>,
    rejected: Vec<Vec<i64>>,
    ref_chosen: Option<Vec<f32>>,
    ref_rejected: Option<Vec<f32>>,
    /// Per-pair label smoothing (soft labels).
    smoothing: Option<Vec<f32>>,
    /// Tokens of the pairs' two sequences (each with its prompt): the throughput's count.
    tokens: usize,
    /// Tokens the forward pass runs (each prompt once when it is shared): the FLOP count's.
    computed: usize,
    /// Positions that predict a response token (where the LM head runs).
    scored: usize,
}

/// Loss and implicit-reward statistics summed over rows; `+=` adds two of them.
#[derive(Default, Clone, Copy)]
struct Totals {
    rows: f64,
    loss: f64,
    chosen: f64,
    rejected: f64,
    correct: f64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.rows += o.rows;
        self.loss += o.loss;
        self.chosen += o.chosen;
        self.rejected += o.rejected;
        self.correct += o.correct;
    }
}

impl Totals {
    /// Per-row means: (loss, chosen reward, rejected reward, accuracy).
    fn means(&self) -> (f64, f64, f64, f64) {
        let m = |x: f64| x / self.rows.max(1.0);
        (m(self.loss), m(self.chosen), m(self.rejected), m(self.correct))
    }
}

/// What a DPO call reports; scripts see it as a map with these keys (plus `ref_cache`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DpoSummary {
    pub steps: usize,
    pub skipped_steps: usize,
    /// Means over the last epoch's pairs.
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub margin: f64,
    pub accuracy: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs per second (`FlopCount`) and their fraction of the device's measured
    /// matrix-multiply peak (`matmul_peak`).
    pub flops_per_s: f64,
    pub mfu: f64,
    pub seconds: f64,
    /// Seconds in the forward pass (with the loss), the backward pass and the optimizer.
    pub seconds_forward: f64,
    pub seconds_backward: f64,
    pub seconds_optimizer: f64,
    /// The loss stayed at ln 2 with zero margins (nothing moves).
    pub not_learning: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// The skipped steps, each naming its batches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl DpoSummary {
    /// The summary as a JSON map (for scripts and the journal).
    pub fn to_map(&self) -> Result<Map<String, Value>> {
        match serde_json::to_value(self)? {
            Value::Object(m) => Ok(m),
            other => bail!("dpo: summary serialised as {other}"),
        }
    }
}

/// Runs DPO. `chosen[i]` is the preferred response (0 or 1) of pair `i`, with probability
/// `confidence[i]` under soft labels (else 1); `origins` name pairs in reports. Rows are passed to `log` every `log_every` steps; returns a summary.
#[allow(clippy::too_many_arguments)]
pub fn train(
    policy: &CausalLM,
    opt: &mut super::optim::AdamW,
    reference: Reference,
    pairs: Arc<Vec<TokenizedPair>>,
    chosen: Arc<Vec<usize>>,
    confidence: Option<Arc<Vec<f32>>>,
    origins: &[String],
    opts: &DpoOptions,
    log: &mut dyn FnMut(Map<String, Value>) -> Result<()>,
    stop: &dyn Fn() -> bool,
) -> Result<DpoSummary> {
    let n = pairs.len();
    if n == 0 {
        bail!("dpo: no pairs");
    }
    if confidence.is_some() && opts.loss != DpoLoss::Sigmoid {
        bail!("dpo: soft labels (relabel_soft) need the sigmoid loss");
    }
    let lengths: Vec<usize> = pairs.iter().map(TokenizedPair::len).collect();
    let bopts = BatchOptions { batch_size: opts.batch_size, token_budget: None, rows_per_item: 2, group_by_length: opts.group_by_length, seed: Some(opts.seed) };
    let accum = opts.loop_opts.grad_accum.max(1);
    let per_epoch = steps_per_epoch(batch::plan(&lengths, &bopts, 0).len(), accum);
    let total = per_epoch * opts.epochs;
    let table = match &reference {
        Reference::Table(t) => Some(t.clone()),
        Reference::Online(_) => None,
    };
    let flop_count = FlopCount::of(policy)?;
    let peak = matmul_peak(policy.device, policy.kind)?;
    let mut flops_total = 0.0;
    if let Some(g) = &opts.loop_opts.dist {
        // Every rank starts from rank 0's weights.
        g.broadcast_parameters(&opt.parameters())?;
    }
    let mut lp = Loop::new(opt, opts.loop_opts.clone(), total);
    let beta = opts.beta;
    let start = Instant::now();
    let mut tokens_total = 0usize;
    let mut progress = Progress::new("dpo", total);
    let mut last_epoch = Totals::default();
    let mut history: Vec<(f64, f64)> = Vec::new();
    // Seconds in the forward pass (with the loss), the backward pass and the optimizer.
    let mut time = (0.0, 0.0, 0.0);
    let training = TrainingMode::on(policy);
    for epoch in 0..opts.epochs {
        let plan = batch::plan(&lengths, &bopts, epoch as u64);
        // Rows per optimizer step, so each step's loss is the mean over its pairs however
        // the step is split into micro-batches.
        let step_rows: Vec<usize> = plan.chunks(accum).map(|c| c.iter().map(Vec::len).sum()).collect();
        let n_micro = plan.len();
        let (p2, c2, t2, s2, share) = (pairs.clone(), chosen.clone(), table.clone(), confidence.clone(), opts.share_prompt);
        let rx = batch::prefetch(plan, 2, move |idx: &[usize]| {
            let take = |i: usize, which: usize| p2[i].responses[which].clone();
            let chosen_ids: Vec<usize> = idx.iter().map(|&i| c2[i]).collect();
            let prompts: Vec<Vec<i64>> = idx.iter().map(|&i| p2[i].prompt.clone()).collect();
            let chosen: Vec<Vec<i64>> = idx.iter().zip(&chosen_ids).map(|(&i, &c)| take(i, c)).collect();
            let rejected: Vec<Vec<i64>> = idx.iter().zip(&chosen_ids).map(|(&i, &c)| take(i, 1 - c)).collect();
            let tokens = prompts.iter().zip(chosen.iter().zip(&rejected)).map(|(p, (c, r))| 2 * p.len() + c.len() + r.len()).sum();
            let computed = if share { tokens - prompts.iter().map(Vec::len).sum::<usize>() } else { tokens };
            let (ref_chosen, ref_rejected) = match &t2 {
                Some(t) => (Some(idx.iter().zip(&chosen_ids).map(|(&i, &c)| t[i][c]).collect()), Some(idx.iter().zip(&chosen_ids).map(|(&i, &c)| t[i][1 - c]).collect())),
                None => (None, None),
            };
            let smoothing = s2.as_ref().map(|s| idx.iter().map(|&i| 1.0 - s[i]).collect());
            let scored = chosen.iter().chain(&rejected).map(Vec::len).sum();
            Micro { ids: idx.to_vec(), prompts, chosen, rejected, ref_chosen, ref_rejected, smoothing, tokens, computed, scored }
        });
        let mut totals = Totals::default();
        let mut step_totals = Totals::default();
        let mut step_tokens = 0usize;
        let mut step_flops = 0.0;
        let mut step_start = Instant::now();
        let dist = opts.loop_opts.dist.clone();
        for (k, micro) in rx.iter().enumerate() {
            if stop() {
                bail!("interrupted");
            }
            // A step ends after `accum` micro-batches, or early at the end of the epoch.
            let ends_step = (k + 1) % accum == 0 || k + 1 == n_micro;
            // Data-parallel: micro-batch k is rank k mod world's; the others still take the step.
            let mine = dist.as_ref().is_none_or(|g| k % g.world == g.rank);
            if mine {
                let rows = micro.ids.len();
                let (prompts, chosen, rejected) = (slices(&micro.prompts), slices(&micro.chosen), slices(&micro.rejected));
                let t_fwd = Instant::now();
                let packed = policy.pack_pairs(&prompts, &chosen, &rejected, opts.share_prompt)?;
                let (logps, checkpoints) = super::train_logprobs(policy, &packed, opts.loop_opts.checkpoint)?;
                let pc = logps.f_narrow(0, 0, rows as i64)?;
                let pr = logps.f_narrow(0, rows as i64, rows as i64)?;
                let (rc, rr) = match (&micro.ref_chosen, &micro.ref_rejected, &reference) {
                    (Some(c), Some(r), _) => (Tensor::f_from_slice(c)?.f_to_device(policy.device)?, Tensor::f_from_slice(r)?.f_to_device(policy.device)?),
                    (_, _, Reference::Online(f)) => {
                        let lr = tch::no_grad(|| f(&prompts, &chosen, &rejected))?.f_to_kind(Kind::Float)?;
                        (lr.f_narrow(0, 0, rows as i64)?, lr.f_narrow(0, rows as i64, rows as i64)?)
                    }
                    _ => bail!("dpo: no reference log-probs"),
                };
                let smoothing = micro.smoothing.as_ref().map(|s| Tensor::f_from_slice(s)?.f_to_device(policy.device)).transpose()?;
                let losses = losses(&pc, &pr, &rc, &rr, smoothing.as_ref(), opts)?;
                let denom = step_rows[k / accum] as f64;
                let loss = losses.f_sum(Kind::Float)?.f_div_scalar(denom)?;
                let what = micro.ids.iter().map(|&i| origins.get(i).cloned().unwrap_or_else(|| format!("pair {i}"))).collect::<Vec<_>>().join(", ");
                let rew_c = pc.f_sub(&rc)?.f_detach()?.f_mul_scalar(beta)?;
                let rew_r = pr.f_sub(&rr)?.f_detach()?.f_mul_scalar(beta)?;
                // The loss and the batch's statistics in one tensor, read back with the one device
                // synchronisation of this micro-batch (the finiteness check reads the loss from it).
                let sums = Tensor::f_stack(&[losses.f_detach()?.f_sum(Kind::Float)?, rew_c.f_sum(Kind::Float)?, rew_r.f_sum(Kind::Float)?, rew_c.f_gt_tensor(&rew_r)?.f_sum(Kind::Float)?], 0)?;
                let sums = Vec::<f64>::try_from(sums.f_to_kind(Kind::Double)?)?;
                let t_bwd = Instant::now();
                time.0 += (t_bwd - t_fwd).as_secs_f64();
                lp.backward(&loss, checkpoints, sums[0] / denom, format!("batch {} (pairs {what})", k + 1))?;
                time.1 += t_bwd.elapsed().as_secs_f64();
                step_totals += Totals { rows: rows as f64, loss: sums[0], chosen: sums[1], rejected: sums[2], correct: sums[3] };
                step_tokens += micro.tokens;
                step_flops += flop_count.training(micro.computed, micro.scored);
            }
            if ends_step {
                if let Some(g) = &dist {
                    // Every rank logs the step's statistics over all ranks' micro-batches.
                    let t = &step_totals;
                    let mut sums = Tensor::from_slice(&[t.rows, t.loss, t.chosen, t.rejected, t.correct, step_tokens as f64, step_flops]);
                    g.all_reduce_sum(&mut sums)?;
                    let v = Vec::<f64>::try_from(sums)?;
                    step_totals = Totals { rows: v[0], loss: v[1], chosen: v[2], rejected: v[3], correct: v[4] };
                    (step_tokens, step_flops) = (v[5] as usize, v[6]);
                }
                let t_opt = Instant::now();
                let report = lp.step()?;
                time.2 += t_opt.elapsed().as_secs_f64();
                tokens_total += step_tokens;
                flops_total += step_flops;
                let secs = step_start.elapsed().as_secs_f64();
                let (loss, chosen, rejected, accuracy) = step_totals.means();
                history.push((loss, chosen - rejected));
                progress.tick(1, &format!("loss {loss:.4} acc {accuracy:.2}"));
                if report.step % opts.loop_opts.log_every.max(1) == 0 || !report.applied || report.step == total {
                    log(row(&[
                        ("phase", json!("dpo")),
                        ("epoch", json!(epoch)),
                        ("step", json!(report.step)),
                        ("loss", json!(loss)),
                        ("rewards_chosen", json!(chosen)),
                        ("rewards_rejected", json!(rejected)),
                        ("margin", json!(chosen - rejected)),
                        ("accuracy", json!(accuracy)),
                        ("grad_norm", json!(if report.grad_norm.is_finite() { report.grad_norm } else { -1.0 })),
                        ("lr", json!(report.lr)),
                        ("tokens_per_s", json!(step_tokens as f64 / secs.max(1e-9))),
                        ("mfu", json!(step_flops / secs.max(1e-9) / peak)),
                        ("skipped", json!(!report.applied)),
                    ]))?;
                }
                totals += step_totals;
                step_totals = Totals::default();
                step_tokens = 0;
                step_flops = 0.0;
                step_start = Instant::now();
            }
        }
        last_epoch = totals;
    }
    drop(training);
    progress.finish("");
    // A loss pinned at ln 2 with zero margins means nothing moves: identical pairs, a frozen
    // policy, or a reference that is the policy itself.
    let not_learning = history.len() >= 10 && history.iter().all(|(l, mg)| (l - std::f64::consts::LN_2).abs() < 1e-4 && mg.abs() < 1e-6) && opts.loss == DpoLoss::Sigmoid && opts.label_smoothing == 0.0 && confidence.is_none();
    if not_learning {
        eprintln!("dpo: not learning: the loss stayed at ln 2 with zero margins for {} steps (identical pairs, a frozen policy, or a wrong reference cache?)", history.len());
    }
    let secs = start.elapsed().as_secs_f64();
    let (loss, rewards_chosen, rewards_rejected, accuracy) = last_epoch.means();
    Ok(DpoSummary {
        steps: lp.opt.steps,
        skipped_steps: lp.skipped.len(),
        loss,
        rewards_chosen,
        rewards_rejected,
        margin: rewards_chosen - rewards_rejected,
        accuracy,
        tokens_per_s: tokens_total as f64 / secs.max(1e-9),
        flops_per_s: flops_total / secs.max(1e-9),
        mfu: flops_total / secs.max(1e-9) / peak,
        seconds: secs,
        seconds_forward: time.0,
        seconds_backward: time.1,
        seconds_optimizer: time.2,
        not_learning,
        peak_rss_mib: peak_rss_mib(),
        skipped: lp.skipped.clone(),
    })
}
