//! Server-Sent Events: `GET /api/sse?session=&since=` is one long `text/event-stream` response.
//!
//! Frames: first `data: <welcome>`; then each room event as `id: <seq>` + `data: <json>`, so the browser's
//! `EventSource` resumes by itself with `Last-Event-ID`; control events (`gap`, `error`, the shutdown notice) as
//! `data:` alone, so they never move the resume point. A `: keep-alive` comment every `--keepalive` seconds
//! keeps proxies from cutting an idle stream. The stream ends, after an `error` event saying why, when the
//! receiver lags (`slow_consumer`) or is replaced by a newer channel of its session (`replaced`), and after the
//! shutdown notice when the server stops.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;

use super::Params;
use crate::core::event::control;
use crate::core::{Channel, Delivery, Item, Room, Transport};
use crate::error::AppError;

/// Most events written together in one chunk.
const BATCH: usize = 64;

/// Opens the stream for a session made by `POST /api/sessions` (`404` if unknown; `503` if
/// `--max-connections` channels are open). Any older channel of the session ends.
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let token = params.require_session()?;
    let since = params.since()?;
    room.metering().request(Transport::Sse);
    let (channel, record) = room.open(token, Transport::Sse, since).await?;
    let welcome = control::welcome(&record.id, &record.nickname, &record.token, channel.cursor());
    let state = Stream { channel, first: Some(frame(None, welcome.as_bytes())), done: false };
    let body = Body::from_stream(stream::unfold(state, Stream::step));
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

struct Stream {
    channel: Channel,
    first: Option<Vec<u8>>,
    done: bool,
}

impl Stream {
    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some((Ok(first.into()), self));
        }
        let first = self.channel.next().await;
        if let Item::Beat = first {
            return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
        }
        let batch = self.channel.batch_from(first, BATCH).await;
        let mut out = Vec::new();
        let room = self.channel.room().clone();
        for delivery in &batch.deliveries {
            match delivery {
                Delivery::Event(event) => {
                    out.extend(frame(Some(event.seq), &event.json));
                    room.metering().delivered(Transport::Sse, event);
                }
                Delivery::Control { json, .. } => out.extend(frame(None, json.as_bytes())),
            }
        }
        if let Some(end) = batch.end {
            self.done = true;
            let last = match end {
                Item::Lagged => AppError::SlowConsumer.to_event(),
                Item::Replaced => control::error("replaced", "a newer channel of this session took over"),
                Item::Shutdown => control::server_disconnected(room.online().await.unwrap_or(0)),
                Item::Deliver(_) | Item::Beat => unreachable!("a batch ends only on lag, replacement or shutdown"),
            };
            out.extend(frame(None, last.as_bytes()));
        }
        Some((Ok(out.into()), self))
    }
}

/// One SSE frame: `id: <seq>\n` (room events only), `data: <json>\n\n`. JSON text never holds a raw newline.
fn frame(id: Option<u64>, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 32);
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out
}
