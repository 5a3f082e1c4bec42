//! Every way a request can fail, each mapped to exactly one HTTP status and one OpenAI
//! error `type`, in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use dfastllm_core::decoding::DecodeError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    ModelNotFound(String),
    /// No such route (the model name is not the problem).
    #[error("{0}")]
    RouteNotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("rate limit exceeded: retry in {retry_after_seconds} s")]
    RateLimited { retry_after_seconds: u64 },
    #[error("the server is at capacity (request queue full); retry later")]
    QueueFull,
    #[error("{0}")]
    Unavailable(String),
    #[error("the request did not finish within {0} s")]
    Timeout(u64),
    /// The client did not send its body within `--read-timeout-seconds`.
    #[error("the request body did not arrive within {0} s (--read-timeout-seconds)")]
    BodyTimeout(u64),
    /// A forward pass failed (out of memory after halving, a kernel error, NaN).
    #[error("the model failed on this request's forward pass ({0}); retry")]
    ModelFailed(String),
    /// The circuit breaker is open: the model failed pass after pass.
    #[error(
        "the model is failing and the circuit breaker is open; retry in {retry_after_seconds} s"
    )]
    CircuitOpen { retry_after_seconds: u64 },
    /// GPU memory is above the guard's critical level (`--gpu-memory-critical`).
    #[error("GPU memory is {used_percent}% used, above the server's critical level; retry later")]
    MemoryFull { used_percent: u32 },
    /// An `Idempotency-Key` seen before with a different request body.
    #[error("this Idempotency-Key was used with a different request body; send a new key for a new request")]
    IdempotencyConflict,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound(_) | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } | Self::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_)
            | Self::ModelFailed(_)
            | Self::CircuitOpen { .. }
            | Self::MemoryFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::BodyTooLarge(_)
            | Self::MethodNotAllowed(_)
            | Self::BodyTimeout(_)
            | Self::IdempotencyConflict => "invalid_request_error",
            Self::Unauthorized(_) => "authentication_error",
            Self::ModelNotFound(_) | Self::RouteNotFound(_) => "not_found_error",
            Self::RateLimited { .. } | Self::QueueFull => "rate_limit_error",
            Self::Unavailable(_)
            | Self::ModelFailed(_)
            | Self::CircuitOpen { .. }
            | Self::MemoryFull { .. } => "service_unavailable_error",
            Self::Timeout(_) => "timeout_error",
            Self::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`.
    fn code(&self) -> Option<&'static str> {
        match self {
            Self::Unauthorized(_) => Some("invalid_api_key"),
            Self::ModelNotFound(_) => Some("model_not_found"),
            Self::BodyTooLarge(_) => Some("request_too_large"),
            Self::RateLimited { .. } => Some("rate_limit_exceeded"),
            Self::QueueFull => Some("queue_full"),
            Self::Timeout(_) => Some("timeout"),
            Self::BodyTimeout(_) => Some("request_timeout"),
            Self::ModelFailed(_) => Some("model_failed"),
            Self::CircuitOpen { .. } => Some("circuit_open"),
            Self::MemoryFull { .. } => Some("gpu_memory_full"),
            Self::IdempotencyConflict => Some("idempotency_key_reused"),
            _ => None,
        }
    }

    /// The `reason` label of `dfastllm_requests_rejected_total`.
    pub fn reject_reason(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } | Self::BodyTooLarge(_) => "invalid",
            Self::Unauthorized(_) => "unauthorized",
            Self::ModelNotFound(_) => "model_not_found",
            Self::RouteNotFound(_) => "route_not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::QueueFull => "queue_full",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::BodyTimeout(_) => "body_timeout",
            Self::ModelFailed(_) => "model_failed",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::MemoryFull { .. } => "memory",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::Internal(_) => "internal",
        }
    }

    /// The JSON body, also sent as the last event of a failed stream.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            Self::InvalidRequest { param, .. } => param.clone(),
            Self::IdempotencyConflict => Some("Idempotency-Key".into()),
            _ => None,
        };
        json!({"error": {"message": self.to_string(), "type": self.kind(), "param": param, "code": self.code()}})
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::InvalidParam { param, message } => Self::invalid(param, message),
            DecodeError::Model(e) => Self::ModelFailed(e.to_string()),
            DecodeError::Internal(m) => Self::Internal(m),
        }
    }
}

/// Carried by every error response, so the request middleware counts each rejection
/// once, wherever it was decided (`dfastllm_requests_rejected_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub struct Rejected(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        response
            .extensions_mut()
            .insert(Rejected(self.reject_reason()));
        let retry_after = match self {
            Self::RateLimited {
                retry_after_seconds,
            } => Some(retry_after_seconds),
            // The queue turns over in about one decode; a second is the honest hint.
            Self::QueueFull | Self::ModelFailed(_) | Self::MemoryFull { .. } => Some(1),
            Self::CircuitOpen {
                retry_after_seconds,
            } => Some(retry_after_seconds),
            _ => None,
        };
        if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Self::Unauthorized(_) = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_status_and_the_openai_shape() {
        let cases = [
            (
                ApiError::invalid("temperature", "too hot"),
                400,
                "invalid_request_error",
            ),
            (
                ApiError::Unauthorized("no key".into()),
                401,
                "authentication_error",
            ),
            (
                ApiError::ModelNotFound("nope".into()),
                404,
                "not_found_error",
            ),
            (
                ApiError::RouteNotFound("no route".into()),
                404,
                "not_found_error",
            ),
            (
                ApiError::MethodNotAllowed("GET".into()),
                405,
                "invalid_request_error",
            ),
            (ApiError::BodyTooLarge(10), 413, "invalid_request_error"),
            (
                ApiError::RateLimited {
                    retry_after_seconds: 2,
                },
                429,
                "rate_limit_error",
            ),
            (ApiError::QueueFull, 429, "rate_limit_error"),
            (
                ApiError::Unavailable("draining".into()),
                503,
                "service_unavailable_error",
            ),
            (ApiError::Timeout(5), 504, "timeout_error"),
            (ApiError::BodyTimeout(5), 408, "invalid_request_error"),
            (
                ApiError::ModelFailed("oom".into()),
                503,
                "service_unavailable_error",
            ),
            (
                ApiError::CircuitOpen {
                    retry_after_seconds: 3,
                },
                503,
                "service_unavailable_error",
            ),
        ];
        for (err, status, kind) in cases {
            assert_eq!(err.status().as_u16(), status);
            let body = err.body();
            assert_eq!(body["error"]["type"], kind);
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());
        }
        assert_eq!(ApiError::invalid("n", "x").body()["error"]["param"], "n");
        assert!(
            ApiError::RouteNotFound("x".into()).body()["error"]["code"].is_null(),
            "a route is not a model"
        );
    }

    #[test]
    fn broken_invariants_are_500s_without_a_param() {
        let err = ApiError::from(DecodeError::Internal("a sequence of the wrong kind".into()));
        assert_eq!(err.status().as_u16(), 500);
        let body = err.body();
        assert_eq!(body["error"]["type"], "server_error");
        assert!(body["error"]["param"].is_null(), "{body}");
        let user = ApiError::from(DecodeError::InvalidParam {
            param: "block_length",
            message: "must divide max_tokens".into(),
        });
        assert_eq!(
            user.status().as_u16(),
            400,
            "the request's own fault stays a 400"
        );
    }
}
