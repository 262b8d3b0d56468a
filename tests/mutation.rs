//! Seeded mutation tests of every parser of untrusted bytes: GGUF (header, metadata, tensor
//! table, then dequantisation of what it accepts), safetensors weights, `config.json`,
//! `tokenizer.json`, preference and prompt files (JSONL, gzip, JSON, CSV), journal entries and cache
//! entries. Each starts from a valid file, applies a few thousand seeded random mutations (bit
//! flips, random bytes, truncation, huge length fields, insertions, duplicated slices) and
//! requires an `Ok` or an `Err`: never a panic or a hang. A failing input is written to
//! `target/tmp/mutation-failures/` to become a regression test. The same mutants every run
//! (the seed is fixed); a coverage-guided fuzzer is the place for open-ended search.
use dualign::data::{self, LoadOptions};
use dualign::model::config::Config;
use dualign::model::gguf::Gguf;
use dualign::model::{CausalLM, LoadOptions as ModelOptions};
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

/// A GGUF metadata value.
enum Kv {
    U32(u32),
    F32(f32),
    Str(&'static str),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF v3 file written byte by byte as the GGUF spec lays it out: header, metadata, tensor
/// table (dimensions fastest-varying first, i.e. `shape` reversed), F32 data at 32-byte
/// alignment.
fn gguf_file(kv: &[(&str, Kv)], tensors: &[(&str, Vec<u64>, Vec<f32>)]) -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (key, value) in kv {
        string(&mut b, key);
        match value {
            Kv::U32(v) => {
                b.extend(4u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Kv::F32(v) => {
                b.extend(6u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Kv::Str(s) => {
                b.extend(8u32.to_le_bytes());
                string(&mut b, s);
            }
            Kv::Strs(v) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    string(&mut b, s);
                }
            }
            Kv::I32s(v) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((v.len() as u64).to_le_bytes());
                for x in v {
                    b.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape, values) in tensors {
        string(&mut b, name);
        b.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
        offset += (values.len() as u64 * 4).div_ceil(32) * 32;
    }
    for (_, _, values) in tensors {
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in values {
            b.extend(v.to_le_bytes());
        }
    }
    b
}

/// A valid GGUF: four metadata entries (a string, a u32, an array of strings, the alignment) and
/// two F32 tensors holding 0, 0.5, ..., 7.5.
fn gguf_bytes() -> Vec<u8> {
    let kv = [("general.architecture", Kv::Str("llama")), ("llama.block_count", Kv::U32(1)), ("tokenizer.ggml.tokens", Kv::Strs(vec!["a".into(), "b".into(), "c".into()])), ("general.alignment", Kv::U32(32))];
    let values: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
    gguf_file(&kv, &[("token_embd.weight", vec![3, 4], values[..12].to_vec()), ("output_norm.weight", vec![4], values[12..].to_vec())])
}

/// A complete Llama model as a GGUF (hidden size 8, one layer, 2 query heads and 1 KV head, a
/// 6-token byte-level BPE vocabulary with ChatML control tokens): every path of a model load.
fn tiny_model_gguf() -> Vec<u8> {
    tiny_model_gguf_claiming(1)
}

/// The tiny model's GGUF with `block_count` layers claimed (its tensors are one layer's).
fn tiny_model_gguf_claiming(block_count: u32) -> Vec<u8> {
    let kv = [
        ("general.architecture", Kv::Str("llama")),
        ("llama.block_count", Kv::U32(block_count)),
        ("llama.context_length", Kv::U32(64)),
        ("llama.embedding_length", Kv::U32(8)),
        ("llama.feed_forward_length", Kv::U32(16)),
        ("llama.attention.head_count", Kv::U32(2)),
        ("llama.attention.head_count_kv", Kv::U32(1)),
        ("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5)),
        ("llama.rope.freq_base", Kv::F32(10000.0)),
        ("tokenizer.ggml.model", Kv::Str("gpt2")),
        ("tokenizer.ggml.tokens", Kv::Strs(["a", "b", "c", "ab", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec())),
        ("tokenizer.ggml.merges", Kv::Strs(vec!["a b".into()])),
        ("tokenizer.ggml.token_type", Kv::I32s(vec![1, 1, 1, 1, 3, 3])),
        ("tokenizer.ggml.eos_token_id", Kv::U32(5)),
        ("tokenizer.chat_template", Kv::Str("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")),
    ];
    let shapes: [(&str, Vec<u64>); 11] = [
        ("token_embd.weight", vec![6, 8]), ("blk.0.attn_norm.weight", vec![8]), ("blk.0.attn_q.weight", vec![8, 8]),
        ("blk.0.attn_k.weight", vec![4, 8]), ("blk.0.attn_v.weight", vec![4, 8]), ("blk.0.attn_output.weight", vec![8, 8]),
        ("blk.0.ffn_norm.weight", vec![8]), ("blk.0.ffn_gate.weight", vec![16, 8]), ("blk.0.ffn_up.weight", vec![16, 8]),
        ("blk.0.ffn_down.weight", vec![8, 16]), ("output_norm.weight", vec![8]),
    ];
    let tensors: Vec<_> = shapes.into_iter().map(|(name, shape)| {
        let n: u64 = shape.iter().product();
        (name, shape, (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.1).collect())
    }).collect();
    gguf_file(&kv, &tensors)
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
fn gguf_whole_model_loads() {
    // The complete tiny model loads and runs; then its mutants go through the whole load
    // (config and tokenizer from metadata, every tensor dequantised, shapes checked).
    let dir = scratch("gguf-model");
    let seed = tiny_model_gguf();
    let file = dir.join("tiny.gguf");
    std::fs::write(&file, &seed).unwrap();
    let cpu = ModelOptions { device: Device::Cpu, kind: Kind::Float, seed: 0 };
    let m = CausalLM::load(file.to_str().unwrap(), &cpu).unwrap();
    assert_eq!((m.cfg.vocab_size, m.cfg.hidden_size, m.cfg.num_layers), (6, 8, 1));
    assert_eq!(m.tokenizer.encode("ab", false).unwrap(), vec![3], "the merge \"a b\" applies");
    let lp = m.sequence_logprobs(&[&[0, 1]], &[&[2, 3]], 16).unwrap().double_value(&[0]);
    assert!(lp.is_finite() && lp < 0.0, "{lp}");
    fuzz("gguf-model", &seed, &file, |p| {
        let _ = CausalLM::load(p.to_str().unwrap(), &cpu);
    });
}

#[test]
fn gguf_byte_size_that_wraps_is_an_error_not_a_capacity_overflow() {
    // Regression (found by `gguf_headers_and_tensors`, mutant 1939 of the aligned seed): 2^62 F32
    // elements are 2^64 bytes, which wrapped to 0, passed the bounds check and panicked with
    // "capacity overflow" when dequantised.
    let dir = scratch("gguf-wrap");
    for shape in [vec![1u64 << 62], vec![4, 1 << 60], vec![1 << 63, 2]] {
        let p = dir.join("wrap.gguf");
        std::fs::write(&p, gguf_file(&[], &[("token_embd.weight", shape.clone(), vec![0.0; 16])])).unwrap();
        let e = format!("{:#}", Gguf::open(&p).err().unwrap_or_else(|| panic!("{shape:?} opened")));
        assert!(e.contains("wrap.gguf") && e.contains("overflows"), "{e}");
    }
}

#[test]
fn gguf_tensor_end_beyond_usize_is_an_error_not_an_overflow() {
    // Regression (found by the fuzz target `gguf`, crash-29afca55, kept in tests/fixtures/fuzz/):
    // a tensor offset near 2^64 made the "truncated" message's `offset + size` overflow.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/gguf-crash-29afca55");
    let e = format!("{:#}", Gguf::open(&file).err().expect("an error"));
    assert!(e.contains("gguf-crash-29afca55") && e.contains("truncated: tensor"), "{e}");
}

#[test]
fn a_layer_count_of_four_billion_is_an_error_not_an_allocation() {
    // Regression (found by the fuzz target `gguf`, crash-f983b8d7): `llama.block_count` =
    // 2^32 - 1 reserved room for four billion decoder layers before reading the first one, and
    // the process aborted out of memory. The same count in an HF config.json.
    let dir = scratch("layers");
    let cpu = ModelOptions { device: Device::Cpu, kind: Kind::Float, seed: 0 };
    let file = dir.join("layers.gguf");
    std::fs::write(&file, tiny_model_gguf_claiming(u32::MAX)).unwrap();
    let e = format!("{:#}", CausalLM::load(file.to_str().unwrap(), &cpu).err().expect("an error"));
    assert!(e.contains("layers.gguf: num_layers 4294967295 is more than 4096"), "{e}");
    // Within the bound, the first missing layer is named.
    std::fs::write(&file, tiny_model_gguf_claiming(4096)).unwrap();
    let e = format!("{:#}", CausalLM::load(file.to_str().unwrap(), &cpu).err().expect("an error"));
    assert!(e.contains("layers.gguf") && e.contains("model.layers.1.") && e.contains("missing"), "{e}");
    let hf = dir.join("hf");
    CausalLM::load("builtin:tiny", &cpu).unwrap().save(&hf).unwrap();
    let config = std::fs::read_to_string(hf.join("config.json")).unwrap();
    let claimed = config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 4294967295");
    assert_ne!(config, claimed);
    std::fs::write(hf.join("config.json"), claimed).unwrap();
    let e = format!("{:#}", CausalLM::load(hf.to_str().unwrap(), &cpu).err().expect("an error"));
    assert!(e.contains("config.json: num_layers 4294967295 is more than 4096"), "{e}");
}

#[test]
fn a_scalar_query_projection_is_an_error_not_an_index_panic() {
    // Regression (found by the fuzz target `gguf`, crash-5b9f3151, kept in tests/fixtures/fuzz/):
    // a q/k projection declared with no dimensions was indexed at its first dimension while
    // undoing llama.cpp's row permutation.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/gguf-crash-5b9f3151");
    let cpu = ModelOptions { device: Device::Cpu, kind: Kind::Float, seed: 0 };
    let e = format!("{:#}", CausalLM::load(file.to_str().unwrap(), &cpu).err().expect("an error"));
    assert!(e.contains("gguf-crash-5b9f3151: tensor blk.0.attn_") && e.contains("cannot be split into"), "{e}");
}

#[test]
fn a_gzip_bomb_is_an_error_not_an_allocation() {
    // 80 MiB of zeros gzip to about 80 kB (a ratio near 1000); the loaders read a file whole, so
    // it is refused past 100 times its size or 64 MiB, whichever is more (data::read_text).
    let dir = scratch("gzip-bomb");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&vec![0u8; 80 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    let file = dir.join("bomb.jsonl.gz");
    std::fs::write(&file, &bomb).unwrap();
    for e in [format!("{:#}", data::load_preferences(&file, &LoadOptions::default()).err().expect("an error")), format!("{:#}", data::load_prompts(&file).err().expect("an error"))] {
        assert!(e.contains("bomb.jsonl.gz: decompresses to more than 67108864 bytes"), "{e}");
    }
}

const SHARD: &str = "model-00001-of-00001.safetensors";
const SHARD_INDEX: &str = r#"{"metadata":{"total_size":16},"weight_map":{"model.norm.weight":"model-00001-of-00001.safetensors"}}"#;

#[test]
fn safetensors_shard_indexes() {
    let dir = scratch("shard-index");
    let t = Tensor::f_ones([4], (Kind::Float, Device::Cpu)).unwrap();
    Tensor::write_safetensors(&[("model.norm.weight", &t)], dir.join(SHARD)).unwrap();
    std::fs::write(dir.join("model.safetensors.index.json"), SHARD_INDEX).unwrap();
    assert!(Weights::from_hf_dir(&dir, Device::Cpu, Kind::Float).unwrap().take("model.norm.weight", &[4]).is_ok());
    fuzz("shard-index", SHARD_INDEX.as_bytes(), &dir.join("model.safetensors.index.json"), |_| {
        if let Ok(mut w) = Weights::from_hf_dir(&dir, Device::Cpu, Kind::Float) {
            let _ = w.take_opt("model.norm.weight", &[4]);
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

const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":3,"content":"<eos>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"a":0,"b":1,"[UNK]":2,"<eos>":3},"unk_token":"[UNK]"}}"#;

#[test]
fn tokenizer_json() {
    // A WordLevel tokenizer in the tokenizers crate's JSON format, with tokenizer_config.json
    // naming its special tokens.
    let dir = scratch("tokenizer");
    let json = TOKENIZER;
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

/// Valid preference files, one per format: (name, bytes, file name).
fn preference_seeds() -> Vec<(&'static str, Vec<u8>, &'static str)> {
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
    vec![("jsonl-pku", jsonl.as_bytes().to_vec(), "p.jsonl"), ("jsonl", plain.as_bytes().to_vec(), "q.jsonl"), ("json", json.as_bytes().to_vec(), "p.json"), ("csv", csv.as_bytes().to_vec(), "p.csv"), ("gzip", gz, "p.jsonl.gz")]
}

#[test]
fn preference_files() {
    let dir = scratch("prefs");
    for (name, seed, file) in preference_seeds() {
        for skip_bad in [false, true] {
            let opts = LoadOptions { skip_bad, ..Default::default() };
            std::fs::write(dir.join(file), &seed).unwrap();
            assert!(data::load_preferences(&dir.join(file), &opts).is_ok(), "{name}: the seed loads");
            fuzz(name, &seed, &dir.join(file), |p| {
                let _ = data::load_preferences(p, &opts);
                let _ = data::load_prompts(p);
            });
        }
    }
}

/// A journal in `run` with one committed entry; returns its two files' bytes (the JSON commit
/// marker, the tensors).
fn journal_seed(run: &Path) -> (Vec<u8>, Vec<u8>) {
    {
        let mut j = Journal::open(run, 7, false, true).unwrap();
        let Start::Live(i) = j.begin("dpo", "k1").unwrap() else { panic!("a new journal replays nothing") };
        let t = Tensor::f_ones([2, 3], (Kind::Float, Device::Cpu)).unwrap();
        j.commit(i, "dpo", "k1", serde_json::json!({"loss": 0.5, "steps": [1, 2]}), 3, &[("w".into(), t)]).unwrap();
    }
    (std::fs::read(run.join("journal/00000.json")).unwrap(), std::fs::read(run.join("journal/00000.safetensors")).unwrap())
}

#[test]
fn journal_entries() {
    let run = scratch("journal");
    let (entry, tensors) = journal_seed(&run);
    for (name, seed, file) in [("journal-entry", entry.clone(), "00000.json"), ("journal-tensors", tensors.clone(), "00000.safetensors")] {
        fuzz(name, &seed, &run.join("journal").join(file), |_| {
            // Opening a journal removes what it cannot use: restore both files' other half.
            let other = if file.ends_with(".json") { ("00000.safetensors", &tensors) } else { ("00000.json", &entry) };
            std::fs::write(run.join("journal").join(other.0), other.1).unwrap();
            if let Ok(mut j) = Journal::open(&run, 7, true, true) {
                let _ = j.begin("dpo", "k1");
            }
        });
    }
}

const CACHE_KEY: &str = "0123456789abcdef";
const CACHE_ROWS: [[f32; 2]; 2] = [[-1.5, -2.5], [-3.0, -0.25]];

#[test]
fn cache_entries() {
    let dir = scratch("cache");
    let key = CACHE_KEY;
    cache::store(&dir, key, &CACHE_ROWS).unwrap();
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let seed = std::fs::read(&file).unwrap();
    assert_eq!(cache::load(&dir, key, 2).unwrap(), Some(CACHE_ROWS.to_vec()));
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

/// Writes the seed corpus of the coverage-guided fuzz targets (`fuzz/fuzz_targets/`) to
/// `fuzz/seeds/TARGET/`: the valid files above, so seeds and mutation tests share one source.
/// `bash fuzz/run.sh` runs it first; ignored in the normal suite.
#[test]
#[ignore]
fn write_the_fuzz_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    put("gguf", "small", &gguf_bytes());
    put("gguf", "tiny-model", &tiny_model_gguf());
    let dir = scratch("seeds");
    let a = Tensor::f_arange(12, (Kind::Float, Device::Cpu)).unwrap().f_reshape([3, 4]).unwrap();
    let b = Tensor::f_ones([4], (Kind::Float, Device::Cpu)).unwrap();
    Tensor::write_safetensors(&[("model.embed_tokens.weight", &a), ("model.norm.weight", &b)], dir.join("w.safetensors")).unwrap();
    put("safetensors", "two-tensors", &std::fs::read(dir.join("w.safetensors")).unwrap());
    put("shard_index", "one-shard", SHARD_INDEX.as_bytes());
    put("config_json", "llama3-scaling", CONFIG.as_bytes());
    put("tokenizer_json", "wordlevel", TOKENIZER.as_bytes());
    // data_files: the first byte picks the format (see fuzz_targets/data_files.rs).
    for (name, bytes, file) in preference_seeds() {
        let pick = ["p.jsonl", "p.json", "p.csv", "p.jsonl.gz", "p.txt"].iter().position(|f| file.ends_with(&f[1..])).unwrap() as u8;
        put("data_files", name, &[&[pick][..], &bytes].concat());
    }
    put("data_files", "prompts-txt", b"\x04How do I bake bread?\nWhat is 2+2?\n");
    let (entry, tensors) = journal_seed(&dir);
    put("journal", "entry", &[&[0u8][..], &entry].concat());
    put("journal", "tensors", &[&[1u8][..], &tensors].concat());
    cache::store(&dir, CACHE_KEY, &CACHE_ROWS).unwrap();
    put("cache_entry", "reflogp", &[&[0u8][..], &std::fs::read(dir.join(format!("{CACHE_KEY}.reflogp"))).unwrap()].concat());
    let f = Tensor::f_from_slice(&[1f32, 2., 3., 4., 5., 6.]).unwrap().f_reshape([2, 3]).unwrap();
    cache::store_features(&dir, CACHE_KEY, &f).unwrap();
    put("cache_entry", "features", &[&[1u8][..], &std::fs::read(dir.join(format!("{CACHE_KEY}.features"))).unwrap()].concat());
}
