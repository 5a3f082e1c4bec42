//! From a validated request to answers: [`Job::new`] builds every choice's sequence up
//! front (so a bad prompt fails the request before anything runs), [`submit`] queues
//! them all or refuses the request whole (before a stream starts), and [`run_choice`]
//! follows one's events and turns settled tokens into text.

use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::Instant;

use crate::errors::ApiError;
use crate::openai::Resolved;
use crate::text::TextAssembler;
use crate::tools::{ToolCall, ToolPlan};
use crate::{AppState, ModelInfo};
use dfastllm_core::decoding::{Sequence, TokenLogprob};
use dfastllm_core::engine::{Event, Failure, Submission, SubmitError};
use dfastllm_core::tokenizer::{Shielded, SpecialsInContent, TextTokenizer, TokenizerError};

/// How one choice ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub index: usize,
    pub text: String,
    pub finish_reason: &'static str,
    pub completion_tokens: usize,
    pub forward_passes: usize,
    pub steps: usize,
    /// Per answer token, when the request asked for log-probabilities.
    pub logprobs: Vec<TokenLogprob>,
    /// The calls read from the answer (then `text` is what came before them).
    pub tool_calls: Vec<ToolCall>,
}

impl Outcome {
    /// Reads the finished answer for the calls `plan` asks for.
    pub fn settle_tools(&mut self, plan: &ToolPlan) {
        let settled = plan.settle(&self.text);
        if !settled.calls.is_empty() {
            self.finish_reason = plan.finish_reason();
        }
        self.text = settled.text;
        self.tool_calls = settled.calls;
    }
}

/// One answer to produce.
#[derive(Debug)]
pub struct Choice {
    pub index: usize,
    sequence: Sequence,
    stops: Vec<String>,
    started: Instant,
}

/// A validated request: each prompt `n` times, as sequences ready for the engine.
#[derive(Debug)]
pub struct Job {
    pub choices: Vec<Choice>,
    pub prompt_tokens: usize,
    /// Answers per prompt.
    n: usize,
}

/// A choice queued in the engine: what [`run_choice`] follows.
#[derive(Debug)]
pub struct Running {
    pub index: usize,
    stops: Vec<String>,
    started: Instant,
    /// The request's deadline tier: `--request-timeout-streaming-seconds` for a stream,
    /// `--request-timeout-seconds` otherwise.
    timeout_seconds: u64,
    events: UnboundedReceiver<Event>,
}

impl Job {
    pub fn new(
        info: &ModelInfo,
        prompts: Vec<Vec<u32>>,
        resolved: Resolved,
    ) -> Result<Self, ApiError> {
        if prompts.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt must not be empty"));
        }
        let started = Instant::now();
        let kind = info.architecture.kind();
        let n = resolved.n;
        let mut choices = Vec::with_capacity(prompts.len() * n);
        for (p, ids) in prompts.iter().enumerate() {
            for c in 0..n {
                let params = resolved.sampling.for_choice(c);
                choices.push(Choice {
                    // OpenAI numbers the choices prompt by prompt.
                    index: p * n + c,
                    sequence: Sequence::new(kind, ids, &params, &info.special, info.max_context)?,
                    stops: resolved.stops.clone(),
                    started,
                });
            }
        }
        Ok(Self {
            choices,
            prompt_tokens: prompts.iter().map(Vec::len).sum(),
            n,
        })
    }
}

/// How a prompt's text became text: a plain prompt, or a rendered chat template (which
/// wrote its own special tokens) whose user content went through `shielded` when
/// `--special-tokens-in-content text` is on.
#[derive(Debug, Clone, Copy)]
pub enum PromptKind<'a> {
    Plain,
    Chat(&'a Shielded),
}

pub fn encode_prompt(
    state: &AppState,
    info: &ModelInfo,
    text: &str,
    param: &str,
    kind: PromptKind<'_>,
) -> Result<Vec<u32>, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid(param, "the prompt must not be empty"));
    }
    let mode = state.config.special_tokens_in_content;
    let ids = match (kind, mode) {
        (PromptKind::Plain, mode) => info.tokenizer.encode_plain_as(text, mode),
        (PromptKind::Chat(_), SpecialsInContent::Parse) => info.tokenizer.encode(text),
        (PromptKind::Chat(shielded), SpecialsInContent::Text) => {
            info.tokenizer.encode_shielded(text, shielded)
        }
    }
    .map_err(|e| ApiError::invalid(param, e.to_string()))?;
    // A mask token in a diffusion prompt is a position the model fills in, as if it
    // were part of the answer: never let typed text put one there.
    if info.architecture.is_diffusion() && ids.contains(&info.special.mask_id) {
        let spelling = info
            .tokenizer
            .token_text(info.special.mask_id)
            .unwrap_or_else(|| format!("id {}", info.special.mask_id));
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt contains the mask token {spelling:?}, which a diffusion model would fill in as part of its answer; remove it, or start the server with --special-tokens-in-content text to read it as text"
            ),
        ));
    }
    Ok(ids)
}

/// How many of `ids` it takes to reach past `text_len` bytes of decoded text: the
/// tokens an answer cut by a stop string consumed, the stop string included.
pub fn tokens_through(tokenizer: &TextTokenizer, ids: &[u32], text_len: usize) -> usize {
    let reaches = |n: usize| {
        tokenizer
            .decode(&ids[..n])
            .map_or(true, |t| t.len() > text_len)
    };
    // Decoded length grows with the prefix: binary search for the first that reaches.
    let (mut lo, mut hi) = (0, ids.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if reaches(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Counts a finished request's tokens in the metrics.
pub fn account(state: &AppState, prompt_tokens: usize, outcomes: &[Outcome]) {
    state.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
    let completion: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
    state.metrics.generation_tokens.inc_by(completion as u64);
}

/// Queues every choice of `job` in the engine, or none: a request that can never fit
/// (more answers than the queue holds) is a 400 naming `n` or `prompt`; one that does
/// not fit now is a 429 with `Retry-After`, both before any answer (or stream) starts.
pub fn submit(state: &AppState, job: Job, stream: bool) -> Result<Vec<Running>, ApiError> {
    let capacity = state.engine.capacity();
    let wanted = job.choices.len();
    if wanted > capacity {
        let prompts = wanted / job.n.max(1);
        return Err(ApiError::invalid(
            if job.n > 1 { "n" } else { "prompt" },
            format!(
                "this request asks for {wanted} answers ({prompts} prompt(s) x n = {}); this server queues at most {capacity} at once (--max-queue), so it could never run: send fewer",
                job.n
            ),
        ));
    }
    let timeout_seconds = if stream {
        state.config.request_timeout_streaming_seconds
    } else {
        state.config.request_timeout_seconds
    };
    let timeout = Duration::from_secs(timeout_seconds);
    let mut running = Vec::with_capacity(wanted);
    let mut submissions = Vec::with_capacity(wanted);
    for choice in job.choices {
        let (tx, rx) = unbounded_channel();
        submissions.push(Submission {
            sequence: choice.sequence,
            deadline: Some((choice.started + timeout).into_std()),
            events: tx,
        });
        running.push(Running {
            index: choice.index,
            stops: choice.stops,
            started: choice.started,
            timeout_seconds,
            events: rx,
        });
    }
    state.engine.submit_all(submissions).map_err(|e| match e {
        SubmitError::QueueFull => ApiError::QueueFull,
        SubmitError::Stopped => ApiError::Unavailable("the engine has stopped".into()),
        SubmitError::BreakerOpen { retry_after } => ApiError::CircuitOpen {
            // Rounded up: a client retrying at the hint finds the window over.
            retry_after_seconds: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
        },
        SubmitError::MemoryCritical { used_percent } => ApiError::MemoryFull { used_percent },
    })?;
    Ok(running)
}

/// Follows one queued choice to the end, passing each new piece of text (and the
/// log-probabilities of the tokens behind it) to `on_piece`. Dropping the future drops
/// the event channel, which the engine notices (in the queue or at its next iteration)
/// and frees the place.
pub async fn run_choice(
    state: &AppState,
    info: &ModelInfo,
    choice: Running,
    mut on_piece: impl FnMut(&str, &[TokenLogprob]),
) -> Result<Outcome, ApiError> {
    let Running {
        index,
        stops,
        started,
        timeout_seconds: timeout,
        events: mut rx,
    } = choice;
    let deadline = started + Duration::from_secs(timeout);
    let mut text = TextAssembler::new(&info.tokenizer, &stops);
    let mut settled: Vec<u32> = Vec::new();
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    let mut first_token: Option<Instant> = None;
    let tokenizer_error = |e: TokenizerError| ApiError::Internal(e.to_string());
    let grace_over = state.grace_over();
    tokio::pin!(grace_over);
    loop {
        let event = tokio::select! {
            event = tokio::time::timeout_at(deadline, rx.recv()) => {
                event.map_err(|_| ApiError::Timeout(timeout))?
            }
            () = &mut grace_over => return Err(ApiError::Unavailable(
                "the server shut down before this answer finished (its shutdown grace period ran out); retry on another replica".into(),
            )),
        };
        match event {
            None => return Err(ApiError::Internal("the engine dropped the request".into())),
            Some(Event::Progress {
                new_token_ids,
                new_logprobs,
                forward_passes,
                steps,
            }) => {
                settled.extend(new_token_ids);
                if first_token.is_none() && !settled.is_empty() {
                    first_token = Some(Instant::now());
                    state
                        .metrics
                        .time_to_first_token
                        .observe((Instant::now() - started).as_secs_f64());
                }
                let delta = text.push(&settled, false).map_err(tokenizer_error)?;
                let seen = logprobs.len();
                logprobs.extend(new_logprobs);
                if text.stopped() {
                    // A stop string ended the answer early; dropping `rx` cancels the rest.
                    let used = tokens_through(&info.tokenizer, &settled, text.text().len());
                    logprobs.truncate(used);
                    if !delta.is_empty() || logprobs.len() > seen {
                        on_piece(&delta, &logprobs[seen.min(logprobs.len())..]);
                    }
                    return Ok(Outcome {
                        index,
                        text: text.text().to_string(),
                        finish_reason: "stop",
                        completion_tokens: used,
                        forward_passes,
                        steps,
                        logprobs,
                        tool_calls: Vec::new(),
                    });
                }
                if !delta.is_empty() || logprobs.len() > seen {
                    on_piece(&delta, &logprobs[seen..]);
                }
            }
            Some(Event::Done(done)) => {
                let answer = &done.answer;
                let delta = text
                    .push(&answer.token_ids, true)
                    .map_err(tokenizer_error)?;
                let mut tokens = answer.token_ids.len();
                if text.stopped() {
                    tokens = tokens_through(&info.tokenizer, &answer.token_ids, text.text().len());
                    logprobs.truncate(tokens);
                }
                if !delta.is_empty() {
                    on_piece(&delta, &[]);
                }
                if let (Some(first), true) = (first_token, tokens > 1) {
                    let per_token = (Instant::now() - first).as_secs_f64() / (tokens - 1) as f64;
                    state.metrics.time_per_output_token.observe(per_token);
                }
                return Ok(Outcome {
                    index,
                    text: text.text().to_string(),
                    finish_reason: if text.stopped() {
                        "stop"
                    } else {
                        answer.finish_reason.as_str()
                    },
                    completion_tokens: tokens,
                    forward_passes: answer.forward_passes,
                    steps: answer.steps,
                    logprobs,
                    tool_calls: Vec::new(),
                });
            }
            Some(Event::Failed(Failure::Timeout)) => return Err(ApiError::Timeout(timeout)),
            Some(Event::Failed(Failure::Model(m))) => return Err(ApiError::ModelFailed(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::model_info;
    use crate::openai::{resolve, Sampling};
    use dfastllm_core::models::Architecture;

    fn resolved(json: serde_json::Value) -> Resolved {
        let sampling: Sampling = serde_json::from_value(json).unwrap();
        resolve(&sampling, &Default::default(), &Default::default()).unwrap()
    }

    fn param_of(r: Result<Job, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_job_numbers_its_choices_prompt_by_prompt() {
        let (_dir, info) = model_info(Architecture::Llada);
        let job = Job::new(
            &info,
            vec![vec![1, 2], vec![3, 4, 5]],
            resolved(serde_json::json!({"n": 2, "max_tokens": 4})),
        )
        .unwrap();
        let indices: Vec<usize> = job.choices.iter().map(|c| c.index).collect();
        assert_eq!(indices, [0, 1, 2, 3]);
        assert_eq!(job.prompt_tokens, 5);
        assert!(job
            .choices
            .iter()
            .all(|c| matches!(c.sequence, Sequence::Diffusion(_))));
    }

    #[test]
    fn a_job_refuses_what_the_served_kind_cannot_do_before_anything_runs() {
        let (_dir, diffusion) = model_info(Architecture::Llada);
        let top_k = resolved(serde_json::json!({"top_k": 3}));
        assert_eq!(
            param_of(Job::new(&diffusion, vec![vec![1]], top_k.clone())),
            "top_k"
        );
        let (_dir, causal) = model_info(Architecture::Qwen2);
        let job = Job::new(&causal, vec![vec![1]], top_k).unwrap();
        assert!(matches!(
            job.choices[0].sequence,
            Sequence::Autoregressive(_)
        ));
        let steps = resolved(serde_json::json!({"steps": 4, "max_tokens": 4}));
        assert_eq!(param_of(Job::new(&causal, vec![vec![1]], steps)), "steps");
        // The second prompt is too long for the context: the whole request fails.
        let long = vec![1; info_context(&causal)];
        let r = Job::new(
            &causal,
            vec![vec![1], long],
            resolved(serde_json::json!({})),
        );
        assert_eq!(param_of(r), "prompt");
        assert_eq!(
            param_of(Job::new(&causal, vec![], resolved(serde_json::json!({})))),
            "prompt"
        );
    }

    fn info_context(info: &ModelInfo) -> usize {
        info.max_context
    }

    #[test]
    fn tokens_through_counts_the_tokens_a_cut_answer_used() {
        let (_dir, info) = model_info(Architecture::Qwen2);
        // The demo tokenizer is byte-level: one token per ASCII character.
        let ids = info.tokenizer.encode("hello world").unwrap();
        assert_eq!(ids.len(), 11);
        assert_eq!(tokens_through(&info.tokenizer, &ids, 5), 6);
        assert_eq!(tokens_through(&info.tokenizer, &ids, 0), 1);
        assert_eq!(
            tokens_through(&info.tokenizer, &ids, 11),
            11,
            "never past the end"
        );
    }
}
