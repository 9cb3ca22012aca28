//! Expected failures, and how each one reaches a client.
//!
//! Every refusal is an [`AppError`] variant with a stable `code`. Over HTTP it becomes a status and the body
//! `{"error": "<for people>", "code": "<for programs>"}`; on a WebSocket or SSE stream it becomes an `error`
//! event with the same code. Only server faults are logged: bad input is the client's business.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::model::{control, BrokerError};

/// Everything a request can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed query, header or JSON body.
    #[error("{0}")]
    BadRequest(String),
    /// A chat text that is empty or only whitespace.
    #[error("empty texts are refused")]
    EmptyText,
    /// A chat text longer than `--max-message-chars`.
    #[error("a text has at most {0} characters")]
    TextTooLong(usize),
    /// A body that is not UTF-8.
    #[error("the text is not valid UTF-8")]
    InvalidUtf8,
    /// A nickname refused by [`crate::core::nickname::clean_nickname`].
    #[error("{0}")]
    BadNickname(String),
    /// `/nick` to a nickname another participant online holds now.
    #[error("the nickname {0:?} is taken by another participant")]
    NicknameTaken(String),
    /// A browser request whose `Host` names neither this server (a loopback name, an IP address) nor an
    /// `--allow-host`: a page of another site that has rebound its DNS name to this server.
    #[error("host {0:?} is not served here (allow it with --allow-host)")]
    ForbiddenHost(String),
    /// No such session, or it expired.
    #[error("unknown or expired session")]
    UnknownSession,
    /// A request head larger than `--max-head-bytes` (too many or too long header lines).
    #[error("the request head exceeds {0} bytes")]
    HeadTooLarge(usize),
    /// A request line too long to be read (in practice, its URI).
    #[error("the request line (its URI) is too long")]
    UriTooLong,
    /// A body larger than `--max-body-bytes`.
    #[error("the body exceeds {0} bytes")]
    TooLarge(usize),
    /// Over the per-session rate limit.
    #[error("too many texts: slow down (retry in {0} ms)")]
    RateLimited(u64),
    /// Over the per-client rate (`--client-rate-limit`), across all the client's sessions.
    #[error("too many texts from this address: slow down (retry in {0} ms)")]
    ClientRateLimited(u64),
    /// The client holds `--max-sessions-per-client` sessions already.
    #[error("this address holds {0} sessions already: leave one (or let its lease run out) before joining again")]
    TooManySessions(usize),
    /// A cross-site request from an origin that is not allowed.
    #[error("origin {0} is not allowed")]
    ForbiddenOrigin(String),
    /// `--max-connections` live channels are open.
    #[error("too many connections")]
    TooManyConnections,
    /// `--max-sessions` participants are online.
    #[error("the room is full")]
    RoomFull,
    /// The room's store is unreachable.
    #[error("the room is unavailable: {0}")]
    Unavailable(String),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A WebSocket upgrade asking for a protocol version other than 13 (RFC 6455).
    #[error("WebSocket version {0} is not supported: this server speaks version 13")]
    WebSocketVersion(String),
    /// A handler panicked: a bug of the server, answered `500` (the connection and the server go on).
    #[error("the server failed to answer this request")]
    Internal,
    /// A receiver fell more than `--send-queue` events behind and is closed; it resumes from its cursor.
    #[error("too slow: fell too far behind the room; reconnect with your cursor (since=) to resume")]
    SlowConsumer,
}

impl AppError {
    /// The stable, machine-readable name of the error.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::EmptyText => "empty_text",
            AppError::TextTooLong(_) => "text_too_long",
            AppError::InvalidUtf8 => "invalid_utf8",
            AppError::BadNickname(_) => "bad_nickname",
            AppError::NicknameTaken(_) => "nickname_taken",
            AppError::ForbiddenHost(_) => "forbidden_host",
            AppError::UnknownSession => "unknown_session",
            AppError::TooLarge(_) => "too_large",
            AppError::HeadTooLarge(_) => "head_too_large",
            AppError::UriTooLong => "uri_too_long",
            AppError::RateLimited(_) => "rate_limited",
            AppError::ClientRateLimited(_) => "client_rate_limited",
            AppError::TooManySessions(_) => "too_many_sessions",
            AppError::ForbiddenOrigin(_) => "forbidden_origin",
            AppError::TooManyConnections => "too_many_connections",
            AppError::RoomFull => "room_full",
            AppError::Unavailable(_) => "unavailable",
            AppError::ShuttingDown => "shutting_down",
            AppError::SlowConsumer => "slow_consumer",
            AppError::WebSocketVersion(_) => "websocket_version",
            AppError::Internal => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_)
            | AppError::EmptyText
            | AppError::TextTooLong(_)
            | AppError::InvalidUtf8
            | AppError::BadNickname(_) => StatusCode::BAD_REQUEST,
            AppError::UnknownSession => StatusCode::NOT_FOUND,
            AppError::NicknameTaken(_) => StatusCode::CONFLICT,
            AppError::ForbiddenHost(_) => StatusCode::MISDIRECTED_REQUEST,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            AppError::UriTooLong => StatusCode::URI_TOO_LONG,
            AppError::RateLimited(_) | AppError::ClientRateLimited(_) | AppError::TooManySessions(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AppError::ForbiddenOrigin(_) => StatusCode::FORBIDDEN,
            AppError::WebSocketVersion(_) => StatusCode::UPGRADE_REQUIRED,
            AppError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::TooManyConnections
            | AppError::RoomFull
            | AppError::Unavailable(_)
            | AppError::ShuttingDown
            | AppError::SlowConsumer => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The error as a per-client `error` event for streams.
    pub fn to_event(&self) -> String {
        control::error(self.code(), &self.to_string())
    }
}

impl From<BrokerError> for AppError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::Full => AppError::RoomFull,
            BrokerError::Unavailable(why) => AppError::Unavailable(why),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Unavailable(why) = &self {
            tracing::warn!(%why, "refusing a request: the broker is unavailable");
        }
        let body = json!({"error": self.to_string(), "code": self.code()});
        let mut response = (self.status(), axum::Json(body)).into_response();
        match self {
            AppError::RateLimited(ms) | AppError::ClientRateLimited(ms) => {
                let secs = ms.div_ceil(1000).max(1);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            // RFC 6455, 4.2.2: the versions the server speaks.
            AppError::WebSocketVersion(_) => {
                response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            _ => {}
        }
        response
    }
}
