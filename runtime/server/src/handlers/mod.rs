//! The endpoints: each validates its request into a [`Job`] ([`choice`]), runs it,
//! and answers with one body or a stream ([`responses`], [`sse`]).

mod choice;
mod responses;
mod sse;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio::sync::mpsc::unbounded_channel;

use crate::errors::ApiError;
use crate::openai::{
    chat_logprobs, completion_logprobs, resolve, ChatRequest, CompletionRequest, GenerateRequest,
};
use crate::response_format::ResponseFormat;
use crate::tools::ToolPlan;
use crate::{ApiJson, AppState, ModelInfo};
use choice::{account, encode_prompt, run_choice, submit, Job, Outcome, PromptKind};
use dfastllm_core::tokenizer::{Shielded, SpecialsInContent};
use responses::{unix_now, Dialect, Shape};
use sse::{sse, Frames, Item};

/// A finished answer made whole: the `lead` the prompt ended with put back in front,
/// the calls a tool plan asks for read out, and a `json_object` answer checked.
fn settle(state: &AppState, o: &mut Outcome, tools: Option<&ToolPlan>, lead: &str) {
    if let Some(plan) = tools {
        o.settle_tools(plan);
        state.metrics.tool_calls.inc_by(o.tool_calls.len() as u64);
    }
    if !lead.is_empty() {
        o.text.insert_str(0, lead);
        if !crate::response_format::is_json_object(&o.text) {
            state.metrics.response_format_invalid.inc();
        }
    }
}

/// Runs every choice of `job` at once and answers with one JSON body, or an SSE stream.
async fn respond(
    state: AppState,
    info: Arc<ModelInfo>,
    job: Job,
    stream: bool,
    shape: Shape,
    tools: Option<Arc<ToolPlan>>,
    lead: &'static str,
) -> Result<Response, ApiError> {
    let guard = state.track();
    let prompt_tokens = job.prompt_tokens;
    // Queued before a stream starts: a refusal is an HTTP status, not an in-band error.
    let running = submit(&state, job, stream)?;
    if !stream {
        let runs = running
            .into_iter()
            .map(|choice| run_choice(&state, &info, choice, |_, _| {}));
        let mut outcomes = futures::future::try_join_all(runs).await?;
        for o in &mut outcomes {
            settle(&state, o, tools.as_deref(), lead);
        }
        account(&state, prompt_tokens, &outcomes);
        drop(guard);
        let body = shape.whole(prompt_tokens, &mut outcomes);
        return Ok(Json(body).into_response());
    }
    let (tx, rx) = unbounded_channel::<Item>();
    for choice in running {
        let (state, info, tx) = (state.clone(), info.clone(), tx.clone());
        let tools = tools.clone();
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
                    Ok(mut outcome) => {
                        settle(&state, &mut outcome, tools.as_deref(), lead);
                        Item::Finished(outcome)
                    }
                    Err(e) => Item::Failed(e),
                },
                () = tx.closed() => return,
            };
            let _ = tx.send(item);
        });
    }
    drop(tx);
    let frames = Frames::new(shape, prompt_tokens, tools, lead);
    Ok(sse(state, rx, frames, guard).into_response())
}

pub async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let info = state.ready_model()?;
    let resolved = resolve(
        &req.sampling,
        &state.config.decoding,
        &info.sampling_defaults,
    )?;
    let prompts = req
        .prompt
        .ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?
        .into_vec();
    let ids = prompts
        .iter()
        .map(|p| encode_prompt(&state, &info, p, "prompt", PromptKind::Plain))
        .collect::<Result<Vec<_>, _>>()?;
    let mut resolved = resolved;
    resolved.sampling.logprobs = completion_logprobs(req.logprobs)?;
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let output = Output {
        dialect: Dialect::Completion,
        model: req.model.as_deref(),
        include_usage,
        stream: req.stream,
        tools: None,
        lead: "",
    };
    run(state, info, ids, resolved, output).await
}

/// How a request wants its answer.
struct Output<'a> {
    dialect: Dialect,
    /// The name the client asked for (answers echo it), else the served name.
    model: Option<&'a str>,
    include_usage: bool,
    stream: bool,
    /// Chat with tools: how the answer is read for calls.
    tools: Option<ToolPlan>,
    /// What the answer is started with (`response_format: json_object`'s `{`).
    lead: &'static str,
}

/// Builds the job of validated prompts and answers it in the request's dialect.
async fn run(
    state: AppState,
    info: Arc<ModelInfo>,
    prompts: Vec<Vec<u32>>,
    resolved: crate::openai::Resolved,
    output: Output<'_>,
) -> Result<Response, ApiError> {
    let logprobs = resolved.sampling.logprobs.is_some();
    let job = Job::new(&info, prompts, resolved)?;
    let shape = Shape::new(
        output.dialect,
        output.model.unwrap_or(&state.config.served_name),
        output.include_usage,
        logprobs,
        info.clone(),
    );
    respond(
        state.clone(),
        info,
        job,
        output.stream,
        shape,
        output.tools.map(Arc::new),
        output.lead,
    )
    .await
}

pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let info = state.ready_model()?;
    let resolved = resolve(
        &req.sampling,
        &state.config.decoding,
        &info.sampling_defaults,
    )?;
    let mut messages = req.chat_messages()?;
    let format = state
        .config
        .tool_call_parser
        .resolve(info.tokenizer.tool_call_format());
    let tools = crate::tools::plan(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        format,
    )?;
    let prefix = tools.as_ref().map_or("", ToolPlan::prefix);
    let format = ResponseFormat::parse(req.response_format.as_ref())?;
    if format != ResponseFormat::Text && tools.is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "response_format json_object cannot be combined with tools (a tool call is not the JSON answer); send tool_choice none or leave response_format out",
        ));
    }
    let lead = format.lead();
    // Read as text, typed special-token spellings go through the template as
    // placeholders and come back as text tokens (dfastllm_core::tokenizer::literal).
    let mut shielded = Shielded::default();
    if state.config.special_tokens_in_content == SpecialsInContent::Text {
        for m in &mut messages {
            m.content = info.tokenizer.shield(&m.content, &mut shielded);
        }
    }
    let prompt = match (req.add_generation_prompt, req.continue_final_message) {
        (Some(true), Some(true)) => {
            return Err(ApiError::invalid(
                "continue_final_message",
                "continue_final_message and add_generation_prompt cannot both be true",
            ))
        }
        (_, Some(true)) if !prefix.is_empty() => {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required or named tool_choice starts a new assistant turn; it cannot continue_final_message",
            ))
        }
        (_, Some(true)) if !lead.is_empty() => {
            return Err(ApiError::invalid(
                "response_format",
                "response_format json_object starts a new answer; it cannot continue_final_message",
            ))
        }
        (_, Some(true)) => {
            if messages.last().map(|m| m.role.as_str()) != Some("assistant") {
                return Err(ApiError::invalid(
                    "continue_final_message",
                    "continue_final_message needs the last message to be the assistant's",
                ));
            }
            info.tokenizer.continue_final_message(
                &messages,
                req.tools.as_ref(),
                req.documents.as_ref(),
            )
        }
        (add, _) => info.tokenizer.apply_chat_template_with(
            &messages,
            add.unwrap_or(true),
            req.tools.as_ref(),
            req.documents.as_ref(),
        ),
    }
    .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    // A required or named tool_choice: the answer starts as the call; json_object: as
    // an object.
    let prompt = prompt + prefix + lead;
    let ids = encode_prompt(
        &state,
        &info,
        &prompt,
        "messages",
        PromptKind::Chat(&shielded),
    )?;
    let mut resolved = resolved;
    resolved.sampling.logprobs = chat_logprobs(req.logprobs, req.top_logprobs)?;
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let output = Output {
        dialect: Dialect::Chat,
        model: req.model.as_deref(),
        include_usage,
        stream: req.stream,
        tools,
        lead,
    };
    run(state, info, vec![ids], resolved, output).await
}

pub async fn generate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let info = state.ready_model()?;
    let resolved = resolve(
        &req.sampling,
        &state.config.decoding,
        &info.sampling_defaults,
    )?;
    if resolved.n != 1 {
        return Err(ApiError::invalid(
            "n",
            "/generate returns one answer; use /v1/completions for n > 1",
        ));
    }
    let prompt = req
        .prompt
        .ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?;
    let ids = encode_prompt(&state, &info, &prompt, "prompt", PromptKind::Plain)?;
    let output = Output {
        dialect: Dialect::Generate,
        model: None,
        include_usage: false,
        stream: req.stream,
        tools: None,
        lead: "",
    };
    run(state, info, vec![ids], resolved, output).await
}

#[derive(Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelCard>,
}

/// One served name, with vLLM's `root` and `max_model_len`.
#[derive(Serialize)]
pub struct ModelCard {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    root: String,
    max_model_len: Option<usize>,
}

pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let created = unix_now();
    let max_model_len = state.model.get().map(|m| m.max_context);
    let data = state
        .served_names()
        .into_iter()
        .map(|id| ModelCard {
            id,
            object: "model",
            created,
            owned_by: "dfastllm",
            root: state.config.served_name.clone(),
            max_model_len,
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
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

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    ready: bool,
    draining: bool,
    version: &'static str,
    model: String,
    architecture: Option<&'static str>,
    device: Option<String>,
    gpu: Option<dfastllm_core::device::GpuInfo>,
    uptime_seconds: f64,
    queue: Queue,
    max_concurrent_requests: usize,
    /// `closed`, `open` or `half_open`.
    circuit_breaker: &'static str,
}

#[derive(Serialize)]
pub struct Queue {
    waiting: usize,
    capacity: usize,
}

/// The `Authorization` header's text, if it is text.
fn authorization(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Liveness for anyone; the detail (model, device, queue, breaker) only for a key
/// holder when API keys are on: a bare `{"status": "ok"}` to everyone else.
pub async fn health(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if !state.key_holder(authorization(&headers)) {
        return Json(serde_json::json!({"status": "ok"})).into_response();
    }
    let gpu = gpu(&state);
    let info = state.model.get();
    Json(Health {
        status: "ok",
        ready: info.is_some(),
        draining: state.draining.load(std::sync::atomic::Ordering::SeqCst),
        version: env!("CARGO_PKG_VERSION"),
        model: state.config.served_name.clone(),
        architecture: info.map(|i| i.architecture.name()),
        device: info.map(|i| dfastllm_core::device::describe(&i.device)),
        gpu,
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        queue: Queue {
            waiting: state.engine.waiting(),
            capacity: state.config.max_queue,
        },
        max_concurrent_requests: state.config.max_concurrent_requests,
        circuit_breaker: state.engine.breaker_state().name(),
    })
    .into_response()
}

#[derive(Serialize)]
pub struct Readiness {
    status: &'static str,
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let (code, status) = if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    (code, Json(Readiness { status })).into_response()
}

pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Err(e) = state.check_metrics_key(authorization(&headers)) {
        return e.into_response();
    }
    state
        .metrics
        .requests_waiting
        .set(state.engine.waiting() as i64);
    state.engine.memory().publish(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// A loaded tiny demo model's [`ModelInfo`], for the handler pieces' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use dfastllm_core::demo::{write_demo_model, DemoSpec};
    use dfastllm_core::models::{self, Architecture, DTypeChoice};
    use dfastllm_core::tokenizer::TextTokenizer;

    use crate::ModelInfo;

    pub fn model_info(arch: Architecture) -> (tempfile::TempDir, ModelInfo) {
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(&DemoSpec::tiny(arch), dir.path()).unwrap();
        let device = candle_core::Device::Cpu;
        let model = models::load(dir.path(), &device, DTypeChoice::Auto).unwrap();
        let info = ModelInfo {
            tokenizer: TextTokenizer::load(dir.path()).unwrap(),
            special: model.special.clone(),
            max_context: model.network.max_context(),
            architecture: model.architecture,
            device,
            sampling_defaults: model.sampling_defaults.clone(),
        };
        (dir, info)
    }
}
