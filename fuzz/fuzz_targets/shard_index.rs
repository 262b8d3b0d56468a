//! `model.safetensors.index.json` naming shards (one valid shard is present beside it).
#![no_main]
use dualign::model::weights::Weights;
use libfuzzer_sys::fuzz_target;
mod common;

fuzz_target!(|bytes: &[u8]| {
    let dir = common::scratch("shard_index");
    let shard = dir.join("model-00001-of-00001.safetensors");
    if !shard.exists() {
        let t = tch::Tensor::f_ones([4], (tch::Kind::Float, tch::Device::Cpu)).unwrap();
        tch::Tensor::write_safetensors(&[("model.norm.weight", &t)], &shard).unwrap();
    }
    std::fs::write(dir.join("model.safetensors.index.json"), bytes).unwrap();
    if let Ok(mut w) = Weights::from_hf_dir(&dir, tch::Device::Cpu, tch::Kind::Float) {
        let _ = w.take_opt("model.norm.weight", &[4]);
    }
});
