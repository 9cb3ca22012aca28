//! The delivery writer every long-lived technique shares: the WebSocket ([`super::ws`], [`super::seed`]) and
//! the three streaming responses ([`super::streaming`]: SSE, NDJSON, the forever iframe).
//!
//! A live channel's writing side is one loop, whatever the wire:
//!
//! 1. **wait** ([`Writer::wake`]) for the channel's next item, or, while the server is behind, for the end of
//!    the pacing interval (`Pacer`);
//! 2. **batch**: take with it everything ready now (up to `Pacer::batch`), or, at a pacing tick, the run of
//!    room events straight from the ring ([`Channel::drain`]);
//! 3. **encode** each delivery into the technique's write buffer ([`Wire::event`]);
//! 4. **write** the buffer with one flush ([`Wire::send`]; the connection's `--write-timeout` bounds it);
//! 5. **meter** what went out, into the technique's counters and the session's;
//! 6. **end**, when the channel asks to (lag, a newer channel of the session, shutdown): the notice saying why
//!    ([`Wire::end`]); or, on the keep-alive beat, what keeps a quiet connection open ([`Wire::beat`]).
//!
//! Only the [`Wire`] differs: WebSocket text frames written by the connection's own task, or the chunks of an
//! HTTP body handed to hyper. The wait is its own step so that a WebSocket can `select!` on it beside its
//! reading half (texts in, pings, pongs); [`Writer::write`] then runs to completion.

use std::future::Future;
use std::io;
use std::sync::Arc;

use super::Pacer;
use crate::core::{Channel, Delivery, Item, Room, Seq, Transport};
use crate::error::AppError;
use crate::metering::session::SessionWire;
use crate::model::control;

/// How one technique puts deliveries on its wire: the encoding of an event, how a write goes out, and what a
/// beat and an end look like there.
pub(crate) trait Wire: Send {
    /// The technique the deliveries count under.
    const TRANSPORT: Transport;

    /// Bytes one event adds around its JSON, about: for sizing a write's buffer.
    fn overhead(&self) -> usize;

    /// Makes room for `bytes` more in the write being built.
    fn reserve(&mut self, bytes: usize);

    /// Appends one event to the write being built: a room event with its `seq`, a control event (`gap`, `error`)
    /// with `None`.
    fn event(&mut self, seq: Option<Seq>, json: &[u8]);

    /// Writes out what was built, with one flush. `Err` when the peer is gone.
    fn send(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Gives back the write buffer's memory: the stream goes back to waiting.
    fn shrink(&mut self);

    /// The keep-alive beat (every `--keepalive` seconds): keeps a quiet connection open, or, for a peer that
    /// stopped answering, `Err`.
    fn beat(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the connection the channel asked to end (`end` is why), after `notice`, the event that says so.
    fn end(&mut self, end: &Item, notice: String) -> impl Future<Output = ()> + Send;
}

/// What [`Writer::wake`] woke for.
#[derive(Debug)]
pub(crate) enum Wake {
    /// The pacing interval is over: write what arrived meanwhile.
    Tick,
    /// The channel's next item.
    Item(Item),
}

/// What a [`Writer::write`] did.
#[derive(Debug)]
pub(crate) enum Step {
    /// It wrote (deliveries, or a beat's keep-alive).
    Wrote,
    /// A pacing tick found nothing to write: back to waiting.
    Idle,
    /// It ended the connection, for this reason ([`Item::Lagged`], [`Item::Replaced`] or [`Item::Shutdown`]).
    Ended(Item),
    /// The peer is gone (a write failed, or it stopped answering the beat).
    Gone,
}

/// A live channel's writing side: the channel, its pacing and the session's counters.
pub(crate) struct Writer {
    /// Boxed: a WebSocket's upgrade callback and its task would otherwise each reserve room for it.
    channel: Box<Channel>,
    room: Room,
    /// The session's counters: events delivered.
    wire: Arc<SessionWire>,
    pacer: Pacer,
}

impl Writer {
    /// The writer of `channel`, counting into the session's `wire` counters too.
    pub(crate) fn new(channel: Box<Channel>, wire: Arc<SessionWire>) -> Writer {
        let room = channel.room().clone();
        Writer { channel, room, wire, pacer: Pacer::default() }
    }

    /// The room of the channel.
    pub(crate) fn room(&self) -> &Room {
        &self.room
    }

    /// The channel written.
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Waits for something to write: the end of the pacing interval while paced, else the channel's next item.
    /// Cancel-safe: an interval or an item it was waiting for is still there for the next call.
    pub(crate) async fn wake(&mut self) -> Wake {
        if self.pacer.pacing() {
            self.pacer.ready().await;
            Wake::Tick
        } else {
            Wake::Item(self.channel.next().await)
        }
    }

    /// Writes what `wake` brought to `wire`, and what is ready with it, then counts it. Await it to completion
    /// once started: it is not cancel-safe.
    pub(crate) async fn write<W: Wire>(&mut self, wire: &mut W, wake: Wake) -> Step {
        let first = match wake {
            Wake::Item(Item::Beat) => {
                return match wire.beat().await {
                    Ok(()) => Step::Wrote,
                    Err(_) => Step::Gone,
                }
            }
            Wake::Item(first) => first,
            Wake::Tick => {
                // The busy steady state first: the run of room events straight from the ring.
                if let Some(step) = self.drain(wire).await {
                    return step;
                }
                match self.channel.ready().await {
                    Some(first) => first,
                    None => {
                        // Nothing came during the interval: the stream goes back to waiting, without its buffer.
                        wire.shrink();
                        return Step::Idle;
                    }
                }
            }
        };
        let batch = self.channel.batch_from(first, Pacer::batch(&self.room)).await;
        let size: usize = batch.deliveries.iter().map(|d| d.json().len() + wire.overhead()).sum();
        wire.reserve(size);
        for delivery in &batch.deliveries {
            match delivery {
                Delivery::Event(event) => wire.event(Some(event.seq), event.json.as_bytes()),
                Delivery::Control { json, .. } => wire.event(None, json.as_bytes()),
            }
        }
        if wire.send().await.is_err() {
            return Step::Gone;
        }
        wire.shrink();
        self.wire.delivered(self.room.metering().delivered(W::TRANSPORT, &batch.deliveries));
        self.pacer.wrote(&self.room);
        match batch.end {
            // Boxed: the goodbye is rare and may be long (a WebSocket's closing handshake), and an idle
            // connection's task should not reserve room for it.
            Some(end) => Box::pin(self.end(wire, end)).await,
            None => Step::Wrote,
        }
    }

    /// The paced fast path ([`Channel::drain`]): the run of room events after the cursor, encoded and counted
    /// as they are copied, under the ring's read lock, then written; `None` when there is none.
    async fn drain<W: Wire>(&mut self, wire: &mut W) -> Option<Step> {
        let mut delivering = self.room.metering().delivering(W::TRANSPORT);
        let drained = self.channel.drain(Pacer::batch(&self.room), |event| {
            wire.event(Some(event.seq), event.json.as_bytes());
            delivering.event(event);
        });
        if drained == 0 {
            return None;
        }
        if wire.send().await.is_err() {
            return Some(Step::Gone);
        }
        self.wire.delivered(delivering.finish());
        self.pacer.wrote(&self.room);
        if !self.pacer.pacing() {
            // The server is no longer busy: the stream goes back to waiting, without its batch buffer.
            wire.shrink();
        }
        Some(Step::Wrote)
    }

    /// Ends the connection, saying why.
    async fn end<W: Wire>(&mut self, wire: &mut W, end: Item) -> Step {
        let notice = match end {
            Item::Shutdown => control::server_disconnected(self.room.online().await.unwrap_or(0)),
            Item::Replaced => control::error("replaced", "a newer channel of this session took over"),
            // A batch ends only on lag, replacement or shutdown.
            Item::Lagged | Item::Deliver(_) | Item::Beat => AppError::SlowConsumer.to_event(),
        };
        wire.end(&end, notice).await;
        Step::Ended(end)
    }
}
