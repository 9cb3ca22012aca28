//! Server-Sent Events: `GET /api/sse?session=&since=` is one long `text/event-stream` response.
//!
//! Frames: first `data: <welcome>`; then each room event as `id: <seq>` + `data: <json>`, so the browser's
//! `EventSource` resumes by itself with `Last-Event-ID`; control events (`gap`, `error`, the shutdown notice) as
//! `data:` alone, so they never move the resume point. A `: keep-alive` comment every `--keepalive` seconds
//! keeps proxies from cutting an idle stream. The stream ends, after an `error` event saying why, when the
//! receiver lags (`slow_consumer`) or is replaced by a newer channel of its session (`replaced`), and after the
//! shutdown notice when the server stops.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;

use super::{Pacer, Params};
use crate::core::event::control;
use crate::core::{Channel, Delivery, Item, Room, Transport};
use crate::error::AppError;
use crate::metering::session::SessionWire;

/// Opens the stream for a session made by `POST /api/sessions` (`404` if unknown; `503` if
/// `--max-connections` channels are open). Any older channel of the session ends.
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let token = params.require_session()?;
    let since = params.since()?;
    room.metering().request(Transport::Sse);
    let (channel, record) = room.open(token, Transport::Sse, since, params.epoch()).await?;
    let presence = room.presence_now().await?;
    let wire = room.metering().session(token);
    let welcome =
        control::welcome(&record.id, &record.nickname, &record.token, channel.cursor(), channel.epoch(), &presence);
    let mut first = Vec::new();
    frame(&mut first, None, welcome.as_bytes());
    let state = Stream { channel, wire, first: Some(first), done: false, pacer: Pacer::default() };
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
    /// The session's counters: events delivered.
    wire: Arc<SessionWire>,
    first: Option<Vec<u8>>,
    done: bool,
    pacer: Pacer,
}

impl Stream {
    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some((Ok(first.into()), self));
        }
        // Paced (`--flush-interval-ms`): at the end of the interval, write what arrived meanwhile, if anything:
        // the run of room events straight from the ring when nothing else is queued (the busy steady state).
        let mut first = None;
        if self.pacer.pacing() {
            self.pacer.ready().await;
            if let Some(out) = self.drain() {
                return Some((Ok(out.into()), self));
            }
            first = self.channel.ready().await;
        }
        let first = match first {
            Some(first) => first,
            None => self.channel.next().await,
        };
        if let Item::Beat = first {
            return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
        }
        let room = self.channel.room().clone();
        let batch = self.channel.batch_from(first, Pacer::batch(&room)).await;
        let size: usize = batch.deliveries.iter().map(|d| d.json().len() + 32).sum();
        let mut out = Vec::with_capacity(size);
        for delivery in &batch.deliveries {
            match delivery {
                Delivery::Event(event) => frame(&mut out, Some(event.seq), event.json.as_bytes()),
                Delivery::Control { json, .. } => frame(&mut out, None, json.as_bytes()),
            }
        }
        self.wire.delivered(room.metering().delivered(Transport::Sse, &batch.deliveries));
        self.pacer.wrote(&room);
        if let Some(end) = batch.end {
            self.done = true;
            let last = match end {
                Item::Lagged => AppError::SlowConsumer.to_event(),
                Item::Replaced => control::error("replaced", "a newer channel of this session took over"),
                Item::Shutdown => control::server_disconnected(room.online().await.unwrap_or(0)),
                Item::Deliver(_) | Item::Beat => unreachable!("a batch ends only on lag, replacement or shutdown"),
            };
            frame(&mut out, None, last.as_bytes());
        }
        Some((Ok(out.into()), self))
    }

    /// The paced fast path ([`Channel::drain`]): the run of room events after the cursor as SSE frames, counted;
    /// `None` when there is none.
    fn drain(&mut self) -> Option<Vec<u8>> {
        let room = self.channel.room().clone();
        let (mut out, mut delivering) = (Vec::new(), room.metering().delivering(Transport::Sse));
        let drained = self.channel.drain(Pacer::batch(&room), |event| {
            frame(&mut out, Some(event.seq), event.json.as_bytes());
            delivering.event(event);
        });
        if drained == 0 {
            return None;
        }
        self.wire.delivered(delivering.finish());
        self.pacer.wrote(&room);
        Some(out)
    }
}

/// Appends one SSE frame to `out`: `id: <seq>\n` (room events only), `data: <json>\n\n`. JSON text never holds a
/// raw newline.
fn frame(out: &mut Vec<u8>, id: Option<u64>, json: &[u8]) {
    if let Some(id) = id {
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "id: {id}");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}
