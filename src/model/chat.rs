//! Chat templates: the checkpoint's own Jinja `chat_template` (from `tokenizer_config.json`,
//! `chat_template.jinja` or GGUF metadata, or one a script gives), rendered with minijinja the
//! way transformers' `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks`, loop
//! controls, Python's string methods, `raise_exception`, `strftime_now`, a `tojson` filter that
//! writes what Python's `json.dumps` writes, and the variables `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and `documents` (none).
use anyhow::{Context, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error names the line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // A template comes with a checkpoint: bound its work so one that loops cannot hang a run
        // (the longest real template renders a long conversation in well under 1% of this).
        env.set_fuel(Some(50_000_000));
        env.add_function("raise_exception", |message: String| -> std::result::Result<Value, Error> { Err(Error::new(ErrorKind::InvalidOperation, message)) });
        env.add_function("strftime_now", |format: String| strftime(&format, std::time::SystemTime::now()));
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat_template", source.to_string()).map_err(|e| anyhow::anyhow!("chat template: {}", describe(&e)))?;
        Ok(ChatTemplate { env, source: source.to_string() })
    }

    /// The conversation `messages` (a list of `{role, content, ...}` maps) as the prompt text.
    pub fn render(&self, messages: &serde_json::Value, add_generation_prompt: bool, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<String> {
        let t = self.env.get_template("chat_template").context("chat template")?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        t.render(ctx).map_err(|e| anyhow::anyhow!("chat template: {}", describe(&e)))
    }
}

/// The error's message (a template's `raise_exception` text as it was given) and its line.
fn describe(e: &Error) -> String {
    let what = e.detail().map(str::to_string).unwrap_or_else(|| e.to_string());
    match e.line() {
        Some(line) => format!("{what} (line {line})"),
        None => what,
    }
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, so `", "` and `": "` between items unless indented.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_json(&json, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(Value::from(out))
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, sort: bool, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(x, indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(m) if !m.is_empty() => {
            out.push('{');
            let mut keys: Vec<&String> = m.keys().collect();
            if sort {
                keys.sort();
            }
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(&m[k], indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        // Python writes floats with a point (1.0) and non-ASCII as is; serde_json agrees on both.
        other => out.push_str(&other.to_string()),
    }
}

/// Python's `datetime.now().strftime(format)` for the directives chat templates use (UTC): %d %m
/// %Y %y %H %M %S %b %B %a %A %j %%; another directive is an error naming it.
fn strftime(format: &str, now: std::time::SystemTime) -> std::result::Result<String, Error> {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let month_name = MONTHS[(month - 1) as usize];
        let weekday = DAYS[days.rem_euclid(7) as usize];
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            other => return Err(Error::new(ErrorKind::InvalidOperation, format!("strftime_now: %{} is not supported", other.map(String::from).unwrap_or_default()))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_writes_what_python_writes() {
        // 2024-07-26 16:51:49 UTC, a Friday, day 208 of a leap year (Python's datetime gives the text).
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_722_012_709);
        assert_eq!(strftime("%d %b %Y, %A %j %H:%M:%S %%", t).unwrap(), "26 Jul 2024, Friday 208 16:51:49 %");
        assert!(strftime("%Q", t).is_err());
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        // Python: json.dumps({"e": {}, "n": [1, 2.5], "name": "é"}, ensure_ascii=False) and with
        // indent=2. Keys come in the value's order (maps from scripts and JSON are sorted by key).
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        let x = Value::from(minijinja::value::Serde(serde_json::json!({"name": "é", "n": [1, 2.5], "e": {}})));
        let out = t.env.get_template("chat_template").unwrap().render(minijinja::context! { x => x }).unwrap();
        assert_eq!(out, "{\"e\": {}, \"n\": [1, 2.5], \"name\": \"é\"}|{\n  \"e\": {},\n  \"n\": [\n    1,\n    2.5\n  ],\n  \"name\": \"é\"\n}");
    }
}
