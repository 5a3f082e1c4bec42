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
    while !seq.is_finished() {
        step_batch(model, verifier, &mut [&mut *seq], pad_id)?;
    }
    Ok(seq.answer())
}

/// One row of a verifier step: which sequence, where its draft starts, how long it is.
struct Draft {
    index: usize,
    first: usize,
    look: usize,
    mix: f32,
}

/// One verifier step for every unfinished sequence of `seqs` (each decoded with
/// `apd.mode verifier`): one diffusion pass drafts every row's next positions, one
/// causal pass scores every draft, and each row commits its accepted prefix. A batch of
/// one is exactly [`generate`]'s step, so served answers equal `dfastllm eval`'s.
pub fn step_batch(
    model: &dyn DiffusionLm,
    verifier: &CausalModel,
    seqs: &mut [&mut DiffusionSequence],
    pad_id: u32,
) -> Result<(), DecodeError> {
    let mut drafts = Vec::new();
    for (index, seq) in seqs.iter().enumerate() {
        if seq.is_finished() {
            continue;
        }
        let CommitRule::Verifier { mix, max_lookahead } = seq.params().commit else {
            return Err(DecodeError::InvalidParam {
                param: "apd.mode",
                message: "the verifier step needs apd.mode verifier".into(),
            });
        };
        // Without MoR (refused beside the verifier) an unfinished block has a mask, and
        // the prompt is never empty, so `first` is at least 1.
        let first = seq
            .first_masked()
            .filter(|&f| f > 0)
            .ok_or_else(|| DecodeError::Internal("a verifier step found no mask".into()))?;
        let look = max_lookahead.min(seq.block_range().end - first);
        drafts.push(Draft {
            index,
            first,
            look,
            mix,
        });
    }
    if drafts.is_empty() {
        return Ok(());
    }
    let vocab = model.vocab_size().min(verifier.vocab_size());
    let rows: Vec<&[u32]> = drafts.iter().map(|d| seqs[d.index].tokens()).collect();
    let batch = Batch::left_padded(&rows, pad_id, model.device(), model.dtype())?;
    let columns: Vec<usize> = drafts
        .iter()
        .zip(&batch.pad_lengths)
        .map(|(d, pad)| d.first + pad)
        .collect();
    let start = columns.iter().copied().min().unwrap_or(0);
    let end = drafts
        .iter()
        .zip(&columns)
        .map(|(d, c)| c + d.look)
        .max()
        .unwrap_or(start);
    let d_logits = model.forward(&batch, Some(start..end))?;

    let mut scored = Vec::with_capacity(drafts.len());
    let mut ar_inputs = Vec::with_capacity(drafts.len());
    for (row, (d, &column)) in drafts.iter().zip(&columns).enumerate() {
        let d_logp = log_softmax(
            &d_logits
                .get(row)?
                .narrow(0, column - start, d.look)?
                .to_dtype(DType::F32)?
                .narrow(1, 0, vocab)?,
        )?;
        let seq = &mut *seqs[d.index];
        let temperature = seq.params().temperature;
        let noise = if temperature > 0.0 {
            let g: Vec<f32> = (0..d.look * vocab)
                .map(|_| super::confidence::gumbel(seq.rng()) * temperature)
                .collect();
            Tensor::from_vec(g, (d.look, vocab), d_logp.device())?
        } else {
            d_logp.zeros_like()?
        };
        let draft = (&d_logp + &noise)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        // Position first - 1 + k of the causal pass predicts position first + k.
        let mut input = seq.tokens()[..d.first].to_vec();
        input.extend_from_slice(&draft[..d.look - 1]);
        ar_inputs.push(input);
        scored.push((d_logp, noise, draft));
    }
    // Every row ends with its draft, so its scores are the grid's last columns.
    let widest = drafts.iter().map(|d| d.look).max().unwrap_or(1);
    let ar_rows: Vec<&[u32]> = ar_inputs.iter().map(Vec::as_slice).collect();
    let ar_logits = verifier.forward_last(&ar_rows, widest)?;

    for (row, (d, (d_logp, noise, draft))) in drafts.iter().zip(scored).enumerate() {
        let ar_logp = log_softmax(
            &ar_logits
                .get(row)?
                .narrow(0, widest - d.look, d.look)?
                .to_dtype(DType::F32)?
                .narrow(1, 0, vocab)?
                .to_device(d_logp.device())?,
        )?;
        let mixed = ((&d_logp * f64::from(d.mix))? + (&ar_logp * f64::from(1.0 - d.mix))?)?;
        let target = (&mixed + &noise)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let d_rows = d_logp.to_vec2::<f32>()?;
        let seq = &mut *seqs[d.index];
        let mut commits = Vec::with_capacity(d.look);
        let mut logprobs = Vec::new();
        for k in 0..d.look {
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
    Ok(())
}

fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(x, D::Minus1)
}
