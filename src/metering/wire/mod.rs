//! Exact wire bytes per technique: a listener whose sockets count every byte read and written, and the rule
//! that gives each byte to the technique of the request it belongs to.
//!
//! # How a byte finds its technique
//!
//! [`MeteredListener`] wraps the `TcpListener` given to [`crate::run`]; each accepted socket is a
//! [`MeteredStream`] that counts the bytes of every successful read and write (request and response heads,
//! bodies, chunked framing, SSE fields, WebSocket frame headers: whatever crosses the socket) into its
//! connection's [`Connection`] cell. The cell does not know HTTP; it follows the request/response rhythm that
//! HTTP/1.1 gives a connection:
//!
//! 1. Bytes read while no technique is known (a request's head and body) wait in the cell.
//! 2. The handler names the technique when it calls [`crate::metering::Metering::request`]; the connection's
//!    [`Metered`] service, which runs every request, reads that choice when the response head is ready and gives
//!    the waiting bytes to it (or to "none of the techniques" when no technique was named: `/api/stats`, `/metrics`,
//!    `/healthz`, the demo's files, refused requests).
//! 3. Every byte written from then on (the response head and its whole body, however long it streams) and read
//!    until the next request belongs to the same technique.
//! 4. The first bytes read after a response head starts the next request: back to 1.
//! 5. A `101 Switching Protocols` response fixes the technique for the rest of the connection: a WebSocket's
//!    upgrade request, its handshake response and every frame after count under `ws`.
//!
//! The same rule gives the bytes to a session: a handler that has found its session names it
//! ([`crate::metering::Metering::session`]), and the bytes of the request, its response and (after an upgrade)
//! the connection count in that session's [`SessionWire`](super::session::SessionWire) too. A wire view's own
//! requests name no technique and no session: they count under `other.wire_view`. The socket also hands the cell
//! the bytes themselves, which [`super::capture`] reads back for the wire view (HTTP heads, WebSocket frames, SSE
//! writes).
//!
//! # HTTP/2
//!
//! An HTTP/2 connection (HTTPS with ALPN `h2`, see `serve.rs`) carries many requests at once, interleaved, so the
//! rhythm above does not hold. The cell follows the frame headers in both directions instead (`metering/h2.rs`
//! reads them, `streams.rs` follows the streams): every frame's bytes belong to its stream; a stream is opened by
//! the client's `HEADERS` with a new stream id, its request reaches the service in that order (hyper calls the
//! service as it accepts each stream, and the call claims the oldest unclaimed stream), and its handler's choice
//! gives the stream's bytes to a technique and a session as above. The client's preface and the frames of
//! stream 0 belong to the connection: they count under no technique (`other.http2_connection_bytes_*`). A stream
//! ends with the server's `END_STREAM` or a `RST_STREAM` either way; a connection without open streams awaits a
//! request as an HTTP/1.1 one awaits a head (`--header-timeout`, idle eviction). For a wire view, each stream's
//! frames are counted by kind both ways and, while its session is watched, its exchange is reported as an `http`
//! record (the heads as decoded, beside their HPACK-compressed sizes) and a streaming response's `DATA` frames as
//! its events ([`super::capture`]).
//!
//! Over HTTPS the cell counts the HTTP bytes inside TLS (the stream it wraps is the TLS stream); the TLS records
//! themselves, handshakes included, are counted as a whole (`other.tls_bytes_*`).
//!
//! # Where it is not exact
//!
//! - A client that pipelines (sends a request before the previous response has fully arrived; browsers do
//!   not) has the rest of that response counted under the next request's technique.
//! - A request body the handler refused to read, arriving after the response head, counts under the next
//!   request (or under none, if the connection then closes).
//! - An HTTP/2 client that opens more streams than `--h2-max-streams` has the refused ones reset; a request
//!   accepted meanwhile may be matched with the stream just before or after its own.
//!
//! # Files
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`MeteredListener`]: accepting, `--max-sockets` and idle eviction, the edge's [`Deadlines`] |
//! | `counted.rs` | [`Counted`]: the stream that tells a [`Tally`] of every byte, and runs the deadlines |
//! | `connection.rs` | [`Connection`]: one connection's cell, which gives its bytes to their owner |
//! | `streams.rs` | the same for an HTTP/2 connection, stream by stream |
//! | `service.rs` | [`Metered`]: the per-connection service, and the handler's choice |

mod connection;
mod counted;
mod service;
mod streams;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) use connection::raw_response;
pub use connection::Connection;
pub use counted::{Counted, ReadWait, Reset, Tally};
pub(crate) use service::{chosen, chosen_session, chosen_wire_view};
pub use service::{Answered, Choice, Metered, Streaming};

use super::Metering;

/// A `TcpListener` whose connections count their bytes into a [`Metering`].
///
/// It also turns Nagle's algorithm off on every connection (`TCP_NODELAY`): every technique here pushes small
/// writes that should leave at once, and the delayed-ACK interplay of Nagle would add up to 40 ms to some.
#[derive(Debug)]
pub struct MeteredListener {
    inner: TcpListener,
    metering: Metering,
    /// One permit per open socket (`--max-sockets`); unlimited unless [`MeteredListener::with_limit`] sets it.
    slots: Option<Arc<Semaphore>>,
    /// The open sockets, for closing the oldest idle one at the limit.
    sockets: Arc<Sockets>,
    /// The edge's deadlines (none unless [`MeteredListener::with_deadlines`] sets them).
    deadlines: Deadlines,
    /// The longest request head, in bytes (`--max-head-bytes`); only used to word the 431 refusal, as the HTTP
    /// server enforces it.
    max_head: usize,
}

/// How long a connection may keep the server waiting on it (`--write-timeout`, `--header-timeout`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadlines {
    /// Longest a write may stay blocked on a peer that does not read; `None`: forever.
    pub write: Option<Duration>,
    /// Longest the wait for a complete request head, from the accept or the previous response; `None`: forever.
    pub header: Option<Duration>,
}

/// At `--max-sockets` with no idle socket to close, how often the listener looks again (sockets become idle when
/// a held long poll is answered, for instance) while it waits for one to close.
const SLOT_RECHECK: Duration = Duration::from_millis(100);

/// How often the kernel probes an idle accepted socket (TCP keep-alive), so that a peer that vanished without a
/// FIN or RST (a dead host, a dropped NAT mapping) frees its socket even when no write is pending.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

impl MeteredListener {
    /// Wraps `inner`; bytes are counted into `metering`.
    pub fn new(inner: TcpListener, metering: Metering) -> Self {
        MeteredListener {
            inner,
            metering,
            slots: None,
            sockets: Arc::default(),
            deadlines: Deadlines::default(),
            max_head: usize::MAX,
        }
    }

    /// Names the head limit the HTTP server enforces (`--max-head-bytes`) in the 431 refusal's message.
    pub fn with_max_head(mut self, bytes: usize) -> Self {
        self.max_head = bytes;
        self
    }

    /// Applies `deadlines` to every accepted socket: a write blocked longer than `deadlines.write`, or a request
    /// head not complete within `deadlines.header`, fails the socket with `TimedOut` (counted), which ends
    /// whatever technique it carries.
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// At most `max` sockets served at once. At the limit the listener takes the next connection and closes the
    /// socket that has been idle longest (no request in flight and no open channel: a keep-alive connection
    /// between requests, one that never finished a head) to make room, counted as `idle_evictions`; when every
    /// socket is busy (held long polls, streams, WebSockets), that connection waits for a slot and the ones after
    /// it wait in the kernel's backlog instead of costing the server memory (as mini-redis does).
    pub fn with_limit(mut self, max: usize) -> Self {
        self.slots = Some(Arc::new(Semaphore::new(max.max(1))));
        self
    }
}

impl MeteredListener {
    /// The next connection, once it has a slot under `--max-sockets`. Accept errors (a client that hung up in
    /// the backlog, too many open files) are waited out, never returned.
    pub async fn accept(&mut self) -> (MeteredStream, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        let slot = match self.slots.clone() {
            Some(slots) => Some(self.slot(slots).await),
            None => None,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE).with_interval(TCP_KEEPALIVE / 6);
        if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%error, "could not set SO_KEEPALIVE");
        }
        let connection = Connection::new(self.metering.clone(), slot, self.deadlines, &self.sockets, self.max_head);
        (Counted::new(stream, connection), addr)
    }

    /// A slot under `--max-sockets`: a free one, or the one the oldest idle socket gives back once closed.
    async fn slot(&self, slots: Arc<Semaphore>) -> OwnedSemaphorePermit {
        loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                return slot;
            }
            if let Some(idle) = self.sockets.oldest_idle() {
                if idle.evict() {
                    self.metering.others().idle_evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::select! {
                slot = slots.clone().acquire_owned() => return slot.expect("the socket semaphore is never closed"),
                () = tokio::time::sleep(SLOT_RECHECK) => {}
            }
        }
    }

    /// The counters its sockets count into.
    pub fn metering(&self) -> &Metering {
        &self.metering
    }

    /// The address it listens on.
    ///
    /// # Errors
    /// The socket's error, if any.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The open sockets of a listener, so that the oldest idle one can be closed at `--max-sockets`.
#[derive(Debug, Default)]
struct Sockets {
    next_id: AtomicU64,
    /// A std mutex: one insert at an accept, one remove at a close, one scan at the limit; never held across an
    /// `.await`, nor while a connection is dropped (its `Drop` takes this lock).
    open: Mutex<HashMap<u64, Weak<Connection>>>,
}

impl Sockets {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Weak<Connection>>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The socket idle the longest, if any is idle.
    fn oldest_idle(&self) -> Option<Arc<Connection>> {
        // Taken out of the lock first: the last handle of a closing connection may be dropped here.
        let open: Vec<Arc<Connection>> = self.lock().values().filter_map(Weak::upgrade).collect();
        open.into_iter()
            .filter_map(|c| c.idle_since().map(|since| (since, c)))
            .min_by_key(|(since, _)| *since)
            .map(|(_, c)| c)
    }
}

/// An accepted socket that counts what crosses it into its [`Connection`].
pub type MeteredStream = Counted<TcpStream, Arc<Connection>>;
