//! Duality: the dual variables `λ >= 0` with their projected step and step rules, and the
//! closed-form (one-shot) dual solver (`oneshot`). The iterative method itself is written in Rhai
//! (stdlib/caid.rhai) over these primitives.
pub mod oneshot;

use anyhow::{bail, Result};

/// How the dual step size evolves with the iteration `t` (1-based).
#[derive(Debug, Clone, PartialEq)]
pub enum StepRule {
    /// `η`.
    Constant,
    /// `η / √t`.
    InvSqrt,
    /// Per-coordinate `η / √(Σ_s u_s²)` (Adagrad on the dual).
    Adagrad,
}

impl StepRule {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => StepRule::Constant,
            "inv_sqrt" | "sqrt" => StepRule::InvSqrt,
            "adagrad" => StepRule::Adagrad,
            other => bail!("step rule \"{other}\" is not one of constant, inv_sqrt, adagrad (or pass a function)"),
        })
    }
}

/// The vector of dual variables with its history.
#[derive(Debug, Clone)]
pub struct Dual {
    pub values: Vec<f64>,
    pub rule: StepRule,
    /// Optional upper clamp on every `λ_i`.
    pub max: Option<f64>,
    /// `λ` after every step, starting with the initial value.
    pub history: Vec<Vec<f64>>,
    /// The slack each step was taken with.
    pub slacks: Vec<Vec<f64>>,
    adagrad: Vec<f64>,
}

impl Dual {
    pub fn new(values: Vec<f64>) -> Result<Self> {
        if values.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            bail!("dual: initial values must be finite and >= 0, got {values:?}");
        }
        let n = values.len();
        Ok(Dual { history: vec![values.clone()], values, rule: StepRule::Constant, max: None, slacks: Vec::new(), adagrad: vec![0.0; n] })
    }

    /// Steps taken so far.
    pub fn t(&self) -> usize {
        self.slacks.len()
    }

    /// The projected dual step `λ <- clamp(λ - η_t u, 0, max)` with `u` the constraint slack
    /// (`E_π[g] - E_ref[g] - b`, one per constraint; negative when violated, which raises `λ`).
    /// `eta` is the base step, or one step per coordinate.
    pub fn step(&mut self, slack: &[f64], eta: &[f64]) -> Result<Vec<f64>> {
        let n = self.values.len();
        if slack.len() != n {
            bail!("dual step: {} slack values for {n} constraints", slack.len());
        }
        if eta.len() != 1 && eta.len() != n {
            bail!("dual step: {} step sizes for {n} constraints (give one, or one per constraint)", eta.len());
        }
        if slack.iter().chain(eta).any(|x| !x.is_finite()) {
            bail!("dual step: non-finite slack {slack:?} or step size {eta:?}");
        }
        let t = self.t() + 1;
        for i in 0..n {
            let base = if eta.len() == 1 { eta[0] } else { eta[i] };
            let step = match self.rule {
                StepRule::Constant => base,
                StepRule::InvSqrt => base / (t as f64).sqrt(),
                StepRule::Adagrad => {
                    self.adagrad[i] += slack[i] * slack[i];
                    base / self.adagrad[i].sqrt().max(1e-12)
                }
            };
            let mut v = (self.values[i] - step * slack[i]).max(0.0);
            if let Some(m) = self.max {
                v = v.min(m);
            }
            self.values[i] = v;
        }
        self.slacks.push(slack.to_vec());
        self.history.push(self.values.clone());
        Ok(self.values.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violated_constraints_raise_lambda_and_slack_ones_lower_it_to_zero_not_below() {
        let mut d = Dual::new(vec![1.0, 1.0]).unwrap();
        // Constraint 0 violated by 0.5 (slack -0.5): λ0 = 1 + 0.4 * 0.5 = 1.2.
        // Constraint 1 over-satisfied by 10 (slack 10): λ1 = max(0, 1 - 0.4 * 10) = 0.
        assert_eq!(d.step(&[-0.5, 10.0], &[0.4]).unwrap(), vec![1.2, 0.0]);
        assert_eq!(d.step(&[0.0, 3.0], &[0.4]).unwrap()[1], 0.0);
        assert_eq!(d.history.len(), 3);
        // η/√t: the third step uses 0.4/√3.
        let mut d = Dual::new(vec![0.0]).unwrap();
        d.rule = StepRule::InvSqrt;
        d.step(&[-1.0], &[0.4]).unwrap();
        d.step(&[-1.0], &[0.4]).unwrap();
        let v = d.step(&[-1.0], &[0.4]).unwrap()[0];
        assert!((v - (0.4 + 0.4 / 2f64.sqrt() + 0.4 / 3f64.sqrt())).abs() < 1e-12);
        // Adagrad normalises by the running norm: two equal slacks of -2 give η + η/√2.
        let mut d = Dual::new(vec![0.0]).unwrap();
        d.rule = StepRule::Adagrad;
        d.step(&[-2.0], &[1.0]).unwrap();
        let v = d.step(&[-2.0], &[1.0]).unwrap()[0];
        assert!((v - (1.0 + 2.0 / 8f64.sqrt())).abs() < 1e-12, "{v}");
        // The clamp caps λ.
        let mut d = Dual::new(vec![0.0]).unwrap();
        d.max = Some(0.5);
        assert_eq!(d.step(&[-10.0], &[1.0]).unwrap(), vec![0.5]);
        assert!(Dual::new(vec![-1.0]).is_err());
    }
}
