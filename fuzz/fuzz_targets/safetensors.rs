//! A safetensors weight file, read as an HF folder's `model.safetensors`.
#![no_main]
use dualign::model::weights::Weights;
use libfuzzer_sys::fuzz_target;
mod common;

fuzz_target!(|bytes: &[u8]| {
    let dir = common::scratch("safetensors");
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    if let Ok(mut w) = Weights::from_hf_dir(&dir, tch::Device::Cpu, tch::Kind::Float) {
        let _ = w.take("model.embed_tokens.weight", &[3, 4]);
        let _ = w.take_opt("model.norm.weight", &[4]);
    }
});
