//! [`Connection`]: one connection's cell, told of every byte its socket moves, which gives them to a technique, a
//! session or nobody by the rule in the module docs of `wire`, and hands them to its wire view log.
//!
//! Counting is one uncontended `std` mutex per socket read or write: the connection's own task is almost the
//! only one touching it, and the section is a few additions (and, on a WebSocket or an SSE stream, a walk over
//! the frame or chunk headers in the write), never held across an `.await`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::streams::Streams;
use super::{Deadlines, ReadWait, Sockets, Tally};
use crate::error::AppError;
use crate::metering::capture::{Kind, Log};
use crate::metering::session::SessionWire;
use crate::metering::Metering;
use crate::model::Transport;

/// Whose bytes a connection is carrying right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A request is being read; its technique is not known yet.
    Undecided,
    /// A request of this technique, its response, or (after an upgrade) everything.
    Technique(Transport),
    /// A request of none of the techniques.
    Nobody,
    /// A wire view's request or connection (`/api/wire`, `/api/sessions/{session}/wire`).
    WireView,
}

/// One connection's attribution state (see the rule in the module docs of `wire`).
#[derive(Debug)]
pub(super) struct Attribution {
    owner: Owner,
    /// Bytes read and written while `Undecided`.
    pending_in: u64,
    pending_out: u64,
    /// A response head was handed out: the next bytes read start a new request.
    answered: bool,
    /// The connection was upgraded: the owner is fixed.
    upgraded: bool,
    /// Some bytes of the current request were read (false only before a connection's first request).
    started: bool,
    /// The session the handler named for the current request (or, once upgraded, the connection).
    session: Option<Arc<SessionWire>>,
    /// What a wire view is told of these bytes.
    log: Log,
    /// When the awaited request head must be complete (`--header-timeout`): set at the accept and after each
    /// plain response, cleared once a head is parsed and for streams (upgrades, SSE), which read nothing more.
    pub(super) head_deadline: Option<Instant>,
    /// Bytes were written while a head is awaited (the previous response still going out): the deadline is
    /// counted again from the next blocked read, so a large answer to a slow reader is not cut by it.
    pub(super) wrote_while_awaiting: bool,
    /// The connection waits for a request head: from the accept and the end of each plain response until a head
    /// is parsed; never once it carries a stream.
    pub(super) awaiting_head: bool,
    /// The current request's head was handed to the router (so the HTTP server parsed it).
    dispatched: bool,
    /// The current request's first line has ended (a line feed was read): a head refused as too large then has
    /// too many or too long header lines, not too long a request line.
    line_done: bool,
    /// A write is blocked on the peer.
    write_stuck: bool,
    /// Its task waits to read (its last read found nothing).
    read_waiting: bool,
    /// When a byte last crossed the socket.
    active_at: Instant,
    /// The task waiting to read, woken to close the socket when it is evicted.
    reader: Option<Waker>,
    /// Closed to make room at `--max-sockets`: the next blocked read fails.
    evicted: bool,
    /// The connection speaks HTTP/2: its bytes are given to streams, not to the request/response rhythm.
    pub(super) h2: Option<Box<Streams>>,
}

impl Attribution {
    /// See [`Connection::idle_since`].
    fn idle_since(&self) -> Option<Instant> {
        (self.awaiting_head && self.read_waiting && !self.write_stuck && !self.evicted).then_some(self.active_at)
    }
}

/// The shared per-connection cell: the socket counts into it, the connection's [`Metered`](super::Metered) service
/// tells it whose bytes they are.
#[derive(Debug)]
pub struct Connection {
    pub(super) metering: Metering,
    state: Mutex<Attribution>,
    /// This socket's place under `--max-sockets`, given back when the socket closes.
    _slot: Option<OwnedSemaphorePermit>,
    pub(super) deadlines: Deadlines,
    /// Its key among the listener's open sockets, and those.
    pub(super) id: u64,
    sockets: Arc<Sockets>,
    /// `--max-head-bytes`, for the 431 refusal's message.
    max_head: usize,
}

impl Connection {
    pub(super) fn new(
        metering: Metering,
        slot: Option<OwnedSemaphorePermit>,
        deadlines: Deadlines,
        sockets: &Arc<Sockets>,
        max_head: usize,
    ) -> Arc<Self> {
        let others = metering.others();
        others.tcp_connections_open.fetch_add(1, Ordering::Relaxed);
        others.tcp_connections_total.fetch_add(1, Ordering::Relaxed);
        let id = sockets.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            metering,
            state: Mutex::new(Attribution {
                owner: Owner::Undecided,
                pending_in: 0,
                pending_out: 0,
                answered: false,
                upgraded: false,
                started: false,
                session: None,
                log: Log::default(),
                head_deadline: deadlines.header.map(|limit| Instant::now() + limit),
                wrote_while_awaiting: false,
                awaiting_head: true,
                dispatched: false,
                line_done: false,
                write_stuck: false,
                read_waiting: false,
                active_at: Instant::now(),
                reader: None,
                evicted: false,
                h2: None,
            }),
            _slot: slot,
            deadlines,
            id,
            sockets: sockets.clone(),
            max_head,
        });
        sockets.lock().insert(id, Arc::downgrade(&connection));
        connection
    }

    /// A request head was parsed: no deadline until its response is out, and the connection is busy.
    pub(super) fn head_complete(&self) {
        let mut state = self.state();
        if state.h2.is_some() {
            return;
        }
        state.head_deadline = None;
        state.awaiting_head = false;
        state.dispatched = true;
    }

    /// Since when the connection has been idle, if it is (and not evicted yet): a head is awaited, its task waits
    /// to read, and no write is blocked.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        self.state().idle_since()
    }

    /// Closes the connection to make room, if it is still idle: its waiting read fails at once. True if it was.
    pub(super) fn evict(&self) -> bool {
        let mut state = self.state();
        if state.idle_since().is_none() {
            return false;
        }
        state.evicted = true;
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
        true
    }

    /// The JSON refusal that replaces the HTTP server's own (empty-bodied) answer to a head it could not parse,
    /// whose status line starts `head`; `None` when the write is anything else.
    fn refusal(&self, head: &[u8]) -> Option<Bytes> {
        let error = {
            let state = self.state();
            if state.upgraded || !state.started || state.dispatched || state.h2.is_some() {
                return None;
            }
            match head.get(9..13)? {
                b"400 " => AppError::BadRequest("the request head is malformed".into()),
                b"414 " => AppError::UriTooLong,
                b"431 " if !state.line_done => AppError::UriTooLong,
                b"431 " => AppError::HeadTooLarge(self.max_head),
                _ => return None,
            }
        };
        self.metering.others().bad_heads.fetch_add(1, Ordering::Relaxed);
        Some(raw_response(&error))
    }

    pub(super) fn state(&self) -> MutexGuard<'_, Attribution> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Tally for Arc<Connection> {
    fn read(&self, data: &[u8]) {
        if data.is_empty() {
            return; // end of stream: no request starts
        }
        let mut state = self.state();
        if state.h2.is_some() {
            state.read_waiting = false;
            state.active_at = Instant::now();
            self.h2_bytes(&mut state, data, true);
            return;
        }
        if !state.upgraded && (state.answered || !state.started) {
            state.owner = Owner::Undecided;
            state.answered = false;
            state.started = true;
            state.dispatched = false;
            state.line_done = false;
            let previous = state.session.take();
            state.log.request_starts(self.metering.sessions().capturing(), previous.as_deref());
        }
        if !state.line_done && !state.dispatched {
            state.line_done = memchr::memchr(b'\n', data).is_some();
        }
        state.read_waiting = false;
        state.active_at = Instant::now();
        self.add(&mut state, data.len() as u64, 0);
        if state.log.follows_reads() {
            let Attribution { log, session, .. } = &mut *state;
            log.read(data, session.as_deref());
        }
    }

    fn wrote(&self, data: &[u8]) {
        self.wrote_slices(&mut std::iter::once(data), data.len());
    }

    fn wrote_vectored(&self, slices: &[io::IoSlice<'_>], written: usize) {
        let mut left = written;
        let mut parts = slices.iter().map_while(|slice| {
            let n = slice.len().min(left);
            left -= n;
            (n > 0).then(|| &slice[..n])
        });
        self.wrote_slices(&mut parts, written);
    }

    fn write_timeout(&self) -> Option<Duration> {
        self.deadlines.write
    }

    fn read_blocked(&self, cx: &Context<'_>) -> ReadWait {
        let mut state = self.state();
        if state.evicted {
            return ReadWait::Evicted;
        }
        state.read_waiting = true;
        if state.awaiting_head {
            match &state.reader {
                Some(reader) if reader.will_wake(cx.waker()) => {}
                _ => state.reader = Some(cx.waker().clone()),
            }
        }
        let Some(limit) = self.deadlines.header else { return ReadWait::Forever };
        if state.wrote_while_awaiting {
            state.wrote_while_awaiting = false;
            state.head_deadline = Some(Instant::now() + limit);
        }
        state.head_deadline.map_or(ReadWait::Forever, ReadWait::Until)
    }

    fn write_blocked(&self) {
        let mut state = self.state();
        state.write_stuck = true;
    }

    fn rewrite(&self, head: &[u8]) -> Option<Bytes> {
        self.refusal(head)
    }

    fn timed_out(&self, writing: bool) {
        let others = self.metering.others();
        if !writing {
            others.header_timeouts.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let counter = match self.state().owner {
            Owner::Technique(transport) => &self.metering.of(transport).write_timeouts,
            _ => &others.write_timeouts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Connection {
    /// One write's bytes, `written` of them, as `parts`: counted, then read back if a wire view needs them.
    fn wrote_slices(&self, parts: &mut dyn Iterator<Item = &[u8]>, written: usize) {
        let mut state = self.state();
        state.write_stuck = false;
        state.active_at = Instant::now();
        if state.h2.is_some() {
            for part in parts {
                self.h2_bytes(&mut state, part, false);
            }
            if state.head_deadline.is_some() {
                state.wrote_while_awaiting = true;
            }
            return;
        }
        self.add(&mut state, 0, written as u64);
        if state.log.follows_writes() {
            let Attribution { log, session, .. } = &mut *state;
            log.wrote(parts, session.as_deref());
        }
        if state.head_deadline.is_some() {
            state.wrote_while_awaiting = true;
        }
    }

    fn add(&self, state: &mut Attribution, read: u64, written: u64) {
        if state.owner == Owner::Undecided {
            state.pending_in += read;
            state.pending_out += written;
            return;
        }
        self.count(state.owner, state.session.as_deref(), read, written, false);
    }

    /// Counts bytes of a decided `owner` (and `session`); `http2`: they crossed an HTTP/2 stream.
    pub(super) fn count(&self, owner: Owner, session: Option<&SessionWire>, read: u64, written: u64, http2: bool) {
        let (into_in, into_out) = match owner {
            Owner::Undecided => return,
            Owner::Technique(transport) => {
                if let Some(session) = session {
                    session.add_bytes(read, written);
                }
                let c = self.metering.of(transport);
                if http2 {
                    c.http2_wire_bytes_in.fetch_add(read, Ordering::Relaxed);
                    c.http2_wire_bytes_out.fetch_add(written, Ordering::Relaxed);
                }
                (&c.wire_bytes_in, &c.wire_bytes_out)
            }
            Owner::Nobody => (&self.metering.others().wire_bytes_in, &self.metering.others().wire_bytes_out),
            Owner::WireView => {
                let view = &self.metering.sessions().wire_view;
                (&view.wire_bytes_in, &view.wire_bytes_out)
            }
        };
        if read > 0 {
            into_in.fetch_add(read, Ordering::Relaxed);
        }
        if written > 0 {
            into_out.fetch_add(written, Ordering::Relaxed);
        }
    }

    /// A response head is ready for a request of `owner`, of `session` if the handler named one; `kind` says
    /// whether it is `101 Switching Protocols`, an SSE stream or a plain response.
    ///
    /// `plain`: the response is neither an upgrade nor an event stream, so the connection awaits its next request
    /// head once it is out (`--header-timeout` runs again).
    pub(super) fn answer(&self, owner: Owner, session: Option<Arc<SessionWire>>, kind: Kind, plain: bool) {
        let mut state = self.state();
        if state.upgraded {
            return;
        }
        state.owner = owner;
        let technique = if let Owner::Technique(transport) = owner { Some(transport) } else { None };
        // Only a technique's requests count for a session: a wire view's never do.
        state.session = session.filter(|_| technique.is_some());
        let Attribution { log, session, .. } = &mut *state;
        log.answered(technique, session.as_ref(), kind);
        let (read, written) = (std::mem::take(&mut state.pending_in), std::mem::take(&mut state.pending_out));
        self.add(&mut state, read, written);
        state.answered = true;
        state.upgraded = kind == Kind::Upgrade;
        if plain {
            state.head_deadline = self.deadlines.header.map(|limit| Instant::now() + limit);
            state.wrote_while_awaiting = false;
            state.awaiting_head = true;
        }
    }
}

/// `error` as a whole HTTP/1.1 response that closes the connection, for a socket whose request never reached
/// the router: the same JSON body and headers as [`AppError`]'s own response.
pub(crate) fn raw_response(error: &AppError) -> Bytes {
    let body = serde_json::json!({"error": error.to_string(), "code": error.code()}).to_string();
    let status = error.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\
         x-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    Bytes::from(head + &body)
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Bytes of a request that never got an answer (a malformed head hyper refused, a client that hung up).
        let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.log.closed(state.session.as_deref());
        let others = self.metering.others();
        others.wire_bytes_in.fetch_add(state.pending_in, Ordering::Relaxed);
        others.wire_bytes_out.fetch_add(state.pending_out, Ordering::Relaxed);
        // HTTP/2 streams whose requests were never answered.
        for stream in state.h2.iter().flat_map(|streams| streams.open.values()) {
            others.wire_bytes_in.fetch_add(stream.pending_in, Ordering::Relaxed);
            others.wire_bytes_out.fetch_add(stream.pending_out, Ordering::Relaxed);
        }
        others.tcp_connections_open.fetch_sub(1, Ordering::Relaxed);
        self.sockets.lock().remove(&self.id);
    }
}
