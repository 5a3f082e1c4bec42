//! The next token of an autoregressive answer from one row of logits, in the order
//! transformers' `generate` and vLLM apply the steps: the repetition penalty over the
//! ids seen so far, then temperature, top-k and top-p, then one seeded draw (argmax at
//! temperature 0). `scripts/parity/reference.py sampler-fixture` records what
//! transformers' own logits processors make of the same inputs.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::autoregressive::ArParams;

/// HF's `RepetitionPenaltyLogitsProcessor`: each id in `seen` (distinct) has its logit
/// divided by `penalty` when positive and multiplied when negative, so above 1 it is
/// always less likely.
pub fn penalize(logits: &mut [f32], seen: &[u32], penalty: f32) {
    for &id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// The tokens sampling may pick at `params.temperature > 0`, most likely first, with
/// their probabilities (summing to 1): softmax(logits / T) restricted to the `top_k`
/// best, then to the smallest prefix whose mass reaches `top_p`, renormalised.
pub fn distribution(logits: &[f32], params: &ArParams) -> Vec<(u32, f64)> {
    let inv_t = 1.0 / params.temperature;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if params.top_k > 0 {
        order.truncate(params.top_k);
    }
    let Some(&first) = order.first() else {
        return Vec::new();
    };
    let best = logits[first as usize];
    let mut weights: Vec<f64> = order
        .iter()
        .map(|&t| f64::from((logits[t as usize] - best) * inv_t).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = weights
            .iter()
            .position(|w| {
                mass += w / total;
                mass >= f64::from(params.top_p)
            })
            .map_or(weights.len(), |i| i + 1);
        weights.truncate(keep);
    }
    let total: f64 = weights.iter().sum();
    order
        .into_iter()
        .zip(weights)
        .map(|(t, w)| (t, w / total))
        .collect()
}

/// Picks the next token; `seen` is the distinct ids of the prompt and the answer so
/// far (read only when the repetition penalty is on).
pub fn sample(logits: &[f32], params: &ArParams, seen: &[u32], rng: &mut ChaCha8Rng) -> u32 {
    let penalized;
    let logits = match params.repetition_penalty {
        Some(p) => {
            let mut copy = logits.to_vec();
            penalize(&mut copy, seen, p);
            penalized = copy;
            &penalized[..]
        }
        None => logits,
    };
    if params.temperature == 0.0 {
        return argmax(logits);
    }
    let support = distribution(logits, params);
    let mut draw = rng.random::<f64>();
    for &(token, p) in &support {
        draw -= p;
        if draw <= 0.0 {
            return token;
        }
    }
    // Rounding left a sliver of mass: the least likely kept token takes it.
    support.last().map_or(0, |&(t, _)| t)
}

/// The first of the largest logits, as `torch.argmax` picks among ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> ArParams {
        ArParams {
            temperature,
            top_k,
            top_p,
            ..ArParams::greedy(4)
        }
    }

    #[test]
    fn greedy_is_argmax_and_top_k_one_is_greedy_at_any_temperature() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample(&logits, &params(0.0, 0, 1.0), &[], &mut rng), 1);
        for _ in 0..50 {
            assert_eq!(sample(&logits, &params(1.5, 1, 1.0), &[], &mut rng), 1);
        }
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [3.0, 2.9, 2.8, -5.0, -6.0];
        let ids = |p: &ArParams| {
            distribution(&logits, p)
                .into_iter()
                .map(|(t, _)| t)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&params(1.0, 2, 1.0)), vec![0, 1]);
        // The first three hold almost all the mass: top_p 0.5 keeps the first two.
        assert_eq!(ids(&params(1.0, 0, 0.5)), vec![0, 1]);
        assert_eq!(ids(&params(1.0, 0, 1.0)).len(), 5);
        let total: f64 = distribution(&logits, &params(0.7, 3, 0.9))
            .iter()
            .map(|(_, p)| p)
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
        // Draws stay inside the support.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            assert!(sample(&logits, &params(1.0, 2, 1.0), &[], &mut rng) < 2);
        }
    }

    #[test]
    fn seeded_sampling_repeats() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| sample(&logits, &params(1.0, 0, 1.0), &[], &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn the_penalty_turns_a_greedy_repeat_into_the_runner_up() {
        let logits = [0.5f32, 2.0, 1.9, -1.0];
        let p = ArParams {
            repetition_penalty: Some(1.2),
            ..ArParams::greedy(4)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample(&logits, &p, &[], &mut rng), 1);
        assert_eq!(sample(&logits, &p, &[1], &mut rng), 2, "2.0/1.2 < 1.9");
        let mut l = logits;
        penalize(&mut l, &[0, 3], 2.0);
        assert_eq!(l, [0.25, 2.0, 1.9, -2.0], "negative logits are multiplied");
    }
}
