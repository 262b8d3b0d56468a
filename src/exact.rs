//! The exact small world (docs/method.md, "What the theory promises"): a few prompts and every
//! response of `length` letters over a small alphabet. A policy restricted to that response
//! space (`model::ResponseSpace`) is a distribution over `alphabet^length` responses per prompt,
//! so its reward, KL and utilities — and the dual function, `λ*` and the constrained optimum —
//! are computed exactly by enumeration (stdlib/exact.rhai does the arithmetic).
use crate::data::{Pair, Rng};
use crate::model::{CausalLM, ResponseSpace};
use anyhow::{bail, Result};
use std::rc::Rc;
use tch::{Kind, Tensor};

/// The largest response space enumerated per prompt.
pub const MAX_RESPONSES: usize = 1 << 16;

#[derive(Debug, Clone)]
pub struct World {
    pub prompts: Vec<String>,
    /// One character per token of the response vocabulary.
    pub alphabet: Vec<char>,
    pub length: usize,
}

impl World {
    pub fn new(prompts: Vec<String>, alphabet: &str, length: usize) -> Result<World> {
        let letters: Vec<char> = alphabet.chars().collect();
        if letters.len() < 2 {
            bail!("exact world: the alphabet needs at least 2 letters, found {alphabet:?}");
        }
        for (i, c) in letters.iter().enumerate() {
            if letters[..i].contains(c) {
                bail!("exact world: the alphabet {alphabet:?} repeats {c:?}");
            }
        }
        if length == 0 {
            bail!("exact world: the response length must be at least 1");
        }
        let n = (letters.len() as f64).powi(length as i32);
        if n > MAX_RESPONSES as f64 {
            bail!("exact world: {}^{length} = {n} responses per prompt is more than the {MAX_RESPONSES} this world enumerates", letters.len());
        }
        if prompts.is_empty() {
            bail!("exact world: no prompts");
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() || prompts[..i].contains(p) {
                bail!("exact world: prompt {i} ({p:?}) is empty or repeats an earlier one");
            }
        }
        Ok(World { prompts, alphabet: letters, length })
    }

    /// Every response, in lexicographic order of the alphabet as given.
    pub fn responses(&self) -> Vec<String> {
        let v = self.alphabet.len();
        let n = v.pow(self.length as u32);
        (0..n)
            .map(|mut k| {
                let mut s = vec![' '; self.length];
                for pos in (0..self.length).rev() {
                    s[pos] = self.alphabet[k % v];
                    k /= v;
                }
                s.into_iter().collect()
            })
            .collect()
    }

    /// Restricts `m` to this world's responses: each letter must be one token of its tokenizer.
    pub fn restrict(&self, m: &mut CausalLM) -> Result<()> {
        let mut allowed = Vec::new();
        for c in &self.alphabet {
            let ids = m.tokenizer.encode(&c.to_string(), false)?;
            if ids.len() != 1 {
                bail!("exact world: the letter {c:?} is {} tokens for {}'s tokenizer; each letter must be one token", ids.len(), m.source);
            }
            allowed.push(ids[0]);
        }
        m.space = Some(ResponseSpace { allowed, length: self.length });
        Ok(())
    }

    /// Every unordered pair of distinct responses for every prompt, `repeats` times, in a seeded
    /// random order. The pairs carry no label until relabelled.
    pub fn pairs(&self, repeats: usize, seed: u64) -> Vec<Rc<Pair>> {
        let responses = self.responses();
        let mut out = Vec::new();
        for (x, prompt) in self.prompts.iter().enumerate() {
            for i in 0..responses.len() {
                for j in i + 1..responses.len() {
                    for r in 0..repeats {
                        out.push(Rc::new(Pair {
                            origin: format!("exact world: prompt {x}, {:?} vs {:?}, copy {r}", responses[i], responses[j]),
                            prompt: prompt.clone(),
                            responses: [responses[i].clone(), responses[j].clone()],
                            labels: Default::default(),
                            safe: [None, None],
                            extra: Default::default(),
                            scores: Default::default(),
                        }));
                    }
                }
            }
        }
        Rng::new(seed).shuffle(&mut out);
        out
    }

    /// Exact log-probabilities `[P, N]` of every response under a model restricted to this
    /// world; each row is checked to be a distribution (log-sum-exp within 1e-3 of 0).
    pub fn logprobs(&self, m: &CausalLM) -> Result<Tensor> {
        match &m.space {
            Some(s) if s.length == self.length && s.allowed.len() == self.alphabet.len() => {}
            _ => bail!("exact world: {} is not restricted to this world's responses (make it with world.model(...))", m.source),
        }
        let responses = self.responses();
        let tok = &m.tokenizer;
        let enc: Vec<Vec<i64>> = responses.iter().map(|r| tok.encode(r, false)).collect::<Result<_>>()?;
        let mut rows = Vec::new();
        for p in &self.prompts {
            let pe = tok.encode(p, true)?;
            let mut row = Vec::new();
            for chunk in enc.chunks(1024) {
                let prompts: Vec<&[i64]> = vec![&pe[..]; chunk.len()];
                let resp: Vec<&[i64]> = chunk.iter().map(|r| &r[..]).collect();
                row.push(tch::no_grad(|| m.sequence_logprobs(&prompts, &resp, 4096))?);
            }
            rows.push(Tensor::f_cat(&row, 0)?);
        }
        let lp = Tensor::f_stack(&rows, 0)?.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?;
        let mass = lp.f_logsumexp(&[1i64][..], false)?.f_abs()?.f_max()?.double_value(&[]);
        if !(mass < 1e-3) {
            bail!("exact world: the enumerated probabilities of {} do not sum to 1 (|log Σ π| = {mass:.2e})", m.source);
        }
        Ok(lp.f_to_kind(Kind::Float)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerates_in_order_and_pairs_every_couple() {
        let w = World::new(vec!["p".into(), "q".into()], "ab", 2).unwrap();
        assert_eq!(w.responses(), ["aa", "ab", "ba", "bb"]);
        // 4 responses: C(4,2) = 6 pairs per prompt, 2 prompts, 3 copies.
        let pairs = w.pairs(3, 7);
        assert_eq!(pairs.len(), 6 * 2 * 3);
        assert!(pairs.iter().all(|p| p.responses[0] < p.responses[1]));
    }

    #[test]
    fn rejects_bad_worlds() {
        assert!(World::new(vec!["p".into()], "a", 2).is_err());
        assert!(World::new(vec!["p".into()], "aba", 2).is_err());
        assert!(World::new(vec!["p".into()], "ab", 0).is_err());
        assert!(World::new(vec!["p".into(), "p".into()], "ab", 2).is_err());
        let e = World::new(vec!["p".into()], "abcd", 9).unwrap_err().to_string();
        assert!(e.contains("4^9 = 262144 responses"), "{e}");
    }
}
