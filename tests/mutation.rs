//! Seeded mutation tests of every parser of untrusted bytes: GGUF (header, metadata, tensor
//! table, then dequantisation of what it accepts), safetensors weights, `config.json`,
//! `tokenizer.json`, preference files (JSONL, gzip, JSON, CSV), journal entries and cache
//! entries. Each starts from a valid file, applies a few thousand seeded random mutations (bit
//! flips, random bytes, truncation, huge length fields, insertions, duplicated slices) and
//! requires an `Ok` or an `Err`: never a panic or a hang. A failing input is written to
//! `target/tmp/mutation-failures/` to become a regression test. The same mutants every run
//! (the seed is fixed); a coverage-guided fuzzer is the place for open-ended search.
use dualign::data::{self, LoadOptions};
use dualign::model::config::Config;
use dualign::model::gguf::Gguf;
use dualign::model::tokenizer::Tokenizer;
use dualign::model::weights::Weights;
use dualign::run::journal::{Journal, Start};
use dualign::train::cache;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Mutants per parser: a few thousand, seconds in all.
const MUTANTS: usize = 2000;

/// SplitMix64 (Steele, Lea, Flood 2014): a small seeded generator for the mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len().max(1));
        match rng.below(6) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = rng.next() as u8,
            2 => b.truncate(at),
            3 if b.len() >= 8 => {
                // A length or count field claiming far more than the file holds.
                let huge = [0u64, 1, 0xFFFF_FFFF, u64::MAX, 1 << 40, 1 << 62, (b.len() as u64) * 2][rng.below(7)];
                let at = at.min(b.len() - 8);
                b[at..at + 8].copy_from_slice(&huge.to_le_bytes());
            }
            4 => {
                let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, extra);
            }
            _ if !b.is_empty() => {
                let from = rng.below(b.len());
                let len = (1 + rng.below(64)).min(b.len() - from);
                let piece = b[from..from + len].to_vec();
                b.splice(at..at, piece);
            }
            _ => {}
        }
    }
    b
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mutation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `parse` on `MUTANTS` mutants of `seed`, each written to `file`; fails naming the first
/// mutant that panics or runs past 10 s (a hang, not a speed bound), after saving it.
fn fuzz(name: &str, seed: &[u8], file: &Path, parse: impl Fn(&Path)) {
    let mut rng = Rng(0x5EED ^ name.len() as u64);
    let (mut ok, mut failed) = (0, 0);
    // The valid seed itself parses (else the test would only ever exercise the first check).
    std::fs::write(file, seed).unwrap();
    parse(file);
    for i in 0..MUTANTS {
        let bytes = mutate(seed, &mut rng);
        std::fs::write(file, &bytes).unwrap();
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| parse(file)));
        let took = start.elapsed();
        if result.is_err() || took > Duration::from_secs(10) {
            let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutation-failures");
            std::fs::create_dir_all(&keep).unwrap();
            let saved = keep.join(format!("{name}-{i}"));
            std::fs::write(&saved, &bytes).unwrap();
            panic!("{name}: mutant {i} {} (saved as {})", if result.is_err() { "panicked" } else { "took over 10 s" }, saved.display());
        }
        if bytes != seed { ok += 1 } else { failed += 1 }
    }
    assert!(ok > MUTANTS * 9 / 10, "{name}: only {ok} mutants differ from the seed ({failed} equal)");
}

/// A valid GGUF v3 file: four metadata entries (a string, a u32, an array of strings, the
/// alignment) and two F32 tensors, written byte by byte as the GGUF spec lays them out.
fn gguf_bytes() -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, "llama");
    string(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    string(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    for t in ["a", "b", "c"] {
        string(&mut b, t);
    }
    string(&mut b, "general.alignment");
    b.extend(4u32.to_le_bytes());
    b.extend(32u32.to_le_bytes());
    for (name, dims, offset) in [("token_embd.weight", vec![4u64, 3], 0u64), ("output_norm.weight", vec![4], 48)] {
        string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for i in 0..16 {
        b.extend((i as f32 * 0.5).to_le_bytes());
    }
    b
}

#[test]
fn gguf_headers_and_tensors() {
    let dir = scratch("gguf");
    let seed = gguf_bytes();
    std::fs::write(dir.join("seed.gguf"), &seed).unwrap();
    let g = Gguf::open(&dir.join("seed.gguf")).unwrap();
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.dequantize(&g.tensors[1]).unwrap(), vec![6.0, 6.5, 7.0, 7.5], "the seed is the file the comment describes");
    fuzz("gguf", &seed, &dir.join("m.gguf"), |p| {
        if let Ok(g) = Gguf::open(p) {
            for t in &g.tensors {
                let _ = g.dequantize(t);
            }
            let _ = Tokenizer::from_gguf(&g);
        }
    });
}

#[test]
fn gguf_counts_beyond_the_file_are_errors_not_allocations() {
    // A 40-byte file claiming 2^24 tensors (the old cap) or 2^60 metadata entries: each would
    // reserve gigabytes before reading a byte of them. Counts are checked against the bytes left.
    let dir = scratch("gguf-counts");
    for (tensors, kv) in [(1u64 << 24, 0u64), (0, 1 << 24), (1 << 60, 0), (0, 1 << 60)] {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kv.to_le_bytes());
        b.extend([0u8; 16]);
        let p = dir.join("counts.gguf");
        std::fs::write(&p, &b).unwrap();
        let e = format!("{:#}", Gguf::open(&p).err().expect("an error"));
        assert!(e.contains("bad header") && e.contains("counts.gguf"), "{e}");
    }
}

#[test]
fn safetensors_weights() {
    let dir = scratch("safetensors");
    let a = Tensor::f_arange(12, (Kind::Float, Device::Cpu)).unwrap().f_reshape([3, 4]).unwrap();
    let b = Tensor::f_ones([4], (Kind::Float, Device::Cpu)).unwrap();
    let file = dir.join("model.safetensors");
    Tensor::write_safetensors(&[("model.embed_tokens.weight", &a), ("model.norm.weight", &b)], &file).unwrap();
    let seed = std::fs::read(&file).unwrap();
    fuzz("safetensors", &seed, &file, |_| {
        if let Ok(mut w) = Weights::from_hf_dir(&dir, Device::Cpu, Kind::Float) {
            let _ = w.take("model.embed_tokens.weight", &[3, 4]);
            let _ = w.take_opt("model.norm.weight", &[4]);
        }
    });
}

const CONFIG: &str = r#"{"model_type":"llama","vocab_size":259,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6,"rope_theta":10000.0,"max_position_embeddings":1024,
"tie_word_embeddings":true,"eos_token_id":[258, 257],"pad_token_id":256,"rope_scaling":{"rope_type":"llama3","factor":8.0,
"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;

#[test]
fn config_json() {
    let dir = scratch("config");
    assert!(Config::from_json(CONFIG, "config.json").is_ok());
    fuzz("config", CONFIG.as_bytes(), &dir.join("config.json"), |p| {
        let _ = Config::from_file(p);
    });
}

#[test]
fn tokenizer_json() {
    // A WordLevel tokenizer in the tokenizers crate's JSON format, with tokenizer_config.json
    // naming its special tokens.
    let dir = scratch("tokenizer");
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":3,"content":"<eos>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"a":0,"b":1,"[UNK]":2,"<eos>":3},"unk_token":"[UNK]"}}"#;
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token":"<eos>","pad_token":{"content":"<eos>"}}"#).unwrap();
    let cfg = Config::from_json(CONFIG, "config.json").unwrap();
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    let t = Tokenizer::from_hf_dir(&dir, &cfg).unwrap();
    assert_eq!(t.encode("a b", false).unwrap(), vec![0, 1]);
    fuzz("tokenizer", json.as_bytes(), &dir.join("tokenizer.json"), |_| {
        if let Ok(t) = Tokenizer::from_hf_dir(&dir, &cfg) {
            if let Ok(ids) = t.encode("a b c", true) {
                let _ = t.decode(&ids, true);
            }
        }
    });
}

#[test]
fn preference_files() {
    let dir = scratch("prefs");
    let jsonl = concat!(
        r#"{"prompt":"How do I bake bread?","response_0":"Mix flour and water.","response_1":"No.","better_response_id":0,"safer_response_id":0,"is_response_0_safe":true,"is_response_1_safe":true}"#, "\n",
        r#"{"prompt":"How do I pick a lock?","response_0":"I can't help with that.","response_1":"Insert a tension wrench.","better_response_id":1,"safer_response_id":0,"is_response_0_safe":true,"is_response_1_safe":false}"#, "\n",
    );
    let plain = concat!(r#"{"prompt":"Hello","chosen":"Hi there!","rejected":"Go away."}"#, "\n", r#"{"prompt":"Bye","chosen":"Goodbye!","rejected":"..."}"#, "\n");
    let json = r#"[{"prompt":"Hello","chosen":"Hi there!","rejected":"Go away."},{"prompt":"Bye","chosen":"Goodbye!","rejected":"..."}]"#;
    let csv = "prompt,chosen,rejected\nHello,Hi there!,Go away.\n\"Bye, then\",\"Goodbye!\",...\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(plain.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    for (name, seed, file) in [("jsonl-pku", jsonl.as_bytes().to_vec(), "p.jsonl"), ("jsonl", plain.as_bytes().to_vec(), "q.jsonl"), ("json", json.as_bytes().to_vec(), "p.json"), ("csv", csv.as_bytes().to_vec(), "p.csv"), ("gzip", gz, "p.jsonl.gz")] {
        for skip_bad in [false, true] {
            let opts = LoadOptions { skip_bad, ..Default::default() };
            std::fs::write(dir.join(file), &seed).unwrap();
            assert!(data::load_preferences(&dir.join(file), &opts).is_ok(), "{name}: the seed loads");
            fuzz(name, &seed, &dir.join(file), |p| {
                let _ = data::load_preferences(p, &opts);
            });
        }
    }
}

#[test]
fn journal_entries() {
    let run = scratch("journal");
    {
        let mut j = Journal::open(&run, 7, false).unwrap();
        let Start::Live(i) = j.begin("dpo", "k1").unwrap() else { panic!("a new journal replays nothing") };
        let t = Tensor::f_ones([2, 3], (Kind::Float, Device::Cpu)).unwrap();
        j.commit(i, "dpo", "k1", serde_json::json!({"loss": 0.5, "steps": [1, 2]}), 3, &[("w".into(), t)]).unwrap();
    }
    let entry = std::fs::read(run.join("journal/00000.json")).unwrap();
    let tensors = std::fs::read(run.join("journal/00000.safetensors")).unwrap();
    for (name, seed, file) in [("journal-entry", entry.clone(), "00000.json"), ("journal-tensors", tensors.clone(), "00000.safetensors")] {
        fuzz(name, &seed, &run.join("journal").join(file), |_| {
            // Opening a journal removes what it cannot use: restore both files' other half.
            let other = if file.ends_with(".json") { ("00000.safetensors", &tensors) } else { ("00000.json", &entry) };
            std::fs::write(run.join("journal").join(other.0), other.1).unwrap();
            if let Ok(mut j) = Journal::open(&run, 7, true) {
                let _ = j.begin("dpo", "k1");
            }
        });
    }
}

#[test]
fn cache_entries() {
    let dir = scratch("cache");
    let key = "0123456789abcdef";
    cache::store(&dir, key, &[[-1.5, -2.5], [-3.0, -0.25]]).unwrap();
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let seed = std::fs::read(&file).unwrap();
    assert_eq!(cache::load(&dir, key, 2).unwrap(), Some(vec![[-1.5, -2.5], [-3.0, -0.25]]));
    let mut rng = Rng(11);
    for i in 0..MUTANTS {
        let bytes = mutate(&seed, &mut rng);
        std::fs::write(&file, &bytes).unwrap();
        let got = catch_unwind(|| cache::load(&dir, key, 2)).unwrap_or_else(|_| panic!("cache: mutant {i} panicked"));
        // A mutant either verifies (then it is byte for byte the seed: the checksum covers the
        // values, the header the rest) or is discarded, never returned altered.
        match got.unwrap() {
            Some(v) => assert_eq!(bytes, seed, "mutant {i} verified with other values {v:?}"),
            None => assert!(!file.exists(), "mutant {i}: a rejected entry is removed"),
        }
    }
}

#[test]
fn tokenizer_with_a_malformed_decoder_is_an_error_not_a_panic() {
    // Regression (found by `tokenizer_json`, mutant 1192): tokenizers 0.22.2 panics ("Helper")
    // on a `decoder` that is not a decoder map instead of returning an error.
    let dir = scratch("tokenizer-decoder");
    let cfg = Config::from_json(CONFIG, "config.json").unwrap();
    for decoder in ["5", "oull", "[1, 2]"] {
        let json = format!(r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":{decoder},"model":{{"type":"WordLevel","vocab":{{"a":0,"[UNK]":1}},"unk_token":"[UNK]"}}}}"#);
        std::fs::write(dir.join("tokenizer.json"), json).unwrap();
        let e = Tokenizer::from_hf_dir(&dir, &cfg).err().unwrap_or_else(|| panic!("decoder {decoder} loaded"));
        assert!(e.to_string().contains("tokenizer.json: cannot load tokenizer"), "{e}");
    }
}
