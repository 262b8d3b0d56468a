//! On-policy sampling at scale: continuous batching over a fixed number of decoding slots, one
//! prefill per distinct prompt, and a random stream per sequence.
//!
//! The work is the list of (prompt, sample) sequences, prompt by prompt. Each slot holds one
//! sequence at its own length in a per-row KV cache (`KvCache::row_positions`); when a sequence
//! stops (an EOS id or `max_new_tokens`), the next one takes its slot at once: its prompt's keys
//! and values, computed once for all of that prompt's samples, are copied into the slot, and its
//! first token is drawn from the prompt's last hidden state. The batch therefore stays full until
//! the work runs out, no step copies the whole cache, and the cost is linear in the number of
//! samples. When the work has run out and at most 7/8 of the slots are still decoding, the cache
//! is compacted to those rows (a geometric series of copies, bounded by a few cache sizes).
//!
//! Every draw is an inverse-CDF lookup at a uniform number that depends only on the seed, the
//! sequence's index and its step (`uniform`), never on the slot or on what else is in the
//! batch: a seed means the same samples whatever the slot count.
use super::layers::KvCache;
use super::CausalLM;
use crate::run::progress::Progress;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// How each next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoding {
    /// The most likely token.
    Greedy,
    /// A draw from the softmax at `temperature`, restricted first to the `top_k` most likely
    /// tokens (None: all), then to the nucleus holding `top_p` of what remains (1: all).
    Sample { temperature: f64, top_k: Option<i64>, top_p: f64 },
}

impl Decoding {
    /// From the settings as users write them (HF `generate`'s names): temperature 0 is greedy,
    /// top_k 0 is no top-k filter. Out-of-range values are errors naming the setting.
    pub fn new(temperature: f64, top_k: i64, top_p: f64) -> Result<Self> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            anyhow::bail!("temperature {temperature}: must be 0 (greedy) or positive");
        }
        if top_k < 0 {
            anyhow::bail!("top_k {top_k}: must be 0 (off) or positive");
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            anyhow::bail!("top_p {top_p}: must be in (0, 1]");
        }
        Ok(if temperature == 0.0 { Decoding::Greedy } else { Decoding::Sample { temperature, top_k: (top_k > 0).then_some(top_k), top_p } })
    }

    /// The user-facing settings `(temperature, top_k, top_p)` that `new` reads back as `self`.
    pub fn settings(self) -> (f64, i64, f64) {
        match self {
            Decoding::Greedy => (0.0, 0, 1.0),
            Decoding::Sample { temperature, top_k, top_p } => (temperature, top_k.unwrap_or(0), top_p),
        }
    }
}

/// Sampling settings of `generate`.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Samples per prompt.
    pub n: usize,
    pub max_new_tokens: usize,
    pub decoding: Decoding,
    pub seed: Option<i64>,
    /// Sequences decoded together; 0 means the default for the model and device (`default_slots`).
    pub slots: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions { n: 1, max_new_tokens: 64, decoding: Decoding::Sample { temperature: 1.0, top_k: None, top_p: 1.0 }, seed: None, slots: 0 }
    }
}

/// Decoding slots when the caller gives none: 256, the fastest of 32/64/128/256 for SmolLM2-135M
/// at the dual step's shape on a 2-core CPU (README), fewer where the KV cache of 256 sequences of
/// `capacity` positions would pass 2 GiB on a CPU or 16 GiB on a GPU.
pub fn default_slots(cfg: &super::config::Config, capacity: usize, kind: Kind, device: Device) -> usize {
    let budget: f64 = if device.is_cuda() { 16.0 } else { 2.0 } * (1u64 << 30) as f64;
    let per_token = (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * kind.elt_size_in_bytes()) as f64;
    ((budget / (per_token * capacity.max(1) as f64)) as usize).clamp(1, 256)
}

/// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform number in `[0, 1)` (53 bits) that draws token `step` of sequence `seq` under
/// `seed`: a counter-based stream, so the draw does not depend on batch position or slot count.
pub fn uniform(seed: u64, seq: u64, step: u64) -> f64 {
    let h = mix(mix(mix(seed) ^ seq) ^ step);
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Draws one token per row of `logits` `[R, V]` at the uniforms `u` `[R]` (f64): greedy, or from the softmax at the temperature, restricted first to the `top_k`
/// most likely tokens and then to the nucleus of what remains (the most likely tokens until their
/// renormalised mass reaches `top_p`, Holtzman et al. 2020), renormalised: the order and meaning
/// of HF transformers' `TopKLogitsWarper` followed by `TopPLogitsWarper`.
///
/// The nucleus is found among the `k` most likely tokens for growing `k` (64, 1024, then all):
/// once the top `k` hold at least `top_p` of the mass in every row, the nucleus lies inside them,
/// so the result is exactly the full-sort definition without sorting the whole vocabulary.
pub fn sample(logits: &Tensor, decoding: Decoding, u: &Tensor) -> Result<Tensor> {
    let Decoding::Sample { temperature, top_k, top_p } = decoding else {
        return Ok(logits.f_argmax(-1, false)?);
    };
    let v = logits.size()[1];
    let scaled = if temperature == 1.0 { logits.shallow_clone() } else { logits.f_div_scalar(temperature)? };
    // Top-k first: the candidates (sorted, with their vocabulary ids) and their renormalised mass.
    let (ids, probs) = match top_k.filter(|&k| k < v) {
        Some(k) => {
        let (vals, idx) = scaled.f_topk(k, -1, true, true)?;
        (Some(idx), vals.f_softmax(-1, Kind::Float)?)
        }
        None => (None, scaled.f_softmax(-1, Kind::Float)?),
    };
    let to_vocab = |choice: Tensor| -> Result<Tensor> {
        match &ids {
            Some(idx) => Ok(idx.f_gather(1, &choice.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?),
            None => Ok(choice),
        }
    };
    if top_p >= 1.0 {
        return to_vocab(inverse_cdf(&probs, u)?);
    }
    // Rows whose nucleus is not yet found; a row moves on to a larger `k` only if the top `k` of
    // its own distribution do not reach `top_p` (one flat row does not make every row sort).
    let (rows, n) = (probs.size()[0], probs.size()[1]);
    let dev = probs.device();
    let mut out = Tensor::f_zeros([rows], (Kind::Int64, dev))?;
    let mut todo = Tensor::f_arange(rows, (Kind::Int64, dev))?;
    for k in [64, 1024, n] {
        let k = k.min(n);
        let candidates = if todo.size()[0] == rows { probs.shallow_clone() } else { probs.f_index_select(0, &todo)? };
        let (vals, idx) = candidates.f_topk(k, -1, true, true)?;
        // Cumulative mass in f64, so the nucleus boundary is not moved by f32 rounding.
        let cum = vals.f_cumsum(-1, Kind::Double)?;
        let covered = if k == n { Tensor::f_ones([todo.size()[0]], (Kind::Bool, dev))? } else { cum.f_select(1, k - 1)?.f_ge(top_p)? };
        let here = covered.f_nonzero()?.f_squeeze_dim(1)?;
        if here.size()[0] > 0 {
            let (vals, idx, cum) = (vals.f_index_select(0, &here)?, idx.f_index_select(0, &here)?, cum.f_index_select(0, &here)?);
            let rows_here = todo.f_index_select(0, &here)?;
            // Keep a token while the mass before it is below top_p (the first one always stays).
            let keep = cum.f_sub(&vals.f_to_kind(Kind::Double)?)?.f_lt(top_p)?;
            let kept = vals.f_mul(&keep.f_to_kind(Kind::Float)?)?;
            let choice = inverse_cdf(&kept, &u.f_index_select(0, &rows_here)?)?.f_unsqueeze(1)?;
            let _ = out.f_index_copy_(0, &rows_here, &idx.f_gather(1, &choice, false)?.f_squeeze_dim(1)?)?;
        }
        todo = todo.f_masked_select(&covered.f_logical_not()?)?;
        if todo.size()[0] == 0 {
            break;
        }
    }
    to_vocab(out)
}

/// For each row of non-negative `weights` `[R, K]`, the index `i` with
/// `cum[i-1] <= u·total < cum[i]` (cumulative sums in f64): index `i` with probability
/// `weights[i] / total`.
fn inverse_cdf(weights: &Tensor, u: &Tensor) -> Result<Tensor> {
    let k = weights.size()[1];
    let cum = weights.f_cumsum(-1, Kind::Double)?;
    let target = u.f_mul(&cum.f_select(1, k - 1)?)?.f_unsqueeze(1)?;
    Ok(cum.f_le_tensor(&target)?.f_sum_dim_intlist(&[-1i64][..], false, Kind::Int64)?.f_clamp_max(k - 1)?)
}

/// Prompts prefilled together: their keys and values per layer `[G, kvH, L, D]` (right-padded to
/// the longest, `L`), and the final hidden state at each prompt's last token `[G, H]`.
struct PromptGroup {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    last: Tensor,
    len: i64,
    /// Sequences of these prompts not yet started; the group is dropped at zero.
    unstarted: usize,
}

/// The sequence a slot is decoding.
struct Slot {
    seq: usize,
    /// Positions of the slot's cache row filled so far (prompt plus fed-back tokens).
    len: i64,
    /// Tokens drawn so far.
    drawn: usize,
}

/// Most prompt tokens prefilled in one forward.
const PREFILL_TOKENS: usize = 8192;

impl CausalLM {
    /// Samples `opts.n` responses for each prompt with continuous batching (module docs). Returns
    /// the new tokens of each (prompt, sample), prompt by prompt, without the stop token; a
    /// sequence stops at any EOS id or after `max_new_tokens` (exactly `length` tokens in a closed
    /// response space).
    pub fn generate(&self, prompts: &[Vec<i64>], opts: &SampleOptions, stop: &dyn Fn() -> bool) -> Result<Vec<Vec<i64>>> {
        self.generate_range(prompts, opts, 0..prompts.len() * opts.n.max(1), stop)
    }

    /// As `generate`, for the sequences `range` of the `prompts.len() × n` (sequence `p·n + j` is
    /// prompt p's j-th sample) only: the same tokens those sequences get from `generate`, since
    /// every draw depends on the seed and the sequence's index alone. A distributed run deals the
    /// sequences out in ranges this way.
    pub fn generate_range(&self, prompts: &[Vec<i64>], opts: &SampleOptions, range: Range<usize>, stop: &dyn Fn() -> bool) -> Result<Vec<Vec<i64>>> {
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            bail!("generate: prompt {i} has no tokens");
        }
        let n = opts.n.max(1);
        if range.end > prompts.len() * n {
            bail!("generate: sequences {range:?} of {}", prompts.len() * n);
        }
        let seed = match opts.seed {
            Some(s) => s as u64,
            // Unseeded: a stream drawn from torch's generator, which the script's `seed()` sets.
            None => Tensor::f_randint(i64::MAX, [1], (Kind::Int64, Device::Cpu))?.int64_value(&[0]) as u64,
        };
        if range.is_empty() {
            return Ok(Vec::new());
        }
        tch::no_grad(|| Decoder::new(self, prompts, opts, n, seed, range)?.run(stop))
    }
}

/// The state of one `generate` call.
struct Decoder<'a> {
    m: &'a CausalLM,
    prompts: &'a [Vec<i64>],
    opts: &'a SampleOptions,
    n: usize,
    seed: u64,
    /// The sequences this call samples (`out[i]` is sequence `range.start + i`).
    range: Range<usize>,
    max_new: usize,
    cache: KvCache,
    /// Hidden state `[S, H]` whose LM-head row gives each slot's next-token distribution.
    last_h: Tensor,
    slots: Vec<Option<Slot>>,
    /// The LM head `[V, H]` (the closed response space's rows only, in the exact world).
    head: Tensor,
    allowed: Option<Tensor>,
    out: Vec<Vec<i64>>,
    /// The next sequence to start.
    next: usize,
    groups: Vec<Option<PromptGroup>>,
    /// Prompt index to (group, row) while its group lives.
    prompt_rows: HashMap<usize, (usize, i64)>,
    finished: usize,
    tokens: usize,
    start: Instant,
    progress: Option<Progress>,
    /// Token budget already reported to the progress.
    reported: usize,
}

impl<'a> Decoder<'a> {
    fn new(m: &'a CausalLM, prompts: &'a [Vec<i64>], opts: &'a SampleOptions, n: usize, seed: u64, range: Range<usize>) -> Result<Self> {
        let total = range.len();
        let max_new = m.space.as_ref().map_or(opts.max_new_tokens, |s| s.length).max(1);
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let slots = if opts.slots == 0 { default_slots(&m.cfg, longest + max_new, m.kind, m.device) } else { opts.slots }.min(total);
        let cfg = &m.cfg;
        let cache = KvCache::new(cfg.num_layers, slots as i64, cfg.num_kv_heads as i64, (longest + max_new) as i64, cfg.head_dim as i64, m.kind, m.device)?;
        let last_h = Tensor::f_zeros([slots as i64, cfg.hidden_size as i64], (m.kind, m.device))?;
        let allowed = match &m.space {
            Some(s) => Some(Tensor::f_from_slice(&s.allowed)?.f_to_device(m.device)?),
            None => None,
        };
        Ok(Decoder {
            m,
            prompts,
            opts,
            n,
            seed,
            next: range.start,
            range,
            max_new,
            cache,
            last_h,
            slots: (0..slots).map(|_| None).collect(),
            head: m.response_head()?,
            allowed,
            out: vec![Vec::new(); total],
            groups: Vec::new(),
            prompt_rows: HashMap::new(),
            finished: 0,
            tokens: 0,
            start: Instant::now(),
            progress: None,
            reported: 0,
        })
    }

    fn run(mut self, stop: &dyn Fn() -> bool) -> Result<Vec<Vec<i64>>> {
        let all: Vec<usize> = (0..self.slots.len()).collect();
        let mut fresh = self.start_sequences(&all)?;
        loop {
            if stop() {
                bail!("interrupted");
            }
            // Draw for every slot with a fresh distribution; slots whose sequence stops take the
            // next sequence at once and draw its first token in the same round.
            let mut feed: Vec<(usize, i64)> = Vec::new();
            while !fresh.is_empty() {
                let tokens = self.draw(&fresh)?;
                let mut freed = Vec::new();
                for (&s, &tok) in fresh.iter().zip(&tokens) {
                    let slot = self.slots[s].as_mut().expect("a fresh slot holds a sequence");
                    slot.drawn += 1;
                    let eos = self.m.tokenizer.eos_ids.contains(&tok);
                    if !eos {
                        self.out[slot.seq - self.range.start].push(tok);
                        self.tokens += 1;
                    }
                    if eos || slot.drawn >= self.max_new {
                        self.slots[s] = None;
                        self.finished += 1;
                        freed.push(s);
                    } else {
                        feed.push((s, tok));
                    }
                }
                fresh = self.start_sequences(&freed)?;
            }
            self.report();
            if feed.is_empty() {
                break;
            }
            if self.next == self.range.end && feed.len() * 8 <= self.slots.len() * 7 && self.slots.len() > 1 {
                feed = self.compact(feed)?;
            }
            fresh = self.step(&feed)?;
        }
        let note = self.rate();
        if let Some(p) = &mut self.progress {
            p.tick((self.out.len() * self.max_new).saturating_sub(self.reported), &note);
            p.finish(&note);
        }
        Ok(self.out)
    }

    fn rate(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        format!("{}/{} samples, {:.0} new tokens/s", self.finished, self.out.len(), self.tokens as f64 / secs)
    }

    /// Progress after two seconds (short calls stay quiet). It counts the token budget
    /// (`max_new_tokens` per sample: a finished sample uses up its budget, a running one its
    /// tokens so far), so the ETA holds when every sample runs at once and finishes near the end.
    fn report(&mut self) {
        let budget = self.out.len() * self.max_new;
        if self.progress.is_none() && self.start.elapsed() >= Duration::from_secs(2) {
            self.progress = Some(Progress::started("sampling (token budget)", budget, self.start));
        }
        if self.progress.is_some() {
            let running: usize = self.slots.iter().flatten().map(|s| s.drawn).sum();
            let used = (self.finished * self.max_new + running).min(budget);
            let note = self.rate();
            if let Some(p) = &mut self.progress {
                p.tick(used.saturating_sub(self.reported), &note);
            }
            self.reported = used.max(self.reported);
        }
    }

    /// Tokens for `rows` (slot indices) from their fresh distributions, one uniform per sequence
    /// and step.
    fn draw(&self, rows: &[usize]) -> Result<Vec<i64>> {
        let dev = self.m.device;
        let index = Tensor::f_from_slice(&rows.iter().map(|&s| s as i64).collect::<Vec<_>>())?.f_to_device(dev)?;
        let logits = self.m.soft_cap(crate::ops::linear(&self.last_h.f_index_select(0, &index)?, &self.head, None)?.f_to_kind(Kind::Float)?)?;
        let u: Vec<f64> = rows
            .iter()
            .map(|&s| {
                let slot = self.slots[s].as_ref().expect("a drawing slot holds a sequence");
                uniform(self.seed, slot.seq as u64, slot.drawn as u64)
            })
            .collect();
        let u = Tensor::f_from_slice(&u)?.f_to_device(dev)?;
        let mut next = sample(&logits, self.opts.decoding, &u)?;
        if let Some(a) = &self.allowed {
            next = a.f_index_select(0, &next)?;
        }
        let mut tokens = vec![0i64; rows.len()];
        next.f_to_device(Device::Cpu)?.f_copy_data(&mut tokens, rows.len())?;
        Ok(tokens)
    }

    /// Starts the next sequences in the free slots `free` (as many as there is work for): copies
    /// each one's prompt keys and values into its cache row and its prompt's last hidden state
    /// into `last_h`. Returns the slots started.
    fn start_sequences(&mut self, free: &[usize]) -> Result<Vec<usize>> {
        let count = free.len().min(self.range.end - self.next);
        if count == 0 {
            return Ok(Vec::new());
        }
        let started: Vec<usize> = free[..count].to_vec();
        // (group, slot, row) for each new sequence.
        let mut by_group: Vec<(usize, Vec<i64>, Vec<i64>)> = Vec::new();
        for &s in &started {
            let seq = self.next;
            self.next += 1;
            let p = seq / self.n;
            if !self.prompt_rows.contains_key(&p) {
                self.prefill_from(p, count.div_ceil(self.n).max(self.slots.len().div_ceil(self.n)))?;
            }
            let (g, row) = self.prompt_rows[&p];
            match by_group.iter_mut().find(|(gg, _, _)| *gg == g) {
                Some((_, slots, rows)) => {
                    slots.push(s as i64);
                    rows.push(row);
                }
                None => by_group.push((g, vec![s as i64], vec![row])),
            }
            self.slots[s] = Some(Slot { seq, len: self.prompts[p].len() as i64, drawn: 0 });
        }
        let dev = self.m.device;
        for (g, slots, rows) in by_group {
            let group = self.groups[g].as_mut().expect("a started prompt's group is alive");
            let slot_index = Tensor::f_from_slice(&slots)?.f_to_device(dev)?;
            let row_index = Tensor::f_from_slice(&rows)?.f_to_device(dev)?;
            for (cache, src) in self.cache.keys.iter_mut().zip(&group.keys).chain(self.cache.values.iter_mut().zip(&group.values)) {
                let _ = cache.f_narrow(2, 0, group.len)?.f_index_copy_(0, &slot_index, &src.f_index_select(0, &row_index)?)?;
            }
            let _ = self.last_h.f_index_copy_(0, &slot_index, &group.last.f_index_select(0, &row_index)?)?;
            group.unstarted -= slots.len();
            if group.unstarted == 0 {
                self.groups[g] = None;
                self.prompt_rows.retain(|_, (gg, _)| *gg != g);
            }
        }
        Ok(started)
    }

    /// One forward over prompts `first..`, as many as `want` within `PREFILL_TOKENS` (at least
    /// one): right-padded with plain causal attention, exact for every real position.
    fn prefill_from(&mut self, first: usize, want: usize) -> Result<()> {
        let mut end = first + 1;
        let mut longest = self.prompts[first].len();
        let last = (self.range.end - 1) / self.n; // the last prompt with a sequence in range
        while end <= last && end - first < want && longest.max(self.prompts[end].len()) * (end - first + 1) <= PREFILL_TOKENS {
            longest = longest.max(self.prompts[end].len());
            end += 1;
        }
        let (g, l) = ((end - first) as i64, longest as i64);
        let dev = self.m.device;
        let mut ids = vec![self.m.tokenizer.pad_id; (g * l) as usize];
        for (i, p) in self.prompts[first..end].iter().enumerate() {
            ids[i * longest..i * longest + p.len()].copy_from_slice(p);
        }
        let ids = Tensor::f_from_slice(&ids)?.f_view([g, l])?.f_to_device(dev)?;
        let positions = Tensor::f_arange(l, (Kind::Int64, dev))?.f_unsqueeze(0)?.f_expand([g, l], false)?;
        let cfg = &self.m.cfg;
        let mut cache = KvCache::new(cfg.num_layers, g, cfg.num_kv_heads as i64, l, cfg.head_dim as i64, self.m.kind, dev)?;
        let hidden = self.m.hidden(&ids, &positions, None, Some(&mut cache))?;
        let last: Vec<i64> = self.prompts[first..end].iter().map(|p| p.len() as i64 - 1).collect();
        let h = hidden.size()[2];
        let idx = Tensor::f_from_slice(&last)?.f_to_device(dev)?.f_view([-1, 1, 1])?.f_expand([-1, 1, h], false)?;
        let last = hidden.f_gather(1, &idx, false)?.f_squeeze_dim(1)?;
        let id = self.groups.len();
        for (row, p) in (first..end).enumerate() {
            self.prompt_rows.insert(p, (id, row as i64));
        }
        // The group's sequences in range: all n of each prompt but maybe the first and the last.
        let unstarted = (first * self.n).max(self.range.start)..(end * self.n).min(self.range.end);
        self.groups.push(Some(PromptGroup { keys: cache.keys, values: cache.values, last, len: l, unstarted: unstarted.len() }));
        Ok(())
    }

    /// Feeds each `(slot, token)` at the slot's next position in one forward over every slot (an
    /// empty slot feeds padding at position 0 and is not read). Returns the slots fed.
    fn step(&mut self, feed: &[(usize, i64)]) -> Result<Vec<usize>> {
        let rows = self.slots.len();
        let mut ids = vec![self.m.tokenizer.pad_id; rows];
        let mut pos = vec![0i64; rows];
        for &(s, tok) in feed {
            ids[s] = tok;
            pos[s] = self.slots[s].as_ref().expect("a fed slot holds a sequence").len;
        }
        let dev = self.m.device;
        let reach = pos.iter().max().copied().unwrap_or(0) + 1;
        let ids = Tensor::f_from_slice(&ids)?.f_view([rows as i64, 1])?.f_to_device(dev)?;
        let pos_t = Tensor::f_from_slice(&pos)?.f_to_device(dev)?;
        // Key j is visible to a slot's new token when j <= its position (the slot's own tokens).
        let keys = Tensor::f_arange(reach, (Kind::Int64, dev))?.f_unsqueeze(0)?;
        let mask = keys.f_le_tensor(&pos_t.f_unsqueeze(1)?)?.f_view([rows as i64, 1, 1, reach])?;
        self.cache.row_positions = Some(pos_t.shallow_clone());
        self.cache.len = reach;
        let h = self.m.hidden(&ids, &pos_t.f_unsqueeze(1)?, Some(&mask), Some(&mut self.cache))?;
        self.cache.row_positions = None;
        self.last_h = h.f_select(1, 0)?;
        for &(s, _) in feed {
            self.slots[s].as_mut().expect("a fed slot holds a sequence").len += 1;
        }
        Ok(feed.iter().map(|&(s, _)| s).collect())
    }

    /// Keeps only the cache rows of the slots in `feed` (no work is left to start), renumbering
    /// them; returns `feed` with the new slot numbers.
    fn compact(&mut self, feed: Vec<(usize, i64)>) -> Result<Vec<(usize, i64)>> {
        let keep: Vec<i64> = feed.iter().map(|&(s, _)| s as i64).collect();
        let index = Tensor::f_from_slice(&keep)?.f_to_device(self.m.device)?;
        self.cache.select_rows(&index)?;
        self.last_h = self.last_h.f_index_select(0, &index)?;
        let mut slots: Vec<Option<Slot>> = Vec::with_capacity(feed.len());
        for &(s, _) in &feed {
            slots.push(self.slots[s].take());
        }
        self.slots = slots;
        Ok(feed.iter().enumerate().map(|(i, &(_, tok))| (i, tok)).collect())
    }
}
