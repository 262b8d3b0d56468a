//! `host`: runs alignment scripts. `host run SCRIPT`, `host check SCRIPT`, `host api`.
//! Exit codes: 0 success, 1 the script failed, 2 usage errors, 130 interrupted.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dualign::script::{self, errors::ScriptError, Session};
use dualign::{device, interrupt, run};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

fn long_version() -> &'static str {
    let v = dualign::versions();
    let text = format!(
        "{} (libtorch {}, CUDA available: {}{}, distributed: {})",
        env!("CARGO_PKG_VERSION"),
        v["libtorch"].as_str().unwrap_or("unknown"),
        if v["cuda_available"].as_bool() == Some(true) { "yes" } else { "no" },
        match v["cuda_devices"].as_i64() {
            Some(n) if n > 0 => format!(", {n} device(s)"),
            _ => String::new(),
        },
        match v["distributed"].as_array().map(|a| a.iter().filter_map(|b| b.as_str()).collect::<Vec<_>>().join(", ")) {
            Some(b) if !b.is_empty() => format!("{b} (NCCL unavailable)"),
            _ => "unavailable".to_string(),
        }
    );
    Box::leak(text.into_boxed_str())
}

#[derive(Parser)]
#[command(name = "host", version = long_version(), about = "Constrained alignment of language models, driven by Rhai scripts on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a script; its outputs go to a new run directory.
    Run {
        /// The .rhai script to run (omit with --resume).
        #[arg(required_unless_present = "resume")]
        script: Option<PathBuf>,
        /// Continue the interrupted run in this run directory: same script, settings and seed;
        /// finished training and sampling calls are replayed from its journal.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["script", "set", "out", "seed"])]
        resume: Option<PathBuf>,
        /// Override a setting the script reads with config(key, default); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run directory (default: runs/<script>-<UTC time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where tensors and models live.
        #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda")]
        device: String,
        /// Random seed for libtorch and for every seeded operation the script does not seed itself.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Stop the script with an error after this many Rhai operations (a runaway loop); 0 for
        /// no limit. Work done inside host functions (training, sampling) counts as one call.
        #[arg(long, default_value_t = script::DEFAULT_MAX_OPERATIONS, value_name = "N")]
        max_operations: u64,
    },
    /// Parse a script and every module it imports, without running anything.
    Check {
        script: PathBuf,
        /// Also check these overrides against the config keys the script reads.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List every script-visible function with its signature and a one-line description.
    Api {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Write .d.rhai definition files for editor completion into this folder.
        #[arg(long, value_name = "DIR")]
        definitions: Option<PathBuf>,
    },
}

/// How a command ended, mapped to the exit code.
enum Failure {
    Usage(String),
    /// Nothing to do (exit 0 with a message).
    Done(String),
    Script(ScriptError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn parse_sets(sets: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut out = BTreeMap::new();
    for s in sets {
        let Some((k, v)) = s.split_once('=') else {
            return Err(Failure::Usage(format!("--set {s}: expected KEY=VALUE")));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(Failure::Usage(format!("--set {s}: the key is empty")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn check_script_file(script: &Path) -> Result<(), Failure> {
    match std::fs::metadata(script) {
        Err(e) => Err(Failure::Usage(format!("{}: cannot read the script: {e}", script.display()))),
        Ok(m) if !m.is_file() => Err(Failure::Usage(format!("{}: not a file", script.display()))),
        Ok(_) => std::fs::read_to_string(script)
            .map(|_| ())
            .map_err(|e| Failure::Usage(format!("{}: cannot read the script: {e}", script.display()))),
    }
}

/// What `host --resume DIR` needs from the run's `config.json`.
fn resume_settings(dir: &Path) -> Result<(PathBuf, Vec<String>, i64, String), Failure> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Failure::Usage(format!("{}: cannot read ({e}); --resume takes a run directory", path.display())))?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("{}: not valid JSON: {e}", path.display())))?;
    let script = config.get("script_path").or_else(|| config.get("script")).and_then(|v| v.as_str()).ok_or_else(|| Failure::Usage(format!("{}: no `script` field", path.display())))?;
    let sets = config.get("overrides").and_then(|v| v.as_object()).map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect()).unwrap_or_default();
    let seed = config.get("seed").and_then(|v| v.as_i64()).unwrap_or(0);
    let device = config.get("device").and_then(|v| v.as_str()).unwrap_or("auto").to_string();
    if config.get("status").and_then(|v| v.as_str()) == Some("ok") {
        return Err(Failure::Done(format!("{}: this run finished (status ok); nothing to resume", dir.display())));
    }
    Ok((PathBuf::from(script), sets, seed, device))
}

fn cmd_run(script_path: Option<PathBuf>, resume: Option<PathBuf>, sets: Vec<String>, out: Option<PathBuf>, device_name: String, seed: i64, max_operations: u64) -> Result<(), Failure> {
    let (script_path, sets, seed, device_name) = match &resume {
        Some(dir) => {
            let (script, sets, seed, recorded) = resume_settings(dir)?;
            (script, sets, seed, if device_name == "auto" { recorded } else { device_name })
        }
        None => (script_path.unwrap_or_default(), sets, seed, device_name),
    };
    check_script_file(&script_path)?;
    let overrides = parse_sets(&sets)?;
    let dev = device::parse(&device_name).map_err(|e| Failure::Usage(e.to_string()))?;
    device::set(dev);
    tch::manual_seed(seed);
    interrupt::install();

    let script_dir = script_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let session = Rc::new(RefCell::new(Session { overrides: overrides.clone(), seed, script_dir, ..Default::default() }));
    let mut engine = script::engine(&script_path, session.clone());
    engine.set_max_operations(max_operations);
    let ast = script::compile(&engine, &script_path).map_err(Failure::Script)?;
    let scan = script::scan(&engine, &script_path, &ast).map_err(Failure::Script)?;
    if let Some(msg) = script::check_overrides(&overrides, &scan) {
        return Err(Failure::Usage(msg));
    }

    let (run_dir, journal) = match &resume {
        Some(dir) => {
            let journal = run::journal::Journal::open(dir, seed, true)?;
            let run_dir = run::RunDir::resume(dir, journal.rows_after_last())?;
            eprintln!("resuming {} ({} finished calls to replay)", dir.display(), journal.len());
            (run_dir, journal)
        }
        None => {
            let dir = out.unwrap_or_else(|| run::default_dir(&script_path, std::time::SystemTime::now()));
            let header = serde_json::json!({
                "script": script_path.display().to_string(),
                "script_path": std::fs::canonicalize(&script_path).unwrap_or_else(|_| script_path.clone()).display().to_string(),
                "command": std::env::args().collect::<Vec<_>>(),
                "started": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                "seed": seed,
                "device": device::name(dev),
                "versions": dualign::versions(),
                "overrides": overrides,
                "config": {},
            });
            let serde_json::Value::Object(header) = header else { unreachable!("json! of an object literal") };
            let run_dir = run::RunDir::create(&dir, header)?;
            let journal = run::journal::Journal::open(&dir, seed, false)?;
            eprintln!("run directory: {}", dir.display());
            (run_dir, journal)
        }
    };
    {
        let mut s = session.borrow_mut();
        s.run = Some(run_dir);
        s.journal = Some(journal);
    }

    let result = engine.run_ast(&ast);
    let mut s = session.borrow_mut();
    let status = match &result {
        Ok(()) => "ok",
        Err(e) if matches!(**e, rhai::EvalAltResult::ErrorTerminated(..)) => "interrupted",
        Err(_) => "failed",
    };
    // Recording the status can fail for the reason the script did (a full disk): say so, but the
    // script's own error is the one to report.
    let recorded = s.run.as_mut().map_or(Ok(()), |run| run.finish(status));
    if let Err(e) = result {
        if let Err(f) = &recorded {
            eprintln!("warning: the run's status was not recorded: {f:#}");
        }
        let e = ScriptError::from_eval(*e, &script_path.display().to_string());
        return Err(if e.usage { Failure::Usage(e.message) } else { Failure::Script(e) });
    }
    recorded?;
    Ok(())
}

fn cmd_check(script_path: PathBuf, sets: Vec<String>) -> Result<(), Failure> {
    check_script_file(&script_path)?;
    let overrides = parse_sets(&sets)?;
    let session = Rc::new(RefCell::new(Session::default()));
    let engine = script::engine(&script_path, session);
    let ast = script::compile(&engine, &script_path).map_err(Failure::Script)?;
    let scan = script::scan(&engine, &script_path, &ast).map_err(Failure::Script)?;
    if let Some(msg) = script::check_overrides(&overrides, &scan) {
        return Err(Failure::Usage(msg));
    }
    let keys: Vec<&str> = scan.config_keys.iter().map(String::as_str).collect();
    println!(
        "ok: {} ({} module{} imported; config keys: {})",
        script_path.display(),
        scan.modules.len(),
        if scan.modules.len() == 1 { "" } else { "s" },
        if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
    );
    Ok(())
}

fn cmd_api(json: bool, definitions: Option<PathBuf>) -> Result<(), Failure> {
    let engine = script::engine(Path::new("."), Rc::new(RefCell::new(Session::default())));
    if let Some(dir) = definitions {
        script::api::write_definitions(&engine, &dir).with_context(|| format!("cannot write definitions to {}", dir.display()))?;
        eprintln!("wrote definitions to {}", dir.display());
        return Ok(());
    }
    let mut entries = script::api::listing(&engine)?;
    entries.extend(script::api::stdlib_listing(&engine)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&entries).map_err(anyhow::Error::from)?);
    } else {
        let width = entries.iter().map(|e| e.signature.len()).max().unwrap_or(0).min(60);
        for e in &entries {
            println!("{:width$}  {}", e.signature, e.doc);
            for o in &e.options {
                println!("    {o}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // A panic is a bug in host, never the user's fault: one line saying so, no backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload().downcast_ref::<&str>().map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error in host{at}: {msg} (please report this with the script that caused it)");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Run { script, resume, set, out, device, seed, max_operations } => cmd_run(script, resume, set, out, device, seed, max_operations),
        Command::Check { script, set } => cmd_check(script, set),
        Command::Api { json, definitions } => cmd_api(json, definitions),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Done(msg)) => {
            eprintln!("{msg}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Script(e)) => {
            eprint!("error: {e}");
            ExitCode::from(if e.interrupted { 130 } else { 1 })
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
