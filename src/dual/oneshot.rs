//! The one-shot (closed-form) dual: from `K` reference samples for each of `N` prompts with
//! reward `r` and utilities `g_1..g_m`, minimise over `λ >= 0`
//!
//! `D̂(λ) = β (1/N) Σ_x log (1/K) Σ_k exp((r_xk + λ·(g_xk - ḡ - b)) / β)`
//!
//! (docs/method.md). Its gradient is the slack under the tilted distribution
//! `w_xk = softmax_k((r_xk + λ·g_xk)/β)`: `∇ = (1/N) Σ_x Σ_k w_xk (g_xk - ḡ - b)`, and its Hessian
//! is the weighted covariance of `g` divided by `β`. Projected Newton steps with backtracking,
//! all in log space.
use anyhow::{bail, Result};

#[derive(Debug, Clone)]
pub struct Problem {
    /// `rewards[x][k]`.
    pub rewards: Vec<Vec<f64>>,
    /// `utilities[i][x][k]`, one matrix per constraint.
    pub utilities: Vec<Vec<Vec<f64>>>,
    /// `E_ref[g_i]` (usually the mean of `utilities[i]`).
    pub ref_means: Vec<f64>,
    pub thresholds: Vec<f64>,
    pub beta: f64,
}

#[derive(Debug, Clone)]
pub struct Solution {
    pub lambda: Vec<f64>,
    /// Predicted slack `E_{π_λ}[g_i] - ḡ_i - b_i` at the solution.
    pub slack: Vec<f64>,
    pub dual_value: f64,
    pub iterations: usize,
    pub converged: bool,
    /// Per constraint: whether these samples can meet it at all.
    pub feasible: Vec<bool>,
    /// Human-readable diagnosis when something cannot be met.
    pub message: String,
}

impl Problem {
    fn check(&self) -> Result<(usize, usize, usize)> {
        let n = self.rewards.len();
        let m = self.utilities.len();
        if n == 0 {
            bail!("one_shot_dual: no prompts");
        }
        let k = self.rewards[0].len();
        if k == 0 || self.rewards.iter().any(|r| r.len() != k) {
            bail!("one_shot_dual: rewards must be an N x K table with K >= 1 samples for every prompt");
        }
        for (i, u) in self.utilities.iter().enumerate() {
            if u.len() != n || u.iter().any(|row| row.len() != k) {
                bail!("one_shot_dual: utility {i} is not an {n} x {k} table like the rewards");
            }
        }
        if self.ref_means.len() != m || self.thresholds.len() != m {
            bail!("one_shot_dual: {m} utilities but {} reference means and {} thresholds", self.ref_means.len(), self.thresholds.len());
        }
        if !(self.beta > 0.0) {
            bail!("one_shot_dual: beta must be positive");
        }
        Ok((n, m, k))
    }

    /// `D̂(λ)`, its gradient and Hessian.
    pub fn evaluate(&self, lambda: &[f64]) -> (f64, Vec<f64>, Vec<Vec<f64>>) {
        let (n, m, k) = (self.rewards.len(), self.utilities.len(), self.rewards[0].len());
        let shift: Vec<f64> = (0..m).map(|i| self.ref_means[i] + self.thresholds[i]).collect();
        let mut value = 0.0;
        let mut grad = vec![0.0; m];
        let mut hess = vec![vec![0.0; m]; m];
        let mut z = vec![0.0; k];
        for x in 0..n {
            for (kk, zk) in z.iter_mut().enumerate() {
                *zk = (self.rewards[x][kk] + (0..m).map(|i| lambda[i] * (self.utilities[i][x][kk] - shift[i])).sum::<f64>()) / self.beta;
            }
            let zmax = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - zmax).exp()).sum();
            value += self.beta * (zmax + (sum / k as f64).ln());
            let w: Vec<f64> = z.iter().map(|v| (v - zmax).exp() / sum).collect();
            let mean: Vec<f64> = (0..m).map(|i| (0..k).map(|kk| w[kk] * self.utilities[i][x][kk]).sum()).collect();
            for i in 0..m {
                grad[i] += mean[i] - shift[i];
                for j in 0..m {
                    let cov: f64 = (0..k).map(|kk| w[kk] * (self.utilities[i][x][kk] - mean[i]) * (self.utilities[j][x][kk] - mean[j])).sum();
                    hess[i][j] += cov / self.beta;
                }
            }
        }
        let nf = n as f64;
        (value / nf, grad.iter().map(|g| g / nf).collect(), hess.iter().map(|r| r.iter().map(|h| h / nf).collect()).collect())
    }

    /// Minimises `D̂` over `λ >= 0`.
    pub fn solve(&self) -> Result<Solution> {
        let (n, m, k) = self.check()?;
        // A constraint no tilt of these samples can meet: even all weight on the best sample of
        // each prompt leaves the mean below what is required.
        let mut feasible = vec![true; m];
        let mut notes = Vec::new();
        for i in 0..m {
            let best: f64 = (0..n).map(|x| self.utilities[i][x].iter().cloned().fold(f64::NEG_INFINITY, f64::max)).sum::<f64>() / n as f64;
            let need = self.ref_means[i] + self.thresholds[i];
            if best < need - 1e-12 {
                feasible[i] = false;
                notes.push(format!("constraint {i} cannot be met from these samples: the best achievable mean is {best:.4}, the requirement is {need:.4} (reference mean {:.4} + threshold {:.4}); sample more responses, lower the threshold, or drop the constraint", self.ref_means[i], self.thresholds[i]));
            }
        }
        let _ = k;
        let mut lambda = vec![0.0; m];
        let (mut value, mut grad, mut hess) = self.evaluate(&lambda);
        let mut iterations = 0;
        let mut converged = false;
        // Coordinates of infeasible constraints would run to infinity: keep them at 0 and solve
        // for the rest (the diagnosis says why).
        let fixed: Vec<bool> = feasible.iter().map(|f| !f).collect();
        for it in 0..200 {
            iterations = it + 1;
            // Free set: λ_i > 0, or λ_i = 0 with the gradient pushing it up (negative slack).
            let free: Vec<usize> = (0..m).filter(|&i| !fixed[i] && (lambda[i] > 0.0 || grad[i] < 0.0)).collect();
            let pg: f64 = free.iter().map(|&i| grad[i] * grad[i]).sum::<f64>().sqrt();
            if pg < 1e-10 {
                converged = true;
                break;
            }
            // Newton direction on the free set (regularised), falling back to the gradient.
            let mut dir = vec![0.0; m];
            let sub: Vec<Vec<f64>> = free.iter().map(|&i| free.iter().map(|&j| hess[i][j] + if i == j { 1e-9 } else { 0.0 }).collect()).collect();
            let rhs: Vec<f64> = free.iter().map(|&i| -grad[i]).collect();
            match solve_linear(sub, rhs) {
                Some(d) if d.iter().zip(&free).map(|(di, &i)| di * grad[i]).sum::<f64>() < 0.0 => {
                    for (di, &i) in d.iter().zip(&free) {
                        dir[i] = *di;
                    }
                }
                _ => {
                    for &i in &free {
                        dir[i] = -grad[i];
                    }
                }
            }
            // Backtracking on the projected step (Armijo).
            let mut step = 1.0;
            let mut accepted = false;
            for _ in 0..60 {
                let cand: Vec<f64> = (0..m).map(|i| if fixed[i] { 0.0 } else { (lambda[i] + step * dir[i]).max(0.0) }).collect();
                let (v, g, h) = self.evaluate(&cand);
                let decrease: f64 = (0..m).map(|i| grad[i] * (cand[i] - lambda[i])).sum();
                if v <= value + 1e-4 * decrease {
                    let moved: f64 = (0..m).map(|i| (cand[i] - lambda[i]).abs()).sum();
                    lambda = cand;
                    value = v;
                    grad = g;
                    hess = h;
                    accepted = true;
                    if moved < 1e-13 {
                        converged = true;
                    }
                    break;
                }
                step *= 0.5;
            }
            if !accepted || converged {
                converged = true;
                break;
            }
            if lambda.iter().any(|l| *l > 1e8) {
                notes.push(format!("λ grew past 1e8 ({lambda:?}): the constraints cannot be met together from these samples"));
                break;
            }
        }
        Ok(Solution { slack: grad, lambda, dual_value: value, iterations, converged, feasible, message: notes.join("; ") })
    }
}

/// Solves `A x = b` by Gaussian elimination with partial pivoting; `None` if singular.
fn solve_linear(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-300 {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for cc in c..n {
                a[r][cc] -= f * a[c][cc];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        x[r] = (b[r] - (r + 1..n).map(|c| a[r][c] * x[c]).sum::<f64>()) / a[r][r];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logit(p: f64) -> f64 {
        (p / (1.0 - p)).ln()
    }

    /// One prompt, two equally likely reference responses: π_λ(y1) = σ((Δr + λ Δg)/β), so the
    /// constraint `g0 + p (g1 - g0) = ḡ + b` gives `λ* = (β logit(p*) - Δr) / Δg`.
    #[test]
    fn two_responses_have_a_closed_form_lambda() {
        let (r, g, beta) = ([1.0, 0.0], [0.0, 2.0], 0.5);
        for b in [0.2, 0.5, 0.8] {
            let gbar = 1.0; // the uniform reference's mean of g
            let p_star: f64 = (gbar + b - g[0]) / (g[1] - g[0]);
            let want = (beta * logit(p_star) - (r[1] - r[0])) / (g[1] - g[0]);
            let s = Problem { rewards: vec![r.to_vec()], utilities: vec![vec![g.to_vec()]], ref_means: vec![gbar], thresholds: vec![b], beta }.solve().unwrap();
            assert!(s.converged && s.feasible[0], "{s:?}");
            assert!((s.lambda[0] - want).abs() < 1e-7, "b = {b}: λ = {} vs closed form {want}", s.lambda[0]);
            assert!(s.slack[0].abs() < 1e-8, "the constraint is active at the optimum: {s:?}");
        }
        // A threshold the reference already meets by a margin: λ* = 0 (inactive), slack > 0.
        let s = Problem { rewards: vec![vec![0.0, 1.0]], utilities: vec![vec![vec![0.0, 2.0]]], ref_means: vec![1.0], thresholds: vec![0.1], beta: 0.5 }.solve().unwrap();
        assert_eq!(s.lambda, vec![0.0]);
        assert!(s.slack[0] > 0.0);
    }

    #[test]
    fn an_unreachable_threshold_is_diagnosed_not_answered_with_a_huge_lambda() {
        // The best sample has g = 2; requiring 1 + 1.5 = 2.5 cannot be met by any tilt.
        let s = Problem { rewards: vec![vec![1.0, 0.0]], utilities: vec![vec![vec![0.0, 2.0]]], ref_means: vec![1.0], thresholds: vec![1.5], beta: 0.5 }.solve().unwrap();
        assert!(!s.feasible[0]);
        assert_eq!(s.lambda, vec![0.0]);
        assert!(s.message.starts_with("constraint 0 cannot be met from these samples: the best achievable mean is 2.0000, the requirement is 2.5000"), "{}", s.message);
    }

    #[test]
    fn two_active_constraints_match_the_tilted_distribution() {
        // Three responses, two utilities; at the solution both constraints hold with equality.
        let p = Problem {
            rewards: vec![vec![2.0, 0.0, 0.5], vec![1.0, 0.2, 0.0]],
            utilities: vec![vec![vec![0.0, 1.0, 0.5], vec![0.1, 1.0, 0.3]], vec![vec![0.0, 0.2, 1.0], vec![0.0, 0.5, 1.0]]],
            ref_means: vec![0.4833333333333333, 0.45],
            thresholds: vec![0.15, 0.15],
            beta: 0.3,
        };
        let s = p.solve().unwrap();
        assert!(s.converged, "{s:?}");
        assert!(s.lambda.iter().all(|l| *l > 0.0), "both active: {s:?}");
        assert!(s.slack.iter().all(|u| u.abs() < 1e-7), "{s:?}");
        // The first-order condition without `evaluate`'s gradient: central differences of the
        // dual value D̂ vanish at an interior minimiser (h = 1e-5: truncation error O(h²) ≈ 1e-10,
        // rounding ≈ 1e-16/h ≈ 1e-11).
        let h = 1e-5;
        for i in 0..2 {
            let (mut up, mut down) = (s.lambda.clone(), s.lambda.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (p.evaluate(&up).0 - p.evaluate(&down).0) / (2.0 * h);
            assert!(fd.abs() < 1e-7, "∂D̂/∂λ_{i} = {fd}");
        }
        // And the tilted policy written out here, not by the solver: w_xk ∝ exp((r + λ·g)/β);
        // under it each constraint holds with equality (E_w[g_i] = ḡ_i + b_i).
        for i in 0..2 {
            let mut mean = 0.0;
            for x in 0..2 {
                let z: Vec<f64> = (0..3).map(|k| (p.rewards[x][k] + (0..2).map(|j| s.lambda[j] * p.utilities[j][x][k]).sum::<f64>()) / p.beta).collect();
                let total: f64 = z.iter().map(|v| v.exp()).sum();
                mean += (0..3).map(|k| z[k].exp() / total * p.utilities[i][x][k]).sum::<f64>() / 2.0;
            }
            assert!((mean - p.ref_means[i] - p.thresholds[i]).abs() < 1e-7, "constraint {i}: {mean}");
        }
        // The gradient `evaluate` returns is the finite-difference gradient at any λ.
        let at = [0.7, 1.3];
        let (_, g, _) = p.evaluate(&at);
        for i in 0..2 {
            let (mut up, mut down) = (at.to_vec(), at.to_vec());
            up[i] += h;
            down[i] -= h;
            let fd = (p.evaluate(&up).0 - p.evaluate(&down).0) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-7, "gradient {i}: {} vs finite difference {fd}", g[i]);
        }
        // λ* minimises D̂: nearby points are not lower.
        for d in [[1e-3, 0.0], [0.0, 1e-3], [-1e-3, 0.0], [0.0, -1e-3]] {
            let near: Vec<f64> = s.lambda.iter().zip(d).map(|(l, e)| (l + e).max(0.0)).collect();
            assert!(p.evaluate(&near).0 >= s.dual_value - 1e-12);
        }
    }
}
