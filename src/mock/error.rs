//! Error answers of the mock upstream, in the shape of the API it speaks: OpenAI's
//! `{"error":{"message","type","param","code"}}` or Anthropic's
//! `{"type":"error","error":{"type","message"}}`. One value per failure, rendered per API, so the
//! failure modes and the connection loop need not know which API is being spoken.

use std::io;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::MockApi;
use super::http::{full_response, Conn};

pub(crate) const CONTENT_TYPE_JSON: (&str, &str) = ("content-type", "application/json");

/// What went wrong, independently of how each API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The request is unusable (bad JSON, missing field, unreadable HTTP).
    InvalidRequest,
    /// The credentials are missing or wrong.
    Authentication,
    /// No such route.
    NotFound,
    /// The simulated backend failed.
    Server,
    /// The simulated backend rate-limits the caller.
    RateLimited,
    /// The simulated backend is overloaded (Anthropic's 529).
    Overloaded,
}

/// An error response: status, kind and message.
pub(crate) struct ApiError {
    status: u16,
    kind: Kind,
    message: String,
}

impl ApiError {
    /// A client error with `status` (400 unless the HTTP layer says otherwise: 413, 431, 501).
    pub(crate) fn invalid_request(status: u16, message: String) -> Self {
        Self {
            status,
            kind: Kind::InvalidRequest,
            message,
        }
    }

    /// 401: the key is missing or is not the configured one.
    pub(crate) fn authentication(api: MockApi) -> Self {
        let message = match api {
            MockApi::OpenAi => "Incorrect API key provided.",
            MockApi::Anthropic => "invalid x-api-key",
        };
        Self {
            status: 401,
            kind: Kind::Authentication,
            message: message.to_owned(),
        }
    }

    /// 404 for a route the API does not have.
    pub(crate) fn unknown_url(method: &str, target: &str) -> Self {
        Self {
            status: 404,
            kind: Kind::NotFound,
            message: format!("Unknown request URL: {method} {target}."),
        }
    }

    /// 500.
    pub(crate) fn server_error() -> Self {
        Self {
            status: 500,
            kind: Kind::Server,
            message: "The server had an error while processing your request.".to_owned(),
        }
    }

    /// 429 (the caller adds `retry-after`).
    pub(crate) fn rate_limited() -> Self {
        Self {
            status: 429,
            kind: Kind::RateLimited,
            message: "Rate limit reached for requests.".to_owned(),
        }
    }

    /// 529 `overloaded_error`, with the message Anthropic sends.
    pub(crate) fn overloaded() -> Self {
        Self {
            status: 529,
            kind: Kind::Overloaded,
            message: "Overloaded".to_owned(),
        }
    }

    /// The JSON body in `api`'s shape.
    fn body(&self, api: MockApi) -> String {
        match api {
            MockApi::OpenAi => {
                let (kind, code) = match self.kind {
                    Kind::InvalidRequest => ("invalid_request_error", None),
                    Kind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
                    Kind::NotFound => ("invalid_request_error", Some("unknown_url")),
                    Kind::Server => ("server_error", None),
                    Kind::RateLimited => ("requests", Some("rate_limit_exceeded")),
                    // OpenAI has no 529 of its own; its overload errors are `server_error`s.
                    Kind::Overloaded => ("server_error", None),
                };
                json!({
                    "error": {"message": self.message, "type": kind, "param": null, "code": code}
                })
            }
            MockApi::Anthropic => {
                let kind = match self.kind {
                    Kind::InvalidRequest if self.status == 413 => "request_too_large",
                    Kind::InvalidRequest => "invalid_request_error",
                    Kind::Authentication => "authentication_error",
                    Kind::NotFound => "not_found_error",
                    Kind::Server => "api_error",
                    Kind::RateLimited => "rate_limit_error",
                    Kind::Overloaded => "overloaded_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": self.message}})
            }
        }
        .to_string()
    }

    /// Sends the whole response, with `extra_headers` after `content-type`.
    pub(crate) async fn send<S>(
        &self,
        conn: &mut Conn<S>,
        api: MockApi,
        extra_headers: &[(&str, &str)],
        keep_alive: bool,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut headers = vec![CONTENT_TYPE_JSON];
        headers.extend_from_slice(extra_headers);
        let body = self.body(api);
        let response = full_response(self.status, &headers, body.as_bytes(), keep_alive);
        conn.write(&response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parsed(error: &ApiError, api: MockApi) -> Value {
        serde_json::from_str(&error.body(api)).unwrap_or(Value::Null)
    }

    #[test]
    fn mock_errors_take_each_api_shape() {
        let overloaded = ApiError::overloaded();
        assert_eq!(
            parsed(&overloaded, MockApi::Anthropic),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        assert_eq!(
            parsed(&overloaded, MockApi::OpenAi)["error"]["type"],
            "server_error"
        );
        let too_large = ApiError::invalid_request(413, "too large".to_owned());
        assert_eq!(
            parsed(&too_large, MockApi::Anthropic)["error"]["type"],
            "request_too_large"
        );
        let auth = ApiError::authentication(MockApi::OpenAi);
        assert_eq!(
            parsed(&auth, MockApi::OpenAi)["error"]["code"],
            "invalid_api_key"
        );
    }
}
