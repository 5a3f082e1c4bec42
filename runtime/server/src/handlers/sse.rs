//! Streaming: the choices' items become Server-Sent Events. [`Frames`] decides what each
//! item sends (pure, unit-tested); [`sse`] wires it to the channel, the metrics and the
//! in-flight guard.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::mpsc::UnboundedReceiver;

use super::choice::{account, Outcome};
use super::responses::{Body, Shape};
use crate::errors::ApiError;
use crate::tools::ToolPlan;
use crate::{AppState, InflightGuard};
use dfastllm_core::decoding::TokenLogprob;

/// What a running choice reports to the stream.
pub enum Item {
    Start(usize),
    Text(usize, String, Vec<TokenLogprob>),
    Finished(Outcome),
    Failed(ApiError),
}

/// The stream's bookkeeping: the outcomes so far, for the usage chunk at the end, and
/// with tools, what each choice holds back while a call may be forming.
pub struct Frames {
    pub shape: Shape,
    pub prompt_tokens: usize,
    pub outcomes: Vec<Outcome>,
    tools: Option<Arc<ToolPlan>>,
    held: HashMap<usize, Held>,
    /// What every answer was started with (json_object's `{`): its first content.
    lead: &'static str,
}

/// A choice's text so far when tools are on, how much of it went out as content, and
/// the log-probabilities of what did not.
#[derive(Default)]
struct Held {
    text: String,
    sent: usize,
    logprobs: Vec<TokenLogprob>,
}

pub const DONE: &str = "[DONE]";

impl Frames {
    pub fn new(
        shape: Shape,
        prompt_tokens: usize,
        tools: Option<Arc<ToolPlan>>,
        lead: &'static str,
    ) -> Self {
        Self {
            shape,
            prompt_tokens,
            outcomes: Vec::new(),
            tools,
            held: HashMap::new(),
            lead,
        }
    }

    /// New text of a choice under a tool plan: what is surely content goes out now.
    fn hold(
        &mut self,
        plan: &ToolPlan,
        index: usize,
        text: &str,
        lps: Vec<TokenLogprob>,
    ) -> Vec<String> {
        let held = self.held.entry(index).or_default();
        held.text.push_str(text);
        held.logprobs.extend(lps);
        let settled = plan.settled_len(&held.text);
        if settled <= held.sent {
            return Vec::new();
        }
        let piece = held.text[held.sent..settled].to_string();
        held.sent = settled;
        let lps = std::mem::take(&mut held.logprobs);
        vec![self.shape.delta(index, &piece, &lps).to_json()]
    }

    /// A finished choice under a tool plan: the held-back content, then its calls.
    fn release(&mut self, outcome: &Outcome) -> Vec<String> {
        let held = self.held.remove(&outcome.index).unwrap_or_default();
        let rest = outcome.text.get(held.sent..).unwrap_or("");
        let mut frames = Vec::new();
        if !rest.is_empty() || !held.logprobs.is_empty() {
            frames.push(
                self.shape
                    .delta(outcome.index, rest, &held.logprobs)
                    .to_json(),
            );
        }
        frames.extend(
            self.shape
                .tool_call_chunks(outcome)
                .iter()
                .map(Body::to_json),
        );
        frames
    }

    /// The `data:` payloads `item` sends; `None` is the end of every choice. After a
    /// failure or the end, the last payload is `[DONE]` and nothing more is sent.
    pub fn on(&mut self, item: Option<Item>) -> Vec<String> {
        match item {
            Some(Item::Start(index)) => {
                let mut frames: Vec<String> = self
                    .shape
                    .start(index)
                    .map(|b| b.to_json())
                    .into_iter()
                    .collect();
                if !self.lead.is_empty() {
                    frames.push(self.shape.delta(index, self.lead, &[]).to_json());
                }
                frames
            }
            Some(Item::Text(index, text, lps)) => match self.tools.clone() {
                Some(plan) => self.hold(&plan, index, &text, lps),
                None => vec![self.shape.delta(index, &text, &lps).to_json()],
            },
            Some(Item::Finished(outcome)) => {
                let mut frames = if self.tools.is_some() {
                    self.release(&outcome)
                } else {
                    Vec::new()
                };
                frames.push(self.shape.finish(&outcome, self.prompt_tokens).to_json());
                self.outcomes.push(outcome);
                frames
            }
            // The status line is long gone: report in-band, as OpenAI does, and end.
            Some(Item::Failed(e)) => vec![e.body().to_string(), DONE.to_string()],
            None => {
                let mut frames: Vec<String> = self
                    .shape
                    .usage_chunk(self.prompt_tokens, &self.outcomes)
                    .map(|b| b.to_json())
                    .into_iter()
                    .collect();
                frames.push(DONE.to_string());
                frames
            }
        }
    }
}

struct StreamState {
    state: AppState,
    rx: UnboundedReceiver<Item>,
    frames: Frames,
    pending: VecDeque<String>,
    finished: bool,
    /// Bytes of the events sent so far (`data: ` and the blank line included).
    sent_bytes: usize,
    _guard: InflightGuard,
}

impl Drop for StreamState {
    /// Ended or cut by the client: the stream's size is what it sent.
    fn drop(&mut self) {
        self.state
            .metrics
            .response_size_bytes
            .observe(self.sent_bytes as f64);
    }
}

pub fn sse(
    state: AppState,
    rx: UnboundedReceiver<Item>,
    frames: Frames,
    guard: InflightGuard,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let init = StreamState {
        state,
        rx,
        frames,
        pending: VecDeque::new(),
        finished: false,
        sent_bytes: 0,
        _guard: guard,
    };
    let stream = futures::stream::unfold(init, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                st.sent_bytes += data.len() + "data: \n\n".len();
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.finished {
                return None;
            }
            let item = st.rx.recv().await;
            match &item {
                Some(Item::Failed(e)) => {
                    st.state.metrics.reject(e.reject_reason());
                    st.finished = true;
                }
                None => {
                    account(&st.state, st.frames.prompt_tokens, &st.frames.outcomes);
                    st.finished = true;
                }
                Some(_) => {}
            }
            st.pending.extend(st.frames.on(item));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::responses::Dialect;
    use crate::handlers::testing::model_info;
    use dfastllm_core::models::Architecture;
    use serde_json::{json, Value};

    fn frames(dialect: Dialect, include_usage: bool) -> (tempfile::TempDir, Frames) {
        let (dir, info) = model_info(Architecture::Qwen2);
        let shape = Shape::new(dialect, "m", include_usage, false, info.into());
        (dir, Frames::new(shape, 3, None, ""))
    }

    fn outcome(index: usize) -> Outcome {
        Outcome {
            index,
            text: "hi".into(),
            finish_reason: "length",
            completion_tokens: 2,
            forward_passes: 1,
            steps: 1,
            logprobs: Vec::new(),
            tool_calls: Vec::new(),
        }
    }

    fn parse(frames: &[String]) -> Vec<Value> {
        frames
            .iter()
            .map(|f| serde_json::from_str(f).unwrap_or(Value::String(f.clone())))
            .collect()
    }

    #[test]
    fn a_chat_stream_opens_with_the_role_and_ends_with_usage_then_done() {
        let (_d, mut f) = frames(Dialect::Chat, true);
        let start = parse(&f.on(Some(Item::Start(0))));
        assert_eq!(
            start[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let text = parse(&f.on(Some(Item::Text(0, "hi".into(), Vec::new()))));
        assert_eq!(text[0]["choices"][0]["delta"], json!({"content": "hi"}));
        assert_eq!(text[0]["object"], "chat.completion.chunk");
        let fin = parse(&f.on(Some(Item::Finished(outcome(0)))));
        assert_eq!(fin[0]["choices"][0]["delta"], json!({}));
        assert_eq!(fin[0]["choices"][0]["finish_reason"], "length");
        let end = parse(&f.on(None));
        assert_eq!(end.len(), 2);
        assert_eq!(end[0]["choices"], json!([]));
        assert_eq!(end[0]["usage"]["total_tokens"], 5);
        assert_eq!(end[1], DONE);
    }

    #[test]
    fn a_completion_stream_sends_no_role_chunk_and_no_usage_unless_asked() {
        let (_d, mut f) = frames(Dialect::Completion, false);
        assert!(f.on(Some(Item::Start(0))).is_empty());
        let text = parse(&f.on(Some(Item::Text(1, "a".into(), Vec::new()))));
        assert_eq!(text[0]["choices"][0]["text"], "a");
        assert_eq!(text[0]["choices"][0]["index"], 1);
        assert!(text[0]["choices"][0]["finish_reason"].is_null());
        assert!(text[0].get("usage").is_none());
        assert_eq!(f.on(None), [DONE]);
    }

    fn tool_frames(choice: Value) -> (tempfile::TempDir, Frames) {
        let (dir, info) = model_info(Architecture::Qwen2);
        let shape = Shape::new(Dialect::Chat, "m", false, false, info.into());
        let tools = json!([{"type": "function", "function": {"name": "add"}}]);
        let plan = crate::tools::plan(
            Some(&tools),
            Some(&choice),
            None,
            Some(dfastllm_core::tokenizer::ToolCallFormat::Hermes),
        )
        .unwrap()
        .unwrap();
        (dir, Frames::new(shape, 3, Some(Arc::new(plan)), ""))
    }

    fn deltas(frames: &[String]) -> Vec<Value> {
        parse(frames)
            .into_iter()
            .map(|v| v["choices"][0]["delta"].clone())
            .collect()
    }

    #[test]
    fn a_streamed_call_holds_back_its_text_and_arrives_as_tool_calls_deltas() {
        let (_d, mut f) = tool_frames(json!("auto"));
        let call = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let text = format!("Sure. {call}");
        let mut sent = Vec::new();
        // Piece by piece, the tag split across pieces.
        for piece in ["Sure. <tool", &text["Sure. <tool".len()..]] {
            sent.extend(deltas(&f.on(Some(Item::Text(0, piece.into(), Vec::new())))));
        }
        assert_eq!(
            sent,
            [json!({"content": "Sure. "})],
            "the call is never content"
        );
        let mut o = outcome(0);
        o.text = text;
        o.settle_tools(f.tools.as_deref().unwrap());
        let end = parse(&f.on(Some(Item::Finished(o))));
        assert_eq!(end.len(), 2, "{end:?}");
        let call = &end[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["index"], 0);
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(
            call["function"],
            json!({"name": "add", "arguments": "{\"a\":1}"})
        );
        assert_eq!(end[1]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn held_back_text_that_is_no_call_goes_out_at_the_end() {
        let (_d, mut f) = tool_frames(json!("auto"));
        assert_eq!(
            deltas(&f.on(Some(Item::Text(0, "a <".into(), Vec::new())))),
            [json!({"content": "a "})]
        );
        assert!(f
            .on(Some(Item::Text(0, "tool_call> oops".into(), Vec::new())))
            .is_empty());
        let mut o = outcome(0);
        o.text = "a <tool_call> oops".into();
        o.settle_tools(f.tools.as_deref().unwrap());
        let end = parse(&f.on(Some(Item::Finished(o))));
        assert_eq!(
            end[0]["choices"][0]["delta"],
            json!({"content": "<tool_call> oops"})
        );
        assert_eq!(end[1]["choices"][0]["finish_reason"], "length");
        // A forced call that broke comes back whole, its forced start included.
        let (_d, mut f) = tool_frames(json!("required"));
        assert!(f.on(Some(Item::Text(0, "x".into(), Vec::new()))).is_empty());
        let mut o = outcome(0);
        o.text = "x".into();
        o.settle_tools(f.tools.as_deref().unwrap());
        let end = parse(&f.on(Some(Item::Finished(o))));
        assert_eq!(
            end[0]["choices"][0]["delta"]["content"],
            "<tool_call>\n{\"name\": \"x"
        );
    }

    #[test]
    fn a_failure_is_reported_in_band_and_ends_the_stream() {
        let (_d, mut f) = frames(Dialect::Completion, true);
        let out = parse(&f.on(Some(Item::Failed(ApiError::Timeout(5)))));
        assert_eq!(out.len(), 2);
        assert!(out[0]["error"]["message"].is_string());
        assert_eq!(out[1], DONE);
    }
}
