//! Preference and prompt files. The first byte picks the format (JSONL, JSON, CSV, gzipped
//! JSONL, text prompts) and whether bad records are skipped; the rest is the file.
#![no_main]
use dualign::data::{self, LoadOptions};
use libfuzzer_sys::fuzz_target;
mod common;

fuzz_target!(|bytes: &[u8]| {
    let Some((&pick, body)) = bytes.split_first() else { return };
    let name = ["p.jsonl", "p.json", "p.csv", "p.jsonl.gz", "p.txt"][(pick % 5) as usize];
    let file = common::scratch("data_files").join(name);
    std::fs::write(&file, body).unwrap();
    let opts = LoadOptions { skip_bad: pick & 0x80 != 0, ..Default::default() };
    let _ = data::load_preferences(&file, &opts);
    let _ = data::load_prompts(&file);
});
