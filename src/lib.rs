//! `dualign`: constrained alignment of language models by iterative dualization.
//!
//! The `host` binary (src/main.rs) embeds a Rhai engine (`script`) whose native functions run on
//! libtorch through `tch`; `run` owns the run directory every `host run` writes to.
pub mod data;
pub mod device;
pub mod dist;
pub mod dual;
pub mod exact;
pub mod interrupt;
pub mod judge;
pub mod model;
pub mod ops;
pub mod run;
pub mod script;
pub mod train;
pub mod util;

/// Version strings recorded in every run directory and printed by `host --version`.
pub fn versions() -> serde_json::Value {
    serde_json::json!({
        "dualign": env!("CARGO_PKG_VERSION"),
        "libtorch": env!("DUALIGN_LIBTORCH_VERSION"),
        "rhai": "1.27",
        "cuda_available": tch::Cuda::is_available(),
        "cuda_devices": if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 },
        // Process-group backends compiled in (src/dist.rs): Gloo for CPU tensors; NCCL not yet.
        "distributed": dist::backends(),
    })
}
