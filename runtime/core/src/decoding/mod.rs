//! Diffusion decoding: turning a fully masked answer region into text.
//!
//! LLaDA's convention: the answer starts as `gen_length` mask tokens and is decoded in
//! blocks of `block_length`, left to right. Each step runs one forward pass, proposes a
//! token for every masked position of the current block ([`confidence`]), and commits
//! the most confident few ([`diffusion`]). Positions after the current block never
//! commit. The parameters are checked here once, for the CLI and the API alike.

pub mod autoregressive;
pub mod confidence;
pub mod diffusion;
pub mod logprobs;
pub mod next_token;
pub mod sequence;
pub mod strategy;
pub mod verifier;

use serde::{Deserialize, Serialize};

pub use autoregressive::{ArParams, ArSequence};
pub use diffusion::{generate, step_batch, Answer, DiffusionSequence, FinishReason};
pub use logprobs::{TokenLogprob, MAX_TOP_LOGPROBS};
pub use sequence::{
    run_to_end, ArKnobs, DiffusionKnobs, SamplingParams, Sequence, StepState, Stepper, WithVerifier,
};
pub use strategy::{CommitRule, KvCacheMode, Mor};

/// How a step scores the positions it might commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Remasking {
    /// Probability of the proposed token (LLaDA's reference; Dream's `maskgit_plus`).
    #[default]
    #[serde(alias = "maskgit_plus")]
    #[value(alias = "maskgit_plus")]
    LowConfidence,
    /// Uniform random scores (LLaDA's `random`; Dream's `origin` unmasks at random too).
    #[serde(alias = "origin")]
    #[value(alias = "origin")]
    Random,
    /// Negative entropy of the position's distribution (Dream's `entropy`).
    Entropy,
    /// Top-1 minus top-2 probability (Dream's `topk_margin`).
    #[serde(alias = "topk_margin")]
    #[value(alias = "topk_margin")]
    Margin,
}

crate::named_enum!(Remasking, "remasking", false);

/// The knobs of one diffusion generation.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionParams {
    /// Answer length in tokens (the API's `max_tokens`).
    pub gen_length: usize,
    pub block_length: usize,
    /// Total denoising steps (forward passes) over all blocks.
    pub steps: usize,
    pub remasking: Remasking,
    /// 0 is argmax; above 0, Gumbel-max sampling at this temperature.
    pub temperature: f32,
    /// Nucleus sampling: with `temperature > 0`, draw only from the smallest set of
    /// tokens whose probability reaches `top_p` (1 = the whole vocabulary).
    pub top_p: f32,
    /// Seeds the Gumbel noise and random remasking; `None` draws a fresh seed.
    pub seed: Option<u64>,
    /// Stop once a committed EOS has only committed tokens before it: the answer can no
    /// longer change, so the remaining blocks would be wasted forward passes.
    pub stop_at_eos: bool,
    /// How many positions a step commits (APD); `Schedule` follows `steps`.
    pub commit: CommitRule,
    /// Refinement of filled blocks; `None` is off.
    pub mor: Option<Mor>,
    pub kv_cache: KvCacheMode,
}

impl DiffusionParams {
    /// The reference defaults for an answer of `gen_length` tokens: one token per step,
    /// blocks of 32 where they divide the answer, else a single block.
    pub fn with_defaults(gen_length: usize) -> Self {
        Self {
            gen_length,
            block_length: default_block_length(gen_length),
            steps: gen_length,
            remasking: Remasking::LowConfidence,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop_at_eos: true,
            commit: CommitRule::Schedule,
            mor: None,
            kv_cache: KvCacheMode::None,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.gen_length / self.block_length.max(1)
    }

    /// Checks the parameters against each other, the prompt and the model's context.
    pub fn validate(&self, prompt_len: usize, max_context: usize) -> Result<(), DecodeError> {
        let invalid = |param: &'static str, message: String| {
            Err(DecodeError::InvalidParam { param, message })
        };
        if prompt_len == 0 {
            return invalid("prompt", "the prompt must not be empty".into());
        }
        if self.gen_length == 0 {
            return invalid("max_tokens", "max_tokens must be at least 1".into());
        }
        if self.block_length == 0 || self.gen_length % self.block_length != 0 {
            return invalid(
                "block_length",
                format!(
                    "block_length ({}) must be at least 1 and divide max_tokens ({})",
                    self.block_length, self.gen_length
                ),
            );
        }
        let blocks = self.num_blocks();
        if self.steps == 0 || self.steps % blocks != 0 {
            return invalid(
                "steps",
                format!(
                    "steps ({}) must be a positive multiple of the number of blocks ({blocks} = max_tokens {} / block_length {})",
                    self.steps, self.gen_length, self.block_length
                ),
            );
        }
        if self.steps > self.gen_length {
            return invalid(
                "steps",
                format!(
                    "steps ({}) must not exceed max_tokens ({}): every step commits at least one token",
                    self.steps, self.gen_length
                ),
            );
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(
                "temperature",
                format!(
                    "temperature must be a finite number >= 0, got {}",
                    self.temperature
                ),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {}", self.top_p),
            );
        }
        match self.commit {
            CommitRule::Schedule => {}
            CommitRule::Verifier { mix, max_lookahead } => {
                if !(0.0..=1.0).contains(&mix) {
                    return invalid("apd.mix", format!("apd.mix must be in [0, 1], got {mix}"));
                }
                if max_lookahead == 0 {
                    return invalid(
                        "apd.max_lookahead",
                        "apd.max_lookahead must be at least 1".into(),
                    );
                }
            }
            CommitRule::Threshold {
                threshold,
                max_parallel,
            } => {
                if !(threshold > 0.0 && threshold <= 1.0) {
                    return invalid(
                        "apd.threshold",
                        format!("apd.threshold must be in (0, 1], got {threshold}"),
                    );
                }
                if max_parallel == 0 {
                    return invalid(
                        "apd.max_parallel",
                        "apd.max_parallel must be at least 1".into(),
                    );
                }
            }
            CommitRule::Factor {
                factor,
                max_parallel,
            } => {
                if !(factor.is_finite() && factor > 0.0) {
                    return invalid(
                        "apd.factor",
                        format!("apd.factor must be a number > 0, got {factor}"),
                    );
                }
                if max_parallel == 0 {
                    return invalid(
                        "apd.max_parallel",
                        "apd.max_parallel must be at least 1".into(),
                    );
                }
            }
        }
        if let Some(m) = self.mor {
            if m.min_recursions > m.max_recursions {
                return invalid(
                    "mor.min_recursions",
                    format!(
                        "mor.min_recursions ({}) must not exceed mor.max_recursions ({})",
                        m.min_recursions, m.max_recursions
                    ),
                );
            }
            if !(m.confidence_threshold > 0.0 && m.confidence_threshold <= 1.0) {
                return invalid(
                    "mor.confidence_threshold",
                    format!(
                        "mor.confidence_threshold must be in (0, 1], got {}",
                        m.confidence_threshold
                    ),
                );
            }
        }
        if prompt_len >= max_context {
            return invalid(
                "prompt",
                format!("the prompt ({prompt_len} tokens) does not fit the model's context of {max_context} tokens"),
            );
        }
        if prompt_len + self.gen_length > max_context {
            return invalid(
                "max_tokens",
                format!(
                    "the prompt ({prompt_len} tokens) plus max_tokens ({}) exceeds the model's context of {max_context} tokens",
                    self.gen_length
                ),
            );
        }
        Ok(())
    }
}

/// Blocks of 32 tokens (LLaDA's usual setting) when they tile the answer, otherwise
/// one block covering it.
pub fn default_block_length(gen_length: usize) -> usize {
    if gen_length > 32 && gen_length % 32 == 0 {
        32
    } else {
        gen_length
    }
}

/// Tokens to commit at each step of a block: an even split of `masked` over `steps`,
/// the first `masked % steps` steps taking one more (LLaDA's `get_num_transfer_tokens`).
pub fn transfer_schedule(masked: usize, steps: usize) -> Vec<usize> {
    let steps = steps.max(1);
    let (base, rem) = (masked / steps, masked % steps);
    (0..steps).map(|i| base + usize::from(i < rem)).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A request parameter is out of range; `param` is the API field name.
    #[error("{message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },
    #[error("forward pass failed: {0}")]
    Model(#[from] candle_core::Error),
    /// An invariant of the runtime itself broke (a bug, never the request's fault).
    #[error("internal error: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(gen: usize, block: usize, steps: usize) -> DiffusionParams {
        DiffusionParams {
            block_length: block,
            steps,
            ..DiffusionParams::with_defaults(gen)
        }
    }

    fn param_of(r: Result<(), DecodeError>) -> &'static str {
        match r {
            Err(DecodeError::InvalidParam { param, .. }) => param,
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
    }

    #[test]
    fn schedule_splits_evenly_with_remainder_first() {
        assert_eq!(transfer_schedule(8, 3), vec![3, 3, 2]);
        assert_eq!(transfer_schedule(8, 8), vec![1; 8]);
        assert_eq!(transfer_schedule(32, 4), vec![8; 4]);
        assert_eq!(transfer_schedule(5, 2).iter().sum::<usize>(), 5);
    }

    #[test]
    fn defaults_are_valid() {
        for gen in [1, 7, 32, 64, 96, 100, 256] {
            let p = DiffusionParams::with_defaults(gen);
            p.validate(4, 4096).unwrap();
            assert_eq!(p.steps, gen);
        }
        assert_eq!(default_block_length(256), 32);
        assert_eq!(default_block_length(100), 100);
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        assert_eq!(param_of(params(16, 8, 16).validate(0, 100)), "prompt");
        assert_eq!(param_of(params(0, 8, 16).validate(3, 100)), "max_tokens");
        assert_eq!(param_of(params(16, 5, 16).validate(3, 100)), "block_length");
        assert_eq!(param_of(params(16, 0, 16).validate(3, 100)), "block_length");
        assert_eq!(param_of(params(16, 4, 6).validate(3, 100)), "steps");
        assert_eq!(param_of(params(16, 8, 32).validate(3, 100)), "steps");
        assert_eq!(param_of(params(16, 8, 16).validate(90, 100)), "max_tokens");
        assert_eq!(param_of(params(16, 8, 16).validate(100, 100)), "prompt");
        let hot = DiffusionParams {
            temperature: -1.0,
            ..params(16, 8, 16)
        };
        assert_eq!(param_of(hot.validate(3, 100)), "temperature");
        let nan = DiffusionParams {
            temperature: f32::NAN,
            ..params(16, 8, 16)
        };
        assert_eq!(param_of(nan.validate(3, 100)), "temperature");
    }

    #[test]
    fn steps_error_explains_the_block_count() {
        let err = params(64, 16, 10)
            .validate(3, 1000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 = max_tokens 64 / block_length 16"), "{err}");
    }

    #[test]
    fn remasking_names_round_trip() {
        for r in [
            Remasking::LowConfidence,
            Remasking::Random,
            Remasking::Entropy,
            Remasking::Margin,
        ] {
            assert_eq!(r.to_string().parse::<Remasking>(), Ok(r));
        }
        assert!("best"
            .parse::<Remasking>()
            .unwrap_err()
            .contains("low_confidence"));
    }
}
