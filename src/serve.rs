//! The HTTP server under [`crate::run`]: takes metered sockets from the listener, serves each with hyper's
//! HTTP/1.1 (upgrades on, for WebSockets) or, over HTTPS when ALPN chose `h2`, hyper's HTTP/2, and on shutdown
//! stops accepting and lets every connection finish the request it is answering.
//!
//! hyper rather than `axum::serve` because the server needs knobs of hyper's connection builders: the request
//! head limit (`--max-head-bytes`, which is HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE` too), HTTP/2's stream limit
//! and pings, and its own answers to heads it cannot parse, which the metered socket replaces with JSON refusals
//! ([`crate::metering::wire::Tally::rewrite`]).
//!
//! Over HTTPS (`--tls-cert`, `--tls-self-signed`) each socket is first looked at: a first byte that does not
//! start a TLS record (a plain-HTTP request) is answered `400` with a JSON body and closed. Then the TLS handshake,
//! within `--header-timeout`. The metered stream wraps the TLS stream, so the wire counters count the HTTP bytes
//! inside TLS; a stream under TLS counts the TLS records themselves (`other.tls_bytes_*`).

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::error::AppError;
use crate::metering::wire::{raw_response, Connection, Counted, Metered, MeteredListener, MeteredStream, Reset, Tally};
use crate::metering::Metering;

/// How the server speaks: what [`serve`] needs of the configuration.
#[derive(Clone)]
pub(crate) struct Settings {
    /// `--max-head-bytes`.
    pub(crate) max_head_bytes: usize,
    /// HTTPS, if configured.
    pub(crate) tls: Option<TlsAcceptor>,
    /// `--h2-max-streams`.
    pub(crate) h2_max_streams: u32,
    /// `--keepalive`: HTTP/2 pings a connection this long quiet, and closes it if the answer takes as long again.
    pub(crate) keepalive: Duration,
    /// `--header-timeout`: also the longest a TLS handshake may take.
    pub(crate) header_timeout: Option<Duration>,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, asks every connection to
/// close once its current response is out (HTTP/2: a `GOAWAY`, then its open streams finish), and returns when
/// they all have. Upgraded connections (WebSockets) are no longer the HTTP server's: the room ends them.
///
/// # Errors
/// None today: accept errors are waited out by the listener.
pub(crate) async fn serve(
    mut listener: MeteredListener,
    router: Router,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut h1 = http1::Builder::new();
    h1.max_header_size(settings.max_head_bytes);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(settings.h2_max_streams)
        .max_header_list_size(settings.max_head_bytes as u32)
        .keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.keepalive);
    let (h1, h2) = (Arc::new(h1), Arc::new(h2));
    let metering = listener.metering().clone();
    // Dropped to tell every connection to finish; each connection holds a `done` receiver until it has.
    let (stop, stopping) = watch::channel(());
    let (done, finished) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let served = Served { router: router.clone(), peer, stopping: stopping.clone() };
        let finished = finished.clone();
        let Some(acceptor) = settings.tls.clone() else {
            let h1 = Arc::clone(&h1);
            tokio::spawn(async move {
                served.http1(&h1, stream).await;
                drop(finished);
            });
            continue;
        };
        let (h1, h2, metering, limit) = (Arc::clone(&h1), Arc::clone(&h2), metering.clone(), settings.header_timeout);
        tokio::spawn(async move {
            let mut stopping = served.stopping.clone();
            let secured = tokio::select! {
                secured = handshake(stream, &acceptor, &metering, limit) => secured,
                _ = stopping.changed() => None,
            };
            if let Some(stream) = secured {
                if stream.get_ref().get_ref().1.alpn_protocol() == Some(b"h2") {
                    let (tls, connection) = stream.into_parts();
                    connection.speak_http2();
                    served.http2(&h2, Counted::new(tls, connection)).await;
                } else {
                    served.http1(&h1, stream).await;
                }
            }
            drop(finished);
        });
    }
    drop(listener);
    drop(finished);
    drop(stop);
    done.closed().await;
    Ok(())
}

/// One connection's service and the shutdown signal.
struct Served {
    router: Router,
    peer: std::net::SocketAddr,
    stopping: watch::Receiver<()>,
}

impl Served {
    async fn http1<S>(mut self, builder: &http1::Builder, stream: Counted<S, Arc<Connection>>)
    where
        S: AsyncRead + AsyncWrite + Reset + Unpin + Send + 'static,
    {
        let service = Metered::new(self.router.clone(), &stream, self.peer)
            .map_request(|request: axum::http::Request<Incoming>| request.map(Body::new));
        let service = TowerToHyperService::new(service);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection.with_upgrades());
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::trace!(%error, "connection ended with an error");
                }
            }
            _ = self.stopping.changed() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }

    async fn http2<S>(mut self, builder: &http2::Builder<TokioExecutor>, stream: Counted<S, Arc<Connection>>)
    where
        S: AsyncRead + AsyncWrite + Reset + Unpin + Send + 'static,
    {
        // Called by hyper itself (not through tower's adapter), so that each request claims its stream in order.
        let service = Metered::new(self.router.clone(), &stream, self.peer);
        let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::trace!(%error, "HTTP/2 connection ended with an error");
                }
            }
            _ = self.stopping.changed() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// An HTTPS socket: TLS over a socket that counts the TLS records, under the connection's HTTP counting.
type Secured = Counted<tokio_rustls::server::TlsStream<Counted<TcpStream, TlsRecords>>, Arc<Connection>>;

/// The TLS handshake of an accepted socket, within `limit`; `None` if it failed, timed out or was plain HTTP
/// (which is answered here).
async fn handshake(
    stream: MeteredStream,
    acceptor: &TlsAcceptor,
    metering: &Metering,
    limit: Option<Duration>,
) -> Option<Secured> {
    let (tcp, connection) = stream.into_parts();
    let others = metering.others();
    let mut first = [0u8; 1];
    // A TLS connection starts with a handshake record (content type 22); anything else is not TLS.
    match within(limit, tcp.peek(&mut first)).await {
        None => {
            others.header_timeouts.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Ok(1)) if first[0] == 0x16 => {}
        Some(Ok(1)) => {
            refuse_plain(tcp, metering).await;
            return None;
        }
        Some(_) => return None,
    }
    let tcp = Counted::new(tcp, TlsRecords(metering.clone()));
    match within(limit, acceptor.accept(tcp)).await {
        None => {
            others.header_timeouts.fetch_add(1, Ordering::Relaxed);
            None
        }
        Some(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            others.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            None
        }
        Some(Ok(tls)) => {
            others.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            Some(Counted::new(tls, connection))
        }
    }
}

/// `future`, given up after `limit` (never, without one).
async fn within<T>(limit: Option<Duration>, future: impl Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
}

/// How long a refused plain-HTTP socket reads (and drops) what its client sends before closing, and how much.
const PLAIN_LINGER: Duration = Duration::from_secs(1);
const PLAIN_LINGER_BYTES: usize = 64 * 1024;

/// Answers a plain-HTTP request to the HTTPS port with a JSON `400` and closes.
async fn refuse_plain(mut tcp: TcpStream, metering: &Metering) {
    let others = metering.others();
    others.plain_http_refused.fetch_add(1, Ordering::Relaxed);
    let refusal = raw_response(&AppError::BadRequest(
        "this port speaks HTTPS: use https:// (a plain-HTTP request cannot be served here)".into(),
    ));
    if tcp.write_all(&refusal).await.is_err() {
        return;
    }
    others.wire_bytes_out.fetch_add(refusal.len() as u64, Ordering::Relaxed);
    let _ = tcp.shutdown().await;
    // Read what the client sent (its request) before closing: closing with unread bytes would reset the
    // connection, and the client could lose the answer.
    let mut scratch = [0u8; 4096];
    let mut read = 0;
    let _ = tokio::time::timeout(PLAIN_LINGER, async {
        while read < PLAIN_LINGER_BYTES {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    others.wire_bytes_in.fetch_add(read as u64, Ordering::Relaxed);
}

/// Counts the TLS records of an HTTPS socket (`other.tls_bytes_*`).
#[derive(Debug)]
struct TlsRecords(Metering);

impl Tally for TlsRecords {
    fn read(&self, data: &[u8]) {
        self.0.others().tls_bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
    }

    fn wrote(&self, data: &[u8]) {
        self.0.others().tls_bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}
