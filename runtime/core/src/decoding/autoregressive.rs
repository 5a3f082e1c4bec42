//! Autoregressive decoding: one token per sequence per forward pass, sampled from the
//! next-token distribution (greedy, temperature, top-k, top-p, seeded), ending at an
//! end-of-sequence or stop token id, or at `max_tokens`. Stop strings are matched on
//! the decoded text by the server (`server::text`), as they may straddle tokens.
//!
//! [`step_batch`] advances every running sequence by one token in at most two passes
//! over the shared [`CausalCache`]: the newly admitted sequences' prompts (prefill),
//! then one token for each of the others (decode).

use candle_core::DType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::logprobs::{logprob_of, TokenLogprob, MAX_TOP_LOGPROBS};
use super::next_token;
use super::{Answer, DecodeError, FinishReason};
use crate::models::causal::{CausalCache, CausalModel};
use crate::models::SpecialTokens;

#[derive(Debug, Clone, PartialEq)]
pub struct ArParams {
    pub max_tokens: usize,
    /// 0 is argmax; above 0, sampling from softmax(logits / temperature).
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Sample among the `top_k` most likely tokens only; 0 is off.
    pub top_k: usize,
    /// HF's and vLLM's repetition penalty over the prompt and the answer so far
    /// (above 1 discourages repeats); `None` is off.
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// Ids that end the answer besides the model's EOS ids (not part of the answer).
    pub stop_token_ids: Vec<u32>,
    /// Keep going through EOS (benchmarks that need a fixed answer length).
    pub ignore_eos: bool,
    /// Report each token's log-probability and this many alternatives; `None` is off.
    pub logprobs: Option<usize>,
}

impl ArParams {
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: None,
            seed: None,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }

    /// Checks every field, naming the API field on failure.
    pub fn validate(&self, prompt_len: usize, max_context: usize) -> Result<(), DecodeError> {
        let invalid = |param: &'static str, message: String| {
            Err(DecodeError::InvalidParam { param, message })
        };
        if prompt_len == 0 {
            return invalid("prompt", "the prompt must not be empty".into());
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens", "max_tokens must be at least 1".into());
        }
        if prompt_len >= max_context {
            return invalid(
                "prompt",
                format!(
                    "the prompt has {prompt_len} tokens; the model's context is {max_context} tokens"
                ),
            );
        }
        if prompt_len + self.max_tokens > max_context {
            return invalid(
                "max_tokens",
                format!(
                    "prompt ({prompt_len} tokens) + max_tokens ({}) exceeds the model's context of {max_context} tokens",
                    self.max_tokens
                ),
            );
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(
                "temperature",
                format!("temperature must be >= 0, got {}", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {}", self.top_p),
            );
        }
        if let Some(p) = self
            .repetition_penalty
            .filter(|p| !(p.is_finite() && *p > 0.0))
        {
            return invalid(
                "repetition_penalty",
                format!("repetition_penalty must be greater than 0, got {p}"),
            );
        }
        if let Some(k) = self.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return invalid(
                "top_logprobs",
                format!("at most {MAX_TOP_LOGPROBS} alternatives per token, got {k}"),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ArSequence {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    /// The distinct ids of the prompt and the answer, sorted: what the repetition
    /// penalty applies to (kept only when it is on).
    seen: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    params: ArParams,
    eos_ids: Vec<u32>,
    max_context: usize,
    rng: ChaCha8Rng,
    /// Whether the cache holds the prompt (and every generated token but the last).
    prefilled: bool,
    /// The prompt and the answer so far, to prefill again after the cache was lost (a
    /// failed pass); `None` while the prompt alone is what a prefill reads.
    refill: Option<Vec<u32>>,
    forward_passes: usize,
    finish: Option<FinishReason>,
    /// The id that ended the answer (EOS or a stop id), not part of it.
    stopped_by: Option<u32>,
}

impl ArSequence {
    pub fn new(
        prompt: &[u32],
        params: ArParams,
        special: &SpecialTokens,
        max_context: usize,
    ) -> Result<Self, DecodeError> {
        params.validate(prompt.len(), max_context)?;
        let seed = params.seed.unwrap_or_else(rand::random);
        let mut seen = Vec::new();
        if params.repetition_penalty.is_some() {
            seen = prompt.to_vec();
            seen.sort_unstable();
            seen.dedup();
        }
        Ok(Self {
            prompt: prompt.to_vec(),
            generated: Vec::with_capacity(params.max_tokens),
            seen,
            logprobs: Vec::new(),
            eos_ids: special.eos_ids.clone(),
            max_context,
            rng: ChaCha8Rng::seed_from_u64(seed),
            prefilled: false,
            refill: None,
            forward_passes: 0,
            finish: None,
            stopped_by: None,
            params,
        })
    }

    pub fn params(&self) -> &ArParams {
        &self.params
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    pub fn is_prefilled(&self) -> bool {
        self.prefilled
    }

    /// Tokens the next pass feeds: the whole prompt first, then the last token.
    fn pending(&self) -> &[u32] {
        match (self.prefilled, self.generated.len()) {
            (false, _) => self.refill.as_deref().unwrap_or(&self.prompt),
            (true, 0) => &self.prompt[self.prompt.len() - 1..],
            (true, n) => &self.generated[n - 1..],
        }
    }

    /// The answer so far (never includes the token that ended it).
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Prompt plus the longest answer the context allows.
    pub fn max_len(&self) -> usize {
        (self.prompt.len() + self.params.max_tokens).min(self.max_context)
    }

    pub fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    pub fn forward_passes(&self) -> usize {
        self.forward_passes
    }

    pub fn answer(&self) -> Answer {
        let mut raw = self.generated.clone();
        raw.extend(self.stopped_by);
        Answer {
            token_ids: self.generated.clone(),
            raw_ids: raw,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            forward_passes: self.forward_passes,
            steps: self.forward_passes,
        }
    }

    /// Takes the next-token logits of this sequence (f32, one row) and samples.
    /// The cache lost this sequence (a failed pass cleared it): the next pass prefills
    /// the prompt and the answer so far, and decoding continues where it was.
    pub fn forget_cache(&mut self) {
        if self.prefilled && !self.generated.is_empty() {
            let mut all = self.prompt.clone();
            all.extend_from_slice(&self.generated);
            self.refill = Some(all);
        }
        self.prefilled = false;
    }

    pub fn accept(&mut self, logits: &[f32]) {
        self.prefilled = true;
        self.refill = None;
        self.forward_passes += 1;
        let token = next_token::sample(logits, &self.params, &self.seen, &mut self.rng);
        let is_eos = !self.params.ignore_eos && self.eos_ids.contains(&token);
        if is_eos || self.params.stop_token_ids.contains(&token) {
            self.stopped_by = Some(token);
            self.finish = Some(FinishReason::Stop);
            return;
        }
        if let Some(k) = self.params.logprobs {
            self.logprobs.push(logprob_of(logits, token, k));
        }
        self.generated.push(token);
        if self.params.repetition_penalty.is_some() {
            if let Err(at) = self.seen.binary_search(&token) {
                self.seen.insert(at, token);
            }
        }
        let total = self.prompt.len() + self.generated.len();
        if self.generated.len() >= self.params.max_tokens || total >= self.max_context {
            self.finish = Some(FinishReason::Length);
        }
    }
}

/// Advances each unfinished sequence by one token. `seqs[i]` owns cache slot `i`;
/// sequences not yet prefilled must come after all prefilled ones (the engine admits at
/// the end), so each pass covers one contiguous range of slots.
pub fn step_batch(
    model: &CausalModel,
    cache: &mut CausalCache,
    seqs: &mut [&mut ArSequence],
) -> Result<(), DecodeError> {
    let first_new = seqs.iter().position(|s| !s.prefilled).unwrap_or(seqs.len());
    if seqs[first_new..].iter().any(|s| s.prefilled) {
        return Err(DecodeError::Internal(
            "sequences awaiting prefill must follow the running ones".into(),
        ));
    }
    let (running, new) = seqs.split_at_mut(first_new);
    for (first_slot, group) in [(first_new, new), (0, running)] {
        let live: Vec<usize> = (0..group.len())
            .filter(|&i| !group[i].is_finished())
            .collect();
        if live.is_empty() {
            continue;
        }
        // Finished sequences still hold a slot until the engine drops them; feed them a
        // token so the pass covers one contiguous range, and ignore their logits.
        let inputs: Vec<&[u32]> = group
            .iter()
            .map(|s| {
                let p = s.pending();
                if s.is_finished() {
                    &p[p.len() - 1..]
                } else {
                    p
                }
            })
            .collect();
        let logits = model
            .step(cache, first_slot, &inputs, false)?
            .to_dtype(DType::F32)?;
        let rows = logits.to_vec2::<f32>()?;
        // The NaN guard: a broken kernel or an overflowing f16 pass must fail the pass
        // (and count towards the circuit breaker), never sample garbage.
        if live.iter().any(|&i| rows[i].iter().any(|x| x.is_nan())) {
            return Err(DecodeError::Model(candle_core::Error::Msg(
                "the forward pass produced NaN logits".into(),
            )));
        }
        for i in live {
            group[i].accept(&rows[i]);
        }
    }
    Ok(())
}

/// Decodes one sequence alone (the CLI's `generate`, tests).
pub fn generate(model: &CausalModel, seq: &mut ArSequence) -> Result<Answer, DecodeError> {
    let mut cache = CausalCache::new();
    while !seq.is_finished() {
        step_batch(model, &mut cache, &mut [&mut *seq])?;
    }
    Ok(seq.answer())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialTokens {
        SpecialTokens {
            mask_id: crate::models::NO_MASK,
            eos_ids: vec![9],
            pad_id: 9,
        }
    }

    #[test]
    fn eos_and_stop_ids_end_the_answer_outside_it() {
        let mut logits = vec![0.0f32; 12];
        let mut seq = ArSequence::new(&[1, 2], ArParams::greedy(5), &special(), 64).unwrap();
        logits[4] = 5.0;
        seq.accept(&logits);
        logits[9] = 10.0;
        seq.accept(&logits);
        assert!(seq.is_finished());
        let a = seq.answer();
        assert_eq!((a.token_ids, a.raw_ids), (vec![4], vec![4, 9]));
        assert_eq!(a.finish_reason, FinishReason::Stop);

        let p = ArParams {
            stop_token_ids: vec![4],
            ..ArParams::greedy(5)
        };
        let mut seq = ArSequence::new(&[1], p, &special(), 64).unwrap();
        logits[9] = 0.0;
        seq.accept(&logits);
        assert_eq!(seq.answer().finish_reason, FinishReason::Stop);
        assert!(seq.generated().is_empty());

        let p = ArParams {
            ignore_eos: true,
            ..ArParams::greedy(2)
        };
        let mut seq = ArSequence::new(&[1], p, &special(), 64).unwrap();
        logits[9] = 10.0;
        seq.accept(&logits);
        seq.accept(&logits);
        let a = seq.answer();
        assert_eq!(a.token_ids, vec![9, 9]);
        assert_eq!(a.finish_reason, FinishReason::Length);
    }

    #[test]
    fn the_repetition_penalty_covers_the_prompt_and_each_new_token() {
        let logits = [0.0f32, 2.0, 1.5, 1.2, 0.1];
        let p_of = |penalty| ArParams {
            repetition_penalty: Some(penalty),
            ..ArParams::greedy(3)
        };
        let mut seq = ArSequence::new(&[3], p_of(2.0), &special(), 64).unwrap();
        for _ in 0..3 {
            seq.accept(&logits);
        }
        // 1 (best), then 2 (1 was just said: 1.0 < 1.5), then 1 again: every seen id is
        // halved once (1.0 over 2's 0.75 and the prompt's 3 at 0.6), never twice.
        assert_eq!(seq.generated(), &[1, 2, 1]);
        let mut from_prompt = ArSequence::new(&[1], p_of(2.0), &special(), 64).unwrap();
        from_prompt.accept(&logits);
        assert_eq!(from_prompt.generated(), &[2], "the prompt's ids count");
        let mut plain = ArSequence::new(&[3], ArParams::greedy(2), &special(), 64).unwrap();
        plain.accept(&logits);
        plain.accept(&logits);
        assert_eq!(plain.generated(), &[1, 1], "off: greedy repeats");
    }

    #[test]
    fn validation_names_the_field() {
        let param = |p: ArParams, prompt: usize| match p.validate(prompt, 16) {
            Err(DecodeError::InvalidParam { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(ArParams::greedy(0), 2), "max_tokens");
        assert_eq!(param(ArParams::greedy(15), 2), "max_tokens");
        assert_eq!(param(ArParams::greedy(1), 16), "prompt");
        assert_eq!(param(ArParams::greedy(1), 0), "prompt");
        let p = ArParams {
            logprobs: Some(21),
            ..ArParams::greedy(1)
        };
        assert_eq!(param(p, 2), "top_logprobs");
        assert!(ArParams::greedy(14).validate(2, 16).is_ok());
    }
}
