//! The four doors into the room, one file each, plus what they share.
//!
//! | file | technique |
//! |---|---|
//! | [`seed`] | the seed's WebSocket protocol on `/` |
//! | [`ws`] | WebSocket on `/ws`, with sessions and resume |
//! | [`sse`] | Server-Sent Events on `/api/sse` |
//! | [`long_poll`] | long polling on `/api/longpoll` |
//! | [`short_poll`] | short polling on `/api/poll` |
//! | [`post`] | `POST /api/messages`, the upstream of the three HTTP techniques |
//! | [`sessions`] | join, leave and presence over HTTP |
//! | [`assets`] | the demo page and its files |

pub mod assets;
pub mod long_poll;
pub mod post;
pub mod seed;
pub mod sessions;
pub mod short_poll;
pub mod sse;
pub mod ws;

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use axum::body::Body;
use bytes::Bytes;

use crate::core::{Delivery, Seq};
use crate::error::AppError;

/// The query parameters the transports take (`session`, `since`, `timeout`), with errors as JSON.
#[derive(Debug, Default)]
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::BadRequest(format!("malformed query string: {rejection}")))?;
        Ok(Params(map))
    }
}

impl Params {
    /// `session=`, falling back to the `X-Session` header.
    pub fn session(&self, headers: &HeaderMap) -> Option<String> {
        self.0
            .get("session")
            .cloned()
            .or_else(|| headers.get("x-session").and_then(|v| v.to_str().ok()).map(str::to_owned))
            .filter(|s| !s.is_empty())
    }

    /// `session=` (or `X-Session`), required.
    ///
    /// # Errors
    /// [`AppError::BadRequest`] when it is missing.
    pub fn require_session(&self, headers: &HeaderMap) -> Result<String, AppError> {
        self.session(headers)
            .ok_or_else(|| AppError::BadRequest("missing session= (join with POST /api/sessions)".into()))
    }

    /// The cursor: the `Last-Event-ID` header if present, else `since=`. The header wins because `EventSource`
    /// reconnects to the same URL (with its original, older `since=`) and sends the newest id it saw.
    ///
    /// # Errors
    /// [`AppError::BadRequest`] when it is not a non-negative integer.
    pub fn since(&self, headers: &HeaderMap) -> Result<Option<Seq>, AppError> {
        let header = headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        let raw = header.or_else(|| self.0.get("since").map(String::as_str));
        raw.map(|raw| {
            raw.trim()
                .parse::<Seq>()
                .map_err(|_| AppError::BadRequest(format!("since must be a sequence number, got {raw:?}")))
        })
        .transpose()
    }
}

/// The cross-site check for WebSocket upgrades and POSTs. A request without `Origin` is not from a browser page
/// and passes; a browser's `Origin` must name the same host as `Host`, a loopback host, or an `--allow-origin`.
///
/// # Errors
/// [`AppError::ForbiddenOrigin`].
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), AppError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().map_err(|_| AppError::ForbiddenOrigin("(not text)".into()))?;
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    let origin_host = host_of(authority);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let same_host = !authority.is_empty() && authority.eq_ignore_ascii_case(host);
    let loopback = matches!(origin_host, "localhost" | "127.0.0.1" | "[::1]");
    if same_host || loopback {
        Ok(())
    } else {
        Err(AppError::ForbiddenOrigin(origin.to_owned()))
    }
}

/// The host part of `host[:port]` (IPv6 literals keep their brackets).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

/// Builds a poll response body `{"events":[...],"next":N}` from pre-serialised events without re-encoding them.
pub fn poll_body(deliveries: &[Delivery], next: Seq) -> Vec<u8> {
    let size: usize = deliveries.iter().map(|d| d.json().len() + 1).sum();
    let mut body = Vec::with_capacity(size + 40);
    body.extend_from_slice(b"{\"events\":[");
    for (i, delivery) in deliveries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(delivery.json());
    }
    body.extend_from_slice(format!("],\"next\":{next}}}").as_bytes());
    body
}

/// Reads a whole request body, refusing more than `limit` bytes.
///
/// # Errors
/// [`AppError::TooLarge`].
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, AppError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| AppError::TooLarge(limit))
}
