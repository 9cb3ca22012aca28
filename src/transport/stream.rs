//! HTTP streaming: `GET /api/stream?session=&since=&epoch=` is one long chunked `application/x-ndjson`
//! response, one JSON event per line, first the `welcome`; a page reads it with `fetch()` and the body's
//! `ReadableStream`. Every event is written whole in one chunk, and room events carry their `seq`, which is the
//! cursor a client resumes from (`since=`) after the stream ends. A blank line every `--keepalive` seconds keeps
//! proxies from cutting an idle stream. Delivery, pacing and the end of the stream are the shared [`streaming`]
//! writer's.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::streaming::{self, Framing};
use super::Params;
use crate::core::{Room, Seq, Transport};
use crate::error::AppError;
use crate::metering::wire::Streaming;

/// Opens the stream for a session made by `POST /api/sessions` (`404` if unknown; `503` if
/// `--max-connections` channels are open). Any older channel of the session ends.
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let body = streaming::open(&room, &params, b"", Ndjson).await?;
    Ok((
        Extension(Streaming::Ndjson),
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
            // Ask reverse proxies (nginx) not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// NDJSON framing: the event's JSON and a newline (JSON text never holds a raw newline); a blank line to keep
/// alive, which a reader skips.
struct Ndjson;

impl Framing for Ndjson {
    const TRANSPORT: Transport = Transport::Stream;

    fn event(&self, out: &mut Vec<u8>, _seq: Option<Seq>, json: &[u8]) {
        out.extend_from_slice(json);
        out.push(b'\n');
    }

    fn keep_alive(&self) -> &'static [u8] {
        b"\n"
    }

    fn overhead(&self) -> usize {
        1
    }
}
