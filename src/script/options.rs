//! Script option maps, each option declared once: its key, type, default and one-line doc, in a
//! `Decl` built next to the function that reads it (defaults taken from the Rust options struct
//! it fills, so a default lives in one place). The same declaration checks a script's map (an
//! unknown key or a value of the wrong type is an error naming the option), supplies the
//! defaults, and is what `host api` lists under the function (`def_with_options`).
use super::api::{script_error, ScriptResult};
use rhai::{Dynamic, Map, INT};
use std::fmt;

/// What an option accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// A float; an integer is taken as that float.
    Number,
    Int,
    /// A non-negative integer.
    Count,
    Bool,
    Str,
    /// An array of strings.
    Strings,
    /// A string or an array of strings.
    StrOrStrings,
    Map,
    Array,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Number => "number",
            Ty::Int => "int",
            Ty::Count => "count",
            Ty::Bool => "bool",
            Ty::Str => "string",
            Ty::Strings => "array of strings",
            Ty::StrOrStrings => "string or array of strings",
            Ty::Map => "map",
            Ty::Array => "array",
        }
    }

    fn accepts(self, v: &Dynamic) -> bool {
        match self {
            Ty::Number => v.is_float() || v.is_int(),
            Ty::Int => v.is_int(),
            Ty::Count => v.as_int().is_ok_and(|i| i >= 0),
            Ty::Bool => v.is_bool(),
            Ty::Str => v.is_string(),
            Ty::Strings => v.read_lock::<rhai::Array>().is_some_and(|a| a.iter().all(Dynamic::is_string)),
            Ty::StrOrStrings => v.is_string() || Ty::Strings.accepts(v),
            Ty::Map => v.is_map(),
            Ty::Array => v.is_array(),
        }
    }
}

/// A script number as f64: a float, or an integer taken as that float (the one numeric coercion
/// of script values); None for anything else.
pub fn as_number(v: &Dynamic) -> Option<f64> {
    v.as_float().ok().or_else(|| v.as_int().ok().map(|i| i as f64))
}

/// An array of script numbers as f64s; `what` names it in the error.
pub fn numbers(a: &rhai::Array, what: &str) -> ScriptResult<Vec<f64>> {
    a.iter().map(|v| as_number(v).ok_or_else(|| script_error(format!("{what}: expected numbers, found {}", v.type_name())))).collect()
}

/// An option's default: a value, or a description when it depends on the call (the run's seed,
/// the model, "required").
#[derive(Clone, Debug)]
pub enum DefaultValue {
    Number(f64),
    Int(i64),
    Bool(bool),
    Str(String),
    Note(&'static str),
}

impl fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DefaultValue::Number(x) => write!(f, "{x:?}"),
            DefaultValue::Int(i) => write!(f, "{i}"),
            DefaultValue::Bool(b) => write!(f, "{b}"),
            DefaultValue::Str(s) => write!(f, "\"{s}\""),
            DefaultValue::Note(n) => write!(f, "({n})"),
        }
    }
}

/// One declared option.
#[derive(Clone, Debug)]
pub struct Opt {
    pub key: &'static str,
    pub ty: Ty,
    pub default: DefaultValue,
    pub doc: &'static str,
}

pub fn number(key: &'static str, default: f64, doc: &'static str) -> Opt {
    Opt { key, ty: Ty::Number, default: DefaultValue::Number(default), doc }
}
pub fn int(key: &'static str, default: i64, doc: &'static str) -> Opt {
    Opt { key, ty: Ty::Int, default: DefaultValue::Int(default), doc }
}
pub fn count(key: &'static str, default: usize, doc: &'static str) -> Opt {
    Opt { key, ty: Ty::Count, default: DefaultValue::Int(default as i64), doc }
}
pub fn flag(key: &'static str, default: bool, doc: &'static str) -> Opt {
    Opt { key, ty: Ty::Bool, default: DefaultValue::Bool(default), doc }
}
pub fn text(key: &'static str, default: &str, doc: &'static str) -> Opt {
    Opt { key, ty: Ty::Str, default: DefaultValue::Str(default.to_string()), doc }
}
/// An option whose default depends on the call; `note` says what it is.
pub fn noted(key: &'static str, ty: Ty, note: &'static str, doc: &'static str) -> Opt {
    Opt { key, ty, default: DefaultValue::Note(note), doc }
}

/// The options of one script function (or of one nested map, like `lora`).
#[derive(Clone, Debug)]
pub struct Decl {
    pub what: &'static str,
    pub opts: Vec<Opt>,
}

impl Decl {
    pub fn new(what: &'static str, opts: Vec<Opt>) -> Decl {
        Decl { what, opts }
    }

    fn find(&self, key: &str) -> Option<&Opt> {
        self.opts.iter().find(|o| o.key == key)
    }

    /// Checks `map` against the declaration: every key declared, every value of its type.
    pub fn read<'a>(&'a self, map: &'a Map) -> ScriptResult<Given<'a>> {
        for (k, v) in map {
            let Some(o) = self.find(k) else {
                let known: Vec<&str> = self.opts.iter().map(|o| o.key).collect();
                return Err(script_error(format!("{}: unknown option `{k}` (known: {})", self.what, known.join(", "))));
            };
            if !o.ty.accepts(v) {
                return Err(script_error(format!("{}: option `{k}` must be {}, found {} {v}", self.what, o.ty.name(), v.type_name())));
            }
        }
        Ok(Given { decl: self, map })
    }

    /// One line per option, as `host api` shows them: "key: type = default. doc".
    pub fn doc_lines(&self) -> Vec<String> {
        self.opts.iter().map(|o| format!("{}: {} = {}. {}", o.key, o.ty.name(), o.default, o.doc)).collect()
    }
}

/// A checked option map: each getter returns the given value or the declared default.
pub struct Given<'a> {
    decl: &'a Decl,
    map: &'a Map,
}

impl Given<'_> {
    fn opt(&self, key: &str) -> ScriptResult<&Opt> {
        self.decl.find(key).ok_or_else(|| script_error(format!("internal: {} reads the undeclared option `{key}`", self.decl.what)))
    }

    fn missing(&self, o: &Opt) -> Box<rhai::EvalAltResult> {
        match &o.default {
            DefaultValue::Note("required") => script_error(format!("{}: option `{}` is required ({})", self.decl.what, o.key, o.doc)),
            _ => script_error(format!("internal: {}: option `{}` has no value default", self.decl.what, o.key)),
        }
    }

    /// The value the script gave, if any.
    pub fn get(&self, key: &str) -> Option<&Dynamic> {
        self.map.get(key)
    }

    pub fn number(&self, key: &str) -> ScriptResult<f64> {
        let o = self.opt(key)?;
        match (self.map.get(key), &o.default) {
            (Some(v), _) => Ok(as_number(v).unwrap_or_default()),
            (None, DefaultValue::Number(x)) => Ok(*x),
            (None, DefaultValue::Int(i)) => Ok(*i as f64),
            (None, _) => Err(self.missing(o)),
        }
    }

    pub fn int(&self, key: &str) -> ScriptResult<INT> {
        let o = self.opt(key)?;
        match (self.map.get(key), &o.default) {
            (Some(v), _) => Ok(v.as_int().unwrap_or_default()),
            (None, DefaultValue::Int(i)) => Ok(*i),
            (None, _) => Err(self.missing(o)),
        }
    }

    /// An integer option whose default depends on the call (`noted`): `fallback` when not given.
    pub fn int_or(&self, key: &str, fallback: INT) -> ScriptResult<INT> {
        self.opt(key)?;
        Ok(self.map.get(key).map_or(fallback, |v| v.as_int().unwrap_or_default()))
    }

    pub fn count(&self, key: &str) -> ScriptResult<usize> {
        Ok(self.int(key)?.max(0) as usize)
    }

    pub fn flag(&self, key: &str) -> ScriptResult<bool> {
        let o = self.opt(key)?;
        match (self.map.get(key), &o.default) {
            (Some(v), _) => Ok(v.as_bool().unwrap_or_default()),
            (None, DefaultValue::Bool(b)) => Ok(*b),
            (None, _) => Err(self.missing(o)),
        }
    }

    pub fn text(&self, key: &str) -> ScriptResult<String> {
        let o = self.opt(key)?;
        match (self.map.get(key), &o.default) {
            (Some(v), _) => Ok(v.to_string()),
            (None, DefaultValue::Str(s)) => Ok(s.clone()),
            (None, _) => Err(self.missing(o)),
        }
    }

    /// A string option whose default depends on the call: `None` when not given.
    pub fn text_given(&self, key: &str) -> ScriptResult<Option<String>> {
        self.opt(key)?;
        Ok(self.map.get(key).map(|v| v.to_string()))
    }

    /// An array-of-strings option; `None` when not given (and not required).
    pub fn strings(&self, key: &str) -> ScriptResult<Option<Vec<String>>> {
        let o = self.opt(key)?;
        match self.map.get(key) {
            Some(v) => Ok(Some(v.read_lock::<rhai::Array>().map(|a| a.iter().map(|s| s.to_string()).collect()).unwrap_or_default())),
            None if matches!(o.default, DefaultValue::Note("required")) => Err(self.missing(o)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl() -> Decl {
        Decl::new("f", vec![number("lr", 5e-4, "step size"), count("epochs", 1, "passes"), flag("keep", false, "keep it"), noted("prompts", Ty::Strings, "required", "the prompts")])
    }

    #[test]
    fn defaults_given_values_and_errors_come_from_the_declaration() {
        let d = decl();
        let mut m = Map::new();
        m.insert("lr".into(), Dynamic::from_int(2));
        let g = d.read(&m).unwrap();
        assert_eq!(g.number("lr").unwrap(), 2.0, "an int where a number is declared");
        assert_eq!(g.count("epochs").unwrap(), 1);
        assert!(!g.flag("keep").unwrap());
        assert!(g.strings("prompts").unwrap_err().to_string().contains("f: option `prompts` is required (the prompts)"));
        assert!(g.number("beta").unwrap_err().to_string().contains("undeclared option `beta`"));

        m.insert("epoch".into(), Dynamic::from_int(2));
        let e = d.read(&m).err().unwrap().to_string();
        assert!(e.contains("f: unknown option `epoch` (known: lr, epochs, keep, prompts)"), "{e}");
        let mut m = Map::new();
        m.insert("epochs".into(), Dynamic::from_int(-1));
        assert!(d.read(&m).err().unwrap().to_string().contains("f: option `epochs` must be count, found i64 -1"));
        let mut m = Map::new();
        m.insert("keep".into(), Dynamic::from("yes".to_string()));
        assert!(d.read(&m).err().unwrap().to_string().contains("option `keep` must be bool"));
        assert_eq!(d.doc_lines()[0], "lr: number = 0.0005. step size");
        assert_eq!(d.doc_lines()[3], "prompts: array of strings = (required). the prompts");
    }
}
