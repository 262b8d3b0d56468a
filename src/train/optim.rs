//! AdamW with decoupled weight decay and two parameter groups (matrices decay; biases, norms and
//! embeddings' 1-d companions do not), learning-rate schedules with warm-up, and global-norm
//! gradient clipping. The update follows `torch.optim.AdamW` step for step, so trajectories can
//! be compared with PyTorch and TRL.
use anyhow::Result;
use tch::{Kind, Tensor};

/// Learning-rate schedule after `warmup` linear warm-up steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half-cosine decay to 0 at the last step.
    Cosine,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => Schedule::Constant,
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            other => anyhow::bail!("schedule \"{other}\" is not one of constant, linear, cosine"),
        })
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
        }
    }

    /// The multiplier of the base learning rate at optimizer step `step` (0-based) of `total`,
    /// as transformers' `get_{constant,linear,cosine}_schedule_with_warmup`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdamWConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // torch.optim.AdamW defaults, except a weight decay of 0 as TRL's DPOConfig uses.
        AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 }
    }
}

struct Slot {
    name: String,
    param: Tensor,
    /// Where this parameter's moments start in the flat `m` and `v`.
    offset: i64,
    numel: i64,
    decay: bool,
}

/// AdamW state over a fixed list of parameters. The moments of all parameters live in two flat
/// f32 buffers. With f32 parameters the step is ATen's fused AdamW kernel (`torch._fused_adamw_`,
/// `csrc/ops_shim.cpp`: one pass over each parameter, gradient and moments, on the CPU or a
/// GPU); otherwise the update runs over the flat buffers as one tensor, a few kernels for the
/// whole model plus one in-place add per parameter (a per-tensor loop launched about ten kernels
/// per parameter, which dominated a GPU step of a 0.5B model).
pub struct AdamW {
    slots: Vec<Slot>,
    m: Tensor,
    v: Tensor,
    /// This step's gradients, flat f32, once gathered (by `grad_norm` or `step`).
    flat_grad: Option<Tensor>,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Whether the step is the fused kernel: this build has it and every parameter is f32
    /// (tests switch it off to compare).
    pub fused: bool,
}

/// Whether a parameter gets weight decay: matrices do; biases and norm weights do not.
pub fn decays(name: &str, t: &Tensor) -> bool {
    t.dim() >= 2 && !name.contains("norm") && !name.ends_with(".bias")
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>) -> Result<Self> {
        let device = params.first().map(|(_, p)| p.device()).unwrap_or(tch::Device::Cpu);
        let mut slots = Vec::with_capacity(params.len());
        let mut offset = 0;
        for (name, param) in params {
            anyhow::ensure!(param.device() == device, "optimizer: parameter `{name}` is on {:?}, the others on {device:?}", param.device());
            let numel = param.numel() as i64;
            let decay = decays(&name, &param);
            slots.push(Slot { name, param, offset, numel, decay });
            offset += numel;
        }
        let m = Tensor::f_zeros([offset], (Kind::Float, device))?;
        let v = m.f_zeros_like()?;
        // The fused kernel takes f32 parameters (their kinds never change).
        let fused = crate::ops::AVAILABLE && slots.iter().all(|s| s.param.kind() == Kind::Float);
        Ok(AdamW { slots, m, v, flat_grad: None, steps: 0, fused })
    }

    /// A parameter's part of a flat buffer, in the parameter's shape (a view).
    fn part(flat: &Tensor, s: &Slot) -> Result<Tensor> {
        Ok(flat.f_narrow(0, s.offset, s.numel)?.f_view(s.param.size().as_slice())?)
    }

    /// The moments of every parameter (`NAME.exp_avg`, `NAME.exp_avg_sq`), for the resume journal.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("{}.exp_avg", s.name), Self::part(&self.m, s)?));
            out.push((format!("{}.exp_avg_sq", s.name), Self::part(&self.v, s)?));
        }
        Ok(out)
    }

    /// Restores moments written by `state` and the step count.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], steps: usize) -> Result<()> {
        for s in &self.slots {
            for (suffix, flat) in [("exp_avg", &self.m), ("exp_avg_sq", &self.v)] {
                let name = format!("{}.{suffix}", s.name);
                let Some((_, t)) = tensors.iter().find(|(n, _)| *n == name) else { anyhow::bail!("optimizer state: `{name}` is missing") };
                let mut dst = Self::part(flat, s)?;
                tch::no_grad(|| dst.f_copy_(t))?;
            }
        }
        self.steps = steps;
        Ok(())
    }

    /// Parameter names in optimizer order.
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// Sets every gradient to zero and forgets the gathered flat gradient.
    pub fn zero_grad(&mut self) {
        self.flat_grad = None;
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// Every gradient in one flat f32 tensor (gathered once per step), or None when some
    /// parameter has no gradient (then `step` updates parameter by parameter, as torch skips
    /// parameters whose grad is None).
    fn gather(&mut self) -> Result<Option<Tensor>> {
        if self.flat_grad.is_none() {
            self.flat_grad = self.flatten(false)?;
        }
        Ok(self.flat_grad.as_ref().map(Tensor::shallow_clone))
    }

    /// The gradients as one flat f32 tensor; a parameter without one gives zeros with `zeros`,
    /// else the answer is None (as it is with no parameters).
    fn flatten(&self, zeros: bool) -> Result<Option<Tensor>> {
        let mut parts = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let g = s.param.f_grad()?;
            parts.push(match (g.defined(), zeros) {
                (true, _) => g.f_reshape([-1])?.f_to_kind(Kind::Float)?,
                (false, true) => Tensor::f_zeros([s.param.numel() as i64], (Kind::Float, s.param.device()))?,
                (false, false) => return Ok(None),
            });
        }
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::f_cat(&parts, 0)?))
    }

    /// The parameters this optimizer updates, by name (handles on the same tensors).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.slots.iter().map(|s| (s.name.clone(), s.param.shallow_clone())).collect()
    }

    /// Sums the gradients over the ranks of `group` as one flat f32 buffer (a parameter this rank
    /// gave no gradient counts as zeros), which `clip_grad_norm` and `step` then use.
    pub fn all_reduce_gradients(&mut self, group: &crate::dist::Group) -> Result<()> {
        if let Some(mut flat) = self.flatten(true)? {
            group.all_reduce_sum(&mut flat)?;
            self.flat_grad = Some(flat);
        }
        Ok(())
    }

    /// The global L2 norm of all gradients (0 for parameters without one), in f32 on the
    /// parameters' device, read back once (one device sync per step).
    pub fn grad_norm(&mut self) -> Result<f64> {
        let flat = if self.fused { self.flat_grad.as_ref().map(Tensor::shallow_clone) } else { self.gather()? };
        let norm = match flat {
            Some(flat) => flat.f_norm()?,
            None => {
                // Per-tensor norms, then the norm of norms, as torch.nn.utils.clip_grad_norm_.
                let mut norms = Vec::new();
                for s in &self.slots {
                    let g = s.param.f_grad()?;
                    if g.defined() {
                        norms.push(g.f_norm_scalaropt_dtype(2.0, Kind::Float)?);
                    }
                }
                if norms.is_empty() {
                    return Ok(0.0);
                }
                Tensor::f_stack(&norms, 0)?.f_norm()?
            }
        };
        Ok(norm.f_to_kind(Kind::Double)?.double_value(&[]))
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's clip_grad_norm_:
    /// coefficient `max_norm / (norm + 1e-6)`, capped at 1). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            if let Some(flat) = &mut self.flat_grad {
                let _ = flat.f_mul_scalar_(coef)?;
            } else {
                for s in &self.slots {
                    let mut g = s.param.f_grad()?;
                    if g.defined() {
                        let _ = g.f_mul_scalar_(coef)?;
                    }
                }
            }
        }
        Ok(norm)
    }

    /// `step` by the fused kernel, once per weight-decay group, over the parameters with a
    /// gradient (the all-reduced flat one's parts in a data-parallel step).
    fn fused_step(&mut self, cfg: &AdamWConfig, lr: f64) -> Result<()> {
        let mut groups: [Vec<[Tensor; 4]>; 2] = [Vec::new(), Vec::new()];
        for s in &self.slots {
            let g = match &self.flat_grad {
                Some(flat) => Self::part(flat, s)?,
                None => s.param.f_grad()?,
            };
            if g.defined() {
                groups[s.decay as usize].push([s.param.shallow_clone(), g, Self::part(&self.m, s)?, Self::part(&self.v, s)?]);
            }
        }
        for (decay, group) in groups.iter().enumerate() {
            if !group.is_empty() {
                let weight_decay = if decay == 1 { cfg.weight_decay } else { 0.0 };
                crate::ops::fused_adamw(group, lr, cfg.betas, weight_decay, cfg.eps, self.steps as f64)?;
            }
        }
        Ok(())
    }

    /// One AdamW step at learning rate `lr`.
    pub fn step(&mut self, cfg: &AdamWConfig, lr: f64) -> Result<()> {
        self.steps += 1;
        if self.fused {
            return self.fused_step(cfg, lr);
        }
        let t = self.steps as i32;
        let (b1, b2) = cfg.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let flat = self.gather()?;
        tch::no_grad(|| -> Result<()> {
            if cfg.weight_decay != 0.0 {
                for s in &mut self.slots {
                    if s.decay && (flat.is_some() || s.param.f_grad()?.defined()) {
                        let _ = s.param.f_mul_scalar_(1.0 - lr * cfg.weight_decay)?;
                    }
                }
            }
            // The update over (m, v, g): all parameters at once when every gradient is there,
            // else each parameter with a gradient over its own part of the buffers.
            let parts: Vec<(Tensor, Tensor, Tensor, Option<usize>)> = match &flat {
                Some(g) => vec![(self.m.shallow_clone(), self.v.shallow_clone(), g.shallow_clone(), None)],
                None => {
                    let mut parts = Vec::new();
                    for (i, s) in self.slots.iter().enumerate() {
                        let g = s.param.f_grad()?;
                        if g.defined() {
                            let flat_part = |t: &Tensor| t.f_narrow(0, s.offset, s.numel);
                            parts.push((flat_part(&self.m)?, flat_part(&self.v)?, g.f_to_kind(Kind::Float)?.f_reshape([-1])?, Some(i)));
                        }
                    }
                    parts
                }
            };
            for (mut m, mut v, g, slot) in parts {
                // In-place forms of torch.optim.AdamW's update, to keep passes over memory few:
                // m <- b1 m + (1 - b1) g  is  m.lerp_(g, 1 - b1); likewise v with g².
                let _ = m.f_lerp_(&g, 1.0 - b1)?;
                let _ = v.f_lerp_(&g.f_mul(&g)?, 1.0 - b2)?;
                // p <- p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps), as p += m / denom' with
                // denom' = -(sqrt(v) / sqrt(bc2) + eps) * bc1 / lr.
                if lr == 0.0 {
                    continue; // the moments are updated; the weights do not move (warm-up step 0)
                }
                let mut denom = v.f_sqrt()?;
                let _ = denom.f_div_scalar_(bc2.sqrt())?.f_add_scalar_(cfg.eps)?.f_mul_scalar_(-bc1 / lr)?;
                let update = m.f_div(&denom)?;
                let slots: Vec<&mut Slot> = match slot {
                    Some(i) => vec![&mut self.slots[i]],
                    None => self.slots.iter_mut().collect(),
                };
                // One conversion of the whole update to the parameters' type, then one add each.
                let kind = slots.first().map(|s| s.param.kind()).unwrap_or(Kind::Float);
                let same_kind = slots.iter().all(|s| s.param.kind() == kind);
                let update = if same_kind && kind != Kind::Float { update.f_to_kind(kind)? } else { update };
                let base = if slot.is_some() { slots[0].offset } else { 0 };
                for s in slots {
                    let u = update.f_narrow(0, s.offset - base, s.numel)?.f_view(s.param.size().as_slice())?;
                    let u = if u.kind() != s.param.kind() { u.f_to_kind(s.param.kind())? } else { u };
                    let _ = s.param.f_add_(&u)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers_definitions() {
        // Warm-up: 0, 1/4, 2/4, 3/4 over 4 steps; then constant 1, linear (1 - p), cosine.
        assert_eq!(Schedule::Constant.factor(1, 4, 20), 0.25);
        assert_eq!(Schedule::Linear.factor(12, 4, 20), 0.5);
        assert!((Schedule::Cosine.factor(12, 4, 20) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Cosine.factor(4, 4, 20), 1.0);
        assert!(Schedule::Linear.factor(20, 4, 20).abs() < 1e-12);
    }

    #[test]
    fn the_fused_kernel_takes_the_same_steps_as_the_separate_operations() {
        // Three steps of AdamW with weight decay on a matrix (decays), a norm weight (does not) and
        // a matrix without a gradient (skipped), fused against the flat-buffer update (which the
        // first-step test below and tests/train.rs check against torch's formula).
        if !crate::ops::AVAILABLE {
            return; // a build without the shim has only the separate operations
        }
        let run = |fused: bool| -> Vec<Vec<f32>> {
            tch::manual_seed(7);
            let w = Tensor::randn([8, 5], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let norm = Tensor::randn([5], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let idle = Tensor::randn([3, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let params = vec![("w".to_string(), w.shallow_clone()), ("model.norm.weight".to_string(), norm.shallow_clone()), ("idle".to_string(), idle.shallow_clone())];
            let mut opt = AdamW::new(params).unwrap();
            opt.fused = fused;
            let cfg = AdamWConfig { lr: 0.05, weight_decay: 0.1, ..Default::default() };
            let x = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu));
            for _ in 0..3 {
                opt.zero_grad();
                x.matmul(&w).f_mul(&norm).unwrap().tanh().sum(Kind::Float).backward();
                opt.clip_grad_norm(1.0).unwrap();
                opt.step(&cfg, cfg.lr).unwrap();
            }
            [&w, &norm, &idle, &opt.m, &opt.v].iter().map(|t| Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap()).collect()
        };
        let (fused, separate) = (run(true), run(false));
        for (a, b) in fused.iter().zip(&separate) {
            for (x, y) in a.iter().zip(b) {
                // f32 rounding of the same formula in another order.
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "fused {x} vs separate {y}");
            }
        }
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        // With bias correction the first Adam update is lr * g / (|g| + eps) ~ lr * sign(g);
        // decoupled weight decay then shrinks the weight by lr * wd first.
        let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).reshape([2, 2]).set_requires_grad(true);
        let loss = (&p * Tensor::from_slice(&[2.0f32, -1.0, 0.5, 4.0]).reshape([2, 2])).sum(Kind::Float);
        loss.backward();
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())]).unwrap();
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.01, ..Default::default() };
        opt.step(&cfg, cfg.lr).unwrap();
        let got: Vec<f32> = Vec::try_from(p.detach().flatten(0, -1)).unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.1, -2.0 * (1.0 - 0.001) + 0.1, 3.0 * (1.0 - 0.001) - 0.1, 0.5 * (1.0 - 0.001) - 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
