//! Client-visible errors. Every refusal the gateway produces is an [`ApiError`], which maps to
//! one HTTP status, one OpenAI-shaped body `{"error":{message,type,param,code}}` and one
//! closed-set metric label. Messages never carry secrets or upstream internals.

use serde::Serialize;

use crate::api::bearer::AuthError;

/// Families of client-visible errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: bad JSON, wrong types, bad tags.
    InvalidRequest { message: String, param: Option<&'static str>, code: Option<&'static str> },
    /// 401.
    InvalidApiKey(AuthError),
    /// 403: the principal may not use this model.
    ModelNotAllowed { model: String },
    /// 404: unknown model id.
    ModelNotFound { model: String },
    /// 404: unknown path.
    NotFound { path: String },
    /// 405; `allow` lists the methods the path takes (the `Allow` header, RFC 9110 §15.5.6).
    MethodNotAllowed { method: String, path: String, allow: String },
    /// 413.
    BodyTooLarge { limit: usize },
    /// 408: the client was too slow sending its body.
    BodyTimeout,
    /// 408: the client did not finish its request line and headers within the head deadline.
    HeadTimeout,
    /// 400: the request line or headers could not be parsed (pingora refused them before any
    /// handler ran: malformed, or over its 1 MiB head limit).
    MalformedHead,
    /// 502: every deployment failed (connect errors, 5xx, garbage).
    UpstreamFailed { message: String },
    /// 503: every deployment refused with 429/503, or none is available.
    UpstreamUnavailable { message: String, retry_after: Option<u64> },
    /// 504: every deployment timed out before answering.
    UpstreamTimeout { message: String },
    /// 500: a bug on our side; the message is generic.
    Internal,
    /// 501: an endpoint joule knows but cannot serve (e.g. `/v1/messages/count_tokens`).
    NotImplemented { message: String },
    /// 429: a requests- or tokens-per-minute limit of the key or its project.
    RateLimited { message: String, retry_after: u64 },
    /// 429: the project's budget for the period is spent.
    QuotaExceeded { message: String, retry_after: u64 },
    /// 401 on the admin API: missing or wrong admin token (or API key, where one is accepted).
    AdminUnauthorized,
    /// 403 on the admin API: an API key asked for what only the admin token may do.
    AdminOnly,
    /// 404 on the admin API: an unknown project or key.
    ResourceNotFound { message: String },
    /// 409 on the admin API: a duplicate name, or a change the current state forbids.
    Conflict { message: String },
    /// 503 on the admin API: the store cannot be reached.
    StoreUnavailable,
    /// 503: the gateway itself ran out of file descriptors (its process limit) and could not
    /// open the upstream connection; not the deployment's fault.
    DescriptorsExhausted,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// Shorthand for a 400 with a message.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param, code: None }
    }

    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest { .. } => 400,
            ApiError::InvalidApiKey(_) => 401,
            ApiError::ModelNotAllowed { .. } => 403,
            ApiError::ModelNotFound { .. } | ApiError::NotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::BodyTimeout | ApiError::HeadTimeout => 408,
            ApiError::MalformedHead => 400,
            ApiError::BodyTooLarge { .. } => 413,
            ApiError::Internal => 500,
            ApiError::NotImplemented { .. } => 501,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. } => 429,
            ApiError::AdminUnauthorized => 401,
            ApiError::AdminOnly => 403,
            ApiError::ResourceNotFound { .. } => 404,
            ApiError::Conflict { .. } => 409,
            ApiError::StoreUnavailable | ApiError::DescriptorsExhausted => 503,
            ApiError::UpstreamFailed { .. } => 502,
            ApiError::UpstreamUnavailable { .. } => 503,
            ApiError::UpstreamTimeout { .. } => 504,
        }
    }

    /// Closed-set label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::InvalidApiKey(_) => "invalid_api_key",
            ApiError::ModelNotAllowed { .. } => "model_not_allowed",
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::HeadTimeout => "head_timeout",
            ApiError::MalformedHead => "malformed_head",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::Internal => "internal",
            ApiError::NotImplemented { .. } => "not_implemented",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::QuotaExceeded { .. } => "insufficient_quota",
            ApiError::AdminUnauthorized => "invalid_admin_token",
            ApiError::AdminOnly => "admin_only",
            ApiError::ResourceNotFound { .. } => "resource_not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::DescriptorsExhausted => "descriptors_exhausted",
            ApiError::UpstreamFailed { .. } => "upstream_failed",
            ApiError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ApiError::UpstreamTimeout { .. } => "upstream_timeout",
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow(&self) -> Option<&str> {
        match self {
            ApiError::MethodNotAllowed { allow, .. } => Some(allow),
            _ => None,
        }
    }

    /// `retry-after` seconds, when the client should wait before retrying.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::DescriptorsExhausted => Some(1),
            ApiError::UpstreamUnavailable { retry_after, .. } => *retry_after,
            ApiError::RateLimited { retry_after, .. } | ApiError::QuotaExceeded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn parts(&self) -> (String, &'static str, Option<&'static str>, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { message, param, code } => {
                (message.clone(), "invalid_request_error", *param, *code)
            }
            ApiError::InvalidApiKey(e) => (
                format!("Incorrect API key provided ({e}). Pass your key as `Authorization: Bearer <key>`."),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            ApiError::ModelNotAllowed { model } => (
                format!("Your API key may not use the model `{model}`."),
                "invalid_request_error",
                Some("model"),
                Some("model_not_allowed"),
            ),
            ApiError::ModelNotFound { model } => (
                format!("The model `{model}` does not exist. GET /v1/models lists the available models."),
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            ApiError::NotFound { path } => {
                (format!("Unknown request URL: {path}."), "invalid_request_error", None, Some("unknown_url"))
            }
            ApiError::MethodNotAllowed { method, path, allow } => (
                format!("Method {method} is not allowed on {path} (allowed: {allow})."),
                "invalid_request_error",
                None,
                Some("method_not_allowed"),
            ),
            ApiError::BodyTimeout => {
                ("Timed out reading the request body.".into(), "invalid_request_error", None, Some("request_timeout"))
            }
            ApiError::HeadTimeout => (
                "Timed out reading the request line and headers.".into(),
                "invalid_request_error",
                None,
                Some("request_timeout"),
            ),
            ApiError::MalformedHead => (
                "The request line or headers could not be parsed as HTTP/1.1 (malformed, or larger than 1 MiB).".into(),
                "invalid_request_error",
                None,
                Some("malformed_request"),
            ),
            ApiError::BodyTooLarge { limit } => (
                format!("Request body is larger than the limit of {limit} bytes."),
                "invalid_request_error",
                None,
                Some("request_too_large"),
            ),
            ApiError::Internal => ("Internal error.".into(), "server_error", None, Some("internal_error")),
            ApiError::NotImplemented { message } => (message.clone(), "invalid_request_error", None, Some("not_implemented")),
            ApiError::RateLimited { message, .. } => (message.clone(), "requests", None, Some("rate_limit_exceeded")),
            ApiError::QuotaExceeded { message, .. } => {
                (message.clone(), "insufficient_quota", None, Some("insufficient_quota"))
            }
            ApiError::AdminUnauthorized => (
                "Missing or wrong admin token. Pass it as `Authorization: Bearer <token>`.".into(),
                "invalid_request_error",
                None,
                Some("invalid_admin_token"),
            ),
            ApiError::AdminOnly => (
                "This needs the admin token. An API key gives the read-only project view: its session, models, prices, data centers and usage.".into(),
                "permission_error",
                None,
                Some("admin_only"),
            ),
            ApiError::ResourceNotFound { message } => {
                (message.clone(), "invalid_request_error", None, Some("not_found"))
            }
            ApiError::Conflict { message } => (message.clone(), "invalid_request_error", None, Some("conflict")),
            ApiError::StoreUnavailable => (
                "The store is unavailable; try again shortly.".into(),
                "server_error",
                None,
                Some("store_unavailable"),
            ),
            ApiError::DescriptorsExhausted => (
                "The gateway has run out of file descriptors (its process limit), so the request was not sent upstream. Retry shortly; the operator should raise the limit (LimitNOFILE).".into(),
                "server_error",
                None,
                Some("descriptors_exhausted"),
            ),
            ApiError::UpstreamFailed { message } => {
                (message.clone(), "upstream_error", None, Some("upstream_failed"))
            }
            ApiError::UpstreamUnavailable { message, .. } => {
                (message.clone(), "upstream_error", None, Some("upstream_unavailable"))
            }
            ApiError::UpstreamTimeout { message } => {
                (message.clone(), "upstream_error", None, Some("upstream_timeout"))
            }
        }
    }

    /// The client-facing message (what [`ApiError::body`] carries as `error.message`).
    pub fn message(&self) -> String {
        self.parts().0
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> Vec<u8> {
        let (message, kind, param, code) = self.parts();
        serde_json::to_vec(&Body { error: Inner { message: &message, kind, param, code } })
            .unwrap_or_else(|_| br#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.to_vec())
    }
}

/// The body of an SSE error event that ends a stream whose upstream failed mid-way.
pub fn stream_error_event(message: &str, code: &str) -> Vec<u8> {
    let body = serde_json::to_string(&Body {
        error: Inner { message, kind: "upstream_error", param: None, code: Some(code) },
    })
    .unwrap_or_default();
    format!("data: {body}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_openai_shaped() {
        let e = ApiError::ModelNotFound { model: "x".into() };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(e.status(), 404);
        let e = ApiError::RateLimited { message: "slow down".into(), retry_after: 3 };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!((e.status(), e.retry_after()), (429, Some(3)));
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        let e = ApiError::QuotaExceeded { message: "spent".into(), retry_after: 60 };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!((e.status(), v["error"]["type"].as_str()), (429, Some("insufficient_quota")));
        let ev = stream_error_event("boom \"quoted\"", "upstream_stream_interrupted");
        let s = String::from_utf8(ev).unwrap();
        let v: serde_json::Value = serde_json::from_str(s.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(v["error"]["message"], "boom \"quoted\"");
    }
}
