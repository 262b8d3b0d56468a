//! Batching for training: pairs tokenised once, grouped by length (so padding is small), cut by a
//! row count or a token budget, batch order shuffled per epoch with a seed, and a background
//! thread (crossbeam-channel) that prepares the next batches while the trainer runs.
use super::{Pair, Rng};
use crate::model::tokenizer::Tokenizer;
use anyhow::Result;
use crossbeam_channel::{bounded, Receiver};
use std::rc::Rc;

/// Token ids of one pair: the prompt and both responses.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPair {
    pub prompt: Vec<i64>,
    pub responses: [Vec<i64>; 2],
}

impl TokenizedPair {
    /// Tokens of the longer sequence, prompt included.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.responses[0].len().max(self.responses[1].len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tokenises every pair once. Prompts keep their last `max_prompt` tokens (the end of a prompt is
/// what the response answers); responses are cut to fit `max_len` in total (TRL's defaults).
pub fn tokenize(pairs: &[Rc<Pair>], tok: &Tokenizer, max_prompt: usize, max_len: usize) -> Result<Vec<TokenizedPair>> {
    pairs
        .iter()
        .map(|p| {
            let mut prompt = tok.encode(&p.prompt, true)?;
            if prompt.len() > max_prompt {
                prompt.drain(..prompt.len() - max_prompt);
            }
            let room = max_len.saturating_sub(prompt.len()).max(1);
            let cut = |text: &str| -> Result<Vec<i64>> {
                let mut ids = tok.encode(text, false)?;
                ids.truncate(room);
                Ok(ids)
            };
            let responses = [cut(&p.responses[0])?, cut(&p.responses[1])?];
            Ok(TokenizedPair { prompt, responses })
        })
        .collect()
}

/// How batches are cut.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Rows (pairs) per batch.
    pub batch_size: usize,
    /// Optional cap on padded tokens per batch (items × `rows_per_item` × longest sequence).
    pub token_budget: Option<usize>,
    /// Sequences each item puts in the batch: 2 for a pair (both responses), 1 for a sequence.
    pub rows_per_item: usize,
    /// Group pairs of similar length into the same batch.
    pub group_by_length: bool,
    /// Seed of the per-epoch shuffle (None: data order).
    pub seed: Option<u64>,
}

/// The batches of one epoch, as indices into `lengths`: every index exactly once.
pub fn plan(lengths: &[usize], opts: &BatchOptions, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if let Some(seed) = opts.seed {
        Rng::new(seed.wrapping_add(epoch.wrapping_mul(0x1000_0001))).shuffle(&mut order);
    }
    if opts.group_by_length {
        // Stable sort of the shuffled order: equal lengths stay in shuffled order.
        order.sort_by_key(|&i| lengths[i]);
    }
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let l = lengths[i].max(longest);
        let over_budget = opts.token_budget.is_some_and(|b| !current.is_empty() && (current.len() + 1) * opts.rows_per_item.max(1) * l > b);
        if current.len() == opts.batch_size.max(1) || over_budget {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(lengths[i]);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    if opts.group_by_length {
        if let Some(seed) = opts.seed {
            // Shuffle which length group comes when, keeping each batch's rows similar in length.
            Rng::new(seed.wrapping_add(epoch).wrapping_add(77)).shuffle(&mut batches);
        }
    }
    batches
}

/// Most padded tokens and rows in one batch of `by_length`.
const EVAL_TOKENS: usize = 4096;
const EVAL_ROWS: usize = 512;

/// Batches for passes without gradients over many sequences (log-probs, scores, features, the
/// reference table): indices grouped by length, each batch at most `EVAL_ROWS` rows and about
/// `EVAL_TOKENS` padded tokens, so the cost follows the tokens rather than the longest sequence.
pub fn by_length(lengths: &[usize], rows_per_item: usize) -> Vec<Vec<usize>> {
    let rows_per_item = rows_per_item.max(1);
    let opts = BatchOptions { batch_size: EVAL_ROWS / rows_per_item, token_budget: Some(EVAL_TOKENS), rows_per_item, group_by_length: true, seed: None };
    plan(lengths, &opts, 0)
}

/// The rows of a batch of pairs for a pass over both responses: prompts twice, then the first
/// responses followed by the second ones (row `k` and row `batch.len() + k` belong to pair
/// `batch[k]`).
pub fn both_responses<'a>(pairs: &'a [TokenizedPair], batch: &[usize]) -> (Vec<&'a [i64]>, Vec<&'a [i64]>) {
    let (prompts, first, second) = pair_parts(pairs, batch);
    (prompts.iter().chain(&prompts).copied().collect(), first.into_iter().chain(second).collect())
}

/// A batch of pairs as its prompts, first responses and second responses (`CausalLM::pack_pairs`).
pub fn pair_parts<'a>(pairs: &'a [TokenizedPair], batch: &[usize]) -> (Vec<&'a [i64]>, Vec<&'a [i64]>, Vec<&'a [i64]>) {
    let part = |f: &dyn Fn(&'a TokenizedPair) -> &'a [i64]| batch.iter().map(|&i| f(&pairs[i])).collect::<Vec<_>>();
    (part(&|p| &p.prompt), part(&|p| &p.responses[0]), part(&|p| &p.responses[1]))
}

/// Runs `build` on each planned batch in a background thread, at most `ahead` batches ahead of
/// the consumer. Dropping the receiver stops the thread at its next send.
pub fn prefetch<T: Send + 'static>(batches: Vec<Vec<usize>>, ahead: usize, build: impl Fn(&[usize]) -> T + Send + 'static) -> Receiver<T> {
    let (tx, rx) = bounded(ahead.max(1));
    std::thread::spawn(move || {
        for b in batches {
            if tx.send(build(&b)).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_exactly_once_per_epoch_through_the_prefetcher() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 50 + 1).collect();
        for opts in [
            BatchOptions { batch_size: 8, token_budget: None, rows_per_item: 2, group_by_length: false, seed: None },
            BatchOptions { batch_size: 8, token_budget: None, rows_per_item: 2, group_by_length: true, seed: Some(3) },
            BatchOptions { batch_size: 64, token_budget: Some(400), rows_per_item: 2, group_by_length: true, seed: Some(4) },
        ] {
            for epoch in 0..3 {
                let plan = plan(&lengths, &opts, epoch);
                let rx = prefetch(plan.clone(), 2, |b: &[usize]| b.to_vec());
                let mut seen: Vec<usize> = rx.iter().flatten().collect();
                seen.sort();
                assert_eq!(seen, (0..103).collect::<Vec<_>>(), "{opts:?} epoch {epoch}");
                for b in &plan {
                    assert!(b.len() <= opts.batch_size);
                    if let Some(budget) = opts.token_budget {
                        let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
                        assert!(b.len() == 1 || b.len() * longest * 2 <= budget, "batch of {} x {longest} over budget {budget}", b.len());
                    }
                }
            }
        }
        // A seeded plan is reproducible and differs between epochs.
        let o = BatchOptions { batch_size: 8, token_budget: None, rows_per_item: 2, group_by_length: false, seed: Some(9) };
        assert_eq!(plan(&lengths, &o, 1), plan(&lengths, &o, 1));
        assert_ne!(plan(&lengths, &o, 1), plan(&lengths, &o, 2));
    }

    #[test]
    fn grouping_by_length_reduces_padding() {
        let lengths: Vec<usize> = (0..256).map(|i| (i * 97) % 200 + 1).collect();
        let padded = |g: bool| -> usize {
            let o = BatchOptions { batch_size: 16, token_budget: None, rows_per_item: 2, group_by_length: g, seed: Some(1) };
            plan(&lengths, &o, 0).iter().map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap()).sum()
        };
        let real: usize = lengths.iter().sum();
        // Grouped batches pad to within a few percent of the real token count; random ones do not.
        assert!((padded(true) as f64) < 1.1 * real as f64, "{} vs {real}", padded(true));
        assert!((padded(false) as f64) > 1.5 * real as f64, "{} vs {real}", padded(false));
    }

    #[test]
    fn evaluation_batches_follow_the_tokens() {
        // 3,000 sequences of 1..=400 tokens: every index once, each batch within the budget
        // (4096 padded tokens, or a single longer sequence) and 512 rows, and the padded total
        // within 5% of the real token count, so cost grows with the tokens, not the longest row.
        let lengths: Vec<usize> = (0..3000).map(|i| (i * 7919) % 400 + 1).collect();
        for rows_per_item in [1, 2] {
            let batches = by_length(&lengths, rows_per_item);
            let mut seen = vec![0; lengths.len()];
            let mut padded = 0;
            for b in &batches {
                let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
                assert!(b.len() == 1 || b.len() * rows_per_item * longest <= EVAL_TOKENS, "{} x {longest}", b.len());
                assert!(b.len() * rows_per_item <= EVAL_ROWS);
                padded += b.len() * longest;
                b.iter().for_each(|&i| seen[i] += 1);
            }
            assert!(seen.iter().all(|&c| c == 1));
            let real: usize = lengths.iter().sum();
            assert!((padded as f64) < 1.05 * real as f64, "{padded} vs {real}");
        }
    }
}
