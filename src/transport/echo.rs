//! `GET /echo` (only with `--echo`): a WebSocket that sends back every text and binary message it receives, for
//! conformance suites such as Autobahn|Testsuite. It runs on the same `Socket` as `/ws`, so what such a suite
//! checks (frame parsing, fragments, UTF-8, control frames, the closing handshake) is what `/ws` does; only its
//! message limit is larger (`ECHO_MAX_MESSAGE`, 16 MiB, with at least 2^20 frames a message) because the
//! suite's cases 9.* send messages that big. It joins no room and counts nothing.
//!
//! Close codes are `/ws`'s: 1002 protocol error, 1007 invalid UTF-8, 1009 too big or in too many frames, 1001
//! server stopping; a client's Close is echoed with its code.

use axum::extract::State;
use axum::response::Response;
use tungstenite::Message;

#[allow(unused_imports, reason = "named in the module's documentation")]
use super::websocket::ECHO_MAX_MESSAGE;
use super::websocket::{Socket, Upgrade};
use super::ws::protocol_close_code;
use crate::core::Room;
use crate::error::AppError;

/// Upgrades `/echo` (routed only with `--echo`; without it `/echo` is `404` like any unknown path).
pub async fn handler(State(room): State<Room>, upgrade: Upgrade) -> Result<Response, AppError> {
    let shutdown = room.shutdown_token().clone();
    Ok(upgrade.on_upgrade_echo(room.config(), move |socket| serve(socket, shutdown)))
}

/// Echoes until the client closes (its Close is answered by [`Socket::recv`]), breaks the protocol (closed with
/// the matching code) or the server stops (1001).
async fn serve(mut socket: Socket, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => {
                socket.close(1001, "server is stopping").await;
                return;
            }
            received = socket.recv() => received,
        };
        let reply = match received {
            None => return,
            Some(Err(error)) => {
                socket.close(protocol_close_code(&error), "protocol error").await;
                return;
            }
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            // Pings are answered by tungstenite; a Close is already answered, and `recv` says `None` next.
            Some(Ok(_)) => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}
