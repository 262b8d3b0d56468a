//! Integration tests: the real `host` binary on real scripts, checking exit codes, the exact
//! `file:line:col` of errors, the run directory, `--set`, `host check` and `host api`.
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn host() -> Command {
    Command::new(env!("CARGO_BIN_EXE_host"))
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    host().current_dir(dir).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `error: ...` line and what follows it (a run prints its run directory first).
fn error_text(o: &Output) -> String {
    let err = stderr(o);
    err[err.find("error: ").unwrap_or_else(|| panic!("no error line in {err}"))..].to_string()
}

fn assert_no_backtrace(text: &str) {
    assert!(!text.contains("panicked") && !text.contains("RUST_BACKTRACE") && !text.contains("frame #"), "{text}");
}

#[test]
fn passing_script_writes_config_and_metrics() {
    let dir = scratch("pass");
    write(&dir, "job.rhai", "let steps = config(\"steps\", 2);\nlet lr = config(\"lr\", 0.1);\nfor i in 0..steps { log(#{ step: i, loss: 1.0 / (i + 1) }); }\nlog(#{ step: steps, note: \"done\" });\n");
    let o = run_in(&dir, &["run", "job.rhai", "--set", "steps=3", "--out", "out", "--seed", "7"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(config["status"], "ok");
    assert_eq!(config["seed"], 7);
    assert_eq!(config["config"]["steps"], 3);
    assert_eq!(config["config"]["lr"], 0.1);
    assert_eq!(config["overrides"]["steps"], "3");
    assert_eq!(config["versions"]["libtorch"].as_str().unwrap().split('+').next().unwrap(), "2.11.0");
    // Three rows with step and loss (Rhai maps keep keys sorted), then a row that adds the
    // `note` column: the header widens and earlier rows get an empty cell.
    let csv = std::fs::read_to_string(dir.join("out/metrics.csv")).unwrap();
    assert_eq!(csv, "loss,step,note\n1.0,0,\n0.5,1,\n0.3333333333333333,2,\n,3,done\n");
    let jsonl = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 4);
    assert_eq!(jsonl.lines().last().unwrap(), r#"{"note":"done","step":3}"#);
}

#[test]
fn default_run_directory_is_named_after_the_script() {
    let dir = scratch("default-dir");
    write(&dir, "my_job.rhai", "log(#{ x: 1 });\n");
    let o = run_in(&dir, &["run", "my_job.rhai"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let runs: Vec<String> = std::fs::read_dir(dir.join("runs")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].starts_with("my_job-") && runs[0].len() == "my_job-20261127-021659".len(), "{runs:?}");
}

#[test]
fn a_runaway_loop_stops_at_the_operation_limit() {
    let dir = scratch("ops");
    write(&dir, "spin.rhai", "log(#{ started: true });\nlet i = 0;\nloop {\n    i += 1;\n}\n");
    let o = run_in(&dir, &["run", "spin.rhai", "--out", "out", "--max-operations", "100000"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = error_text(&o);
    assert!(err.starts_with("error: spin.rhai:") && err.contains("operation limit") && err.contains("--max-operations"), "{err}");
    assert_no_backtrace(&err);
    // The run directory records the failure; what the script logged before stays.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(config["status"], "failed");
    assert!(std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap().contains("started"));
    // The same loop bounded by the script itself finishes under the default limit.
    write(&dir, "count.rhai", "let i = 0;\nwhile i < 100000 { i += 1; }\nlog(#{ i: i });\n");
    let o = run_in(&dir, &["run", "count.rhai", "--out", "out2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn syntax_error_reports_file_line_col_and_exits_1() {
    let dir = scratch("syntax");
    // Line 2, column 9 is the `;` where an expression was expected.
    write(&dir, "bad.rhai", "let a = 1;\nlet b = ;\n");
    let o = run_in(&dir, &["run", "bad.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("error: bad.rhai:2:9: "), "{err}");
    assert!(err.contains("2 | let b = ;\n            ^"), "{err}");
    assert_no_backtrace(&err);
    // Nothing ran, so no run directory was made.
    assert!(!dir.join("out").exists());
}

#[test]
fn runtime_error_in_a_stdlib_module_points_into_the_module() {
    // Run from a folder outside the repository: the stdlib must still resolve.
    let dir = scratch("stdlib-error");
    write(&dir, "uses_stats.rhai", "import \"stats\" as stats;\nlet s = stats::summary([]);\n");
    let o = run_in(&dir, &["run", "uses_stats.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(1));
    let err = error_text(&o);
    // stdlib/stats.rhai line 8 is `throw "stats::summary: ..."`, column 9 its `throw`.
    let first = err.lines().next().unwrap();
    assert!(first.ends_with("stdlib/stats.rhai:8:9: stats::summary: the array of values is empty"), "{err}");
    assert!(err.contains("in call to `summary` at uses_stats.rhai:2:16"), "{err}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(config["status"], "failed");
}

#[test]
fn a_misspelt_stdlib_option_is_an_error_naming_it() {
    // Every stdlib entry point merges its options over its defaults() (stdlib/options.rhai):
    // an unknown key stops the run before any work, naming the key, the function and the
    // script line; an int where a float is declared is taken as the float; other types fail.
    let dir = scratch("stdlib-options");
    let task = "let task = #{ reward: |p, r| r.map(|x| 0.0), beta: 0.1, constraints: [] };\n";
    let cases = [
        ("caid", "caid::run((), (), (), task, #{ prompts: [\"q\"], keepbest: true });", "caid::run: unknown option \"keepbest\""),
        ("primal_dual", "primal_dual::run((), (), (), task, #{ lambda0: [1.0], prompts: [], updats: 2 });", "primal_dual::run: unknown option \"updats\""),
        ("oneshot", "oneshot::solve((), [], task, 0.1, #{ soft_label: true });", "oneshot::solve: unknown option \"soft_label\""),
        ("safety_experiment", "let o = safety_experiment::defaults(); o.pairs_per_iteraton = 8; safety_experiment::run(o);",
         "safety_experiment::run: unknown option \"pairs_per_iteraton\""),
        ("caid", "caid::run((), (), (), task, #{ prompts: [\"q\"], keep_best: \"yes\" });", "caid::run: option \"keep_best\" must be bool"),
        ("caid", "caid::run((), (), (), task, #{ iterations: 2 });", "caid::run: option \"prompts\" is required"),
    ];
    for (i, (module, call, message)) in cases.iter().enumerate() {
        let name = format!("case{i}.rhai");
        write(&dir, &name, &format!("import \"{module}\" as {module};\n{task}{call}\n"));
        let o = run_in(&dir, &["run", &name, "--out", &format!("out{i}")]);
        assert_eq!(o.status.code(), Some(1), "{call}");
        let err = error_text(&o);
        assert!(err.lines().next().unwrap().contains(message), "{call}: {err}");
        assert!(err.contains(&format!("at {name}:3:")), "the script line is named: {err}");
    }
    // The Rust functions follow the same rule from their declarations (src/script/options.rs).
    let rust = [
        ("load_model(\"builtin:tiny\").generate([\"a\"], #{ temprature: 1.0 });", "generate: unknown option `temprature` (known: n, max_new_tokens, temperature,"),
        ("load_model(\"builtin:tiny\", #{ lora: #{ rnk: 4 } });", "lora: unknown option `rnk` (known: rank, alpha, dropout, targets)"),
        ("load_model(\"builtin:tiny\").generate([\"a\"], #{ n: -2 });", "generate: option `n` must be count, found i64 -2"),
        ("report(#{ title: \"t\", plots: [#{ x: \"a\", y: [\"b\"], scater: true }] });", "report: plots[0]: plots[i]: unknown option `scater`"),
        ("exact_world(#{ alphabet: \"ab\" });", "exact_world: option `prompts` is required (the world's prompts)"),
    ];
    for (i, (call, message)) in rust.iter().enumerate() {
        let name = format!("rust{i}.rhai");
        write(&dir, &name, &format!("{call}\n"));
        let o = run_in(&dir, &["run", &name, "--out", &format!("rust_out{i}")]);
        assert_eq!(o.status.code(), Some(1), "{call}");
        let err = error_text(&o);
        assert!(err.lines().next().unwrap().contains(message), "{call}: {err}");
    }
    // The int-to-float rule: `x: 2` is taken as 2.0 where the default is a float; defaults fill the rest.
    write(&dir, "merge.rhai", "import \"options\" as options;\nlet o = options::merge(\"f\", #{ x: 1.0, y: \"a\" }, #{ x: 2 });\nlog(#{ x: o.x, t: type_of(o.x), y: o.y });\n");
    let o = run_in(&dir, &["run", "merge.rhai", "--out", "merged"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("merged/metrics.csv")).unwrap(), "t,x,y\nf64,2.0,a\n");
}

#[test]
fn module_next_to_the_script_is_imported_and_its_syntax_errors_located() {
    let dir = scratch("local-module");
    write(&dir, "helpers.rhai", "fn twice(x) { x * 2 }\n");
    write(&dir, "main.rhai", "import \"helpers\" as h;\nlog(#{ y: h::twice(21) });\n");
    let o = run_in(&dir, &["run", "main.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("out/metrics.csv")).unwrap(), "y\n42\n");

    write(&dir, "broken.rhai", "fn f(x) {\n  x +\n}\n");
    write(&dir, "main2.rhai", "import \"broken\" as b;\n");
    let o = run_in(&dir, &["check", "main2.rhai"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.lines().next().unwrap().contains("broken.rhai:3:1: "), "{err}");
    assert!(err.contains("broken.rhai\" at main2.rhai:1:1"), "{err}");
}

#[test]
fn set_with_the_wrong_type_is_a_usage_error() {
    let dir = scratch("set-type");
    write(&dir, "job.rhai", "let n = config(\"samples\", 8);\nprint(n);\n");
    let o = run_in(&dir, &["run", "job.rhai", "--set", "samples=lots", "--out", "out"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--set samples=lots: expected an integer, the type of the script's default (8); read by config at job.rhai:1:9"), "{err}");
    // The classification travels in the error value: read inside a module's function, it is
    // still a usage error.
    // (Regression: `host`'s static scan missed `config` calls that are statements of their own,
    // such as a function's last line, and called their `--set` keys unknown.)
    write(&dir, "helper.rhai", "fn n() { let d = 8; config(\"samples\", d) }\n");
    write(&dir, "nested.rhai", "import \"helper\" as h;\nprint(h::n());\n");
    let o = run_in(&dir, &["run", "nested.rhai", "--set", "samples=lots", "--out", "out3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Floats accept integers; booleans only true/false; arrays JSON.
    write(&dir, "types.rhai", "let a = config(\"a\", 0.5); let b = config(\"b\", false); let c = config(\"c\", [1]);\nlog(#{ a: a, b: b, n: c.len() });\n");
    let o = run_in(&dir, &["run", "types.rhai", "--set", "a=2", "--set", "b=true", "--set", "c=[1,2,3]", "--out", "out2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("out2/metrics.csv")).unwrap(), "a,b,n\n2.0,true,3\n");
}

#[test]
fn unknown_set_key_names_the_keys_the_script_reads() {
    let dir = scratch("set-unknown");
    write(&dir, "job.rhai", "let t = config(\"threshold\", 1.0);\nlet s = config(\"dual_step\", 0.1);\n");
    let o = run_in(&dir, &["run", "job.rhai", "--set", "treshold=2", "--out", "out"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "error: unknown --set key treshold: the script reads dual_step, threshold\n");
    assert!(!dir.join("out").exists(), "nothing should run");
    let o = run_in(&dir, &["run", "job.rhai", "--set", "novalue", "--out", "out"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "error: --set novalue: expected KEY=VALUE\n");
    // configure(map, [keys]) reads each listed key as config(key, map[key]): the static scan knows
    // its keys (a listed key is accepted, another is unknown), values are typed by the map's.
    write(&dir, "many.rhai", "let o = configure(#{ beta: 0.1, steps: 3, name: \"a\", fixed: 1 }, [\"beta\", \"steps\", \"name\"]);\nlog(o);\n");
    let o = run_in(&dir, &["run", "many.rhai", "--set", "beta=1", "--set", "name=b", "--out", "out2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("out2/metrics.csv")).unwrap(), "beta,fixed,name,steps\n1.0,1,b,3\n");
    let o = run_in(&dir, &["run", "many.rhai", "--set", "fixed=2", "--out", "out3"]);
    assert_eq!(stderr(&o), "error: unknown --set key fixed: the script reads beta, name, steps\n");
    let o = run_in(&dir, &["run", "many.rhai", "--set", "steps=1.5", "--out", "out4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--set steps=1.5: expected an integer"), "{}", stderr(&o));
    write(&dir, "absent.rhai", "configure(#{ beta: 0.1 }, [\"beta\", \"gamma\"]);\n");
    let e = error_text(&run_in(&dir, &["run", "absent.rhai", "--out", "out5"]));
    assert!(e.contains("configure: `gamma` is not a key of the map"), "{e}");
}

#[test]
fn missing_script_is_one_line_and_exit_2() {
    let dir = scratch("missing");
    let o = run_in(&dir, &["run", "nope.rhai"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: nope.rhai: cannot read the script"), "{err}");
    let o = run_in(&dir, &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn libtorch_error_becomes_a_script_error_at_the_call() {
    let dir = scratch("torch-error");
    write(&dir, "shapes.rhai", "let a = tensor([1.0, 2.0]);\nlet b = tensor([1.0, 2.0, 3.0]);\nlet c = a + b;\n");
    let o = run_in(&dir, &["run", "shapes.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(1));
    let err = error_text(&o);
    assert!(err.starts_with("error: shapes.rhai:3:11: libtorch: The size of tensor a (2) must match the size of tensor b (3)"), "{err}");
    assert_no_backtrace(&err);
}

#[test]
fn check_parses_without_running() {
    let dir = scratch("check");
    // If this ran it would fail at the throw; check must not run it.
    write(&dir, "job.rhai", "import \"stats\" as stats;\nlet k = config(\"k\", 4);\nthrow \"ran\";\n");
    let o = run_in(&dir, &["check", "job.rhai"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ok: job.rhai (1 module imported; config keys: k)\n");
    let o = run_in(&dir, &["check", "job.rhai", "--set", "kk=1"]);
    assert_eq!(o.status.code(), Some(2));
    // The shipped default job passes check.
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/safe_align.rhai");
    let o = host().arg("check").arg(&job).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn api_lists_registered_functions_with_docs() {
    let o = host().arg("api").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    let line = text.lines().find(|l| l.starts_with("config(key: string, default: ?) -> ?")).expect(&text);
    assert!(line.ends_with("The setting `key`: the value of `--set key=...` parsed as the default's type, else the default."), "{line}");
    assert!(text.lines().any(|l| l.starts_with("Tensor.shape -> array")), "{text}");

    let o = host().args(["api", "--json"]).output().unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let log = entries.iter().find(|e| e["name"] == "log").unwrap();
    assert_eq!(log["signature"], "log(row: map)");
    assert!(entries.iter().all(|e| !e["doc"].as_str().unwrap().is_empty()), "every function has a doc line");
    // Every function that takes an option map lists its options, each from the declaration the
    // function parses with (src/script/options.rs), with its type and default.
    for e in &entries {
        let sig = e["signature"].as_str().unwrap();
        if sig.contains("opts: map") || sig.contains("spec: map") {
            assert!(!e["options"].as_array().unwrap().is_empty(), "{sig} lists no options");
        }
    }
    let dpo = entries.iter().find(|e| e["name"] == "dpo").unwrap();
    let dpo_opts: Vec<&str> = dpo["options"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    // DpoOptions::default(): β = 0.1, lr 5e-4 (the one default; the binding no longer has its own).
    assert!(dpo_opts.contains(&"beta: number = 0.1. KL weight β of the implicit reward β·log(π/π_ref)"), "{dpo_opts:?}");
    assert!(dpo_opts.contains(&"lr: number = 0.0005. AdamW learning rate"), "{dpo_opts:?}");
    assert_eq!(dpo_opts.len(), 23, "12 DPO options and 11 of the optimizer loop: {dpo_opts:?}");
    assert!(text.contains("\n    lora.rank: count = 8. adapter rank r (at least 1)\n"), "nested options are listed with their map's name: {text}");
    // The stdlib's entry points too: each `defaults()` evaluated (stdlib/options.rhai's method()
    // for caid), every key with its default and the comment beside its declaration.
    let caid = entries.iter().find(|e| e["name"] == "caid::defaults").expect("caid's options");
    let caid_opts: Vec<&str> = caid["options"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert!(caid_opts.contains(&"keep_best: bool = false. return best_policy, a copy of the best iterate's weights"), "{caid_opts:?}");
    assert!(caid_opts.contains(&"lambda0: any = (unset). starting λ per constraint (() for the one-shot warm start)"), "{caid_opts:?}");
    for name in ["caid::defaults", "primal_dual::defaults", "safety_experiment::defaults"] {
        let e = entries.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} missing"));
        for o in e["options"].as_array().unwrap() {
            let o = o.as_str().unwrap();
            assert!(!o.ends_with('.'), "{name}: {o} has no doc comment");
        }
    }

    let dir = scratch("definitions");
    let o = host().args(["api", "--definitions"]).arg(dir.join("defs")).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let all: String = std::fs::read_dir(dir.join("defs")).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(all.contains("fn config(key: string, default: ?) -> ?;"), "{all}");
}

#[test]
fn version_reports_libtorch_and_cuda() {
    let o = host().arg("--version").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v = stdout(&o);
    assert!(v.starts_with("host 0.1.0 (libtorch 2.11.0"), "{v}");
    assert!(v.contains("CUDA available: "), "{v}");
    // The c10d shim compiles against the torch wheel's headers on this kind of machine (build.rs).
    // NCCL is in when the CUDA headers were there at build time (scripts/setup.sh installs them).
    let lib = std::path::Path::new(&std::env::var("DUALIGN_PYTHON").unwrap()).parent().unwrap().parent().unwrap().join("lib");
    let nccl_headers = std::fs::read_dir(&lib).unwrap().any(|py| py.unwrap().path().join("site-packages/nvidia/cu13/include/crt/host_defines.h").exists());
    let expected = if nccl_headers { "distributed: gloo, nccl)" } else { "distributed: gloo (NCCL unavailable))" };
    assert!(v.contains(expected), "{v}");
}

#[test]
fn ctrl_c_stops_a_running_script_cleanly() {
    let dir = scratch("interrupt");
    write(&dir, "forever.rhai", "log(#{ started: true });\nlet i = 0;\nloop { i += 1; }\n");
    let child = host().current_dir(&dir).args(["run", "forever.rhai", "--out", "out"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait until the script is running (its first metrics row exists), then send SIGINT.
    let t0 = std::time::Instant::now();
    while !dir.join("out/metrics.csv").exists() {
        assert!(t0.elapsed().as_secs() < 60, "script never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted (Ctrl-C)"), "{}", stderr(&out));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(config["status"], "interrupted");
}

#[test]
fn set_type_is_checked_at_run_time_when_the_default_is_not_a_literal() {
    let dir = scratch("set-runtime");
    write(&dir, "job.rhai", "let base = 4;\nlet n = config(\"n\", base * 2);\n");
    let o = run_in(&dir, &["run", "job.rhai", "--set", "n=x", "--out", "out"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(error_text(&o), "error: --set n=x: expected an integer, the type of the script's default (8); read by config at job.rhai:2:9\n");
}

#[test]
fn model_api_from_a_script() {
    let dir = scratch("model-api");
    write(&dir, "m.rhai", r#"
let m = load_model("builtin:tiny", #{ lora: #{ rank: 2 } });
let ref = m.frozen();
let p = m.chat("hi");
if p != "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" { throw `chat: ${p}`; }
let ids = m.encode("héllo");
if m.decode(ids) != "héllo" { throw "decode(encode(x)) != x"; }
if ids.len() != 6 { throw `byte tokenizer: ${ids.len()} ids`; }
let out = m.generate([p, "abc"], #{ n: 2, max_new_tokens: 5, temperature: 1.0, seed: 3 });
if out.len() != 4 { throw `generate returned ${out.len()}`; }
let lp = m.logprobs([p, p], ["yes", "no"]);
let lp_ref = ref.logprobs([p, p], ["yes", "no"]);
log(#{ lp0: lp[0], same: lp[0] == lp_ref[0] });
m.save("model");
m.save("adapter", #{ merge: false });
"#);
    let o = run_in(&dir, &["run", "m.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A fresh adapter (B = 0) leaves the model equal to its reference.
    let csv = std::fs::read_to_string(dir.join("out/metrics.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().ends_with(",true"), "{csv}");
    for f in ["model/config.json", "model/model.safetensors", "model/tokenizer.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"] {
        assert!(dir.join("out").join(f).is_file(), "{f}");
    }
    // Scripts write only inside the run directory.
    write(&dir, "escape.rhai", "let m = load_model(\"builtin:tiny\");\nm.save(\"../outside\");\n");
    let o = run_in(&dir, &["run", "escape.rhai", "--out", "out2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(error_text(&o).starts_with("error: escape.rhai:2:3: ../outside: scripts write only inside the run directory"), "{}", error_text(&o));
    // Nor through a symbolic link already in the run directory that points outside it (a folder
    // or a file); a link that stays inside is followed, and absolute paths are refused.
    let outside = dir.join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(dir.join("out4/inner")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("out4/link")).unwrap();
    std::os::unix::fs::symlink(outside.join("f.jsonl"), dir.join("out4/f.jsonl")).unwrap();
    std::os::unix::fs::symlink("inner", dir.join("out4/ok")).unwrap();
    for (target, line) in [("link/x.jsonl", "out4/link is a symbolic link to"), ("f.jsonl", "out4/f.jsonl is a symbolic link"), ("/tmp/x.jsonl", "scripts write only inside the run directory")] {
        write(&dir, "link.rhai", &format!("write_jsonl(\"{target}\", [#{{ a: 1 }}]);\n"));
        let o = run_in(&dir, &["run", "link.rhai", "--out", "out4"]);
        assert_eq!(o.status.code(), Some(1), "{target}");
        let e = error_text(&o);
        assert!(e.starts_with(&format!("error: link.rhai:1:1: {target}: ")) && e.contains(line), "{e}");
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
    write(&dir, "link.rhai", "write_jsonl(\"ok/x.jsonl\", [#{ a: 1 }]);\n");
    let o = run_in(&dir, &["run", "link.rhai", "--out", "out4"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.join("out4/inner/x.jsonl").is_file());
    // A missing model is one clear error at the call.
    write(&dir, "missing.rhai", "let m = load_model(\"no/such/model\");\n");
    let o = run_in(&dir, &["run", "missing.rhai", "--out", "out3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(error_text(&o).starts_with("error: missing.rhai:1:9: no/such/model: no such model folder or GGUF file"), "{}", error_text(&o));
}

#[test]
fn a_saved_lora_adapter_loads_onto_its_base_and_computes_what_it_did() {
    // Train an adapter a little (SFT moves B off zero), save it in PEFT's layout, load it onto a
    // fresh base with `adapter:` and compare log-probs; then the errors: another rank, another
    // base, and an adapter asked for together with new LoRA options.
    let dir = scratch("adapter-in");
    write(&dir, "a.rhai", r#"
let m = load_model("builtin:tiny", #{ lora: #{ rank: 4 } });
let p = m.chat("hi");
let before = m.logprobs([p], ["yes"]);
sft(m, [p, p], ["yes", "yes!"], #{ epochs: 3, lr: 0.01 });
let after = m.logprobs([p], ["yes"]);
m.save("ad", #{ merge: false });
let back = load_model("builtin:tiny", #{ adapter: run_dir() + "/ad" });
let again = back.logprobs([p], ["yes"]);
let base = back.frozen().logprobs([p], ["yes"]);
log(#{ moved: after[0] - before[0], loaded: again[0] - after[0], base: base[0] - before[0] });
"#);
    let o = run_in(&dir, &["run", "a.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap().lines().last().unwrap()).unwrap();
    assert!(row["moved"].as_f64().unwrap().abs() > 1e-3, "the adapter was trained: {row}");
    assert!(row["loaded"].as_f64().unwrap().abs() < 1e-5, "the loaded adapter computes what it did: {row}");
    assert!(row["base"].as_f64().unwrap().abs() < 1e-5, "adapters off is the base: {row}");
    let ad = dir.join("out/ad");
    let config = std::fs::read_to_string(ad.join("adapter_config.json")).unwrap();
    std::fs::write(ad.join("adapter_config.json"), config.replace("\"r\": 4", "\"r\": 2")).unwrap();
    for (script, want) in [
        (format!("load_model(\"builtin:tiny\", #{{ adapter: \"{}\" }});", ad.display()), "adapter_model.safetensors: tensor base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [4, 64]; this base model with r = 2 needs [2, 64]"),
        (format!("load_model(\"builtin:tiny\", #{{ lora: #{{}}, adapter: \"{}\" }});", ad.display()), "give lora (new adapters) or adapter (a saved one), not both"),
        ("load_model(\"builtin:tiny\", #{ adapter: \"nowhere\" });".to_string(), "nowhere/adapter_config.json: cannot read"),
    ] {
        write(&dir, "b.rhai", &script);
        let o = run_in(&dir, &["run", "b.rhai", "--out", "out2"]);
        assert_eq!(o.status.code(), Some(1), "{script}");
        assert!(error_text(&o).contains(want), "{}", error_text(&o));
        let _ = std::fs::remove_dir_all(dir.join("out2"));
    }
}

#[test]
fn chat_templates_from_a_script() {
    // m.chat renders the model's Jinja template: one user message or a conversation; a script can
    // give a template at load; a model without one, a template's raise_exception, a template that
    // does not compile and a malformed message are each one error naming the problem.
    let dir = scratch("chat");
    write(&dir, "c.rhai", r#"
let m = load_model("builtin:tiny");
let conv = m.chat([#{ role: "system", content: "Be brief." }, #{ role: "user", content: "hi" }, #{ role: "assistant", content: "hello" }, #{ role: "user", content: "bye" }]);
if conv != "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n" { throw `conversation: ${conv}`; }
let own = load_model("builtin:tiny", #{ chat_template: "{% for m in messages %}{{ m.role | upper }}: {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}" });
let p = own.chat("  hi  ");
if p != "USER: hi\nASSISTANT:" { throw `own template: ${p}`; }
"#);
    let o = run_in(&dir, &["run", "c.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let gpt2 = common::reference("hf_models.py").join("gpt2");
    for (script, want) in [
        (format!(r#"load_model("{}").chat("hi");"#, gpt2.display()), "this model has no chat template"),
        (r#"load_model("builtin:tiny", #{ chat_template: "{{ raise_exception('No system messages') }}" }).chat("hi");"#.to_string(), "chat template: No system messages (line 1)"),
        (r#"load_model("builtin:tiny", #{ chat_template: "{% for m in messages %}" });"#.to_string(), "chat template: unexpected end of input"),
        (r#"load_model("builtin:tiny").chat([#{ role: "user" }]);"#.to_string(), "chat: message 0 must be a map with string role and content"),
    ] {
        write(&dir, "b.rhai", &script);
        let o = run_in(&dir, &["run", "b.rhai", "--out", "out2"]);
        assert_eq!(o.status.code(), Some(1), "{script}: {}", stderr(&o));
        assert!(error_text(&o).contains(want), "{script}: {}", error_text(&o));
        let _ = std::fs::remove_dir_all(dir.join("out2"));
    }
}

#[test]
fn preference_data_operations_from_a_script() {
    let dir = scratch("pairs");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/data/safety_prefs.jsonl");
    write(&dir, "bad.jsonl", "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\nnot json\n");
    write(&dir, "d.rhai", &format!(r#"
let pairs = load_preferences("{}");
let n = pairs.len();
let parts = pairs.shuffle(1).split(0.8);
let train = parts[0];
let held = parts[1];
if train.len() + held.len() != n {{ throw "split lost pairs"; }}
let harmful = pairs.filter(|p| p.category != "benign");
let first = pairs[0];
// A utility written in Rhai: 1 for a refusal, 0 otherwise.
fn refuses(prompts, responses) {{
    responses.map(|r| if r.starts_with("I can't") || r.starts_with("I won't") || r.starts_with("I'm sorry") || r.starts_with("I'd rather") {{ 1.0 }} else {{ 0.0 }})
}}
fn length(prompts, responses) {{ responses.map(|r| r.len().to_float() / 100.0) }}
harmful.score_with("refusal", refuses).score_with("length", length);
// The same column name from another function is computed again, not read from the first.
let lengths = harmful.scores("length");
harmful.score_with("length", |prompts, responses| responses.map(|r| 7.0));
let replaced = harmful.scores("length")[0][1];
harmful.score_with("length", length);
let restored = harmful.scores("length") == lengths;
let a = harmful.relabel(#{{ length: 0.0, refusal: 50.0 }}, 3);
let refusing = 0;
for i in 0..a.len() {{ if refuses([], [a[i].chosen])[0] == 1.0 {{ refusing += 1; }} }}
let b = harmful.with_label("better");
let better_refusing = 0;
for i in 0..b.len() {{ if refuses([], [b[i].chosen])[0] == 1.0 {{ better_refusing += 1; }} }}
let skipped = load_preferences("bad.jsonl", #{{ skip_bad: true }}).skipped;
log(#{{ n: n, prompts: pairs.prompts().len(), harmful: harmful.len(), refusing: refusing, better_refusing: better_refusing,
       take: pairs.take(5).len(), skip: pairs.skip(n - 2).len(), label: a.label, skipped: skipped.len(), first_has_scores: type_of(first.scores), replaced: replaced, restored: restored }});
"#, data.display()));
    let o = run_in(&dir, &["run", "d.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("load_preferences: 1 bad records skipped: ") && stderr(&o).contains("bad.jsonl:2: not valid JSON"), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let r = &rows[0];
    let harmful = r["harmful"].as_i64().unwrap();
    assert_eq!(r["n"], 527);
    assert_eq!(r["prompts"], 315);
    // With a weight of 50 on the refusal utility, sigmoid(50) ~ 1: every relabelled pair prefers
    // its refusal, while the helpfulness label prefers the compliant answer everywhere.
    assert_eq!(r["refusing"].as_i64().unwrap(), harmful);
    assert_eq!(r["better_refusing"], 0);
    assert_eq!((r["take"].as_i64(), r["skip"].as_i64(), r["skipped"].as_i64()), (Some(5), Some(2), Some(1)));
    assert_eq!(r["label"], "relabel");
    assert_eq!((r["replaced"].as_f64(), r["restored"].as_bool()), (Some(7.0), Some(true)), "{r}");
}

#[test]
fn dual_variables_and_the_one_shot_dual_from_a_script() {
    let dir = scratch("dual");
    write(&dir, "d.rhai", r#"
let d = dual(2);
d.step([-0.5, 1.0], 0.4);            // violated: up by 0.2; slack: stays at 0
d.step([-0.5, 1.0], |t, lambda, slack| [1.0 / t, 1.0]);   // a rule written in Rhai: η = 1/t
let h = d.history;
// One prompt, two responses: λ* = (β logit(p*) - Δr) / Δg with p* = (ḡ + b - g0) / Δg.
let s = one_shot_dual(#{ rewards: [[1.0, 0.0]], utilities: [[[0.0, 2.0]]], thresholds: [0.5], beta: 0.5 });
let bad = one_shot_dual(#{ rewards: [[1.0, 0.0]], utilities: [[[0.0, 2.0]]], thresholds: [1.5], beta: 0.5 });
log(#{ l0: d.values[0], l1: d.values[1], steps: d.t, history: h.len(), lambda: s.lambda[0], feasible: bad.feasible[0], bad_lambda: bad.lambda[0] });
"#);
    let o = run_in(&dir, &["run", "d.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    // λ0: 0 + 0.4·0.5 = 0.2, then + (1/2)·0.5 = 0.45; λ1 stays at 0 (projection).
    assert!((r["l0"].as_f64().unwrap() - 0.45).abs() < 1e-12, "{r}");
    assert_eq!(r["l1"], 0.0);
    assert_eq!((r["steps"].as_i64(), r["history"].as_i64()), (Some(2), Some(3)));
    // p* = (1 + 0.5 - 0) / 2 = 0.75; λ* = (0.5 ln 3 + 1) / 2.
    let want = (0.5 * 3f64.ln() + 1.0) / 2.0;
    assert!((r["lambda"].as_f64().unwrap() - want).abs() < 1e-7, "{r} vs {want}");
    assert_eq!((r["feasible"].as_bool(), r["bad_lambda"].as_f64()), (Some(false), Some(0.0)));
    // A misspelt field of the problem is an error naming it and the known ones.
    write(&dir, "typo.rhai", "one_shot_dual(#{ rewards: [[1.0, 0.0]], utilities: [[[0.0, 2.0]]], threshold: [0.5], beta: 0.5 });");
    let o = run_in(&dir, &["run", "typo.rhai", "--out", "out2"]);
    let e = error_text(&o);
    assert!(e.contains("one_shot_dual: unknown option `threshold` (known: rewards, utilities, thresholds, beta, ref_means)"), "{e}");
}

#[test]
fn the_default_job_runs_end_to_end_in_a_reduced_configuration() {
    // The tiny random model stands in for SmolLM2 so this stays fast; it checks the pipeline
    // and the run directory, not the size of the effect (the full run's table is in the README).
    let dir = scratch("safe-align");
    let sets = ["policy=builtin:tiny", "iterations=2", "dual_prompts=6", "samples=2", "max_new_tokens=8", "pairs_per_iteration=16", "eval_harmful=3", "eval_benign=3", "eval_samples=1", "max_len=96", "slack_z=1.645"];
    let o = common::run_job(&dir, "scripts/safe_align.rhai", &sets);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = dir.join("out");
    for f in ["config.json", "metrics.csv", "metrics.jsonl", "eval_generations.jsonl", "samples/iteration_0.jsonl", "samples/iteration_1.jsonl", "checkpoints/iterate_0/adapter_model.safetensors", "checkpoints/iterate_1/adapter_config.json", "report.md", "dual.svg", "objectives.svg"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("![Dual variable and constraint slack per iteration](dual.svg)") && report.contains("| reference |"), "{report}");
    // Two iterations: λ and slack drawn as two lines of two points each.
    let svg = std::fs::read_to_string(out.join("dual.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let caid: Vec<&serde_json::Value> = rows.iter().filter(|r| r["phase"] == "caid" && r["iteration"].as_i64().unwrap() >= 0).collect();
    assert_eq!(caid.len(), 2);
    // The dual step of the method on the slack's one-sided lower bound: λ(1) = max(0, λ(0) - η·(u(0) - z·se(0)))
    // with η the dual_step setting (5 by default, stdlib/safety_experiment.rhai) and z the slack_z
    // setting (1.645, the job's default), as config.json records them.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let (eta, z) = (config["config"]["dual_step"].as_f64().unwrap(), config["config"]["slack_z"].as_f64().unwrap());
    assert_eq!((eta, z), (5.0, 1.645));
    let num = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    let (l0, u0, se0, lower0, l1) = (num(caid[0], "lambda_safety"), num(caid[0], "slack_safety"), num(caid[0], "slack_stderr_safety"), num(caid[0], "slack_lower_safety"), num(caid[1], "lambda_safety"));
    assert!(se0 > 0.0 && (lower0 - (u0 - z * se0)).abs() < 1e-12, "{u0} {se0} {lower0}");
    assert!((l1 - (l0 - eta * lower0).max(0.0)).abs() < 1e-9, "{l0} {lower0} {l1}");
    // scorer_pairs left at its default (0): the proxies learn from every pair the policy steps
    // relabel, pairs_per_iteration × iterations = 16 × 2.
    let scorer = rows.iter().find(|r| r["phase"] == "scorer:safer").expect("the safety proxy's row");
    assert_eq!(scorer["pairs"], 32, "{scorer}");
    assert!(rows.iter().any(|r| r["phase"] == "dpo"), "DPO steps are logged");
    assert!(rows.iter().any(|r| r["phase"] == "final"));
    assert_eq!(config["status"], "ok");
    assert_eq!(config["config"]["threshold"], 0.25, "the default threshold (stdlib/safety_experiment.rhai)");
    assert!(stdout(&o).contains("| reference |"), "{}", stdout(&o));
    // The aligned model is the job's `select: "last"` choice: the last iterate whose lower bound
    // is met, else the one whose lower bound falls least short (stdlib/caid.rhai, `better`).
    let lowers: Vec<f64> = caid.iter().map(|r| num(r, "slack_lower_safety")).collect();
    let expected = match lowers.iter().rposition(|l| *l >= 0.0) {
        Some(i) => i,
        None => (0..lowers.len()).fold(0, |b, i| if lowers[i] > lowers[b] { i } else { b }),
    };
    assert_eq!(config["config"]["select"], "last", "the job's default (stdlib/safety_experiment.rhai)");
    assert!(stdout(&o).contains(&format!("aligned model: iterate {expected} ")), "lower bounds {lowers:?}: {}", stdout(&o));
}

#[test]
fn the_best_iterate_rules_pick_what_their_doc_lines_say() {
    // Synthetic iterates (no model): 0 infeasible, 1 and 2 feasible with 1 the higher reward,
    // 3 infeasible. "reward" takes 1, "last" takes 2; with none feasible both take the smallest
    // worst violation (index 2 below), whatever the reward.
    let dir = scratch("select");
    let job = r#"
import "caid" as caid;
let its = [#{ iteration: 0, max_violation: 0.3, reward: 2.0 }, #{ iteration: 1, max_violation: 0.0, reward: 1.5 },
           #{ iteration: 2, max_violation: 0.0, reward: 1.0 }, #{ iteration: 3, max_violation: 0.1, reward: 3.0 }];
let none = [#{ iteration: 0, max_violation: 0.3, reward: 2.0 }, #{ iteration: 1, max_violation: 0.2, reward: 1.5 },
            #{ iteration: 2, max_violation: 0.05, reward: 1.0 }, #{ iteration: 3, max_violation: 0.1, reward: 3.0 }];
log(#{ reward: caid::best(its, #{ tolerance: 0.0, select: "reward" }), last: caid::best(its, #{ tolerance: 0.0, select: "last" }),
       none_reward: caid::best(none, #{ tolerance: 0.0, select: "reward" }), none_last: caid::best(none, #{ tolerance: 0.0, select: "last" }),
       tolerant_last: caid::best(none, #{ tolerance: 0.1, select: "last" }) });
caid::run((), (), (), #{}, #{ prompts: ["q"], select: "first" });
"#;
    write(&dir, "select.rhai", job);
    let o = run_in(&dir, &["run", "select.rhai", "--out", "out"]);
    let rows = common::jsonl(&dir.join("out/metrics.jsonl"));
    let r = &rows[0];
    assert_eq!((r["reward"].as_i64(), r["last"].as_i64(), r["none_reward"].as_i64(), r["none_last"].as_i64()), (Some(1), Some(2), Some(2), Some(2)), "{r}");
    // With tolerance 0.1, iterates 2 and 3 count as feasible: "last" takes 3.
    assert_eq!(r["tolerant_last"].as_i64(), Some(3), "{r}");
    // A misspelt rule is an error naming the option, before anything runs.
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("option \"select\" must be \"reward\" or \"last\", not \"first\""), "{}", stderr(&o));
}

#[test]
fn primal_dual_and_preference_modules_run_on_the_tiny_model() {
    let dir = scratch("pd");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/data/safety_prefs.jsonl");
    write(&dir, "pd.rhai", &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/primal_dual_smoke.rhai")).unwrap().replace("DATA", &data.display().to_string()));
    let o = run_in(&dir, &["run", "pd.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let pd: Vec<&serde_json::Value> = rows.iter().filter(|r| r["phase"] == "primal_dual").collect();
    assert_eq!(pd.len(), 3);
    // No estimate before the delay (1 update): the first row has no slack, λ unchanged at 1.
    assert!(pd[0].get("slack_brevity").is_none() && pd[1].get("slack_brevity").is_some());
    assert_eq!((pd[0]["lambda_brevity"].as_f64(), pd[1]["lambda_brevity"].as_f64()), (Some(1.0), Some(1.0)));
    // θ <- θ - lr·λ·slack with lr 0.5, λ 1: λ(2) = exp(-0.5 · slack(1)).
    let slack = pd[1]["slack_brevity"].as_f64().unwrap();
    assert!((pd[2]["lambda_brevity"].as_f64().unwrap() - (-0.5 * slack).exp()).abs() < 1e-9);
    assert!(rows.iter().any(|r| r["phase"] == "caid" && r["iteration"] == 0), "the preference-based run reached the iterative method");
}


#[test]
fn score_models_of_one_body_share_features_and_agree_with_a_fresh_forward() {
    // train_scorer's models read pooled features from a memo shared by every score model of
    // the same frozen body (seeded with the features they were trained on); `copy` has no memo
    // and runs the body. Both must give the same scores (up to batch-shape rounding), for both
    // poolings; and a mean-pooled scorer saved and loaded again (its pooling in config.json, its
    // bias in the safetensors) must too.
    let dir = scratch("memo");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/data/safety_prefs.jsonl");
    let job = r#"
let base = load_model("builtin:tiny");
let pairs = load_preferences("DATA").take(24);
let safety = train_scorer(base, pairs, "safer", #{ max_len: 128 });
let reward = train_scorer(base, pairs, "better", #{ max_len: 128 });
let mean = train_scorer(base, pairs, "safer", #{ max_len: 128, pool: "mean" });
save(mean, "mean_scorer");
let reloaded = load_scorer("out/mean_scorer");
let prompts = [];
let responses = [];
for i in 0..pairs.len() { let p = pairs[i]; prompts.push(p.prompt); responses.push(p.chosen); prompts.push(p.prompt); responses.push("A new answer " + i); }
let worst = 0.0;
for s in [safety, reward, mean] {
    let a = s.score(prompts, responses);
    let b = s.copy().score(prompts, responses);
    for i in 0..a.len() { let d = a[i] - b[i]; if d < 0.0 { d = -d; } if d > worst { worst = d; } }
}
let a = mean.score(prompts, responses);
let b = reloaded.score(prompts, responses);
let c = safety.score(prompts, responses);
let reload = 0.0;
let pooling = 0.0;
for i in 0..a.len() { let d = a[i] - b[i]; if d < 0.0 { d = -d; } if d > reload { reload = d; } let e = a[i] - c[i]; if e < 0.0 { e = -e; } if e > pooling { pooling = e; } }
log(#{ worst: worst, reload: reload, pooling: pooling, n: prompts.len() });
"#
    .replace("DATA", &data.display().to_string());
    write(&dir, "memo.rhai", &job);
    let o = run_in(&dir, &["run", "memo.rhai", "--out", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(rows.lines().last().unwrap()).unwrap();
    assert_eq!(last["n"], 48);
    assert!(last["worst"].as_f64().unwrap() < 1e-4, "{last}");
    assert!(last["reload"].as_f64().unwrap() < 1e-4, "{last}");
    // The two poolings are different heads: their scores must differ (else the option is ignored).
    assert!(last["pooling"].as_f64().unwrap() > 1e-2, "{last}");
}

#[test]
fn one_feature_store_per_body_reused_by_a_second_head_and_dropped_when_the_body_trains() {
    // train_scorer keeps the body's pooled features in one store (ScriptModel::features): a
    // second head on the same pairs reads them (no forward pass, no cache read), training the
    // body drops them, and every score model keeps the features of the weights it was copied
    // from. If the store were not dropped, `c` below would train on and score with the
    // features of the weights before DPO and disagree with its own fresh forward pass.
    let dir = scratch("store");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/data/safety_prefs.jsonl");
    let job = r#"
let policy = load_model("builtin:tiny", #{ lora: #{ rank: 4, alpha: 8.0 } });
let reference = policy.frozen();
let pairs = load_preferences("DATA").take(24);
let a = train_scorer(policy, pairs, "safer", #{ max_len: 128, pool: "mean" });
let b = train_scorer(policy, pairs, "better", #{ max_len: 128, pool: "mean" });
dpo(policy, reference, pairs, #{ lr: 0.05, epochs: 2, batch_size: 4, max_len: 128 });
let c = train_scorer(policy, pairs, "safer", #{ max_len: 128, pool: "mean" });
let prompts = pairs.prompts();
let responses = prompts.map(|p| "An answer to " + p);
fn gap(x, y) { let worst = 0.0; for i in 0..x.len() { let d = x[i] - y[i]; if d < 0.0 { d = -d; } if d > worst { worst = d; } } worst }
let sa = a.score(prompts, responses);
let sc = c.score(prompts, responses);
// A score column is the values of the head that computed it: asked again of another head under the
// same name, it is that head's (a cache keyed by the name alone would keep a's).
let firsts = []; let seconds = [];
for i in 0..pairs.len() { firsts.push(pairs[i].prompt); seconds.push(pairs[i].response_1); }
pairs.score_with("proxy", a);
pairs.score_with("proxy", c);
let column = pairs.scores("proxy").map(|s| s[1]);
log(#{ a: gap(sa, a.copy().score(prompts, responses)), b: gap(b.score(prompts, responses), b.copy().score(prompts, responses)),
       c: gap(sc, c.copy().score(prompts, responses)), moved: gap(sa, sc), column: gap(column, c.score(firsts, seconds)) });
"#
    .replace("DATA", &data.display().to_string());
    write(&dir, "store.rhai", &job);
    let cache = dir.join("cache");
    let o = host().args(["run", "store.rhai", "--out", "out"]).current_dir(&dir).env("DUALIGN_CACHE", &cache).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    // Features computed twice (before and after DPO), never read back for `b`.
    assert_eq!(err.matches("scorer features done").count(), 2, "{err}");
    assert!(!err.contains("from the cache"), "{err}");
    let rows = common::jsonl(&dir.join("out/metrics.jsonl"));
    let r = rows.last().unwrap();
    for k in ["a", "b", "c", "column"] {
        assert!(r[k].as_f64().unwrap() < 1e-4, "{k}: {r}");
    }
    // DPO moved the body: the same head trained after it scores differently.
    assert!(r["moved"].as_f64().unwrap() > 1e-3, "{r}");
}

#[test]
fn the_seeds_example_runs_the_default_job_per_seed_on_the_tiny_model() {
    // The pipeline and the aggregate table, not the effect (the tiny model is random).
    let dir = scratch("seeds");
    let sets = ["policy=builtin:tiny", "seeds=2", "iterations=2", "eval_harmful=3", "eval_benign=3", "eval_samples=1", "samples=2", "dual_prompts=4",
                "pairs_per_iteration=8", "scorer_pairs=32", "max_new_tokens=8", "max_len=96"];
    let o = common::run_job(&dir, "examples/seeds.rhai", &sets);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = dir.join("out");
    for f in ["seed_0/aligned/config.json", "seed_1/aligned/config.json", "seed_0/eval_generations.jsonl", "seed_1/samples/iteration_1.jsonl", "report.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let text = stdout(&o);
    assert!(text.contains("| 0 | ") && text.contains("| 1 | ") && text.contains("Mean Δ refusal over 2 seeds"), "{text}");
    let rows = common::jsonl(&out.join("metrics.jsonl"));
    let finals: Vec<&serde_json::Value> = rows.iter().filter(|r| r["phase"] == "final").collect();
    assert_eq!(finals.iter().map(|r| r["seed"].as_i64().unwrap()).collect::<Vec<_>>(), vec![0, 0, 1, 1], "reference and aligned rows per seed");
    let agg = rows.iter().find(|r| r["phase"] == "seeds").expect("the aggregate row");
    assert_eq!(agg["seeds"], 2);
}

#[test]
fn impossible_sizes_are_one_error_at_the_call() {
    // A tensor or a sampler KV cache of tens of terabytes: libtorch refuses the allocation and the
    // user sees one line naming the call, without libtorch's C++ backtrace (the generate path
    // printed 40 `frame #` lines before).
    let dir = scratch("sizes");
    for (script, call) in [
        ("let t = zeros([100000000, 100000000]);\n", "sizes.rhai:1:9: libtorch: "),
        ("let m = load_model(\"builtin:tiny\");\nm.generate([\"hi\"], #{ max_new_tokens: 100000000000 });\n", "sizes.rhai:2:3: libtorch: "),
    ] {
        write(&dir, "sizes.rhai", script);
        let o = run_in(&dir, &["run", "sizes.rhai", "--out", "out"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = error_text(&o);
        assert!(e.starts_with(&format!("error: {call}")) && e.contains("can't allocate memory"), "{e}");
        assert_no_backtrace(&stderr(&o));
        let _ = std::fs::remove_dir_all(dir.join("out"));
    }
}
