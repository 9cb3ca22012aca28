//! The body the streaming techniques share ([`super::sse`], [`super::stream`], [`super::iframe`]): one long
//! chunked response, its first chunk the `welcome`, then one chunk per write of the shared delivery writer
//! (`writer`: paced, batched, metered like a WebSocket's); only the framing of an event differs
//! (`Framing`).
//!
//! The stream ends, after an `error` event saying why, when the receiver lags (`slow_consumer`) or is replaced
//! by a newer channel of its session (`replaced`), and after the shutdown notice when the server stops. A peer
//! that stops reading is cut by the connection's write deadline (`--write-timeout`), like any other.
//!
//! The body is a `stream::unfold` whose step is a plain `async fn` over a named state: each step waits for the
//! writer, lets it encode into the chunk, and yields the chunk to hyper, which writes and flushes it.

use std::convert::Infallible;
use std::future::Future;
use std::io;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;

use super::writer::{Step, Wire, Writer};
use super::Params;
use crate::core::{Item, Room, Seq, Transport};
use crate::error::AppError;
use crate::model::control;

/// How one streaming technique puts events on the wire.
pub(crate) trait Framing: Send + 'static {
    /// The technique the deliveries count under.
    const TRANSPORT: Transport;

    /// Appends one event to `out`: a room event with its `seq`, a control event (`welcome`, `gap`, `error`, the
    /// shutdown notice) with `None`.
    fn event(&self, out: &mut Vec<u8>, seq: Option<Seq>, json: &[u8]);

    /// What a quiet stream writes every `--keepalive` seconds, so proxies do not cut it.
    fn keep_alive(&self) -> &'static [u8];

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
    let writer = Writer::new(Box::new(channel), wire);
    let state = Chunks { writer, chunk: Chunk { framing, out: first }, done: false };
    Ok(Body::from_stream(stream::unfold(state, Chunks::step)))
}

/// The body's state: the writer, and the chunk it writes into (holding the first one until it is sent).
struct Chunks<F> {
    writer: Writer,
    chunk: Chunk<F>,
    /// Set once the last chunk is built.
    done: bool,
}

impl<F: Framing> Chunks<F> {
    /// The body's next chunk: the first one, then one per write, the last one ending with the notice saying why
    /// the stream ends.
    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        // Only the first chunk is waiting here: every other one is yielded as soon as it is written.
        if !self.chunk.out.is_empty() {
            let first = std::mem::take(&mut self.chunk.out);
            return Some((Ok(first.into()), self));
        }
        if self.done {
            return None;
        }
        loop {
            let wake = self.writer.wake().await;
            match self.writer.write(&mut self.chunk, wake).await {
                Step::Wrote => break,
                Step::Idle => continue,
                Step::Ended(_) => {
                    self.done = true;
                    break;
                }
                // Handing a chunk to hyper cannot fail: a peer that stops reading is cut by the connection.
                Step::Gone => return None,
            }
        }
        let out = std::mem::take(&mut self.chunk.out);
        Some((Ok(out.into()), self))
    }
}

/// The chunk being built: [`Writer::write`] encodes into it, and the body hands it to hyper, which writes and
/// flushes it under the connection's `--write-timeout`.
struct Chunk<F> {
    framing: F,
    out: Vec<u8>,
}

impl<F: Framing> Wire for Chunk<F> {
    const TRANSPORT: Transport = F::TRANSPORT;

    fn overhead(&self) -> usize {
        self.framing.overhead()
    }

    fn reserve(&mut self, bytes: usize) {
        self.out.reserve(bytes);
    }

    fn event(&mut self, seq: Option<Seq>, json: &[u8]) {
        self.framing.event(&mut self.out, seq, json);
    }

    /// The chunk goes out when the body yields it, after the write.
    fn send(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    fn shrink(&mut self) {}

    fn beat(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.out.extend_from_slice(self.framing.keep_alive());
        std::future::ready(Ok(()))
    }

    /// The notice closes the last chunk; the body ends after it.
    fn end(&mut self, _end: &Item, notice: String) -> impl Future<Output = ()> + Send {
        self.framing.event(&mut self.out, None, notice.as_bytes());
        std::future::ready(())
    }
}
