//! Script access to the exact small world: `exact_world(...)`, its prompts and responses, a
//! policy restricted to it, every pair of responses, and exact log-probabilities.
use super::api::{def, def_with_options, script_error, ScriptResult};
use super::data::ScriptPairs;
use super::model::{err, load, ScriptModel};
use super::options::{count, int, noted, text, Decl, Ty};
use super::tensor::ScriptTensor;
use super::SharedSession;
use crate::exact::World;
use rhai::{Array, Dynamic, Engine, Map};
use std::rc::Rc;

#[derive(Clone)]
pub struct ScriptWorld(pub Rc<World>);

/// The options of `exact_world`.
fn world_decl() -> Decl {
    Decl::new("exact_world", vec![
        noted("prompts", Ty::Strings, "required", "the world's prompts"),
        text("alphabet", "abcd", "the letters responses are made of"),
        count("length", 3, "letters per response (at least 1)"),
    ])
}

/// The options of `w.pairs`.
fn pairs_decl() -> Decl {
    Decl::new("pairs", vec![count("repeats", 1, "times every pair appears"), int("seed", 0, "the shuffle")])
}

fn world(opts: &Map) -> ScriptResult<ScriptWorld> {
    let decl = world_decl();
    let o = decl.read(opts)?;
    let prompts = o.strings("prompts")?.unwrap_or_default();
    let alphabet = o.text("alphabet")?;
    let length = o.int("length")?;
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
    def_with_options(engine, "exact_world", &["opts: map", "World"], "A world small enough to enumerate: every response is `length` letters of the alphabet.", &[world_decl()], |opts: Map| world(&opts));
    def(engine, "get$prompts", &["w: World", "array"], "The world's prompts.", |w: &mut ScriptWorld| texts(&w.0.prompts));
    def(engine, "get$responses", &["w: World", "array"], "Every response, in lexicographic order (the columns of the world's tables).", |w: &mut ScriptWorld| texts(&w.0.responses()));
    let s = session.clone();
    def_with_options(engine, "model", &["w: World", "opts: map", "Model"], "A random tiny Llama (builtin:tiny) whose responses are exactly the world's; the options of load_model.", &[super::model::load_decl()], move |w: &mut ScriptWorld, opts: Map| -> ScriptResult<ScriptModel> {
        let mut m = load("builtin:tiny", &opts, &s)?;
        w.0.restrict(&mut m).map_err(err)?;
        Ok(ScriptModel::new(m))
    });
    def_with_options(engine, "pairs", &["w: World", "opts: map", "Pairs"], "Every pair of distinct responses for every prompt, `repeats` times, shuffled; unlabelled until relabel.", &[pairs_decl()], |w: &mut ScriptWorld, opts: Map| -> ScriptResult<ScriptPairs> {
        let decl = pairs_decl();
        let o = decl.read(&opts)?;
        let pairs = w.0.pairs(o.count("repeats")?.max(1), o.int("seed")? as u64);
        let chosen = vec![0; pairs.len()];
        Ok(ScriptPairs { pairs: Rc::new(pairs), chosen: Rc::new(chosen), confidence: None, label: "none".into(), report: Default::default() })
    });
    def(engine, "logprobs", &["w: World", "m: Model", "Tensor"], "Exact log π(y|x) of every response (columns) for every prompt (rows), by enumeration; f32 [P, N].", |w: &mut ScriptWorld, m: ScriptModel| -> ScriptResult<ScriptTensor> {
        Ok(ScriptTensor(m.with(|m| w.0.logprobs(m)).map_err(err)?))
    });
}
