//! Tokenizers: HF `tokenizer.json` through the `tokenizers` crate, or built from GGUF metadata
//! (byte-level BPE vocabulary and merges, with the pre-tokenizer llama.cpp names in
//! `tokenizer.ggml.pre`; or a SentencePiece vocabulary with scores and byte tokens), plus special
//! token ids and the chat template.
use super::chat::ChatTemplate;
use super::gguf::{Gguf, Value};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::rc::Rc;

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<i64>,
    pub eos_ids: Vec<i64>,
    pub pad_id: i64,
    /// The model's own chat template (Jinja), as its checkpoint gives it (or a script replaces
    /// it); written back by `save`.
    pub chat_template: Option<Rc<ChatTemplate>>,
}

/// The template compiled, or the error naming where it came from.
fn compile(template: Option<&str>, origin: &str) -> Result<Option<Rc<ChatTemplate>>> {
    template.map(|t| ChatTemplate::new(t).map(Rc::new).with_context(|| origin.to_string())).transpose()
}

/// The pre-tokenizer for a llama.cpp `tokenizer.ggml.pre` name, as HF's tokenizer.json has it.
fn pre_tokenizer(pre: &str) -> Result<serde_json::Value> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        other => bail!("tokenizer.ggml.pre \"{other}\" is not supported (supported: default, gpt-2, smollm, starcoder, llama-bpe, qwen2)"),
    })
}

/// Runs a call into the tokenizers crate, which panics on some malformed files instead of
/// returning an error (0.22.2: an `expect` in its decoder deserializer, e.g. on `"decoder": 5`;
/// found by tests/mutation.rs). The panic becomes the error, without its message being printed:
/// the caller names the file.
fn guarded<T>(f: impl FnOnce() -> tokenizers::Result<T>) -> std::result::Result<T, String> {
    static QUIET: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match result {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => {
            let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(format!("the tokenizers library failed on it ({why})"))
        }
    }
}

impl Tokenizer {
    /// From an HF folder: `tokenizer.json`, with special tokens and the chat template from
    /// `tokenizer_config.json` when present. Token ids missing there fall back to `config.json`'s.
    pub fn from_hf_dir(dir: &Path, cfg: &super::config::Config) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let inner = guarded(|| tokenizers::Tokenizer::from_file(&file)).map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", file.display()))?;
        let tc: serde_json::Value = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", dir.join("tokenizer_config.json").display()))?,
            Err(_) => json!({}),
        };
        let token = |key: &str| -> Option<i64> {
            let v = &tc[key];
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            inner.token_to_id(text).map(|i| i as i64)
        };
        let mut eos_ids = cfg.eos_token_ids.clone();
        if let Some(e) = token("eos_token") {
            if !eos_ids.contains(&e) {
                eos_ids.push(e);
            }
        }
        let bos_id = cfg.bos_token_id.or_else(|| token("bos_token"));
        let pad_id = cfg.pad_token_id.or_else(|| token("pad_token")).or(eos_ids.first().copied()).unwrap_or(0);
        // transformers writes the template into tokenizer_config.json, or (since 4.43) alone into
        // chat_template.jinja.
        let jinja = dir.join("chat_template.jinja");
        let chat_template = match (tc["chat_template"].as_str(), std::fs::read_to_string(&jinja)) {
            (Some(t), _) => compile(Some(t), &dir.join("tokenizer_config.json").display().to_string())?,
            (None, Ok(t)) => compile(Some(&t), &jinja.display().to_string())?,
            (None, Err(_)) => None,
        };
        Ok(Tokenizer { inner, bos_id, eos_ids, pad_id, chat_template })
    }

    /// From GGUF metadata (`tokenizer.ggml.*`): byte-level BPE (`gpt2`: Llama 3, Qwen2, SmolLM2)
    /// or SentencePiece BPE (`llama`: Llama 2, Mistral), built as HF transformers builds them
    /// from a GGUF (`integrations/gguf/gguf_tokenizer_mapping.py`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let file = g.path.display().to_string();
        let model = g.require("tokenizer.ggml.model")?.as_str().unwrap_or("");
        if model != "gpt2" && model != "llama" {
            bail!("{file}: tokenizer.ggml.model \"{model}\" is not supported (byte-level BPE \"gpt2\" or SentencePiece \"llama\")");
        }
        let tokens = g.require("tokenizer.ggml.tokens")?.as_array().with_context(|| format!("{file}: tokenizer.ggml.tokens is not an array"))?;
        let types = g.get("tokenizer.ggml.token_type").and_then(Value::as_array).unwrap_or(&[]);
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        let mut texts = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let t = t.as_str().with_context(|| format!("{file}: token {i} is not a string"))?;
            vocab.insert(t.to_string(), json!(i));
            texts.push(t);
            // Token type 3 is a control token, 4 user-defined, 2 SentencePiece's unknown: matched
            // whole in text, never split.
            let ty = types.get(i).and_then(Value::as_u64).unwrap_or(1);
            if ty == 3 || ty == 4 || (ty == 2 && model == "llama") {
                added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": ty != 4}));
            }
        }
        let merges: Vec<serde_json::Value> = match g.get("tokenizer.ggml.merges") {
            Some(m) => m.as_array().with_context(|| format!("{file}: tokenizer.ggml.merges is not an array"))?.iter().filter_map(Value::as_str).map(|m| json!(m)).collect(),
            None if model == "llama" => {
                let scores = g.require("tokenizer.ggml.scores")?.as_array().with_context(|| format!("{file}: tokenizer.ggml.scores is not an array"))?;
                let scores: Vec<f64> = scores.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect();
                if scores.len() != texts.len() {
                    bail!("{file}: tokenizer.ggml.scores has {} entries for {} tokens", scores.len(), texts.len());
                }
                merges_from_scores(&texts, &scores)
            }
            None => bail!("{file}: missing metadata tokenizer.ggml.merges"),
        };
        let mut spec = if model == "gpt2" {
            let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
                "pre_tokenizer": pre_tokenizer(pre).with_context(|| file.clone())?,
                "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
            })
        } else {
            // SentencePiece: spaces become `▁`, one prepended (unless the file says not to); text
            // outside the vocabulary falls back to the `<0xNN>` byte tokens.
            let prefix = !matches!(g.get("tokenizer.ggml.add_space_prefix"), Some(Value::Bool(false)));
            let mut decoders = vec![json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}), json!({"type": "ByteFallback"}), json!({"type": "Fuse"})];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": if prefix { "first" } else { "never" }, "split": false},
                "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges},
            })
        };
        let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as i64);
        let bos = id("tokenizer.ggml.bos_token_id");
        // llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise. It
        // is added the way HF's tokenizer.json adds it (a post-processor), so a saved folder does too.
        let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            _ => model == "llama",
        };
        if let (true, Some(b)) = (add_bos, bos) {
            let text = texts.get(b as usize).with_context(|| format!("{file}: tokenizer.ggml.bos_token_id {b} is not a token id"))?;
            spec["post_processor"] = json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": serde_json::Value::Object([(text.to_string(), json!({"id": text, "ids": [b], "tokens": [text]}))].into_iter().collect()),
            });
        }
        let bytes = serde_json::to_vec(&spec)?;
        let inner = guarded(|| tokenizers::Tokenizer::from_bytes(bytes)).map_err(|e| anyhow::anyhow!("{file}: cannot build the tokenizer from its metadata: {e}"))?;
        let eos = id("tokenizer.ggml.eos_token_id");
        let mut eos_ids: Vec<i64> = eos.into_iter().collect();
        if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
            if !eos_ids.contains(&eot) {
                eos_ids.push(eot);
            }
        }
        Ok(Tokenizer {
            inner,
            bos_id: bos,
            pad_id: id("tokenizer.ggml.padding_token_id").or(eos).unwrap_or(0),
            eos_ids,
            chat_template: compile(g.get("tokenizer.chat_template").and_then(Value::as_str), &format!("{file}: tokenizer.chat_template"))?,
        })
    }

    /// A byte-level tokenizer with no merges (one token per byte) and the ChatML control tokens,
    /// for the built-in tiny model: ids 0..256 are bytes, then `<|endoftext|>`, `<|im_start|>`,
    /// `<|im_end|>`.
    pub fn bytes() -> Result<Self> {
        let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        let mut chars: Vec<char> = alphabet.into_iter().collect();
        chars.sort_by_key(|c| byte_of(*c));
        let mut vocab = serde_json::Map::new();
        for (i, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), json!(i));
        }
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
        let added: Vec<_> = specials.iter().enumerate().map(|(k, s)| json!({"id": 256 + k, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})).collect();
        for (k, s) in specials.iter().enumerate() {
            vocab.insert(s.to_string(), json!(256 + k));
        }
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []},
        });
        let inner = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&spec)?).map_err(|e| anyhow::anyhow!("byte tokenizer: {e}"))?;
        // The template that writes what `chat` writes (ChatML, no default system message).
        let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        Ok(Tokenizer { inner, bos_id: None, eos_ids: vec![258], pad_id: 256, chat_template: compile(Some(template), "builtin:tiny")? })
    }

    /// `tokenizer_config.json` and `generation_config.json` for an HF folder: the special tokens by
    /// their text, whether encoding adds BOS, the chat template, and the ids `generate` stops and
    /// pads with, so transformers needs to guess nothing.
    pub fn hf_configs(&self, max_length: usize) -> Result<(serde_json::Value, serde_json::Value)> {
        let adds_bos = self.bos_id.is_some() && self.encode("a", true)?.first().copied() == self.bos_id;
        let mut tc = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.token_text(self.bos_id), "eos_token": self.token_text(self.eos_ids.first().copied()), "pad_token": self.token_text(Some(self.pad_id)),
            "add_bos_token": adds_bos, "add_eos_token": false, "clean_up_tokenization_spaces": false,
            "model_max_length": max_length,
        });
        if let Some(t) = &self.chat_template {
            tc["chat_template"] = json!(t.source);
        }
        let eos = match self.eos_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let gc = json!({"bos_token_id": self.bos_id, "eos_token_id": eos, "pad_token_id": self.pad_id});
        Ok((tc, gc))
    }

    /// Number of ids the tokenizer can produce (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; control tokens written in the text are recognised. `special` adds
    /// what the tokenizer's post-processor adds (e.g. BOS), as HF's `add_special_tokens=True`.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<i64>> {
        let enc = self.inner.encode(text, special).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`; `skip_special` drops control tokens (used for generated responses).
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, skip_special).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    /// One user message in the model's chat template, ready for the assistant's reply: exactly
    /// what transformers' `apply_chat_template([{"role": "user", "content": user}],
    /// add_generation_prompt=True)` gives (a template's default system message included).
    pub fn chat(&self, user: &str) -> Result<String> {
        self.render_chat(&json!([{"role": "user", "content": user}]), true)
    }

    /// A conversation (a list of `{role, content}` maps) rendered by the model's chat template,
    /// with the assistant's turn opened when `add_generation_prompt`.
    pub fn render_chat(&self, messages: &serde_json::Value, add_generation_prompt: bool) -> Result<String> {
        let Some(t) = &self.chat_template else {
            bail!("this model has no chat template (tokenizer_config.json chat_template, chat_template.jinja or the GGUF's tokenizer.chat_template); give one with load_model(source, #{{chat_template: \"...\"}})");
        };
        t.render(messages, add_generation_prompt, self.token_text(self.bos_id).as_deref(), self.token_text(self.eos_ids.first().copied()).as_deref())
    }

    /// The text of a special token id (BOS, EOS, pad), as templates and tokenizer_config.json name it.
    fn token_text(&self, id: Option<i64>) -> Option<String> {
        id.and_then(|i| self.inner.id_to_token(i as u32))
    }

    /// The same tokenizer with another chat template (a script's).
    pub fn with_chat_template(&self, template: &str) -> Result<Self> {
        Ok(Tokenizer { inner: self.inner.clone(), bos_id: self.bos_id, eos_ids: self.eos_ids.clone(), pad_id: self.pad_id, chat_template: compile(Some(template), "chat_template")? })
    }
}

/// The merges a SentencePiece vocabulary implies (GGUFs of Llama 2 and Mistral list none), as
/// transformers' `generate_merges` recovers them: every split of a token into two tokens of the
/// vocabulary (one token's splits ordered by the pieces' ids), ranked by the token's score, best
/// first, ties by the pieces' lengths in characters, longest first, then in vocabulary order.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<serde_json::Value> {
    let ids: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in tokens {
        // A token listed twice counts once, where it first appears, with its last score and id
        // (transformers reads the tokens into dicts).
        if !seen.insert(*t) {
            continue;
        }
        let score = scores[ids[t]];
        let mut local: Vec<(&str, &str, f64)> =
            t.char_indices().skip(1).map(|(at, _)| t.split_at(at)).filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r)).map(|(l, r)| (l, r, score)).collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    let key = |(l, r, s): &(&str, &str, f64)| (*s, l.chars().count(), r.chars().count());
    // Python's `sorted(..., reverse=True)` is stable: equal keys keep their order.
    merges.sort_by(|a, b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal));
    // As pairs, not "left right" strings: a piece may hold a space.
    merges.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}

/// The byte a ByteLevel alphabet character stands for (GPT-2's bytes_to_unicode, inverted).
fn byte_of(c: char) -> u32 {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let code = c as u32;
    if code < 256 && printable(code) {
        return code;
    }
    // Non-printable bytes are mapped to 256 + k in increasing byte order.
    let k = code - 256;
    (0..256u32).filter(|b| !printable(*b)).nth(k as usize).unwrap_or(0)
}

/// Checks that every id the tokenizer produces has an embedding row.
pub fn check_vocab(tok: &Tokenizer, model_vocab: usize, source: &str) -> Result<()> {
    if tok.vocab_size() > model_vocab {
        bail!("{source}: the tokenizer has {} tokens but the model's vocabulary has {model_vocab} rows (tokenizer and weights do not match)", tok.vocab_size());
    }
    Ok(())
}
