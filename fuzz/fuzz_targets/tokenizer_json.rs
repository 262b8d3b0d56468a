//! `tokenizer.json` (with a fixed `tokenizer_config.json` and `config.json`), then encoding and
//! decoding with what loads.
#![no_main]
use dualign::model::{config::Config, tokenizer::Tokenizer};
use libfuzzer_sys::fuzz_target;
mod common;

const CONFIG: &str = r#"{"model_type":"llama","vocab_size":4,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
"num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-6,"eos_token_id":3}"#;

fuzz_target!(|bytes: &[u8]| {
    let dir = common::scratch("tokenizer_json");
    let cfg = Config::from_json(CONFIG, "config.json").unwrap();
    if !dir.join("tokenizer_config.json").exists() {
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token":"<eos>","pad_token":{"content":"<eos>"}}"#).unwrap();
    }
    std::fs::write(dir.join("tokenizer.json"), bytes).unwrap();
    if let Ok(t) = Tokenizer::from_hf_dir(&dir, &cfg) {
        if let Ok(ids) = t.encode("a b c <eos>", true) {
            let _ = t.decode(&ids, true);
        }
        let _ = t.chat("a");
    }
});
