//! `host`: runs alignment scripts. `host run SCRIPT`, `host check SCRIPT`, `host api`.
//! Exit codes: 0 success, 1 the script failed, 2 usage errors, 130 interrupted.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dualign::script::{self, errors::ScriptError, Session};
use dualign::{device, dist, interrupt, run};
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
        match v["distributed"].as_array().map(|a| a.iter().filter_map(|b| b.as_str()).collect::<Vec<_>>()) {
            Some(b) if b.contains(&"nccl") => b.join(", "),
            Some(b) if !b.is_empty() => format!("{} (NCCL unavailable)", b.join(", ")),
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
        /// Start N ranks of this run on this machine (a store on localhost, a free port), as
        /// `torchrun --standalone --nproc-per-node=N` would; rank 0 writes the run directory.
        #[arg(long, value_name = "N")]
        nproc: Option<usize>,
        /// How long a rank of a distributed run waits for the others at a collective (joining
        /// included) before failing, e.g. 30m or 90s.
        #[arg(long, default_value = "30m", value_name = "DURATION")]
        dist_timeout: humantime::Duration,
        /// The collectives' backend for CUDA tensors: auto (NCCL where this build has it, see
        /// `host --version`) or gloo. CPU tensors always go over Gloo.
        #[arg(long, default_value = "auto", value_parser = ["auto", "gloo"], value_name = "auto|gloo")]
        dist_backend: String,
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
    /// A rank started by `--nproc` failed: the message and its exit code.
    Rank(String, u8),
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
fn resume_settings(dir: &Path) -> Result<(PathBuf, Vec<String>, i64, String, usize), Failure> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Failure::Usage(format!("{}: cannot read ({e}); --resume takes a run directory", path.display())))?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("{}: not valid JSON: {e}", path.display())))?;
    let script = config.get("script_path").or_else(|| config.get("script")).and_then(|v| v.as_str()).ok_or_else(|| Failure::Usage(format!("{}: no `script` field", path.display())))?;
    let sets = config.get("overrides").and_then(|v| v.as_object()).map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect()).unwrap_or_default();
    let seed = config.get("seed").and_then(|v| v.as_i64()).unwrap_or(0);
    let device = config.get("device").and_then(|v| v.as_str()).unwrap_or("auto").to_string();
    let world = config.get("world_size").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
    if config.get("status").and_then(|v| v.as_str()) == Some("ok") {
        return Err(Failure::Done(format!("{}: this run finished (status ok); nothing to resume", dir.display())));
    }
    Ok((PathBuf::from(script), sets, seed, device, world))
}

/// `host run --nproc N`: starts ranks 0..N of the same command (without `--nproc`) as child
/// processes with torchrun's variables and a free port on localhost, waits for them, and when one
/// fails gives the others 10 s to stop on their own (their next collective fails) before ending
/// them. Rank 0 keeps the terminal; the others write `rank-N.log` in the run directory.
fn launch_local(n: usize) -> Result<(), Failure> {
    if std::env::var_os("WORLD_SIZE").is_some() || std::env::var_os("SLURM_NTASKS").is_some() {
        return Err(Failure::Usage("--nproc: this process is already a rank of a distributed launch (WORLD_SIZE or SLURM_NTASKS is set)".into()));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| anyhow::anyhow!("--nproc: no free port on localhost: {e}"))?.port();
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut raw = std::env::args_os().skip(1);
    while let Some(a) = raw.next() {
        match a.to_str() {
            Some("--nproc") => {
                raw.next();
            }
            Some(s) if s.starts_with("--nproc=") => {}
            _ => args.push(a),
        }
    }
    let exe = std::env::current_exe().context("--nproc: cannot find this program's path")?;
    // Ctrl-C reaches every rank, which stops at its next safe point (a second press aborts
    // them); this process only waits for them.
    let _ = ctrlc::set_handler(|| {});
    // As torchrun: the cores are shared out, not oversubscribed (unless OMP_NUM_THREADS is set).
    let threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (std::thread::available_parallelism().map_or(1, |c| c.get()) / n).max(1).to_string());
    let mut children = Vec::new();
    for rank in 0..n {
        let mut command = std::process::Command::new(&exe);
        // A rank dies with its launcher (Linux), as torchrun's workers do: no orphaned ranks.
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches only the child being started.
        unsafe {
            use std::os::unix::process::CommandExt;
            extern "C" {
                fn prctl(option: i32, arg: u64, ...) -> i32;
            }
            command.pre_exec(|| {
                prctl(1 /* PR_SET_PDEATHSIG */, 9 /* SIGKILL */);
                Ok(())
            });
        }
        let child = command
            .args(&args)
            .env("OMP_NUM_THREADS", &threads)
            .env("WORLD_SIZE", n.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .spawn()
            .with_context(|| format!("--nproc: cannot start rank {rank}"))?;
        children.push(Some(child));
    }
    let mut failure: Option<(usize, std::process::ExitStatus, std::time::Instant)> = None;
    let mut codes = vec![None; n];
    while codes.iter().any(Option::is_none) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                codes[rank] = Some(status);
                *slot = None;
                if !status.success() && failure.is_none() {
                    failure = Some((rank, status, std::time::Instant::now()));
                }
            }
        }
        if let Some((_, _, at)) = &failure {
            if at.elapsed() > std::time::Duration::from_secs(10) {
                for child in children.iter_mut().flatten() {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    match failure {
        None => Ok(()),
        Some((rank, status, _)) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => "failed".into(),
            };
            let code = status.code().map_or(1, |c| c.clamp(1, 255) as u8);
            if code == 130 {
                return Err(Failure::Rank("interrupted (Ctrl-C); `host run --nproc N --resume DIR` continues the run".into(), code));
            }
            let log = if rank == 0 { String::new() } else { format!(" (its output: rank-{rank}.log in the run directory)") };
            Err(Failure::Rank(format!("rank {rank} of {n} {how}{log}"), code))
        }
    }
}

/// Sends this rank's standard output and error to `file` (ranks other than 0), keeping the
/// terminal's error stream for the one line `main` prints when the rank fails.
fn redirect_output(file: &Path) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    extern "C" {
        fn dup(fd: i32) -> i32;
        fn dup2(from: i32, to: i32) -> i32;
    }
    if let Some(dir) = file.parent() {
        // Across machines without a shared folder, this node has no run directory yet.
        let _ = std::fs::create_dir_all(dir);
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(file).with_context(|| format!("cannot write {}", file.display()))?;
    // SAFETY: plain descriptor calls on descriptors this process owns.
    unsafe {
        let saved = dup(2);
        if saved >= 0 {
            let _ = TERMINAL.set(std::fs::File::from_raw_fd(saved));
        }
        if dup2(log.as_raw_fd(), 1) < 0 || dup2(log.as_raw_fd(), 2) < 0 {
            anyhow::bail!("cannot redirect output to {}", file.display());
        }
    }
    Ok(())
}

/// The terminal's error stream of a rank whose output goes to `rank-N.log`, and the rank.
static TERMINAL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
static RANK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

#[allow(clippy::too_many_arguments)]
fn cmd_run(script_path: Option<PathBuf>, resume: Option<PathBuf>, sets: Vec<String>, out: Option<PathBuf>, device_name: String, seed: i64, max_operations: u64, timeout: std::time::Duration, nccl: bool) -> Result<(), Failure> {
    // torchrun --max-restarts starts a failed job again with TORCHELASTIC_RESTART_COUNT > 0: the
    // run in --out continues from its journal (without --out each start makes a new folder).
    let restarted = std::env::var("TORCHELASTIC_RESTART_COUNT").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) > 0;
    let resume = match (resume, &out) {
        (None, Some(dir)) if restarted && dir.join("config.json").is_file() => {
            eprintln!("restart {}: resuming {}", std::env::var("TORCHELASTIC_RESTART_COUNT").unwrap_or_default(), dir.display());
            Some(dir.clone())
        }
        (resume, _) => resume,
    };
    let (script_path, sets, seed, device_name, recorded_world) = match &resume {
        Some(dir) => {
            let (script, sets, seed, recorded, world) = resume_settings(dir)?;
            (script, sets, seed, if device_name == "auto" { recorded } else { device_name }, world)
        }
        None => (script_path.unwrap_or_default(), sets, seed, device_name, 1),
    };
    check_script_file(&script_path)?;
    let overrides = parse_sets(&sets)?;
    // A distributed launch (torchrun, Slurm or --nproc): each rank on its own card
    // (LOCAL_RANK, round robin when there are fewer), then the process group, whose CUDA tensors
    // go over NCCL where the build has it (Gloo carries CPU tensors either way).
    let launch = dist::Launch::from_env().map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let mut dev = device::parse(&device_name).map_err(|e| Failure::Usage(e.to_string()))?;
    if let (Some(l), tch::Device::Cuda(_)) = (&launch, dev) {
        dev = tch::Device::Cuda(l.local_rank % tch::Cuda::device_count().max(1) as usize);
    }
    device::set(dev);
    let group = match &launch {
        Some(l) => Some(Rc::new(dist::Group::connect(l, timeout, nccl && dist::nccl_available() && dev.is_cuda())?)),
        None => None,
    };
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank, g.world));
    if resume.is_some() && recorded_world != world {
        return Err(Failure::Usage(format!(
            "this run had {recorded_world} process{}; resume it with the same number ({}), not {world}",
            if recorded_world == 1 { "" } else { "es" },
            if recorded_world == 1 { "a plain `host run --resume DIR`".to_string() } else { format!("`host run --nproc {recorded_world} --resume DIR`, or torchrun with --nproc-per-node={recorded_world}") }
        )));
    }
    let _ = RANK.set(rank);
    tch::manual_seed(seed);
    interrupt::install();

    let script_dir = script_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let session = Rc::new(RefCell::new(Session { overrides: overrides.clone(), seed, script_dir, dist: group.clone(), ..Default::default() }));
    let mut engine = script::engine(&script_path, session.clone());
    engine.set_max_operations(max_operations);
    let ast = script::compile(&engine, &script_path).map_err(Failure::Script)?;
    let scan = script::scan(&engine, &script_path, &ast).map_err(Failure::Script)?;
    if let Some(msg) = script::check_overrides(&overrides, &scan) {
        return Err(Failure::Usage(msg));
    }

    // Rank 0 opens (or creates) the run directory first; the others then read the same one.
    let dir = match &resume {
        Some(dir) => dir.clone(),
        None => out.unwrap_or_else(|| run::default_dir(&script_path, std::time::SystemTime::now())),
    };
    let dir = match &group {
        Some(g) => PathBuf::from(String::from_utf8_lossy(&g.broadcast_bytes(dir.display().to_string().as_bytes())?).into_owned()),
        None => dir,
    };
    let main = rank == 0;
    if !main {
        group.as_ref().map_or(Ok(()), |g| g.barrier())?;
    }
    let (run_dir, journal) = match &resume {
        Some(dir) => {
            let journal = run::journal::Journal::open(dir, seed, true, main)?;
            let run_dir = run::RunDir::resume(dir, journal.rows_after_last(), main)?;
            if main {
                eprintln!("resuming {} ({} finished calls to replay)", dir.display(), journal.len());
            }
            (run_dir, journal)
        }
        None => {
            let header = serde_json::json!({
                "script": script_path.display().to_string(),
                "script_path": std::fs::canonicalize(&script_path).unwrap_or_else(|_| script_path.clone()).display().to_string(),
                "command": std::env::args().collect::<Vec<_>>(),
                "started": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                "seed": seed,
                "device": device::name(dev),
                "versions": dualign::versions(),
                "overrides": overrides,
                "world_size": world,
                "config": {},
            });
            let serde_json::Value::Object(header) = header else { unreachable!("json! of an object literal") };
            if !main {
                (run::RunDir::follow(&dir, header), run::journal::Journal::open(&dir, seed, false, false)?)
            } else {
                let run_dir = run::RunDir::create(&dir, header)?;
                let journal = run::journal::Journal::open(&dir, seed, false, true)?;
                eprintln!("run directory: {}{}", dir.display(), if world > 1 { format!(" ({world} ranks; ranks 1.. write rank-N.log there)") } else { String::new() });
                (run_dir, journal)
            }
        }
    };
    if let Some(g) = &group {
        if main {
            g.barrier()?;
        } else {
            redirect_output(&dir.join(format!("rank-{rank}.log")))?;
        }
    }
    {
        let mut s = session.borrow_mut();
        s.run = Some(run_dir);
        s.journal = Some(journal);
    }

    let result = engine.run_ast(&ast);
    let mut s = session.borrow_mut();
    // A rank of a distributed run that was asked to stop may fail first in a collective, because
    // another rank stopped before it: that is an interruption too.
    let stopped_rank = group.is_some() && interrupt::requested();
    // The journal's last write ends first. One that failed is the run's first failure (a script
    // error after it most likely has the same cause, such as a full disk): it is the one reported.
    let journaled = s.journal.as_mut().map_or(Ok(()), run::journal::Journal::finish);
    let status = match &result {
        Ok(()) if journaled.is_ok() => "ok",
        Err(e) if matches!(**e, rhai::EvalAltResult::ErrorTerminated(..)) || stopped_rank => "interrupted",
        _ => "failed",
    };
    // Recording the status can fail for the reason the script did (a full disk): say so, but the
    // script's own error is the one to report.
    let recorded = s.run.as_mut().map_or(Ok(()), |run| run.finish(status));
    let failure = match (journaled, result) {
        (Err(e), _) => Failure::Other(e),
        (Ok(()), Err(e)) => {
            let mut e = ScriptError::from_eval(*e, &script_path.display().to_string());
            e.interrupted |= stopped_rank;
            if e.usage { Failure::Usage(e.message) } else { Failure::Script(e) }
        }
        (Ok(()), Ok(())) => return Ok(recorded?),
    };
    if let Err(f) = &recorded {
        eprintln!("warning: the run's status was not recorded: {f:#}");
    }
    Err(failure)
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

/// Prints an error: to standard error, and for a rank whose output goes to `rank-N.log` to the
/// terminal too, prefixed with the rank.
fn say(text: &str) {
    use std::io::Write;
    eprint!("{text}");
    if let (Some(mut terminal), Some(rank)) = (TERMINAL.get(), RANK.get()) {
        let _ = write!(terminal, "rank {rank}: {text}");
    }
}

/// glibc hands every freed block above its mmap threshold (dynamic, at most 32 MiB) back to the
/// OS, and trims the heap's top above 128 KiB, so a training step's large tensors (gradients,
/// the optimizer's temporaries, activations) come back each step as fresh pages the kernel must
/// zero: on the 2-core CPU a fifth of a DPO step went to page faults, and AdamW's step took 2.7 s
/// instead of 0.2 s. Freed memory stays in the process instead (peak memory about 12% higher on
/// that benchmark). Malloc settings of the user's own (`GLIBC_TUNABLES`, `MALLOC_*_` variables,
/// as scripts/bench_memory.sh sets to measure activations) are left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    if std::env::vars_os().any(|(k, _)| k.to_str().is_some_and(|k| k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with('_')))) {
        return;
    }
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes the allocator's parameters; called before any thread starts.
    // A value glibc refuses leaves its default (mallopt returns 0): nothing else to do.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, i32::MAX);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
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
        Command::Run { nproc: Some(0), .. } => Err(Failure::Usage("--nproc 0: a run needs at least one process".into())),
        Command::Run { nproc: Some(n), .. } if n > 1 => launch_local(n),
        Command::Run { script, resume, set, out, device, seed, max_operations, dist_timeout, dist_backend, .. } => {
            cmd_run(script, resume, set, out, device, seed, max_operations, dist_timeout.into(), dist_backend == "auto")
        }
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
            say(&format!("error: {msg}\n"));
            ExitCode::from(2)
        }
        Err(Failure::Rank(msg, code)) => {
            say(&format!("error: {msg}\n"));
            ExitCode::from(code)
        }
        Err(Failure::Script(e)) => {
            say(&format!("error: {e}"));
            ExitCode::from(if e.interrupted { 130 } else { 1 })
        }
        Err(Failure::Other(e)) => {
            say(&format!("error: {e:#}\n"));
            ExitCode::from(1)
        }
    }
}
