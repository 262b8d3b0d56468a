//! GGUF: header, metadata, tensor table, dequantisation, and the whole model load (config from
//! metadata, tokenizer from metadata, weights) of what parses.
#![no_main]
use dualign::model::{gguf::Gguf, CausalLM, LoadOptions};
use libfuzzer_sys::fuzz_target;
mod common;

fuzz_target!(|bytes: &[u8]| {
    let file = common::scratch("gguf").join("m.gguf");
    std::fs::write(&file, bytes).unwrap();
    if let Ok(g) = Gguf::open(&file) {
        for t in &g.tensors {
            let _ = g.dequantize(t);
        }
    }
    let _ = CausalLM::load(file.to_str().unwrap(), &LoadOptions { device: tch::Device::Cpu, kind: tch::Kind::Float, seed: 0 });
});
