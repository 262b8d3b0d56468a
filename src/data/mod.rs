//! Preference pairs and prompts: loaders for the PKU-SafeRLHF, HH-RLHF and plain
//! prompt/chosen/rejected schemas (JSONL, gzip JSONL, JSON arrays, CSV), any other schema through
//! a field mapping, per-pair score columns, and relabelling from a weighted sum of scores.
//! Every bad record is reported with its file, line and field; nothing is dropped silently.
pub mod batch;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

/// One preference pair: a prompt and two responses with their labels.
#[derive(Debug)]
pub struct Pair {
    /// Where it came from: `file:line` (or `file:record N` for JSON arrays).
    pub origin: String,
    pub prompt: String,
    pub responses: [String; 2],
    /// Which response wins under each label: `better` (helpfulness), `safer`, or others.
    pub labels: BTreeMap<String, usize>,
    /// `is_response_{0,1}_safe` when the data has them.
    pub safe: [Option<bool>; 2],
    /// Fields the schema does not use, kept for scripts.
    pub extra: Map<String, Value>,
    /// Score columns attached by `score_with`, one value per response, with what computed them.
    pub scores: RefCell<BTreeMap<String, Scored>>,
}

/// One score column's values for a pair, and which source (a score model's weights, or a script
/// function) computed them: the column is reused only for the same source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub source: u64,
    pub values: [f64; 2],
}

/// Which schema a file uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schema {
    /// `prompt`, `response_0`, `response_1`, `better_response_id`, `safer_response_id`,
    /// `is_response_0_safe`, `is_response_1_safe`.
    Pku,
    /// `chosen` / `rejected` transcripts (`\n\nHuman: ... \n\nAssistant: ...`).
    Hh,
    /// `prompt`, `chosen`, `rejected`.
    Plain,
}

/// How to read a preference file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `None`: detected from the first record's fields.
    pub schema: Option<Schema>,
    /// Renames: schema field name -> the file's field name (e.g. `prompt` -> `question`).
    pub fields: BTreeMap<String, String>,
    /// Skip bad records (reported) instead of failing on the first one.
    pub skip_bad: bool,
}

/// What loading found besides the pairs.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Skipped records: `file:line: problem`.
    pub skipped: Vec<String>,
    /// Kept but suspicious records (an empty response, two identical responses).
    pub warnings: Vec<String>,
}

/// A gzipped file may inflate to this many times its size, or to `GZIP_FLOOR` bytes, whichever is more.
pub const MAX_GZIP_RATIO: u64 = 100;
pub const GZIP_FLOOR: u64 = 64 << 20;

/// A text file's contents, gunzipped when it is gzip (by extension or magic bytes).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") || bytes.starts_with(&[0x1f, 0x8b]) {
        // Text compresses 3-10x (templated data a few tens); a small file that inflates past
        // both bounds is a gzip bomb, stopped before it is held in memory.
        let limit = (bytes.len() as u64).saturating_mul(MAX_GZIP_RATIO).max(GZIP_FLOOR);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).take(limit + 1).read_to_string(&mut text).with_context(|| format!("{}: not valid gzip text", path.display()))?;
        if text.len() as u64 > limit {
            bail!("{}: decompresses to more than {limit} bytes ({MAX_GZIP_RATIO} times its {} compressed bytes); if that is real, decompress it first", path.display(), bytes.len());
        }
        Ok(text)
    } else {
        String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
    }
}

/// The records of a file as JSON objects with their location: JSONL (one per line), a JSON
/// array, or CSV with a header row. Malformed records come back as errors in place.
pub fn records(path: &Path) -> Result<Vec<(String, Result<Map<String, Value>>)>> {
    let text = read_text(path)?;
    let file = path.display().to_string();
    let name = file.trim_end_matches(".gz");
    let mut out = Vec::new();
    if name.ends_with(".csv") {
        let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let headers = r.headers().with_context(|| format!("{file}:1: cannot read the CSV header"))?.clone();
        for rec in r.records() {
            match rec {
                Ok(rec) => {
                    let line = rec.position().map_or(0, |p| p.line());
                    let map = headers.iter().zip(rec.iter()).map(|(h, v)| (h.to_string(), Value::String(v.to_string()))).collect();
                    out.push((format!("{file}:{line}"), Ok(map)));
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    out.push((format!("{file}:{line}"), Err(anyhow::anyhow!("malformed CSV record: {e}"))));
                }
            }
        }
        return Ok(out);
    }
    if text.trim_start().starts_with('[') {
        let all: Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{file}:{}:{}: not valid JSON: {e}", e.line(), e.column()))?;
        for (i, v) in all.as_array().into_iter().flatten().enumerate() {
            let at = format!("{file}: record {i}");
            out.push((at, v.as_object().cloned().ok_or_else(|| anyhow::anyhow!("expected an object"))));
        }
        return Ok(out);
    }
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{file}:{}", i + 1);
        let rec = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(anyhow::anyhow!("expected a JSON object")),
            Err(e) => Err(anyhow::anyhow!("not valid JSON: {e}")),
        };
        out.push((at, rec));
    }
    Ok(out)
}

fn detect(first: &Map<String, Value>, fields: &BTreeMap<String, String>) -> Result<Schema> {
    let has = |k: &str| first.contains_key(fields.get(k).map_or(k, String::as_str));
    Ok(if has("response_0") && has("response_1") {
        Schema::Pku
    } else if has("chosen") && has("rejected") && has("prompt") {
        Schema::Plain
    } else if has("chosen") && has("rejected") {
        Schema::Hh
    } else {
        bail!("cannot tell the schema from the fields {:?}: expected PKU-SafeRLHF (response_0, response_1, ...), HH-RLHF (chosen, rejected) or plain (prompt, chosen, rejected); or give `schema` and `fields`", first.keys().collect::<Vec<_>>())
    })
}

struct Fields<'a> {
    rec: &'a Map<String, Value>,
    names: &'a BTreeMap<String, String>,
}

impl Fields<'_> {
    fn name<'b>(&'b self, k: &'b str) -> &'b str {
        self.names.get(k).map_or(k, String::as_str)
    }
    fn string(&self, k: &str) -> Result<String> {
        match self.rec.get(self.name(k)) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => bail!("field `{}`: expected a string, found {}", self.name(k), kind(other)),
            None => bail!("missing field `{}`", self.name(k)),
        }
    }
    fn id(&self, k: &str) -> Result<Option<usize>> {
        let v = match self.rec.get(self.name(k)) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(0) => Ok(Some(0)),
            Some(1) => Ok(Some(1)),
            Some(other) => bail!("field `{}`: expected 0 or 1, found {other}", self.name(k)),
            None => bail!("field `{}`: expected 0 or 1, found {}", self.name(k), kind(v)),
        }
    }
    fn flag(&self, k: &str) -> Result<Option<bool>> {
        match self.rec.get(self.name(k)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => bail!("field `{}`: expected true or false, found {}", self.name(k), kind(other)),
        }
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Splits an HH-RLHF transcript at its last `\n\nAssistant:` into (prompt, response).
pub fn split_hh(text: &str) -> Result<(String, String)> {
    const TAG: &str = "\n\nAssistant:";
    let at = text.rfind(TAG).context("no \"\\n\\nAssistant:\" turn in the transcript")?;
    Ok((text[..at + TAG.len()].to_string(), text[at + TAG.len()..].trim_start().to_string()))
}

fn pair_from(rec: &Map<String, Value>, schema: Schema, names: &BTreeMap<String, String>, origin: String) -> Result<Pair> {
    let f = Fields { rec, names };
    let mut labels = BTreeMap::new();
    let mut used: Vec<String> = Vec::new();
    let (prompt, responses, safe) = match schema {
        Schema::Pku => {
            let p = f.string("prompt")?;
            let r = [f.string("response_0")?, f.string("response_1")?];
            let better = f.id("better_response_id")?;
            let safer = f.id("safer_response_id")?;
            if better.is_none() && safer.is_none() {
                bail!("missing field `{}` (and `{}`)", f.name("better_response_id"), f.name("safer_response_id"));
            }
            labels.extend(better.map(|b| ("better".to_string(), b)));
            labels.extend(safer.map(|s| ("safer".to_string(), s)));
            let safe = [f.flag("is_response_0_safe")?, f.flag("is_response_1_safe")?];
            used.extend(["prompt", "response_0", "response_1", "better_response_id", "safer_response_id", "is_response_0_safe", "is_response_1_safe"].map(String::from));
            (p, r, safe)
        }
        Schema::Hh => {
            let chosen = f.string("chosen")?;
            let rejected = f.string("rejected")?;
            let (p, c) = split_hh(&chosen).with_context(|| format!("field `{}`", f.name("chosen")))?;
            let (p2, r) = split_hh(&rejected).with_context(|| format!("field `{}`", f.name("rejected")))?;
            if p != p2 {
                bail!("fields `{}` and `{}` have different conversations before the last assistant turn", f.name("chosen"), f.name("rejected"));
            }
            labels.insert("better".into(), 0);
            used.extend(["chosen", "rejected"].map(String::from));
            (p, [c, r], [None, None])
        }
        Schema::Plain => {
            let p = f.string("prompt")?;
            labels.insert("better".into(), 0);
            used.extend(["prompt", "chosen", "rejected"].map(String::from));
            (p, [f.string("chosen")?, f.string("rejected")?], [None, None])
        }
    };
    let used: Vec<&str> = used.iter().map(|k| f.name(k)).collect();
    let extra = rec.iter().filter(|(k, _)| !used.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(Pair { origin, prompt, responses, labels, safe, extra, scores: RefCell::new(BTreeMap::new()) })
}

/// Loads preference pairs. A bad record fails the load with `file:line: problem`, or with
/// `skip_bad` is skipped and listed in the report.
pub fn load_preferences(path: &Path, opts: &LoadOptions) -> Result<(Vec<Rc<Pair>>, Report)> {
    let recs = records(path)?;
    let mut report = Report::default();
    let mut pairs = Vec::new();
    let mut schema = opts.schema;
    for (origin, rec) in recs {
        let parsed = rec.and_then(|r| {
            let s = match schema {
                Some(s) => s,
                None => *schema.insert(detect(&r, &opts.fields)?),
            };
            pair_from(&r, s, &opts.fields, origin.clone())
        });
        match parsed {
            Ok(p) => {
                if p.responses.iter().any(|r| r.trim().is_empty()) {
                    report.warnings.push(format!("{origin}: a response is empty"));
                }
                if p.responses[0] == p.responses[1] {
                    report.warnings.push(format!("{origin}: the two responses are identical"));
                }
                pairs.push(Rc::new(p));
            }
            Err(e) if opts.skip_bad => report.skipped.push(format!("{origin}: {e:#}")),
            Err(e) => bail!("{origin}: {e:#}"),
        }
    }
    if pairs.is_empty() {
        bail!("{}: no preference pairs{}", path.display(), if report.skipped.is_empty() { String::new() } else { format!(" ({} bad records skipped)", report.skipped.len()) });
    }
    Ok((pairs, report))
}

/// Loads prompts: one per line in a text file, or the `prompt` field of JSONL / JSON / CSV
/// records.
pub fn load_prompts(path: &Path) -> Result<Vec<String>> {
    let file = path.display().to_string();
    let name = file.trim_end_matches(".gz");
    if name.ends_with(".txt") {
        let text = read_text(path)?;
        let prompts: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.replace("\\n", "\n")).collect();
        if prompts.is_empty() {
            bail!("{file}: no prompts");
        }
        return Ok(prompts);
    }
    let mut out = Vec::new();
    for (origin, rec) in records(path)? {
        let rec = rec.map_err(|e| anyhow::anyhow!("{origin}: {e:#}"))?;
        match rec.get("prompt") {
            Some(Value::String(s)) => out.push(s.clone()),
            Some(other) => bail!("{origin}: field `prompt`: expected a string, found {}", kind(other)),
            None => bail!("{origin}: missing field `prompt`"),
        }
    }
    if out.is_empty() {
        bail!("{file}: no prompts");
    }
    Ok(out)
}

/// `sigmoid(x)` computed without overflow.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// A small, seedable generator (SplitMix64) for shuffles and relabelling: fixed across platforms
/// and versions, so a seed names the same labels forever.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The method's relabelling (docs/method.md): for each pair, `r_λ = Σ_k w_k · score_k`, and the label
/// is 1 (response 1 chosen) with probability `sigmoid(r_λ(y1) - r_λ(y0))`. Returns the index of
/// the chosen response per pair. Every weighted column must have been scored.
pub fn relabel(pairs: &[Rc<Pair>], weights: &BTreeMap<String, f64>, seed: u64) -> Result<Vec<usize>> {
    let mut rng = Rng::new(seed);
    pairs
        .iter()
        .map(|p| {
            let diff = weighted_difference(p, weights)?;
            // Draw for every pair, so the labels of one pair do not depend on the others' scores.
            let u = rng.uniform();
            Ok(if u < sigmoid(diff) { 1 } else { 0 })
        })
        .collect()
}

/// The expectation of `relabel` (its Rao-Blackwellisation): the chosen response is the one with
/// the higher `r_λ`, kept with the probability `sigmoid(|r_λ(y1) - r_λ(y0)|)` that a Bernoulli
/// label picks it. DPO then minimises the expected loss over labels (each pair's label
/// smoothing is one minus that probability), with the same optimum and no label noise.
pub fn relabel_soft(pairs: &[Rc<Pair>], weights: &BTreeMap<String, f64>) -> Result<(Vec<usize>, Vec<f64>)> {
    let mut chosen = Vec::with_capacity(pairs.len());
    let mut confidence = Vec::with_capacity(pairs.len());
    for p in pairs {
        let diff = weighted_difference(p, weights)?;
        chosen.push(if diff >= 0.0 { 1 } else { 0 });
        confidence.push(sigmoid(diff.abs()));
    }
    Ok((chosen, confidence))
}

/// `r_λ(y1) - r_λ(y0)` with `r_λ = Σ_k w_k · score_k`.
fn weighted_difference(p: &Pair, weights: &BTreeMap<String, f64>) -> Result<f64> {
    let scores = p.scores.borrow();
    let mut diff = 0.0;
    for (name, w) in weights {
        let s = scores.get(name).with_context(|| format!("relabel: pair at {} has no score column `{name}` (attach it with score_with)", p.origin))?;
        diff += w * (s.values[1] - s.values[0]);
    }
    Ok(diff)
}
