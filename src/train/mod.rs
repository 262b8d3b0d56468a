//! Training: DPO with a cached reference (`dpo`), supervised fine-tuning (`sft`), and
//! Bradley-Terry score heads (`scorer`), over one optimizer loop (`Loop`) that handles gradient
//! accumulation, clipping, schedules, non-finite steps and logging.
pub mod cache;
pub mod dpo;
pub mod optim;
pub mod scorer;
pub mod sft;

use anyhow::{bail, Result};
use optim::{AdamW, AdamWConfig, Schedule};
use serde_json::{Map, Value};

/// Optimizer settings shared by every trainer.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    pub adamw: AdamWConfig,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub grad_accum: usize,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// Consecutive non-finite steps that stop training.
    pub max_nonfinite: usize,
    pub log_every: usize,
    /// Activation checkpointing: keep each decoder layer's input and recompute the layer in the
    /// backward pass (`CausalLM::logprobs_checkpointed`).
    pub checkpoint: bool,
    /// Data-parallel training over this process group: each rank back-propagates its share of a
    /// step's micro-batches, and `Loop::step` sums the gradients over the ranks (one flat buffer,
    /// before clipping) and agrees on skipping a non-finite step. None: one process.
    pub dist: Option<std::rc::Rc<crate::dist::Group>>,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions { adamw: AdamWConfig::default(), schedule: Schedule::Constant, warmup_steps: 0, grad_accum: 1, max_grad_norm: 1.0, max_nonfinite: 3, log_every: 1, checkpoint: false, dist: None }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: usize,
    pub lr: f64,
    pub grad_norm: f64,
    /// False when the step was skipped for a non-finite loss or gradient.
    pub applied: bool,
}

/// Gradient accumulation, clipping, the schedule and non-finite checks around an `AdamW`.
pub struct Loop<'a> {
    pub opt: &'a mut AdamW,
    pub opts: LoopOptions,
    pub total_steps: usize,
    micro: usize,
    finite: bool,
    streak: usize,
    /// Skipped steps: a description of the batches involved.
    pub skipped: Vec<String>,
    pending: Vec<String>,
}

impl<'a> Loop<'a> {
    pub fn new(opt: &'a mut AdamW, opts: LoopOptions, total_steps: usize) -> Self {
        Loop { opt, opts, total_steps, micro: 0, finite: true, streak: 0, skipped: Vec::new(), pending: Vec::new() }
    }

    /// Back-propagates one micro-batch's loss (already divided by the accumulation count), then
    /// through the layers a checkpointed forward pass left to recompute (`checkpoints`).
    /// `value` is the loss as the caller read it back, together with its statistics (one device
    /// synchronisation per micro-batch); a non-finite value skips the backward pass and, at
    /// `step`, the whole step. `what` names the batch's samples for that report.
    pub fn backward(&mut self, loss: &tch::Tensor, checkpoints: Option<crate::model::Checkpoints>, value: f64, what: String) -> Result<()> {
        if value.is_finite() {
            loss.f_backward()?;
            if let Some(c) = checkpoints {
                c.backward()?;
            }
        } else {
            self.finite = false;
        }
        self.pending.push(what);
        self.micro += 1;
        Ok(())
    }

    /// Whether enough micro-batches have been accumulated for a step.
    pub fn ready(&self) -> bool {
        self.micro >= self.opts.grad_accum.max(1)
    }

    /// Takes an optimizer step over what was accumulated (call when `ready`, or at the end of an
    /// epoch with a partial accumulation). Non-finite gradients skip the step.
    pub fn step(&mut self) -> Result<StepReport> {
        let step_index = self.opt.steps + self.skipped.len();
        if let Some(g) = self.opts.dist.clone() {
            // Every rank takes part, with or without micro-batches of its own this step.
            self.finite = crate::dist::all(Some(&g), self.finite)?;
            self.opt.all_reduce_gradients(&g)?;
        }
        let lr = self.opts.adamw.lr * self.opts.schedule.factor(step_index, self.opts.warmup_steps, self.total_steps);
        let norm = if self.opts.max_grad_norm > 0.0 { self.opt.clip_grad_norm(self.opts.max_grad_norm)? } else { self.opt.grad_norm()? };
        let applied = self.finite && norm.is_finite();
        if applied {
            self.opt.step(&self.opts.adamw, lr)?;
            self.streak = 0;
        } else {
            self.skipped.push(format!("step {}: non-finite {} in {}", step_index + 1, if self.finite { "gradient" } else { "loss" }, self.pending.join("; ")));
            self.streak += 1;
            if self.streak >= self.opts.max_nonfinite.max(1) {
                self.opt.zero_grad();
                bail!(
                    "training stopped after {} consecutive non-finite steps; the weights are those of the last good step. Last: {}",
                    self.streak,
                    self.skipped.last().map(String::as_str).unwrap_or("")
                );
            }
        }
        self.opt.zero_grad();
        self.micro = 0;
        self.finite = true;
        self.pending.clear();
        Ok(StepReport { step: step_index + 1, lr, grad_norm: norm, applied })
    }
}

/// Summed response log-probs of a packed training micro-batch, with activation checkpointing
/// when `checkpoint` (then `Loop::backward` must get the returned checkpoints).
pub fn train_logprobs<'a>(model: &'a crate::model::CausalLM, packed: &crate::model::Packed, checkpoint: bool) -> Result<(tch::Tensor, Option<crate::model::Checkpoints<'a>>)> {
    if checkpoint {
        let (lp, c) = model.logprobs_checkpointed(packed, 512)?;
        Ok((lp, Some(c)))
    } else {
        Ok((model.logprobs(packed, 512)?, None))
    }
}

/// Number of optimizer steps for `batches` micro-batches per epoch.
pub fn steps_per_epoch(batches: usize, grad_accum: usize) -> usize {
    batches.div_ceil(grad_accum.max(1))
}

/// A metrics row as a JSON map.
/// Model FLOPs of training on tokens, counted as `scripts/bench_cuda.sh` and PaLM's MFU count
/// them: 6 per linear-layer weight per token (forward plus backward, whatever is frozen), and 6
/// per LM-head weight per scored token (the head runs only where a response token is
/// predicted); attention scores and norms are left out.
pub struct FlopCount {
    /// Weights of the decoder's linear layers.
    pub linear: f64,
    /// Weights of the LM head (vocabulary × hidden).
    pub head: f64,
}

impl FlopCount {
    pub fn of(model: &crate::model::CausalLM) -> Result<Self> {
        struct Linears(f64);
        impl crate::model::params::Visit for Linears {
            fn tensor(&mut self, _: &str, _: &tch::Tensor, _: crate::model::params::TensorSpec) -> Result<()> {
                Ok(())
            }
            fn linear(&mut self, _: &str, _: &crate::model::layers::Linear, spec: crate::model::params::LinearSpec) -> Result<()> {
                self.0 += (spec.out * spec.inp) as f64;
                Ok(())
            }
        }
        let mut count = Linears(0.0);
        model.visit(&mut count)?;
        Ok(FlopCount { linear: count.0, head: (model.cfg.vocab_size * model.cfg.hidden_size) as f64 })
    }

    /// FLOPs of one training pass over `tokens` positions of which `scored` predict a response token.
    pub fn training(&self, tokens: usize, scored: usize) -> f64 {
        6.0 * (self.linear * tokens as f64 + self.head * scored as f64)
    }
}

/// The device's matrix-multiply peak in FLOP/s for `kind`, measured once per process and device
/// (the best of square products of order 1024 on a CPU, 8192 on a GPU, by `ops::linear`, the
/// kernel the layers run: oneDNN for f32 on a CPU, faster than torch's matmul on AMD): the
/// denominator of the MFU that training logs. Products are timed for at least a quarter of a
/// second: on a small CPU, a burst of other work (the kernel writing back a just-saved model, a
/// background journal write) had made a best of four read 153 GFLOP/s on a machine whose peak is
/// 215, and training's MFU came out above 1.
pub fn matmul_peak(device: tch::Device, kind: tch::Kind) -> Result<f64> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static PEAKS: Mutex<Option<HashMap<String, f64>>> = Mutex::new(None);
    let key = format!("{device:?}/{kind:?}");
    if let Some(&p) = PEAKS.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return Ok(p);
    }
    let n: i64 = if device.is_cuda() { 8192 } else { 1024 };
    let a = tch::Tensor::f_randn([n, n], (kind, device))?;
    let b = tch::Tensor::f_randn([n, n], (kind, device))?;
    let mut best = f64::INFINITY;
    let start = std::time::Instant::now();
    for i in 0.. {
        if i >= 4 && start.elapsed().as_secs_f64() >= 0.25 {
            break;
        }
        let t = std::time::Instant::now();
        let c = crate::ops::linear(&a, &b, None)?;
        let _ = c.f_sum(tch::Kind::Float)?.f_double_value(&[])?; // waits for the device
        best = best.min(t.elapsed().as_secs_f64());
    }
    let peak = 2.0 * (n * n * n) as f64 / best.max(1e-9);
    PEAKS.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(key, peak);
    Ok(peak)
}

/// Training mode (adapter dropout on) while alive; evaluation mode again when dropped, on an
/// error or an interruption too.
pub struct TrainingMode<'a>(&'a crate::model::CausalLM);

impl<'a> TrainingMode<'a> {
    pub fn on(model: &'a crate::model::CausalLM) -> Self {
        model.set_training(true);
        TrainingMode(model)
    }
}

impl Drop for TrainingMode<'_> {
    fn drop(&mut self) {
        self.0.set_training(false);
    }
}

pub fn row(fields: &[(&str, Value)]) -> Map<String, Value> {
    fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn non_finite_steps_are_skipped_then_stop_training_with_the_last_good_weights() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), w.shallow_clone())]).unwrap();
        let opts = LoopOptions { adamw: AdamWConfig { lr: 0.1, ..Default::default() }, max_nonfinite: 2, ..Default::default() };
        let mut lp = Loop::new(&mut opt, opts, 10);
        // A good step moves the weights.
        let l = w.sum(Kind::Float);
        lp.backward(&l, None, l.double_value(&[]), "batch 1 (pairs a, b)".into()).unwrap();
        assert!(lp.step().unwrap().applied);
        let good: Vec<f32> = Vec::try_from(w.detach()).unwrap();
        // A NaN loss: skipped and reported with the batch's samples.
        let nan = (w.sum(Kind::Float) * f64::NAN).sum(Kind::Float);
        lp.backward(&nan, None, nan.double_value(&[]), "batch 2 (pairs c, d)".into()).unwrap();
        assert!(!lp.step().unwrap().applied);
        assert_eq!(lp.skipped, vec!["step 2: non-finite loss in batch 2 (pairs c, d)".to_string()]);
        // An infinite gradient with a finite loss: the second in a row stops training.
        let inf = (&w * Tensor::from_slice(&[f32::INFINITY, 0.0])).sum(Kind::Float) * 0.0 + 1.0;
        lp.backward(&inf, None, inf.double_value(&[]), "batch 3 (pairs e)".into()).unwrap();
        let e = lp.step().unwrap_err().to_string();
        assert!(e.starts_with("training stopped after 2 consecutive non-finite steps"), "{e}");
        assert_eq!(Vec::<f32>::try_from(w.detach()).unwrap(), good, "weights are those of the last good step");
    }
}
