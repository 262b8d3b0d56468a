//! Script access to models: `load_model`, `load_scorer`, and the `Model` methods (`frozen`,
//! `encode`, `decode`, `chat`, `logprobs`, `generate`, `score`, `save`).
use super::api::{def, def_with_options, script_error, ScriptResult};
use super::options::{count, flag, int, noted, number, text, Decl, Given, Ty};
use super::SharedSession;
use crate::model::config::Pooling;
use crate::model::{CausalLM, Decoding, LoadOptions, LoraConfig, SampleOptions};
use crate::dist::Group;
use crate::{device, interrupt};
use rhai::{Array, Dynamic, Engine, Map};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// A model held by a script. Clones share the same weights. `frozen()` makes an independent
/// copy, or, for a model with LoRA adapters, a view of the same weights with the adapters off.
#[derive(Clone)]
pub struct ScriptModel {
    pub model: Rc<RefCell<CausalLM>>,
    /// True for the adapters-off view of a LoRA model (the reference).
    pub base_only: bool,
    /// The optimizer of the last training call, kept when a call asks for `keep_optimizer`.
    pub optimizer: Rc<RefCell<Option<Rc<RefCell<crate::train::optim::AdamW>>>>>,
    /// The one store of pooled features computed from these weights, by token sequence and
    /// pooling (`sequence_key`; f32 rows `[H]`). `train_scorer` creates it on the body it reads
    /// and hands it to the score models it makes, which have the body's weights: a second head
    /// on the same body, and the reward and safety heads scoring the same answers, run the body
    /// once per sequence. One invalidation rule: training a handle's weights drops its store
    /// (`forget_features`); score models made earlier keep theirs, which still match their copy.
    pub features: Rc<RefCell<Option<FeatureMemo>>>,
    /// Which weights this handle computes with: a number no other handle or earlier state of
    /// these weights had (drawn again when they are trained), for caches of computed values.
    weights: Rc<std::cell::Cell<u64>>,
}

/// A number never handed out before in this process.
fn fresh_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Pooled features `[H]` by a hash of (pooling, prompt ids, response ids).
pub type FeatureMemo = Rc<RefCell<HashMap<u64, tch::Tensor>>>;

/// The memo key of one token sequence's features pooled by `pool`.
pub fn sequence_key(pool: Pooling, prompt: &[i64], response: &[i64]) -> u64 {
    let mut h = crate::util::Hasher::new();
    h.word(pool.salt());
    for seq in [prompt, response] {
        h.word(seq.len() as u64);
        for &t in seq {
            h.word(t as u64);
        }
    }
    h.finish()
}

impl ScriptModel {
    pub fn new(m: CausalLM) -> Self {
        Self::new_shared(Rc::new(RefCell::new(m)))
    }

    /// Another handle on the same weights with its own caches.
    fn new_shared(model: Rc<RefCell<CausalLM>>) -> Self {
        ScriptModel { model, base_only: false, optimizer: Default::default(), features: Default::default(), weights: Rc::new(fresh_id().into()) }
    }

    /// Forgets every feature computed from these weights (called before they are trained), and
    /// gives them a new `weights_id`.
    pub fn forget_features(&self) {
        self.features.borrow_mut().take();
        self.weights.set(fresh_id());
    }

    /// Identifies the weights this handle computes with, as they are now (see `weights`).
    pub fn weights_id(&self) -> u64 {
        self.weights.get()
    }

    /// This handle's feature store, created when it has none (see `features`).
    pub fn feature_store(&self) -> FeatureMemo {
        self.features.borrow_mut().get_or_insert_with(FeatureMemo::default).clone()
    }

    /// Runs `f` with the adapters switched as this handle says, then switches them back to what
    /// they were (not to "on"), so calls nest: a base-model view used inside another handle's
    /// call, or the other way round, leaves each caller's setting as it found it.
    pub fn with<R>(&self, f: impl FnOnce(&CausalLM) -> R) -> R {
        let m = self.model.borrow();
        let before = m.adapters_enabled();
        m.set_adapters_enabled(!self.base_only);
        let r = f(&m);
        m.set_adapters_enabled(before);
        r
    }
}

pub(super) fn err(e: anyhow::Error) -> Box<rhai::EvalAltResult> {
    script_error(format!("{e:#}"))
}

pub(super) fn strings(a: &Array, what: &str) -> ScriptResult<Vec<String>> {
    a.iter()
        .enumerate()
        .map(|(i, v)| v.clone().into_string().map_err(|t| script_error(format!("{what}[{i}]: expected a string, found {t}"))))
        .collect()
}

/// The options of `load_model` and `load_scorer` (`lora` has its own, `lora_decl`).
pub(super) fn load_decl() -> Decl {
    Decl::new("load_model", vec![
        text("dtype", "f32", "f32, bf16 or f16"),
        noted("device", Ty::Str, "the run's device", "cpu, cuda or cuda:N"),
        noted("seed", Ty::Int, "the run's seed", "random initialisation of built-in models"),
        noted("lora", Ty::Map, "none", "add LoRA adapters (options below); only they train"),
        noted("adapter", Ty::Str, "none", "a LoRA adapter folder in PEFT's layout to attach (written by save/checkpoint or PEFT); it trains"),
        noted("chat_template", Ty::Str, "the checkpoint's", "a Jinja chat template to use instead of the checkpoint's own (needed when it has none)"),
    ])
}

/// The options of a `lora` map, with `LoraConfig::default()`'s values.
fn lora_decl() -> Decl {
    let d = LoraConfig::default();
    Decl::new("lora", vec![
        count("rank", d.rank as usize, "adapter rank r (at least 1)"),
        number("alpha", d.alpha, "scale α (the update is α/r · B A)"),
        number("dropout", d.dropout, "dropout on the adapter's input while training"),
        noted("targets", Ty::Strings, "every attention and MLP projection", "HF module names to adapt: a full name or its ending after a dot (q_proj, self_attn.v_proj), as PEFT matches a list"),
    ])
}

fn lora_options(v: &Dynamic) -> ScriptResult<LoraConfig> {
    let m = v.read_lock::<Map>().ok_or_else(|| script_error("option lora: expected a map #{rank, alpha, dropout, targets}"))?;
    let decl = lora_decl();
    let o = decl.read(&m)?;
    let rank = o.int("rank")?;
    if rank < 1 {
        return Err(script_error("lora.rank must be at least 1"));
    }
    Ok(LoraConfig { rank, alpha: o.number("alpha")?, dropout: o.number("dropout")?, targets: o.strings("targets")?.unwrap_or_else(|| LoraConfig::default().targets) })
}

pub(super) fn load(src: &str, opts: &Map, session: &SharedSession) -> ScriptResult<CausalLM> {
    let decl = load_decl();
    let o = decl.read(opts)?;
    let mut m = CausalLM::load(src, &load_options(&o, session)?).map_err(err)?;
    match (o.get("lora"), o.get("adapter")) {
        (Some(_), Some(_)) => return Err(script_error("load_model: give lora (new adapters) or adapter (a saved one), not both")),
        (Some(l), None) => m.add_lora(lora_options(l)?).map_err(err)?,
        (None, Some(dir)) => m.load_adapter(std::path::Path::new(&dir.to_string())).map_err(err)?,
        (None, None) => {}
    }
    if o.get("chat_template").is_some() {
        let t = o.text("chat_template")?;
        m.tokenizer = std::rc::Rc::new(m.tokenizer.with_chat_template(&t).map_err(err)?);
    }
    Ok(m)
}

fn load_options(o: &Given, session: &SharedSession) -> ScriptResult<LoadOptions> {
    let kind = super::tensor::parse_kind(&o.text("dtype")?)?;
    if !matches!(kind, tch::Kind::Float | tch::Kind::BFloat16 | tch::Kind::Half) {
        return Err(script_error("option dtype: models use f32, bf16 or f16"));
    }
    let dev = match o.text_given("device")? {
        None => device::current(),
        Some(v) => device::parse(&v).map_err(err)?,
    };
    Ok(LoadOptions { device: dev, kind, seed: o.int_or("seed", session.borrow().seed)? })
}

/// The options of `generate`, with `SampleOptions::default()`'s values.
fn generate_decl() -> Decl {
    let d = SampleOptions::default();
    let (temperature, top_k, top_p) = d.decoding.settings();
    Decl::new("generate", vec![
        count("n", d.n, "samples per prompt (returned prompt by prompt)"),
        count("max_new_tokens", d.max_new_tokens, "tokens per sample at most"),
        number("temperature", temperature, "softmax temperature; 0 is greedy"),
        number("top_p", top_p, "nucleus: the smallest set of tokens with this much probability, in (0, 1]"),
        int("top_k", top_k, "only the k most likely tokens (0: off; applied before top_p)"),
        noted("seed", Ty::Int, "a draw from the run's generator", "the per-sequence random streams"),
        noted("slots", Ty::Count, "256, fewer where their KV cache would pass 2 GiB on a CPU, 16 GiB on a GPU", "sequences decoded together"),
    ])
}

/// The options of `save`.
fn save_decl() -> Decl {
    Decl::new("save", vec![flag("merge", true, "false: write only the LoRA adapter, in PEFT's layout")])
}

fn encode_pairs(m: &CausalLM, prompts: &Array, responses: &Array) -> ScriptResult<(Vec<Vec<i64>>, Vec<Vec<i64>>)> {
    if prompts.len() != responses.len() {
        return Err(script_error(format!("{} prompts but {} responses", prompts.len(), responses.len())));
    }
    let tok = &m.tokenizer;
    let p: Vec<Vec<i64>> = strings(prompts, "prompts")?.iter().map(|s| tok.encode(s, true)).collect::<anyhow::Result<_>>().map_err(err)?;
    let r: Vec<Vec<i64>> = strings(responses, "responses")?.iter().map(|s| tok.encode(s, false)).collect::<anyhow::Result<_>>().map_err(err)?;
    Ok((p, r))
}

/// Calls `f(indices, prompts, responses)` on length-grouped batches (`data::batch::by_length`),
/// without gradients, stopping on Ctrl-C between batches.
fn each_batch(p: &[Vec<i64>], r: &[Vec<i64>], mut f: impl FnMut(&[usize], &[&[i64]], &[&[i64]]) -> ScriptResult<()>) -> ScriptResult<()> {
    let lengths: Vec<usize> = p.iter().zip(r).map(|(a, b)| a.len() + b.len()).collect();
    for batch in crate::data::batch::by_length(&lengths, 1) {
        interrupt::check()?;
        let ps: Vec<&[i64]> = batch.iter().map(|&i| p[i].as_slice()).collect();
        let rs: Vec<&[i64]> = batch.iter().map(|&i| r[i].as_slice()).collect();
        tch::no_grad(|| f(&batch, &ps, &rs))?;
    }
    Ok(())
}

/// The rows `f` gives for batches of sequences (`each_batch`), back in the sequences' order; in a
/// distributed run each rank computes its share of the sequences and every rank gets all rows.
/// Needs at least one sequence.
fn rows_of(dist: Option<&Group>, p: &[Vec<i64>], r: &[Vec<i64>], f: impl Fn(&[&[i64]], &[&[i64]]) -> ScriptResult<tch::Tensor>) -> ScriptResult<tch::Tensor> {
    // The script's own error (an interruption stays one), not the collective's wrapper.
    let mut failed = None;
    let all = crate::dist::sharded(dist, p.len(), |range| {
        let (p, r) = (&p[range.clone()], &r[range]);
        let (mut order, mut parts) = (Vec::new(), Vec::new());
        let done = each_batch(p, r, |batch, ps, rs| {
            order.extend(batch.iter().map(|&i| i as i64));
            parts.push(f(ps, rs)?);
            Ok(())
        });
        if let Err(e) = done {
            failed = Some(e);
            anyhow::bail!("stopped");
        }
        let rows = tch::Tensor::f_cat(&parts, 0)?;
        let back = tch::Tensor::f_from_slice(&order)?.f_argsort(0, false)?.f_to_device(rows.device())?;
        Ok(rows.f_index_select(0, &back)?)
    });
    match failed {
        Some(e) => Err(e),
        None => all.map_err(err),
    }
}

/// `f` over the batches of `each_batch`, one value per sequence, in the input order (shared out
/// over the ranks as `rows_of`).
fn batched(dist: Option<&Group>, p: &[Vec<i64>], r: &[Vec<i64>], f: impl Fn(&[&[i64]], &[&[i64]]) -> anyhow::Result<tch::Tensor>) -> ScriptResult<Array> {
    if p.is_empty() {
        return Ok(Array::new());
    }
    let values = rows_of(dist, p, r, |ps, rs| f(ps, rs).and_then(|t| Ok(t.f_to_kind(tch::Kind::Double)?.f_to_device(tch::Device::Cpu)?)).map_err(err))?;
    let values = Vec::<f64>::try_from(values).map_err(|e| err(e.into()))?;
    Ok(values.into_iter().map(Dynamic::from_float).collect())
}

/// Every (prompt, sample) sequence of `generate`: in a distributed run each rank samples its
/// share of the sequences (`generate_range`: the same tokens as one process would draw) and
/// every rank gets them all, in order.
fn generate_all(m: &CausalLM, dist: Option<&Group>, ids: &[Vec<i64>], o: &SampleOptions) -> anyhow::Result<Vec<Vec<i64>>> {
    let total = ids.len() * o.n.max(1);
    let Some(g) = dist.filter(|g| total >= g.world) else { return m.generate(ids, o, &interrupt::requested) };
    let mine = m.generate_range(ids, o, crate::dist::share(total, g.rank, g.world), &interrupt::requested)?;
    let lengths = tch::Tensor::from_slice(&mine.iter().map(|t| t.len() as i64).collect::<Vec<_>>());
    let lengths = Vec::<i64>::try_from(g.all_gather(&lengths)?)?;
    let tokens = Vec::<i64>::try_from(g.all_gather(&tch::Tensor::from_slice(&mine.concat()))?)?;
    let mut at = 0;
    Ok(lengths
        .iter()
        .map(|&l| {
            at += l as usize;
            tokens[at - l as usize..at].to_vec()
        })
        .collect())
}

/// The score head's output for each (prompt, response). A score model with a feature store runs
/// the body only on sequences no score model of the same body has seen.
pub fn score(m: &ScriptModel, dist: Option<&Group>, prompts: &Array, responses: &Array) -> ScriptResult<Array> {
    let memo = m.features.borrow().clone();
    m.with(|cm| {
        let (p, r) = encode_pairs(cm, prompts, responses)?;
        let Some(memo) = memo else {
            return batched(dist, &p, &r, |ps, rs| cm.scores(ps, rs));
        };
        let Some((_, head)) = &cm.score_head else {
            return Err(script_error(format!("{}: this model has no score head", cm.source)));
        };
        let pool = cm.cfg.score_pooling;
        let keys: Vec<u64> = p.iter().zip(&r).map(|(a, b)| sequence_key(pool, a, b)).collect();
        let mut seen = HashSet::new();
        let todo: Vec<usize> = (0..keys.len()).filter(|&i| !memo.borrow().contains_key(&keys[i]) && seen.insert(keys[i])).collect();
        let (tp, tr): (Vec<Vec<i64>>, Vec<Vec<i64>>) = todo.iter().map(|&i| (p[i].clone(), r[i].clone())).unzip();
        // Each rank reads its share of the new sequences; every rank keeps all their features.
        if !todo.is_empty() {
            let features = rows_of(dist, &tp, &tr, |ps, rs| cm.features(ps, rs, pool).and_then(|f| Ok(f.f_to_kind(tch::Kind::Float)?)).map_err(err))?;
            for (j, &i) in todo.iter().enumerate() {
                memo.borrow_mut().insert(keys[i], features.f_get(j as i64).map_err(super::api::torch_error)?);
            }
        }
        let memo = memo.borrow();
        let mut out = Array::new();
        for chunk in keys.chunks(4096) {
            let rows: Vec<tch::Tensor> = chunk.iter().map(|k| memo.get(k).map(tch::Tensor::shallow_clone).ok_or_else(|| script_error("score: the feature store lost an entry"))).collect::<ScriptResult<_>>()?;
            let t = tch::no_grad(|| -> anyhow::Result<tch::Tensor> { Ok(head.forward(&tch::Tensor::f_stack(&rows, 0)?.f_to_kind(head.weight.kind())?)?.f_select(1, 0)?.f_to_kind(tch::Kind::Float)?) }).map_err(err)?;
            let (_, values) = super::tensor::values(&t)?;
            out.extend(values.into_iter().map(Dynamic::from_float));
        }
        Ok(out)
    })
}

/// Resolves a path a script wants to write: relative paths go inside the run directory, and
/// nothing may escape it (scripts write only there).
pub fn output_path(session: &SharedSession, path: &str) -> ScriptResult<PathBuf> {
    let s = session.borrow();
    let Some(run) = s.run.as_ref() else {
        return Err(script_error("no run directory: writing files needs `host run`"));
    };
    let p = Path::new(path);
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(script_error(format!("{path}: scripts write only inside the run directory; give a relative path without `..`")));
    }
    // A symbolic link already in the run directory (placed there by hand, or an existing --out
    // folder) must not carry a write outside it: every link on the way must resolve inside.
    let root = run.path.canonicalize().map_err(|e| script_error(format!("{}: cannot resolve the run directory ({e})", run.path.display())))?;
    let mut at = run.path.clone();
    for c in p.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => match at.canonicalize() {
                Ok(target) if target.starts_with(&root) => {}
                Ok(target) => return Err(script_error(format!("{path}: {} is a symbolic link to {}, outside the run directory; scripts write only inside it", at.display(), target.display()))),
                Err(_) => return Err(script_error(format!("{path}: {} is a symbolic link that does not resolve; scripts write only inside the run directory", at.display()))),
            },
            Ok(_) => {}
            Err(_) => break, // nothing there yet: what follows is created inside
        }
    }
    Ok(run.path.join(p))
}

pub fn register(engine: &mut Engine, session: SharedSession) {
    engine.register_type_with_name::<ScriptModel>("Model");
    let s = session.clone();
    def(engine, "load_model", &["source: string", "Model"], "Loads a causal LM: an HF folder, a .gguf file, builtin:tiny or builtin:smollm2-135m.", move |src: &str| -> ScriptResult<ScriptModel> { Ok(ScriptModel::new(load(src, &Map::new(), &s)?)) });
    let s = session.clone();
    def_with_options(engine, "load_model", &["source: string", "opts: map", "Model"], "Loads a causal LM with options.", &[load_decl(), lora_decl()], move |src: &str, opts: Map| -> ScriptResult<ScriptModel> {
        Ok(ScriptModel::new(load(src, &opts, &s)?))
    });
    let s = session.clone();
    def(engine, "load_scorer", &["source: string", "Model"], "Loads a score model (transformer body plus a `score` or `score_head` linear head).", move |src: &str| -> ScriptResult<ScriptModel> {
        let m = load(src, &Map::new(), &s)?;
        if m.score_head.is_none() {
            return Err(script_error(format!("{src}: no score head (score.weight or score_head.weight) in this checkpoint")));
        }
        Ok(ScriptModel::new(m))
    });
    def(engine, "frozen", &["m: Model", "Model"], "The fixed reference: a copy of the current weights, or for a LoRA model the same base weights with adapters off.", |m: &mut ScriptModel| -> ScriptResult<ScriptModel> {
        if m.model.borrow().lora.is_some() {
            return Ok(ScriptModel { base_only: true, ..ScriptModel::new_shared(m.model.clone()) });
        }
        Ok(ScriptModel::new(m.with(|m| m.deep_copy()).map_err(err)?))
    });
    def(engine, "copy", &["m: Model", "Model"], "An independent, trainable copy of the weights as this handle computes them (LoRA merged, or the base for an adapters-off reference).", |m: &mut ScriptModel| -> ScriptResult<ScriptModel> {
        Ok(ScriptModel::new(m.with(|m| m.deep_copy()).map_err(err)?))
    });
    def(engine, "encode", &["m: Model", "text: string", "array"], "Token ids of the text (control tokens written in it are recognised).", |m: &mut ScriptModel, text: &str| -> ScriptResult<Array> {
        let ids = m.with(|m| m.tokenizer.encode(text, true)).map_err(err)?;
        Ok(ids.into_iter().map(Dynamic::from_int).collect())
    });
    def(engine, "decode", &["m: Model", "ids: array", "string"], "The text of token ids (control tokens kept).", |m: &mut ScriptModel, ids: Array| -> ScriptResult<String> {
        let ids: Vec<i64> = ids.iter().map(|v| v.as_int().map_err(|t| script_error(format!("decode: expected integers, found {t}")))).collect::<ScriptResult<_>>()?;
        m.with(|m| m.tokenizer.decode(&ids, false)).map_err(err)
    });
    def(engine, "chat", &["m: Model", "user_text: string", "string"], "One user message in the model's chat template, ready for the reply (as transformers' apply_chat_template with add_generation_prompt).", |m: &mut ScriptModel, text: &str| -> ScriptResult<String> { m.with(|m| m.tokenizer.chat(text)).map_err(err) });
    def(engine, "chat", &["m: Model", "messages: array", "string"], "A conversation (an array of #{role, content} maps: system, user, assistant) in the model's chat template, with the assistant's turn opened for the reply.", |m: &mut ScriptModel, messages: Array| -> ScriptResult<String> {
        let json = rhai::serde::from_dynamic::<serde_json::Value>(&Dynamic::from_array(messages)).map_err(|e| script_error(format!("chat: messages: {e}")))?;
        for (i, msg) in json.as_array().into_iter().flatten().enumerate() {
            if !msg.is_object() || !msg["role"].is_string() || !msg["content"].is_string() {
                return Err(script_error(format!("chat: message {i} must be a map with string role and content, found {msg}")));
            }
        }
        m.with(|m| m.tokenizer.render_chat(&json, true)).map_err(err)
    });
    let s = session.clone();
    def(engine, "logprobs", &["m: Model", "prompts: array", "responses: array", "array"], "Summed log-probability of each response given its prompt (prompt tokens not scored).", move |m: &mut ScriptModel, prompts: Array, responses: Array| -> ScriptResult<Array> {
        let dist = s.borrow().dist.clone();
        m.with(|m| {
            let (p, r) = encode_pairs(m, &prompts, &responses)?;
            batched(dist.as_deref(), &p, &r, |ps, rs| m.sequence_logprobs(ps, rs, 256))
        })
    });
    let s = session.clone();
    def(engine, "score", &["s: Model", "prompts: array", "responses: array", "array"], "The score head's output for each prompt and response, read at the last token.", move |m: &mut ScriptModel, prompts: Array, responses: Array| {
        let dist = s.borrow().dist.clone();
        score(m, dist.as_deref(), &prompts, &responses)
    });
    let s = session.clone();
    def_with_options(engine, "generate", &["m: Model", "prompts: array", "opts: map", "array"], "Samples responses by continuous batching (docs/sampling.md): n per prompt, prompt by prompt.", &[generate_decl()], move |m: &mut ScriptModel, prompts: Array, opts: Map| -> ScriptResult<Array> {
        let decl = generate_decl();
        let o = decl.read(&opts)?;
        let o = SampleOptions {
            n: o.count("n")?.max(1),
            max_new_tokens: o.count("max_new_tokens")?.max(1),
            decoding: Decoding::new(o.number("temperature")?, o.int("top_k")?, o.number("top_p")?).map_err(|e| script_error(format!("generate: {e}")))?,
            seed: o.get("seed").map(|v| v.as_int().unwrap_or_default()),
            slots: o.int_or("slots", 0)?.max(0) as usize,
        };
        let key = crate::run::journal::key(&[&m.model.borrow().source, &m.base_only.to_string(), &format!("{prompts:?}"), &format!("{opts:?}")]);
        let replay = |out: &serde_json::Value, _| -> ScriptResult<Array> {
            let texts = out.as_array().ok_or_else(|| script_error("resume: a generate entry is not an array"))?;
            Ok(texts.iter().map(|t| Dynamic::from(t.as_str().unwrap_or_default().to_string())).collect())
        };
        let dist = s.borrow().dist.clone();
        super::journaled(&s, "generate", &key, replay, || {
            m.with(|m| {
                let ids: Vec<Vec<i64>> = strings(&prompts, "prompts")?.iter().map(|s| m.tokenizer.encode(s, true)).collect::<anyhow::Result<_>>().map_err(err)?;
                let out = generate_all(m, dist.as_deref(), &ids, &o).map_err(|e| {
                    if interrupt::requested() {
                        interrupt::terminated()
                    } else {
                        err(e)
                    }
                })?;
                let texts: Vec<String> = out.iter().map(|t| m.tokenizer.decode(t, true)).collect::<anyhow::Result<_>>().map_err(err)?;
                let json = serde_json::json!(texts);
                Ok((texts.into_iter().map(Dynamic::from).collect(), json, Vec::new()))
            })
        })
    });
    let s = session.clone();
    def(engine, "save", &["m: Model", "dir: string", "()"], "Writes the model as an HF folder (config.json, model.safetensors, tokenizer.json; LoRA merged) inside the run directory.", move |m: &mut ScriptModel, dir: &str| -> ScriptResult<()> {
        let path = output_path(&s, dir)?;
        if !s.borrow().is_main() {
            return Ok(()); // rank 0 writes the run directory
        }
        m.with(|m| m.save(&path)).map_err(err)
    });
    let s = session.clone();
    def(engine, "checkpoint", &["m: Model", "name: string", "string"], "Saves the model under checkpoints/NAME in the run directory (the LoRA adapter alone when it has one), atomically; returns the folder.", move |m: &mut ScriptModel, name: &str| -> ScriptResult<String> {
        let dir = output_path(&s, &format!("checkpoints/{name}"))?;
        let tmp = output_path(&s, &format!("checkpoints/.{name}.tmp"))?;
        if !s.borrow().is_main() {
            return Ok(dir.display().to_string()); // rank 0 writes the run directory
        }
        let _ = std::fs::remove_dir_all(&tmp);
        let lora = m.model.borrow().lora.is_some();
        let saved = if lora && !m.base_only { m.model.borrow_mut().save_adapter(&tmp) } else { m.with(|m| m.save(&tmp)) };
        if let Err(e) = saved {
            // A full disk: the previous checkpoint of this name stays; the partial one goes.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(err(e));
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| script_error(format!("checkpoint: {}: {e}", dir.display())))?;
        Ok(dir.display().to_string())
    });
    let s = session;
    def_with_options(engine, "save", &["m: Model", "dir: string", "opts: map", "()"], "Writes the model inside the run directory as an HF folder (LoRA merged).", &[save_decl()], move |m: &mut ScriptModel, dir: &str, opts: Map| -> ScriptResult<()> {
        let decl = save_decl();
        let merge = decl.read(&opts)?.flag("merge")?;
        let path = output_path(&s, dir)?;
        if !s.borrow().is_main() {
            return Ok(()); // rank 0 writes the run directory
        }
        if merge || m.base_only {
            m.with(|m| m.save(&path)).map_err(err)
        } else {
            m.model.borrow_mut().save_adapter(&path).map_err(err)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LoadOptions;

    #[test]
    fn nested_calls_leave_each_handles_adapter_setting_as_they_found_it() {
        // Regression: `with` reset the adapters to "on" when it returned, so a policy call nested
        // inside a base-model view's call left the rest of the outer call on the policy.
        let mut m = CausalLM::load("builtin:tiny", &LoadOptions { device: tch::Device::Cpu, kind: tch::Kind::Float, seed: 0 }).unwrap();
        m.add_lora(LoraConfig::default()).unwrap();
        let policy = ScriptModel::new(m);
        let base = ScriptModel { base_only: true, ..ScriptModel::new_shared(policy.model.clone()) };
        let seen = base.with(|m| {
            let outer = m.adapters_enabled();
            let inner = policy.with(|m| m.adapters_enabled());
            (outer, inner, m.adapters_enabled())
        });
        assert_eq!(seen, (false, true, false), "(base, nested policy, base after it)");
        let seen = policy.with(|m| (base.with(|m| m.adapters_enabled()), m.adapters_enabled()));
        assert_eq!(seen, (false, true), "(nested base, policy after it)");
        assert!(policy.model.borrow().adapters_enabled(), "on again outside every call");
    }
}
