//! chatlab: one chat room, reachable at once through WebSocket, Server-Sent Events, long polling and short
//! polling, with what each technique costs counted on the wire.
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`core`] | the room: events (serialised once), sessions, the one fan-out point ([`core::Room`]) and the per-client limits |
//! | [`broker`] | where the room's shared state lives, behind the one [`broker::Broker`] trait: on disk (the default), memory or Redis |
//! | [`transport`] | one file per technique, plus the shared `POST /api/messages` and the demo's files |
//! | [`metering`] | per-technique counters, exact wire bytes: `/api/stats` and `/metrics` |
//! | [`bench`](mod@bench) | `chatlab bench`: real clients of every technique, and the side-by-side report |
//! | [`config`] | every flag, its default and why |
//! | [`error`] | every refusal and how it reaches a client |
//! | `serve.rs` | the server loop under [`run`]: metered sockets, HTTPS, HTTP/1.1 (upgrades) and HTTP/2, the head limit, the drain |
//! | [`tls`] | HTTPS: the server's certificate (`--tls-cert`, `--tls-self-signed`), ALPN, the clients' trust |
//!
//! An event's path: a transport calls [`core::Room::post`]; the broker sequences and stores it and feeds it to
//! the room of every process; each room keeps it in a ring of recent events that every local channel reads from
//! its own cursor, writing the event's bytes.
//!
//! [`app`] builds the router and [`run`] serves it until a shutdown future resolves; `main.rs` only parses flags,
//! sets up logging and binds.

pub mod bench;
pub mod broker;
pub mod config;
pub mod core;
pub mod error;
pub mod metering;
mod serve;
pub mod tls;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::broker::{Broker, DurableBroker, MemoryBroker, RedisBroker};
use crate::config::Config;
use crate::core::Room;
use crate::error::AppError;
use crate::metering::wire::{Deadlines, MeteredListener};
use crate::metering::Metering;
use crate::transport::{assets, iframe, long_poll, seed, sessions, short_poll, sse, stream, wire_view, ws};

/// The router: every endpoint of the product, served from one room.
///
/// Every response says `X-Content-Type-Options: nosniff` (a browser never guesses a type other than the one
/// given, so a JSON answer or a user's text is never run as a script or page) and `Referrer-Policy: no-referrer`
/// (a page's address, which may hold a session token, is never sent to another site); the HTML pages add their
/// Content Security Policy ([`transport::assets`]).
pub fn app(room: Room) -> Router {
    // `--echo`: a conformance suite's echo endpoint, absent (404) unless asked for.
    let echo =
        if room.config().echo { Router::new().route("/echo", get(transport::echo::handler)) } else { Router::new() };
    Router::new()
        .route("/", get(seed::root))
        .route("/ws", get(ws::handler))
        .route("/api/sessions", post(sessions::create))
        .route("/api/sessions/{session}", delete(sessions::delete))
        .route("/api/sessions/{session}/wire", get(wire_view::counters))
        .route("/api/wire", get(wire_view::handler))
        .route("/api/presence", get(sessions::presence))
        .route("/api/sse", get(sse::handler))
        .route("/api/stream", get(stream::handler))
        .route("/api/iframe", get(iframe::handler))
        .route("/api/longpoll", get(long_poll::handler))
        .route("/api/poll", get(short_poll::handler))
        .route("/api/messages", post(transport::post::handler))
        .route("/api/stats", get(stats))
        .route("/metrics", get(metering::prometheus::handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/docs/{*path}", get(transport::docs::handler))
        .merge(echo)
        .fallback(assets::fallback)
        .layer(axum::middleware::from_fn_with_state(room.clone(), transport::host_guard))
        .with_state(room)
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
}

/// `GET /api/stats`: the per-technique counters, with what each counts.
async fn stats(State(room): State<Room>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Json(room.metering().snapshot()))
}

/// Makes the room the configuration asks for (`--broker`).
///
/// # Errors
/// An unknown broker URL, or a broker that cannot be reached.
pub async fn build_room(config: Config) -> Result<Room, AppError> {
    let broker: Arc<dyn Broker> = match config.broker.as_str() {
        "durable" => Arc::new(
            DurableBroker::open(&config.data_dir, config.history as usize)
                .map_err(|error| AppError::Unavailable(error.to_string()))?,
        ),
        "memory" => Arc::new(MemoryBroker::new(config.history as usize)),
        url if url.starts_with("redis://") => Arc::new(RedisBroker::connect(url, config.history as usize).await?),
        other => {
            return Err(AppError::BadRequest(format!(
                "unsupported --broker {other:?}: use \"durable\", \"memory\" or \"redis://HOST:PORT[/DB]\""
            )))
        }
    };
    Room::start(broker, config, Metering::default()).await
}

/// Serves `room` on `listener` until `shutdown` resolves, then stops cleanly: every open channel says
/// `Server has disconnected` and closes (WebSockets with 1001, SSE streams end, held long polls return), the HTTP
/// server drains, and after `--shutdown-grace` seconds whatever is still open is dropped.
///
/// Upgraded WebSockets and open SSE streams are invisible to the HTTP server's graceful shutdown, which would
/// otherwise wait on them forever; the room ends them first.
///
/// # Errors
/// An I/O error of the listener; a TLS certificate or key that cannot be used (before anything is served).
pub async fn run(
    listener: TcpListener,
    room: Room,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = tls::server_config(room.config())?.map(tokio_rustls::TlsAcceptor::from);
    let grace = Duration::from_secs(room.config().shutdown_grace);
    let stopping = room.shutdown_token().clone();
    let signal_room = room.clone();
    // Counting sockets: every byte read and written is given to the technique of its request (metering::wire).
    // Deadlines at the socket (`--write-timeout`, `--header-timeout`): one place for every technique.
    let deadlines = Deadlines { write: room.config().write_timeout(), header: room.config().header_timeout() };
    // Heads over `--max-head-bytes` are refused at the socket, before any handler (serve.rs).
    let max_head = room.config().max_head_bytes as usize;
    let listener = MeteredListener::new(listener, room.metering().clone())
        .with_limit(room.config().max_sockets)
        .with_deadlines(deadlines)
        .with_max_head(max_head);
    let settings = serve::Settings {
        max_head_bytes: max_head,
        tls,
        h2_max_streams: room.config().h2_max_streams,
        keepalive: Duration::from_secs(room.config().keepalive),
        header_timeout: room.config().header_timeout(),
    };
    let server = serve::serve(listener, app(room.clone()), settings, async move {
        shutdown.await;
        tracing::info!("shutting down: telling every participant");
        signal_room.shutdown();
    });
    let deadline = async {
        stopping.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => {
            result?;
            // Wait for upgraded connections to send their goodbye and close, within the grace period.
            let _ = tokio::time::timeout(grace, room.drained()).await;
        }
        _ = deadline => tracing::warn!("connections still open after the grace period; exiting anyway"),
    }
    // What the closed channels saved (their cursors) reaches the store before the process ends.
    if let Err(error) = room.flush().await {
        tracing::error!(%error, "could not write the room's last changes");
    }
    Ok(())
}
