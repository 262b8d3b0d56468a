//! The exact small world: a policy restricted to an enumerable response space is a proper
//! distribution that sampling follows; the exact optimum satisfies strong duality; and the
//! iterative dual method converges to it (examples/exact_optimum.rhai).
mod common;
use common::host;
use dualign::exact::World;
use dualign::model::{CausalLM, Decoding, LoadOptions, SampleOptions};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn world() -> World {
    World::new(vec!["want:dcb".into(), "want:cdd".into()], "abcd", 3).unwrap()
}

fn tiny(seed: i64) -> CausalLM {
    let mut m = CausalLM::load("builtin:tiny", &LoadOptions { device: Device::Cpu, kind: Kind::Float, seed }).unwrap();
    world().restrict(&mut m).unwrap();
    m
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("exact", name)
}

fn rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn restricted_log_probs_are_the_masked_softmax_and_sum_to_one() {
    let w = world();
    let m = tiny(3);
    let lp = w.logprobs(&m).unwrap();
    assert_eq!(lp.size(), [2, 64]);
    // Each row is a distribution over the 4^3 responses.
    let mass: Vec<f64> = Vec::try_from(lp.to_kind(Kind::Double).logsumexp([1i64], false)).unwrap();
    assert!(mass.iter().all(|v| v.abs() < 1e-5), "{mass:?}");
    // Second opinion: the full logits, restricted to the ids of a, b, c, d, log-softmaxed and
    // summed over the three response positions, for the response "cab" of prompt 1.
    let prompt = m.tokenizer.encode("want:cdd", true).unwrap();
    let resp = m.tokenizer.encode("cab", false).unwrap();
    let ids: Vec<i64> = prompt.iter().chain(&resp).copied().collect();
    let logits = m.logits(&Tensor::from_slice(&ids).unsqueeze(0)).unwrap().squeeze_dim(0);
    let allowed = Tensor::from_slice(&[97i64, 98, 99, 100]);
    let restricted = logits.index_select(1, &allowed).log_softmax(-1, Kind::Double);
    let mut expected = 0.0;
    for (k, &tok) in resp.iter().enumerate() {
        expected += restricted.double_value(&[(prompt.len() + k - 1) as i64, tok - 97]);
    }
    let col = w.responses().iter().position(|r| r == "cab").unwrap() as i64;
    assert!((lp.double_value(&[1, col]) - expected).abs() < 1e-5, "{} vs {expected}", lp.double_value(&[1, col]));
}

#[test]
fn responses_outside_the_space_are_errors_not_numbers() {
    let m = tiny(3);
    let p = m.tokenizer.encode("want:dcb", true).unwrap();
    let e = format!("{:#}", m.sequence_logprobs(&[&p], &[&[97, 98, 101]], 64).unwrap_err());
    assert!(e.contains("outside the model's response space"), "{e}");
    let e = m.sequence_logprobs(&[&p], &[&[97, 98]], 64).unwrap_err().to_string();
    assert!(e.contains("exactly 3"), "{e}");
}

#[test]
fn sampling_follows_the_enumerated_distribution() {
    // Pearson's chi-square of 40000 samples against the exact probabilities of the 64
    // responses: for a correct sampler it is chi-square with 63 degrees of freedom (mean 63,
    // sd 11.2); the bound is mean + 5 sd.
    let w = world();
    let m = tiny(5);
    let lp = w.logprobs(&m).unwrap();
    let prompt = m.tokenizer.encode(&w.prompts[0], true).unwrap();
    let n = 40000;
    let opts = SampleOptions { n, max_new_tokens: 10, decoding: Decoding::new(1.0, 0, 1.0).unwrap(), seed: Some(11), slots: 4096 };
    let out = m.generate(&[prompt], &opts, &|| false).unwrap();
    let responses = w.responses();
    let mut counts = vec![0f64; responses.len()];
    for ids in &out {
        // The space fixes the length: 3 tokens whatever max_new_tokens says.
        assert_eq!(ids.len(), 3);
        let text = m.tokenizer.decode(ids, true).unwrap();
        counts[responses.iter().position(|r| *r == text).unwrap()] += 1.0;
    }
    let mut chi2 = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let e = lp.double_value(&[0, i as i64]).exp() * n as f64;
        chi2 += (c - e) * (c - e) / e;
    }
    assert!(chi2 < 63.0 + 5.0 * 126f64.sqrt(), "chi2 = {chi2}");
}

#[test]
fn the_exact_optimum_satisfies_strong_duality_and_matches_bisection() {
    // λ* from the exact dual (one_shot_dual over every response) against an independent
    // bisection on the exact slack of π_λ, which increases with λ; at λ* the constraint is active
    // (slack 0), D(λ*) equals P*'s objective (strong duality: the λ·slack term vanishes), the
    // dual is larger on either side, and a feasible π_λ with a larger λ has a lower objective.
    let dir = scratch("duality");
    let script = dir.join("duality.rhai");
    std::fs::write(&script, r#"
import "exact" as exact;
fn helpfulness(prompts, responses) {
    let out = [];
    for i in 0..prompts.len() {
        let want = prompts[i].sub_string(5);
        let s = 0;
        for k in 0..3 { if responses[i][k] == want[k] { s += 1; } }
        out.push(s.to_float());
    }
    out
}
fn safety(prompts, responses) { responses.map(|r| { let c = 0; for ch in r { if ch == 'a' { c += 1; } } c.to_float() / 3.0 }) }
let world = exact_world(#{ prompts: ["want:dcb", "want:cdd", "want:bdc"], alphabet: "abcd", length: 3 });
let task = #{ reward: helpfulness, beta: 0.5, constraints: [#{ name: "safety", utility: safety, threshold: 0.2 }] };
let reference = world.model(#{ seed: 1 });
let t = exact::tables(world, task);
let star = exact::optimum(world, reference, t, task);
let ref_lp = world.logprobs(reference).to("f64");
let lo = 0.0; let hi = 50.0;
for i in 0..60 { let mid = (lo + hi) / 2.0; if exact::tilted(ref_lp, t, task, [mid]).slack[0] < 0.0 { lo = mid; } else { hi = mid; } }
let l = star.lambda[0];
write_jsonl("duality.jsonl", [#{ lambda: l, bisection: (lo + hi) / 2.0, slack: star.slack[0], dual_value: star.dual_value, objective: star.objective,
    dual_below: exact::tilted(ref_lp, t, task, [l - 0.1]).lagrangian, dual_above: exact::tilted(ref_lp, t, task, [l + 0.1]).lagrangian,
    objective_above: exact::tilted(ref_lp, t, task, [l + 0.5]).objective, slack_above: exact::tilted(ref_lp, t, task, [l + 0.5]).slack[0] }]);
"#).unwrap();
    let o = host().args(["run", script.to_str().unwrap(), "--out"]).arg(dir.join("run")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = &rows(&dir.join("run/duality.jsonl"))[0];
    let f = |k: &str| r[k].as_f64().unwrap();
    assert!(f("lambda") > 0.5, "the constraint should be active: {r}");
    assert!((f("lambda") - f("bisection")).abs() < 1e-6, "{r}");
    assert!(f("slack").abs() < 1e-8, "{r}");
    assert!((f("dual_value") - f("objective")).abs() < 1e-8, "{r}");
    assert!(f("dual_below") > f("dual_value") && f("dual_above") > f("dual_value"), "{r}");
    assert!(f("slack_above") > 0.0 && f("objective_above") < f("objective"), "{r}");
}

#[test]
fn the_iterative_method_reaches_the_exact_optimum_with_one_and_two_active_constraints() {
    // examples/exact_optimum.rhai, iterative method only, threshold 0.05 and the two-constraint
    // task. Targets from the issue: every constraint met within 0.05 (utility units) and the
    // objective E[r] - β KL within 2% of the exact optimum, both computed by enumeration.
    let dir = scratch("converge");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/exact_optimum.rhai");
    let o = host()
        .args(["run", example.to_str().unwrap(), "--set", "thresholds=[0.05]", "--set", "methods=[\"iterative\"]", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results = rows(&dir.join("run/exact.jsonl"));
    assert_eq!(results.len(), 2, "{results:?}");
    for r in &results {
        let gap = r["relative_gap"].as_f64().unwrap();
        assert!(gap.abs() <= 0.02, "objective {} vs optimum {}: {r}", r["objective"], r["optimum_objective"]);
        for s in r["slack"].as_array().unwrap() {
            assert!(s.as_f64().unwrap() >= -0.05, "constraint not met within 0.05: {r}");
        }
    }
    // Two constraints, both active at the optimum (λ* > 0 each) and both kept active.
    let two = &results[1];
    assert_eq!(two["constraints"], "safety + calm");
    for (l, star) in two["lambda"].as_array().unwrap().iter().zip(two["lambda_star"].as_array().unwrap()) {
        assert!(star.as_f64().unwrap() > 0.5 && l.as_f64().unwrap() > 0.5, "{two}");
        assert!((l.as_f64().unwrap() - star.as_f64().unwrap()).abs() < 0.25 * star.as_f64().unwrap(), "{two}");
    }
    for s in two["slack"].as_array().unwrap() {
        assert!(s.as_f64().unwrap().abs() <= 0.05, "{two}");
    }
    let report = std::fs::read_to_string(dir.join("run/report.md")).unwrap();
    assert!(report.contains("| safety + calm |"), "{report}");
}
