//! The kind-neutral face of decoding. Callers (the engine, the server, the CLI) describe
//! an answer once with [`SamplingParams`]; [`Sequence::new`] is the one place that
//! decides, from the served model's kind, which sampler runs it and which knobs that
//! sampler refuses; [`Stepper::step`] advances a batch of them without the caller
//! knowing the kind.

use crate::models::causal::{CausalCache, CausalModel};
use crate::models::{LoadedModel, ModelKind, Network, SpecialTokens};

use super::autoregressive::{self, ArParams, ArSequence};
use super::diffusion::{self, Answer, DiffusionSequence};
use super::logprobs::TokenLogprob;
use super::{verifier, CommitRule, DecodeError, DiffusionParams, KvCacheMode, Mor, Remasking};

/// Everything one answer is decoded with, whatever the model's kind.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Answer length in tokens (the API's `max_tokens`).
    pub max_tokens: usize,
    /// 0 is argmax.
    pub temperature: f32,
    /// Nucleus sampling (1 = the whole vocabulary).
    pub top_p: f32,
    /// `None` draws a fresh seed.
    pub seed: Option<u64>,
    /// Alternatives per token when log-probabilities are wanted (`None`: not wanted).
    /// An autoregressive token's come from the pass that sampled it, a diffusion
    /// token's from the pass that committed it.
    pub logprobs: Option<usize>,
    pub diffusion: DiffusionKnobs,
    pub autoregressive: ArKnobs,
}

/// What only a diffusion sampler honours.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionKnobs {
    pub block_length: usize,
    /// Total denoising steps over all blocks.
    pub steps: usize,
    pub remasking: Remasking,
    pub stop_at_eos: bool,
    pub commit: CommitRule,
    pub mor: Option<Mor>,
    pub kv_cache: KvCacheMode,
    /// The knobs the caller set itself, by the caller's names: an autoregressive model
    /// refuses them rather than silently ignore them.
    pub set_by_caller: Vec<&'static str>,
}

/// What only an autoregressive sampler honours; the defaults are "off".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ArKnobs {
    /// 0 is off.
    pub top_k: usize,
    /// `None` is off.
    pub repetition_penalty: Option<f32>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl SamplingParams {
    /// The reference defaults for an answer of `max_tokens` (greedy, one token per step).
    pub fn with_defaults(max_tokens: usize) -> Self {
        Self::from_diffusion(DiffusionParams::with_defaults(max_tokens))
    }

    /// Splits diffusion parameters into the shared fields and the diffusion knobs.
    pub fn from_diffusion(p: DiffusionParams) -> Self {
        Self {
            max_tokens: p.gen_length,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed,
            logprobs: None,
            diffusion: DiffusionKnobs {
                block_length: p.block_length,
                steps: p.steps,
                remasking: p.remasking,
                stop_at_eos: p.stop_at_eos,
                commit: p.commit,
                mor: p.mor,
                kv_cache: p.kv_cache,
                set_by_caller: Vec::new(),
            },
            autoregressive: ArKnobs::default(),
        }
    }

    /// The parameters of alternative `index` of one prompt: seeded runs give each
    /// alternative its own seed, so `n > 1` does not repeat one answer.
    pub fn for_choice(&self, index: usize) -> Self {
        Self {
            seed: self.seed.map(|s| s.wrapping_add(index as u64)),
            ..self.clone()
        }
    }

    pub fn diffusion_params(&self) -> DiffusionParams {
        let d = &self.diffusion;
        DiffusionParams {
            gen_length: self.max_tokens,
            block_length: d.block_length,
            steps: d.steps,
            remasking: d.remasking,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_at_eos: d.stop_at_eos,
            commit: d.commit,
            mor: d.mor,
            kv_cache: d.kv_cache,
        }
    }

    pub fn ar_params(&self) -> ArParams {
        let a = &self.autoregressive;
        ArParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: a.top_k,
            repetition_penalty: a.repetition_penalty,
            seed: self.seed,
            stop_token_ids: a.stop_token_ids.clone(),
            ignore_eos: a.ignore_eos,
            logprobs: self.logprobs,
        }
    }

    /// Refuses knobs a model of `kind` cannot honour, naming the first one.
    pub fn check_kind(&self, kind: ModelKind) -> Result<(), DecodeError> {
        let refuse = |param: &'static str, what: &str| {
            Err(DecodeError::InvalidParam {
                param,
                message: format!("{param} is not supported by {what} models"),
            })
        };
        match kind {
            ModelKind::Diffusion => {
                let a = &self.autoregressive;
                if a.top_k > 0 {
                    return refuse("top_k", "diffusion");
                }
                if a.repetition_penalty.is_some() {
                    return refuse("repetition_penalty", "diffusion");
                }
                if !a.stop_token_ids.is_empty() {
                    return refuse("stop_token_ids", "diffusion");
                }
                if a.ignore_eos {
                    return refuse("ignore_eos", "diffusion");
                }
            }
            ModelKind::Autoregressive => {
                if let Some(field) = self.diffusion.set_by_caller.first() {
                    return refuse(field, "autoregressive");
                }
            }
        }
        Ok(())
    }
}

/// A sequence being decoded, by the sampler its model's kind needs.
#[derive(Debug)]
pub enum Sequence {
    Diffusion(DiffusionSequence),
    Autoregressive(ArSequence),
}

impl Sequence {
    /// Checks `params` against the model's kind, the prompt and the context, and builds
    /// the sequence: the only place a request's kind is decided.
    pub fn new(
        kind: ModelKind,
        prompt: &[u32],
        params: &SamplingParams,
        special: &SpecialTokens,
        max_context: usize,
    ) -> Result<Self, DecodeError> {
        params.check_kind(kind)?;
        Ok(match kind {
            ModelKind::Diffusion => Self::Diffusion(
                DiffusionSequence::new(prompt, params.diffusion_params(), special, max_context)?
                    .with_logprobs(params.logprobs)?,
            ),
            ModelKind::Autoregressive => Self::Autoregressive(ArSequence::new(
                prompt,
                params.ar_params(),
                special,
                max_context,
            )?),
        })
    }

    /// Answer tokens that can no longer change, up to the first end-of-sequence token.
    /// Each call returns the previous one's tokens as a prefix.
    pub fn settled_answer(&self) -> Vec<u32> {
        match self {
            Self::Diffusion(s) => s.settled_answer(),
            Self::Autoregressive(s) => s.generated().to_vec(),
        }
    }

    /// Settled answer tokens (cheap; for progress accounting).
    pub fn settled_len(&self) -> usize {
        match self {
            Self::Diffusion(s) => s.settled_answer().len(),
            Self::Autoregressive(s) => s.generated().len(),
        }
    }

    /// Forgets what the engine's step state held for this sequence (after a failed
    /// pass): an autoregressive one prefills its whole context again. A diffusion
    /// sequence's own cache is only replaced by a pass that succeeded, so it stays.
    pub fn forget_cache(&mut self) {
        if let Self::Autoregressive(s) = self {
            s.forget_cache();
        }
    }

    /// The most tokens (prompt plus answer) the sequence can reach: what its cache is
    /// sized for.
    pub fn max_len(&self) -> usize {
        match self {
            Self::Diffusion(s) => s.tokens().len(),
            Self::Autoregressive(s) => s.max_len(),
        }
    }

    /// Answer positions holding a committed token.
    pub fn committed_answer_tokens(&self) -> usize {
        match self {
            Self::Diffusion(s) => s.committed_answer_tokens(),
            Self::Autoregressive(s) => s.generated().len(),
        }
    }

    pub fn forward_passes(&self) -> usize {
        match self {
            Self::Diffusion(s) => s.forward_passes(),
            Self::Autoregressive(s) => s.forward_passes(),
        }
    }

    pub fn steps(&self) -> usize {
        match self {
            Self::Diffusion(s) => s.steps(),
            Self::Autoregressive(s) => s.forward_passes(),
        }
    }

    pub fn is_finished(&self) -> bool {
        match self {
            Self::Diffusion(s) => s.is_finished(),
            Self::Autoregressive(s) => s.is_finished(),
        }
    }

    pub fn answer(&self) -> Answer {
        match self {
            Self::Diffusion(s) => s.answer(),
            Self::Autoregressive(s) => s.answer(),
        }
    }

    /// Log-probabilities of the settled answer's tokens from the `from`-th on, when the
    /// request asked for them (empty otherwise).
    pub fn logprobs_from(&self, from: usize) -> Vec<TokenLogprob> {
        match self {
            Self::Diffusion(s) => s.settled_logprobs(from),
            Self::Autoregressive(s) => {
                let all = s.logprobs();
                all[from.min(all.len())..].to_vec()
            }
        }
    }
}

/// What a batch carries between steps: the autoregressive key/value slots (slot i
/// belongs to the batch's sequence i); a diffusion batch keeps nothing here.
#[derive(Debug, Default)]
pub struct StepState {
    cache: CausalCache,
}

impl StepState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the state of the sequences `keep` marks, in order, when others leave.
    pub fn retain(&mut self, keep: &[bool]) {
        // Only an allocation failure can fail here; forgetting every slot then makes
        // the next pass fail its sequences with an error instead of reading stale keys.
        if self.cache.retain(keep).is_err() {
            self.cache.clear();
        }
    }

    /// Forgets everything (after a failed step, whose slots may be half written).
    pub fn clear(&mut self) {
        self.cache.clear();
    }
}

/// One decoding step for a whole batch. [`LoadedModel`] is the real one (a forward
/// pass; two when autoregressive prompts join: prefill, then decode); the engine's
/// tests drive the scheduler with a fake.
pub trait Stepper {
    /// Advances every unfinished sequence of `batch` by one step; `state` is the one
    /// the previous steps of this batch left.
    fn step(&self, batch: &mut [&mut Sequence], state: &mut StepState) -> Result<(), DecodeError>;
}

/// The sequences of `batch` as one kind, picked by `pick`. Sequences are built by
/// [`Sequence::new`] for the loaded model's kind, so another kind here is a bug of ours:
/// an internal error, never the request's.
fn all_of<'a, T>(
    batch: &'a mut [&mut Sequence],
    pick: impl Fn(&'a mut Sequence) -> Option<&'a mut T>,
) -> Result<Vec<&'a mut T>, DecodeError> {
    batch
        .iter_mut()
        .map(|s| {
            pick(s).ok_or_else(|| {
                DecodeError::Internal("a sequence of the wrong kind reached the model".into())
            })
        })
        .collect()
}

impl Stepper for LoadedModel {
    fn step(&self, batch: &mut [&mut Sequence], state: &mut StepState) -> Result<(), DecodeError> {
        match &self.network {
            Network::Diffusion(m) => {
                let mut seqs = all_of(batch, |s| match s {
                    Sequence::Diffusion(d) => Some(d),
                    Sequence::Autoregressive(_) => None,
                })?;
                diffusion::step_batch(m.as_ref(), &mut seqs, self.special.pad_id)
            }
            Network::Causal(m) => {
                let mut seqs = all_of(batch, |s| match s {
                    Sequence::Autoregressive(a) => Some(a),
                    Sequence::Diffusion(_) => None,
                })?;
                autoregressive::step_batch(m, &mut state.cache, &mut seqs)
            }
        }
    }
}

/// A diffusion model served with APD's verifier beside it: sequences decoded with
/// `apd.mode verifier` take the verifier's step (both models' passes shared by all of
/// them), the others the model's own step, batched as usual.
pub struct WithVerifier<'a> {
    pub model: &'a LoadedModel,
    pub verifier: &'a CausalModel,
}

fn is_verified(seq: &Sequence) -> bool {
    matches!(seq, Sequence::Diffusion(d) if matches!(d.params().commit, CommitRule::Verifier { .. }))
}

impl Stepper for WithVerifier<'_> {
    fn step(&self, batch: &mut [&mut Sequence], state: &mut StepState) -> Result<(), DecodeError> {
        let (verified, rest): (Vec<&mut &mut Sequence>, Vec<&mut &mut Sequence>) =
            batch.iter_mut().partition(|s| is_verified(s));
        if !rest.is_empty() {
            let mut rest: Vec<&mut Sequence> = rest.into_iter().map(|s| &mut **s).collect();
            self.model.step(&mut rest, state)?;
        }
        if verified.is_empty() {
            return Ok(());
        }
        let Network::Diffusion(m) = &self.model.network else {
            return Err(DecodeError::Internal(
                "the verifier runs beside a diffusion model only".into(),
            ));
        };
        let mut seqs: Vec<&mut DiffusionSequence> = verified
            .into_iter()
            .filter_map(|s| match &mut **s {
                Sequence::Diffusion(d) => Some(d),
                Sequence::Autoregressive(_) => None,
            })
            .collect();
        verifier::step_batch(
            m.as_ref(),
            self.verifier,
            &mut seqs,
            self.model.special.pad_id,
        )
    }
}

/// Decodes one sequence to the end on its own.
pub fn run_to_end<M: Stepper + ?Sized>(
    model: &M,
    seq: &mut Sequence,
) -> Result<Answer, DecodeError> {
    let mut state = StepState::new();
    while !seq.is_finished() {
        model.step(&mut [&mut *seq], &mut state)?;
    }
    Ok(seq.answer())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialTokens {
        SpecialTokens {
            mask_id: 99,
            eos_ids: vec![98],
            pad_id: 98,
        }
    }

    fn param_of(r: Result<Sequence, DecodeError>) -> &'static str {
        match r {
            Err(DecodeError::InvalidParam { param, .. }) => param,
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
    }

    #[test]
    fn the_kind_picks_the_sampler_and_refuses_the_other_kinds_knobs() {
        let p = SamplingParams::with_defaults(8);
        let d = Sequence::new(ModelKind::Diffusion, &[1, 2], &p, &special(), 64).unwrap();
        assert!(matches!(d, Sequence::Diffusion(_)));
        let a = Sequence::new(ModelKind::Autoregressive, &[1, 2], &p, &special(), 64).unwrap();
        assert!(matches!(a, Sequence::Autoregressive(_)));

        let mut top_k = p.clone();
        top_k.autoregressive.top_k = 5;
        assert_eq!(
            param_of(Sequence::new(
                ModelKind::Diffusion,
                &[1],
                &top_k,
                &special(),
                64
            )),
            "top_k"
        );
        assert!(Sequence::new(ModelKind::Autoregressive, &[1], &top_k, &special(), 64).is_ok());
        let mut penalty = p.clone();
        penalty.autoregressive.repetition_penalty = Some(1.1);
        assert_eq!(
            param_of(Sequence::new(
                ModelKind::Diffusion,
                &[1],
                &penalty,
                &special(),
                64
            )),
            "repetition_penalty"
        );
        penalty.autoregressive.repetition_penalty = Some(0.0);
        assert_eq!(
            param_of(Sequence::new(
                ModelKind::Autoregressive,
                &[1],
                &penalty,
                &special(),
                64
            )),
            "repetition_penalty"
        );

        let mut steps = p.clone();
        steps.diffusion.set_by_caller = vec!["steps"];
        assert_eq!(
            param_of(Sequence::new(
                ModelKind::Autoregressive,
                &[1],
                &steps,
                &special(),
                64
            )),
            "steps"
        );
    }

    #[test]
    fn validation_happens_when_the_sequence_is_built() {
        let p = SamplingParams::with_defaults(8);
        for kind in [ModelKind::Diffusion, ModelKind::Autoregressive] {
            assert_eq!(
                param_of(Sequence::new(kind, &[], &p, &special(), 64)),
                "prompt"
            );
            assert_eq!(
                param_of(Sequence::new(kind, &[1; 60], &p, &special(), 64)),
                "max_tokens"
            );
        }
    }

    #[test]
    fn choices_get_distinct_seeds_and_keep_the_rest() {
        let p = SamplingParams {
            seed: Some(7),
            ..SamplingParams::with_defaults(8)
        };
        assert_eq!(p.for_choice(0), p);
        let second = p.for_choice(1);
        assert_eq!(second.seed, Some(8));
        assert_eq!(second.diffusion_params().seed, Some(8));
        assert_eq!(second.ar_params().seed, Some(8));
        assert_eq!(
            SamplingParams::from_diffusion(p.diffusion_params()),
            p,
            "splitting and joining diffusion parameters loses nothing"
        );
    }
}
