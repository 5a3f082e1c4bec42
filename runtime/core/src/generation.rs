//! One call from a prompt to text: tokenize (optionally through the chat template),
//! decode, detokenize, and report what it cost. The CLI's `generate` uses it today; the
//! server's engine reuses its pieces per request.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::decoding::{
    run_to_end, DecodeError, FinishReason, SamplingParams, Sequence, WithVerifier,
};
use crate::models::causal::CausalModel;
use crate::models::{self, DTypeChoice, LoadedModel, ModelError, ModelKind};
use crate::tokenizer::{ChatMessage, TextTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    /// Rendered with the model's chat template, assistant header appended.
    Chat(Vec<ChatMessage>),
    TokenIds(Vec<u32>),
}

/// The `--json` output of `dfastllm generate`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationOutput {
    pub text: String,
    /// Answer tokens only, up to the end-of-sequence token.
    pub token_ids: Vec<u32>,
    pub prompt_token_ids: Vec<u32>,
    pub forward_passes: usize,
    pub steps: usize,
    pub finish_reason: FinishReason,
    pub elapsed_ms: f64,
}

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct Generator {
    pub model: LoadedModel,
    pub tokenizer: TextTokenizer,
}

impl Generator {
    pub fn load(dir: &Path, device: &Device, dtype: DTypeChoice) -> Result<Self, GenerationError> {
        let (model, tokenizer) = models::load_checkpoint(dir, device, dtype)?;
        Ok(Self { model, tokenizer })
    }

    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, GenerationError> {
        Ok(match prompt {
            Prompt::Text(text) => self.tokenizer.encode_plain(text)?,
            Prompt::Chat(messages) => {
                let text = self.tokenizer.apply_chat_template(messages, true)?;
                self.tokenizer.encode(&text)?
            }
            Prompt::TokenIds(ids) => ids.clone(),
        })
    }

    /// Checks token ids against the model's vocabulary before they reach an embedding.
    fn check_ids(&self, ids: &[u32]) -> Result<(), GenerationError> {
        let vocab = self.model.network.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(DecodeError::InvalidParam {
                param: "prompt",
                message: format!("token id {bad} is outside the model's vocabulary of {vocab}"),
            }
            .into());
        }
        Ok(())
    }

    /// Generates one answer with the sampler of the model's kind.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
    ) -> Result<GenerationOutput, GenerationError> {
        self.generate_with(prompt, params, None)
    }

    /// Loads APD's verifier for this (diffusion) model: an autoregressive checkpoint
    /// whose tokenizer reads the model's ids as the same text (either vocabulary may add
    /// tokens of its own at the end).
    pub fn load_verifier(
        &self,
        dir: &Path,
        device: &Device,
    ) -> Result<CausalModel, GenerationError> {
        let invalid = |message: String| {
            GenerationError::Model(ModelError::InvalidFile {
                path: dir.join("config.json"),
                message,
            })
        };
        if self.model.network.kind() != ModelKind::Diffusion {
            return Err(invalid(format!(
                "the verifier runs beside a diffusion model, and {} is autoregressive",
                self.model.architecture
            )));
        }
        let verifier = models::load_causal(dir, device, self.model.dtype)?;
        let tokenizer = TextTokenizer::load(dir)?;
        if let Some((id, ours, theirs)) = self.tokenizer.first_different_token(&tokenizer) {
            return Err(invalid(format!(
                "its tokenizer is not the model's: token {id} is {theirs:?} there and {ours:?} in the model's"
            )));
        }
        Ok(verifier)
    }

    /// [`Self::generate`], with APD's verifier beside the model when given (needed by
    /// `apd.mode verifier`).
    pub fn generate_with(
        &self,
        prompt: &Prompt,
        params: &SamplingParams,
        verifier: Option<&CausalModel>,
    ) -> Result<GenerationOutput, GenerationError> {
        let prompt_ids = self.prompt_ids(prompt)?;
        self.check_ids(&prompt_ids)?;
        let start = Instant::now();
        let mut seq = Sequence::new(
            self.model.network.kind(),
            &prompt_ids,
            params,
            &self.model.special,
            self.model.network.max_context(),
        )?;
        let answer = match verifier {
            Some(verifier) => run_to_end(
                &WithVerifier {
                    model: &self.model,
                    verifier,
                },
                &mut seq,
            )?,
            None => run_to_end(&self.model, &mut seq)?,
        };
        let text = self.tokenizer.decode(&answer.token_ids)?;
        Ok(GenerationOutput {
            text,
            token_ids: answer.token_ids,
            prompt_token_ids: prompt_ids,
            forward_passes: answer.forward_passes,
            steps: answer.steps,
            finish_reason: answer.finish_reason,
            elapsed_ms: start.elapsed().as_secs_f64() * 1000.0,
        })
    }
}
