//! Cache entries: the first byte picks a reference log-prob entry or a score-feature entry. An
//! entry either verifies, and is then byte for byte the one stored, or is discarded.
#![no_main]
use dualign::train::cache;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
mod common;

const KEY: &str = "0123456789abcdef";

/// The two valid entries' bytes (the seeds, as `cache::store*` wrote them).
fn valid() -> &'static [Vec<u8>; 2] {
    static VALID: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    VALID.get_or_init(|| [common::seed_body("cache_entry", "reflogp"), common::seed_body("cache_entry", "features")])
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&pick, body)) = bytes.split_first() else { return };
    let valid = valid();
    let dir = common::scratch("cache_entry");
    let which = (pick & 1) as usize;
    let file = dir.join(format!("{KEY}.{}", ["reflogp", "features"][which]));
    std::fs::write(&file, body).unwrap();
    let verified = if which == 0 { cache::load(&dir, KEY, 2).unwrap().is_some() } else { cache::load_features(&dir, KEY, &[2, 3]).unwrap().is_some() };
    if verified {
        assert_eq!(body, valid[which].as_slice(), "an altered entry verified");
    } else {
        assert!(!file.exists(), "a rejected entry is removed");
    }
});
