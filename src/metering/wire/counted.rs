//! [`Counted`]: a stream that tells a [`Tally`] of every byte it reads and writes, and enforces the edge's
//! deadlines on it: a write that stays blocked on a peer that does not read, a request head that does not come.
//! It also puts the JSON refusal in place of the HTTP server's own answer to a head it could not parse.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Told of every byte a [`Counted`] stream reads and writes, with the bytes themselves: a connection reads
/// them back for a wire view ([`crate::metering::capture`]); a counter only takes their length.
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
/// [`Connection`](super::Connection); the bench's client sockets count into its probe.
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
