//! The Rhai engine `host` runs scripts with: registrations, the module resolver, limits, the
//! stop flag, and the session state (`--set` overrides, seed, run directory) that native
//! functions share.
pub mod api;
pub mod config;
pub mod data;
pub mod dual;
pub mod errors;
pub mod exact;
pub mod judge;
pub mod model;
pub mod options;
pub mod resolver;
pub mod tensor;
pub mod train;

use crate::run::journal::{Journal, Start};
use crate::{device, interrupt, run::RunDir};
use api::{def, script_error, ScriptResult};
use errors::ScriptError;
use resolver::Resolver;
use rhai::{ASTNode, Expr, Stmt};
use rhai::{Dynamic, Engine, ImmutableString, Map, NativeCallContext, Position, AST, INT};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// State shared by the native functions of one script run.
#[derive(Default)]
pub struct Session {
    /// `--set key=value` pairs, as typed.
    pub overrides: BTreeMap<String, String>,
    /// Keys the script has read with `config`.
    pub read: BTreeSet<String>,
    pub seed: i64,
    pub run: Option<RunDir>,
    /// The folder of the script being run: data paths not found as given are looked up there.
    pub script_dir: PathBuf,
    /// The resume journal of the run directory.
    pub journal: Option<Journal>,
    /// The process group of a distributed run (torchrun, Slurm, `host run --nproc`); None for
    /// one process.
    pub dist: Option<Rc<crate::dist::Group>>,
}

impl Session {
    /// This process's rank and the world size ((0, 1) for one process).
    pub fn rank_world(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |g| (g.rank, g.world))
    }

    /// Whether this process writes the run's outputs (rank 0, or the only process).
    pub fn is_main(&self) -> bool {
        self.rank_world().0 == 0
    }
}

/// Runs an expensive call through the resume journal (run/journal.rs). `live` computes the
/// result and returns it with its JSON form and the tensors to keep; `replay` rebuilds the
/// result from those when a resumed run reaches a call that had finished.
pub fn journaled<T>(
    session: &SharedSession,
    kind: &str,
    key: &str,
    replay: impl FnOnce(&serde_json::Value, Vec<(String, tch::Tensor)>) -> ScriptResult<T>,
    live: impl FnOnce() -> ScriptResult<(T, serde_json::Value, Vec<(String, tch::Tensor)>)>,
) -> ScriptResult<T> {
    let start = {
        let mut s = session.borrow_mut();
        match s.journal.as_mut() {
            None => None,
            Some(j) => Some(j.begin(kind, key).map_err(|e| script_error(format!("{e:#}")))?),
        }
    };
    match start {
        None => Ok(live()?.0),
        Some(Start::Replay(entry, tensors)) => {
            let out = replay(&entry.output, tensors)?;
            if let Some(run) = session.borrow_mut().run.as_mut() {
                run.skip_to(entry.rows_after);
            }
            Ok(out)
        }
        Some(Start::Live(index)) => {
            let (out, json, tensors) = live()?;
            let mut s = session.borrow_mut();
            let rows = s.run.as_ref().map_or(0, RunDir::cursor);
            if let Some(j) = s.journal.as_mut() {
                j.commit(index, kind, key, json, rows, &tensors).map_err(|e| script_error(format!("{e:#}")))?;
            }
            Ok(out)
        }
    }
}

pub type SharedSession = Rc<RefCell<Session>>;

/// The operation limit of `host run` unless `--max-operations` says otherwise: about 30 seconds of
/// a Rhai loop doing nothing else (3·10^7 operations/s measured on the 2-core CPU), against
/// 1–3·10^4 for the reduced default job of tests/cli.rs (host functions such as `dpo` or
/// `generate` count as one operation however long they take).
pub const DEFAULT_MAX_OPERATIONS: u64 = 1_000_000_000;

/// Engine limits, set explicitly because Rhai's defaults differ between debug and release builds.
/// Operations are capped at `DEFAULT_MAX_OPERATIONS` (`host run --max-operations` changes it);
/// Ctrl-C stops a script at any operation.
fn set_limits(engine: &mut Engine) {
    engine
        .set_max_call_levels(256)
        .set_max_expr_depths(256, 128)
        .set_max_operations(DEFAULT_MAX_OPERATIONS)
        .set_max_modules(1024)
        .set_max_variables(100_000)
        .set_max_functions(100_000)
        .set_max_string_size(64 << 20)
        .set_max_array_size(16 << 20)
        .set_max_map_size(1 << 20);
}

/// Builds the engine for `script` (imports resolve next to it and in the stdlib).
pub fn engine(script: &Path, session: SharedSession) -> Engine {
    let mut engine = Engine::new();
    set_limits(&mut engine);
    engine.set_strict_variables(true);
    engine.set_module_resolver(Resolver::new(script));
    engine.on_progress(|_| interrupt::requested().then(|| Dynamic::from("interrupted")));
    tensor::register(&mut engine);
    model::register(&mut engine, session.clone());
    data::register(&mut engine, session.clone());
    train::register(&mut engine, session.clone());
    dual::register(&mut engine);
    exact::register(&mut engine, session.clone());
    judge::register(&mut engine);
    register_session(&mut engine, session);
    engine
}

fn register_session(engine: &mut Engine, session: SharedSession) {
    // One setting: the `--set` value parsed as the default's type, recorded in config.json.
    fn read(session: &SharedSession, ctx: &NativeCallContext, key: &str, default: Dynamic) -> ScriptResult<Dynamic> {
        let mut s = session.borrow_mut();
        let value = match s.overrides.get(key) {
            Some(text) => config::parse_override(key, text, &default).map_err(|msg| {
                let pos = ctx.call_position();
                let at = format!("{}:{}:{}", ctx.call_source().unwrap_or("script"), pos.line().unwrap_or(0), pos.position().unwrap_or(0));
                api::usage_error(format!("{msg}; read by config at {at}"))
            })?,
            None => default,
        };
        s.read.insert(key.to_string());
        let json = config::to_json(&value)?;
        if let Some(run) = s.run.as_mut() {
            run.record_config(key, json).map_err(|e| script_error(format!("{e:#}")))?;
        }
        Ok(value)
    }
    let s = session.clone();
    def(
        engine,
        "config",
        &["key: string", "default: ?", "?"],
        "The setting `key`: the value of `--set key=...` parsed as the default's type, else the default.",
        move |ctx: NativeCallContext, key: ImmutableString, default: Dynamic| -> ScriptResult<Dynamic> { read(&s, &ctx, &key, default) },
    );
    let s = session.clone();
    def(
        engine,
        "configure",
        &["defaults: map", "keys: array", "map"],
        "The map with each of `keys` (a literal array of strings) read as config(key, its value there): the settings a script exposes, each named once.",
        move |ctx: NativeCallContext, mut defaults: Map, keys: rhai::Array| -> ScriptResult<Map> {
            for k in keys {
                let key = k.into_immutable_string().map_err(|t| script_error(format!("configure: keys must be strings, found {t}")))?;
                let default = defaults.get(key.as_str()).cloned().ok_or_else(|| script_error(format!("configure: `{key}` is not a key of the map")))?;
                let value = read(&s, &ctx, &key, default)?;
                defaults.insert(key.as_str().into(), value);
            }
            Ok(defaults)
        },
    );
    def(engine, "peak_memory_mib", &["float"], "Peak resident memory of this process so far in MiB (Linux VmHWM), or 0.0 where the OS does not report it.", || -> ScriptResult<f64> {
        Ok(crate::run::progress::peak_rss_mib().unwrap_or(0.0))
    });
    def(engine, "reset_peak_memory", &["bool"], "Starts peak_memory_mib over from the memory in use now (Linux); false where the OS does not allow it.", crate::run::progress::reset_peak_rss);
    let s = session.clone();
    def(engine, "log", &["row: map", "()"], "Appends a row of numbers, strings or booleans to metrics.csv and metrics.jsonl.", move |row: Map| {
        let mut fields = serde_json::Map::new();
        for (k, v) in row {
            let json = if let Some(t) = v.read_lock::<tensor::ScriptTensor>() {
                serde_json::Value::from(tensor::item(&t)?)
            } else if v.is_int() || v.is_float() || v.is_bool() || v.is_string() || v.is_unit() {
                config::to_json(&v)?
            } else {
                return Err(script_error(format!("log: field `{k}` is {}; log numbers, strings or booleans", v.type_name())));
            };
            fields.insert(k.to_string(), json);
        }
        let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", short(v))).collect();
        println!("{}", line.join(" "));
        if let Some(run) = s.borrow_mut().run.as_mut() {
            run.log(fields).map_err(|e| script_error(format!("log: {e:#}")))?;
        }
        Ok(())
    });
    let s = session.clone();
    def(engine, "write_jsonl", &["path: string", "rows: array", "()"], "Writes maps as JSON lines to a file inside the run directory (samples, scores, tables).", move |path: &str, rows: rhai::Array| -> ScriptResult<()> {
        let file = model::output_path(&s, path)?;
        if !s.borrow().is_main() {
            return Ok(()); // rank 0 writes the run directory
        }
        let mut text = String::new();
        for (i, r) in rows.iter().enumerate() {
            let json = config::to_json(r).map_err(|e| script_error(format!("write_jsonl: row {i}: {e}")))?;
            text.push_str(&json.to_string());
            text.push('\n');
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| script_error(format!("write_jsonl: {}: {e}", dir.display())))?;
        }
        crate::run::write_atomic(&file, text.as_bytes()).map_err(|e| script_error(format!("write_jsonl: {e:#}")))
    });
    let s = session.clone();
    api::def_with_options(engine, "report", &["spec: map", "string"],
        "Writes report.md in the run directory; each plot is an SVG drawn from the run's metrics. Returns the path.", &[report_decl(), plot_decl()],
        move |spec: Map| -> ScriptResult<String> {
            let decl = report_decl();
            let r = decl.read(&spec)?;
            let mut s = s.borrow_mut();
            let Some(run) = s.run.as_mut() else { return Err(script_error("report: no run directory (use `host run`)")) };
            let get = |m: &Map, k: &str| m.get(k).map(|v| v.to_string());
            let mut md = format!("# {}

", r.text("title")?);
            if let Some(t) = r.text_given("text")? {
                md.push_str(&t);
                md.push_str("

");
            }
            let plots = r.get("plots").map(|p| p.clone().into_array().unwrap_or_default()).unwrap_or_default();
            let plot_decl = plot_decl();
            for (i, p) in plots.iter().enumerate() {
                let p = p.read_lock::<Map>().ok_or_else(|| script_error(format!("report: plots[{i}] must be a map")))?.clone();
                plot_decl.read(&p).map_err(|e| script_error(format!("report: plots[{i}]: {}", api::message(&e))))?;
                let y = match p.get("y") {
                    Some(v) if v.is_array() => v.clone().into_array().unwrap_or_default().iter().map(|c| c.to_string()).collect(),
                    Some(v) => vec![v.to_string()],
                    None => return Err(script_error(format!("report: plots[{i}] needs `y`"))),
                };
                let name = get(&p, "name").unwrap_or_else(|| format!("plot_{i}"));
                let plot = crate::run::report::PlotSpec {
                    title: get(&p, "title").unwrap_or_else(|| name.clone()),
                    phase: get(&p, "phase"),
                    x: get(&p, "x").ok_or_else(|| script_error(format!("report: plots[{i}] needs `x`")))?,
                    y,
                    scatter: p.get("scatter").and_then(|v| v.as_bool().ok()).unwrap_or(false),
                    label: get(&p, "label"),
                    name,
                };
                let svg = crate::run::report::svg(&plot, run.rows()).map_err(|e| script_error(format!("{e:#}")))?;
                let file = format!("{}.svg", plot.name);
                if run.writes() {
                    crate::run::write_atomic(&run.path.join(&file), svg.as_bytes()).map_err(|e| script_error(format!("report: {e:#}")))?;
                }
                md.push_str(&format!("## {}

![{}]({file})

", plot.title, plot.title));
            }
            let path = run.path.join("report.md");
            if !run.writes() {
                return Ok(path.display().to_string());
            }
            crate::run::write_atomic(&path, md.as_bytes()).map_err(|e| script_error(format!("report: {e:#}")))?;
            Ok(path.display().to_string())
        });
    let s = session.clone();
    def(engine, "seed", &["int"], "The run's random seed (--seed).", move || s.borrow().seed as INT);
    def(engine, "device", &["string"], "The device tensors and models use: cpu or cuda:N (--device).", || device::name(device::current()));
    let s = session.clone();
    def(engine, "rank", &["int"], "This process's rank in a distributed run (torchrun, Slurm, `host run --nproc`); 0 for one process.", move || s.borrow().rank_world().0 as INT);
    let s = session.clone();
    def(engine, "world_size", &["int"], "The number of processes of a distributed run; 1 for one process.", move || s.borrow().rank_world().1 as INT);
    let s = session.clone();
    def(engine, "is_main", &["bool"], "Whether this process is rank 0, the one that writes the run directory (true for one process).", move || s.borrow().is_main());
    let s = session.clone();
    def(engine, "barrier", &["()"], "Waits until every rank of a distributed run has reached this call (nothing to wait for with one process).", move || -> ScriptResult<()> {
        let g = s.borrow().dist.clone();
        g.map_or(Ok(()), |g| g.barrier()).map_err(|e| script_error(format!("barrier: {e:#}")))
    });
    let s = session;
    def(engine, "run_dir", &["string"], "The run directory of this run (empty when there is none, as under `host check`).", move || {
        s.borrow().run.as_ref().map(|r| r.path.display().to_string()).unwrap_or_default()
    });
}

/// The options of `report`.
fn report_decl() -> options::Decl {
    use options::{noted, text, Ty};
    options::Decl::new("report", vec![
        text("title", "Report", "the report's heading"),
        noted("text", Ty::Str, "none", "markdown put under the heading (tables, notes)"),
        noted("plots", Ty::Array, "none", "plot maps, each with the options below"),
    ])
}

/// The options of one plot of `report`.
fn plot_decl() -> options::Decl {
    use options::{flag, noted, Ty};
    options::Decl::new("plots[i]", vec![
        noted("x", Ty::Str, "required", "the metrics column on the x axis"),
        noted("y", Ty::StrOrStrings, "required", "a column, or an array of columns, on the y axis"),
        noted("name", Ty::Str, "plot_i", "the SVG file's name"),
        noted("title", Ty::Str, "the name", "the plot's heading"),
        noted("phase", Ty::Str, "every row", "only rows whose `phase` column has this value"),
        flag("scatter", false, "points instead of lines"),
        noted("label", Ty::Str, "none", "a column whose value labels each point"),
    ])
}

fn short(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => format!("{x:.6}").trim_end_matches('0').trim_end_matches('.').to_string(),
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Compiles the script file with its path as the source. Errors are located in the file.
pub fn compile(engine: &Engine, script: &Path) -> Result<AST, ScriptError> {
    let shown = script.display().to_string();
    let text = std::fs::read_to_string(script).map_err(|e| ScriptError {
        file: shown.clone(),
        position: Position::NONE,
        message: format!("cannot read: {e}"),
        trace: vec![],
        interrupted: false,
        usage: false,
    })?;
    let mut ast = engine.compile(&text).map_err(|e| ScriptError::from_parse(e, &shown))?;
    ast.set_source(shown);
    Ok(ast)
}

/// What a static look at a script and everything it imports finds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Resolved files of every module imported, directly or not.
    pub modules: Vec<PathBuf>,
    /// Literal keys of `config("key", ...)` calls.
    pub config_keys: BTreeSet<String>,
    /// `config("key", default)` calls whose default is a literal: key, default, `file:line:col`.
    pub literal_defaults: Vec<(String, Dynamic, String)>,
}

/// Parses every module the script imports (recursively) without running anything, and collects
/// the literal `config` keys. Syntax errors and missing modules are reported where they are.
pub fn scan(engine: &Engine, script: &Path, ast: &AST) -> Result<Scan, ScriptError> {
    let resolver = Resolver::new(script);
    let mut out = Scan::default();
    let mut seen = BTreeSet::new();
    scan_ast(engine, &resolver, ast, &script.display().to_string(), &mut out, &mut seen)?;
    Ok(out)
}

fn scan_ast(engine: &Engine, resolver: &Resolver, ast: &AST, file: &str, out: &mut Scan, seen: &mut BTreeSet<PathBuf>) -> Result<(), ScriptError> {
    let mut imports: Vec<(String, Position)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Stmt(Stmt::Import(x, pos))) => {
                if let Expr::StringConstant(p, _) = &x.0 {
                    imports.push((p.to_string(), *pos));
                }
            }
            // A call is an expression, or a statement of its own (`config("k", 1);`, or the
            // last line of a function body): both are reads.
            // `configure(map, ["k", ...])` reads each listed key.
            Some(ASTNode::Expr(Expr::FnCall(call, _))) | Some(ASTNode::Stmt(Stmt::FnCall(call, _))) if call.name == "configure" && call.namespace.is_empty() => {
                match call.args.get(1) {
                    Some(Expr::Array(items, _)) => out.config_keys.extend(items.iter().filter_map(|e| if let Expr::StringConstant(k, _) = e { Some(k.to_string()) } else { None })),
                    Some(Expr::DynamicConstant(d, _)) => out.config_keys.extend(d.read_lock::<rhai::Array>().into_iter().flat_map(|a| a.iter().map(|k| k.to_string()).collect::<Vec<_>>())),
                    _ => {}
                }
            }
            Some(ASTNode::Expr(Expr::FnCall(call, pos))) | Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) if call.name == "config" && call.namespace.is_empty() => {
                if let Some(Expr::StringConstant(key, _)) = call.args.first() {
                    out.config_keys.insert(key.to_string());
                    if let Some(default) = call.args.get(1).and_then(|d| d.get_literal_value(None)) {
                        let at = format!("{file}:{}:{}", pos.line().unwrap_or(0), pos.position().unwrap_or(0));
                        out.literal_defaults.push((key.to_string(), default, at));
                    }
                }
            }
            _ => {}
        }
        true
    });
    for (import, pos) in imports {
        let err = |message: String| ScriptError { file: file.to_string(), position: pos, message, trace: vec![], interrupted: false, usage: false };
        let found = resolver.locate(Some(file), &import).ok_or_else(|| {
            err(format!("module \"{import}\" not found next to {file} or in the stdlib ({})", resolver::stdlib_dir().map_or("missing".into(), |d| d.display().to_string())))
        })?;
        let found = found.canonicalize().unwrap_or(found);
        if !seen.insert(found.clone()) {
            continue;
        }
        let module_ast = resolver.compile(engine, &found, &import, pos).map_err(|e| ScriptError::from_eval(*e, file))?;
        out.modules.push(found.clone());
        scan_ast(engine, resolver, &module_ast, &found.display().to_string(), out, seen)?;
    }
    Ok(())
}

/// Checks `--set` overrides before anything runs: every key must be one the script reads (by
/// the static scan), and a value must parse as the type of a literal default. Returns the one-line
/// message to show.
pub fn check_overrides(overrides: &BTreeMap<String, String>, scan: &Scan) -> Option<String> {
    let unknown: Vec<&str> = overrides.keys().filter(|k| !scan.config_keys.contains(*k)).map(String::as_str).collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = scan.config_keys.iter().map(String::as_str).collect();
        return Some(format!(
            "unknown --set key{} {}: the script reads {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            if known.is_empty() { "no config keys".to_string() } else { known.join(", ") }
        ));
    }
    for (key, default, at) in &scan.literal_defaults {
        if let Some(text) = overrides.get(key) {
            if let Err(msg) = config::parse_override(key, text, default) {
                return Some(format!("{msg}; read by config at {at}"));
            }
        }
    }
    None
}
