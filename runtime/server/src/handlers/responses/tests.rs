//! The bodies' JSON, field by field, as OpenAI's SDKs read it.

use serde_json::{json, Value};

use super::*;
use crate::handlers::testing::model_info;
use dfastllm_core::models::Architecture;

fn shape(dialect: Dialect, logprobs: bool) -> (tempfile::TempDir, Shape) {
    let (dir, info) = model_info(Architecture::Qwen2);
    (
        dir,
        Shape::new(dialect, "tiny", false, logprobs, info.into()),
    )
}

fn outcome(index: usize, text: &str, logprobs: Vec<TokenLogprob>) -> Outcome {
    Outcome {
        index,
        text: text.into(),
        finish_reason: "stop",
        completion_tokens: 4,
        forward_passes: 2,
        steps: 3,
        logprobs,
        tool_calls: Vec::new(),
    }
}

fn value(body: &Body<'_>) -> Value {
    serde_json::from_str(&body.to_json()).unwrap()
}

#[test]
fn a_whole_completion_lists_choices_in_order_with_null_logprobs_and_the_cost() {
    let (_d, s) = shape(Dialect::Completion, false);
    let mut outcomes = vec![outcome(1, "b", vec![]), outcome(0, "a", vec![])];
    let v = value(&s.whole(5, &mut outcomes));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(
        v["choices"],
        json!([
            {"index": 0, "text": "a", "logprobs": null, "finish_reason": "stop"},
            {"index": 1, "text": "b", "logprobs": null, "finish_reason": "stop"},
        ])
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13})
    );
    assert_eq!(
        v["dfastllm"],
        json!({"forward_passes": 4, "steps": 6, "tokens_per_forward_pass": 2.0})
    );
}

#[test]
fn a_whole_chat_answer_is_an_assistant_message() {
    let (_d, s) = shape(Dialect::Chat, false);
    let mut outcomes = vec![outcome(0, "hi", vec![])];
    let v = value(&s.whole(1, &mut outcomes));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["choices"][0],
        json!({"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": null, "finish_reason": "stop"})
    );
}

#[test]
fn generate_answers_with_a_plain_object() {
    let (_d, s) = shape(Dialect::Generate, false);
    let mut outcomes = vec![outcome(0, "hi", vec![])];
    let v = value(&s.whole(1, &mut outcomes));
    assert_eq!(v["text"], "hi");
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert!(v.get("choices").is_none());
    assert_eq!(value(&s.delta(0, "h", &[])), json!({"text": "h"}));
    let o = outcome(0, "hi", vec![]);
    let last = value(&s.finish(&o, 1));
    assert_eq!(last["text"], "");
    assert_eq!(last["dfastllm"]["steps"], 3);
    assert!(s.usage_chunk(1, &[o]).is_none());
}

#[test]
fn logprobs_take_each_endpoints_form() {
    let lp = TokenLogprob {
        token: u32::from(b'h'),
        logprob: -0.5,
        top: vec![(u32::from(b'h'), -0.5), (u32::from(b'j'), -1.25)],
    };
    let (_d, s) = shape(Dialect::Completion, true);
    let v = value(&s.delta(0, "h", std::slice::from_ref(&lp)));
    assert_eq!(
        v["choices"][0]["logprobs"],
        json!({"tokens": ["h"], "token_logprobs": [-0.5], "top_logprobs": [{"h": -0.5, "j": -1.25}], "text_offset": [0]})
    );
    let (_d, s) = shape(Dialect::Chat, true);
    let v = value(&s.delta(0, "h", std::slice::from_ref(&lp)));
    assert_eq!(
        v["choices"][0]["logprobs"],
        json!({"content": [{
            "token": "h", "logprob": -0.5, "bytes": [104],
            "top_logprobs": [
                {"token": "h", "logprob": -0.5, "bytes": [104]},
                {"token": "j", "logprob": -1.25, "bytes": [106]},
            ],
        }]})
    );
    assert_eq!(v["choices"][0]["delta"], json!({"content": "h"}));
}

#[test]
fn a_whole_chat_answer_with_calls_has_null_content_and_the_calls() {
    let (_d, s) = shape(Dialect::Chat, false);
    let mut o = outcome(0, "", vec![]);
    o.tool_calls = vec![crate::tools::ToolCall {
        id: "call_1".into(),
        name: "add".into(),
        arguments: "{\"a\":1}".into(),
    }];
    o.finish_reason = "tool_calls";
    let mut outcomes = vec![o];
    let v = value(&s.whole(5, &mut outcomes));
    let message = &v["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    assert!(message["content"].is_null());
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}}])
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // Without calls, the message is as before: text content, no tool_calls key.
    let mut plain = vec![outcome(0, "hi", vec![])];
    let v = value(&s.whole(5, &mut plain));
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "hi"})
    );
}
