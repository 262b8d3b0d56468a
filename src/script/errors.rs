//! Turns a Rhai error into the message a person can act on: `file:line:col: message`, the
//! offending source line with a caret under the column, and the chain of calls that led there.
use rhai::{EvalAltResult, Position};
use std::fmt;

/// One step of the call chain: where the call was made and what was called.
#[derive(Debug, Clone)]
pub struct Frame {
    pub file: String,
    pub position: Position,
    pub what: String,
}

/// A script failure located in a file.
#[derive(Debug, Clone)]
pub struct ScriptError {
    pub file: String,
    pub position: Position,
    pub message: String,
    /// Outermost call first.
    pub trace: Vec<Frame>,
    /// True when the script stopped because of Ctrl-C (or another stop request).
    pub interrupted: bool,
    /// True for a usage error (`api::usage_error`: the command line, not the script, is wrong).
    pub usage: bool,
}

impl ScriptError {
    /// Walks nested `ErrorInFunctionCall` / `ErrorInModule` wrappers down to the error that
    /// actually happened, tracking which file each position belongs to. `file` is the source of
    /// the outermost code (the script being run).
    pub fn from_eval(err: EvalAltResult, file: &str) -> Self {
        let mut file = file.to_string();
        let mut trace = Vec::new();
        let mut err = err;
        loop {
            match err {
                EvalAltResult::ErrorInFunctionCall(name, source, inner, pos) => {
                    trace.push(Frame { file: file.clone(), position: pos, what: format!("in call to `{name}`") });
                    if !source.is_empty() {
                        file = source;
                    }
                    err = *inner;
                }
                EvalAltResult::ErrorInModule(path, inner, pos) => {
                    trace.push(Frame { file: file.clone(), position: pos, what: format!("while importing \"{path}\"") });
                    file = path;
                    err = *inner;
                }
                other => {
                    err = other;
                    break;
                }
            }
        }
        let interrupted = matches!(err, EvalAltResult::ErrorTerminated(..));
        let position = err.position();
        err.set_position(Position::NONE);
        let usage = matches!(&err, EvalAltResult::ErrorRuntime(value, _) if value.is::<super::api::Usage>());
        let message = match &err {
            EvalAltResult::ErrorRuntime(value, _) if usage => value.clone().cast::<super::api::Usage>().0,
            EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
            EvalAltResult::ErrorTerminated(..) => "interrupted (Ctrl-C)".to_string(),
            EvalAltResult::ErrorTooManyOperations(..) => {
                "the script passed its operation limit (a loop that does not end?); `host run --max-operations N` raises it, 0 removes it".to_string()
            }
            _ => err.to_string(),
        };
        ScriptError { file, position, message, trace, interrupted, usage }
    }

    /// A parse error of the script itself.
    pub fn from_parse(err: rhai::ParseError, file: &str) -> Self {
        Self::from_eval(*Box::<EvalAltResult>::from(err), file)
    }
}

fn location(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(col)) => format!("{file}:{line}:{col}"),
        (Some(line), None) => format!("{file}:{line}"),
        _ => file.to_string(),
    }
}

/// The source line at `pos` with a caret under its column, if the file can be read.
fn excerpt(file: &str, pos: Position) -> Option<String> {
    let line_no = pos.line()?;
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().nth(line_no - 1)?;
    let gutter = format!("{line_no} | ");
    let mut out = format!("{gutter}{line}\n");
    if let Some(col) = pos.position() {
        // The caret follows tabs in the source so it lines up in a terminal.
        let pad: String = line.chars().take(col.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        out.push_str(&format!("{}{pad}^\n", " ".repeat(gutter.len())));
    }
    Some(out)
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", location(&self.file, self.position), self.message)?;
        if let Some(ex) = excerpt(&self.file, self.position) {
            write!(f, "{ex}")?;
        }
        for frame in self.trace.iter().rev() {
            writeln!(f, "  {} at {}", frame.what, location(&frame.file, frame.position))?;
        }
        Ok(())
    }
}
