//! APD's verifier mode (Israel et al. 2025): the diffusion model drafts the next
//! `max_lookahead` positions of the block left to right in one pass, a small
//! autoregressive model with the same tokenizer scores that draft in one causal pass,
//! and the longest prefix on which the draft agrees with a sample of the product mixture
//! `p_dLLM^mix * p_AR^(1 - mix)` is committed, plus the mixture's own token at the first
//! disagreement. Draft and target use the same Gumbel noise, so at temperature 0 both
//! are argmaxes.

use candle_core::{DType, Tensor, D};

use super::logprobs::logprob_of;
use super::{Answer, CommitRule, DecodeError, DiffusionSequence};
use crate::models::causal::CausalModel;
use crate::models::{Batch, DiffusionLm};

/// Decodes one sequence to the end with the verifier (no KV cache on either model: the
/// autoregressive model re-reads the sequence each step).
pub fn generate(
    model: &dyn DiffusionLm,
    verifier: &CausalModel,
    seq: &mut DiffusionSequence,
    pad_id: u32,
) -> Result<Answer, DecodeError> {
    let CommitRule::Verifier { mix, max_lookahead } = seq.params().commit else {
        return Err(DecodeError::InvalidParam {
            param: "apd.mode",
            message: "verifier::generate needs apd.mode verifier".into(),
        });
    };
    let temperature = seq.params().temperature;
    let vocab = model.vocab_size().min(verifier.vocab_size());
    while !seq.is_finished() {
        let block = seq.block_range();
        let Some(first) = seq.first_masked() else {
            break;
        };
        let look = max_lookahead.min(block.end - first);
        let tokens = seq.tokens().to_vec();
        let batch = Batch::left_padded(&[&tokens], pad_id, model.device(), model.dtype())?;
        let d_logp = log_softmax(
            &model
                .forward(&batch, Some(first..first + look))?
                .get(0)?
                .to_dtype(DType::F32)?
                .narrow(1, 0, vocab)?,
        )?;
        let noise = if temperature > 0.0 {
            let g: Vec<f32> = (0..look * vocab)
                .map(|_| super::confidence::gumbel(seq.rng()) * temperature)
                .collect();
            Tensor::from_vec(g, (look, vocab), d_logp.device())?
        } else {
            d_logp.zeros_like()?
        };
        let draft = (&d_logp + &noise)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        // Position first - 1 + k of the causal pass predicts position first + k.
        let mut ar_input = tokens[..first].to_vec();
        ar_input.extend_from_slice(&draft[..look - 1]);
        let ar_logp = log_softmax(
            &verifier
                .forward_full(&[&ar_input])?
                .get(0)?
                .narrow(0, first - 1, look)?
                .to_dtype(DType::F32)?
                .narrow(1, 0, vocab)?
                .to_device(d_logp.device())?,
        )?;
        let mixed = ((&d_logp * f64::from(mix))? + (&ar_logp * f64::from(1.0 - mix))?)?;
        let target = (&mixed + &noise)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let d_rows = d_logp.to_vec2::<f32>()?;
        let mut commits = Vec::with_capacity(look);
        let mut logprobs = Vec::new();
        for k in 0..look {
            let token = target[k];
            commits.push((token, d_rows[k][token as usize].exp()));
            if let Some(top) = seq.wants_logprobs() {
                // The diffusion model's view of the committed token, as in the other
                // commit rules (the mixture only decides which token that is).
                logprobs.push(logprob_of(&d_rows[k], token, top));
            }
            if token != draft[k] {
                break;
            }
        }
        seq.commit_prefix(&commits, logprobs);
    }
    Ok(seq.answer())
}

fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(x, D::Minus1)
}
