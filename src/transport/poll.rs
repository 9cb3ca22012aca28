//! The answer of a poll, short or long: `{"events":[...],"next":N,"epoch":"E"}`, written from the events'
//! serialised bytes, and counted under its technique and its session.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;

use crate::core::{Delivery, Presence, Room, Seq, Transport};
use crate::error::AppError;
use crate::metering::session::SessionWire;

/// Builds a poll response body `{"events":[...],"next":N,"epoch":"E"}` from pre-serialised events without
/// re-encoding them; with `presence` (a poll asked with `presence=1`), `{"events":[...],"next":N,"epoch":"E",
/// "presence":{...}}`. The epoch is the room's (a few hex digits, never escaped).
pub fn poll_body(deliveries: &[Delivery], next: Seq, epoch: &str, presence: Option<&Presence>) -> Vec<u8> {
    let size: usize = deliveries.iter().map(|d| d.json().len() + 1).sum();
    let mut body = Vec::with_capacity(size + 60);
    body.extend_from_slice(b"{\"events\":[");
    for (i, delivery) in deliveries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(delivery.json());
    }
    body.extend_from_slice(b"],\"next\":");
    // itoa rather than `write!`: the formatting machinery costs more than the rest of an empty answer's body.
    body.extend_from_slice(itoa::Buffer::new().format(next).as_bytes());
    body.extend_from_slice(b",\"epoch\":");
    if epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
        body.push(b'"');
        body.extend_from_slice(epoch.as_bytes());
        body.push(b'"');
    } else {
        serde_json::to_writer(&mut body, epoch).expect("a string always serialises");
    }
    if let Some(presence) = presence {
        body.extend_from_slice(b",\"presence\":");
        serde_json::to_writer(&mut body, presence).expect("presence always serialises");
    }
    body.push(b'}');
    body
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
