//! The one place every script-visible function gets its doc line: `def` registers a native
//! function together with its parameter names and a one-line description, and `host api`
//! (`listing`, `write_definitions`) reads them back from the engine, so the docs cannot drift.
use rhai::{Engine, EvalAltResult, FuncRegistration, RhaiNativeFunc, Variant};

/// What native script functions return.
pub type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

/// A runtime error for scripts; the engine fills in the position of the call.
pub fn script_error(message: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(without_backtrace(message.into()).into(), rhai::Position::NONE).into()
}

/// What a usage error (a `--set` value that does not parse) carries through the engine, so that
/// `host` can tell it from a script failure (exit 2, not 1) by the error value itself.
#[derive(Debug, Clone)]
pub struct Usage(pub String);

/// A usage error for scripts: like `script_error`, classified as the user's command line.
pub fn usage_error(message: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(rhai::Dynamic::from(Usage(message.into())), rhai::Position::NONE).into()
}

/// The message of a script error without Rhai's "Runtime error:" framing (for wrapping it in
/// another message).
pub fn message(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
        other => other.to_string(),
    }
}

/// A message without the C++ backtrace libtorch appends to its errors (`frame #N: ...` lines, the
/// "Exception raised from" tail), and with "Internal torch error:" said as "libtorch:". No
/// backtrace reaches a user, whichever path the error took.
fn without_backtrace(message: String) -> String {
    if !message.contains("frame #") && !message.contains("Exception raised from") && !message.contains("Internal torch error:") {
        return message;
    }
    let head = message.split("Exception raised from").next().unwrap_or(&message);
    let kept: Vec<&str> = head.lines().take_while(|l| !l.trim_start().starts_with("frame #")).collect();
    kept.join("\n").trim_end().replace("Internal torch error: ", "libtorch: ")
}

/// A libtorch error as a script error: the first line of the C++ message, without its backtrace.
pub fn torch_error(err: tch::TchError) -> Box<EvalAltResult> {
    let text = err.to_string();
    let text = text.split("Exception raised from").next().unwrap_or(&text);
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error");
    let first = first.trim_start_matches("Internal torch error:").trim();
    script_error(format!("libtorch: {first}"))
}

/// Registers `f` as the script function `name`. `params` follows Rhai's metadata convention:
/// `"name: Type"` for each parameter, then the return type; `doc` is the one-line description.
pub fn def<A: 'static, const N: usize, const X: bool, R: Variant + Clone, const F: bool, FUNC>(
    engine: &mut Engine,
    name: &str,
    params: &[&str],
    doc: &str,
    f: FUNC,
) where
    FUNC: RhaiNativeFunc<A, N, X, R, F> + 'static,
{
    FuncRegistration::new(name)
        .with_params_info(params)
        .with_comments([format!("/// {doc}")])
        .register_into_engine(engine, f);
}

/// Registers `f` like `def`, with the options it reads: `decls[0]` is the function's own option
/// map, later ones nested maps (listed as `lora.rank`, ...). `host api` lists every option with
/// its type, default and doc line from these declarations, the same ones the function parses with.
pub fn def_with_options<A: 'static, const N: usize, const X: bool, R: Variant + Clone, const F: bool, FUNC>(
    engine: &mut Engine,
    name: &str,
    params: &[&str],
    doc: &str,
    decls: &[super::options::Decl],
    f: FUNC,
) where
    FUNC: RhaiNativeFunc<A, N, X, R, F> + 'static,
{
    let mut comments = vec![format!("/// {doc}")];
    for (i, d) in decls.iter().enumerate() {
        let prefix = if i == 0 { String::new() } else { format!("{}.", d.what) };
        comments.extend(d.doc_lines().into_iter().map(|l| format!("/// - {prefix}{l}")));
    }
    FuncRegistration::new(name).with_params_info(params).with_comments(comments).register_into_engine(engine, f);
}

/// One entry of `host api`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiEntry {
    pub name: String,
    pub signature: String,
    pub doc: String,
    /// The declared options, one line each ("key: type = default. doc").
    pub options: Vec<String>,
}

/// Every function registered with `def`, sorted by name, read from the engine's metadata.
pub fn listing(engine: &Engine) -> anyhow::Result<Vec<ApiEntry>> {
    let json: serde_json::Value = serde_json::from_str(&engine.gen_fn_metadata_to_json(false)?)?;
    let mut out = Vec::new();
    for f in json["functions"].as_array().into_iter().flatten() {
        let name = f["name"].as_str().unwrap_or_default().to_string();
        let comments: Vec<String> = f["docComments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .flat_map(|d| d.lines().map(|l| l.trim_start_matches("///").trim().to_string()).collect::<Vec<_>>())
            .collect();
        let doc = comments.first().cloned().unwrap_or_default();
        let options: Vec<String> = comments.iter().skip(1).filter_map(|l| l.strip_prefix("- ").map(str::to_string)).collect();
        let params: Vec<(String, String)> = f["params"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p["name"].as_str().unwrap_or("_").to_string(), p["type"].as_str().unwrap_or("?").to_string()))
            .collect();
        let ret = f["returnType"].as_str().map(|r| format!(" -> {r}")).unwrap_or_default();
        let signature = match (name.strip_prefix("get$"), name.as_str()) {
            // Property getters are registered as `get$NAME`; show them as properties.
            (Some(prop), _) => format!("{}.{prop}{ret}", params.first().map_or("?", |p| p.1.as_str())),
            (None, "index$get$") => format!("{}[{}]{ret}", params[0].1, params.get(1).map_or("?", |p| p.1.as_str())),
            _ => {
                let list: Vec<String> = params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
                format!("{name}({}){ret}", list.join(", "))
            }
        };
        out.push(ApiEntry { name, signature, doc, options });
    }
    out.sort_by_key(|e| e.signature.to_lowercase());
    Ok(out)
}

/// Writes `.d.rhai` definition files for editor completion into `dir`.
pub fn write_definitions(engine: &Engine, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    engine.definitions().with_headers(true).include_standard_packages(false).write_to_dir(dir)?;
    Ok(())
}

/// The stdlib entry points' options, as `host api` lists them: every `defaults()` a stdlib module
/// declares, evaluated, each key with its type, its default and the comment beside its declaration.
pub fn stdlib_listing(engine: &Engine) -> anyhow::Result<Vec<ApiEntry>> {
    let Some(dir) = super::resolver::stdlib_dir() else { return Ok(vec![]) };
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "rhai")).collect();
    files.sort();
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|p| Ok((p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), std::fs::read_to_string(p)?)))
        .collect::<std::io::Result<_>>()?;
    let mut out = Vec::new();
    for (module, text) in &texts {
        let ast = engine.compile(text).map_err(|e| anyhow::anyhow!("{}/{module}.rhai: {e}", dir.display()))?;
        let Some(f) = ast.iter_functions().find(|f| f.name == "defaults" && f.params.is_empty()) else { continue };
        let doc = f.comments.iter().flat_map(|c| c.lines()).map(|l| l.trim().trim_start_matches("///").trim()).collect::<Vec<_>>().join(" ");
        let defaults: rhai::Map = engine.eval(&format!("import \"{module}\" as m; m::defaults()")).map_err(|e| anyhow::anyhow!("{module}::defaults(): {e}"))?;
        // A key's comment: in the module itself, else where the stdlib declares it (options.rhai).
        let own = option_comments(text);
        let all: Vec<_> = texts.iter().map(|(_, t)| option_comments(t)).collect();
        let options = defaults
            .iter()
            .map(|(k, v)| {
                let comment = own.get(k.as_str()).or_else(|| all.iter().find_map(|c| c.get(k.as_str()))).map_or(String::new(), |c| format!(" {c}"));
                let value = if v.is_unit() { "(unset)".to_string() } else if v.is_string() { format!("\"{v}\"") } else { v.to_string() };
                format!("{k}: {} = {value}.{comment}", script_type(v))
            })
            .collect();
        out.push(ApiEntry { name: format!("{module}::defaults"), signature: format!("{module}::defaults() -> map"), doc, options });
    }
    Ok(out)
}

/// The type of an option value as `host api` names it.
fn script_type(v: &rhai::Dynamic) -> &'static str {
    match v.type_name() {
        "i64" => "int",
        "f64" => "number",
        "bool" => "bool",
        "string" => "string",
        "array" => "array",
        "map" => "map",
        "()" => "any",
        _ => "value",
    }
}

/// The `// comment` beside each option declared in a Rhai source, as the stdlib writes them:
/// `key: value, // ...` in a map literal or `o.key = value; // ...`; several keys on one line share
/// its comment, and a line holding only a comment in the same column continues the one above.
fn option_comments(text: &str) -> std::collections::HashMap<String, String> {
    let mut out: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let (mut last, mut column): (Vec<String>, usize) = (vec![], 0);
    for line in text.lines() {
        let Some((code, comment)) = line.split_once("//") else {
            last.clear();
            continue;
        };
        let comment = comment.trim();
        if comment.starts_with('/') {
            last.clear();
            continue;
        }
        let code = code.trim();
        if code.is_empty() {
            if line.find("//") != Some(column) {
                last.clear();
                continue;
            }
            for k in &last {
                if let Some(c) = out.get_mut(k) {
                    c.push(' ');
                    c.push_str(comment);
                }
            }
            continue;
        }
        let keys: Vec<String> = code
            .split([',', ';'])
            .filter_map(|part| {
                let part = part.trim().trim_start_matches("o.");
                let key = part.split([':', '=']).next()?.trim();
                (part.len() > key.len() && !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| key.to_string())
            })
            .collect();
        for k in &keys {
            out.entry(k.clone()).or_insert_with(|| comment.to_string());
        }
        last = keys;
        column = line.find("//").unwrap_or(0);
    }
    out
}
