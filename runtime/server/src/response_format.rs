//! OpenAI's `response_format`. `json_object` is enforced as far as a prompt can enforce
//! it without constrained decoding: the answer is started with `{`, so the model writes
//! an object's body rather than prose or a fenced block; the finished text is then
//! checked, and one that is not a JSON object is still returned (with its finish reason,
//! as OpenAI returns a cut one) and counted in `dfastllm_response_format_invalid_total`.
//! `json_schema` needs constrained decoding, which this server does not do: a 400.

use serde_json::Value;

use crate::errors::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
}

impl ResponseFormat {
    pub fn parse(value: Option<&Value>) -> Result<Self, ApiError> {
        let kind = match value {
            None | Some(Value::Null) => return Ok(Self::Text),
            Some(v) => v.get("type").and_then(Value::as_str),
        };
        match kind {
            Some("text") => Ok(Self::Text),
            Some("json_object") => Ok(Self::JsonObject),
            Some("json_schema") => Err(ApiError::invalid(
                "response_format",
                "response_format json_schema needs constrained decoding, which this server does not do; use {\"type\": \"json_object\"} (the answer is started as an object and checked) and validate the schema yourself",
            )),
            _ => Err(ApiError::invalid(
                "response_format",
                "response_format must be {\"type\": \"text\"} or {\"type\": \"json_object\"}",
            )),
        }
    }

    /// What the answer is started with (and what its text begins with).
    pub fn lead(self) -> &'static str {
        match self {
            Self::Text => "",
            Self::JsonObject => "{",
        }
    }
}

/// Whether `text` is one JSON object, as `json_object` promises.
pub fn is_json_object(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_parse_and_unsupported_ones_are_400s() {
        assert_eq!(ResponseFormat::parse(None).unwrap(), ResponseFormat::Text);
        let j = ResponseFormat::parse(Some(&json!({"type": "json_object"}))).unwrap();
        assert_eq!(j.lead(), "{");
        for bad in [
            json!({"type": "json_schema", "json_schema": {}}),
            json!({"type": "xml"}),
            json!("json"),
        ] {
            match ResponseFormat::parse(Some(&bad)) {
                Err(ApiError::InvalidRequest { param, .. }) => {
                    assert_eq!(param.as_deref(), Some("response_format"))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn only_a_json_object_is_valid() {
        assert!(is_json_object("{\"a\": [1, 2]}"));
        assert!(is_json_object(" {}\n"));
        for text in ["[1]", "{\"a\": 1", "{} trailing", "\"s\"", ""] {
            assert!(!is_json_object(text), "{text}");
        }
    }
}
