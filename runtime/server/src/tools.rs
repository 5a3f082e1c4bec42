//! OpenAI tool calling: `tools`, `tool_choice` and `parallel_tool_calls` validated into a
//! [`ToolPlan`]; history `tool_calls` made what chat templates read; and the answer's
//! text read back into calls in the model's own spelling
//! ([`dfastllm_core::tokenizer::ToolCallFormat`]).
//!
//! `tool_choice: required` and a named function are enforced, not hoped for: the answer
//! is started with the opening of a call (of that function), so the model can only
//! continue one. `auto` leaves the choice to the model. What does not parse as a call
//! of a declared function stays text.

use serde_json::{Map, Value};

use crate::errors::ApiError;
use dfastllm_core::tokenizer::ToolCallFormat;

/// `--tool-call-parser`: read the format from the chat template, name one, or never
/// read calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ToolParserChoice {
    #[default]
    Auto,
    None,
    Is(ToolCallFormat),
}

impl std::str::FromStr for ToolParserChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            other => ToolCallFormat::parse_name(other).map(Self::Is).ok_or_else(|| {
                format!("unknown tool-call parser {other:?} (expected auto, hermes, llama3_json or none)")
            }),
        }
    }
}

impl std::fmt::Display for ToolParserChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::None => "none",
            Self::Is(format) => format.name(),
        })
    }
}

impl ToolParserChoice {
    /// The format answers are read in, given what the chat template teaches.
    pub fn resolve(self, from_template: Option<ToolCallFormat>) -> Option<ToolCallFormat> {
        match self {
            Self::Auto => from_template,
            Self::None => None,
            Self::Is(format) => Some(format),
        }
    }
}

/// OpenAI's limit on tools per request.
pub const MAX_TOOLS: usize = 128;

/// A call the answer made, as OpenAI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as OpenAI's `function.arguments`.
    pub arguments: String,
}

/// What the request's tools ask of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPlan {
    pub format: ToolCallFormat,
    /// `tool_choice` naming one function.
    named: Option<String>,
    parallel: bool,
    /// The declared functions: a call of anything else is not a call.
    names: Vec<String>,
    /// What the answer is started with (`required` and named choices).
    prefix: String,
}

/// An answer read for calls: its text (what comes before the calls, or all of it) and
/// the calls, with the finish reason they imply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub text: String,
    pub calls: Vec<ToolCall>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// OpenAI's rule for function names.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The declared function names of `tools`, each checked as OpenAI checks it.
pub fn tool_names(tools: &Value) -> Result<Vec<String>, ApiError> {
    let list = tools.as_array().ok_or_else(|| {
        invalid(
            "tools",
            "tools must be a list of {\"type\": \"function\", \"function\": {...}}",
        )
    })?;
    if list.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("at most {MAX_TOOLS} tools, got {}", list.len()),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}]{field}");
        let kind = tool.get("type").and_then(Value::as_str);
        if kind != Some("function") {
            return Err(invalid(&at(".type"), "the only tool type is \"function\""));
        }
        let function = tool
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| invalid(&at(".function"), "a function tool needs a function object"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&at(".function.name"), "a function needs a name"))?;
        if !valid_name(name) {
            return Err(invalid(
                &at(".function.name"),
                "function names are 1 to 64 of a-z, A-Z, 0-9, _ and -",
            ));
        }
        if let Some(p) = function.get("parameters") {
            if !p.is_object() {
                return Err(invalid(
                    &at(".function.parameters"),
                    "parameters must be a JSON Schema object",
                ));
            }
        }
        if let Some(d) = function.get("description") {
            if !d.is_string() {
                return Err(invalid(
                    &at(".function.description"),
                    "description must be a string",
                ));
            }
        }
        if names.iter().any(|n| n == name) {
            return Err(invalid(
                &at(".function.name"),
                format!("the function {name:?} is declared twice"),
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// The plan of a chat request's tool fields, or `None` when the answer is plain text
/// (no tools, or `tool_choice: none`). `format` is the served model's spelling.
pub fn plan(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel_tool_calls: Option<bool>,
    format: Option<ToolCallFormat>,
) -> Result<Option<ToolPlan>, ApiError> {
    let names = match tools {
        None | Some(Value::Null) => None,
        Some(t) => Some(tool_names(t)?),
    };
    // "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.
    let (required, named) = match tool_choice {
        None | Some(Value::Null) => (false, None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => (false, None),
            "required" => (true, None),
            other => {
                return Err(invalid(
                    "tool_choice",
                    format!(
                        "tool_choice must be none, auto, required or a function, got {other:?}"
                    ),
                ))
            }
        },
        Some(v) => {
            let name = (v.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| v.pointer("/function/name").and_then(Value::as_str))
                .flatten()
                .ok_or_else(|| {
                    invalid(
                        "tool_choice",
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            (true, Some(name.to_string()))
        }
    };
    let Some(names) = names.filter(|n| !n.is_empty()) else {
        if required || tool_choice.is_some_and(|c| c.as_str() == Some("auto")) {
            return Err(invalid(
                "tool_choice",
                "tool_choice needs tools: declare the functions in tools",
            ));
        }
        return Ok(None);
    };
    if let Some(n) = &named {
        if !names.contains(n) {
            return Err(invalid(
                "tool_choice",
                format!("tool_choice names {n:?}, which is not among the tools"),
            ));
        }
    }
    let format = format.ok_or_else(|| {
        invalid(
            "tools",
            "this model's chat template does not teach a tool-call format; start the server with --tool-call-parser hermes or llama3_json if the model was trained on one",
        )
    })?;
    let prefix = if required {
        format.forced_prefix(named.as_deref())
    } else {
        String::new()
    };
    Ok(Some(ToolPlan {
        format,
        named,
        parallel: parallel_tool_calls.unwrap_or(true),
        names,
        prefix,
    }))
}

impl ToolPlan {
    /// What the prompt ends with so the answer starts as a call (empty for `auto`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// OpenAI answers a named `tool_choice` with `stop`, any other call with `tool_calls`.
    pub fn finish_reason(&self) -> &'static str {
        if self.named.is_some() {
            "stop"
        } else {
            "tool_calls"
        }
    }

    /// How much of `generated` (the answer so far, without the prefix) can be streamed
    /// as content: none of a forced call, and nothing where a call may have begun.
    pub fn settled_len(&self, generated: &str) -> usize {
        if !self.prefix.is_empty() {
            return 0;
        }
        self.format.settled_len(generated)
    }

    /// The finished answer read for calls; `generated` lacks the prefix the prompt ended
    /// with. Calls of undeclared functions, or malformed ones, leave it all text.
    pub fn settle(&self, generated: &str) -> Settled {
        let full = format!("{}{generated}", self.prefix);
        let parsed = self
            .format
            .parse(&full)
            .filter(|p| p.calls.iter().all(|c| self.names.contains(&c.name)));
        let Some(mut parsed) = parsed else {
            return Settled {
                text: full,
                calls: Vec::new(),
            };
        };
        if !self.parallel {
            parsed.calls.truncate(1);
        }
        let calls = parsed
            .calls
            .into_iter()
            .map(|c| ToolCall {
                id: format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
                name: c.name,
                arguments: c.arguments,
            })
            .collect();
        Settled {
            text: parsed.content,
            calls,
        }
    }
}

/// An assistant message's `tool_calls` as templates read them: OpenAI sends each call's
/// arguments as JSON text, templates `tojson` an object (as vLLM passes them).
pub fn history_calls(calls: &Value, param: &str) -> Result<Vec<Value>, ApiError> {
    let list = calls
        .as_array()
        .ok_or_else(|| invalid(param, "tool_calls must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(j, call)| {
            let at = |field: &str| format!("{param}[{j}]{field}");
            let function = call
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(&at(".function"), "a tool call needs a function object"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&at(".function.name"), "a tool call needs a name"))?;
            let arguments = match function.get("arguments") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        invalid(
                            &at(".function.arguments"),
                            "arguments must be a JSON object, written as a string",
                        )
                    })?,
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => {
                    return Err(invalid(
                        &at(".function.arguments"),
                        "arguments must be a JSON object, written as a string",
                    ))
                }
            };
            let mut out = Map::new();
            if let Some(id) = call.get("id") {
                out.insert("id".into(), id.clone());
            }
            out.insert("type".into(), Value::from("function"));
            let mut f = Map::new();
            f.insert("name".into(), Value::from(name));
            f.insert("arguments".into(), arguments);
            out.insert("function".into(), Value::Object(f));
            Ok(Value::Object(out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn add_tool() -> Value {
        json!([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}])
    }

    fn param(r: Result<Option<ToolPlan>, ApiError>) -> String {
        match r {
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    const H: Option<ToolCallFormat> = Some(ToolCallFormat::Hermes);

    #[test]
    fn bad_tool_fields_are_400s_naming_them() {
        let cases = [
            (json!({"type": "function"}), "tools"),
            (json!([{"type": "retrieval"}]), "tools[0].type"),
            (json!([{"type": "function"}]), "tools[0].function"),
            (
                json!([{"type": "function", "function": {}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": []}}]),
                "tools[0].function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
                "tools[1].function.name",
            ),
        ];
        for (tools, want) in cases {
            assert_eq!(param(plan(Some(&tools), None, None, H)), want, "{tools}");
        }
        let tools = add_tool();
        for choice in [
            json!("sometimes"),
            json!({"type": "function"}),
            json!({"type": "function", "function": {"name": "sub"}}),
        ] {
            assert_eq!(
                param(plan(Some(&tools), Some(&choice), None, H)),
                "tool_choice"
            );
        }
        assert_eq!(
            param(plan(None, Some(&json!("required")), None, H)),
            "tool_choice"
        );
        assert_eq!(param(plan(Some(&tools), None, None, None)), "tools");
    }

    #[test]
    fn none_and_no_tools_mean_plain_text() {
        assert_eq!(plan(None, None, None, H).unwrap(), None);
        assert_eq!(plan(None, Some(&json!("none")), None, None).unwrap(), None);
        assert_eq!(
            plan(Some(&add_tool()), Some(&json!("none")), None, None).unwrap(),
            None
        );
    }

    #[test]
    fn auto_reads_calls_of_declared_functions_only() {
        let p = plan(Some(&add_tool()), Some(&json!("auto")), None, H)
            .unwrap()
            .unwrap();
        assert_eq!(p.prefix(), "");
        assert_eq!(p.finish_reason(), "tool_calls");
        let call =
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>";
        let s = p.settle(call);
        assert_eq!(s.text, "");
        assert_eq!(s.calls.len(), 1);
        assert_eq!(
            (s.calls[0].name.as_str(), s.calls[0].arguments.as_str()),
            ("add", r#"{"a":1,"b":2}"#)
        );
        assert!(s.calls[0].id.starts_with("call_") && s.calls[0].id.len() == 29);
        let other = call.replace("add", "sub");
        assert_eq!(
            p.settle(&other),
            Settled {
                text: other.clone(),
                calls: vec![]
            }
        );
        assert_eq!(p.settle("582").calls, []);
    }

    #[test]
    fn required_and_named_start_the_answer_as_a_call() {
        let tools = add_tool();
        let named = json!({"type": "function", "function": {"name": "add"}});
        let p = plan(Some(&tools), Some(&named), Some(false), H)
            .unwrap()
            .unwrap();
        assert_eq!(
            p.prefix(),
            "<tool_call>\n{\"name\": \"add\", \"arguments\": "
        );
        assert_eq!(p.finish_reason(), "stop");
        assert_eq!(
            p.settled_len("{\"a\": 1"),
            0,
            "a forced call is never content"
        );
        let s = p.settle("{\"a\": 1}}\n</tool_call><tool_call>{\"name\": \"add\"}</tool_call>");
        assert_eq!(
            s.calls.len(),
            1,
            "parallel_tool_calls false keeps the first"
        );
        // A continuation that breaks the call is returned whole, prefix included.
        let broken = p.settle("oops");
        assert_eq!(broken.text, format!("{}oops", p.prefix()));
        let r = plan(Some(&tools), Some(&json!("required")), None, H)
            .unwrap()
            .unwrap();
        assert_eq!(r.prefix(), "<tool_call>\n{\"name\": \"");
        assert_eq!(r.finish_reason(), "tool_calls");
    }

    #[test]
    fn history_arguments_become_objects_for_the_template() {
        let calls = json!([{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}]);
        let out = history_calls(&calls, "messages[1].tool_calls").unwrap();
        assert_eq!(out[0]["function"]["arguments"], json!({"a": 1}));
        assert_eq!(out[0]["id"], "call_1");
        let bad = json!([{"function": {"name": "add", "arguments": "{not json"}}]);
        match history_calls(&bad, "messages[1].tool_calls") {
            Err(ApiError::InvalidRequest { param, .. }) => {
                assert_eq!(
                    param.as_deref(),
                    Some("messages[1].tool_calls[0].function.arguments")
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
