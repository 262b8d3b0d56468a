//! Script access to training: `dpo`, `sft`, `train_scorer`. Each logs its steps to the run's
//! metrics, shows progress, stops cleanly on Ctrl-C between steps, and returns a summary.
use super::api::{def_with_options, script_error, ScriptResult};
use super::options::{count, flag, noted, number, text, Decl, Given, Opt, Ty};
use super::data::ScriptPairs;
use super::model::{sequence_key, ScriptModel};
use super::SharedSession;
use crate::data::batch;
use crate::interrupt;
use crate::model::config::Pooling;
use crate::model::CausalLM;
use crate::train::dpo::{self, DpoLoss, DpoOptions, Reference};
use crate::train::optim::{AdamW, AdamWConfig, Schedule};
use crate::train::scorer::{self, ScorerOptions};
use crate::train::sft::{self, SftOptions};
use crate::run::journal;
use crate::train::{cache, LoopOptions};
use rhai::{Array, Engine, Map};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// The optimizer-loop options every trainer takes, with the trainer's own defaults `d`.
fn loop_decl(d: &LoopOptions) -> Vec<Opt> {
    vec![
        number("lr", d.adamw.lr, "AdamW learning rate"),
        number("weight_decay", d.adamw.weight_decay, "AdamW decoupled weight decay, on matrices only (not biases or norms)"),
        text("schedule", d.schedule.name(), "learning-rate schedule: constant, linear or cosine (after warm-up)"),
        count("warmup_steps", d.warmup_steps, "linear warm-up steps"),
        noted("warmup_ratio", Ty::Number, "unset", "warm-up as a fraction of all steps (replaces warmup_steps)"),
        count("grad_accum", d.grad_accum, "micro-batches per optimizer step"),
        number("max_grad_norm", d.max_grad_norm, "gradient clipping norm (0: off)"),
        count("max_nonfinite", d.max_nonfinite, "non-finite steps in a row that stop the run"),
        count("log_every", d.log_every, "log a metrics row every this many steps"),
        flag("keep_optimizer", false, "keep the AdamW moments from this model's previous call"),
        flag("checkpoint", d.checkpoint, "activation checkpointing: keep each decoder layer's input, recompute the layer in the backward pass (same gradients, less memory, one more forward pass)"),
    ]
}

fn loop_options(o: &Given, what: &str, total_steps_hint: usize, session: &SharedSession) -> ScriptResult<LoopOptions> {
    let warmup = match o.get("warmup_ratio") {
        Some(_) => (o.number("warmup_ratio")? * total_steps_hint as f64).round() as usize,
        None => o.count("warmup_steps")?,
    };
    Ok(LoopOptions {
        adamw: AdamWConfig { lr: o.number("lr")?, weight_decay: o.number("weight_decay")?, ..Default::default() },
        schedule: Schedule::parse(&o.text("schedule")?).map_err(|e| script_error(format!("{what}: {e}")))?,
        warmup_steps: warmup,
        grad_accum: o.count("grad_accum")?.max(1),
        max_grad_norm: o.number("max_grad_norm")?,
        max_nonfinite: o.count("max_nonfinite")?.max(1),
        log_every: o.count("log_every")?.max(1),
        checkpoint: o.flag("checkpoint")?,
        dist: session.borrow().dist.clone(),
    })
}

/// The options of `dpo`, with `DpoOptions::default()`'s values.
fn dpo_decl() -> Decl {
    let d = DpoOptions::default();
    let mut opts = vec![
        number("beta", d.beta, "KL weight β of the implicit reward β·log(π/π_ref)"),
        number("label_smoothing", d.label_smoothing, "conservative DPO: the assumed label-flip rate ε (sigmoid loss)"),
        text("loss", d.loss.name(), "sigmoid (DPO) or ipo"),
        count("epochs", d.epochs, "passes over the pairs"),
        count("batch_size", d.batch_size, "pairs per micro-batch"),
        count("max_len", d.max_len, "prompt + response tokens kept (the response is cut)"),
        count("max_prompt_len", d.max_prompt_len, "prompt tokens kept (from the left)"),
        flag("group_by_length", d.group_by_length, "batch pairs of similar length (less padding)"),
        flag("share_prompt", d.share_prompt, "one pass over each pair's prompt for both responses (a tree attention mask); false: a row per response, as TRL lays them out"),
        noted("seed", Ty::Int, "the run's seed", "order of the pairs"),
        flag("ref_cache", d.cache_dir.is_some(), "keep reference log-probs on disk, keyed by content"),
        noted("cache_dir", Ty::Str, "the per-user cache", "where the reference log-probs are kept"),
    ];
    opts.extend(loop_decl(&d.loop_opts));
    Decl::new("dpo", opts)
}

/// The options of `sft`, with `SftOptions::default()`'s values.
fn sft_decl() -> Decl {
    let d = SftOptions::default();
    let mut opts = vec![
        count("epochs", d.epochs, "passes over the examples"),
        count("batch_size", d.batch_size, "examples per micro-batch"),
        noted("seed", Ty::Int, "the run's seed", "order of the examples"),
        count("max_len", 512, "prompt + response tokens kept (the response is cut)"),
    ];
    opts.extend(loop_decl(&d.loop_opts));
    Decl::new("sft", opts)
}

/// The options of `train_scorer`, with `ScorerOptions::default()`'s values.
fn scorer_decl() -> Decl {
    let d = ScorerOptions::default();
    Decl::new("train_scorer", vec![
        count("steps", d.steps, "full-batch optimizer steps on the head"),
        number("lr", d.lr, "learning rate of the head"),
        number("weight_decay", d.weight_decay, "weight decay of the head"),
        number("eval_fraction", d.eval_fraction, "pairs held out to report accuracy"),
        noted("seed", Ty::Int, "the run's seed", "the held-out split"),
        count("max_len", 512, "prompt + response tokens read for the features"),
        text("pool", "last", "where the head reads the hidden states: \"last\" token (HF's score heads) or \"mean\" over the response tokens"),
    ])
}

fn err(e: anyhow::Error) -> Box<rhai::EvalAltResult> {
    if interrupt::requested() {
        return interrupt::terminated();
    }
    script_error(format!("{e:#}"))
}

fn to_map(m: serde_json::Map<String, serde_json::Value>) -> ScriptResult<Map> {
    rhai::serde::to_dynamic(serde_json::Value::Object(m))?.try_cast::<Map>().ok_or_else(|| script_error("internal: summary is not a map"))
}

fn logger(session: &SharedSession) -> impl FnMut(serde_json::Map<String, serde_json::Value>) -> anyhow::Result<()> + '_ {
    move |row| match session.borrow_mut().run.as_mut() {
        Some(run) => run.log(row),
        None => Ok(()),
    }
}

/// The policy's optimizer: kept between calls when asked, else fresh.
fn optimizer(policy: &ScriptModel, keep: bool) -> ScriptResult<Rc<RefCell<AdamW>>> {
    let mut slot = policy.optimizer.borrow_mut();
    if keep {
        if let Some(opt) = slot.as_ref() {
            return Ok(opt.clone());
        }
    }
    let params = policy.model.borrow_mut().trainable_parameters().map_err(err)?;
    let opt = Rc::new(RefCell::new(AdamW::new(params).map_err(err)?));
    *slot = Some(opt.clone());
    Ok(opt)
}

/// The content of a pair set as the journal keys it: origins, prompts and current labels.
fn pairs_digest(pairs: &ScriptPairs) -> String {
    let mut h = crate::util::Hasher::new();
    for (i, p) in pairs.pairs.iter().enumerate() {
        h.bytes(p.origin.as_bytes());
        h.bytes(p.prompt.as_bytes());
        h.word(pairs.chosen[i] as u64);
        if let Some(c) = &pairs.confidence {
            h.word(c[i].to_bits());
        }
    }
    format!("{:016x}-{}", h.finish(), pairs.pairs.len())
}

/// A finished training call for the journal: its summary, the trained tensors and (when the
/// optimizer is kept for later calls) the optimizer's moments.
fn trained(model: &ScriptModel, opt: &Rc<RefCell<AdamW>>, keep: bool, mut summary: serde_json::Map<String, serde_json::Value>) -> ScriptResult<(Map, serde_json::Value, Vec<(String, tch::Tensor)>)> {
    let mut tensors: Vec<(String, tch::Tensor)> = model.model.borrow_mut().trainable_parameters().map_err(err)?.into_iter().map(|(n, t)| (format!("param.{n}"), t)).collect();
    if keep {
        tensors.extend(opt.borrow().state().map_err(err)?.into_iter().map(|(n, t)| (format!("opt.{n}"), t)));
        summary.insert("optimizer_steps".into(), serde_json::json!(opt.borrow().steps));
    }
    let json = serde_json::Value::Object(summary.clone());
    Ok((to_map(summary)?, json, tensors))
}

/// Replays a journaled training call: the trained tensors (and kept optimizer state) restored.
fn restore(model: &ScriptModel, keep: bool, out: &serde_json::Value, tensors: &[(String, tch::Tensor)]) -> ScriptResult<Map> {
    let opt = optimizer(model, keep)?;
    let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| script_error(format!("resume: the journal has no tensor `{name}`")));
    for (name, mut p) in model.model.borrow_mut().trainable_parameters().map_err(err)? {
        let saved = find(&format!("param.{name}"))?;
        tch::no_grad(|| p.f_copy_(saved)).map_err(super::api::torch_error)?;
    }
    if keep {
        let state: Vec<(String, tch::Tensor)> = tensors.iter().filter_map(|(n, t)| n.strip_prefix("opt.").map(|n| (n.to_string(), t.shallow_clone()))).collect();
        let steps = out.get("optimizer_steps").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        opt.borrow_mut().load_state(&state, steps).map_err(err)?;
    }
    let serde_json::Value::Object(m) = out else { return Err(script_error("resume: a journal entry's output is not a map")) };
    to_map(m.clone())
}

/// Refuses to train a frozen reference; otherwise forgets the features computed from the weights
/// about to change.
fn check_trainable(policy: &ScriptModel, what: &str) -> ScriptResult<()> {
    if policy.base_only {
        return Err(script_error(format!("{what}: this model is a frozen reference (adapters off); train the model it came from")));
    }
    policy.forget_features();
    Ok(())
}

pub fn register(engine: &mut Engine, session: SharedSession) {
    let s = session.clone();
    def_with_options(engine, "dpo", &["policy: Model", "reference: Model", "pairs: Pairs", "opts: map", "map"],
        "DPO of the policy against the fixed reference on the pairs' current labels (soft labels as their confidence); returns metrics.", &[dpo_decl()],
        move |policy: ScriptModel, reference: ScriptModel, pairs: ScriptPairs, opts: Map| -> ScriptResult<Map> {
            check_trainable(&policy, "dpo")?;
            let decl = dpo_decl();
            let o = decl.read(&opts)?;
            let mut dopts = DpoOptions {
                beta: o.number("beta")?,
                label_smoothing: o.number("label_smoothing")?,
                loss: DpoLoss::parse(&o.text("loss")?).map_err(|e| script_error(format!("dpo: {e}")))?,
                epochs: o.count("epochs")?.max(1),
                batch_size: o.count("batch_size")?.max(1),
                max_len: o.count("max_len")?,
                max_prompt_len: o.count("max_prompt_len")?,
                group_by_length: o.flag("group_by_length")?,
                share_prompt: o.flag("share_prompt")?,
                seed: o.int_or("seed", s.borrow().seed)? as u64,
                cache_dir: if o.flag("ref_cache")? { Some(o.text_given("cache_dir")?.map_or_else(cache::default_dir, Into::into)) } else { None },
                loop_opts: LoopOptions::default(),
            };
            if !(dopts.beta > 0.0) {
                return Err(script_error("dpo: beta must be positive"));
            }
            let steps_hint = dopts.epochs * pairs.pairs.len().div_ceil(dopts.batch_size);
            dopts.loop_opts = loop_options(&o, "dpo", steps_hint, &s)?;
            let keep = o.flag("keep_optimizer")?;
            let key = journal::key(&[&pairs_digest(&pairs), &format!("{opts:?}")]);
            super::journaled(&s, "dpo", &key, |out, tensors| restore(&policy, keep, out, &tensors), || {
            let tokenized = {
                let m = policy.model.borrow();
                Arc::new(batch::tokenize(&pairs.pairs, &m.tokenizer, dopts.max_prompt_len, dopts.max_len).map_err(err)?)
            };
            let eval = |p: &[&[i64]], c: &[&[i64]], r: &[&[i64]]| reference.with(|m: &CausalLM| m.logprobs(&m.pack_pairs(p, c, r, dopts.share_prompt)?, 512));
            let (table, hit) = if dopts.cache_dir.is_some() {
                let dist = s.borrow().dist.clone();
                let (t, hit) = reference.with(|m| dpo::cached_reference(m, &eval, &tokenized, &dopts, dist.as_deref(), &interrupt::requested)).map_err(err)?;
                (Some(Arc::new(t)), hit)
            } else {
                (None, false)
            };
            let opt = optimizer(&policy, keep)?;
            let origins: Vec<String> = pairs.pairs.iter().map(|p| p.origin.clone()).collect();
            let reference_source = match &table {
                Some(t) => Reference::Table(t.clone()),
                None => Reference::Online(&eval),
            };
            let mut log = logger(&s);
            let summary = policy.with(|m| dpo::train(m, &mut opt.borrow_mut(), reference_source, tokenized.clone(), Arc::new(pairs.chosen.to_vec()), pairs.confidence.as_ref().map(|c| Arc::new(c.iter().map(|&x| x as f32).collect())), &origins, &dopts, &mut log, &interrupt::requested)).map_err(err)?;
            let mut summary = summary.to_map().map_err(err)?;
            summary.insert("ref_cache".into(), serde_json::json!(if table.is_none() { "online" } else if hit { "hit" } else { "miss" }));
            trained(&policy, &opt, keep, summary)
            })
        });
    let s = session.clone();
    def_with_options(engine, "sft", &["model: Model", "prompts: array", "responses: array", "opts: map", "map"],
        "Supervised fine-tuning on prompt/response pairs (loss on response tokens only); returns metrics.", &[sft_decl()],
        move |model: ScriptModel, prompts: Array, responses: Array, opts: Map| -> ScriptResult<Map> {
            check_trainable(&model, "sft")?;
            let decl = sft_decl();
            let o = decl.read(&opts)?;
            if prompts.len() != responses.len() {
                return Err(script_error(format!("sft: {} prompts but {} responses", prompts.len(), responses.len())));
            }
            let max_len = o.count("max_len")?;
            let data: Vec<(Vec<i64>, Vec<i64>)> = {
                let m = model.model.borrow();
                prompts
                    .iter()
                    .zip(&responses)
                    .map(|(p, r)| -> ScriptResult<(Vec<i64>, Vec<i64>)> {
                        let p = m.tokenizer.encode(&p.to_string(), true).map_err(err)?;
                        let mut r = m.tokenizer.encode(&r.to_string(), false).map_err(err)?;
                        r.truncate(max_len.saturating_sub(p.len()).max(1));
                        Ok((p, r))
                    })
                    .collect::<ScriptResult<_>>()?
            };
            let epochs = o.count("epochs")?.max(1);
            let batch_size = o.count("batch_size")?.max(1);
            let sopts = SftOptions { epochs, batch_size, seed: o.int_or("seed", s.borrow().seed)? as u64, loop_opts: loop_options(&o, "sft", epochs * data.len().div_ceil(batch_size), &s)? };
            let keep = o.flag("keep_optimizer")?;
            let key = journal::key(&[&format!("{prompts:?}"), &format!("{responses:?}"), &format!("{opts:?}")]);
            super::journaled(&s, "sft", &key, |out, tensors| restore(&model, keep, out, &tensors), || {
                let opt = optimizer(&model, keep)?;
                let mut log = logger(&s);
                let summary = model.with(|m| sft::train(m, &mut opt.borrow_mut(), &data, &sopts, &mut log, &interrupt::requested)).map_err(err)?;
                trained(&model, &opt, keep, summary)
            })
        });
    let s = session;
    def_with_options(engine, "train_scorer", &["model: Model", "pairs: Pairs", "label: string", "opts: map", "Model"],
        "A Bradley-Terry score model from the model's frozen features (last token, or `pool: \"mean\"` over the response) and the pairs' \"better\" or \"safer\" labels; held-out accuracy is logged.", &[scorer_decl()],
        move |model: ScriptModel, pairs: ScriptPairs, label: &str, opts: Map| -> ScriptResult<ScriptModel> {
            let decl = scorer_decl();
            let o = decl.read(&opts)?;
            let sopts = ScorerOptions {
                steps: o.count("steps")?,
                lr: o.number("lr")?,
                weight_decay: o.number("weight_decay")?,
                eval_fraction: o.number("eval_fraction")?,
                seed: o.int_or("seed", s.borrow().seed)? as u64,
            };
            let max_len = o.count("max_len")?;
            let pool = Pooling::parse(&o.text("pool")?).map_err(|e| super::api::usage_error(format!("train_scorer: {e}")))?;
            let chosen: Vec<usize> = pairs
                .pairs
                .iter()
                .map(|p| p.labels.get(label).copied().ok_or_else(|| script_error(format!("train_scorer: {} has no `{label}` label", p.origin))))
                .collect::<ScriptResult<_>>()?;
            let key = journal::key(&[label, &pairs_digest(&pairs), &format!("{opts:?}")]);
            let replay = |out: &serde_json::Value, tensors: Vec<(String, tch::Tensor)>| -> ScriptResult<ScriptModel> {
                let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
                let weight = find("score.weight").ok_or_else(|| script_error("resume: the journal has no score head"))?;
                let mut scorer = model.with(|m| m.deep_copy()).map_err(err)?;
                let dev = scorer.device;
                let to = |t: tch::Tensor| t.f_to_device(dev).map_err(super::api::torch_error);
                scorer.score_head = Some(("score".into(), crate::model::layers::Linear::new(to(weight)?, find("score.bias").map(to).transpose()?)));
                scorer.cfg.score_pooling = pool;
                scorer.lora = None;
                eprintln!("train_scorer({label}): replayed from the journal (held-out accuracy {})", out["eval_accuracy"]);
                let scorer = ScriptModel::new(scorer);
                *scorer.features.borrow_mut() = Some(model.feature_store());
                Ok(scorer)
            };
            let dist = s.borrow().dist.clone();
            super::journaled(&s, "train_scorer", &key, replay, || {
                let (head, summary, mut scorer) = model
                    .with(|m| -> anyhow::Result<_> {
                        let tokenized = batch::tokenize(&pairs.pairs, &m.tokenizer, max_len / 2, max_len)?;
                        // Features of sequences this body has read already come from its store
                        // (a second head on the same pairs); the rest from the per-user cache or
                        // a forward pass, and then into the store for the score models.
                        let store = model.feature_store();
                        let keys: Vec<u64> = tokenized.iter().flat_map(|p| [sequence_key(pool, &p.prompt, &p.responses[0]), sequence_key(pool, &p.prompt, &p.responses[1])]).collect();
                        let known: Option<Vec<tch::Tensor>> = { let s = store.borrow(); keys.iter().map(|k| s.get(k).map(tch::Tensor::shallow_clone)).collect() };
                        let feats = match known {
                            Some(rows) => tch::Tensor::f_stack(&rows, 0)?.f_view([tokenized.len() as i64, 2, -1])?,
                            None => {
                                // Between runs, features live in the per-user cache under a hash
                                // of the weights and the token ids (verified when read).
                                let dir = cache::default_dir();
                                let disk_key = cache::key(cache::weights_fingerprint(m)? ^ pool.salt(), &tokenized, max_len / 2, max_len);
                                let found = cache::load_features(&dir, &disk_key, &[tokenized.len() as i64, 2, m.cfg.hidden_size as i64])?;
                                // Every rank reads the cache, or none does (see dist::all).
                                let found = if crate::dist::all(dist.as_deref(), found.is_some())? { found } else { None };
                                let f = match found {
                                    Some(f) => {
                                        eprintln!("train_scorer({label}): features of {} pairs from the cache ({})", tokenized.len(), dir.display());
                                        f.f_to_device(m.device)?
                                    }
                                    None => {
                                        // A distributed run: each rank reads its share of the pairs.
                                        let f = crate::dist::sharded(dist.as_deref(), tokenized.len(), |range| scorer::features(m, &tokenized[range], pool, &interrupt::requested))?;
                                        if dist.as_ref().is_none_or(|g| g.rank == 0) {
                                            cache::store_features(&dir, &disk_key, &f)?;
                                        }
                                        f
                                    }
                                };
                                let rows = f.f_to_kind(tch::Kind::Float)?.f_view([tokenized.len() as i64 * 2, -1])?;
                                let mut s = store.borrow_mut();
                                for (i, k) in keys.iter().enumerate() {
                                    s.insert(*k, rows.f_get(i as i64)?);
                                }
                                f
                            }
                        };
                        let (head, summary) = scorer::train_head_on(m, &feats, &chosen, &sopts, &interrupt::requested)?;
                        Ok((head, summary, m.deep_copy()?))
                    })
                    .map_err(err)?;
                let mut tensors = vec![("score.weight".to_string(), head.weight.shallow_clone())];
                if let Some(b) = &head.bias {
                    tensors.push(("score.bias".to_string(), b.shallow_clone()));
                }
                scorer.score_head = Some(("score".into(), head));
                scorer.cfg.score_pooling = pool;
                scorer.lora = None;
                let mut row = summary.clone();
                row.insert("phase".into(), serde_json::json!(format!("scorer:{label}")));
                if let Some(run) = s.borrow_mut().run.as_mut() {
                    run.log(row).map_err(err)?;
                }
                eprintln!("train_scorer({label}): train accuracy {:.3}, held-out accuracy {} on {} pairs", summary["train_accuracy"].as_f64().unwrap_or(f64::NAN), summary["eval_accuracy"], summary["held_out"]);
                let scorer = ScriptModel::new(scorer);
                *scorer.features.borrow_mut() = Some(model.feature_store());
                Ok((scorer, serde_json::Value::Object(summary), tensors))
            })
        });
}
