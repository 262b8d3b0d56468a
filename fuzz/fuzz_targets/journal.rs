//! A run journal entry: the first byte picks which half is fuzzed (the JSON commit marker or
//! the tensors); the other half is a valid one. Then the journal is opened for resume and the
//! entry replayed.
#![no_main]
use dualign::run::journal::{Journal, Start};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
mod common;

/// A valid entry's two files, written once by a real journal.
fn valid() -> &'static (Vec<u8>, Vec<u8>) {
    static VALID: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    VALID.get_or_init(|| {
        let run = common::scratch("journal-seed");
        let _ = std::fs::remove_dir_all(run.join("journal"));
        let mut j = Journal::open(&run, 7, false).unwrap();
        let Start::Live(i) = j.begin("dpo", "k1").unwrap() else { unreachable!() };
        let t = tch::Tensor::f_ones([2, 3], (tch::Kind::Float, tch::Device::Cpu)).unwrap();
        j.commit(i, "dpo", "k1", serde_json::json!({"loss": 0.5}), 3, &[("w".into(), t)]).unwrap();
        (std::fs::read(run.join("journal/00000.json")).unwrap(), std::fs::read(run.join("journal/00000.safetensors")).unwrap())
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&pick, body)) = bytes.split_first() else { return };
    let (entry, tensors) = valid();
    let run = common::scratch("journal");
    let dir = run.join("journal");
    std::fs::create_dir_all(&dir).unwrap();
    let (json, st) = if pick & 1 == 0 { (body, tensors.as_slice()) } else { (entry.as_slice(), body) };
    std::fs::write(dir.join("00000.json"), json).unwrap();
    std::fs::write(dir.join("00000.safetensors"), st).unwrap();
    if let Ok(mut j) = Journal::open(&run, 7, true) {
        let _ = j.begin("dpo", "k1");
    }
});
