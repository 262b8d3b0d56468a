//! Resolves `import "NAME" as x;`: first next to the importing file, then next to the script being
//! run, then in the stdlib folder (found wherever the binary runs from). Modules are compiled once
//! and cached; their errors name the resolved file so messages point at the right line.
use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared, AST};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Resolver {
    script_dir: PathBuf,
    stdlib_dir: Option<PathBuf>,
    cache: RefCell<BTreeMap<PathBuf, Shared<Module>>>,
}

/// Where `stdlib/` is: `$DUALIGN_STDLIB`, else beside the binary or up to three folders above it
/// (`target/release/host` in a checkout), else the checkout the binary was built from.
pub fn stdlib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("DUALIGN_STDLIB") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        for dir in exe.ancestors().skip(1).take(4) {
            let candidate = dir.join("stdlib");
            if candidate.is_dir() {
                return Some(candidate);
            }
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib");
    built.is_dir().then_some(built)
}

impl Resolver {
    pub fn new(script: &Path) -> Self {
        let script_dir = script.parent().map(Path::to_path_buf).unwrap_or_default();
        Resolver { script_dir, stdlib_dir: stdlib_dir(), cache: RefCell::new(BTreeMap::new()) }
    }

    /// The file `import "path"` means when written in `source`, if one exists.
    pub fn locate(&self, source: Option<&str>, path: &str) -> Option<PathBuf> {
        let name = if path.ends_with(".rhai") { path.to_string() } else { format!("{path}.rhai") };
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(parent) = source.and_then(|s| Path::new(s).parent()) {
            dirs.push(parent.to_path_buf());
        }
        dirs.push(self.script_dir.clone());
        dirs.extend(self.stdlib_dir.clone());
        if Path::new(&name).is_absolute() {
            return Path::new(&name).is_file().then(|| PathBuf::from(&name));
        }
        dirs.into_iter().map(|d| d.join(&name)).find(|p| p.is_file())
    }

    /// Compiles a module file with its source set to its path (used by `host check` too).
    pub fn compile(&self, engine: &Engine, file: &Path, import: &str, pos: Position) -> Result<AST, Box<EvalAltResult>> {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| {
            EvalAltResult::ErrorInModule(
                import.to_string(),
                EvalAltResult::ErrorRuntime(format!("cannot read {shown}: {e}").into(), Position::NONE).into(),
                pos,
            )
        })?;
        let mut ast = engine
            .compile(&text)
            .map_err(|e| EvalAltResult::ErrorInModule(shown.clone(), Box::<EvalAltResult>::from(e), pos))?;
        ast.set_source(shown);
        Ok(ast)
    }

    fn not_found(&self, path: &str, pos: Position) -> Box<EvalAltResult> {
        let stdlib = self.stdlib_dir.as_ref().map_or("not found; set DUALIGN_STDLIB".to_string(), |d| d.display().to_string());
        EvalAltResult::ErrorRuntime(
            format!(
                "module \"{path}\" not found next to the script ({}) or in the stdlib ({stdlib})",
                self.script_dir.display()
            )
            .into(),
            pos,
        )
        .into()
    }
}

impl ModuleResolver for Resolver {
    fn resolve(&self, engine: &Engine, source: Option<&str>, path: &str, pos: Position) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let file = self.locate(source, path).ok_or_else(|| self.not_found(path, pos))?;
        let file = file.canonicalize().unwrap_or(file);
        if let Some(module) = self.cache.borrow().get(&file) {
            return Ok(module.clone());
        }
        let ast = self.compile(engine, &file, path, pos)?;
        let shown = file.display().to_string();
        let mut module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| EvalAltResult::ErrorInModule(shown.clone(), e, pos))?;
        module.set_id(shown);
        module.build_index();
        let module: Shared<Module> = module.into();
        self.cache.borrow_mut().insert(file, module.clone());
        Ok(module)
    }
}
