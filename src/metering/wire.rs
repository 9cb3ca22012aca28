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
//! the connection count in that session's [`SessionWire`] too. A wire view's own requests name no technique and
//! no session: they count under `other.wire_view`. The socket also hands the cell the bytes themselves, which
//! [`super::capture`] reads back for the wire view (HTTP heads, WebSocket frames, SSE writes).
//!
//! The choice travels from the handler to the service through a task-local slot (`chosen`): the handler
//! future runs inside the service's scope, so no transport needs to carry a handle. The service is made per
//! connection ([`Metered::new`]) and holds the connection's cell, so a request carries nothing extra.
//!
//! # HTTP/2
//!
//! An HTTP/2 connection (HTTPS with ALPN `h2`, see `serve.rs`) carries many requests at once, interleaved, so the
//! rhythm above does not hold. The cell follows the frame headers in both directions instead (`h2.rs`): every
//! frame's bytes belong to its stream; a stream is opened by the client's `HEADERS` with a new stream id, its
//! request reaches the service in that order (hyper calls the service as it accepts each stream, and the call
//! claims the oldest unclaimed stream), and its handler's
//! choice gives the stream's bytes to a technique and a session as above. The client's preface and the frames of
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
//! Counting is one uncontended `std` mutex per socket read or write: the connection's own task is almost the
//! only one touching it, and the section is a few additions (and, on a WebSocket or an SSE stream, a walk over
//! the frame or chunk headers in the write), never held across an `.await`.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::serve::Listener;
use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower_http::timeout::TimeoutBody;

use super::capture::{H2Connection, H2Exchange, H2Head, H2Log, H2Request, Kind, Log};
use super::h2::{Frames, Piece, DATA, END_STREAM, HEADERS, RST_STREAM};
use super::session::SessionWire;
use super::Metering;
use crate::error::AppError;
use crate::model::Transport;

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

/// Told of every byte a [`Counted`] stream reads and writes, with the bytes themselves: a connection reads
/// them back for a wire view ([`super::capture`]); a counter only takes their length.
pub trait Tally {
    /// `data` was read (empty at end of stream).
    fn read(&self, data: &[u8]);
    /// `data` was written.
    fn wrote(&self, data: &[u8]);
    /// The first `written` bytes of `slices` were written, in one call.
    fn wrote_vectored(&self, slices: &[io::IoSlice<'_>], written: usize) {
        let mut left = written;
        for slice in slices {
            if left == 0 {
                break;
            }
            let n = slice.len().min(left);
            self.wrote(&slice[..n]);
            left -= n;
        }
    }
    /// The longest a write may stay `Pending` before the stream fails it with `TimedOut`; `None`: forever.
    fn write_timeout(&self) -> Option<Duration> {
        None
    }
    /// A read found nothing to read, for the task of `cx`: how long it may wait.
    fn read_blocked(&self, _cx: &Context<'_>) -> ReadWait {
        ReadWait::Forever
    }
    /// A write stayed `Pending` (the peer's window is full).
    fn write_blocked(&self) {}
    /// A write is about to start with `head`, the status line of an error response the HTTP server made up
    /// itself for a request head it could not parse (`HTTP/1.1 4..`): the response to send instead, if any. The
    /// stream sends it in place of everything written after.
    fn rewrite(&self, _head: &[u8]) -> Option<Bytes> {
        None
    }
    /// A deadline passed (`writing`: the write deadline, else the read one); the stream now fails every call.
    fn timed_out(&self, _writing: bool) {}
}

/// How long a blocked read may wait ([`Tally::read_blocked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadWait {
    /// As long as it takes.
    Forever,
    /// Until then; it fails with `TimedOut` after (a request head is awaited).
    Until(Instant),
    /// Not at all: the socket was closed to make room for another one (`--max-sockets`).
    Evicted,
}

/// A deadline for one direction of a [`Counted`] stream: its timer is allocated once and reset, never remade.
#[derive(Debug, Default)]
struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current wait (a write or read that stayed `Pending`).
    armed: bool,
}

impl Timer {
    /// Runs the timer until `deadline` (when not armed, or armed for another instant) and polls it, so `cx` is
    /// woken when it passes; true once it has.
    fn passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.armed || sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx).is_ready()
    }

    /// The deadline of the current wait, if one runs.
    fn deadline(&self) -> Option<Instant> {
        self.sleep.as_ref().filter(|_| self.armed).map(|sleep| sleep.deadline())
    }
}

fn timed_out_error(writing: bool) -> io::Error {
    let what = if writing { "write timed out: the peer does not read" } else { "no request head in time" };
    io::Error::new(io::ErrorKind::TimedOut, what)
}

/// A stream that tells a [`Tally`] how many bytes each successful read and write moved, and otherwise behaves
/// exactly as the stream it wraps (vectored writes included). The server's sockets count into their
/// [`Connection`]; the bench's client sockets count into its probe.
#[derive(Debug)]
pub struct Counted<S, T> {
    inner: S,
    tally: T,
    /// Runs while a write is blocked ([`Tally::write_timeout`]).
    writing: Timer,
    /// Runs while a read is blocked and a request head is awaited ([`Tally::read_blocked`]).
    reading: Timer,
    /// A deadline passed: every later call fails with `TimedOut` (a close frame must not wait again).
    expired: Option<bool>,
    /// A response sent instead of what the HTTP server writes ([`Tally::rewrite`]), and how much of it is out.
    replacement: Option<(Bytes, usize)>,
    /// After a replacement, with the write side shut: until when, and how many bytes it has dropped.
    lingering: Option<(Instant, usize)>,
}

impl<S, T> Counted<S, T> {
    /// The stream it wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream and the tally, unwrapped.
    pub fn into_parts(self) -> (S, T) {
        (self.inner, self.tally)
    }

    /// Wraps `inner`, counting into `tally`.
    pub fn new(inner: S, tally: T) -> Self {
        Counted {
            inner,
            tally,
            writing: Timer::default(),
            reading: Timer::default(),
            expired: None,
            replacement: None,
            lingering: None,
        }
    }

    /// Where the bytes are counted.
    pub fn tally(&self) -> &T {
        &self.tally
    }
}

/// A stream whose close can be made a reset. A connection let go because its peer stopped reading is reset
/// rather than closed: a graceful close would leave the queued bytes in the kernel, retried against a closed
/// window for minutes, and the peer would only learn of the close after reading everything before it.
pub trait Reset {
    /// Makes the coming close a reset (`SO_LINGER` 0); a stream that cannot does nothing.
    fn reset_on_close(&self) {}
}

impl Reset for TcpStream {
    fn reset_on_close(&self) {
        // A failure leaves a graceful close, which still ends the connection.
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl<S: Reset> Reset for tokio_rustls::server::TlsStream<S> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

/// A client's TLS stream (the bench's, the tests'): clients set no write deadline, so they are never reset.
impl<S> Reset for tokio_rustls::client::TlsStream<S> {}

impl<S: Reset, T> Reset for Counted<S, T> {
    fn reset_on_close(&self) {
        self.inner.reset_on_close();
    }
}

impl<S: Reset, T: Tally> Counted<S, T> {
    /// After a write: a blocked one runs the write deadline, a done one stops it.
    fn after_write(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => {
                self.tally.write_blocked();
                let Some(limit) = self.tally.write_timeout() else { return Poll::Pending };
                let deadline = self.writing.deadline().unwrap_or_else(|| Instant::now() + limit);
                if self.writing.passed(cx, deadline) {
                    return Poll::Ready(Err(self.expire(true)));
                }
                Poll::Pending
            }
            done => {
                self.writing.armed = false;
                done
            }
        }
    }

    /// Writes what is left of the replacement response, if there is one.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + Unpin,
    {
        while let Some((bytes, sent)) = &self.replacement {
            let (bytes, sent) = (bytes.clone(), *sent);
            if sent == bytes.len() {
                break;
            }
            let result = Pin::new(&mut self.inner).poll_write(cx, &bytes[sent..]);
            if let Poll::Ready(Ok(written)) = result {
                self.tally.wrote(&bytes[sent..sent + written]);
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.replacement = Some((bytes, sent + written));
            }
            ready!(self.after_write(cx, result))?;
        }
        Poll::Ready(Ok(()))
    }

    /// A write of `first` (its first bytes) begins: true when a replacement response is or has just been put
    /// in its place ([`Tally::rewrite`]).
    fn replaced(&mut self, first: &[u8]) -> bool {
        if self.replacement.is_some() {
            return true;
        }
        if !first.starts_with(b"HTTP/1.1 4") {
            return false;
        }
        match self.tally.rewrite(first) {
            Some(response) => {
                self.replacement = Some((response, 0));
                true
            }
            None => false,
        }
    }

    fn expire(&mut self, writing: bool) -> io::Error {
        if self.expired.is_none() {
            self.expired = Some(writing);
            self.tally.timed_out(writing);
            if writing {
                self.inner.reset_on_close();
            }
        }
        timed_out_error(self.expired.unwrap_or(writing))
    }
}

impl<S: AsyncRead + Reset + Unpin, T: Tally + Unpin> AsyncRead for Counted<S, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(writing) = self.expired {
            return Poll::Ready(Err(timed_out_error(writing)));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match result {
            Poll::Ready(Ok(())) => {
                self.reading.armed = false;
                self.tally.read(&buf.filled()[before..]);
            }
            Poll::Pending => match self.tally.read_blocked(cx) {
                ReadWait::Forever => {}
                ReadWait::Until(deadline) => {
                    if self.reading.passed(cx, deadline) {
                        return Poll::Ready(Err(self.expire(false)));
                    }
                }
                ReadWait::Evicted => {
                    let why = "closed to make room for a new connection (--max-sockets)";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)));
                }
            },
            Poll::Ready(Err(_)) => {}
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Reset + Unpin, T: Tally + Unpin> AsyncWrite for Counted<S, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(writing) = self.expired {
            return Poll::Ready(Err(timed_out_error(writing)));
        }
        if self.replaced(data) {
            ready!(self.poll_replacement(cx))?;
            return Poll::Ready(Ok(data.len()));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(written)) = result {
            self.tally.wrote(&data[..written]);
        }
        self.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(writing) = self.expired {
            return Poll::Ready(Err(timed_out_error(writing)));
        }
        let first = data.iter().find(|slice| !slice.is_empty()).map_or(&[][..], |slice| &slice[..]);
        if self.replaced(first) {
            ready!(self.poll_replacement(cx))?;
            return Poll::Ready(Ok(data.iter().map(|slice| slice.len()).sum()));
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if let Poll::Ready(Ok(written)) = result {
            self.tally.wrote_vectored(data, written);
        }
        self.after_write(cx, result)
    }

    // Forwarded so that hyper writes exactly as it would on the bare stream (vectored head + body).
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.replacement.is_none() {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        ready!(self.poll_replacement(cx))?;
        if self.lingering.is_none() {
            ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.lingering = Some((Instant::now() + LINGER, 0));
        }
        self.poll_linger(cx)
    }
}

/// How long a refused head's socket keeps reading (and dropping) what its client still sends after the refusal,
/// and how much at most: closing with unread bytes would reset the connection, and the client could lose the
/// refusal before reading it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

impl<S: AsyncRead + Unpin, T: Tally> Counted<S, T> {
    /// After a refusal, with the write side shut: reads until the client closes, [`LINGER`] passes or
    /// [`LINGER_BYTES`] have come, counting what it drops.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 8192];
        while let Some((until, read)) = self.lingering {
            if read >= LINGER_BYTES {
                break;
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.tally.read(buf.filled());
                    self.lingering = Some((until, read + buf.filled().len()));
                }
                Poll::Ready(_) => break,
                Poll::Pending => {
                    if self.reading.passed(cx, until) {
                        break;
                    }
                    return Poll::Pending;
                }
            }
        }
        self.lingering = None;
        self.replacement = None;
        Poll::Ready(Ok(()))
    }
}

/// Whose bytes a connection is carrying right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A request is being read; its technique is not known yet.
    Undecided,
    /// A request of this technique, its response, or (after an upgrade) everything.
    Technique(Transport),
    /// A request of none of the techniques.
    Nobody,
    /// A wire view's request or connection (`/api/wire`, `/api/sessions/{session}/wire`).
    WireView,
}

/// One connection's attribution state (see the module docs for the rule).
#[derive(Debug)]
struct Attribution {
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
    head_deadline: Option<Instant>,
    /// Bytes were written while a head is awaited (the previous response still going out): the deadline is
    /// counted again from the next blocked read, so a large answer to a slow reader is not cut by it.
    wrote_while_awaiting: bool,
    /// The connection waits for a request head: from the accept and the end of each plain response until a head
    /// is parsed; never once it carries a stream.
    awaiting_head: bool,
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
    h2: Option<Box<Streams>>,
}

/// An HTTP/2 connection's streams, followed from its frames (see the module docs).
#[derive(Debug)]
struct Streams {
    reads: Frames,
    writes: Frames,
    /// The open streams (bounded by `--h2-max-streams`, which the HTTP server enforces with resets).
    open: HashMap<u32, Stream>,
    /// The last few ended streams, for frames of theirs that cross the ended ones (a late `WINDOW_UPDATE`).
    ended: std::collections::VecDeque<(u32, Owner, Option<Arc<SessionWire>>)>,
    /// Streams whose requests have not reached the service yet, oldest first.
    unclaimed: std::collections::VecDeque<u32>,
    /// The highest stream id the client has opened.
    last: u32,
    /// What a wire view's records say of the connection: its streams so far and its own bytes.
    summary: H2Connection,
}

/// How many ended streams keep their owner for late frames.
const ENDED_KEPT: usize = 16;

/// One HTTP/2 stream's owner, its bytes while the owner is not known, and what a wire view is told of it.
#[derive(Debug)]
struct Stream {
    owner: Owner,
    session: Option<Arc<SessionWire>>,
    pending_in: u64,
    pending_out: u64,
    log: H2Log,
}

impl Streams {
    fn new(connection: u64) -> Self {
        Streams {
            reads: Frames::from_client(),
            writes: Frames::from_server(),
            open: HashMap::new(),
            ended: std::collections::VecDeque::new(),
            unclaimed: std::collections::VecDeque::new(),
            last: 0,
            summary: H2Connection { id: connection, ..H2Connection::default() },
        }
    }

    /// Whose the bytes of `stream` are: `None` for the connection, `Undecided` while pending.
    fn owner(&mut self, stream: u32) -> Option<(Owner, Option<Arc<SessionWire>>)> {
        if stream == 0 {
            return None;
        }
        if let Some(open) = self.open.get(&stream) {
            return Some((open.owner, open.session.clone()));
        }
        self.ended.iter().find(|(id, ..)| *id == stream).map(|(_, owner, session)| (*owner, session.clone()))
    }
}
impl Attribution {
    /// See [`Connection::idle_since`].
    fn idle_since(&self) -> Option<Instant> {
        (self.awaiting_head && self.read_waiting && !self.write_stuck && !self.evicted).then_some(self.active_at)
    }
}

/// The shared per-connection cell: the socket counts into it, the connection's [`Metered`] service tells it whose
/// bytes they are.
#[derive(Debug)]
pub struct Connection {
    metering: Metering,
    state: Mutex<Attribution>,
    /// This socket's place under `--max-sockets`, given back when the socket closes.
    _slot: Option<OwnedSemaphorePermit>,
    deadlines: Deadlines,
    /// Its key among the listener's open sockets, and those.
    id: u64,
    sockets: Arc<Sockets>,
    /// `--max-head-bytes`, for the 431 refusal's message.
    max_head: usize,
}

impl Connection {
    fn new(
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

    /// The connection speaks HTTP/2 (ALPN chose `h2`): its bytes are given to streams from now on.
    pub fn speak_http2(&self) {
        self.metering.others().http2_connections_total.fetch_add(1, Ordering::Relaxed);
        self.state().h2 = Some(Box::new(Streams::new(self.id)));
    }

    /// The stream of the HTTP/2 request reaching the service now (the oldest unclaimed one); `None` on HTTP/1.1.
    fn claim_stream(&self) -> Option<u32> {
        let mut state = self.state();
        let streams = state.h2.as_mut()?;
        // Always `Some` on HTTP/2 (the request's HEADERS was read before it was dispatched); 0 if it was not seen.
        Some(streams.unclaimed.pop_front().unwrap_or(0))
    }

    /// An HTTP/2 stream's response head is ready: its bytes are `owner`'s (and `session`'s, for a technique); a
    /// `kind` response, kept as `exchange` for a watching wire view.
    fn answer_stream(
        &self,
        id: u32,
        owner: Owner,
        session: Option<Arc<SessionWire>>,
        kind: Kind,
        exchange: Option<Box<H2Exchange>>,
    ) {
        let mut state = self.state();
        let Some(streams) = state.h2.as_mut() else { return };
        let Some(stream) = streams.open.get_mut(&id) else { return };
        stream.owner = owner;
        stream.session = session.filter(|_| matches!(owner, Owner::Technique(_)));
        let watched = stream.session.as_ref().is_some_and(|s| s.watched());
        stream.log.answered(kind, exchange.filter(|_| watched));
        let (read, written) = (std::mem::take(&mut stream.pending_in), std::mem::take(&mut stream.pending_out));
        let session = stream.session.clone();
        self.count(owner, session.as_deref(), read, written, true);
    }

    /// `data` crossed an HTTP/2 connection (`reading`: from the client): each frame's bytes to its stream.
    fn h2_bytes(&self, state: &mut Attribution, data: &[u8], reading: bool) {
        let Some(mut streams) = state.h2.take() else { return };
        let mut opened = false;
        let mut closed = false;
        let Streams { reads, writes, .. } = &mut *streams;
        let frames = if reading { reads } else { writes };
        let mut frames = std::mem::replace(frames, Frames::from_server());
        frames.feed(data, &mut |piece| match piece {
            Piece::Starts(head) => {
                if reading && head.kind == HEADERS && head.stream % 2 == 1 && head.stream > streams.last {
                    streams.last = head.stream;
                    let stream = Stream {
                        owner: Owner::Undecided,
                        session: None,
                        pending_in: 0,
                        pending_out: 0,
                        log: H2Log::default(),
                    };
                    streams.open.insert(head.stream, stream);
                    streams.unclaimed.push_back(head.stream);
                    streams.summary.streams += 1;
                    opened = true;
                }
                if let Some(open) = streams.open.get_mut(&head.stream) {
                    open.log.starts(head.kind, reading, head.stream, open.session.as_deref());
                }
            }
            Piece::Bytes { stream, kind, n, payload } => {
                if let Some(open) = streams.open.get_mut(&stream) {
                    open.log.bytes(kind, n, payload, reading);
                }
                let (read, written) = if reading { (n, 0) } else { (0, n) };
                match streams.owner(stream) {
                    Some((Owner::Undecided, _)) => {
                        if let Some(open) = streams.open.get_mut(&stream) {
                            open.pending_in += read;
                            open.pending_out += written;
                        }
                    }
                    Some((owner, session)) => self.count(owner, session.as_deref(), read, written, true),
                    None => {
                        if reading {
                            streams.summary.bytes_in += n;
                        } else {
                            streams.summary.bytes_out += n;
                        }
                        let others = self.metering.others();
                        let (total, own) = if reading {
                            (&others.wire_bytes_in, &others.http2_connection_bytes_in)
                        } else {
                            (&others.wire_bytes_out, &others.http2_connection_bytes_out)
                        };
                        total.fetch_add(n, Ordering::Relaxed);
                        own.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Piece::Ends(head) => {
                let summary = streams.summary;
                if let Some(open) = streams.open.get_mut(&head.stream) {
                    open.log.ends(head.kind, head.flags, reading, head.stream, open.session.as_deref(), &summary);
                }
                let ends = head.kind == RST_STREAM
                    || (!reading && (head.kind == DATA || head.kind == HEADERS) && head.flags & END_STREAM != 0);
                if ends {
                    if let Some(mut stream) = streams.open.remove(&head.stream) {
                        closed = true;
                        stream.log.ended(head.stream, stream.session.as_deref(), &summary);
                        if stream.owner == Owner::Undecided {
                            // Reset before its request was answered: nobody's.
                            streams.unclaimed.retain(|id| *id != head.stream);
                            self.count(Owner::Nobody, None, stream.pending_in, stream.pending_out, true);
                        } else {
                            if streams.ended.len() == ENDED_KEPT {
                                streams.ended.pop_front();
                            }
                            streams.ended.push_back((head.stream, stream.owner, stream.session));
                        }
                    }
                }
            }
        });
        *(if reading { &mut streams.reads } else { &mut streams.writes }) = frames;
        let idle = streams.open.is_empty();
        state.h2 = Some(streams);
        if opened && !idle {
            state.head_deadline = None;
            state.awaiting_head = false;
        } else if closed && idle {
            state.head_deadline = self.deadlines.header.map(|limit| Instant::now() + limit);
            state.wrote_while_awaiting = false;
            state.awaiting_head = true;
        }
    }

    /// A request head was parsed: no deadline until its response is out, and the connection is busy.
    fn head_complete(&self) {
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
    fn idle_since(&self) -> Option<Instant> {
        self.state().idle_since()
    }

    /// Closes the connection to make room, if it is still idle: its waiting read fails at once. True if it was.
    fn evict(&self) -> bool {
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

    fn state(&self) -> MutexGuard<'_, Attribution> {
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
    fn count(&self, owner: Owner, session: Option<&SessionWire>, read: u64, written: u64, http2: bool) {
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
    fn answer(&self, owner: Owner, session: Option<Arc<SessionWire>>, kind: Kind, plain: bool) {
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

/// One connection's service: runs each request with a fresh choice slot, then tells the connection whose bytes
/// the request and its response are.
#[derive(Debug, Clone)]
pub struct Metered {
    router: Router,
    connection: Arc<Connection>,
    /// The peer's address, given to each request as axum's `ConnectInfo` (the per-client limits read it).
    peer: SocketAddr,
}

impl Metered {
    /// The service of one accepted socket: runs `router` for each of its requests, attributing their bytes.
    /// `peer` is given to each request as axum's `ConnectInfo`.
    pub fn new<S>(router: Router, stream: &Counted<S, Arc<Connection>>, peer: SocketAddr) -> Self {
        Metered { router, connection: stream.tally().clone(), peer }
    }
}

impl Service<Request> for Metered {
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<Choice, Answered>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        self.connection.head_complete();
        let stream = self.connection.claim_stream();
        // An HTTP/2 request is kept for a wire view as it was decoded (before `host` is added below).
        let kept = (stream.is_some() && self.connection.metering.sessions().capturing())
            .then(|| Box::new(H2Request::new(request.method(), request.uri(), request.headers())));
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // HTTP/2 names the host in `:authority` (the URI's), not in `Host`: give it as `Host` too, so that every
        // check of the host (the origin check of POSTs, the DNS-rebinding guard) reads the same name over both
        // versions.
        if stream.is_some() && !request.headers().contains_key(header::HOST) {
            if let Some(host) = request.uri().authority().and_then(|a| header::HeaderValue::from_str(a.as_str()).ok()) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
        // A body that stops arriving is given up after `--header-timeout` between its pieces; a request without
        // one (every GET) is not wrapped.
        let request = match self.connection.deadlines.header {
            Some(limit)
                if request.headers().contains_key(header::CONTENT_LENGTH)
                    || request.headers().contains_key(header::TRANSFER_ENCODING) =>
            {
                request.map(|body| Body::new(TimeoutBody::new(limit, body)))
            }
            _ => request,
        };
        // The router is always ready. Its future is named (no box, no copy of the router per request): the
        // empty poll, the commonest request, is a few microseconds all told.
        let routed = self.router.call(request);
        let choice = Choice { technique: Cell::new(NONE), session: Cell::new(None), http2: stream.is_some() };
        CHOSEN.scope(choice, Answered { routed, connection: self.connection.clone(), stream, kept })
    }
}

/// The service as hyper calls it, for HTTP/2: hyper calls it for each request as it accepts the request's stream,
/// in the order the client opened them, and that is when the request claims its stream (the oldest unclaimed
/// one). Through tower's adapter the call would wait for the request's task to first run, and tasks run in any
/// order on a multi-threaded runtime: requests would claim each other's streams.
impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Metered {
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<Choice, Answered>;

    fn call(&self, request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        Service::call(&mut self.clone(), request.map(Body::new))
    }
}

/// A request being answered by the router, inside its choice slot's scope; when the response is ready, it tells
/// the connection whose bytes the request and the response are.
pub struct Answered {
    routed: RouteFuture<Infallible>,
    connection: Arc<Connection>,
    /// The HTTP/2 stream of the request; `None` on HTTP/1.1.
    stream: Option<u32>,
    /// The HTTP/2 request, kept while some wire view is open.
    kept: Option<Box<H2Request>>,
}

impl Future for Answered {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(response) = ready!(Pin::new(&mut self.routed).poll(cx));
        let (chosen, session) = CHOSEN.with(|choice| (choice.technique.get(), choice.session.take()));
        let owner = match Transport::ALL.into_iter().find(|t| *t as u8 == chosen) {
            Some(technique) => Owner::Technique(technique),
            None if chosen == WIRE_VIEW => Owner::WireView,
            None => Owner::Nobody,
        };
        let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        let streamed = match response.extensions().get::<Streaming>() {
            Some(Streaming::Ndjson) => Some(Kind::Ndjson),
            Some(Streaming::Script) => Some(Kind::Script),
            None if sse => Some(Kind::Sse),
            None => None,
        };
        let stream = streamed.is_some();
        let kind = match streamed {
            _ if upgrade => Kind::Upgrade,
            Some(kind) if session.is_some() => kind,
            _ => Kind::Plain,
        };
        if let Some(id) = self.stream {
            let watched = session.as_ref().is_some_and(|s| s.watched());
            let exchange = match self.kept.take() {
                Some(kept) if watched => {
                    let technique = if let Owner::Technique(t) = owner { Some(t) } else { None };
                    let length = hyper::body::Body::size_hint(response.body()).exact();
                    let head = H2Head::response(response.status(), response.headers(), length);
                    Some(Box::new(kept.answered(technique, head)))
                }
                _ => None,
            };
            self.connection.answer_stream(id, owner, session, kind, exchange);
            return Poll::Ready(Ok(response));
        }
        self.connection.answer(owner, session, kind, !upgrade && !stream);
        Poll::Ready(Ok(response))
    }
}

/// Marks a response (in its extensions) whose body is a long stream of events other than SSE, which is known
/// by its type: the connection reads its body back as events for a wire view, and sets no request-head
/// deadline while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// HTTP streaming's NDJSON lines.
    Ndjson,
    /// The forever iframe's `<script>` chunks.
    Script,
}

/// No technique chosen (yet).
const NONE: u8 = u8::MAX;
/// The request is a wire view's.
const WIRE_VIEW: u8 = u8::MAX - 1;

/// What the handler of the current request named.
pub struct Choice {
    /// The technique, as `Transport as u8`, or [`NONE`], or [`WIRE_VIEW`].
    technique: Cell<u8>,
    /// The session, once the handler knows it exists.
    session: Cell<Option<Arc<SessionWire>>>,
    /// The request came over HTTP/2.
    http2: bool,
}

tokio::task_local! {
    /// The current request's [`Choice`].
    static CHOSEN: Choice;
}

/// Records that the current request belongs to `transport`; true if it came over HTTP/2. Called by
/// [`crate::metering::Metering::request`]; outside a metered request (tests, the bench) it does nothing.
pub(crate) fn chosen(transport: Transport) -> bool {
    CHOSEN
        .try_with(|choice| {
            choice.technique.set(transport as u8);
            choice.http2
        })
        .unwrap_or(false)
}

/// Records that the current request is a wire view's: its bytes count under `other.wire_view`.
pub(crate) fn chosen_wire_view() {
    let _ = CHOSEN.try_with(|choice| choice.technique.set(WIRE_VIEW));
}

/// Records that the current request (and, if it upgrades, its connection) is `session`'s.
pub(crate) fn chosen_session(session: Arc<SessionWire>) {
    let _ = CHOSEN.try_with(|choice| choice.session.set(Some(session)));
}
