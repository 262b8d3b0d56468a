//! `host run --resume RUN_DIR`: a run killed with SIGKILL (inside a DPO epoch, then again
//! later) and resumed ends with the same metrics, dual trajectory, samples and checkpoints as
//! an uninterrupted run with the same seed.
mod common;
use common::host;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    common::scratch("resume", name)
}

fn job() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/resume_job.rhai")
}

/// Metrics rows without the wall-clock fields (throughput, seconds, memory).
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            m.retain(|k, _| !(k.starts_with("tokens_per_s") || k.starts_with("seconds") || k == "peak_rss_mib" || k == "mfu" || k == "flops_per_s"));
            v
        })
        .collect()
}

/// `host run` of the job with `seed` and `--set` arguments `sets` into `out` (not waited for).
fn start(seed: &str, sets: &[&str], out: &Path) -> std::process::Command {
    let mut c = host();
    c.args(["run", job().to_str().unwrap(), "--seed", seed]).args(sets).arg("--out").arg(out);
    c
}

/// The uninterrupted run the interrupted ones are compared with, in `dir/whole`.
fn uninterrupted(dir: &Path, seed: &str, sets: &[&str]) -> PathBuf {
    let whole = dir.join("whole");
    let o = start(seed, sets, &whole).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    whole
}

/// `cut` ended as `whole`: every metrics row (wall-clock fields aside) and the files `files`
/// byte for byte.
fn assert_same_run(whole: &Path, cut: &Path, files: &[String]) {
    let (a, b) = (metrics(whole), metrics(cut));
    assert_eq!(a.len(), b.len(), "row counts differ");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "metrics row {} differs", i + 1);
    }
    for f in files {
        assert!(std::fs::read(whole.join(f)).unwrap() == std::fs::read(cut.join(f)).unwrap(), "{f} differs");
    }
}

fn dpo_rows(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default().matches("\"phase\":\"dpo\"").count()
}

fn wait_for(what: &str, child: &mut Child, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {what}");
        assert!(start.elapsed() < Duration::from_secs(300), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_run_killed_twice_resumes_to_the_same_trajectory_and_metrics() {
    let dir = scratch("kill");
    let whole = uninterrupted(&dir, "3", &[]);

    let cut = dir.join("cut");
    // First kill: inside the second DPO call (journal entry 3 is that call; entries 0-2 are
    // the warm-start sampling, the first DPO and its dual-step sampling), after it has logged
    // at least one step.
    let mut child = start("3", &[], &cut).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("journal entry 2", &mut child, || cut.join("journal/00002.json").exists());
    let before = dpo_rows(&cut);
    wait_for("a DPO step of the second call", &mut child, || dpo_rows(&cut) > before);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!cut.join("journal/00003.json").exists(), "the kill came too late to be mid-DPO");
    let config = std::fs::read_to_string(cut.join("config.json")).unwrap();
    assert!(config.contains("\"status\": \"running\""), "{config}");

    // Second kill: after the resumed run has passed its replayed calls and finished two more.
    let mut child = host().arg("run").arg("--resume").arg(&cut).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("journal entry 5", &mut child, || cut.join("journal/00005.json").exists());
    child.kill().unwrap();
    child.wait().unwrap();

    let o = host().arg("run").arg("--resume").arg(&cut).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("finished calls to replay"));

    // Byte-identical samples and weights (metrics.csv differs only in throughput columns).
    assert_same_run(&whole, &cut, &["samples/iteration_3.jsonl".into(), "checkpoints/iterate_3/model.safetensors".into()]);
    // The dual trajectory: λ and slack of every iterate, and the final λ.
    let b = metrics(&cut);
    let lambdas: Vec<&serde_json::Value> = b.iter().filter(|r| r["phase"] == "caid").map(|r| &r["lambda_safety"]).collect();
    assert_eq!(lambdas.len(), 5, "{lambdas:?}");
    let config = std::fs::read_to_string(cut.join("config.json")).unwrap();
    assert!(config.contains("\"status\": \"ok\"") && config.contains("\"resumed\": 2"), "{config}");

    // A finished run has nothing to resume.
    let o = host().arg("run").arg("--resume").arg(&cut).output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to resume"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn twenty_kills_at_pseudo_random_moments_still_end_with_the_uninterrupted_results() {
    // SIGKILL 20 times, each followed by --resume. Every fourth kill comes 0-150 ms after the
    // start (loading, journal replay); the others wait until the run has journaled one more call,
    // then 0-300 ms more (inside the next DPO call of about 1 s, its checkpoint and journal writes, or the
    // sampling after it). Delays come from a fixed xorshift sequence. The last resume runs to the
    // end, which must match the uninterrupted run row for row and byte for byte.
    let dir = scratch("kills");
    let (iterations, sets) = (20, ["--set", "iterations=20", "--set", "epochs=4"]);
    let whole = uninterrupted(&dir, "5", &sets);

    let cut = dir.join("cut");
    let entries = || std::fs::read_dir(cut.join("journal")).map(|d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count()).unwrap_or(0);
    let mut child = start("5", &sets, &cut).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // --resume needs the run directory's config.json: the first kill waits for it.
    wait_for("config.json", &mut child, || cut.join("config.json").exists());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut at = Vec::new();
    for kill in 0..20 {
        let seen = entries();
        if kill % 4 == 3 {
            std::thread::sleep(Duration::from_millis(next() % 150));
        } else {
            wait_for("one more journaled call", &mut child, || entries() > seen);
            std::thread::sleep(Duration::from_millis(next() % 300));
        }
        assert!(child.try_wait().unwrap().is_none(), "the run finished before kill {}: make the job longer", kill + 1);
        child.kill().unwrap();
        child.wait().unwrap();
        at.push(entries());
        child = host().arg("run").arg("--resume").arg(&cut).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "the last resume failed: {}", String::from_utf8_lossy(&o.stderr));
    println!("journaled calls at each kill: {at:?}");

    let files: Vec<String> = (0..iterations).flat_map(|t| [format!("samples/iteration_{t}.jsonl"), format!("checkpoints/iterate_{t}/model.safetensors")]).collect();
    assert_same_run(&whole, &cut, &files);
    let config = std::fs::read_to_string(cut.join("config.json")).unwrap();
    assert!(config.contains("\"status\": \"ok\""), "{config}");
}

#[test]
fn resuming_after_the_settings_changed_is_refused_with_a_reason() {
    let dir = scratch("changed");
    let run = dir.join("run");
    let mut child = host().args(["run", job().to_str().unwrap(), "--set", "iterations=2", "--out"]).arg(&run).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("journal entry 1", &mut child, || run.join("journal/00001.json").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    // Edit the recorded settings as if the run had been started differently.
    let config = std::fs::read_to_string(run.join("config.json")).unwrap().replace("\"iterations\": \"2\"", "\"iterations\": \"2\", \"pairs\": \"256\"");
    std::fs::write(run.join("config.json"), config).unwrap();
    let o = host().arg("run").arg("--resume").arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("resume: call 1 of the interrupted run was `dpo`") && err.contains("start a new run"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("stack backtrace"), "{err}");

    let o = host().arg("run").arg("--resume").arg(dir.join("nowhere")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume takes a run directory"));
}

/// A mount made for one test (a small tmpfs, or a folder bound read-only onto itself),
/// unmounted when dropped (also when the test fails).
struct Mounted(PathBuf);

/// `mount ARGS`; false where the kernel or the machine refuses (not root, no CAP_SYS_ADMIN).
fn mount(args: &[&str], dir: &Path) -> bool {
    std::process::Command::new("mount").args(args).arg(dir).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

impl Mounted {
    /// Mounts a tmpfs of `size` (mount's syntax, e.g. "1m") at `dir`, or None where this
    /// machine does not allow it.
    fn tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
        std::fs::create_dir_all(dir).unwrap();
        mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], dir).then(|| Mounted(dir.to_path_buf()))
    }

    /// Makes the existing folder `dir` read-only in place (a read-only bind mount onto itself;
    /// the file system around it stays writable, so files open elsewhere do not block it).
    fn read_only(dir: &Path) -> Option<Mounted> {
        let dir = dir.canonicalize().unwrap();
        if !mount(&["--bind", dir.to_str().unwrap()], &dir) {
            return None;
        }
        let m = Mounted(dir);
        mount(&["-o", "remount,bind,ro"], &m.0).then_some(m)
    }

    fn resize(&self, size: &str) {
        assert!(mount(&["-o", &format!("remount,size={size}")], &self.0), "remount {} failed", self.0.display());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_run_with_the_path_and_resume_finishes_once_there_is_space() {
    let dir = scratch("full");
    let whole = uninterrupted(&dir, "7", &[]);
    // The whole run directory takes about 3 MB; its first DPO call journals 364 kB of weights and
    // the first iterate's checkpoint as much again. A 600 kB disk fills up at that checkpoint, a
    // 1 MB disk at the second DPO call's journal entry.
    for (n, (size, fails_at)) in [("600k", "checkpoints/"), ("1m", "journal/00003.safetensors")].into_iter().enumerate() {
        let Some(disk) = Mounted::tmpfs(&dir.join(format!("small{n}")), size) else {
            println!("skipped: this machine cannot mount a tmpfs here (needs root); the full-disk path is untested");
            return;
        };
        let cut = dir.join(format!("small{n}/cut"));
        let o = start("7", &[], &cut).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{err}");
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {err}"));
        assert!(line.contains(&*cut.join(fails_at).to_string_lossy()) && line.contains("No space left on device"), "{size}: {err}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
        let committed = std::fs::read_dir(cut.join("journal")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count();
        assert!(committed >= 1, "nothing was journaled before the disk filled up");
        let leftovers: Vec<String> = walk(&cut).into_iter().filter(|p| p.contains(".tmp")).collect();
        assert!(leftovers.is_empty(), "partial temporary files left: {leftovers:?}");

        // Space again: the resumed run replays what was committed and ends as the uninterrupted one.
        disk.resize("64m");
        let o = host().arg("run").arg("--resume").arg(&cut).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same_run(&whole, &cut, &["samples/iteration_3.jsonl".into(), "checkpoints/iterate_3/model.safetensors".into()]);
        println!("{size}: the disk filled up after {committed} journaled calls: {line}");
    }
}

#[test]
fn a_folder_turned_read_only_stops_the_run_with_the_path_and_resume_finishes() {
    // The run's journal folder turns read-only once the first call has been journaled (a
    // read-only bind mount: root ignores permission bits, and a whole file system cannot be
    // remounted read-only while the run holds metrics.jsonl open). The run stops with one error
    // naming the path it could not write, nothing committed is lost, and `--resume` finishes
    // once the folder is writable again.
    let dir = scratch("read-only");
    let whole = uninterrupted(&dir, "7", &[]);
    let cut = dir.join("cut");
    let mut child = start("7", &[], &cut).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let committed = |cut: &Path| std::fs::read_dir(cut.join("journal")).map_or(0, |d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count());
    wait_for("the first journal entry", &mut child, || committed(&cut) >= 1);
    let Some(ro) = Mounted::read_only(&cut.join("journal")) else {
        let _ = child.kill();
        println!("skipped: this machine cannot bind-mount here (needs root); the read-only path is untested");
        return;
    };
    let before = committed(&cut);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains(&*cut.join("journal/").to_string_lossy()) && line.contains("Read-only file system"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    drop(ro);
    assert_eq!(committed(&cut), before, "a committed journal entry was lost");
    let leftovers: Vec<String> = walk(&cut).into_iter().filter(|p| p.contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "partial temporary files left: {leftovers:?}");
    let o = host().arg("run").arg("--resume").arg(&cut).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(&whole, &cut, &["samples/iteration_3.jsonl".into(), "checkpoints/iterate_3/model.safetensors".into()]);
    println!("read-only after {before} journaled calls: {line}");
}

/// Every file under `dir`, as paths.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p.display().to_string());
    }
    out
}
