//! The seed's protocol, exactly: a WebSocket upgrade on `/` (the seed page's `ws://host:8180`).
//!
//! No welcome frame, no session: the connection is the participant. It joins as `游客N` on connect (everyone,
//! itself included, hears `游客N 来了`), sends plain texts (`/nick NAME` renames) and leaves at once when it closes
//! (`游客N 走了`). Events are the same room events every technique gets: the seed's fields plus `seq` and `ts`.
//! A plain `GET /` is the demo page.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::response::Response;

use super::websocket::Upgrade;
use super::ws::{serve, OnClose, Sends};
use super::{assets, check_origin, client_addr};
use crate::core::{Room, Transport};
use crate::error::AppError;

/// `GET /`: the seed protocol when the request is a WebSocket upgrade, the demo page otherwise.
pub async fn root(State(room): State<Room>, request: Request) -> Result<Response, AppError> {
    let is_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Ok(assets::fallback(request).await);
    }
    let (mut parts, _body) = request.into_parts();
    check_origin(&parts.headers, &room.config().allowed_origins)?;
    let upgrade = Upgrade::from_request_parts(&mut parts, &room).await?;
    room.metering().request(Transport::Ws);
    let client = client_addr(&parts, &room).0;
    let (record, cursor) = room.join_from(client, Transport::Ws, None, true).await?;
    let wire = room.metering().session(&record.token);
    let channel = match room.open(&record.token, Transport::Ws, Some(cursor), None).await {
        Ok((channel, _)) => Box::new(channel),
        Err(error) => {
            let _ = room.leave(&record.token).await;
            return Err(error);
        }
    };
    Ok(upgrade.on_upgrade(room.config(), move |socket| {
        serve(socket, channel, wire, client, None, OnClose::Leave, Sends::Plain)
    }))
}
