//! The wire view: `GET /api/sessions/{session}/wire` answers a session's wire counters, and `GET /api/wire?
//! session=` is a WebSocket carrying the live log of what the session's requests and channel put on the wire
//! (records described in docs/protocol.md, made by [`crate::metering::capture`]).
//!
//! Both count under `other.wire_view` of `/api/stats`, never under a technique or the session they describe:
//! watching a session does not change its figures. The log is a WebSocket so that it takes none of the
//! browser's six HTTP/1.1 connections per host and makes no request once open.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use tungstenite::Message;

use super::websocket::{Socket, Upgrade};
use super::{Params, SameOrigin};
use crate::core::Room;
use crate::error::AppError;
use crate::metering::session::SessionWire;

/// What each counter of `session_wire` counts.
fn units() -> Value {
    json!({
        "requests": "HTTP requests of the session (its join, polls, POSTs, DELETE; a WebSocket counts its upgrade)",
        "wire_bytes_in": "bytes read from the session's sockets for those requests and its channel, headers and framing included",
        "wire_bytes_out": "bytes written to them, headers and framing included",
        "frames_in": "WebSocket frames read from the session's channel, control frames included",
        "frames_out": "WebSocket frames written to it, control frames included",
        "events_delivered": "room events delivered to the session",
    })
}

/// `GET /api/sessions/{session}/wire`: `{"session_wire": {...}, "units": {...}}`; `404` for an unknown session.
pub async fn counters(State(room): State<Room>, Path(token): Path<String>) -> Result<Json<Value>, AppError> {
    room.metering().wire_view_request();
    let wire = known(&room, &token).await?;
    Ok(Json(json!({"session_wire": wire.totals(), "units": units()})))
}

/// The counters of a session the room knows: those kept here, or new ones for a session that has made no request
/// to this process yet (in a cluster).
///
/// # Errors
/// [`AppError::UnknownSession`] (`404`); [`AppError::Unavailable`].
async fn known(room: &Room, token: &str) -> Result<Arc<SessionWire>, AppError> {
    if let Some(wire) = room.metering().sessions().get(token) {
        return Ok(wire);
    }
    room.session(token).await?;
    Ok(room.metering().sessions().get_or_insert(token))
}

/// `GET /api/wire?session=TOKEN`: upgrades to the live wire log of a session. Refused as plain HTTP: `400`
/// without `session=` or not an upgrade, `403` cross-site, `404` unknown session.
pub async fn handler(
    State(room): State<Room>,
    origin: Result<SameOrigin, AppError>,
    params: Params,
    upgrade: Result<Upgrade, AppError>,
) -> Result<Response, AppError> {
    room.metering().wire_view_request();
    origin?;
    let token = params.require_session()?;
    let wire = known(&room, token).await?;
    let upgrade = upgrade?;
    let capacity = room.config().wire_view_queue as usize;
    let config = room.config().clone();
    Ok(upgrade.on_upgrade(&config, move |socket| watch(socket, room, wire, capacity)))
}

/// Runs one wire view: the session's totals first, then every record as it is made, until the client closes or
/// the server stops. A client that does not read holds up only this task: records meanwhile queue (at most
/// `--wire-view-queue`) and the rest are dropped and announced with a `lagged` record.
async fn watch(mut socket: Socket, room: Room, wire: Arc<SessionWire>, capacity: usize) {
    let sessions = room.metering().sessions();
    let counters = sessions.wire_view.clone();
    counters.connections_open.fetch_add(1, Ordering::Relaxed);
    counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let watch = sessions.watch(wire, capacity);
    let totals = watch.wire().totals();
    let mut first = totals.clone();
    if let Value::Object(first) = &mut first {
        first.insert("type".into(), "totals".into());
        first.insert("totals".into(), totals);
    }
    let mut open = socket.send(Message::Text(first.to_string().into())).await.is_ok();
    while open {
        tokio::select! {
            biased;
            () = room.shutdown_token().cancelled() => {
                socket.close(1001, "server is stopping").await;
                break;
            }
            (records, dropped) = watch.next() => {
                for record in records {
                    if socket.send(Message::Text(record.as_ref().into())).await.is_err() {
                        open = false;
                        break;
                    }
                }
                if open && dropped > 0 {
                    let lagged = json!({"type": "lagged", "dropped": dropped, "totals": watch.wire().totals()});
                    open = socket.send(Message::Text(lagged.to_string().into())).await.is_ok();
                }
            }
            received = socket.recv() => {
                // The client sends nothing but control frames; a close (already answered) or an error ends it.
                open = matches!(received, Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_))));
            }
        }
    }
    drop(watch);
    counters.connections_open.fetch_sub(1, Ordering::Relaxed);
}
