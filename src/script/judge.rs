//! Script access to the gold judge (`crate::judge`): `refusal_judge` and `degenerate`.
use super::api::{def, script_error, ScriptResult};
use super::model::strings;
use crate::judge;
use rhai::{Array, Dynamic, Engine};

fn both(prompts: &Array, responses: &Array, name: &str) -> ScriptResult<(Vec<String>, Vec<String>)> {
    if prompts.len() != responses.len() {
        return Err(script_error(format!("{name}: {} prompts but {} responses", prompts.len(), responses.len())));
    }
    Ok((strings(prompts, "prompts")?, strings(responses, "responses")?))
}

pub fn register(engine: &mut Engine) {
    def(engine, "refusal_judge", &["prompts: array", "responses: array", "array"],
        "The gold judge (rule-based, never trained against): for each response \"full_refusal\", \"partial_refusal\" or \"full_compliance\" (XSTest's labels).",
        |prompts: Array, responses: Array| -> ScriptResult<Array> {
            let (p, r) = both(&prompts, &responses, "refusal_judge")?;
            Ok(p.iter().zip(&r).map(|(p, r)| Dynamic::from(judge::judge(p, r).name().to_string())).collect())
        });
    def(engine, "degenerate", &["prompts: array", "responses: array", "array"],
        "For each response, whether it is degenerate: empty or a few characters, mostly non-letters, a repetition loop, or an echo of the prompt.",
        |prompts: Array, responses: Array| -> ScriptResult<Array> {
            let (p, r) = both(&prompts, &responses, "degenerate")?;
            Ok(p.iter().zip(&r).map(|(p, r)| Dynamic::from(judge::degenerate(p, r))).collect())
        });
}
