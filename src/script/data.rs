//! Script access to preference data: `load_preferences`, `load_prompts`, and the `Pairs`
//! operations (index, shuffle, split, take, skip, filter, prompts, score_with, relabel, with_label).
use super::api::{def, def_with_options, script_error, ScriptResult};
use super::options::{flag, noted, Decl, Ty};
use super::model::ScriptModel;
use super::SharedSession;
use crate::data::{self, Pair, Report, Schema, Scored};
use rhai::{Array, Dynamic, Engine, FnPtr, Map, NativeCallContext, INT};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

/// Preference pairs held by a script, with the response each pair currently prefers.
#[derive(Clone)]
pub struct ScriptPairs {
    pub pairs: Rc<Vec<Rc<Pair>>>,
    /// Index of the chosen response of each pair.
    pub chosen: Rc<Vec<usize>>,
    /// With soft labels (`relabel_soft`): the probability that the chosen response is preferred.
    pub confidence: Option<Rc<Vec<f64>>>,
    /// Where the current labels came from: a label name, or `relabel`.
    pub label: String,
    pub report: Rc<Report>,
}

impl ScriptPairs {
    fn subset(&self, idx: impl IntoIterator<Item = usize>) -> ScriptPairs {
        let idx: Vec<usize> = idx.into_iter().collect();
        let (p, c): (Vec<_>, Vec<_>) = idx.iter().map(|&i| (self.pairs[i].clone(), self.chosen[i])).unzip();
        let confidence = self.confidence.as_ref().map(|v| Rc::new(idx.iter().map(|&i| v[i]).collect()));
        ScriptPairs { pairs: Rc::new(p), chosen: Rc::new(c), confidence, label: self.label.clone(), report: self.report.clone() }
    }
}

fn label_of(p: &Pair, label: &str) -> ScriptResult<usize> {
    p.labels.get(label).copied().ok_or_else(|| script_error(format!("{}: the pair has no `{label}` label (it has: {})", p.origin, p.labels.keys().cloned().collect::<Vec<_>>().join(", "))))
}

fn to_map(pairs: &ScriptPairs, i: usize) -> Map {
    let p = &pairs.pairs[i];
    let c = pairs.chosen[i];
    let mut m = Map::new();
    for (k, v) in &p.extra {
        if let Ok(d) = rhai::serde::to_dynamic(v) {
            m.insert(k.into(), d);
        }
    }
    m.insert("prompt".into(), p.prompt.clone().into());
    m.insert("response_0".into(), p.responses[0].clone().into());
    m.insert("response_1".into(), p.responses[1].clone().into());
    m.insert("chosen".into(), p.responses[c].clone().into());
    m.insert("rejected".into(), p.responses[1 - c].clone().into());
    m.insert("chosen_id".into(), (c as INT).into());
    if let Some(conf) = &pairs.confidence {
        m.insert("confidence".into(), Dynamic::from_float(conf[i]));
    }
    for (k, v) in &p.labels {
        m.insert(format!("{k}_response_id").into(), (*v as INT).into());
    }
    for (i, s) in p.safe.iter().enumerate() {
        if let Some(s) = s {
            m.insert(format!("is_response_{i}_safe").into(), (*s).into());
        }
    }
    let scores: Map = p.scores.borrow().iter().map(|(k, s)| (k.into(), Dynamic::from_array(vec![s.values[0].into(), s.values[1].into()]))).collect();
    m.insert("scores".into(), scores.into());
    m.insert("origin".into(), p.origin.clone().into());
    m
}

/// Resolves a data path: as given (relative to the working folder), else next to the script.
fn data_path(session: &SharedSession, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() || p.exists() {
        return p;
    }
    let beside = session.borrow().script_dir.join(&p);
    if beside.exists() {
        beside
    } else {
        p
    }
}

fn warn_report(what: &str, report: &Report) {
    let show = |label: &str, items: &[String]| {
        if !items.is_empty() {
            let first: Vec<&str> = items.iter().take(5).map(String::as_str).collect();
            eprintln!("{what}: {} {label}: {}{}", items.len(), first.join("; "), if items.len() > 5 { "; ..." } else { "" });
        }
    };
    show("bad records skipped", &report.skipped);
    show("warnings", &report.warnings);
}

/// The options of `load_preferences`.
fn load_decl() -> Decl {
    Decl::new("load_preferences", vec![
        noted("schema", Ty::Str, "recognised from the fields", "pku, hh or plain (prompt/chosen/rejected)"),
        noted("fields", Ty::Map, "none", "the file's field for a schema field, #{prompt: \"question\"}"),
        flag("skip_bad", false, "skip bad records (reported) instead of stopping"),
        noted("label", Ty::Str, "better if the pairs have it, else safer", "the label that picks the chosen response"),
    ])
}

fn load(session: &SharedSession, path: &str, opts: &Map) -> ScriptResult<ScriptPairs> {
    let decl = load_decl();
    let o = decl.read(opts)?;
    let schema = match o.text_given("schema")? {
        None => None,
        Some(s) => Some(match s.as_str() {
            "pku" | "pku-saferlhf" => Schema::Pku,
            "hh" | "hh-rlhf" => Schema::Hh,
            "plain" => Schema::Plain,
            other => return Err(script_error(format!("option schema: \"{other}\" is not one of pku, hh, plain"))),
        }),
    };
    let mut fields = BTreeMap::new();
    if let Some(f) = o.get("fields") {
        let f = f.read_lock::<Map>().ok_or_else(|| script_error("option fields: expected a map #{schema_field: \"file_field\"}"))?;
        for (k, v) in f.iter() {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    let skip_bad = o.flag("skip_bad")?;
    let load_opts = data::LoadOptions { schema, fields, skip_bad };
    let (pairs, report) = data::load_preferences(&data_path(session, path), &load_opts).map_err(|e| script_error(format!("{e:#}")))?;
    warn_report("load_preferences", &report);
    let label = o.text_given("label")?.unwrap_or_else(|| if pairs[0].labels.contains_key("better") { "better".into() } else { "safer".into() });
    let chosen = pairs.iter().map(|p| label_of(p, &label)).collect::<ScriptResult<Vec<_>>>()?;
    Ok(ScriptPairs { pairs: Rc::new(pairs), chosen: Rc::new(chosen), confidence: None, label, report: Rc::new(report) })
}

/// The same pairs with every prompt rewritten (labels kept; score columns dropped, since the
/// scored text changed).
fn rewrap(p: &ScriptPairs, f: impl Fn(&str) -> anyhow::Result<String>) -> ScriptResult<ScriptPairs> {
    let wrapped: Vec<Rc<Pair>> = p
        .pairs
        .iter()
        .map(|x| {
            Ok(Rc::new(Pair {
                origin: x.origin.clone(),
                prompt: f(&x.prompt).map_err(|e| script_error(format!("{}: {e:#}", x.origin)))?,
                responses: x.responses.clone(),
                labels: x.labels.clone(),
                safe: x.safe,
                extra: x.extra.clone(),
                scores: Default::default(),
            }))
        })
        .collect::<ScriptResult<_>>()?;
    Ok(ScriptPairs { pairs: Rc::new(wrapped), ..p.clone() })
}

/// Relabelling weights `#{column: weight}` as numbers.
fn weights_of(weights: &Map) -> ScriptResult<BTreeMap<String, f64>> {
    let mut w = BTreeMap::new();
    for (k, v) in weights {
        let x = super::options::as_number(v).ok_or_else(|| script_error(format!("relabel: weight `{k}` must be a number, found {}", v.type_name())))?;
        w.insert(k.to_string(), x);
    }
    Ok(w)
}

fn floats(values: &Array, what: &str, n: usize) -> ScriptResult<Vec<f64>> {
    if values.len() != n {
        return Err(script_error(format!("{what}: returned {} values for {n} responses", values.len())));
    }
    super::options::numbers(values, what)
}

/// Attaches a score column from per-response values laid out as all response_0s then all
/// response_1s.
fn attach(pairs: &ScriptPairs, name: &str, source: u64, values: &[f64]) {
    let n = pairs.pairs.len();
    for (i, p) in pairs.pairs.iter().enumerate() {
        p.scores.borrow_mut().insert(name.to_string(), Scored { source, values: [values[i], values[n + i]] });
    }
}

/// Whether some pair lacks column `name` as `source` computed it (a column of the same name from
/// another source is computed again and replaced, never reused).
fn missing(pairs: &ScriptPairs, name: &str, source: u64) -> bool {
    pairs.pairs.iter().any(|p| p.scores.borrow().get(name).map(|s| s.source) != Some(source))
}

/// Identifies a script function as a score source: its name (an anonymous function's name is
/// derived from its body) and the values it captured.
fn function_id(f: &FnPtr) -> u64 {
    let mut h = crate::util::Hasher::new();
    h.bytes(f.fn_name().as_bytes());
    for v in f.curry() {
        h.bytes(format!("{v:?}").as_bytes());
    }
    h.finish()
}

fn both(pairs: &ScriptPairs) -> (Array, Array) {
    let prompts: Array = pairs.pairs.iter().chain(pairs.pairs.iter()).map(|p| p.prompt.clone().into()).collect();
    let responses: Array = pairs.pairs.iter().map(|p| p.responses[0].clone().into()).chain(pairs.pairs.iter().map(|p| p.responses[1].clone().into())).collect();
    (prompts, responses)
}

pub fn register(engine: &mut Engine, session: SharedSession) {
    engine.register_type_with_name::<ScriptPairs>("Pairs");
    let s = session.clone();
    def(engine, "load_preferences", &["path: string", "Pairs"], "Loads preference pairs (PKU-SafeRLHF, HH-RLHF or prompt/chosen/rejected; JSONL, .jsonl.gz, JSON or CSV).", move |path: &str| load(&s, path, &Map::new()));
    let s = session.clone();
    def_with_options(engine, "load_preferences", &["path: string", "opts: map", "Pairs"], "Loads preference pairs with options.", &[load_decl()], move |path: &str, opts: Map| load(&s, path, &opts));
    let s = session.clone();
    def(engine, "read_jsonl", &["path: string", "array"], "The records of a JSONL file as maps (a prompt set with its fields, samples written by write_jsonl); bad lines are errors naming file:line.", move |path: &str| -> ScriptResult<Array> {
        let file = data_path(&s, path);
        let text = std::fs::read_to_string(&file).map_err(|e| script_error(format!("read_jsonl: {}: {e}", file.display())))?;
        let mut out = Array::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| script_error(format!("{}:{}: {e}", file.display(), i + 1)))?;
            out.push(rhai::serde::to_dynamic(v).map_err(|e| script_error(format!("{}:{}: {e}", file.display(), i + 1)))?);
        }
        Ok(out)
    });
    let s = session.clone();
    def(engine, "load_prompts", &["path: string", "array"], "Prompts from a text file (one per line) or the `prompt` field of JSONL, JSON or CSV records.", move |path: &str| -> ScriptResult<Array> {
        let prompts = data::load_prompts(&data_path(&s, path)).map_err(|e| script_error(format!("{e:#}")))?;
        Ok(prompts.into_iter().map(Dynamic::from).collect())
    });

    def(engine, "len", &["p: Pairs", "int"], "The number of pairs.", |p: &mut ScriptPairs| p.pairs.len() as INT);
    def(engine, "index$get$", &["p: Pairs", "i: int", "map"], "Pair i as a map: prompt, response_0/1, chosen, rejected, labels, safety flags, scores, extra fields.", |p: &mut ScriptPairs, i: INT| -> ScriptResult<Map> {
        let n = p.pairs.len() as INT;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(script_error(format!("index {i} out of range for {n} pairs")));
        }
        Ok(to_map(p, j as usize))
    });
    def(engine, "shuffle", &["p: Pairs", "seed: int", "Pairs"], "The pairs in a seeded random order.", |p: &mut ScriptPairs, seed: INT| {
        let mut idx: Vec<usize> = (0..p.pairs.len()).collect();
        data::Rng::new(seed as u64).shuffle(&mut idx);
        p.subset(idx)
    });
    def(engine, "split", &["p: Pairs", "fraction: float", "array"], "[first, rest]: the first `fraction` of the pairs (rounded) and the others.", |p: &mut ScriptPairs, f: f64| -> ScriptResult<Array> {
        if !(0.0..=1.0).contains(&f) {
            return Err(script_error(format!("split: fraction {f} is not between 0 and 1")));
        }
        let k = ((p.pairs.len() as f64) * f).round() as usize;
        Ok(vec![Dynamic::from(p.subset(0..k)), Dynamic::from(p.subset(k..p.pairs.len()))])
    });
    def(engine, "take", &["p: Pairs", "n: int", "Pairs"], "The first n pairs.", |p: &mut ScriptPairs, n: INT| p.subset(0..(n.max(0) as usize).min(p.pairs.len())));
    def(engine, "skip", &["p: Pairs", "n: int", "Pairs"], "All but the first n pairs.", |p: &mut ScriptPairs, n: INT| p.subset((n.max(0) as usize).min(p.pairs.len())..p.pairs.len()));
    def(engine, "filter", &["p: Pairs", "keep: FnPtr", "Pairs"], "The pairs for which `keep(pair_map)` returns true.", |ctx: NativeCallContext, p: &mut ScriptPairs, keep: FnPtr| -> ScriptResult<ScriptPairs> {
        let mut idx = Vec::new();
        for i in 0..p.pairs.len() {
            if keep.call_within_context::<bool>(&ctx, (to_map(p, i),))? {
                idx.push(i);
            }
        }
        Ok(p.subset(idx))
    });
    def(engine, "prompts", &["p: Pairs", "array"], "The distinct prompts, in order of first appearance.", |p: &mut ScriptPairs| -> Array {
        let mut seen = std::collections::HashSet::new();
        p.pairs.iter().filter(|x| seen.insert(x.prompt.clone())).map(|x| x.prompt.clone().into()).collect()
    });
    def(engine, "with_label", &["p: Pairs", "label: string", "Pairs"], "The same pairs with the chosen response taken from a label (\"better\" or \"safer\").", |p: &mut ScriptPairs, label: &str| -> ScriptResult<ScriptPairs> {
        let chosen = p.pairs.iter().map(|x| label_of(x, label)).collect::<ScriptResult<Vec<_>>>()?;
        Ok(ScriptPairs { chosen: Rc::new(chosen), confidence: None, label: label.to_string(), ..p.clone() })
    });
    let s = session;
    def(engine, "score_with", &["p: Pairs", "name: string", "scorer: Model", "Pairs"], "Attaches score column `name` (one value per response) from a score model; cached until the column is asked of other weights.", move |p: &mut ScriptPairs, name: &str, scorer: ScriptModel| -> ScriptResult<ScriptPairs> {
        let source = scorer.weights_id();
        if missing(p, name, source) {
            let (prompts, responses) = both(p);
            let dist = s.borrow().dist.clone();
            let values = super::model::score(&scorer, dist.as_deref(), &prompts, &responses)?;
            attach(p, name, source, &floats(&values, "score_with", 2 * p.pairs.len())?);
        }
        Ok(p.clone())
    });
    def(engine, "score_with", &["p: Pairs", "name: string", "utility: FnPtr", "Pairs"], "Attaches score column `name` from a script function of (prompts, responses) returning one number per response; cached until the column is asked of another function.", |ctx: NativeCallContext, p: &mut ScriptPairs, name: &str, f: FnPtr| -> ScriptResult<ScriptPairs> {
        let source = function_id(&f);
        if missing(p, name, source) {
            let (prompts, responses) = both(p);
            let values: Array = f.call_within_context(&ctx, (prompts, responses))?;
            attach(p, name, source, &floats(&values, &format!("score_with(\"{name}\")"), 2 * p.pairs.len())?);
        }
        Ok(p.clone())
    });
    def(engine, "scores", &["p: Pairs", "name: string", "array"], "Score column `name` as an array of [score of response_0, score of response_1].", |p: &mut ScriptPairs, name: &str| -> ScriptResult<Array> {
        p.pairs
            .iter()
            .map(|x| {
                let s = x.scores.borrow();
                let v = s.get(name).ok_or_else(|| script_error(format!("{}: no score column `{name}`", x.origin)))?.values;
                Ok(Dynamic::from_array(vec![v[0].into(), v[1].into()]))
            })
            .collect()
    });
    def(engine, "relabel", &["p: Pairs", "weights: map", "seed: int", "Pairs"], "Pairs relabelled from r = Σ weight·score: response 1 is chosen with probability sigmoid(r(y1) - r(y0)), seeded.", |p: &mut ScriptPairs, weights: Map, seed: INT| -> ScriptResult<ScriptPairs> {
        let chosen = data::relabel(&p.pairs, &weights_of(&weights)?, seed as u64).map_err(|e| script_error(format!("{e:#}")))?;
        Ok(ScriptPairs { chosen: Rc::new(chosen), confidence: None, label: "relabel".into(), ..p.clone() })
    });
    def(engine, "relabel_soft", &["p: Pairs", "weights: map", "Pairs"], "The expectation of relabel: the response with the higher r = Σ weight·score is chosen with confidence sigmoid(|Δr|), which DPO uses as that pair's soft label (no label noise).", |p: &mut ScriptPairs, weights: Map| -> ScriptResult<ScriptPairs> {
        let (chosen, confidence) = data::relabel_soft(&p.pairs, &weights_of(&weights)?).map_err(|e| script_error(format!("{e:#}")))?;
        Ok(ScriptPairs { chosen: Rc::new(chosen), confidence: Some(Rc::new(confidence)), label: "relabel_soft".into(), ..p.clone() })
    });
    def(engine, "with_chat", &["p: Pairs", "model: Model", "Pairs"], "The same pairs with each prompt as one user message in the model's chat template (as m.chat does); labels kept, scores recomputed.", |p: &mut ScriptPairs, m: ScriptModel| -> ScriptResult<ScriptPairs> {
        m.with(|m| rewrap(p, |prompt| m.tokenizer.chat(prompt)))
    });
    def(engine, "with_template", &["p: Pairs", "template: string", "Pairs"], "The same pairs with each prompt put into a template at `{prompt}` (e.g. the safe-rlhf \"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:\"); labels kept, scores recomputed.", |p: &mut ScriptPairs, template: &str| -> ScriptResult<ScriptPairs> {
        if !template.contains("{prompt}") {
            return Err(script_error(format!("with_template: the template {template:?} has no {{prompt}}")));
        }
        rewrap(p, |prompt| Ok(template.replace("{prompt}", prompt)))
    });
    def(engine, "get$skipped", &["p: Pairs", "array"], "Bad records skipped at load (with skip_bad), as `file:line: problem`.", |p: &mut ScriptPairs| -> Array { p.report.skipped.iter().map(|s| s.clone().into()).collect() });
    def(engine, "get$warnings", &["p: Pairs", "array"], "Records kept but reported at load: empty or identical responses.", |p: &mut ScriptPairs| -> Array { p.report.warnings.iter().map(|s| s.clone().into()).collect() });
    def(engine, "get$label", &["p: Pairs", "string"], "Where the chosen responses come from: a label name or \"relabel\".", |p: &mut ScriptPairs| p.label.clone());
}
