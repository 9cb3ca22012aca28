//! Short (interval) polling: `GET /api/poll?session=&since=` is answered at once, events or not.

use axum::extract::State;
use axum::response::Response;

use super::poll::{presence_if, respond};
use super::Params;
use crate::core::{Room, Transport};
use crate::error::AppError;

/// Answers `200 {"events":[...],"next":N,"epoch":"E"}` with up to `--poll-batch` events after `since` (possibly
/// none); the client asks again with `since=N&epoch=E` after its interval. Each poll renews the session's lease. With
/// `presence=1` the answer also says who is online (`"presence"`).
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let token = params.require_session()?;
    let since = params.since()?;
    let with_presence = params.presence()?;
    let metering = room.metering();
    metering.request(Transport::Poll);
    let polled = room.poll(token, Transport::Poll, since, params.epoch()).await?;
    let wire = metering.session(token);
    let presence = presence_if(&room, with_presence).await?;
    Ok(respond(&room, Transport::Poll, &wire, &polled.deliveries, polled.next, &polled.epoch, presence.as_ref()))
}
