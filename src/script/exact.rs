//! Script access to the exact small world: `exact_world(...)`, its prompts and responses, a
//! policy restricted to it, every pair of responses, and exact log-probabilities.
use super::api::{def, script_error, ScriptResult};
use super::data::ScriptPairs;
use super::model::{check_keys, err, load, opt_int, strings, ScriptModel};
use super::tensor::ScriptTensor;
use super::SharedSession;
use crate::exact::World;
use rhai::{Array, Dynamic, Engine, Map};
use std::rc::Rc;

#[derive(Clone)]
pub struct ScriptWorld(pub Rc<World>);

fn world(opts: &Map) -> ScriptResult<ScriptWorld> {
    check_keys(opts, &["prompts", "alphabet", "length"], "exact_world")?;
    let prompts = match opts.get("prompts") {
        None => return Err(script_error("exact_world: option `prompts` (an array of strings) is required")),
        Some(p) => strings(&p.clone().into_array().map_err(|t| script_error(format!("option prompts: expected an array of strings, found {t}")))?, "prompts")?,
    };
    let alphabet = opts.get("alphabet").map(|v| v.to_string()).unwrap_or_else(|| "abcd".into());
    let length = opt_int(opts, "length", 3)?;
    if length < 1 {
        return Err(script_error(format!("option length: expected at least 1, found {length}")));
    }
    Ok(ScriptWorld(Rc::new(World::new(prompts, &alphabet, length as usize).map_err(err)?)))
}

fn texts(v: &[String]) -> Array {
    v.iter().map(|s| Dynamic::from(s.clone())).collect()
}

pub fn register(engine: &mut Engine, session: SharedSession) {
    engine.register_type_with_name::<ScriptWorld>("World");
    def(engine, "exact_world", &["opts: map", "World"], "A world small enough to enumerate: #{prompts: [strings], alphabet: \"abcd\", length: 3}; every response is `length` letters of the alphabet.", |opts: Map| world(&opts));
    def(engine, "get$prompts", &["w: World", "array"], "The world's prompts.", |w: &mut ScriptWorld| texts(&w.0.prompts));
    def(engine, "get$responses", &["w: World", "array"], "Every response, in lexicographic order (the columns of the world's tables).", |w: &mut ScriptWorld| texts(&w.0.responses()));
    let s = session.clone();
    def(engine, "model", &["w: World", "opts: map", "Model"], "A random tiny Llama (builtin:tiny) whose responses are exactly the world's; opts as load_model (seed, dtype, device, lora).", move |w: &mut ScriptWorld, opts: Map| -> ScriptResult<ScriptModel> {
        let mut m = load("builtin:tiny", &opts, &s)?;
        w.0.restrict(&mut m).map_err(err)?;
        Ok(ScriptModel::new(m))
    });
    def(engine, "pairs", &["w: World", "opts: map", "Pairs"], "Every pair of distinct responses for every prompt, #{repeats: 1, seed} times, shuffled; unlabelled until relabel.", |w: &mut ScriptWorld, opts: Map| -> ScriptResult<ScriptPairs> {
        check_keys(&opts, &["repeats", "seed"], "pairs")?;
        let repeats = opt_int(&opts, "repeats", 1)?.max(1) as usize;
        let pairs = w.0.pairs(repeats, opt_int(&opts, "seed", 0)? as u64);
        let chosen = vec![0; pairs.len()];
        Ok(ScriptPairs { pairs: Rc::new(pairs), chosen: Rc::new(chosen), confidence: None, label: "none".into(), report: Default::default() })
    });
    def(engine, "logprobs", &["w: World", "m: Model", "Tensor"], "Exact log π(y|x) of every response (columns) for every prompt (rows), by enumeration; f32 [P, N].", |w: &mut ScriptWorld, m: ScriptModel| -> ScriptResult<ScriptTensor> {
        Ok(ScriptTensor(m.with(|m| w.0.logprobs(m)).map_err(err)?))
    });
}
