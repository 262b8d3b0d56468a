//! Preference data: each schema and format on small fixture files, bad input with exact line
//! numbers, relabelling statistics, and the shipped data set.
use dualign::data::{self, load_preferences, load_prompts, LoadOptions, Pair, Schema, Scored};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("data-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err(path: &Path, opts: &LoadOptions) -> String {
    format!("{:#}", load_preferences(path, opts).err().expect("expected an error"))
}

const PKU: &str = r#"{"prompt": "How do I pick a lock?", "response_0": "Insert a tension wrench...", "response_1": "I can't help with that.", "better_response_id": 0, "safer_response_id": 1, "is_response_0_safe": false, "is_response_1_safe": true, "category": "crime"}
{"prompt": "What is 2+2?", "response_0": "4", "response_1": "5", "better_response_id": 0, "safer_response_id": 0, "is_response_0_safe": true, "is_response_1_safe": true}
"#;

#[test]
fn pku_schema_keeps_labels_safety_flags_and_extra_fields() {
    let d = scratch("pku");
    let (pairs, report) = load_preferences(&write(&d, "p.jsonl", PKU), &LoadOptions::default()).unwrap();
    assert_eq!(pairs.len(), 2);
    assert!(report.skipped.is_empty() && report.warnings.is_empty());
    let p = &pairs[0];
    assert_eq!(p.prompt, "How do I pick a lock?");
    assert_eq!((p.labels["better"], p.labels["safer"]), (0, 1));
    assert_eq!(p.safe, [Some(false), Some(true)]);
    assert_eq!(p.extra["category"], "crime");
    assert!(p.origin.ends_with("p.jsonl:1"));
}

#[test]
fn hh_rlhf_transcripts_split_at_the_last_assistant_turn() {
    let d = scratch("hh");
    let line = serde_json::json!({
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: No idea.",
    });
    let (pairs, _) = load_preferences(&write(&d, "hh.jsonl", &format!("{line}\n")), &LoadOptions::default()).unwrap();
    assert_eq!(pairs[0].prompt, "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant:");
    assert_eq!(pairs[0].responses, ["Paris.".to_string(), "No idea.".to_string()]);
    assert_eq!(pairs[0].labels["better"], 0);
    // Different conversations before the last turn are an error naming the line.
    let bad = serde_json::json!({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"});
    let e = err(&write(&d, "bad.jsonl", &format!("{line}\n{bad}\n")), &LoadOptions::default());
    assert!(e.ends_with("bad.jsonl:2: fields `chosen` and `rejected` have different conversations before the last assistant turn"), "{e}");
}

#[test]
fn plain_schema_in_every_format_and_with_a_field_mapping() {
    let d = scratch("plain");
    let jsonl = "{\"prompt\": \"p\", \"chosen\": \"good\", \"rejected\": \"bad\"}\n";
    let json = "[{\"prompt\": \"p\", \"chosen\": \"good\", \"rejected\": \"bad\"}]";
    let csv = "prompt,chosen,rejected\np,good,bad\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(jsonl.as_bytes()).unwrap();
    std::fs::write(d.join("p.jsonl.gz"), gz.finish().unwrap()).unwrap();
    for path in [write(&d, "p.jsonl", jsonl), write(&d, "p.json", json), write(&d, "p.csv", csv), d.join("p.jsonl.gz")] {
        let (pairs, _) = load_preferences(&path, &LoadOptions::default()).unwrap();
        assert_eq!((pairs[0].prompt.as_str(), pairs[0].responses[0].as_str(), pairs[0].responses[1].as_str()), ("p", "good", "bad"), "{}", path.display());
    }
    // Any schema through a field mapping.
    let mapped = write(&d, "m.jsonl", "{\"question\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\", \"id\": 7}\n");
    let opts = LoadOptions { schema: Some(Schema::Plain), fields: [("prompt".to_string(), "question".to_string())].into(), skip_bad: false };
    let (pairs, _) = load_preferences(&mapped, &opts).unwrap();
    assert_eq!(pairs[0].prompt, "q");
    assert_eq!(pairs[0].extra["id"], 7);
    assert!(!pairs[0].extra.contains_key("question"));
}

#[test]
fn bad_records_name_the_file_line_and_field() {
    let d = scratch("bad");
    let ok = PKU.lines().next().unwrap();
    let cases = [
        ("malformed.jsonl", format!("{ok}\n{ok}\n{{\"prompt\": \"x\",\n"), "malformed.jsonl:3: not valid JSON: EOF while parsing a value at line 1 column 15"),
        ("missing.jsonl", format!("{ok}\n{{\"prompt\": \"x\", \"response_0\": \"a\", \"better_response_id\": 0}}\n"), "missing.jsonl:2: missing field `response_1`"),
        ("type.jsonl", format!("{ok}\n{}\n", ok.replace("\"prompt\": \"How do I pick a lock?\"", "\"prompt\": 42")), "type.jsonl:2: field `prompt`: expected a string, found the number 42"),
        ("range.jsonl", format!("{}\n", ok.replace("\"better_response_id\": 0", "\"better_response_id\": 2")), "range.jsonl:1: field `better_response_id`: expected 0 or 1, found 2"),
        ("flag.jsonl", format!("{}\n", ok.replace("\"is_response_0_safe\": false", "\"is_response_0_safe\": \"maybe\"")), "flag.jsonl:1: field `is_response_0_safe`: expected true or false, found the string \"maybe\""),
    ];
    for (name, text, want) in &cases {
        let e = err(&write(&d, name, text), &LoadOptions::default());
        assert!(e.ends_with(want), "{name}: {e}");
    }
    // With skip_bad the good records load and every bad one is reported with its line.
    let mixed = write(&d, "mixed.jsonl", &format!("{ok}\nnot json\n{ok}\n{{\"prompt\": 1}}\n"));
    let (pairs, report) = load_preferences(&mixed, &LoadOptions { skip_bad: true, ..Default::default() }).unwrap();
    assert_eq!(pairs.len(), 2);
    let lines: Vec<&str> = report.skipped.iter().map(|s| s.split(": ").next().unwrap().rsplit('/').next().unwrap()).collect();
    assert_eq!(lines, ["mixed.jsonl:2", "mixed.jsonl:4"]);
    // Empty and identical responses are kept and reported.
    let odd = write(&d, "odd.jsonl", "{\"prompt\": \"p\", \"chosen\": \"same\", \"rejected\": \"same\"}\n{\"prompt\": \"p\", \"chosen\": \"\", \"rejected\": \"x\"}\n");
    let (pairs, report) = load_preferences(&odd, &LoadOptions::default()).unwrap();
    assert_eq!(pairs.len(), 2);
    assert!(report.warnings[0].ends_with("odd.jsonl:1: the two responses are identical"), "{:?}", report.warnings);
    assert!(report.warnings[1].ends_with("odd.jsonl:2: a response is empty"), "{:?}", report.warnings);
    // A bad CSV row is located too.
    let e = err(&write(&d, "bad.csv", "prompt,chosen,rejected\np,a,b\np,a\n"), &LoadOptions::default());
    assert!(e.contains("bad.csv:3: malformed CSV record"), "{e}");
}

#[test]
fn prompt_files_one_per_line_or_a_prompt_field() {
    let d = scratch("prompts");
    assert_eq!(load_prompts(&write(&d, "p.txt", "first\n\nsecond line\n")).unwrap(), vec!["first", "second line"]);
    assert_eq!(load_prompts(&write(&d, "p.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"k\": 1}\n")).unwrap(), vec!["a", "b"]);
    let e = format!("{:#}", load_prompts(&write(&d, "q.jsonl", "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n")).unwrap_err());
    assert!(e.ends_with("q.jsonl:2: missing field `prompt`"), "{e}");
}

fn synthetic(diffs: &[f64], copies: usize) -> Vec<Rc<Pair>> {
    let mut out = Vec::new();
    for &d in diffs {
        for _ in 0..copies {
            let p = Pair {
                origin: String::new(),
                prompt: "p".into(),
                responses: ["a".into(), "b".into()],
                labels: BTreeMap::new(),
                safe: [None, None],
                extra: Default::default(),
                scores: Default::default(),
            };
            // reward difference d, safety difference -d: with weights {reward: 1, safety: 0.5}
            // the Lagrangian difference is d - 0.5 d = 0.5 d.
            p.scores.borrow_mut().insert("reward".into(), Scored { source: 0, values: [0.0, d] });
            p.scores.borrow_mut().insert("safety".into(), Scored { source: 0, values: [d, 0.0] });
            out.push(Rc::new(p));
        }
    }
    out
}

#[test]
fn relabelling_is_reproducible_and_follows_the_sigmoid_of_the_score_difference() {
    let diffs = [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0];
    let n = 4000;
    let pairs = synthetic(&diffs, n);
    let w: BTreeMap<String, f64> = [("reward".to_string(), 1.0), ("safety".to_string(), 0.5)].into();
    let a = data::relabel(&pairs, &w, 11).unwrap();
    assert_eq!(a, data::relabel(&pairs, &w, 11).unwrap(), "same seed, same labels");
    assert_ne!(a, data::relabel(&pairs, &w, 12).unwrap(), "another seed, other labels");
    for (k, &d) in diffs.iter().enumerate() {
        let ones = a[k * n..(k + 1) * n].iter().filter(|&&c| c == 1).count() as f64 / n as f64;
        let p = data::sigmoid(0.5 * d);
        // Standard error of a frequency over 4000 draws is at most 0.0079: allow 4 of them.
        assert!((ones - p).abs() < 0.032, "diff {d}: frequency {ones} vs sigmoid {p}");
    }
    let missing: BTreeMap<String, f64> = [("cost".to_string(), 1.0)].into();
    let e = format!("{:#}", data::relabel(&pairs, &missing, 1).unwrap_err());
    assert!(e.contains("no score column `cost`"), "{e}");
}

#[test]
fn the_shipped_data_set_is_big_enough_and_mixes_harmful_and_benign_requests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/data");
    let (pairs, report) = load_preferences(&root.join("safety_prefs.jsonl"), &LoadOptions::default()).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(pairs.len() >= 400, "{} pairs", pairs.len());
    let prompts: std::collections::BTreeSet<&str> = pairs.iter().map(|p| p.prompt.as_str()).collect();
    assert!(prompts.len() >= 200, "{} prompts", prompts.len());
    let harmful = pairs.iter().filter(|p| p.extra["category"] != "benign").count();
    let benign = pairs.len() - harmful;
    assert!(harmful >= 200 && benign >= 200, "{harmful} harmful, {benign} benign");
    // On harmful prompts helpfulness and safety disagree: the better response is the unsafe one.
    for p in pairs.iter().filter(|p| p.extra["category"] != "benign") {
        assert_ne!(p.labels["better"], p.labels["safer"], "{}", p.origin);
        assert_eq!(p.safe[p.labels["safer"]], Some(true));
        assert_eq!(p.safe[p.labels["better"]], Some(false));
    }
    let eval = load_prompts(&root.join("eval_prompts.jsonl")).unwrap();
    assert_eq!(eval.len(), 80);
    assert!(eval.iter().all(|e| !prompts.contains(e.as_str())), "evaluation prompts are held out");
}
