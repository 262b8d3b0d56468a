//! Two ranks on torch's c10d (Gloo, CPU tensors), each a child process of this test binary started
//! the way torchrun starts ranks (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).
mod common;
use dualign::dist::{Group, Launch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs test `name` of this binary as ranks 0..world in child processes, with `role` telling the
/// child what to do; checks that every rank succeeded and returns each rank's output.
fn ranks(name: &str, world: usize, role: &str) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env("DUALIGN_DIST_ROLE", role)
                .env("OMP_NUM_THREADS", "1")
                .env("WORLD_SIZE", world.to_string())
                .env("RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    outs
}

/// In a child started by `ranks` (playing `role`): its place in the two-rank group, joined with a
/// collective timeout of `timeout_s`. None in the test process itself.
fn rank_of(role: &str, timeout_s: u64) -> Option<Group> {
    let given = std::env::var("DUALIGN_DIST_ROLE").ok()?;
    assert_eq!(given, role);
    let launch = Launch::from_env().unwrap().expect("a two-rank launch");
    Some(Group::connect(&launch, Duration::from_secs(timeout_s), false).unwrap())
}

fn values(t: &Tensor) -> Vec<f32> {
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

#[test]
fn two_ranks_sum_broadcast_and_meet_at_a_barrier() {
    if let Some(g) = rank_of("collectives", 60) {
        let r = g.rank as f32;
        // Sum: rank r contributes [r + 1, 10 (r + 1)], so both end with [3, 30].
        let mut t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
        g.all_reduce_sum(&mut t).unwrap();
        assert_eq!(values(&t), vec![3.0, 30.0], "rank {}", g.rank);
        // Broadcast from rank 1: rank 0's own values are replaced by rank 1's.
        let mut b = Tensor::from_slice(&[r * 7.0, -r]);
        g.broadcast(&mut b, 1).unwrap();
        assert_eq!(values(&b), vec![7.0, -1.0], "rank {}", g.rank);
        // All-gather of uneven shares: rank 0 has rows [1, 2], rank 1 has [3, 4] and [5, 6]:
        // every rank gets the three rows in rank order (int64 and f64 alike, values exact).
        let mine = if g.rank == 0 { Tensor::from_slice(&[1i64, 2]).view([1, 2]) } else { Tensor::from_slice(&[3i64, 4, 5, 6]).view([2, 2]) };
        let all = g.all_gather(&mine).unwrap();
        assert_eq!(all.size(), vec![3, 2]);
        assert_eq!(Vec::<i64>::try_from(all.view([-1])).unwrap(), vec![1, 2, 3, 4, 5, 6], "rank {}", g.rank);
        let mine = Tensor::from_slice(&vec![0.1f64 + r as f64; g.rank * 3]);
        let all = Vec::<f64>::try_from(g.all_gather(&mine).unwrap()).unwrap();
        assert_eq!(all, vec![1.1, 1.1, 1.1], "rank 0 gives no rows, rank 1 three");
        // Rank 0's bytes reach every rank, whatever the others hold.
        let text = g.broadcast_bytes(if g.rank == 0 { b"runs/x-1" } else { b"ignored, longer" }).unwrap();
        assert_eq!(text, b"runs/x-1");
        g.barrier().unwrap();
        return;
    }
    ranks("two_ranks_sum_broadcast_and_meet_at_a_barrier", 2, "collectives");
}

#[test]
fn a_rank_that_dies_makes_the_other_fail_within_the_timeout_not_hang() {
    if let Some(g) = rank_of("die", 10) {
        g.barrier().unwrap();
        if g.rank == 1 {
            // Gone without a word, as a killed process would be.
            std::process::exit(0);
        }
        let start = Instant::now();
        let mut t = Tensor::from_slice(&[1f32]);
        let e = g.all_reduce_sum(&mut t).unwrap_err().to_string();
        println!("ERROR after {:.1}s: {e}", start.elapsed().as_secs_f64());
        assert!(e.starts_with("rank 0: all-reduce: "), "{e}");
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
        return;
    }
    let outs = ranks("a_rank_that_dies_makes_the_other_fail_within_the_timeout_not_hang", 2, "die");
    // Rank 0 saw the error, and soon (its line says how soon).
    let said = String::from_utf8_lossy(&outs[0].stdout);
    assert!(said.contains("ERROR after "), "{said}");
}

/// DPO on the tiny model over 16 shipped pairs (micro-batches of 2, 3 per step: the ranks' shares
/// are uneven), with the ranks of `group` or alone; returns the logged losses and the weights.
/// With a group, each rank draws its own initial weights (seed = rank) and takes rank 0's by
/// broadcast before copying the reference.
fn tiny_dpo(group: Option<std::rc::Rc<Group>>) -> (Vec<f64>, Vec<(String, Tensor)>) {
    use dualign::data::{batch::tokenize, load_preferences, LoadOptions as DataOptions};
    use dualign::model::{CausalLM, LoadOptions};
    use dualign::train::dpo::{self, DpoOptions, Reference};
    use dualign::train::{optim::AdamW, LoopOptions};
    use std::sync::Arc;
    let cpu = LoadOptions { device: tch::Device::Cpu, kind: tch::Kind::Float, seed: group.as_ref().map_or(0, |g| g.rank as i64) };
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/data/safety_prefs.jsonl");
    let (pairs, _) = load_preferences(&data, &DataOptions::default()).unwrap();
    let pairs = &pairs[..16];
    let mut policy = CausalLM::load("builtin:tiny", &cpu).unwrap();
    if let Some(g) = &group {
        // Listed in another order on each rank: the broadcast sorts by name.
        let mut params = policy.trainable_parameters().unwrap();
        if g.rank == 1 {
            params.reverse();
        }
        g.broadcast_parameters(&params).unwrap();
    }
    let frozen = policy.deep_copy().unwrap();
    let tokenized = Arc::new(tokenize(pairs, &policy.tokenizer, 64, 96).unwrap());
    let chosen = Arc::new(pairs.iter().map(|p| p.labels["better"]).collect::<Vec<_>>());
    let origins: Vec<String> = pairs.iter().map(|p| p.origin.clone()).collect();
    let mut opt = AdamW::new(policy.trainable_parameters().unwrap()).unwrap();
    let opts = DpoOptions {
        epochs: 2,
        batch_size: 2,
        group_by_length: false,
        cache_dir: None,
        seed: 5,
        loop_opts: LoopOptions { grad_accum: 3, adamw: dualign::train::optim::AdamWConfig { lr: 1e-3, ..Default::default() }, dist: group, ..Default::default() },
        ..Default::default()
    };
    let eval = |p: &[&[i64]], c: &[&[i64]], r: &[&[i64]]| frozen.logprobs(&frozen.pack_pairs(p, c, r, true)?, 256);
    let mut losses = Vec::new();
    let mut log = |row: serde_json::Map<String, serde_json::Value>| {
        losses.push(row["loss"].as_f64().unwrap());
        Ok(())
    };
    dpo::train(&policy, &mut opt, Reference::Online(&eval), tokenized, chosen, None, &origins, &opts, &mut log, &|| false).unwrap();
    let mut weights = policy.trainable_parameters().unwrap();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, weights.into_iter().map(|(n, t)| (n, t.detach().copy())).collect())
}

#[test]
fn data_parallel_dpo_on_two_ranks_ends_where_one_process_does() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dp-dpo-{}", std::process::id()));
    if let Some(g) = rank_of("dpo", 60) {
        let g = std::rc::Rc::new(g);
        let (losses, weights) = tiny_dpo(Some(g.clone()));
        let dir = std::path::PathBuf::from(std::env::var("DUALIGN_DIST_OUT").unwrap());
        Tensor::write_safetensors(&weights, dir.join(format!("rank{}.safetensors", g.rank))).unwrap();
        std::fs::write(dir.join(format!("rank{}.json", g.rank)), serde_json::to_string(&losses).unwrap()).unwrap();
        return;
    }
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    std::env::set_var("DUALIGN_DIST_OUT", &out);
    ranks("data_parallel_dpo_on_two_ranks_ends_where_one_process_does", 2, "dpo");
    let (losses, weights) = tiny_dpo(None);
    assert_eq!(losses.len(), 6, "16 pairs in 8 micro-batches of 2, 3 per step: 3 steps per epoch, 2 epochs");
    let read = |rank: usize| -> (Vec<f64>, Vec<(String, Tensor)>) {
        let l: Vec<f64> = serde_json::from_str(&std::fs::read_to_string(out.join(format!("rank{rank}.json"))).unwrap()).unwrap();
        let mut w = Tensor::read_safetensors(out.join(format!("rank{rank}.safetensors"))).unwrap();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        (l, w)
    };
    let (l0, w0) = read(0);
    let (l1, w1) = read(1);
    // The ranks apply the same summed gradient: their weights are bit-identical, and so are their logs.
    assert_eq!(l0, l1);
    for ((n, a), (_, b)) in w0.iter().zip(&w1) {
        assert_eq!((a - b).abs().max().double_value(&[]), 0.0, "{n} differs between the ranks");
    }
    // Against one process on the same global batches: the same gradient summed in another order
    // (rank 0's micro-batches, then rank 1's) differs by float rounding only, about 1e-7 relative
    // per step; after 6 Adam steps at lr 1e-3 the weights agree within 1e-5 and the losses within 1e-6.
    assert_eq!(w0.len(), weights.len());
    let mut worst = 0f64;
    for ((n, a), (m, b)) in w0.iter().zip(&weights) {
        assert_eq!(n, m);
        worst = worst.max((a - b).abs().max().double_value(&[]));
    }
    assert!(worst < 1e-5, "weights: max |two ranks - one process| = {worst}");
    for (a, b) in l0.iter().zip(&losses) {
        assert!((a - b).abs() < 1e-6, "losses {l0:?} vs {losses:?}");
    }
    // And training moved the weights (the comparison is not between two untouched models).
    let mut fresh = dualign::model::CausalLM::load("builtin:tiny", &dualign::model::LoadOptions { device: tch::Device::Cpu, kind: tch::Kind::Float, seed: 0 }).unwrap();
    let mut start = fresh.trainable_parameters().unwrap();
    start.sort_by(|a, b| a.0.cmp(&b.0));
    let moved = start.iter().zip(&weights).map(|((_, a), (_, b))| (a - b).abs().max().double_value(&[])).fold(0.0, f64::max);
    assert!(moved > 1e-4, "training moved nothing ({moved})");
    println!("two ranks vs one process: max weight difference {worst:.2e}; moved {moved:.2e}");
}

// ---- Whole runs: `host run --nproc 2`, torchrun, a failing rank, kill and resume. ----


fn job(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(name)
}

/// The metrics rows of a run directory.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    common::jsonl(&dir.join("metrics.jsonl"))
}

/// The row of `phase` in a run's metrics.
fn phase<'a>(rows: &'a [serde_json::Value], phase: &str) -> &'a serde_json::Value {
    rows.iter().find(|r| r["phase"] == phase).unwrap_or_else(|| panic!("no {phase} row in {rows:?}"))
}

/// The `log` lines a rank printed (`key=value ...` with a phase), in order.
fn log_lines(text: &str) -> Vec<String> {
    text.lines().filter(|l| l.contains("phase=") && !l.starts_with("error")).map(str::to_string).collect()
}

/// `host run ARGS --out DIR` to completion, with its own per-user cache (so that the features
/// and reference log-probs are computed, not read from an earlier run); panics with its output
/// unless it succeeded.
fn run_ok(args: &[&str], dir: &Path) -> Output {
    // A 2-minute collective timeout: ranks whose collectives do not match fail instead of
    // waiting out the default 30 minutes.
    let o = common::host().args(args).args(["--dist-timeout", "120s", "--out"]).arg(dir).env("DUALIGN_CACHE", dir.with_extension("cache")).output().unwrap();
    assert!(o.status.success(), "host {args:?} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

/// What a distributed run of tests/distributed_job.rhai must show against one process: the same
/// samples (every draw depends on the seed and the sequence's index, so dealing sequences out
/// changes no token), log-probs and losses equal up to float rounding (sums over other batch
/// compositions and the ranks' gradients summed in another order: about 1e-7 relative, so 1e-5
/// on losses near 1 and 1e-3 on a sum of 111 log-probs near -424 are tolerances with room), the
/// same lines logged by every rank, and the run directory written by rank 0 alone.
fn assert_like_one_process(one: &Path, many: &Path, rank0_stdout: &str) {
    let (a, b) = (metrics(one), metrics(many));
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    assert_eq!(phase(&b, "ranks")["world_size"], 2);
    assert_eq!(phase(&b, "ranks")["main_ranks"], 1, "rank 0 writes the metrics");
    let (sa, sb) = (phase(&a, "sampled"), phase(&b, "sampled"));
    for k in ["samples", "first", "last", "letters_a"] {
        assert_eq!(sa[k], sb[k], "{k}: {sa} vs {sb}");
    }
    assert_eq!(std::fs::read_to_string(one.join("samples.jsonl")).unwrap(), std::fs::read_to_string(many.join("samples.jsonl")).unwrap());
    let close = |row: &str, k: &str, tol: f64| {
        let (x, y) = (phase(&a, row)[k].as_f64().unwrap(), phase(&b, row)[k].as_f64().unwrap());
        assert!((x - y).abs() <= tol, "{row}.{k}: one process {x}, two ranks {y}");
    };
    close("sampled", "logprob_sum", 1e-3);
    close("scored", "score_margin_sum", 1e-4);
    close("trained", "sft_loss", 1e-5);
    close("trained", "dpo_loss", 1e-5);
    close("trained", "dpo_again_loss", 1e-5);
    close("trained", "logprob_change", 1e-2);
    assert!(phase(&a, "trained")["logprob_change"].as_f64().unwrap() > 10.0, "training moved the policy");
    // Rank 1 logged the same lines (its output is rank-1.log) and wrote nothing else.
    let rank1 = std::fs::read_to_string(many.join("rank-1.log")).unwrap();
    let (l0, l1) = (log_lines(rank0_stdout), log_lines(&rank1));
    assert_eq!(l0.len(), 4, "{rank0_stdout}");
    assert_eq!(l0[1..], l1[1..], "every rank returns the same values");
    assert!(l1[0].contains("main_ranks=0"), "{}", l1[0]);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(many.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["world_size"].as_u64(), config["status"].as_str()), (Some(2), Some("ok")));
    let mut files: Vec<String> = std::fs::read_dir(many).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["config.json", "journal", "metrics.csv", "metrics.jsonl", "rank-1.log", "refcache0", "samples.jsonl"]);
}

#[test]
fn a_script_on_two_ranks_with_nproc_computes_what_one_process_does() {
    let dir = common::scratch("dist", "nproc");
    let script = job("distributed_job.rhai");
    let script = script.to_str().unwrap();
    run_ok(&["run", script], &dir.join("one"));
    let o = run_ok(&["run", "--nproc", "2", script], &dir.join("two"));
    assert_like_one_process(&dir.join("one"), &dir.join("two"), &String::from_utf8_lossy(&o.stdout));
}

#[test]
fn torchrun_launches_host_as_its_ranks() {
    // torchrun from the reference environment (torch 2.11): its agent hosts the store and every
    // rank, rank 0 included, connects to it (TORCHELASTIC_USE_AGENT_STORE).
    let torchrun = Path::new(&common::python()).with_file_name("torchrun");
    let dir = common::scratch("dist", "torchrun");
    let script = job("distributed_job.rhai");
    run_ok(&["run", script.to_str().unwrap()], &dir.join("one"));
    let o = Command::new(&torchrun)
        .env("DUALIGN_CACHE", dir.join("two.cache"))
        .args(["--standalone", "--nproc-per-node=2", "--no-python", env!("CARGO_BIN_EXE_host"), "run"])
        .arg(&script)
        .args(["--dist-timeout", "120s", "--out"])
        .arg(dir.join("two"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_like_one_process(&dir.join("one"), &dir.join("two"), &String::from_utf8_lossy(&o.stdout));
}

#[test]
fn a_rank_whose_script_fails_stops_the_run_with_its_error_not_a_hang() {
    // Rank 1 throws before the barrier rank 0 waits at: rank 0's barrier fails as soon as rank 1's
    // connection closes; --nproc names the rank, and rank 1's own error reaches the terminal.
    let dir = common::scratch("dist", "fails");
    let start = Instant::now();
    let o = common::host().args(["run", "--nproc", "2", "--dist-timeout", "120s"]).arg(job("distributed_job.rhai")).args(["--set", "fail_rank=1", "--out"]).arg(dir.join("run")).output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("rank 1: error: ") && err.contains("rank 1 stops here on purpose"), "{err}");
    assert!(err.contains("rank 0: barrier"), "rank 0 says where it stopped: {err}");
    assert!(err.contains("error: rank ") && err.contains(" of 2 exited with code 1"), "{err}");
    // Well inside the 120 s timeout: the failure is seen, not waited out.
    assert!(secs < 30.0, "took {secs:.1} s");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run/config.json")).unwrap()).unwrap();
    assert_eq!(config["status"], "failed");
}

/// `host ARGS` in its own process group (so that the test can kill every rank at once, as a
/// node failure would), with `env` set.
fn start_group(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    common::host().args(args).envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0).spawn().unwrap()
}

/// SIGKILL to the child's whole process group (the launcher and its ranks), by the system call:
/// procps' `kill -9 -PID` reads `-PID` as an option and signals every process (pid -1).
fn kill_group(child: &mut std::process::Child) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    let pgid = child.id() as i32;
    assert!(pgid > 1);
    // SAFETY: a plain system call on a process group this test created.
    assert_eq!(unsafe { kill(-pgid, 9) }, 0, "kill -{pgid}");
    let _ = child.wait();
}

fn wait_for_file(child: &mut std::process::Child, path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {} appeared", path.display());
        assert!(start.elapsed() < Duration::from_secs(300), "timed out waiting for {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn caid_on_two_ranks_has_one_lambda_trajectory_and_resumes_after_two_kills() {
    // tests/resume_job.rhai (4 CAID iterations on the exact world: DPO, sampling, dual steps)
    // on two ranks: once whole, once killed (every rank, SIGKILL) and resumed twice, first with
    // --resume, then as torchrun --max-restarts restarts a job (TORCHELASTIC_RESTART_COUNT > 0
    // and the same --out). Replay restores every finished call on every rank, so the resumed run
    // is the uninterrupted one: the same λ and rewards, bit for bit on one machine.
    let dir = common::scratch("dist", "resume");
    let script = job("resume_job.rhai");
    let (whole, cut) = (dir.join("whole"), dir.join("cut"));
    let two = |out: &Path| -> Vec<std::ffi::OsString> { vec!["run".into(), "--nproc".into(), "2".into(), script.clone().into(), "--out".into(), out.into()] };
    let o = run_ok(&["run", "--nproc", "2", script.to_str().unwrap()], &whole);
    // Every rank went through the same λ trajectory: rank 1 printed rank 0's lines, digit for digit.
    let (l0, l1) = (log_lines(&String::from_utf8_lossy(&o.stdout)), log_lines(&std::fs::read_to_string(whole.join("rank-1.log")).unwrap()));
    assert!(l0.iter().filter(|l| l.contains("lambda_safety=")).count() == 4 && l0 == l1, "{l0:?}\n{l1:?}");
    // And the one of one process: the same samples drawn from weights equal up to float rounding
    // (gradients summed in another order, ~1e-7); a rounding difference could flip one of the
    // 768 samples of a dual step, moving λ by η/768 = 0.0065, so 0.05 allows a few such flips.
    run_ok(&["run", script.to_str().unwrap()], &dir.join("one"));
    let lambdas = |d: &Path| -> Vec<f64> { metrics(d).iter().filter(|r| r["phase"] == "caid" && r["iteration"].as_i64() >= Some(0)).map(|r| r["lambda_safety"].as_f64().unwrap()).collect() };
    let (one, many) = (lambdas(&dir.join("one")), lambdas(&whole));
    assert_eq!(one.len(), 4);
    let worst = one.iter().zip(&many).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("λ one process {one:?}, two ranks {many:?}: max difference {worst}");
    assert!(worst <= 0.05, "λ one process {one:?}, two ranks {many:?}");
    let mut child = start_group(&two(&cut), &[]);
    wait_for_file(&mut child, &cut.join("journal/00002.json"));
    kill_group(&mut child);
    // One process cannot resume a two-rank run: refused before anything runs.
    let o = common::host().args(["run", "--resume"]).arg(&cut).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("this run had 2 processes; resume it with the same number (`host run --nproc 2 --resume DIR`"), "{err}");
    let resume: Vec<std::ffi::OsString> = vec!["run".into(), "--nproc".into(), "2".into(), "--resume".into(), cut.clone().into()];
    let mut child = start_group(&resume, &[]);
    wait_for_file(&mut child, &cut.join("journal/00005.json"));
    kill_group(&mut child);
    let mut child = start_group(&two(&cut), &[("TORCHELASTIC_RESTART_COUNT", "1")]);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("restart 1: resuming"), "{err}");
    let pick = |dir: &Path| -> Vec<(String, String, String)> {
        metrics(dir).iter().filter(|r| r["phase"] == "caid" || r["phase"] == "final").map(|r| (r["lambda_safety"].to_string(), r["lambda"].to_string(), r["reward"].to_string())).collect()
    };
    let (a, b) = (pick(&whole), pick(&cut));
    assert_eq!(a.len(), 6, "{a:?}");
    assert_eq!(a, b);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cut.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["status"].as_str(), config["resumed"].as_u64()), (Some("ok"), Some(2)));
}

#[test]
fn ctrl_c_stops_every_rank_and_the_run_resumes() {
    // SIGINT to the launcher and its ranks (a terminal's Ctrl-C): each rank stops at its next safe
    // point, the launcher exits 130 saying how to resume, the run directory says "interrupted",
    // and `--nproc 2 --resume` finishes it.
    let dir = common::scratch("dist", "ctrl-c");
    let run = dir.join("run");
    let args: Vec<std::ffi::OsString> = vec!["run".into(), "--nproc".into(), "2".into(), job("resume_job.rhai").into(), "--set".into(), "iterations=8".into(), "--out".into(), run.clone().into()];
    let mut child = start_group(&args, &[]);
    wait_for_file(&mut child, &run.join("journal/00002.json"));
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: a plain system call on the process group this test created.
    assert_eq!(unsafe { kill(-(child.id() as i32), 2) }, 0);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("error: interrupted (Ctrl-C); `host run --nproc N --resume DIR` continues the run"), "{err}");
    let config = || -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap() };
    assert_eq!(config()["status"], "interrupted");
    let o = common::host().args(["run", "--nproc", "2", "--resume"]).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(config()["status"], "ok");
    assert_eq!(metrics(&run).iter().filter(|r| r["phase"] == "caid").count(), 9, "the warm start and 8 iterations");
}
