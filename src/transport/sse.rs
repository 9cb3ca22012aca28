//! Server-Sent Events: `GET /api/sse?session=&since=` is one long `text/event-stream` response.
//!
//! Frames: first `data: <welcome>`; then each room event as `id: <seq>` + `data: <json>`, so the browser's
//! `EventSource` resumes by itself with `Last-Event-ID`; control events (`gap`, `error`, the shutdown notice) as
//! `data:` alone, so they never move the resume point. A `: keep-alive` comment every `--keepalive` seconds
//! keeps proxies from cutting an idle stream. Delivery, pacing and the end of the stream are the shared
//! [`streaming`] writer's.

use std::io::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::streaming::{self, Framing};
use super::Params;
use crate::core::{Room, Seq, Transport};
use crate::error::AppError;

/// Opens the stream for a session made by `POST /api/sessions` (`404` if unknown; `503` if
/// `--max-connections` channels are open). Any older channel of the session ends.
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let body = streaming::open(&room, &params, b"", Sse).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            // Ask reverse proxies (nginx) not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// SSE's framing: `id:` + `data:` for room events, `data:` alone for control events, a comment to keep alive.
struct Sse;

impl Framing for Sse {
    const TRANSPORT: Transport = Transport::Sse;

    fn event(&self, out: &mut Vec<u8>, seq: Option<Seq>, json: &[u8]) {
        frame(out, seq, json);
    }

    fn keep_alive(&self) -> &'static [u8] {
        b": keep-alive\n\n"
    }

    fn overhead(&self) -> usize {
        32
    }
}

/// Appends one SSE frame to `out`: `id: <seq>\n` (room events only), `data: <json>\n\n`. JSON text never holds a
/// raw newline.
fn frame(out: &mut Vec<u8>, id: Option<Seq>, json: &[u8]) {
    if let Some(id) = id {
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "id: {id}");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}
