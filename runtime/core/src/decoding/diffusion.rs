//! LLaDA's semi-autoregressive block decoding, one sequence at a time or batched.
//!
//! A [`DiffusionSequence`] is a state machine: it says which block it is decoding, and
//! [`DiffusionSequence::commit`] takes the model's proposals for that block and commits
//! this step's share of them. [`step_batch`] runs one forward pass for any number of
//! sequences (padded to one grid), which is what the server's scheduler will call
//! every iteration; [`generate`] loops it for a single sequence.

use std::ops::Range;

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::confidence::{propose, Proposal};
use super::logprobs::{logprob_of, TokenLogprob, MAX_TOP_LOGPROBS};
use super::{transfer_schedule, DecodeError, DiffusionParams, KvCacheMode};
use crate::models::{Batch, DiffusionLm, KvCache, SpecialTokens};

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was generated.
    Stop,
    /// The answer filled `max_tokens`.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// The decoded answer of a finished (or stopped) sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Answer tokens up to (not including) the first end-of-sequence token.
    pub token_ids: Vec<u32>,
    /// The whole answer region as decoded, masks included where nothing committed.
    pub raw_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub forward_passes: usize,
    pub steps: usize,
}

#[derive(Debug, Clone)]
pub struct DiffusionSequence {
    tokens: Vec<u32>,
    prompt_len: usize,
    params: DiffusionParams,
    mask_id: u32,
    eos_ids: Vec<u32>,
    block: usize,
    step_in_block: usize,
    schedule: Vec<usize>,
    rng: ChaCha8Rng,
    forward_passes: usize,
    steps: usize,
    finished: bool,
    /// Probability each answer position was committed with (MoR re-masks the low ones).
    confidence: Vec<f32>,
    /// MoR recursions spent on the current block, and whether the block's masks are
    /// re-masked positions (all recommitted by the next pass).
    recursions: usize,
    refining: bool,
    /// Keys/values from the current block's first pass (KV caching), `[1, ...]`.
    cache: Option<KvCache>,
    /// Alternatives per token when log-probabilities are wanted, and each answer
    /// position's, read from the pass that (last) committed it.
    logprobs: Option<usize>,
    token_logprobs: Vec<Option<TokenLogprob>>,
}

impl DiffusionSequence {
    /// Validates `params` and lays out `prompt` followed by `gen_length` masks.
    pub fn new(
        prompt: &[u32],
        params: DiffusionParams,
        special: &SpecialTokens,
        max_context: usize,
    ) -> Result<Self, DecodeError> {
        params.validate(prompt.len(), max_context)?;
        let seed = params.seed.unwrap_or_else(rand::random);
        let mut tokens = Vec::with_capacity(prompt.len() + params.gen_length);
        tokens.extend_from_slice(prompt);
        tokens.resize(prompt.len() + params.gen_length, special.mask_id);
        let mut seq = Self {
            tokens,
            prompt_len: prompt.len(),
            mask_id: special.mask_id,
            eos_ids: special.eos_ids.clone(),
            block: 0,
            step_in_block: 0,
            schedule: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            forward_passes: 0,
            steps: 0,
            finished: false,
            confidence: vec![f32::INFINITY; params.gen_length],
            recursions: 0,
            refining: false,
            cache: None,
            logprobs: None,
            token_logprobs: Vec::new(),
            params,
        };
        seq.start_block();
        Ok(seq)
    }

    /// Reports each committed token's log-probability at commit, with `top` alternatives
    /// (`None`: not wanted).
    pub fn with_logprobs(mut self, top: Option<usize>) -> Result<Self, DecodeError> {
        if let Some(k) = top.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(DecodeError::InvalidParam {
                param: "top_logprobs",
                message: format!("at most {MAX_TOP_LOGPROBS} alternatives per token, got {k}"),
            });
        }
        self.logprobs = top;
        self.token_logprobs = if top.is_some() {
            vec![None; self.params.gen_length]
        } else {
            Vec::new()
        };
        Ok(self)
    }

    /// Alternatives per token when log-probabilities are wanted.
    pub fn wants_logprobs(&self) -> Option<usize> {
        self.logprobs
    }

    /// Log-probabilities of the settled answer's tokens from the `from`-th on (empty
    /// when they were not asked for).
    pub fn settled_logprobs(&self, from: usize) -> Vec<TokenLogprob> {
        if self.logprobs.is_none() {
            return Vec::new();
        }
        let settled = self.settled_answer().len();
        self.token_logprobs[from.min(settled)..settled]
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Prompt and answer region as they stand (masks where nothing is committed yet).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn params(&self) -> &DiffusionParams {
        &self.params
    }

    /// Positions (indices into [`Self::tokens`]) of the block being decoded.
    pub fn block_range(&self) -> Range<usize> {
        let start = self.prompt_len + self.block * self.params.block_length;
        start..start + self.params.block_length
    }

    fn start_block(&mut self) {
        let masked = self.tokens[self.block_range()]
            .iter()
            .filter(|&&t| t == self.mask_id)
            .count();
        let steps_per_block = self.params.steps / self.params.num_blocks();
        self.schedule = transfer_schedule(masked, steps_per_block);
        self.step_in_block = 0;
        self.recursions = 0;
        self.refining = false;
        // The cache holds the previous block's masks: the next pass refreshes it.
        self.cache = None;
    }

    /// The first masked position of the current block, if any.
    pub fn first_masked(&self) -> Option<usize> {
        self.block_range().find(|&p| self.tokens[p] == self.mask_id)
    }

    pub fn mask_id(&self) -> u32 {
        self.mask_id
    }

    pub(crate) fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Whether the next pass must run the whole grid (no cache, or caching is off).
    fn needs_full_pass(&self) -> bool {
        self.params.kv_cache == KvCacheMode::None || self.cache.is_none()
    }

    /// The current block is filled: its schedule ran out, or (APD) no mask is left. An
    /// APD block also ends after `block_length` steps, which only a model that keeps
    /// proposing the mask token itself can reach.
    fn block_done(&self) -> bool {
        if self.params.commit.uses_schedule() {
            return self.step_in_block >= self.schedule.len();
        }
        !self.tokens[self.block_range()].contains(&self.mask_id)
            || self.step_in_block >= self.params.block_length
    }

    /// MoR: re-masks the block's positions committed below `threshold`, or its least
    /// confident one when none is.
    fn remask_for_recursion(&mut self, threshold: f32) {
        let range = self.block_range();
        let offset = self.prompt_len;
        let low: Vec<usize> = range
            .clone()
            .filter(|&p| self.confidence[p - offset] < threshold)
            .collect();
        let chosen = if low.is_empty() {
            range
                .clone()
                .min_by(|&a, &b| {
                    self.confidence[a - offset].total_cmp(&self.confidence[b - offset])
                })
                .into_iter()
                .collect()
        } else {
            low
        };
        for p in chosen {
            self.tokens[p] = self.mask_id;
        }
        self.recursions += 1;
        self.refining = true;
    }

    /// Commits this step's share of `logits` (`[block_length, V]`, the current block's
    /// rows) and advances to the next step, block, or the end.
    pub fn commit(&mut self, logits: &Tensor) -> Result<(), DecodeError> {
        if self.finished {
            return Ok(());
        }
        let proposals = propose(
            logits,
            self.params.temperature,
            self.params.top_p,
            self.params.remasking,
            &mut self.rng,
        )?;
        let chosen = self.choose(&proposals);
        if let Some(top) = self.logprobs {
            // Only the committed rows cross to the host, and only when asked for.
            let start = self.block_range().start;
            for &pos in &chosen {
                let row = logits
                    .get(pos - start)?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
                let token = proposals[pos - start].token;
                self.token_logprobs[pos - self.prompt_len] = Some(logprob_of(&row, token, top));
            }
        }
        self.write(&proposals, &chosen);
        Ok(())
    }

    /// The host-side half of [`Self::commit`]: pick the most confident masked positions
    /// of the block (ties go to the leftmost), as many as the schedule or the APD rule
    /// allows (all of them after a MoR re-mask), and write their tokens.
    pub fn commit_proposals(&mut self, proposals: &[Proposal]) {
        let chosen = self.choose(proposals);
        self.write(proposals, &chosen);
    }

    /// The positions (indices into [`Self::tokens`]) this step commits, best first.
    fn choose(&self, proposals: &[Proposal]) -> Vec<usize> {
        let range = self.block_range();
        let mut masked: Vec<usize> = range
            .clone()
            .filter(|&p| self.tokens[p] == self.mask_id)
            .collect();
        // The schedule orders by the remasking score; APD decides by probability.
        let apd = !self.params.commit.uses_schedule();
        let key = |p: &Proposal| if apd { p.probability } else { p.confidence };
        masked.sort_by(|&a, &b| {
            let (ca, cb) = (
                key(&proposals[a - range.start]),
                key(&proposals[b - range.start]),
            );
            cb.total_cmp(&ca).then(a.cmp(&b))
        });
        let k = if self.refining {
            masked.len()
        } else {
            let sorted: Vec<f32> = masked
                .iter()
                .map(|&p| key(&proposals[p - range.start]))
                .collect();
            let scheduled = self.schedule.get(self.step_in_block).copied().unwrap_or(0);
            self.params.commit.count(&sorted, scheduled)
        };
        masked.truncate(k);
        masked
    }

    /// Writes the `chosen` positions' proposals and ends the step.
    fn write(&mut self, proposals: &[Proposal], chosen: &[usize]) {
        let start = self.block_range().start;
        for &pos in chosen {
            let p = proposals[pos - start];
            self.tokens[pos] = p.token;
            self.confidence[pos - self.prompt_len] = p.probability;
        }
        self.finish_step();
    }

    /// Commits `tokens` (with their probabilities) left to right from the block's first
    /// masked position, as one step: the verifier's accepted prefix. `logprobs` holds
    /// their log-probabilities when [`Self::wants_logprobs`] (else it is empty).
    pub fn commit_prefix(&mut self, tokens: &[(u32, f32)], logprobs: Vec<TokenLogprob>) {
        let range = self.block_range();
        let masked: Vec<usize> = range
            .clone()
            .filter(|&p| self.tokens[p] == self.mask_id)
            .collect();
        let mut logprobs = logprobs.into_iter();
        for (&pos, &(token, probability)) in masked.iter().zip(tokens) {
            self.tokens[pos] = token;
            self.confidence[pos - self.prompt_len] = probability;
            if let (Some(slot), Some(lp)) = (
                self.token_logprobs.get_mut(pos - self.prompt_len),
                logprobs.next(),
            ) {
                *slot = Some(lp);
            }
        }
        self.finish_step();
    }

    /// Counts the pass, then moves to a MoR recursion, the end, or the next block.
    fn finish_step(&mut self) {
        let range = self.block_range();
        self.refining = false;
        self.forward_passes += 1;
        self.steps += 1;
        self.step_in_block += 1;
        let done = self.block_done();
        if done {
            if let Some(mor) = self.params.mor {
                let lowest = range
                    .clone()
                    .map(|p| self.confidence[p - self.prompt_len])
                    .fold(f32::INFINITY, f32::min);
                if mor.recurse(self.recursions, lowest) {
                    self.remask_for_recursion(mor.confidence_threshold);
                    return;
                }
            }
        }
        // With MoR on, a block is refined before the answer may end inside it.
        let may_stop = done || self.params.mor.is_none();
        if self.params.stop_at_eos && may_stop && self.answer_is_settled() {
            self.finished = true;
        } else if done {
            self.block += 1;
            if self.block >= self.params.num_blocks() {
                self.finished = true;
            } else {
                self.start_block();
            }
        }
    }

    /// True once an end-of-sequence token is committed with no mask before it.
    fn answer_is_settled(&self) -> bool {
        for &t in &self.tokens[self.prompt_len..] {
            if t == self.mask_id {
                return false;
            }
            if self.eos_ids.contains(&t) {
                return true;
            }
        }
        false
    }

    /// Answer tokens that can no longer change: those before the first masked position,
    /// up to (not including) the first end-of-sequence token. Streaming sends these.
    /// With MoR on, a recursion may still re-mask any position of the current block, so
    /// nothing from the current block on is settled until the block is done.
    pub fn settled_answer(&self) -> Vec<u32> {
        let end = if self.params.mor.is_some() && !self.finished {
            self.block_range().start
        } else {
            self.tokens.len()
        };
        self.tokens[self.prompt_len..end]
            .iter()
            .copied()
            .take_while(|&t| t != self.mask_id && !self.eos_ids.contains(&t))
            .collect()
    }

    pub fn forward_passes(&self) -> usize {
        self.forward_passes
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Answer positions committed so far.
    pub fn committed_answer_tokens(&self) -> usize {
        self.tokens[self.prompt_len..]
            .iter()
            .filter(|&&t| t != self.mask_id)
            .count()
    }

    pub fn answer(&self) -> Answer {
        let raw_ids = self.tokens[self.prompt_len..].to_vec();
        let end = raw_ids.iter().position(|t| self.eos_ids.contains(t));
        let token_ids = raw_ids[..end.unwrap_or(raw_ids.len())]
            .iter()
            .copied()
            .filter(|&t| t != self.mask_id)
            .collect();
        Answer {
            token_ids,
            raw_ids,
            finish_reason: if end.is_some() {
                FinishReason::Stop
            } else {
                FinishReason::Length
            },
            forward_passes: self.forward_passes,
            steps: self.steps,
        }
    }
}

/// One denoising step for every unfinished sequence in `seqs`.
///
/// Sequences that need the whole grid (no KV cache, or a block's first step) share one
/// forward pass, left-padded to one grid; the LM head runs only on the columns spanned
/// by their current blocks, and the pass captures keys/values for those that cache.
/// Sequences with a cache are grouped by shape (same length and block) and each group
/// runs one windowed pass.
pub fn step_batch(
    model: &dyn DiffusionLm,
    seqs: &mut [&mut DiffusionSequence],
    pad_id: u32,
) -> Result<(), DecodeError> {
    let active: Vec<usize> = (0..seqs.len())
        .filter(|&i| !seqs[i].is_finished())
        .collect();
    if active
        .iter()
        .any(|&i| matches!(seqs[i].params.commit, super::CommitRule::Verifier { .. }))
    {
        return Err(DecodeError::Internal(
            "verifier decoding needs the verifier model: use decoding::verifier::generate".into(),
        ));
    }
    let (full, cached): (Vec<usize>, Vec<usize>) =
        active.into_iter().partition(|&i| seqs[i].needs_full_pass());
    if !full.is_empty() {
        full_pass(model, seqs, &full, pad_id)?;
    }
    let mut groups: Vec<(usize, Range<usize>, KvCacheMode, Vec<usize>)> = Vec::new();
    for i in cached {
        let key = (
            seqs[i].tokens.len(),
            seqs[i].block_range(),
            seqs[i].params.kv_cache,
        );
        match groups
            .iter_mut()
            .find(|g| g.0 == key.0 && g.1 == key.1 && g.2 == key.2)
        {
            Some(g) => g.3.push(i),
            None => groups.push((key.0, key.1, key.2, vec![i])),
        }
    }
    for (_, block, mode, members) in groups {
        let rows: Vec<&[u32]> = members.iter().map(|&i| seqs[i].tokens()).collect();
        let batch = Batch::left_padded(&rows, pad_id, model.device(), model.dtype())?;
        let caches: Vec<&KvCache> = members
            .iter()
            .filter_map(|&i| seqs[i].cache.as_ref())
            .collect();
        let cache = KvCache::stack(&caches)?;
        let logits = model.forward_cached(&batch, &cache, block, mode)?;
        for (row, &i) in members.iter().enumerate() {
            seqs[i].commit(&logits.get(row)?)?;
        }
    }
    Ok(())
}

fn full_pass(
    model: &dyn DiffusionLm,
    seqs: &mut [&mut DiffusionSequence],
    rows_of: &[usize],
    pad_id: u32,
) -> Result<(), DecodeError> {
    let rows: Vec<&[u32]> = rows_of.iter().map(|&i| seqs[i].tokens()).collect();
    let batch = Batch::left_padded(&rows, pad_id, model.device(), model.dtype())?;
    // Each row's block, in grid columns (shifted right by the row's padding).
    let columns: Vec<Range<usize>> = rows_of
        .iter()
        .zip(&batch.pad_lengths)
        .map(|(&i, &pad)| {
            let r = seqs[i].block_range();
            r.start + pad..r.end + pad
        })
        .collect();
    let window = columns
        .iter()
        .cloned()
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
        .unwrap_or(0..batch.width());
    let wants_cache = rows_of
        .iter()
        .any(|&i| seqs[i].params.kv_cache != KvCacheMode::None);
    let (logits, cache) = if wants_cache {
        let (logits, cache) = model.forward_capture(&batch, window.clone())?;
        (logits, Some(cache))
    } else {
        (model.forward(&batch, Some(window.clone()))?, None)
    };
    for (row, (&i, cols)) in rows_of.iter().zip(&columns).enumerate() {
        if let Some(cache) = &cache {
            if seqs[i].params.kv_cache != KvCacheMode::None {
                let pad = batch.pad_lengths[row];
                seqs[i].cache = Some(cache.row(row, pad..batch.width())?);
            }
        }
        let block_logits = logits
            .get(row)?
            .narrow(0, cols.start - window.start, cols.len())?;
        seqs[i].commit(&block_logits)?;
    }
    Ok(())
}

/// Decodes one sequence to the end.
pub fn generate(
    model: &dyn DiffusionLm,
    seq: &mut DiffusionSequence,
    pad_id: u32,
) -> Result<Answer, DecodeError> {
    while !seq.is_finished() {
        step_batch(model, &mut [&mut *seq], pad_id)?;
    }
    Ok(seq.answer())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoding::{CommitRule, Mor};

    const MASK: u32 = 99;
    const EOS: u32 = 98;

    fn special() -> SpecialTokens {
        SpecialTokens {
            mask_id: MASK,
            eos_ids: vec![EOS],
            pad_id: EOS,
        }
    }

    fn seq(gen: usize, block: usize, steps: usize, stop_at_eos: bool) -> DiffusionSequence {
        let params = DiffusionParams {
            block_length: block,
            steps,
            stop_at_eos,
            ..DiffusionParams::with_defaults(gen)
        };
        DiffusionSequence::new(&[1, 2], params, &special(), 100).unwrap()
    }

    fn proposals(tokens: &[u32], confidence: &[f32]) -> Vec<Proposal> {
        tokens
            .iter()
            .zip(confidence)
            .map(|(&token, &confidence)| Proposal {
                token,
                confidence,
                probability: confidence,
            })
            .collect()
    }

    #[test]
    fn commits_the_most_confident_masked_positions_block_by_block() {
        // 8 tokens, blocks of 4, 4 steps: 2 steps per block, 2 tokens per step.
        let mut s = seq(8, 4, 4, false);
        assert_eq!(s.block_range(), 2..6);
        s.commit_proposals(&proposals(&[10, 11, 12, 13], &[0.1, 0.9, 0.5, 0.8]));
        assert_eq!(
            s.tokens(),
            &[1, 2, MASK, 11, MASK, 13, MASK, MASK, MASK, MASK]
        );
        // Committed positions are never re-proposed, whatever their new confidence.
        s.commit_proposals(&proposals(&[20, 21, 22, 23], &[0.2, 1.0, 0.3, 1.0]));
        assert_eq!(s.tokens()[2..6], [20, 11, 22, 13]);
        assert_eq!(
            s.block_range(),
            6..10,
            "the next block starts after the steps of this one"
        );
        s.commit_proposals(&proposals(&[30, 31, 32, 33], &[0.5, 0.5, 0.5, 0.5]));
        assert_eq!(
            s.tokens()[6..10],
            [30, 31, MASK, MASK],
            "ties go to the leftmost"
        );
        assert!(!s.is_finished());
        s.commit_proposals(&proposals(&[40, 41, 42, 43], &[0.0; 4]));
        assert!(s.is_finished());
        let answer = s.answer();
        assert_eq!(answer.token_ids, vec![20, 11, 22, 13, 30, 31, 42, 43]);
        assert_eq!(answer.finish_reason, FinishReason::Length);
        assert_eq!((answer.forward_passes, answer.steps), (4, 4));
    }

    fn apd_seq(
        gen: usize,
        block: usize,
        commit: CommitRule,
        mor: Option<Mor>,
    ) -> DiffusionSequence {
        let params = DiffusionParams {
            block_length: block,
            stop_at_eos: false,
            commit,
            mor,
            ..DiffusionParams::with_defaults(gen)
        };
        DiffusionSequence::new(&[1, 2], params, &special(), 100).unwrap()
    }

    const THRESHOLD: CommitRule = CommitRule::Threshold {
        threshold: 0.9,
        max_parallel: 16,
    };

    #[test]
    fn threshold_commits_every_confident_position_and_ends_blocks_early() {
        let mut s = apd_seq(8, 4, THRESHOLD, None);
        s.commit_proposals(&proposals(&[10, 11, 12, 13], &[0.95, 0.5, 0.99, 0.2]));
        assert_eq!(s.tokens()[2..6], [10, MASK, 12, MASK]);
        // Nothing confident: the most confident one still goes.
        s.commit_proposals(&proposals(&[0, 21, 0, 23], &[0.0, 0.3, 0.0, 0.6]));
        assert_eq!(s.tokens()[2..6], [10, MASK, 12, 23]);
        s.commit_proposals(&proposals(&[0, 31, 0, 0], &[0.0, 0.91, 0.0, 0.0]));
        assert_eq!(s.block_range(), 6..10, "a filled block ends at once");
        s.commit_proposals(&proposals(&[40, 41, 42, 43], &[0.99; 4]));
        assert!(s.is_finished());
        assert_eq!(s.forward_passes(), 4, "8 tokens in 4 passes, not 8");
    }

    #[test]
    fn factor_commits_a_prefix_of_the_ranking() {
        let factor = CommitRule::Factor {
            factor: 1.0,
            max_parallel: 16,
        };
        let mut s = apd_seq(4, 4, factor, None);
        // Ranked 0.8 (always), 0.74 (>= 1 - 1/3), then 0.7 < 1 - 1/4 ends the prefix.
        s.commit_proposals(&proposals(&[10, 11, 12, 13], &[0.8, 0.7, 0.74, 0.1]));
        assert_eq!(s.tokens()[2..6], [10, MASK, 12, MASK]);
    }

    #[test]
    fn mor_remasks_unsure_tokens_of_a_filled_block_and_repredicts_them() {
        let mor = Mor {
            min_recursions: 0,
            max_recursions: 2,
            confidence_threshold: 0.7,
        };
        let mut s = apd_seq(8, 4, THRESHOLD, Some(mor));
        s.commit_proposals(&proposals(&[10, 11, 12, 13], &[0.95, 0.95, 0.95, 0.5]));
        s.commit_proposals(&proposals(&[0, 0, 0, 13], &[0.0, 0.0, 0.0, 0.6]));
        // Filled, but position 5 was committed at 0.6 < 0.7: re-masked, same block.
        assert_eq!(s.tokens()[2..6], [10, 11, 12, MASK]);
        assert_eq!(s.block_range(), 2..6);
        s.commit_proposals(&proposals(&[0, 0, 0, 14], &[0.0, 0.0, 0.0, 0.8]));
        assert_eq!(
            s.tokens()[2..6],
            [10, 11, 12, 14],
            "the re-prediction replaced it"
        );
        assert_eq!(s.block_range(), 6..10, "confident now: the next block");
        assert_eq!(s.forward_passes(), 3);

        // A stubborn position gets at most max_recursions extra passes.
        let mut t = apd_seq(4, 4, THRESHOLD, Some(mor));
        t.commit_proposals(&proposals(&[10, 11, 12, 13], &[0.95, 0.95, 0.95, 0.1]));
        t.commit_proposals(&proposals(&[0, 0, 0, 13], &[0.0, 0.0, 0.0, 0.2]));
        t.commit_proposals(&proposals(&[0, 0, 0, 13], &[0.0, 0.0, 0.0, 0.2]));
        t.commit_proposals(&proposals(&[0, 0, 0, 13], &[0.0, 0.0, 0.0, 0.2]));
        assert!(t.is_finished());
        assert_eq!(t.forward_passes(), 4, "1 + 1 + 2 recursions");
    }

    /// `[4, 100]` logits whose row r peaks at token `first + r` with `5 - r`.
    fn peaked(first: u32) -> Tensor {
        let mut v = vec![0f32; 4 * 100];
        for r in 0..4 {
            v[r * 100 + first as usize + r] = 5.0 - r as f32;
        }
        Tensor::from_vec(v, (4, 100), &candle_core::Device::Cpu).unwrap()
    }

    #[test]
    fn logprobs_are_read_from_the_pass_that_commits_each_token() {
        let expected = |peak: f32| peak - (peak.exp() + 99.0).ln();
        let mut s = seq(4, 4, 2, false).with_logprobs(Some(2)).unwrap();
        s.commit(&peaked(10)).unwrap();
        let first = s.settled_logprobs(0);
        assert_eq!(first.iter().map(|l| l.token).collect::<Vec<_>>(), [10, 11]);
        assert!((first[0].logprob - expected(5.0)).abs() < 1e-5);
        assert!((first[1].logprob - expected(4.0)).abs() < 1e-5);
        assert_eq!(first[0].top[0].0, 10, "the best alternative is the token");
        assert_eq!(first[0].top.len(), 2);
        // The second pass sees other logits: its commits carry that pass's numbers.
        s.commit(&peaked(20)).unwrap();
        let rest = s.settled_logprobs(2);
        assert_eq!(rest.iter().map(|l| l.token).collect::<Vec<_>>(), [22, 23]);
        assert!((rest[0].logprob - expected(3.0)).abs() < 1e-5);
        assert_eq!(s.settled_logprobs(0).len(), 4);

        let mut plain = seq(4, 4, 2, false);
        plain.commit(&peaked(10)).unwrap();
        assert!(
            plain.settled_logprobs(0).is_empty(),
            "not asked, not computed"
        );
        let refused = seq(4, 4, 2, false).with_logprobs(Some(21)).unwrap_err();
        assert!(matches!(
            refused,
            DecodeError::InvalidParam {
                param: "top_logprobs",
                ..
            }
        ));
    }

    #[test]
    fn with_mor_a_block_settles_only_when_no_recursion_can_remask_it() {
        let mor = Mor {
            min_recursions: 0,
            max_recursions: 2,
            confidence_threshold: 0.7,
        };
        let mut s = apd_seq(8, 4, THRESHOLD, Some(mor));
        // Two confident tokens at the block's start: without MoR they would be settled.
        s.commit_proposals(&proposals(&[10, 11, 12, 13], &[0.95, 0.95, 0.5, 0.5]));
        assert!(
            s.settled_answer().is_empty(),
            "a recursion may still re-mask them"
        );
        s.commit_proposals(&proposals(&[0, 0, 12, 13], &[0.0, 0.0, 0.95, 0.95]));
        assert_eq!(
            s.block_range(),
            6..10,
            "confident: no recursion, the next block"
        );
        assert_eq!(s.settled_answer(), vec![10, 11, 12, 13]);
        let mut plain = apd_seq(8, 4, THRESHOLD, None);
        plain.commit_proposals(&proposals(&[10, 11, 12, 13], &[0.95, 0.95, 0.5, 0.5]));
        assert_eq!(
            plain.settled_answer(),
            vec![10, 11],
            "without MoR they are final"
        );
    }

    #[test]
    fn uneven_steps_commit_the_remainder_first() {
        let mut s = seq(8, 8, 3, false);
        let counts: Vec<usize> = (0..3)
            .map(|step| {
                let before = s.tokens().iter().filter(|&&t| t == MASK).count();
                s.commit_proposals(&proposals(&[step; 8], &[0.5; 8]));
                before - s.tokens().iter().filter(|&&t| t == MASK).count()
            })
            .collect();
        assert_eq!(counts, vec![3, 3, 2]);
        assert!(s.is_finished());
    }

    #[test]
    fn eos_truncates_the_answer_and_can_stop_early() {
        let block = |s: &mut DiffusionSequence, toks: [u32; 4]| {
            s.commit_proposals(&proposals(&toks, &[0.9, 0.8, 0.7, 0.6]))
        };
        // Without early stop every block runs; the answer still ends at EOS.
        let mut full = seq(8, 4, 2, false);
        block(&mut full, [5, EOS, 7, 7]);
        assert!(!full.is_finished());
        assert_eq!(full.settled_answer(), vec![5], "settled text stops at EOS");
        block(&mut full, [8, 8, 8, 8]);
        let answer = full.answer();
        assert_eq!(answer.token_ids, vec![5]);
        assert_eq!(answer.finish_reason, FinishReason::Stop);
        assert_eq!(answer.forward_passes, 2);

        let mut early = seq(8, 4, 2, true);
        block(&mut early, [5, EOS, 7, 7]);
        assert!(
            early.is_finished(),
            "EOS with nothing masked before it settles the answer"
        );
        assert_eq!(early.answer().token_ids, vec![5]);
        assert_eq!(early.answer().forward_passes, 1);
    }

    #[test]
    fn eos_after_a_mask_does_not_stop() {
        // 4 tokens in one block of 2 steps: commit EOS at position 1 while 0 is masked.
        let mut s = seq(4, 4, 2, true);
        s.commit_proposals(&proposals(&[5, EOS, 6, 7], &[0.1, 0.9, 0.8, 0.2]));
        assert!(!s.is_finished());
        s.commit_proposals(&proposals(&[5, 0, 0, 7], &[0.9, 0.0, 0.0, 0.1]));
        assert!(s.is_finished());
        assert_eq!(s.answer().token_ids, vec![5]);
    }

    #[test]
    fn invalid_parameters_are_rejected_before_decoding() {
        let params = DiffusionParams {
            block_length: 3,
            ..DiffusionParams::with_defaults(8)
        };
        let err = DiffusionSequence::new(&[1], params, &special(), 100).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::InvalidParam {
                param: "block_length",
                ..
            }
        ));
    }
}
