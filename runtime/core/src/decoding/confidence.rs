//! Proposals for the masked positions of a block: a token for each position and a
//! score that says how sure the model is, computed on the model's device so that only
//! two numbers per position cross to the host (the vocabulary never does).

use candle_core::{DType, Result, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Remasking;

/// A proposed token and its confidence score for one position (higher is surer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub token: u32,
    /// The remasking score that orders positions under the step schedule.
    pub confidence: f32,
    /// Probability of `token` under the model (APD and MoR thresholds compare this).
    pub probability: f32,
}

/// One proposal per row of `logits` (`[L, V]`).
///
/// With `temperature > 0` the token is drawn by Gumbel-max: `argmax(logits + T * g)`
/// with `g` standard Gumbel noise from `rng`, which samples softmax(logits / T) and is
/// what LLaDA's `add_gumbel_noise` computes. Scores use the un-tempered distribution,
/// as in LLaDA and Dream.
pub fn propose(
    logits: &Tensor,
    temperature: f32,
    top_p: f32,
    remasking: Remasking,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Proposal>> {
    let logits = logits.to_dtype(DType::F32)?;
    let (rows, vocab) = logits.dims2()?;
    let tokens = if temperature > 0.0 {
        let noise: Vec<f32> = (0..rows * vocab)
            .map(|_| gumbel(rng) * temperature)
            .collect();
        let noise = Tensor::from_vec(noise, (rows, vocab), logits.device())?;
        let candidates = if top_p < 1.0 {
            nucleus(&logits, top_p)?
        } else {
            logits.clone()
        };
        (&candidates + noise)?.argmax(D::Minus1)?
    } else {
        logits.argmax(D::Minus1)?
    };
    let probs = candle_nn::ops::softmax_last_dim(&logits)?;
    let probability = probs.gather(&tokens.unsqueeze(1)?, 1)?.squeeze(1)?;
    let scores = match remasking {
        Remasking::Random => None,
        Remasking::LowConfidence => Some(probability.clone()),
        Remasking::Entropy => Some((&probs * (&probs + 1e-10)?.log()?)?.sum(D::Minus1)?),
        Remasking::Margin => {
            // Zero exactly one entry (the argmax) so that ties at the top give margin 0.
            let top_index = probs.argmax_keepdim(D::Minus1)?;
            let columns = Tensor::arange(0u32, vocab as u32, probs.device())?.unsqueeze(0)?;
            let is_top = columns.broadcast_eq(&top_index)?;
            let rest = is_top.where_cond(&probs.zeros_like()?, &probs)?;
            Some((probs.max(D::Minus1)? - rest.max(D::Minus1)?)?)
        }
    };
    let tokens = tokens.to_vec1::<u32>()?;
    let probability = probability.to_vec1::<f32>()?;
    let confidence = match scores {
        Some(s) => s.to_vec1::<f32>()?,
        None => (0..rows).map(|_| rng.random::<f32>()).collect(),
    };
    Ok(tokens
        .into_iter()
        .zip(confidence)
        .zip(probability)
        .map(|((token, confidence), probability)| Proposal {
            token,
            confidence,
            probability,
        })
        .collect())
}

/// `logits` with every token outside each row's top-p nucleus set to -inf. The
/// nucleus is the most probable tokens whose cumulative probability first reaches
/// `top_p` (always at least the top token).
fn nucleus(logits: &Tensor, top_p: f32) -> Result<Tensor> {
    let probs = candle_nn::ops::softmax_last_dim(logits)?;
    let order = probs.arg_sort_last_dim(false)?;
    let sorted = probs.gather(&order, D::Minus1)?;
    let before = (sorted.cumsum(D::Minus1)? - &sorted)?;
    // Tokens whose preceding mass is still below top_p are in the nucleus.
    // Counted in f32: candle's affine on u32 cannot subtract.
    let kept = before
        .lt(f64::from(top_p))?
        .to_dtype(DType::F32)?
        .sum_keepdim(D::Minus1)?;
    let last = (kept - 1.0)?.to_dtype(DType::U32)?;
    let threshold = sorted.gather(&last, D::Minus1)?;
    let outside = probs.broadcast_lt(&threshold)?;
    let minus_inf = Tensor::full(f32::NEG_INFINITY, logits.shape(), logits.device())?;
    outside.where_cond(&minus_inf, logits)
}

/// A standard Gumbel sample, `-ln(-ln(u))` with `u` strictly inside (0, 1).
pub(crate) fn gumbel(rng: &mut ChaCha8Rng) -> f32 {
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    (-(-u.ln()).ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    fn logits(rows: &[[f32; 4]]) -> Tensor {
        Tensor::from_vec(rows.concat(), (rows.len(), 4), &Device::Cpu).unwrap()
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn greedy_low_confidence_is_argmax_and_its_probability() {
        let l = logits(&[[0.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]);
        let p = propose(&l, 0.0, 1.0, Remasking::LowConfidence, &mut rng()).unwrap();
        assert_eq!(p[0].token, 1);
        assert_eq!(p[1].token, 0);
        let expected = 2f32.exp() / (2f32.exp() + 3.0);
        assert!((p[0].confidence - expected).abs() < 1e-6);
        assert!(p[1].confidence > p[0].confidence);
    }

    #[test]
    fn entropy_scores_peaked_rows_higher() {
        let l = logits(&[[0.0, 0.0, 0.0, 0.0], [9.0, 0.0, 0.0, 0.0]]);
        let p = propose(&l, 0.0, 1.0, Remasking::Entropy, &mut rng()).unwrap();
        assert!(
            (p[0].confidence + 4f32.ln()).abs() < 1e-5,
            "uniform row has entropy ln 4"
        );
        assert!(p[1].confidence > p[0].confidence);
    }

    #[test]
    fn margin_is_top1_minus_top2() {
        let l = logits(&[[1.0f32.ln(), 3.0f32.ln(), 6.0f32.ln(), 0.0]]);
        let p = propose(&l, 0.0, 1.0, Remasking::Margin, &mut rng()).unwrap();
        assert_eq!(p[0].token, 2);
        let total = 1.0 + 3.0 + 6.0 + 1.0;
        assert!((p[0].confidence - (6.0 - 3.0) / total).abs() < 1e-6);
        let tied = propose(
            &logits(&[[1.0, 1.0, 0.0, 0.0]]),
            0.0,
            1.0,
            Remasking::Margin,
            &mut rng(),
        )
        .unwrap();
        assert!(
            tied[0].confidence.abs() < 1e-7,
            "a tie at the top has no margin"
        );
    }

    #[test]
    fn sampling_is_reproducible_and_follows_the_distribution() {
        let l = logits(&[[0.0, 1.0, 2.0, 3.0]; 8]);
        let a = propose(&l, 1.0, 1.0, Remasking::Random, &mut rng()).unwrap();
        let b = propose(&l, 1.0, 1.0, Remasking::Random, &mut rng()).unwrap();
        assert_eq!(a, b, "same seed, same proposals");

        // 4000 draws of softmax([0,1,2,3]): token 3 has p = 0.644, token 0 has p = 0.032.
        let many = logits(&[[0.0, 1.0, 2.0, 3.0]; 4000]);
        let draws = propose(&many, 1.0, 1.0, Remasking::LowConfidence, &mut rng()).unwrap();
        let share = |t: u32| draws.iter().filter(|p| p.token == t).count() as f64 / 4000.0;
        assert!(
            (share(3) - 0.644).abs() < 0.03,
            "token 3 share {}",
            share(3)
        );
        assert!(
            (share(0) - 0.032).abs() < 0.015,
            "token 0 share {}",
            share(0)
        );
    }

    #[test]
    fn top_p_samples_only_from_the_nucleus() {
        // softmax([0,1,2,3]) = [0.032, 0.087, 0.237, 0.644]: top_p 0.8 keeps tokens 3 and 2.
        let many = logits(&[[0.0, 1.0, 2.0, 3.0]; 2000]);
        let draws = propose(&many, 1.0, 0.8, Remasking::LowConfidence, &mut rng()).unwrap();
        assert!(
            draws.iter().all(|p| p.token >= 2),
            "only the nucleus is sampled"
        );
        assert!(draws.iter().any(|p| p.token == 2) && draws.iter().any(|p| p.token == 3));
        let tight = propose(&many, 1.0, 0.5, Remasking::LowConfidence, &mut rng()).unwrap();
        assert!(
            tight.iter().all(|p| p.token == 3),
            "the top token alone reaches 0.5"
        );
    }

    #[test]
    fn random_scores_are_uniform_in_unit_interval() {
        let l = logits(&[[0.0; 4]; 64]);
        let p = propose(&l, 0.0, 1.0, Remasking::Random, &mut rng()).unwrap();
        assert!(p.iter().all(|p| (0.0..1.0).contains(&p.confidence)));
        assert!(p.windows(2).any(|w| w[0].confidence != w[1].confidence));
    }
}
