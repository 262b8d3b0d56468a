//! `config.json` of an HF folder, parsed and validated.
#![no_main]
use dualign::model::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(cfg) = Config::from_json(text, "config.json") {
            let _ = cfg.to_hf_json();
        }
    }
});
