//! Short (interval) polling: `GET /api/poll?session=&since=` is answered at once, events or not.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;

use super::{poll_body, Params};
use crate::core::{Delivery, Presence, Room, Seq, Transport};
use crate::error::AppError;
use crate::metering::session::SessionWire;

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

/// Who is online, when the poll asked for it (`presence=1`).
pub(crate) async fn presence_if(room: &Room, asked: bool) -> Result<Option<Presence>, AppError> {
    Ok(if asked { Some(room.presence_now().await?) } else { None })
}

/// A poll answer's headers, made once: a header value built from a `&str` is checked and copied on every
/// answer, and the empty poll is the commonest request the server sees.
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// The poll response `{"events":[...],"next":N,"epoch":"E"}` (short or long), counted under `transport` and the
/// session.
pub(crate) fn respond(
    room: &Room,
    transport: Transport,
    wire: &SessionWire,
    deliveries: &[Delivery],
    next: Seq,
    epoch: &str,
    presence: Option<&Presence>,
) -> Response {
    record(room, transport, wire, deliveries);
    // Built by hand: a `Vec<u8>` body made into a response first gets an `application/octet-stream` type that
    // would then be replaced.
    let mut response = Response::new(Body::from(poll_body(deliveries, next, epoch, presence)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, JSON);
    headers.insert(header::CACHE_CONTROL, NO_STORE);
    response
}

/// Counts a poll response's deliveries (or its emptiness) under `transport`.
fn record(room: &Room, transport: Transport, wire: &SessionWire, deliveries: &[Delivery]) {
    let metering = room.metering();
    if deliveries.is_empty() {
        // The commonest answer: nothing to time or count but that it was empty.
        metering.of(transport).empty_responses.fetch_add(1, Ordering::Relaxed);
    } else {
        wire.delivered(metering.delivered(transport, deliveries));
    }
}
