//! The text protocols chat models use to call tools, read back into calls. A model does
//! not know OpenAI's `tool_calls` field: its chat template teaches it a spelling, and the
//! answer is parsed back from that spelling. Two are in use by the families we serve:
//!
//! - Hermes (Qwen2.5, Qwen3, Hermes, the bundled tiny model): each call is
//!   `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, after optional text.
//! - Llama 3.x JSON: the whole answer is `{"name": ..., "parameters": {...}}` (several
//!   joined by `;`), optionally after `<|python_tag|>`.
//!
//! What does not parse stays the answer's text: a malformed call is never half-reported.

use serde_json::Value;

/// How a model spells a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    Hermes,
    Llama3Json,
}

pub const HERMES_OPEN: &str = "<tool_call>";
pub const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// One call read from an answer: the function's name and its arguments as JSON text
/// (OpenAI's `function.arguments` is a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// An answer that made calls: the text before them (may be empty) and the calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCalls {
    pub content: String,
    pub calls: Vec<ParsedCall>,
}

impl ToolCallFormat {
    /// vLLM's `--tool-call-parser` names.
    pub fn parse_name(name: &str) -> Option<Self> {
        match name {
            "hermes" => Some(Self::Hermes),
            "llama3_json" => Some(Self::Llama3Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
        }
    }

    /// The format a chat template teaches, from what it writes: Qwen's and Hermes'
    /// templates spell `<tool_call>`; Llama 3.1's asks for `"parameters"` JSON and names
    /// the `ipython` role (or `<|python_tag|>`).
    pub fn detect(template: &str) -> Option<Self> {
        if template.contains(HERMES_OPEN) {
            Some(Self::Hermes)
        } else if template.contains("\"parameters\"")
            && (template.contains("ipython") || template.contains(PYTHON_TAG))
        {
            Some(Self::Llama3Json)
        } else {
            None
        }
    }

    /// The start of an answer that can only continue as a call: of the named function
    /// when `name` is given, of any function otherwise (`tool_choice: required`).
    pub fn forced_prefix(self, name: Option<&str>) -> String {
        let key = match self {
            Self::Hermes => "arguments",
            Self::Llama3Json => "parameters",
        };
        let open = match self {
            Self::Hermes => format!("{HERMES_OPEN}\n"),
            Self::Llama3Json => String::new(),
        };
        match name {
            // A JSON string literal: names are validated to [A-Za-z0-9_-], but quote anyway.
            Some(n) => format!("{open}{{\"name\": {}, \"{key}\": ", Value::from(n)),
            None => format!("{open}{{\"name\": \""),
        }
    }

    /// How much of a streamed answer's text so far is surely not part of a call, so it
    /// can be sent as content: text up to a call's opening (or up to what may be the
    /// start of one) for Hermes; nothing while a Llama answer may still be one JSON call.
    pub fn settled_len(self, text: &str) -> usize {
        match self {
            Self::Hermes => {
                if let Some(i) = text.find(HERMES_OPEN) {
                    return i;
                }
                // Hold back a tail that is a prefix of the opening tag.
                (1..HERMES_OPEN.len().min(text.len() + 1))
                    .rev()
                    .find(|&k| {
                        text.is_char_boundary(text.len() - k)
                            && HERMES_OPEN.starts_with(&text[text.len() - k..])
                    })
                    .map_or(text.len(), |k| text.len() - k)
            }
            Self::Llama3Json => {
                let t = text.trim_start();
                let t = t.strip_prefix(PYTHON_TAG).unwrap_or(t).trim_start();
                if t.is_empty() || t.starts_with('{') || PYTHON_TAG.starts_with(t) {
                    0
                } else {
                    text.len()
                }
            }
        }
    }

    /// The calls in `text`, or `None` when it makes none or any of them is malformed.
    pub fn parse(self, text: &str) -> Option<ParsedCalls> {
        match self {
            Self::Hermes => parse_hermes(text),
            Self::Llama3Json => parse_llama3(text),
        }
    }
}

/// `{"name": "...", <args_key>: {...}}` to a call; the arguments must be an object (or
/// absent: a function without parameters).
fn call_from(value: &Value, arg_keys: &[&str]) -> Option<ParsedCall> {
    let obj = value.as_object()?;
    let name = obj.get("name")?.as_str()?;
    if name.is_empty() {
        return None;
    }
    let args = arg_keys.iter().find_map(|k| obj.get(*k));
    let arguments = match args {
        None => "{}".to_string(),
        // Some models write the arguments as a JSON string already.
        Some(Value::String(s)) => {
            let parsed: Value = serde_json::from_str(s).ok()?;
            parsed.as_object()?;
            s.clone()
        }
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(_) => return None,
    };
    Some(ParsedCall {
        name: name.to_string(),
        arguments,
    })
}

fn parse_hermes(text: &str) -> Option<ParsedCalls> {
    let first = text.find(HERMES_OPEN)?;
    let content = text[..first].trim_end().to_string();
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(body) = rest.strip_prefix(HERMES_OPEN) {
        // The last call may lack its closing tag when the end-of-turn came first.
        let (inner, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        let value: Value = serde_json::from_str(inner.trim()).ok()?;
        calls.push(call_from(&value, &["arguments", "parameters"])?);
        rest = after.trim_start();
    }
    // Text after the calls other than more calls: not a clean call answer.
    if !rest.trim().is_empty() {
        return None;
    }
    Some(ParsedCalls { content, calls })
}

fn parse_llama3(text: &str) -> Option<ParsedCalls> {
    let t = text.trim();
    let t = t.strip_prefix(PYTHON_TAG).unwrap_or(t).trim();
    if !t.starts_with('{') {
        return None;
    }
    // Several calls are joined by `;`: read JSON values one after another.
    let mut calls = Vec::new();
    let mut pos = 0;
    loop {
        let mut values = serde_json::Deserializer::from_str(&t[pos..]).into_iter::<Value>();
        let value = values.next()?.ok()?;
        calls.push(call_from(&value, &["parameters", "arguments"])?);
        pos += values.byte_offset();
        let rest = t[pos..].trim_start();
        if rest.is_empty() {
            return Some(ParsedCalls {
                content: String::new(),
                calls,
            });
        }
        let next = rest.strip_prefix(';')?;
        pos = t.len() - next.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn hermes_calls_are_read_with_the_text_before_them() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>";
        let parsed = ToolCallFormat::Hermes.parse(text).unwrap();
        assert_eq!(parsed.content, "Let me check.");
        assert_eq!(
            parsed.calls,
            [
                call("get_weather", r#"{"city":"Paris"}"#),
                call("add", r#"{"a":1,"b":2}"#)
            ]
        );
        // The end of turn may come before the closing tag.
        let open = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}";
        assert_eq!(
            ToolCallFormat::Hermes.parse(open).unwrap().calls,
            [call("f", "{}")]
        );
    }

    #[test]
    fn malformed_calls_stay_text() {
        for text in [
            "no call here",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"\"}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            "<tool_call>{\"name\": \"f\"}</tool_call> and then some prose",
        ] {
            assert_eq!(ToolCallFormat::Hermes.parse(text), None, "{text}");
        }
        for text in [
            "The answer is {\"name\": \"f\"}",
            "{\"name\": \"f\", \"parameters\": {}} trailing",
            "{\"name\": \"f\", \"parameters\": {}",
            "{\"foo\": 1}",
        ] {
            assert_eq!(ToolCallFormat::Llama3Json.parse(text), None, "{text}");
        }
    }

    #[test]
    fn llama3_json_calls_are_read_one_or_several() {
        let one = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
        let parsed = ToolCallFormat::Llama3Json.parse(one).unwrap();
        assert_eq!(parsed.content, "");
        assert_eq!(parsed.calls, [call("get_weather", r#"{"city":"Paris"}"#)]);
        let two = "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": \"{\\\"x\\\": 1}\"}";
        let parsed = ToolCallFormat::Llama3Json.parse(two).unwrap();
        assert_eq!(parsed.calls, [call("a", "{}"), call("b", r#"{"x": 1}"#)]);
    }

    #[test]
    fn streamed_text_is_held_back_only_where_a_call_may_begin() {
        let h = ToolCallFormat::Hermes;
        assert_eq!(h.settled_len("Hello"), 5);
        assert_eq!(h.settled_len("Hello <tool"), 6);
        assert_eq!(h.settled_len("Hello <"), 6);
        assert_eq!(h.settled_len("a <b"), 4, "not a prefix of the tag");
        assert_eq!(h.settled_len("x<tool_call>\n{"), 1);
        let l = ToolCallFormat::Llama3Json;
        assert_eq!(l.settled_len(""), 0);
        assert_eq!(l.settled_len("  {\"na"), 0);
        assert_eq!(l.settled_len("<|pyth"), 0);
        assert_eq!(l.settled_len("Sure"), 4);
    }

    #[test]
    fn the_format_is_detected_from_the_template_and_forced_prefixes_parse() {
        assert_eq!(
            ToolCallFormat::detect("{{- '<tool_call>\\n' }}"),
            Some(ToolCallFormat::Hermes)
        );
        assert_eq!(
            ToolCallFormat::detect("ipython ... {\"name\": function name, \"parameters\": ...}"),
            Some(ToolCallFormat::Llama3Json)
        );
        assert_eq!(ToolCallFormat::detect("{{ messages }}"), None);
        for f in [ToolCallFormat::Hermes, ToolCallFormat::Llama3Json] {
            let done = format!("{}{{\"x\": 1}}}}", f.forced_prefix(Some("add")));
            assert_eq!(f.parse(&done).unwrap().calls, [call("add", r#"{"x":1}"#)]);
            let any = format!("{}sub\", \"arguments\": {{}}}}", f.forced_prefix(None));
            assert_eq!(f.parse(&any).unwrap().calls, [call("sub", "{}")]);
            assert_eq!(ToolCallFormat::parse_name(f.name()), Some(f));
        }
    }
}
