//! `config(key, default)`: the script's settings, overridable with `--set key=value`. The value
//! must parse as the default's type; keys are found statically (literal first arguments of
//! `config` calls in the script and its imports) so an unknown `--set` key fails before anything
//! runs, naming the keys the script does read.
use super::api::ScriptResult;
use rhai::{Dynamic, INT};

/// Parses the text of `--set key=text` as the type of `default`. The error says what was expected.
pub fn parse_override(key: &str, text: &str, default: &Dynamic) -> Result<Dynamic, String> {
    let bad = |what: &str| format!("--set {key}={text}: expected {what}, the type of the script's default ({default})");
    if default.is_int() {
        text.trim().parse::<INT>().map(Dynamic::from_int).map_err(|_| bad("an integer"))
    } else if default.is_float() {
        text.trim().parse::<f64>().map(Dynamic::from_float).map_err(|_| bad("a number"))
    } else if default.is_bool() {
        match text.trim() {
            "true" => Ok(Dynamic::TRUE),
            "false" => Ok(Dynamic::FALSE),
            _ => Err(bad("true or false")),
        }
    } else if default.is_string() {
        Ok(Dynamic::from(text.to_string()))
    } else if default.is_array() || default.is_map() {
        let kind = if default.is_array() { "a JSON array" } else { "a JSON object" };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|_| bad(kind))?;
        if json.is_array() != default.is_array() || json.is_object() != default.is_map() {
            return Err(bad(kind));
        }
        rhai::serde::to_dynamic(json).map_err(|_| bad(kind))
    } else {
        Err(format!("config(\"{key}\", ...): a default of type {} cannot be set from the command line", default.type_name()))
    }
}

/// The JSON form of a script value for `config.json` and metrics.
pub fn to_json(value: &Dynamic) -> ScriptResult<serde_json::Value> {
    rhai::serde::from_dynamic::<serde_json::Value>(value)
}
