//! chatlab: one chat room, reachable at once through WebSocket, Server-Sent Events, long polling and short
//! polling, with what each technique costs counted on the wire.
//!
//! # Layout
//!
//! Layers, each importing only those below it (a unit test checks the imports):
//!
//! ```text
//!   serve.rs, lib.rs (app, run)       the HTTP server and the router
//!   transport                         one file per technique
//!   broker                            the stores behind the trait: durable, memory, Redis
//!   core                              the room, its sessions' service, the Broker trait
//!   metering · error                  counters per technique; refusals as HTTP answers
//!   model                             the vocabulary: Seq, events, sessions, deliveries, store errors
//! ```
//!
//! | module | what lives there |
//! |---|---|
//! | [`model`] | the room's words: [`model::Seq`], events (serialised once), sessions, deliveries, backlogs, [`model::BrokerError`] |
//! | [`core`] | the room: the one fan-out point ([`core::Room`]), each [`core::Channel`], the per-client limits, and the one [`core::Broker`] trait |
//! | [`broker`] | where the room's shared state lives, behind that trait: on disk (the default), memory or Redis |
//! | [`transport`] | one file per technique, plus the shared `POST /api/messages` and the demo's files |
//! | [`metering`] | per-technique counters, exact wire bytes: `/api/stats` and `/metrics` |
//! | [`config`] | every flag, its default and why |
//! | [`error`] | every refusal and how it reaches a client |
//! | `serve.rs` | the server loop under [`run`]: metered sockets, HTTPS, HTTP/1.1 (upgrades) and HTTP/2, the head limit, the drain |
//! | [`tls`] | HTTPS: the server's certificate (`--tls-cert`, `--tls-self-signed`), ALPN, the clients' trust |
//!
//! An event's path: a transport calls [`core::Room::post`]; the broker sequences and stores it and feeds it to
//! the room of every process; each room keeps it in a ring of recent events that every local channel reads from
//! its own cursor, writing the event's bytes.
//!
//! [`app`] builds the router and [`run`] serves it until a shutdown future resolves. The workspace's other crates
//! sit on top of this one: `crates/chatlab-bench` (`chatlab bench`: real clients of every technique, and the
//! side-by-side report) and `crates/chatlab-cli` (the `chatlab` binary, which parses flags, sets up logging,
//! binds, and serves or benches; and the integration tests, which spawn it). No module here names them: cargo
//! refuses a cycle between packages.

pub mod broker;
pub mod config;
pub mod core;
pub mod error;
pub mod metering;
pub mod model;
mod serve;
pub mod tls;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::broker::{DurableBroker, MemoryBroker, RedisBroker};
use crate::config::Config;
use crate::core::Broker;
use crate::core::Room;
use crate::error::AppError;
use crate::metering::wire::{Deadlines, MeteredListener};
use crate::metering::Metering;
use crate::transport::{assets, iframe, long_poll, seed, sessions, short_poll, sse, stats, stream, wire_view, ws};

/// The router: every endpoint of the product, served from one room.
///
/// Every response says `X-Content-Type-Options: nosniff` (a browser never guesses a type other than the one
/// given, so a JSON answer or a user's text is never run as a script or page) and `Referrer-Policy: no-referrer`
/// (a page's address, which may hold a session token, is never sent to another site); the HTML pages add their
/// Content Security Policy ([`transport::assets`]). A handler that panics (but a poll's) is answered `500` with
/// a JSON body, and each request is traced when `RUST_LOG` asks for `tower_http=debug`.
pub fn app(room: Room) -> Router {
    // `--echo`: a conformance suite's echo endpoint, absent (404) unless asked for.
    let echo =
        if room.config().echo { Router::new().route("/echo", get(transport::echo::handler)) } else { Router::new() };
    // The polls, the commonest requests, are kept out of the panic catcher, which costs them measurable speed
    // (docs/architecture.md): a panic there drops its connection, as it would anyway, and nothing else.
    let polls =
        Router::new().route("/api/longpoll", get(long_poll::handler)).route("/api/poll", get(short_poll::handler));
    let router = Router::new()
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
        .route("/api/messages", post(transport::post::handler))
        .route("/api/stats", get(stats::json))
        .route("/metrics", get(stats::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/docs/{*path}", get(transport::docs::handler))
        .merge(echo)
        .fallback(assets::fallback)
        .layer(CatchPanicLayer::custom(panicked))
        .merge(polls)
        .layer(axum::middleware::from_fn_with_state(room.clone(), transport::host_guard))
        .with_state(room)
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")));
    // Request tracing (`RUST_LOG=tower_http=debug`): a span per request with its method and path (never the query,
    // which may hold a session token), and its status and latency when answered. Added only when that level is
    // on as the router is built, so that a server not asked for it pays nothing per request.
    if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        router.layer(TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
            let (method, path) = (request.method(), request.uri().path());
            tracing::debug_span!(target: "tower_http::trace::make_span", "request", %method, %path)
        }))
    } else {
        router
    }
}

/// A handler that panicked: logged as the server's fault, answered `500 {"error", "code": "internal"}` like any
/// other refusal; the connection and the server go on.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = what, "a handler panicked");
    AppError::Internal.into_response()
}

/// Makes the room the configuration asks for (`--broker`).
///
/// # Errors
/// An unknown broker URL, or a broker that cannot be reached.
pub async fn build_room(config: Config) -> Result<Room, AppError> {
    let broker: Arc<dyn Broker> = match config.broker.as_str() {
        "durable" => Arc::new(
            DurableBroker::open_with(&config.data_dir, config.history as usize, config.store_options())
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

#[cfg(test)]
mod layers {
    use std::path::{Path, PathBuf};

    /// The layers that sit below others, each with the modules it must not name: imports run one way, down to
    /// [`crate::model`]. A file named in the third column is a handler on top of its layer and exempt.
    const BELOW: &[(&str, &[&str], &[&str])] = &[
        ("model", &["broker", "config", "core", "error", "metering", "serve", "transport"], &[]),
        ("error", &["broker", "config", "core", "metering", "serve", "transport"], &[]),
        ("metering", &["broker", "core", "serve", "transport"], &[]),
        ("core", &["broker", "serve", "transport"], &[]),
        ("broker", &["serve", "transport"], &[]),
    ];

    fn sources(layer: &str) -> Vec<PathBuf> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        let file = src.join(format!("{layer}.rs"));
        if file.exists() {
            files.push(file);
        }
        let mut dirs = vec![src.join(layer)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    files.push(path);
                }
            }
        }
        files
    }

    /// The top modules a source file names as `crate::NAME`, outside comments and its tests.
    fn named(source: &str) -> Vec<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        let mut names = vec![];
        for line in code.lines().filter(|line| !line.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                names.push(rest[..end].to_owned());
            }
        }
        names
    }

    /// No layer names a module above it: the map in this file's opening and the imports agree.
    #[test]
    fn imports_run_one_way() {
        let mut wrong = vec![];
        for (layer, forbidden, exempt) in BELOW {
            let files = sources(layer);
            assert!(!files.is_empty(), "no source for layer {layer}");
            for file in files {
                if exempt.iter().any(|name| file.ends_with(name)) {
                    continue;
                }
                let source = std::fs::read_to_string(&file).unwrap();
                for name in named(&source) {
                    if forbidden.contains(&name.as_str()) {
                        wrong.push(format!("{} names crate::{name}", file.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "imports that point up a layer:\n{}", wrong.join("\n"));
    }
}

#[cfg(test)]
mod panics {
    use axum::routing::get;
    use axum::Router;
    use tower_http::catch_panic::CatchPanicLayer;

    /// A handler that panics is answered `500 {"code": "internal"}` over a real connection, and the server goes
    /// on answering the next request.
    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500() {
        let router = Router::new()
            .route("/boom", get(|| async { panic!("boom") as &'static str }))
            .route("/fine", get(|| async { "fine" }))
            .layer(CatchPanicLayer::custom(super::panicked));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = reqwest::Client::new();
        let wait = std::time::Duration::from_secs(5);
        let boom = tokio::time::timeout(wait, client.get(format!("{base}/boom")).send()).await.unwrap().unwrap();
        assert_eq!(boom.status(), 500);
        assert_eq!(boom.headers()["content-type"], "application/json");
        let body: serde_json::Value = boom.json().await.unwrap();
        assert_eq!(body["code"], "internal");
        let fine = tokio::time::timeout(wait, client.get(format!("{base}/fine")).send()).await.unwrap().unwrap();
        assert_eq!(fine.text().await.unwrap(), "fine");
    }
}
