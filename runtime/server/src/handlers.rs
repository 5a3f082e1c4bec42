//! Endpoint handlers: each turns a request into sequences for the engine and the
//! engine's events into an OpenAI response, streamed or whole.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::Instant;

use super::errors::ApiError;
use super::openai::{
    chat_logprobs, completion_logprobs, resolve, ChatRequest, CompletionRequest, GenerateRequest,
    Resolved,
};
use super::text::TextAssembler;
use super::{ApiJson, AppState, InflightGuard, ModelInfo};
use dfastllm_core::decoding::{
    ArParams, ArSequence, DiffusionParams, DiffusionSequence, Sequence, TokenLogprob,
};
use dfastllm_core::engine::{Event, Failure, Submission, SubmitError};
use dfastllm_core::tokenizer::TextTokenizer;

/// How one choice ended.
#[derive(Debug, Clone)]
struct Outcome {
    index: usize,
    text: String,
    finish_reason: &'static str,
    completion_tokens: usize,
    forward_passes: usize,
    steps: usize,
    /// Per answer token, when the request asked for log-probabilities.
    logprobs: Vec<TokenLogprob>,
}

/// A choice's decoding parameters, by the kind of model served.
enum ChoiceParams {
    Diffusion(DiffusionParams),
    Autoregressive(ArParams),
}

/// One answer to produce.
struct Choice {
    index: usize,
    prompt: Vec<u32>,
    params: ChoiceParams,
    stops: Vec<String>,
    started: Instant,
}

/// A validated request: prompts (as ids) times `n` choices each.
struct Job {
    prompts: Vec<Vec<u32>>,
    resolved: Resolved,
    started: Instant,
}

impl Job {
    fn new(info: &ModelInfo, prompts: Vec<Vec<u32>>, resolved: Resolved) -> Result<Self, ApiError> {
        if prompts.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt must not be empty"));
        }
        let diffusion = info.architecture.is_diffusion();
        resolved.check_kind(diffusion)?;
        for ids in &prompts {
            // Checked for every prompt before anything runs: a bad one fails the request
            // without leaving the others decoding.
            if diffusion {
                resolved.params.validate(ids.len(), info.max_context)?;
            } else {
                resolved
                    .ar_for_choice(0)
                    .validate(ids.len(), info.max_context)?;
            }
        }
        Ok(Self {
            prompts,
            resolved,
            started: Instant::now(),
        })
    }

    /// Every choice to run: each prompt `n` times, indexed as OpenAI numbers them.
    fn choices(&self, diffusion: bool) -> Vec<Choice> {
        let n = self.resolved.n;
        self.prompts
            .iter()
            .enumerate()
            .flat_map(|(p, ids)| {
                (0..n).map(move |c| Choice {
                    index: p * n + c,
                    prompt: ids.clone(),
                    params: if diffusion {
                        ChoiceParams::Diffusion(self.resolved.for_choice(c))
                    } else {
                        ChoiceParams::Autoregressive(self.resolved.ar_for_choice(c))
                    },
                    stops: self.resolved.stops.clone(),
                    started: self.started,
                })
            })
            .collect()
    }

    fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }
}

fn encode_prompt(info: &ModelInfo, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid(param, "the prompt must not be empty"));
    }
    info.tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid(param, e.to_string()))
}

/// How many of `ids` it takes to reach past `text_len` bytes of decoded text: the
/// tokens an answer cut by a stop string consumed, the stop string included.
fn tokens_through(tokenizer: &TextTokenizer, ids: &[u32], text_len: usize) -> usize {
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

/// Submits one sequence and follows it to the end, passing each new piece of text (and
/// the log-probabilities of the tokens behind it) to `on_piece`. Dropping the future
/// drops the event channel, which the engine notices at its next iteration and frees
/// the slot.
async fn run_choice(
    state: &AppState,
    info: &ModelInfo,
    choice: Choice,
    mut on_piece: impl FnMut(&str, &[TokenLogprob]),
) -> Result<Outcome, ApiError> {
    let Choice {
        index,
        prompt,
        params,
        stops,
        started,
    } = choice;
    let timeout = state.config.request_timeout_seconds;
    let deadline = started + Duration::from_secs(timeout);
    let sequence = match params {
        ChoiceParams::Diffusion(p) => Sequence::Diffusion(DiffusionSequence::new(
            &prompt,
            p,
            &info.special,
            info.max_context,
        )?),
        ChoiceParams::Autoregressive(p) => Sequence::Autoregressive(ArSequence::new(
            &prompt,
            p,
            &info.special,
            info.max_context,
        )?),
    };
    let (tx, mut rx) = unbounded_channel();
    state
        .engine
        .submit(Submission {
            sequence,
            deadline: Some(deadline.into_std()),
            events: tx,
        })
        .map_err(|e| match e {
            SubmitError::QueueFull => ApiError::QueueFull,
            SubmitError::Stopped => ApiError::Unavailable("the engine has stopped".into()),
        })?;
    let mut text = TextAssembler::new(&info.tokenizer, &stops);
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    let mut first_token: Option<Instant> = None;
    let tokenizer_error =
        |e: dfastllm_core::tokenizer::TokenizerError| ApiError::Internal(e.to_string());
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| ApiError::Timeout(timeout))?;
        match event {
            None => return Err(ApiError::Internal("the engine dropped the request".into())),
            Some(Event::Progress {
                token_ids,
                new_logprobs,
                forward_passes,
                steps,
            }) => {
                if first_token.is_none() && !token_ids.is_empty() {
                    first_token = Some(Instant::now());
                    state
                        .metrics
                        .time_to_first_token
                        .observe((Instant::now() - started).as_secs_f64());
                }
                let delta = text.push(&token_ids, false).map_err(tokenizer_error)?;
                let seen = logprobs.len();
                logprobs.extend(new_logprobs);
                if text.stopped() {
                    // A stop string ended the answer early; dropping `rx` cancels the rest.
                    let used = tokens_through(&info.tokenizer, &token_ids, text.text().len());
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
                });
            }
            Some(Event::Failed(Failure::Timeout)) => return Err(ApiError::Timeout(timeout)),
            Some(Event::Failed(Failure::Model(m))) => return Err(ApiError::Internal(m)),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage(prompt_tokens: usize, outcomes: &[Outcome]) -> (Value, Value) {
    let completion: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
    let passes: usize = outcomes.iter().map(|o| o.forward_passes).sum();
    let steps: usize = outcomes.iter().map(|o| o.steps).sum();
    let per_pass = if passes == 0 {
        0.0
    } else {
        completion as f64 / passes as f64
    };
    (
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}),
        json!({"forward_passes": passes, "steps": steps, "tokens_per_forward_pass": per_pass}),
    )
}

/// The three response dialects (completions, chat, plain `/generate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Completion,
    Chat,
    Generate,
}

struct Shape {
    dialect: Dialect,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Whether choices carry log-probabilities (else `"logprobs": null`).
    logprobs: bool,
    info: Arc<ModelInfo>,
}

fn token_text(tokenizer: &TextTokenizer, id: u32) -> String {
    tokenizer.token_display(id)
}

/// OpenAI's completions form: parallel lists of tokens, log-probabilities, the top
/// alternatives as `{text: logprob}` maps and each token's offset in the text.
fn completion_logprobs_json(tokenizer: &TextTokenizer, lps: &[TokenLogprob]) -> Value {
    let mut offset = 0;
    let mut tokens = Vec::with_capacity(lps.len());
    let mut offsets = Vec::with_capacity(lps.len());
    for lp in lps {
        let text = token_text(tokenizer, lp.token);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
    }
    let top: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let map: serde_json::Map<String, Value> = lp
                .top
                .iter()
                .map(|&(t, l)| (token_text(tokenizer, t), json!(l)))
                .collect();
            Value::Object(map)
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": lps.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// OpenAI's chat form: one entry per token with its bytes and alternatives.
fn chat_logprobs_json(tokenizer: &TextTokenizer, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, logprob: f32| json!({"token": token_text(tokenizer, id), "logprob": logprob, "bytes": tokenizer.token_bytes(id)});
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = entry(lp.token, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

impl Shape {
    fn new(
        dialect: Dialect,
        model: &str,
        include_usage: bool,
        logprobs: bool,
        info: Arc<ModelInfo>,
    ) -> Self {
        let prefix = match dialect {
            Dialect::Chat => "chatcmpl",
            _ => "cmpl",
        };
        Self {
            dialect,
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            model: model.to_string(),
            created: unix_now(),
            include_usage,
            logprobs,
            info,
        }
    }

    fn logprobs_of(&self, lps: &[TokenLogprob]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.dialect {
            Dialect::Chat => chat_logprobs_json(&self.info.tokenizer, lps),
            _ => completion_logprobs_json(&self.info.tokenizer, lps),
        }
    }

    fn whole(&self, prompt_tokens: usize, mut outcomes: Vec<Outcome>) -> Value {
        outcomes.sort_by_key(|o| o.index);
        let (usage, cost) = usage(prompt_tokens, &outcomes);
        match self.dialect {
            Dialect::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": outcomes.iter().map(|o| json!({
                    "index": o.index, "text": o.text, "logprobs": self.logprobs_of(&o.logprobs), "finish_reason": o.finish_reason,
                })).collect::<Vec<_>>(),
                "usage": usage, "dfastllm": cost,
            }),
            Dialect::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": outcomes.iter().map(|o| json!({
                    "index": o.index, "message": {"role": "assistant", "content": o.text},
                    "logprobs": self.logprobs_of(&o.logprobs), "finish_reason": o.finish_reason,
                })).collect::<Vec<_>>(),
                "usage": usage, "dfastllm": cost,
            }),
            Dialect::Generate => {
                let o = &outcomes[0];
                json!({"text": o.text, "finish_reason": o.finish_reason, "usage": usage, "dfastllm": cost})
            }
        }
    }

    fn chunk(&self, choices: Value) -> Value {
        let object = match self.dialect {
            Dialect::Chat => "chat.completion.chunk",
            _ => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices})
    }

    fn start(&self, index: usize) -> Option<Value> {
        (self.dialect == Dialect::Chat).then(|| {
            self.chunk(json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]))
        })
    }

    fn delta(&self, index: usize, text: &str, lps: &[TokenLogprob]) -> Value {
        let logprobs = self.logprobs_of(lps);
        match self.dialect {
            Dialect::Completion => self.chunk(json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}])),
            Dialect::Chat => self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}])),
            Dialect::Generate => json!({"text": text}),
        }
    }

    fn finish(&self, o: &Outcome, prompt_tokens: usize) -> Value {
        match self.dialect {
            Dialect::Completion => self.chunk(json!([{"index": o.index, "text": "", "logprobs": null, "finish_reason": o.finish_reason}])),
            Dialect::Chat => self.chunk(json!([{"index": o.index, "delta": {}, "logprobs": null, "finish_reason": o.finish_reason}])),
            Dialect::Generate => {
                let (usage, cost) = usage(prompt_tokens, std::slice::from_ref(o));
                json!({"text": "", "finish_reason": o.finish_reason, "usage": usage, "dfastllm": cost})
            }
        }
    }

    fn usage_chunk(&self, prompt_tokens: usize, outcomes: &[Outcome]) -> Option<Value> {
        if !self.include_usage || self.dialect == Dialect::Generate {
            return None;
        }
        let (usage, cost) = usage(prompt_tokens, outcomes);
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = usage;
        chunk["dfastllm"] = cost;
        Some(chunk)
    }
}

enum Item {
    Start(usize),
    Text(usize, String, Vec<TokenLogprob>),
    Finished(Outcome),
    Failed(ApiError),
}

/// Runs every choice of `job` at once and answers with one JSON body, or an SSE stream.
async fn respond(
    state: AppState,
    info: Arc<ModelInfo>,
    job: Job,
    stream: bool,
    shape: Shape,
) -> Result<Response, ApiError> {
    let guard = state.track();
    let diffusion = info.architecture.is_diffusion();
    if !stream {
        let runs = job
            .choices(diffusion)
            .into_iter()
            .map(|choice| run_choice(&state, &info, choice, |_, _| {}));
        let outcomes = futures::future::try_join_all(runs).await?;
        account(&state, job.prompt_tokens(), &outcomes);
        drop(guard);
        return Ok(Json(shape.whole(job.prompt_tokens(), outcomes)).into_response());
    }
    let (tx, rx) = unbounded_channel::<Item>();
    for choice in job.choices(diffusion) {
        let (state, info, tx) = (state.clone(), info.clone(), tx.clone());
        let index = choice.index;
        tokio::spawn(async move {
            let _ = tx.send(Item::Start(index));
            let text_tx = tx.clone();
            let run = run_choice(&state, &info, choice, |t, lps| {
                let _ = text_tx.send(Item::Text(index, t.to_string(), lps.to_vec()));
            });
            // A client that disconnects closes the stream's receiver: stop at once.
            let item = tokio::select! {
                result = run => match result {
                    Ok(outcome) => Item::Finished(outcome),
                    Err(e) => Item::Failed(e),
                },
                () = tx.closed() => return,
            };
            let _ = tx.send(item);
        });
    }
    drop(tx);
    Ok(sse(state, rx, shape, job.prompt_tokens(), guard).into_response())
}

fn account(state: &AppState, prompt_tokens: usize, outcomes: &[Outcome]) {
    state.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
    let completion: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
    state.metrics.generation_tokens.inc_by(completion as u64);
}

struct StreamState {
    state: AppState,
    rx: UnboundedReceiver<Item>,
    shape: Shape,
    prompt_tokens: usize,
    outcomes: Vec<Outcome>,
    pending: VecDeque<SseEvent>,
    finished: bool,
    _guard: InflightGuard,
}

fn sse(
    state: AppState,
    rx: UnboundedReceiver<Item>,
    shape: Shape,
    prompt_tokens: usize,
    guard: InflightGuard,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let init = StreamState {
        state,
        rx,
        shape,
        prompt_tokens,
        outcomes: Vec::new(),
        pending: VecDeque::new(),
        finished: false,
        _guard: guard,
    };
    let stream = futures::stream::unfold(init, |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok(event), st));
            }
            if st.finished {
                return None;
            }
            let data = |v: Value| SseEvent::default().data(v.to_string());
            match st.rx.recv().await {
                Some(Item::Start(index)) => st.pending.extend(st.shape.start(index).map(data)),
                Some(Item::Text(index, text, lps)) => st
                    .pending
                    .push_back(data(st.shape.delta(index, &text, &lps))),
                Some(Item::Finished(outcome)) => {
                    st.pending
                        .push_back(data(st.shape.finish(&outcome, st.prompt_tokens)));
                    st.outcomes.push(outcome);
                }
                Some(Item::Failed(e)) => {
                    // The status line is long gone: report in-band, as OpenAI does, and end.
                    st.state.metrics.reject(e.reject_reason());
                    st.pending.push_back(data(e.body()));
                    st.pending.push_back(SseEvent::default().data("[DONE]"));
                    st.finished = true;
                }
                None => {
                    account(&st.state, st.prompt_tokens, &st.outcomes);
                    st.pending.extend(
                        st.shape
                            .usage_chunk(st.prompt_tokens, &st.outcomes)
                            .map(data),
                    );
                    st.pending.push_back(SseEvent::default().data("[DONE]"));
                    st.finished = true;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

pub async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let info = state.ready_model()?;
    let resolved = resolve(&req.sampling, &state.config.decoding)?;
    let prompts = req
        .prompt
        .ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?
        .into_vec();
    let ids = prompts
        .iter()
        .map(|p| encode_prompt(&info, p, "prompt"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut resolved = resolved;
    resolved.logprobs = completion_logprobs(req.logprobs)?;
    let logprobs = resolved.logprobs.is_some();
    let job = Job::new(&info, ids, resolved)?;
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let shape = Shape::new(
        Dialect::Completion,
        req.model.as_deref().unwrap_or(&state.config.served_name),
        include_usage,
        logprobs,
        info.clone(),
    );
    respond(state.clone(), info, job, req.stream, shape).await
}

pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let info = state.ready_model()?;
    let resolved = resolve(&req.sampling, &state.config.decoding)?;
    let messages = req.chat_messages()?;
    let prompt = info
        .tokenizer
        .apply_chat_template(&messages, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let ids = encode_prompt(&info, &prompt, "messages")?;
    let mut resolved = resolved;
    resolved.logprobs = chat_logprobs(req.logprobs, req.top_logprobs)?;
    let logprobs = resolved.logprobs.is_some();
    let job = Job::new(&info, vec![ids], resolved)?;
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let shape = Shape::new(
        Dialect::Chat,
        req.model.as_deref().unwrap_or(&state.config.served_name),
        include_usage,
        logprobs,
        info.clone(),
    );
    respond(state.clone(), info, job, req.stream, shape).await
}

pub async fn generate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let info = state.ready_model()?;
    let resolved = resolve(&req.sampling, &state.config.decoding)?;
    if resolved.n != 1 {
        return Err(ApiError::invalid(
            "n",
            "/generate returns one answer; use /v1/completions for n > 1",
        ));
    }
    let prompt = req
        .prompt
        .ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?;
    let ids = encode_prompt(&info, &prompt, "prompt")?;
    let job = Job::new(&info, vec![ids], resolved)?;
    let shape = Shape::new(
        Dialect::Generate,
        &state.config.served_name,
        false,
        false,
        info.clone(),
    );
    respond(state.clone(), info, job, req.stream, shape).await
}

pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let created = unix_now();
    let max_len = state.model.get().map(|m| m.max_context);
    let data: Vec<Value> = state
        .served_names()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "dfastllm", "root": state.config.served_name, "max_model_len": max_len}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Refreshes the GPU memory gauges and returns what the device reports.
fn gpu(state: &AppState) -> Option<dfastllm_core::device::GpuInfo> {
    let gpu = state
        .model
        .get()
        .and_then(|i| dfastllm_core::device::gpu_info(&i.device));
    if let Some(g) = &gpu {
        state
            .metrics
            .gpu_memory_used_bytes
            .set(g.memory_used_bytes as i64);
        state
            .metrics
            .gpu_memory_total_bytes
            .set(g.memory_total_bytes as i64);
    }
    gpu
}

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let gpu = gpu(&state);
    let info = state.model.get();
    Json(json!({
        "status": "ok",
        "ready": info.is_some(),
        "draining": state.draining.load(std::sync::atomic::Ordering::SeqCst),
        "version": env!("CARGO_PKG_VERSION"),
        "model": state.config.served_name,
        "architecture": info.map(|i| i.architecture.name()),
        "device": info.map(|i| dfastllm_core::device::describe(&i.device)),
        "gpu": gpu,
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "queue": {"waiting": state.engine.waiting(), "capacity": state.config.max_queue},
        "max_concurrent_requests": state.config.max_concurrent_requests,
    }))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .requests_waiting
        .set(state.engine.waiting() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
