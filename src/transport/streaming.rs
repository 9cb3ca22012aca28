//! The delivery writer shared by the streaming techniques ([`super::sse`], [`super::stream`],
//! [`super::iframe`]): one long chunked response, its first chunk the `welcome`, then the room events as the
//! channel hands them over, paced (`Pacer`) and metered alike; only the framing of an event differs
//! (`Framing`).
//!
//! The stream ends, after an `error` event saying why, when the receiver lags (`slow_consumer`) or is replaced
//! by a newer channel of its session (`replaced`), and after the shutdown notice when the server stops. A peer
//! that stops reading is cut by the connection's write deadline (`--write-timeout`), like any other.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;

use super::{Pacer, Params};
use crate::core::{Channel, Delivery, Item, Room, Seq, Transport};
use crate::error::AppError;
use crate::metering::session::SessionWire;
use crate::model::control;

/// How one streaming technique puts events on the wire.
pub(crate) trait Framing: Send + 'static {
    /// The technique the deliveries count under.
    const TRANSPORT: Transport;

    /// Appends one event to `out`: a room event with its `seq`, a control event (`welcome`, `gap`, `error`, the
    /// shutdown notice) with `None`.
    fn event(&self, out: &mut Vec<u8>, seq: Option<Seq>, json: &[u8]);

    /// What a quiet stream writes every `--keepalive` seconds, so proxies do not cut it.
    fn keep_alive(&self) -> Bytes;

    /// Bytes one event adds around its JSON, about: for sizing a write's buffer.
    fn overhead(&self) -> usize;
}

/// Opens the channel of the session a request names (`404` if unknown; `503` if `--max-connections` channels
/// are open; any older channel of the session ends) and makes the response body: `prelude` (what the document
/// needs before its first event, if anything), the `welcome`, then the channel's deliveries framed by
/// `framing`, counted into the technique's counters and the session's.
///
/// # Errors
/// A missing or unknown session, a malformed cursor, a full server.
pub(crate) async fn open<F: Framing>(
    room: &Room,
    params: &Params,
    prelude: &[u8],
    framing: F,
) -> Result<Body, AppError> {
    let token = params.require_session()?;
    let since = params.since()?;
    room.metering().request(F::TRANSPORT);
    let (channel, record) = room.open(token, F::TRANSPORT, since, params.epoch()).await?;
    let presence = room.presence_now().await?;
    let wire = room.metering().session(token);
    let welcome =
        control::welcome(&record.id, &record.nickname, &record.token, channel.cursor(), channel.epoch(), &presence);
    let mut first = Vec::with_capacity(prelude.len() + welcome.len() + framing.overhead());
    first.extend_from_slice(prelude);
    framing.event(&mut first, None, welcome.as_bytes());
    let state = Writer { channel, wire, first: Some(first), done: false, pacer: Pacer::default(), framing };
    Ok(Body::from_stream(stream::unfold(state, Writer::step)))
}

struct Writer<F> {
    channel: Channel,
    /// The session's counters: events delivered.
    wire: Arc<SessionWire>,
    first: Option<Vec<u8>>,
    done: bool,
    pacer: Pacer,
    framing: F,
}

impl<F: Framing> Writer<F> {
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
            return Some((Ok(self.framing.keep_alive()), self));
        }
        let room = self.channel.room().clone();
        let batch = self.channel.batch_from(first, Pacer::batch(&room)).await;
        let size: usize = batch.deliveries.iter().map(|d| d.json().len() + self.framing.overhead()).sum();
        let mut out = Vec::with_capacity(size);
        for delivery in &batch.deliveries {
            match delivery {
                Delivery::Event(event) => self.framing.event(&mut out, Some(event.seq), event.json.as_bytes()),
                Delivery::Control { json, .. } => self.framing.event(&mut out, None, json.as_bytes()),
            }
        }
        self.wire.delivered(room.metering().delivered(F::TRANSPORT, &batch.deliveries));
        self.pacer.wrote(&room);
        if let Some(end) = batch.end {
            self.done = true;
            let last = match end {
                Item::Lagged => AppError::SlowConsumer.to_event(),
                Item::Replaced => control::error("replaced", "a newer channel of this session took over"),
                Item::Shutdown => control::server_disconnected(room.online().await.unwrap_or(0)),
                // A batch ends only on lag, replacement or shutdown; anything else ends the stream plainly.
                Item::Deliver(_) | Item::Beat => control::error("closed", "the stream ended"),
            };
            self.framing.event(&mut out, None, last.as_bytes());
        }
        Some((Ok(out.into()), self))
    }

    /// The paced fast path ([`Channel::drain`]): the run of room events after the cursor, framed and counted;
    /// `None` when there is none.
    fn drain(&mut self) -> Option<Vec<u8>> {
        let room = self.channel.room().clone();
        let (mut out, mut delivering) = (Vec::new(), room.metering().delivering(F::TRANSPORT));
        let framing = &self.framing;
        let drained = self.channel.drain(Pacer::batch(&room), |event| {
            framing.event(&mut out, Some(event.seq), event.json.as_bytes());
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
