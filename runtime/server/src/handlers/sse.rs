//! Streaming: the choices' items become Server-Sent Events. [`Frames`] decides what each
//! item sends (pure, unit-tested); [`sse`] wires it to the channel, the metrics and the
//! in-flight guard.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::mpsc::UnboundedReceiver;

use super::choice::{account, Outcome};
use super::responses::Shape;
use crate::errors::ApiError;
use crate::{AppState, InflightGuard};
use dfastllm_core::decoding::TokenLogprob;

/// What a running choice reports to the stream.
pub enum Item {
    Start(usize),
    Text(usize, String, Vec<TokenLogprob>),
    Finished(Outcome),
    Failed(ApiError),
}

/// The stream's bookkeeping: the outcomes so far, for the usage chunk at the end.
pub struct Frames {
    pub shape: Shape,
    pub prompt_tokens: usize,
    pub outcomes: Vec<Outcome>,
}

pub const DONE: &str = "[DONE]";

impl Frames {
    /// The `data:` payloads `item` sends; `None` is the end of every choice. After a
    /// failure or the end, the last payload is `[DONE]` and nothing more is sent.
    pub fn on(&mut self, item: Option<Item>) -> Vec<String> {
        match item {
            Some(Item::Start(index)) => self
                .shape
                .start(index)
                .map(|b| b.to_json())
                .into_iter()
                .collect(),
            Some(Item::Text(index, text, lps)) => {
                vec![self.shape.delta(index, &text, &lps).to_json()]
            }
            Some(Item::Finished(outcome)) => {
                let frame = self.shape.finish(&outcome, self.prompt_tokens).to_json();
                self.outcomes.push(outcome);
                vec![frame]
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
        (
            dir,
            Frames {
                shape,
                prompt_tokens: 3,
                outcomes: Vec::new(),
            },
        )
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

    #[test]
    fn a_failure_is_reported_in_band_and_ends_the_stream() {
        let (_d, mut f) = frames(Dialect::Completion, true);
        let out = parse(&f.on(Some(Item::Failed(ApiError::Timeout(5)))));
        assert_eq!(out.len(), 2);
        assert!(out[0]["error"]["message"].is_string());
        assert_eq!(out[1], DONE);
    }
}
