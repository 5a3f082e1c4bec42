//! Log-probabilities of answer tokens, for both kinds of sampler. An autoregressive
//! token's is read from the pass that sampled it; a diffusion token's from the pass that
//! committed it ("at commit": the distribution the model had then, with the rest of the
//! block still partly masked, not the left-to-right probability an autoregressive model
//! would give).

use serde::Serialize;

/// The most alternatives `top_logprobs` may ask for (OpenAI's chat limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A generated token's log-probability under the model (temperature 1, no filtering:
/// what the model thinks, not what the sampler was allowed to pick), with the most
/// likely alternatives, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// `token`'s log-probability under softmax(`logits`) and the `top` likeliest tokens.
pub fn logprob_of(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max
        + logits
            .iter()
            .map(|v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln() as f32;
    let mut alternatives = Vec::new();
    if top > 0 && !logits.is_empty() {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(order.len());
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
        order.truncate(k);
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        alternatives = order
            .into_iter()
            .map(|t| (t, logits[t as usize] - log_z))
            .collect();
    }
    TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| l - log_z),
        top: alternatives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let logits = [1.0f32, 3.0, 2.0];
        let lp = logprob_of(&logits, 2, 2);
        let total: f32 = logits.iter().map(|&l| (l - 3.0f32).exp()).sum();
        assert!((lp.logprob - ((2.0f32 - 3.0).exp() / total).ln()).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(lp.top[0].1 > lp.top[1].1);
    }
}
