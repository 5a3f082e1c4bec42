//! Request bodies of the OpenAI-compatible endpoints and their validation into
//! decoding parameters. Unknown fields are ignored, as OpenAI's clients send many.

use serde::Deserialize;

use super::errors::ApiError;
use crate::config::{
    default_mor, DecodingDefaults, DEFAULT_APD_FACTOR, DEFAULT_APD_THRESHOLD, DEFAULT_MAX_PARALLEL,
};
use dfastllm_core::decoding::MAX_TOP_LOGPROBS;
use dfastllm_core::decoding::{
    default_block_length, ArKnobs, CommitRule, DiffusionKnobs, KvCacheMode, Mor, Remasking,
    SamplingParams,
};
use dfastllm_core::models::generation_config::SamplingDefaults;
use dfastllm_core::tokenizer::ChatMessage;

pub const MAX_N: u32 = 8;
pub const MAX_STOP_STRINGS: usize = 4;

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Sampling fields shared by every generation endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    /// Autoregressive extensions (vLLM's names): `top_k` (0 or -1 is off), token ids
    /// that end the answer, and `ignore_eos` for fixed-length benchmarks.
    pub top_k: Option<i64>,
    /// vLLM's and HF's `repetition_penalty` (1 is off).
    pub repetition_penalty: Option<f64>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub ignore_eos: Option<bool>,
    /// Diffusion extensions.
    pub steps: Option<i64>,
    pub block_length: Option<i64>,
    pub remasking: Option<String>,
    /// Fast decoding (docs/decoding.md): `{"mode": "threshold"|"factor"|"off",
    /// "threshold", "factor", "max_parallel"}`.
    pub apd: Option<ApdRequest>,
    /// `{"enabled", "min_recursions", "max_recursions", "confidence_threshold"}`.
    pub mor: Option<MorRequest>,
    /// `none`, `prefix` or `dual`.
    pub kv_cache: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApdRequest {
    pub mode: Option<String>,
    pub threshold: Option<f64>,
    pub factor: Option<f64>,
    pub max_parallel: Option<i64>,
    /// The verifier's mixture weight of the diffusion model.
    pub mix: Option<f64>,
    pub max_lookahead: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MorRequest {
    pub enabled: Option<bool>,
    pub min_recursions: Option<i64>,
    pub max_recursions: Option<i64>,
    pub confidence_threshold: Option<f64>,
}

/// The request's APD over the deployment's: unset fields keep the deployment's values.
/// `verifier` is the loaded verifier's rule (`None`: no verifier model is loaded).
fn resolve_apd(
    req: &ApdRequest,
    default: CommitRule,
    verifier: Option<CommitRule>,
) -> Result<CommitRule, ApiError> {
    let (d_threshold, d_factor, d_max) = match default {
        CommitRule::Schedule | CommitRule::Verifier { .. } => (
            DEFAULT_APD_THRESHOLD as f32,
            DEFAULT_APD_FACTOR as f32,
            DEFAULT_MAX_PARALLEL,
        ),
        CommitRule::Threshold {
            threshold,
            max_parallel,
        } => (threshold, DEFAULT_APD_FACTOR as f32, max_parallel),
        CommitRule::Factor {
            factor,
            max_parallel,
        } => (DEFAULT_APD_THRESHOLD as f32, factor, max_parallel),
    };
    let max_parallel = match req.max_parallel {
        None => d_max,
        Some(m) if m >= 1 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                "apd.max_parallel",
                format!("apd.max_parallel must be at least 1, got {m}"),
            ))
        }
    };
    let mode = req.mode.as_deref().unwrap_or(match default {
        CommitRule::Factor { .. } => "factor",
        CommitRule::Verifier { .. } => "verifier",
        _ => "threshold",
    });
    if mode != "verifier" {
        for (param, set) in [
            ("apd.mix", req.mix.is_some()),
            ("apd.max_lookahead", req.max_lookahead.is_some()),
        ] {
            if set {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} is only used by apd.mode verifier"),
                ));
            }
        }
    }
    match mode {
        "off" => Ok(CommitRule::Schedule),
        "verifier" => {
            let Some(CommitRule::Verifier { mix, max_lookahead }) = verifier else {
                return Err(ApiError::invalid(
                    "apd.mode",
                    "apd.mode verifier needs a verifier model, and this deployment has none \
                     (dfastllm serve --apd-verifier-model DIR)",
                ));
            };
            let max_lookahead = match req.max_lookahead {
                None => max_lookahead,
                Some(m) if m >= 1 => m as usize,
                Some(m) => {
                    return Err(ApiError::invalid(
                        "apd.max_lookahead",
                        format!("apd.max_lookahead must be at least 1, got {m}"),
                    ))
                }
            };
            Ok(CommitRule::Verifier {
                mix: req.mix.map_or(mix, |m| m as f32),
                max_lookahead,
            })
        }
        "threshold" => Ok(CommitRule::Threshold {
            threshold: req.threshold.map_or(d_threshold, |t| t as f32),
            max_parallel,
        }),
        "factor" => Ok(CommitRule::Factor {
            factor: req.factor.map_or(d_factor, |f| f as f32),
            max_parallel,
        }),
        other => Err(ApiError::invalid(
            "apd.mode",
            format!("unknown apd.mode {other:?} (expected threshold, factor, verifier or off)"),
        )),
    }
}

fn resolve_mor(req: &MorRequest, default: Option<Mor>) -> Result<Option<Mor>, ApiError> {
    if !req.enabled.unwrap_or(true) {
        return Ok(None);
    }
    let base = default.unwrap_or_else(default_mor);
    let count = |param: &str, v: Option<i64>, d: usize| match v {
        None => Ok(d),
        Some(n) if (0..=16).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(
            param,
            format!("{param} must be between 0 and 16, got {n}"),
        )),
    };
    Ok(Some(Mor {
        min_recursions: count(
            "mor.min_recursions",
            req.min_recursions,
            base.min_recursions,
        )?,
        max_recursions: count(
            "mor.max_recursions",
            req.max_recursions,
            base.max_recursions,
        )?,
        confidence_threshold: req
            .confidence_threshold
            .map_or(base.confidence_threshold, |t| t as f32),
    }))
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<OneOrMany>,
    /// Completions' form: how many alternatives to list per token (0 lists none).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Chat content is a string or a list of parts of which we take the text ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant turn's calls, and a `tool` turn's answer to one (`crate::tools`).
    pub tool_calls: Option<serde_json::Value>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<RequestMessage>,
    /// Chat's form: a switch, and the alternatives per token in `top_logprobs`.
    pub logprobs: Option<bool>,
    /// vLLM's chat extensions: end the prompt with the assistant header (default), or
    /// continue the final assistant message instead.
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    /// OpenAI's function `tools` and RAG `documents`: passed to the chat template, which
    /// describes them to the model; calls in the answer are read back (`crate::tools`).
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"type": "text" | "json_object"}` (`crate::response_format`).
    pub response_format: Option<serde_json::Value>,
    pub documents: Option<serde_json::Value>,
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /generate`: plain JSON for scripts and load balancers' health checks.
#[derive(Debug, Clone, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Option<String>,
    #[serde(default)]
    pub stream: bool,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl ChatRequest {
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !matches!(
                    m.role.as_str(),
                    "system" | "user" | "assistant" | "developer" | "tool"
                ) {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("unknown role {:?}", m.role),
                    ));
                }
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content"),
                                format!(
                                    "content parts of type {:?} are not supported by a text model",
                                    p.kind
                                ),
                            ));
                        }
                        parts
                            .iter()
                            .filter_map(|p| p.text.clone())
                            .collect::<Vec<_>>()
                            .join("")
                    }
                };
                // "developer" is OpenAI's newer name for the system role.
                let role = if m.role == "developer" {
                    "system"
                } else {
                    m.role.as_str()
                };
                let mut message = ChatMessage::new(role, &content);
                if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_null()) {
                    if m.role != "assistant" {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].tool_calls"),
                            "only assistant messages carry tool_calls",
                        ));
                    }
                    let param = format!("messages[{i}].tool_calls");
                    message.tool_calls = Some(crate::tools::history_calls(calls, &param)?);
                }
                message.tool_call_id = m.tool_call_id.clone();
                message.name = m.name.clone();
                Ok(message)
            })
            .collect()
    }
}

/// Validated sampling: the decoding parameters of every choice, `n`, and stop strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub sampling: SamplingParams,
    pub n: usize,
    pub stops: Vec<String>,
}

/// `logprobs` of /v1/completions: an alternative count, 0 to [`MAX_TOP_LOGPROBS`].
pub fn completion_logprobs(value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Ok(Some(k as usize)),
        Some(k) => Err(ApiError::invalid(
            "logprobs",
            format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        )),
    }
}

/// `logprobs` + `top_logprobs` of /v1/chat/completions.
pub fn chat_logprobs(logprobs: Option<bool>, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    match (logprobs.unwrap_or(false), top) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        )),
        (true, None) => Ok(Some(0)),
        (true, Some(k)) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Ok(Some(k as usize)),
        (true, Some(k)) => Err(ApiError::invalid(
            "top_logprobs",
            format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        )),
    }
}

fn positive(param: &str, value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v >= 1 => Ok(Some(v as usize)),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("{param} must be at least 1, got {v}"),
        )),
    }
}

/// Checks the fields OpenAI bounds and fills the diffusion knobs from the deployment's
/// defaults. Combinations the sampler rejects (a block length that does not divide
/// max_tokens, ...) are caught when the sequence is built, with the same 400.
///
/// Precedence per field: the request, then the deployment's own setting, then the
/// checkpoint's generation_config.json (`model`), then the built-in default.
pub fn resolve(
    s: &Sampling,
    defaults: &DecodingDefaults,
    model: &SamplingDefaults,
) -> Result<Resolved, ApiError> {
    let max_tokens = match (
        positive("max_tokens", s.max_tokens)?,
        positive("max_completion_tokens", s.max_completion_tokens)?,
    ) {
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => defaults.gen_length,
    };
    let deployment_temperature = match model.temperature {
        Some(t) if !defaults.temperature_set => t,
        _ => defaults.temperature,
    };
    let temperature = s.temperature.unwrap_or(f64::from(deployment_temperature));
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = s.top_p.unwrap_or(model.top_p.map_or(1.0, f64::from));
    // The sampler runs in f32: a positive value that rounds to 0 there is refused here,
    // with the value as sent (not the "got 0" the sampler would report).
    if !(top_p > 0.0 && top_p <= 1.0 && (top_p as f32) > 0.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1] and at least 1e-38, got {top_p:e}"),
        ));
    }
    let n = s.n.unwrap_or(1);
    if !(1..=i64::from(MAX_N)).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let stops = s.stop.clone().map(OneOrMany::into_vec).unwrap_or_default();
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
                stops.len()
            ),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    let seed = match s.seed {
        None => None,
        Some(v) if v >= 0 => Some(v as u64),
        Some(v) => {
            return Err(ApiError::invalid(
                "seed",
                format!("seed must be >= 0, got {v}"),
            ))
        }
    };
    let remasking = match &s.remasking {
        // Dream's generation_config.json names its rule `alg`, by Dream's names.
        None => match model.algorithm.as_deref().map(str::parse::<Remasking>) {
            Some(Ok(rule)) if !defaults.remasking_set => rule,
            _ => defaults.remasking,
        },
        Some(r) => r
            .parse::<Remasking>()
            .map_err(|m| ApiError::invalid("remasking", m))?,
    };
    let block_length = match positive("block_length", s.block_length)? {
        Some(b) => b,
        None => defaults
            .block_length
            .filter(|&b| max_tokens % b == 0)
            .unwrap_or_else(|| default_block_length(max_tokens)),
    };
    let steps = match positive("steps", s.steps)? {
        Some(steps) => steps,
        None => default_steps(max_tokens, block_length, defaults, model.steps),
    };
    let commit = match &s.apd {
        Some(a) => resolve_apd(a, defaults.commit, defaults.verifier)?,
        None => defaults.commit,
    };
    let verified = matches!(commit, CommitRule::Verifier { .. });
    let mor = match &s.mor {
        Some(m) => resolve_mor(m, defaults.mor)?,
        // The verifier commits a prefix each step: the deployment's MoR is for the
        // other rules (a request asking for both is refused below).
        None if verified => None,
        None => defaults.mor,
    };
    let kv_cache = match &s.kv_cache {
        Some(k) => k
            .parse::<KvCacheMode>()
            .map_err(|m| ApiError::invalid("kv_cache", m))?,
        None if verified => KvCacheMode::None,
        None => defaults.kv_cache,
    };
    if verified && mor.is_some() {
        return Err(ApiError::invalid(
            "mor",
            "mor cannot be combined with apd.mode verifier",
        ));
    }
    if verified && kv_cache != KvCacheMode::None {
        return Err(ApiError::invalid(
            "kv_cache",
            "apd.mode verifier runs without a KV cache (kv_cache must be none)",
        ));
    }
    let top_k = match s.top_k {
        None => model.top_k.unwrap_or(0),
        Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1, 0 (off) or positive, got {k}"),
            ))
        }
    };
    let repetition_penalty = match s.repetition_penalty {
        None => model.repetition_penalty,
        Some(p) if p.is_finite() && p > 0.0 => (p != 1.0).then_some(p as f32),
        Some(p) => {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("repetition_penalty must be greater than 0, got {p}"),
            ))
        }
    };
    let stop_token_ids = s
        .stop_token_ids
        .iter()
        .flatten()
        .map(|&id| {
            u32::try_from(id)
                .map_err(|_| ApiError::invalid("stop_token_ids", format!("{id} is not a token id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let diffusion_fields = [
        ("steps", s.steps.is_some()),
        ("block_length", s.block_length.is_some()),
        ("remasking", s.remasking.is_some()),
        ("apd", s.apd.is_some()),
        ("mor", s.mor.is_some()),
        ("kv_cache", s.kv_cache.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    Ok(Resolved {
        sampling: SamplingParams {
            max_tokens,
            temperature: temperature as f32,
            top_p: top_p as f32,
            seed,
            logprobs: None,
            diffusion: DiffusionKnobs {
                block_length,
                steps,
                remasking,
                stop_at_eos: true,
                commit,
                mor,
                kv_cache,
                set_by_caller: diffusion_fields,
            },
            autoregressive: ArKnobs {
                top_k,
                repetition_penalty,
                stop_token_ids,
                ignore_eos: s.ignore_eos.unwrap_or(false),
            },
        },
        n: n as usize,
        stops,
    })
}

/// The deployment's steps-per-token ratio applied to this answer length, else the
/// checkpoint's `steps` (Dream's generation_config.json: the most steps of one answer),
/// rounded to a whole number of steps per block (at least one, at most one token per
/// step).
fn default_steps(
    max_tokens: usize,
    block_length: usize,
    defaults: &DecodingDefaults,
    model_steps: Option<usize>,
) -> usize {
    let blocks = (max_tokens / block_length.max(1)).max(1);
    let wanted = match (defaults.steps, model_steps) {
        (Some(steps), _) => (steps * max_tokens).div_ceil(defaults.gen_length.max(1)),
        (None, Some(steps)) => steps.min(max_tokens),
        (None, None) => max_tokens,
    };
    let per_block = wanted.div_ceil(blocks).clamp(1, block_length.max(1));
    per_block * blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfastllm_core::models::ModelKind;

    fn sampling(json: serde_json::Value) -> Sampling {
        serde_json::from_value(json).unwrap()
    }

    fn param_of(r: Result<Resolved, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_the_gaps_and_zero_temperature_is_greedy() {
        let d = DecodingDefaults::default();
        let r = resolve(
            &sampling(serde_json::json!({"temperature": 0})),
            &d,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.sampling.max_tokens, 64);
        assert_eq!(r.sampling.diffusion.block_length, 32);
        assert_eq!(r.sampling.diffusion.steps, 64);
        assert_eq!(r.n, 1);
        let r = resolve(
            &sampling(serde_json::json!({"max_completion_tokens": 10})),
            &d,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert_eq!(r.sampling.max_tokens, 10);
    }

    #[test]
    fn deployment_steps_scale_with_the_answer_length() {
        let d = DecodingDefaults {
            gen_length: 256,
            steps: Some(64),
            block_length: Some(32),
            ..DecodingDefaults::default()
        };
        let r = resolve(
            &sampling(serde_json::json!({"max_tokens": 128})),
            &d,
            &SamplingDefaults::default(),
        )
        .unwrap();
        let knobs = |r: &Resolved| {
            (
                r.sampling.diffusion.block_length,
                r.sampling.diffusion.steps,
            )
        };
        assert_eq!(knobs(&r), (32, 32));
        let r = resolve(
            &sampling(serde_json::json!({"max_tokens": 10})),
            &d,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert_eq!(knobs(&r).0, 10, "32 does not divide 10: one block");
        assert_eq!(knobs(&r).1, 3);
        r.sampling.diffusion_params().validate(1, 100).unwrap();
    }

    #[test]
    fn out_of_range_fields_name_the_param() {
        let d = DecodingDefaults::default();
        let bad = |v: serde_json::Value| {
            param_of(resolve(&sampling(v), &d, &SamplingDefaults::default()))
        };
        assert_eq!(bad(serde_json::json!({"temperature": 2.5})), "temperature");
        assert_eq!(bad(serde_json::json!({"temperature": -0.1})), "temperature");
        assert_eq!(bad(serde_json::json!({"top_p": 0})), "top_p");
        assert_eq!(bad(serde_json::json!({"top_p": 1.5})), "top_p");
        assert_eq!(bad(serde_json::json!({"max_tokens": 0})), "max_tokens");
        assert_eq!(bad(serde_json::json!({"n": 9})), "n");
        assert_eq!(bad(serde_json::json!({"n": 0})), "n");
        assert_eq!(
            bad(serde_json::json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop"
        );
        assert_eq!(bad(serde_json::json!({"stop": ""})), "stop");
        assert_eq!(bad(serde_json::json!({"remasking": "best"})), "remasking");
        assert_eq!(bad(serde_json::json!({"seed": -1})), "seed");
    }

    #[test]
    fn autoregressive_fields_and_kind_checks() {
        let d = DecodingDefaults::default();
        let r = resolve(
            &sampling(serde_json::json!({"top_k": 5, "stop_token_ids": [3], "seed": 1})),
            &d,
            &SamplingDefaults::default(),
        )
        .unwrap();
        let ar = r.sampling.for_choice(1).ar_params();
        assert_eq!(
            (ar.top_k, ar.stop_token_ids, ar.seed),
            (5, vec![3], Some(2))
        );
        let check_kind = |r: &Resolved, kind| {
            r.sampling
                .check_kind(kind)
                .map(|_| r.clone())
                .map_err(ApiError::from)
        };
        assert_eq!(param_of(check_kind(&r, ModelKind::Diffusion)), "top_k");
        assert!(check_kind(&r, ModelKind::Autoregressive).is_ok());
        let r = resolve(
            &sampling(serde_json::json!({"block_length": 4})),
            &d,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert_eq!(
            param_of(check_kind(&r, ModelKind::Autoregressive)),
            "block_length"
        );
        let bad = |v: serde_json::Value| {
            param_of(resolve(&sampling(v), &d, &SamplingDefaults::default()))
        };
        assert_eq!(bad(serde_json::json!({"top_k": -2})), "top_k");
        match resolve(
            &sampling(serde_json::json!({"top_p": 1e-300})),
            &d,
            &SamplingDefaults::default(),
        ) {
            Err(ApiError::InvalidRequest { message, .. }) => {
                assert!(message.contains("got 1e-300"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            bad(serde_json::json!({"repetition_penalty": 0})),
            "repetition_penalty"
        );
        assert_eq!(
            bad(serde_json::json!({"stop_token_ids": [-1]})),
            "stop_token_ids"
        );
        assert_eq!(completion_logprobs(Some(3)).unwrap(), Some(3));
        assert!(completion_logprobs(Some(21)).is_err());
        assert_eq!(chat_logprobs(Some(true), None).unwrap(), Some(0));
        assert_eq!(chat_logprobs(Some(true), Some(4)).unwrap(), Some(4));
        assert!(chat_logprobs(None, Some(4)).is_err());
        assert_eq!(chat_logprobs(Some(false), None).unwrap(), None);
    }

    #[test]
    fn generation_config_defaults_sit_below_the_request_and_the_deployment() {
        let model = SamplingDefaults {
            temperature: Some(0.6),
            top_p: Some(0.9),
            top_k: Some(20),
            repetition_penalty: Some(1.05),
            ..SamplingDefaults::default()
        };
        let d = DecodingDefaults::default();
        let silent = resolve(&sampling(serde_json::json!({})), &d, &model).unwrap();
        assert_eq!(silent.sampling.temperature, 0.6);
        assert_eq!(silent.sampling.top_p, 0.9);
        assert_eq!(silent.sampling.autoregressive.top_k, 20);
        assert_eq!(
            silent.sampling.autoregressive.repetition_penalty,
            Some(1.05)
        );
        let asked =
            serde_json::json!({"temperature": 0, "top_p": 1, "top_k": -1, "repetition_penalty": 1});
        let own = resolve(&sampling(asked), &d, &model).unwrap();
        assert_eq!(
            (
                own.sampling.temperature,
                own.sampling.top_p,
                own.sampling.autoregressive.top_k,
                own.sampling.autoregressive.repetition_penalty,
            ),
            (0.0, 1.0, 0, None),
            "the request's own values win"
        );
        let deployment = DecodingDefaults {
            temperature: 0.2,
            temperature_set: true,
            ..DecodingDefaults::default()
        };
        let r = resolve(&sampling(serde_json::json!({})), &deployment, &model).unwrap();
        assert_eq!(
            r.sampling.temperature, 0.2,
            "the deployment's temperature wins"
        );
    }

    #[test]
    fn dreams_steps_and_alg_are_defaults_below_the_deployment() {
        // Dream-v0-Instruct-7B's generation_config.json: steps 512, alg origin.
        let dream = SamplingDefaults {
            temperature: Some(0.0),
            steps: Some(512),
            algorithm: Some("origin".into()),
            ..SamplingDefaults::default()
        };
        let d = DecodingDefaults::default();
        let knobs = |v, d: &DecodingDefaults, m: &SamplingDefaults| {
            let r = resolve(&sampling(v), d, m).unwrap().sampling.diffusion;
            (r.steps, r.remasking)
        };
        let long = serde_json::json!({"max_tokens": 1024, "block_length": 1024});
        assert_eq!(
            knobs(long.clone(), &d, &dream),
            (512, Remasking::Random),
            "at most 512 steps for any length; origin is random order"
        );
        assert_eq!(
            knobs(serde_json::json!({"max_tokens": 64}), &d, &dream).0,
            64,
            "never more steps than tokens"
        );
        let entropy = SamplingDefaults {
            algorithm: Some("entropy".into()),
            ..dream.clone()
        };
        assert_eq!(knobs(long.clone(), &d, &entropy).1, Remasking::Entropy);
        let own = serde_json::json!({"max_tokens": 1024, "block_length": 1024, "steps": 100, "remasking": "low_confidence"});
        assert_eq!(knobs(own, &d, &dream), (100, Remasking::LowConfidence));
        let deployment = DecodingDefaults {
            steps: Some(d.gen_length / 2),
            remasking: Remasking::Margin,
            remasking_set: true,
            ..d.clone()
        };
        assert_eq!(
            knobs(long, &deployment, &dream),
            (512, Remasking::Margin),
            "the deployment's ratio (half) and rule win"
        );
    }

    #[test]
    fn choices_get_distinct_seeds() {
        let r = resolve(
            &sampling(serde_json::json!({"seed": 7, "n": 2})),
            &DecodingDefaults::default(),
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert_eq!(r.sampling.for_choice(0).seed, Some(7));
        assert_eq!(r.sampling.for_choice(1).seed, Some(8));
    }

    #[test]
    fn chat_messages_accept_text_parts_and_reject_others() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}
            ]
        }))
        .unwrap();
        let msgs = req.chat_messages().unwrap();
        assert_eq!(msgs[0], ChatMessage::new("system", "Be brief."));
        assert_eq!(msgs[1], ChatMessage::new("user", "Hi!"));
        let img: ChatRequest = serde_json::from_value(serde_json::json!({
            "messages": [{"role": "user", "content": [{"type": "image_url"}]}]
        }))
        .unwrap();
        assert!(img.chat_messages().is_err());
        let empty: ChatRequest =
            serde_json::from_value(serde_json::json!({"messages": []})).unwrap();
        assert!(empty.chat_messages().is_err());
    }
}
