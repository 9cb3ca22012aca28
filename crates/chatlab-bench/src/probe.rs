//! What the bench's clients measure, shared by every participant of a phase: bytes on their sockets, HTTP
//! requests, empty polls, and the latency of every bench message they receive.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::delay::delayed;
use chatlab::metering::wire::{Counted, Reset, Tally};
use chatlab::tls::{client_config, Trust};

/// Every bench message's text starts with this, then the send time in µs since [`Probe::epoch`].
const MARKER: &str = "bench ";

/// Counters of one phase. All participants of a phase share one.
#[derive(Debug)]
pub(crate) struct Probe {
    /// Emulated one-way network delay of every client socket (`--delay-ms`).
    delay: Duration,
    /// Speak HTTPS to chatlab (`--http2`).
    pub(crate) https: Option<Arc<Https>>,
    /// The clock bench messages carry their send time on (all clients live in this process).
    epoch: Instant,
    /// Bytes the clients' sockets wrote (requests, POST bodies, WebSocket frames): the "up" direction.
    pub(crate) bytes_up: AtomicU64,
    /// Bytes the clients' sockets read: the "down" direction.
    pub(crate) bytes_down: AtomicU64,
    /// HTTP requests sent (joins, polls, POSTs, stream opens; a WebSocket's upgrade is one).
    pub(crate) requests: AtomicU64,
    /// Poll or long-poll responses with no event.
    pub(crate) empty_polls: AtomicU64,
    /// Bench messages received (one per message per receiver).
    pub(crate) deliveries: AtomicU64,
    /// Texts sent, and sends that failed (refused or broken).
    pub(crate) sent: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    /// Send-to-receive latency of each delivery, in µs.
    latencies: Mutex<Vec<u32>>,
}

/// The counters at one instant, to subtract.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reading {
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) requests: u64,
    pub(crate) empty_polls: u64,
    pub(crate) deliveries: u64,
    pub(crate) sent: u64,
    pub(crate) send_errors: u64,
    /// How many latency samples existed.
    pub(crate) samples: usize,
}

impl Probe {
    pub(crate) fn new() -> Arc<Probe> {
        Probe::with_delay(Duration::ZERO, None)
    }

    /// A probe whose client sockets take `delay` longer each way, and speak HTTPS if `https` says how.
    pub(crate) fn with_delay(delay: Duration, https: Option<Arc<Https>>) -> Arc<Probe> {
        Arc::new(Probe {
            delay,
            https,
            epoch: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            empty_polls: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            latencies: Mutex::new(Vec::new()),
        })
    }

    /// A bench message: the marker, the time it was due (`scheduled`), the sender, padded with `x` to at least
    /// `len` bytes. Latency counts from when the text was due, not from when its sender got round to it: a
    /// sender held up by a slow server makes the wait show (no coordinated omission).
    pub(crate) fn text(&self, scheduled: Instant, sender: usize, len: usize) -> String {
        let due = scheduled.saturating_duration_since(self.epoch).as_micros();
        let mut text = format!("{MARKER}{due} #{sender} ");
        while text.len() < len {
            text.push('x');
        }
        text
    }

    /// Looks at received bytes (an event, a poll body, SSE frames): each bench message in them counts as a
    /// delivery, with its latency.
    pub(crate) fn observe(&self, received: &[u8]) {
        // A substring search, not a JSON parse: the bench shares the CPU with the server it measures.
        let needle = b"\"message\":\"bench ";
        let now = self.epoch.elapsed().as_micros();
        // Latencies are gathered here and handed over a batch at a time: the counter and the list are shared
        // by every client of the phase.
        let mut found = [0u32; 64];
        let mut n = 0;
        let mut rest = received;
        while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
            rest = &rest[at + needle.len()..];
            let end = rest.iter().position(|b| !b.is_ascii_digit()).unwrap_or(rest.len());
            let Some(sent) = std::str::from_utf8(&rest[..end]).ok().and_then(|d| d.parse::<u128>().ok()) else {
                continue;
            };
            found[n] = now.saturating_sub(sent).min(u32::MAX as u128) as u32;
            n += 1;
            if n == found.len() {
                self.record(&found);
                n = 0;
            }
        }
        self.record(&found[..n]);
    }

    /// Adds latencies found together.
    fn record(&self, latencies: &[u32]) {
        if latencies.is_empty() {
            return;
        }
        self.deliveries.fetch_add(latencies.len() as u64, Ordering::Relaxed);
        // A std mutex: one extend, never held across an await.
        self.latencies.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(latencies);
    }

    /// Counts one HTTP request.
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> Reading {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Reading {
            bytes_up: get(&self.bytes_up),
            bytes_down: get(&self.bytes_down),
            requests: get(&self.requests),
            empty_polls: get(&self.empty_polls),
            deliveries: get(&self.deliveries),
            sent: get(&self.sent),
            send_errors: get(&self.send_errors),
            samples: self.latencies.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }

    /// Latencies (µs) recorded between two readings, sorted.
    pub(crate) fn latencies_between(&self, from: &Reading, to: &Reading) -> Vec<u32> {
        let all = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let mut window = all[from.samples.min(all.len())..to.samples.min(all.len())].to_vec();
        window.sort_unstable();
        window
    }
}

/// What a client socket counts into: its phase's probe.
#[derive(Debug)]
pub(crate) struct Meter(Arc<Probe>);

impl Tally for Meter {
    fn read(&self, data: &[u8]) {
        self.0.bytes_down.fetch_add(data.len() as u64, Ordering::Relaxed);
    }

    fn wrote(&self, data: &[u8]) {
        self.0.bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
    }

    fn wrote_vectored(&self, _: &[std::io::IoSlice<'_>], written: usize) {
        self.0.bytes_up.fetch_add(written as u64, Ordering::Relaxed);
    }
}

/// A socket, through the emulated delay or not.
type Socket = Either<TcpStream, DuplexStream>;

/// A client socket that counts every byte it reads and writes into a [`Probe`] (the same wrapper the server
/// counts its own sockets with). Over HTTPS it counts the HTTP bytes inside TLS, as the server does.
pub(crate) type CountingStream = Counted<ClientSocket, Meter>;

/// A client's socket: plain or TLS.
#[derive(Debug)]
pub(crate) struct ClientSocket(Either<Socket, TlsStream<Socket>>);

/// The bench's sockets have no write deadline, so they are never reset.
impl Reset for ClientSocket {}

impl AsyncRead for ClientSocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// How the bench reaches chatlab over HTTPS (`--http2`): the client configurations, by ALPN.
#[derive(Debug)]
pub(crate) struct Https {
    /// ALPN `http/1.1` only: WebSockets (chatlab offers no extended CONNECT over HTTP/2) and the bench's own
    /// requests.
    http1: Arc<rustls::ClientConfig>,
    /// ALPN `h2`: the HTTP techniques.
    http2: Arc<rustls::ClientConfig>,
}

impl Https {
    /// Connections that believe `trust`.
    ///
    /// # Errors
    /// A root certificate rustls cannot use.
    pub(crate) fn new(trust: &Trust) -> io::Result<Arc<Https>> {
        Ok(Arc::new(Https { http1: client_config(trust, &[b"http/1.1"])?, http2: client_config(trust, &[b"h2"])? }))
    }
}

/// Connects to `addr` (`host:port`), with Nagle off as a browser has it, through the probe's emulated delay:
/// plain, or (`tls`) with TLS offering the configuration's ALPN.
async fn open(addr: &str, probe: Arc<Probe>, tls: Option<Arc<rustls::ClientConfig>>) -> io::Result<CountingStream> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let inner = if probe.delay.is_zero() { Either::Left(socket) } else { Either::Right(delayed(socket, probe.delay)) };
    let Some(config) = tls else { return Ok(Counted::new(ClientSocket(Either::Left(inner)), Meter(probe))) };
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    let name =
        ServerName::try_from(host.to_owned()).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let tls = TlsConnector::from(config).connect(name, inner).await?;
    Ok(Counted::new(ClientSocket(Either::Right(tls)), Meter(probe)))
}

/// A connection for a WebSocket or a plain-HTTP/1.1 client (over HTTPS with `--http2`: ALPN `http/1.1`).
pub(crate) async fn connect(addr: &str, probe: Arc<Probe>) -> io::Result<CountingStream> {
    let tls = probe.https.as_ref().map(|https| https.http1.clone());
    open(addr, probe, tls).await
}

/// A connection that never speaks TLS (the seed's WebSockets).
pub(crate) async fn connect_plain(addr: &str, probe: Arc<Probe>) -> io::Result<CountingStream> {
    open(addr, probe, None).await
}

/// A connection for an HTTP technique's client, and whether it speaks HTTP/2 (over HTTPS with `--http2`).
pub(crate) async fn connect_http(addr: &str, probe: Arc<Probe>) -> io::Result<(CountingStream, bool)> {
    let tls = probe.https.as_ref().map(|https| https.http2.clone());
    let stream = open(addr, probe, tls).await?;
    let h2 = matches!(&stream.get_ref().0, Either::Right(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2"));
    Ok((stream, h2))
}
