//! Script access to duality: `dual(...)` (the multipliers with their projected step and step
//! rules) and `one_shot_dual(...)` (the closed-form dual solver).
use super::api::{def, def_with_options, script_error, ScriptResult};
use super::options::{as_number, noted, numbers, Decl, Ty};
use crate::dual::{oneshot::Problem, Dual, StepRule};
use rhai::{Array, Dynamic, Engine, FnPtr, Map, NativeCallContext, INT};
use std::cell::RefCell;
use std::rc::Rc;

/// Dual variables shared by every handle (stdlib functions update the caller's `λ`).
#[derive(Clone)]
pub struct ScriptDual(pub Rc<RefCell<Dual>>);

fn array(v: &[f64]) -> Array {
    v.iter().map(|x| Dynamic::from_float(*x)).collect()
}

fn table(v: &Dynamic, what: &str) -> ScriptResult<Vec<Vec<f64>>> {
    let rows = v.clone().into_array().map_err(|t| script_error(format!("{what}: expected an array of arrays (one row of samples per prompt), found {t}")))?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| numbers(&r.clone().into_array().map_err(|t| script_error(format!("{what}[{i}]: expected an array, found {t}")))?, &format!("{what}[{i}]")))
        .collect()
}

fn step(d: &ScriptDual, slack: &Array, eta: &[f64]) -> ScriptResult<Array> {
    let slack = numbers(slack, "dual step slack")?;
    let v = d.0.borrow_mut().step(&slack, eta).map_err(|e| script_error(format!("{e:#}")))?;
    Ok(array(&v))
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<ScriptDual>("Dual");
    def(engine, "dual", &["n: int", "Dual"], "n dual variables λ >= 0, all starting at 0.", |n: INT| -> ScriptResult<ScriptDual> {
        Ok(ScriptDual(Rc::new(RefCell::new(Dual::new(vec![0.0; n.max(0) as usize]).map_err(|e| script_error(format!("{e:#}")))?))))
    });
    def(engine, "dual", &["values: array", "Dual"], "Dual variables λ >= 0 starting at the given values (a warm start).", |v: Array| -> ScriptResult<ScriptDual> {
        Ok(ScriptDual(Rc::new(RefCell::new(Dual::new(numbers(&v, "dual")?).map_err(|e| script_error(format!("{e:#}")))?))))
    });
    def(engine, "get$values", &["d: Dual", "array"], "The current λ, one value per constraint.", |d: &mut ScriptDual| array(&d.0.borrow().values));
    def(engine, "get$history", &["d: Dual", "array"], "λ after every step, starting with the initial value.", |d: &mut ScriptDual| -> Array {
        d.0.borrow().history.iter().map(|v| Dynamic::from_array(array(v))).collect()
    });
    def(engine, "get$slacks", &["d: Dual", "array"], "The slack each step was taken with.", |d: &mut ScriptDual| -> Array {
        d.0.borrow().slacks.iter().map(|v| Dynamic::from_array(array(v))).collect()
    });
    def(engine, "get$t", &["d: Dual", "int"], "Steps taken so far.", |d: &mut ScriptDual| d.0.borrow().t() as INT);
    def(engine, "set_rule", &["d: Dual", "rule: string", "()"], "The step rule: \"constant\" (η), \"inv_sqrt\" (η/√t) or \"adagrad\".", |d: &mut ScriptDual, rule: &str| -> ScriptResult<()> {
        d.0.borrow_mut().rule = StepRule::parse(rule).map_err(|e| script_error(format!("{e:#}")))?;
        Ok(())
    });
    def(engine, "set_max", &["d: Dual", "max: float", "()"], "An upper clamp on every λ.", |d: &mut ScriptDual, m: f64| {
        d.0.borrow_mut().max = Some(m);
    });
    def(engine, "step", &["d: Dual", "slack: array", "eta: float", "array"], "The projected dual step λ <- max(0, λ - η_t·slack); a violated constraint (slack < 0) raises its λ.", |d: &mut ScriptDual, slack: Array, eta: f64| step(d, &slack, &[eta]));
    def(engine, "step", &["d: Dual", "slack: array", "eta: array", "array"], "The projected dual step with one step size per constraint.", |d: &mut ScriptDual, slack: Array, eta: Array| step(d, &slack, &numbers(&eta, "eta")?));
    def(engine, "step", &["d: Dual", "slack: array", "rule: FnPtr", "array"], "The projected dual step with the step size from a Rhai function of (t, λ, slack) returning a number or an array.", |ctx: NativeCallContext, d: &mut ScriptDual, slack: Array, rule: FnPtr| -> ScriptResult<Array> {
        let (t, values) = {
            let b = d.0.borrow();
            (b.t() as INT + 1, array(&b.values))
        };
        let eta: Dynamic = rule.call_within_context(&ctx, (t, values, slack.clone()))?;
        let eta = match eta.clone().into_array() {
            Ok(a) => numbers(&a, "step rule result")?,
            Err(_) => vec![as_number(&eta).ok_or_else(|| script_error(format!("step rule: expected a number or an array, found {}", eta.type_name())))?],
        };
        step(d, &slack, &eta)
    });
    def_with_options(engine, "one_shot_dual", &["problem: map", "map"],
        "The closed-form dual minimiser from reference samples; returns #{lambda, slack, ref_means, dual_value, iterations, converged, feasible, message}.", &[problem_decl()],
        |p: Map| -> ScriptResult<Map> {
            let decl = problem_decl();
            let given = decl.read(&p)?;
            let get = |k: &str| -> ScriptResult<Array> { given.get(k).map(|v| v.clone().into_array().unwrap_or_default()).ok_or_else(|| script_error(format!("one_shot_dual: option `{k}` is required"))) };
            let rewards = table(&Dynamic::from_array(get("rewards")?), "rewards")?;
            let utilities: Vec<Vec<Vec<f64>>> = get("utilities")?.iter().enumerate().map(|(i, u)| table(u, &format!("utilities[{i}]"))).collect::<ScriptResult<_>>()?;
            let thresholds = numbers(&get("thresholds")?, "thresholds")?;
            let beta = given.number("beta")?;
            let ref_means = match given.get("ref_means") {
                Some(_) => numbers(&get("ref_means")?, "ref_means")?,
                None => utilities.iter().map(|u| { let all: Vec<f64> = u.iter().flatten().copied().collect(); all.iter().sum::<f64>() / all.len().max(1) as f64 }).collect(),
            };
            let s = Problem { rewards, utilities, ref_means: ref_means.clone(), thresholds, beta }.solve().map_err(|e| script_error(format!("{e:#}")))?;
            let mut out = Map::new();
            out.insert("lambda".into(), Dynamic::from_array(array(&s.lambda)));
            out.insert("slack".into(), Dynamic::from_array(array(&s.slack)));
            out.insert("ref_means".into(), Dynamic::from_array(array(&ref_means)));
            out.insert("dual_value".into(), s.dual_value.into());
            out.insert("iterations".into(), (s.iterations as INT).into());
            out.insert("converged".into(), s.converged.into());
            out.insert("feasible".into(), Dynamic::from_array(s.feasible.iter().map(|f| Dynamic::from(*f)).collect()));
            out.insert("message".into(), s.message.into());
            Ok(out)
        });
}

/// The problem map of `one_shot_dual`.
fn problem_decl() -> Decl {
    Decl::new("one_shot_dual", vec![
        noted("rewards", Ty::Array, "required", "reward of each reference sample: [[r per sample] per prompt]"),
        noted("utilities", Ty::Array, "required", "one such table per constraint"),
        noted("thresholds", Ty::Array, "required", "the improvement each constraint requires over the reference"),
        noted("beta", Ty::Number, "required", "the KL weight β"),
        noted("ref_means", Ty::Array, "each utility's sample mean", "the reference's mean utility per constraint"),
    ])
}
