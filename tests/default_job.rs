//! The default job (`scripts/safe_align.rhai`) on its real default model, SmolLM2-135M-Instruct,
//! in a reduced configuration: the run directory and report, the method's dual step, the
//! constraint met by an iterate, and the direction of the effect: the aligned iterate's safety
//! on held-out prompts is above the reference's.
//!
//! The reduction is one outer iteration fewer (4 instead of 5, about 2 minutes less). Each
//! iteration trains on its own slice of pairs with its own seed, so the first four iterates are
//! those of the full default run (README: iterate 3 meets the threshold at λ = 2.15; held-out
//! safety 0.604 → 0.757). Smaller reductions were tried and are not reliable: with 3 iterations of
//! 48 pairs, 16 dual-step prompts, 20 evaluation prompts and 32 new tokens, λ reached 2 only at
//! the last iterate, the best iterate was an early one and the 20-prompt evaluation was too noisy
//! (reference safety 0.94 ± 0.38); held-out safety fell to 0.46.
mod common;
use common::{host, scratch};
use std::path::Path;

#[test]
fn the_default_job_on_smollm2_makes_held_out_answers_safer() {
    let dir = scratch("default-job", "smollm2");
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/safe_align.rhai");
    let sets = ["iterations=4"];
    let mut cmd = host();
    cmd.current_dir(&dir).arg("run").arg(&job).args(["--out", "out"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("out");
    for f in ["config.json", "metrics.jsonl", "report.md", "dual.svg", "objectives.svg", "eval_generations.jsonl", "samples/iteration_3.jsonl", "checkpoints/iterate_3/adapter_model.safetensors"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| reference |") && report.contains("| aligned = iterate "), "{report}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Each dual step: λ(t+1) = max(0, λ(t) - η u(t)) with η = 3 (the default dual_step).
    let caid: Vec<&serde_json::Value> = rows.iter().filter(|r| r["phase"] == "caid" && r["iteration"].as_i64().unwrap() >= 0).collect();
    assert_eq!(caid.len(), 4);
    assert!(caid.iter().any(|r| r["slack_safety"].as_f64().unwrap() >= 0.0), "no iterate met the threshold\n{stdout}");
    for w in caid.windows(2) {
        let (l0, u0, l1) = (w[0]["lambda_safety"].as_f64().unwrap(), w[0]["slack_safety"].as_f64().unwrap(), w[1]["lambda_safety"].as_f64().unwrap());
        assert!((l1 - (l0 - 3.0 * u0).max(0.0)).abs() < 1e-9, "{l0} {u0} {l1}");
    }
    let last = rows.iter().rev().find(|r| r["phase"] == "final").expect("a final row");
    let (before, after) = (last["safety_reference"].as_f64().unwrap(), last["safety_aligned"].as_f64().unwrap());
    assert!(after > before, "held-out safety did not rise: reference {before}, aligned {after}\n{stdout}");
}
