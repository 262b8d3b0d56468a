//! The sampler (`model::sampler`): top-k/top-p against a full-sort reference written here, the
//! per-sequence random stream, the same samples whatever the slot count, and continuous batching
//! against decoding without a cache. The distribution over a closed response space is checked by
//! the chi-square test in tests/exact.rs.
use dualign::model::sampler::{sample, uniform};
use dualign::model::{CausalLM, Decoding, LoadOptions, SampleOptions};
use tch::{Device, Kind, Tensor};

fn cpu_f32() -> LoadOptions {
    LoadOptions { device: Device::Cpu, kind: Kind::Float, seed: 0 }
}

/// The textbook definition (Holtzman et al. 2020, as HF's `TopKLogitsWarper` then
/// `TopPLogitsWarper` apply it): sort the whole vocabulary by probability, keep the `top_k` most
/// likely, renormalise, keep each token while the mass before it is below `top_p`, renormalise,
/// and take the token where the cumulative mass first exceeds `u`. In f64 over a full sort.
fn reference_draw(logits: &[f32], temperature: f64, top_k: usize, top_p: f64, u: f64) -> usize {
    let m = logits.iter().map(|&l| l as f64 / temperature).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 / temperature - m).exp()).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Without a filter the sampler walks the vocabulary in id order (no sort needed); any fixed
    // order gives the same distribution, but the token a given u picks depends on it.
    if top_p < 1.0 || top_k != 0 {
        order.sort_by(|&a, &b| e[b].partial_cmp(&e[a]).unwrap());
    }
    let k = if top_k == 0 { logits.len() } else { top_k.min(logits.len()) };
    // Top-p on the top-k set's renormalised distribution, as HF's warpers apply them in turn.
    let zk: f64 = order[..k].iter().map(|&i| e[i]).sum();
    let mut kept = Vec::new();
    let mut before = 0.0;
    for &i in &order[..k] {
        if before >= top_p {
            break;
        }
        kept.push(i);
        before += e[i] / zk;
    }
    let mass: f64 = kept.iter().map(|&i| e[i]).sum();
    let mut cum = 0.0;
    for &i in &kept {
        cum += e[i];
        if cum > u * mass {
            return i;
        }
    }
    *kept.last().unwrap()
}

#[test]
fn top_k_and_top_p_match_a_full_sort_reference() {
    // Random logits with a flat and a peaked scale (so the nucleus needs 64, 1024 or all tokens),
    // 16 rows, 5000 tokens, 64 uniforms per setting: every draw must pick the reference's token.
    // A disagreement is possible only when u·mass lies within float rounding of a cumulative
    // boundary (probability about 1e-6 per draw here), or between tokens of equal logits.
    tch::manual_seed(3);
    let (rows, v) = (16i64, 5000i64);
    let (mut checked, mut ties) = (0, 0);
    for scale in [0.3, 3.0, 12.0] {
        let logits = Tensor::randn([rows, v], (Kind::Float, Device::Cpu)).f_mul_scalar(scale).unwrap();
        let mut flat = vec![0f32; (rows * v) as usize];
        logits.copy_data(&mut flat, (rows * v) as usize);
        for (temperature, top_k, top_p) in [(1.0, 0, 0.9), (0.7, 0, 0.5), (1.3, 0, 0.99), (1.0, 50, 1.0), (1.0, 200, 0.8), (1.0, 0, 1.0), (2.0, 3000, 0.95)] {
            let decoding = Decoding::new(temperature, top_k, top_p).unwrap();
            for draw in 0..64u64 {
                let u: Vec<f64> = (0..rows as u64).map(|r| uniform(draw, r, 0)).collect();
                let got = sample(&logits, decoding, &Tensor::from_slice(&u)).unwrap();
                for r in 0..rows as usize {
                    let want = reference_draw(&flat[r * v as usize..(r + 1) * v as usize], temperature, top_k as usize, top_p, u[r]);
                    let got = got.int64_value(&[r as i64]) as usize;
                    let row = &flat[r * v as usize..(r + 1) * v as usize];
                    // Tokens whose logits are equal, or equal to f32 rounding of the probability, are
                    // interchangeable: their order in a sort is arbitrary.
                    let near = (row[got] - row[want]).abs() as f64 <= 1e-6 * (row[want].abs() as f64).max(1.0);
                    assert!(got == want || near, "scale {scale} T {temperature} top_k {top_k} top_p {top_p} row {r} u {}: {got} against {want}", u[r]);
                    ties += (got != want) as usize;
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3 * 7 * 64 * 16);
    assert!(ties < 10, "{ties} draws fell on tied tokens");
}

#[test]
fn the_per_sequence_stream_is_uniform() {
    // 100,000 draws over (sequence, step) pairs in 100 equal bins: Pearson's chi-square has 99
    // degrees of freedom (mean 99, sd 14.1); the bound is mean + 5 sd. Mean 1/2 within 5 sd
    // (sd of the mean 0.289/sqrt(n)).
    let mut bins = [0f64; 100];
    let mut sum = 0.0;
    let n = 100_000u64;
    for i in 0..n {
        let u = uniform(42, i / 50, i % 50);
        assert!((0.0..1.0).contains(&u));
        bins[(u * 100.0) as usize] += 1.0;
        sum += u;
    }
    let e = n as f64 / 100.0;
    let chi2: f64 = bins.iter().map(|c| (c - e) * (c - e) / e).sum();
    assert!(chi2 < 99.0 + 5.0 * 198f64.sqrt(), "chi2 = {chi2}");
    let mean = sum / n as f64;
    assert!((mean - 0.5).abs() < 5.0 * 0.2887 / (n as f64).sqrt(), "mean = {mean}");
    // Neighbouring sequences and steps get unrelated draws.
    assert_ne!(uniform(42, 0, 0), uniform(42, 1, 0));
    assert_ne!(uniform(42, 0, 0), uniform(42, 0, 1));
    assert_ne!(uniform(42, 0, 0), uniform(43, 0, 0));
}

fn prompts(m: &CausalLM) -> Vec<Vec<i64>> {
    ["hello", "a much longer prompt than the first one", "x", "three words here", "the fifth prompt"].iter().map(|p| m.tokenizer.encode(p, true).unwrap()).collect()
}

#[test]
fn a_seed_gives_the_same_samples_whatever_the_slot_count() {
    // Continuous batching moves sequences between slots and batch sizes; the draw of a sequence
    // depends only on (seed, sequence, step), so every slot count gives the same responses.
    let m = CausalLM::load("builtin:tiny", &cpu_f32()).unwrap();
    let p = prompts(&m);
    let run = |slots: usize, seed: i64| {
        let opts = SampleOptions { n: 4, max_new_tokens: 12, decoding: Decoding::new(1.0, 0, 0.9).unwrap(), seed: Some(seed), slots, ..Default::default() };
        m.generate(&p, &opts, &|| false).unwrap()
    };
    let one = run(1, 5);
    assert_eq!(one.len(), 20, "n samples per prompt, prompt by prompt");
    for slots in [3, 7, 64] {
        assert_eq!(run(slots, 5), one, "slots {slots}");
    }
    assert_ne!(run(7, 6), one, "another seed, other samples");
    // The samples of one prompt are not copies of each other.
    let distinct: std::collections::HashSet<&Vec<i64>> = one[4..8].iter().collect();
    assert!(distinct.len() > 1, "{:?}", &one[4..8]);
}

#[test]
fn continuous_batching_decodes_like_a_full_forward_per_token() {
    // Greedy decoding through slots that are refilled mid-run (2 slots, 5 prompts of different
    // lengths, sequences of different lengths) against recomputing the whole sequence without a
    // cache at every step: the same tokens.
    let m = CausalLM::load("builtin:tiny", &cpu_f32()).unwrap();
    let p = prompts(&m);
    let max_new = 9;
    let got = m.generate(&p, &SampleOptions { decoding: Decoding::Greedy, max_new_tokens: max_new, slots: 2, ..Default::default() }, &|| false).unwrap();
    for (prompt, got) in p.iter().zip(&got) {
        let mut seq = prompt.clone();
        let mut want = Vec::new();
        for _ in 0..max_new {
            let ids = Tensor::from_slice(&seq).unsqueeze(0);
            let logits = m.logits(&ids).unwrap();
            let next = logits.get(0).get(seq.len() as i64 - 1).argmax(-1, false).int64_value(&[]);
            if m.tokenizer.eos_ids.contains(&next) {
                break;
            }
            want.push(next);
            seq.push(next);
        }
        assert_eq!(got, &want, "prompt {prompt:?}");
    }
}

#[test]
fn decoding_settings_out_of_range_are_errors_not_other_decodings() {
    // Temperature 0 is greedy (HF's do_sample=False); a negative temperature, top_k or an
    // out-of-range top_p used to fall silently into greedy or "no filter".
    assert_eq!(Decoding::new(0.0, 5, 0.5).unwrap(), Decoding::Greedy);
    assert_eq!(Decoding::new(0.7, 0, 1.0).unwrap(), Decoding::Sample { temperature: 0.7, top_k: None, top_p: 1.0 });
    for (t, k, p, what) in [(-1.0, 0, 1.0, "temperature -1"), (f64::NAN, 0, 1.0, "temperature NaN"), (1.0, -3, 1.0, "top_k -3"), (1.0, 0, 0.0, "top_p 0"), (1.0, 0, 1.5, "top_p 1.5")] {
        let e = Decoding::new(t, k, p).unwrap_err().to_string();
        assert!(e.starts_with(what), "{e}");
    }
    for d in [Decoding::Greedy, Decoding::new(0.7, 40, 0.9).unwrap()] {
        let (t, k, p) = d.settings();
        assert_eq!(Decoding::new(t, k, p).unwrap(), d, "settings() reads back");
    }
}
