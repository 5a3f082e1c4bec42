//! The bodies the endpoints send, as types: a whole response, a streamed chunk, or a
//! `/generate` object, in the dialect of the endpoint ([`Shape`] picks which). Field
//! names and nulls follow OpenAI's; `dfastllm` carries what a diffusion answer cost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::choice::Outcome;
use crate::tools::ToolCall;
use crate::ModelInfo;
use dfastllm_core::decoding::TokenLogprob;
use dfastllm_core::tokenizer::TextTokenizer;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// What the answers cost in forward passes (the number diffusion decoding lowers).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    pub forward_passes: usize,
    pub steps: usize,
    pub tokens_per_forward_pass: f64,
}

pub fn usage(prompt_tokens: usize, outcomes: &[Outcome]) -> (Usage, Cost) {
    let completion: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
    let passes: usize = outcomes.iter().map(|o| o.forward_passes).sum();
    let steps: usize = outcomes.iter().map(|o| o.steps).sum();
    let per_pass = if passes == 0 {
        0.0
    } else {
        completion as f64 / passes as f64
    };
    (
        Usage {
            prompt_tokens,
            completion_tokens: completion,
            total_tokens: prompt_tokens + completion,
        },
        Cost {
            forward_passes: passes,
            steps,
            tokens_per_forward_pass: per_pass,
        },
    )
}

/// Log-probabilities in the endpoint's form. Numbers are written as f64, the way
/// OpenAI's (Python) servers print a float32 logprob.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Logprobs {
    /// Completions: parallel lists, alternatives as `{text: logprob}` maps, offsets.
    Completion {
        tokens: Vec<String>,
        token_logprobs: Vec<f64>,
        top_logprobs: Vec<BTreeMap<String, f64>>,
        text_offset: Vec<usize>,
    },
    /// Chat: one entry per token with its bytes and alternatives.
    Chat { content: Vec<ChatLogprob> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatAlternative>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatAlternative {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

fn completion_logprobs(tokenizer: &TextTokenizer, lps: &[TokenLogprob]) -> Logprobs {
    let mut offset = 0;
    let mut tokens = Vec::with_capacity(lps.len());
    let mut text_offset = Vec::with_capacity(lps.len());
    for lp in lps {
        let text = tokenizer.token_display(lp.token);
        text_offset.push(offset);
        offset += text.len();
        tokens.push(text);
    }
    Logprobs::Completion {
        tokens,
        token_logprobs: lps.iter().map(|lp| f64::from(lp.logprob)).collect(),
        top_logprobs: lps
            .iter()
            .map(|lp| {
                lp.top
                    .iter()
                    .map(|&(t, l)| (tokenizer.token_display(t), f64::from(l)))
                    .collect()
            })
            .collect(),
        text_offset,
    }
}

fn chat_logprobs(tokenizer: &TextTokenizer, lps: &[TokenLogprob]) -> Logprobs {
    let alternative = |id: u32, logprob: f32| ChatAlternative {
        token: tokenizer.token_display(id),
        logprob: f64::from(logprob),
        bytes: tokenizer.token_bytes(id),
    };
    Logprobs::Chat {
        content: lps
            .iter()
            .map(|lp| {
                let ChatAlternative {
                    token,
                    logprob,
                    bytes,
                } = alternative(lp.token, lp.logprob);
                ChatLogprob {
                    token,
                    logprob,
                    bytes,
                    top_logprobs: lp.top.iter().map(|&(t, l)| alternative(t, l)).collect(),
                }
            })
            .collect(),
    }
}

/// A streamed delta of a chat message (absent fields are left out: the last chunk's
/// delta is `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Message<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut<'a>>,
}

/// A whole chat message: `content` is `null` when the answer is only tool calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WholeMessage<'a> {
    pub role: &'static str,
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut<'a>>,
}

/// One call in OpenAI's form; streamed calls carry their `index`, which the SDKs
/// assemble deltas by.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionOut<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

impl<'a> ToolCallOut<'a> {
    pub fn new(call: &'a ToolCall, index: Option<usize>) -> Self {
        Self {
            index,
            id: &call.id,
            kind: "function",
            function: FunctionOut {
                name: &call.name,
                arguments: &call.arguments,
            },
        }
    }
}

/// What a choice carries besides its index: text (completions), a message (chat, whole)
/// or a delta (chat, streamed).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChoiceBody<'a> {
    Text(&'a str),
    Message(WholeMessage<'a>),
    Delta(Message<'a>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceOut<'a> {
    pub index: usize,
    #[serde(flatten)]
    pub body: ChoiceBody<'a>,
    /// `null` unless the request asked for log-probabilities.
    pub logprobs: Option<Logprobs>,
    /// `null` until the choice's last chunk.
    pub finish_reason: Option<&'static str>,
}

/// A completion or chat response, whole or one streamed chunk of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChoiceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dfastllm: Option<Cost>,
}

/// `/generate`'s plain object: the text, and on the last one how it ended and the cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlainObject<'a> {
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dfastllm: Option<Cost>,
}

/// One body of any dialect.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body<'a> {
    Response(ResponseObject<'a>),
    Plain(PlainObject<'a>),
}

impl Body<'_> {
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The three response dialects (completions, chat, plain `/generate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Completion,
    Chat,
    Generate,
}

/// Everything a request's bodies share: dialect, id, model name, creation time, and
/// whether they carry log-probabilities and a final usage chunk.
pub struct Shape {
    dialect: Dialect,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    logprobs: bool,
    info: Arc<ModelInfo>,
}

impl Shape {
    pub fn new(
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

    fn logprobs_of(&self, lps: &[TokenLogprob]) -> Option<Logprobs> {
        self.logprobs.then(|| match self.dialect {
            Dialect::Chat => chat_logprobs(&self.info.tokenizer, lps),
            _ => completion_logprobs(&self.info.tokenizer, lps),
        })
    }

    fn object<'a>(&'a self, choices: Vec<ChoiceOut<'a>>, whole: bool) -> ResponseObject<'a> {
        ResponseObject {
            id: &self.id,
            object: match (self.dialect, whole) {
                (Dialect::Chat, true) => "chat.completion",
                (Dialect::Chat, false) => "chat.completion.chunk",
                _ => "text_completion",
            },
            created: self.created,
            model: &self.model,
            choices,
            usage: None,
            dfastllm: None,
        }
    }

    /// The whole (non-streamed) response: every choice, in index order.
    pub fn whole<'a>(&'a self, prompt_tokens: usize, outcomes: &'a mut [Outcome]) -> Body<'a> {
        outcomes.sort_by_key(|o| o.index);
        let (usage, cost) = usage(prompt_tokens, outcomes);
        if self.dialect == Dialect::Generate {
            let o = &outcomes[0];
            return Body::Plain(PlainObject {
                text: &o.text,
                finish_reason: Some(o.finish_reason),
                usage: Some(usage),
                dfastllm: Some(cost),
            });
        }
        let choices = outcomes
            .iter()
            .map(|o| ChoiceOut {
                index: o.index,
                body: match self.dialect {
                    Dialect::Chat => ChoiceBody::Message(WholeMessage {
                        role: "assistant",
                        // OpenAI's `null` content beside calls that had no text before them.
                        content: (o.tool_calls.is_empty() || !o.text.is_empty())
                            .then_some(o.text.as_str()),
                        tool_calls: o
                            .tool_calls
                            .iter()
                            .map(|c| ToolCallOut::new(c, None))
                            .collect(),
                    }),
                    _ => ChoiceBody::Text(&o.text),
                },
                logprobs: self.logprobs_of(&o.logprobs),
                finish_reason: Some(o.finish_reason),
            })
            .collect();
        Body::Response(ResponseObject {
            usage: Some(usage),
            dfastllm: Some(cost),
            ..self.object(choices, true)
        })
    }

    fn chunk<'a>(&'a self, choice: ChoiceOut<'a>) -> Body<'a> {
        Body::Response(self.object(vec![choice], false))
    }

    /// Chat streams open each choice with the assistant role.
    pub fn start(&self, index: usize) -> Option<Body<'_>> {
        (self.dialect == Dialect::Chat).then(|| {
            self.chunk(ChoiceOut {
                index,
                body: ChoiceBody::Delta(Message {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Message::default()
                }),
                logprobs: None,
                finish_reason: None,
            })
        })
    }

    /// New text of choice `index`, with the log-probabilities of the tokens behind it.
    pub fn delta<'a>(&'a self, index: usize, text: &'a str, lps: &[TokenLogprob]) -> Body<'a> {
        let logprobs = self.logprobs_of(lps);
        let body = match self.dialect {
            Dialect::Completion => ChoiceBody::Text(text),
            Dialect::Chat => ChoiceBody::Delta(Message {
                content: Some(text),
                ..Message::default()
            }),
            Dialect::Generate => {
                return Body::Plain(PlainObject {
                    text,
                    finish_reason: None,
                    usage: None,
                    dfastllm: None,
                })
            }
        };
        self.chunk(ChoiceOut {
            index,
            body,
            logprobs,
            finish_reason: None,
        })
    }

    /// A streamed choice's calls, one chunk each: a call arrives whole (id, name and
    /// arguments), which the SDKs' delta assembly reads as they read a call in pieces.
    pub fn tool_call_chunks<'a>(&'a self, o: &'a Outcome) -> Vec<Body<'a>> {
        o.tool_calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                self.chunk(ChoiceOut {
                    index: o.index,
                    body: ChoiceBody::Delta(Message {
                        tool_calls: vec![ToolCallOut::new(call, Some(i))],
                        ..Message::default()
                    }),
                    logprobs: None,
                    finish_reason: None,
                })
            })
            .collect()
    }

    /// The last chunk of one choice: how it ended (and, for `/generate`, its cost).
    pub fn finish<'a>(&'a self, o: &'a Outcome, prompt_tokens: usize) -> Body<'a> {
        let body = match self.dialect {
            Dialect::Completion => ChoiceBody::Text(""),
            Dialect::Chat => ChoiceBody::Delta(Message::default()),
            Dialect::Generate => {
                let (usage, cost) = usage(prompt_tokens, std::slice::from_ref(o));
                return Body::Plain(PlainObject {
                    text: "",
                    finish_reason: Some(o.finish_reason),
                    usage: Some(usage),
                    dfastllm: Some(cost),
                });
            }
        };
        self.chunk(ChoiceOut {
            index: o.index,
            body,
            logprobs: None,
            finish_reason: Some(o.finish_reason),
        })
    }

    /// With `stream_options.include_usage`: a last chunk with no choices and the usage.
    pub fn usage_chunk(&self, prompt_tokens: usize, outcomes: &[Outcome]) -> Option<Body<'_>> {
        if !self.include_usage || self.dialect == Dialect::Generate {
            return None;
        }
        let (usage, cost) = usage(prompt_tokens, outcomes);
        Some(Body::Response(ResponseObject {
            usage: Some(usage),
            dfastllm: Some(cost),
            ..self.object(Vec::new(), false)
        }))
    }
}

#[cfg(test)]
mod tests;
