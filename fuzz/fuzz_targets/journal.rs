//! A run journal entry: the first byte picks which half is fuzzed (the JSON commit marker or
//! the tensors); the other half is a valid one. Then the journal is opened for resume and the
//! entry replayed.
#![no_main]
use dualign::run::journal::Journal;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
mod common;

/// A valid entry's two files (the seeds, as a real journal wrote them).
fn valid() -> &'static (Vec<u8>, Vec<u8>) {
    static VALID: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    VALID.get_or_init(|| (common::seed_body("journal", "entry"), common::seed_body("journal", "tensors")))
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
