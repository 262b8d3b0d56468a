//! ATen kernels that tch does not bind, through `csrc/ops_shim.cpp` (built by `build.rs` when the
//! torch wheel's headers compile it; without it each function says so and callers take the
//! plain path): the fused AdamW step and oneDNN's linear layer.
use anyhow::Result;
#[cfg(dualign_ops_shim)]
use std::ffi::{c_char, c_double, c_int, c_void};
use tch::Tensor;

#[cfg(dualign_ops_shim)]
extern "C" {
    fn dualign_fused_adamw(params: *const *mut c_void, grads: *const *mut c_void, exp_avgs: *const *mut c_void, exp_avg_sqs: *const *mut c_void, n: c_int, lr: c_double, beta1: c_double, beta2: c_double, weight_decay: c_double, eps: c_double, step: c_double, err: *mut *mut c_char) -> c_int;
    fn dualign_onednn_linear(x: *mut c_void, w: *mut c_void, b: *mut c_void, out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
    fn dualign_ops_free_error(err: *mut c_char);
}

/// Whether this build has the shim.
pub const AVAILABLE: bool = cfg!(dualign_ops_shim);

#[cfg(dualign_ops_shim)]
fn ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// The shim's message after a failed call (freed here).
#[cfg(dualign_ops_shim)]
fn failure(what: &str, err: *mut c_char) -> anyhow::Error {
    // SAFETY: on failure the shim sets `err` to a malloc'ed C string, read and freed here once.
    let msg = unsafe { std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned() };
    unsafe { dualign_ops_free_error(err) };
    anyhow::anyhow!("{what}: {}", crate::util::first_line(&msg))
}

/// ATen's fused AdamW (`torch._fused_adamw_`) over `[parameter, gradient, exp_avg, exp_avg_sq]`
/// quadruples at step count `step` (this step included), in place.
#[cfg(dualign_ops_shim)]
pub fn fused_adamw(group: &[[Tensor; 4]], lr: f64, betas: (f64, f64), weight_decay: f64, eps: f64, step: f64) -> Result<()> {
    let column = |k: usize| -> Vec<*mut c_void> { group.iter().map(|q| ptr(&q[k])).collect() };
    let (p, g, m, v) = (column(0), column(1), column(2), column(3));
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: each pointer is a live tensor of `group` for the length of the call; the shim
    // copies the handles and catches every C++ exception.
    let rc = unsafe { dualign_fused_adamw(p.as_ptr(), g.as_ptr(), m.as_ptr(), v.as_ptr(), group.len() as c_int, lr, betas.0, betas.1, weight_decay, eps, step, &mut err) };
    if rc != 0 {
        return Err(failure("optimizer: the fused AdamW step failed", err));
    }
    Ok(())
}

#[cfg(not(dualign_ops_shim))]
pub fn fused_adamw(_: &[[Tensor; 4]], _: f64, _: (f64, f64), _: f64, _: f64, _: f64) -> Result<()> {
    anyhow::bail!("optimizer: this build has no fused AdamW kernel")
}

/// `x Wᵀ + b` (`W` stored `[out, in]`). For f32 CPU tensors, oneDNN's kernels, with a backward of
/// its own on oneDNN when autograd records the call: its matmul (`at::native::mkldnn_matmul`,
/// reading `Wᵀ` and `dyᵀ` in place) for the product without a bias and the weight gradient, its
/// linear primitive (`mkldnn::_linear_pointwise`) with a bias and for the input's gradient. On AMD
/// CPUs MKL's sgemm, which torch's own linear calls, takes a generic code path, and oneDNN's kernels
/// were 1.1-1.45x faster at this project's shapes (README). Everything else, and every build or
/// torch without them, takes torch's linear; both give the same result up to f32 rounding.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(dualign_ops_shim)]
    if ONEDNN.with(|on| on.get()) {
        let mut out: *mut c_void = std::ptr::null_mut();
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: the tensors are live for the call; on success the shim hands over a new
        // tensor handle, owned from here on by the returned `Tensor`.
        let rc = unsafe { dualign_onednn_linear(ptr(x), ptr(w), b.map_or(std::ptr::null_mut(), ptr), &mut out, &mut err) };
        match rc {
            0 => return Ok(unsafe { Tensor::from_ptr(out.cast()) }),
            1 => {} // does not qualify: torch's linear below
            _ => return Err(failure("linear layer (oneDNN)", err)),
        }
    }
    Ok(x.f_linear(w, b)?)
}

thread_local! {
    /// Whether `linear` may take oneDNN: unless `DUALIGN_NO_ONEDNN` is set (to compare), or a test
    /// switches it off (`without_onednn`).
    static ONEDNN: std::cell::Cell<bool> = std::cell::Cell::new(std::env::var_os("DUALIGN_NO_ONEDNN").is_none());
}

/// Runs `f` with `linear` on torch's own linear only.
pub fn without_onednn<T>(f: impl FnOnce() -> T) -> T {
    let before = ONEDNN.with(|on| on.replace(false));
    let out = f();
    ONEDNN.with(|on| on.set(before));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn linear_and_its_gradients_agree_with_torch() {
        tch::manual_seed(11);
        let x = Tensor::randn([3, 5, 64], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([48, 64], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([48], (Kind::Float, Device::Cpu));
        // With a bias (oneDNN's linear primitive) and without (its matmul), on a plain and a
        // transposed input.
        for (input, bias) in [(x.shallow_clone(), Some(&b)), (x.transpose(0, 1), Some(&b)), (x.shallow_clone(), None), (x.transpose(0, 1), None)] {
            let ours = linear(&input, &w, bias).unwrap();
            let torch = without_onednn(|| linear(&input, &w, bias)).unwrap();
            assert_eq!(ours.size(), vec![input.size()[0], input.size()[1], 48]);
            // f32 rounding of 64-term sums of values ~8 in size.
            let d = (&ours - &torch).abs().max().double_value(&[]);
            assert!(d < 1e-4, "oneDNN vs torch linear: {d}");
            // Another kernel sums in another order: some of the 720 outputs differ in their last
            // bits, which shows oneDNN ran (where this build has the shim).
            assert_eq!(d > 0.0, AVAILABLE, "oneDNN vs torch linear: {d}");
        }
        // No rows: the weight's gradient is zeros (oneDNN's matmul leaves an output with an empty
        // sum unwritten).
        let empty = Tensor::zeros([0, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let wg = w.copy().set_requires_grad(true);
        linear(&empty, &wg, None).unwrap().sum(Kind::Float).backward();
        assert_eq!(wg.grad().abs().max().double_value(&[]), 0.0);
        // Gradients through oneDNN's backward against torch's: input, weight and bias, and a frozen
        // weight without a bias (LoRA's base layer in Llama: the input's gradient only).
        let coef = Tensor::randn([3, 5, 48], (Kind::Float, Device::Cpu));
        for weight_trains in [true, false] {
            let grads = |onednn: bool| -> Vec<Tensor> {
                let (xg, wg, bg) = (x.copy().set_requires_grad(true), w.copy().set_requires_grad(weight_trains), b.copy().set_requires_grad(weight_trains));
                let bias = weight_trains.then_some(&bg); // with a bias that trains, and without a bias
                let y = if onednn { linear(&xg, &wg, bias) } else { without_onednn(|| linear(&xg, &wg, bias)) }.unwrap();
                // A loss whose gradient differs per output.
                y.f_mul(&coef).unwrap().sum(Kind::Float).backward();
                assert_eq!((wg.grad().defined(), bg.grad().defined()), (weight_trains, weight_trains));
                [xg.grad(), wg.grad(), bg.grad()].into_iter().filter(Tensor::defined).collect()
            };
            let (ours, torch) = (grads(true), grads(false));
            assert_eq!(ours.len(), if weight_trains { 3 } else { 1 });
            for (ours, torch) in ours.iter().zip(&torch) {
                let scale = torch.abs().max().double_value(&[]);
                let d = (ours - torch).abs().max().double_value(&[]);
                assert!(d <= 1e-5 * scale.max(1.0), "gradient through oneDNN vs torch: {d} (scale {scale})");
            }
        }
    }
}
