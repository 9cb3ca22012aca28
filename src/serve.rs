//! The HTTP server under [`crate::run`]: takes metered sockets from the listener, serves each with hyper's
//! HTTP/1.1 (upgrades on, for WebSockets), and on shutdown stops accepting and lets every connection finish the
//! request it is answering.
//!
//! hyper rather than `axum::serve` because the server needs two knobs of hyper's connection builder: the
//! request head limit (`--max-head-bytes`), and its own answers to heads it cannot parse, which the metered socket
//! replaces with JSON refusals ([`crate::metering::wire::Tally::rewrite`]).

use std::future::Future;
use std::io;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::metering::wire::{Metered, MeteredListener};

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, asks every connection to
/// close once its current response is out, and returns when they all have. Upgraded connections (WebSockets)
/// are no longer the HTTP server's: the room ends them.
///
/// # Errors
/// None today: accept errors are waited out by the listener.
pub(crate) async fn serve(
    mut listener: MeteredListener,
    router: Router,
    max_head_bytes: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder.max_header_size(max_head_bytes);
    // Dropped to tell every connection to finish; each connection holds a `done` receiver until it has.
    let (stop, stopping) = watch::channel(());
    let (done, finished) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = Metered::new(router.clone(), &stream, peer)
            .map_request(|request: axum::http::Request<Incoming>| request.map(Body::new));
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let mut stopping = stopping.clone();
        let finished = finished.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection.with_upgrades());
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "connection ended with an error");
                    }
                }
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
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
