//! Short (interval) polling: `GET /api/poll?session=&since=` is answered at once, events or not.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{poll_body, Params};
use crate::core::{Delivery, Room, Seq, Transport};
use crate::error::AppError;

/// Answers `200 {"events":[...],"next":N}` with up to `--poll-batch` events after `since` (possibly none);
/// the client asks again with `since=N` after its interval. Each poll renews the session's lease.
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let token = params.require_session()?;
    let since = params.since()?;
    let metering = room.metering();
    metering.request(Transport::Poll);
    let (deliveries, next) = room.poll(token, Transport::Poll, since).await?;
    Ok(respond(&room, Transport::Poll, &deliveries, next))
}

/// The poll response `{"events":[...],"next":N}` (short or long), counted under `transport`.
pub(crate) fn respond(room: &Room, transport: Transport, deliveries: &[Delivery], next: Seq) -> Response {
    record(room, transport, deliveries);
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], poll_body(deliveries, next))
        .into_response()
}

/// Counts a poll response's deliveries (or its emptiness) under `transport`.
fn record(room: &Room, transport: Transport, deliveries: &[Delivery]) {
    let metering = room.metering();
    if deliveries.is_empty() {
        // The commonest answer: nothing to time or count but that it was empty.
        metering.of(transport).empty_responses.fetch_add(1, Ordering::Relaxed);
    } else {
        metering.delivered(transport, deliveries);
    }
}
