//! Shared by the integration tests: the Python reference environment and its scripts.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub fn python() -> String {
    std::env::var("DUALIGN_PYTHON").unwrap_or_else(|_| panic!("DUALIGN_PYTHON is not set: run the tests with scripts/test, which sets up the Python reference environment"))
}

/// Runs `tests/reference/<script> [args...] OUT` once per test binary and returns OUT.
pub fn reference_with(script: &str, args: &[&Path]) -> PathBuf {
    static DONE: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let mut map = DONE.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = map.get(script) {
        return p.clone();
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ref-{}-{}", script.trim_end_matches(".py"), std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(script))
        .args(args)
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{script} failed: {}", String::from_utf8_lossy(&o.stderr));
    map.insert(script.to_string(), out.clone());
    out
}

pub fn reference(script: &str) -> PathBuf {
    reference_with(script, &[])
}

/// The `host` binary under test.
pub fn host() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_host"))
}

/// A fresh scratch folder `<prefix>-<name>-<pid>` under the tests' temporary directory.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `host run SCRIPT --out out --set ...` in `dir` (a reduced job); the output of the command.
pub fn run_job(dir: &Path, script: &str, sets: &[&str]) -> std::process::Output {
    let mut cmd = host();
    cmd.current_dir(dir).arg("run").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script)).args(["--out", "out"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.output().unwrap()
}

/// The records of a JSONL file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
