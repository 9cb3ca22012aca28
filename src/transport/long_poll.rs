//! Long polling: `GET /api/longpoll?session=&since=&timeout=` is held until there is news or the timeout.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;

use super::poll::{presence_if, respond};
use super::{Pacer, Params};
use crate::core::{Delivery, Item, Room, Transport};
use crate::error::AppError;
use crate::model::control;

/// Answers `200 {"events":[...],"next":N,"epoch":"E"}` as soon as at least one event after `since` exists (with every
/// other event ready at that moment, up to `--poll-batch`), or with no events after `timeout` seconds
/// (default `--longpoll-default`, at most `--longpoll-max`). A held poll is the session's live channel: a newer
/// channel of the session, or the server stopping, answers it at once. While the server is behind
/// (`--pace-when-busy`), a poll is answered with events only at a `--flush-interval-ms` tick, with everything that
/// arrived until then: one answer per tick at most, as a paced stream writes.
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let token = params.require_session()?;
    let mut since = params.since()?;
    let hold = timeout(&params, &room)?;
    let with_presence = params.presence()?;
    let mut epoch = params.epoch();
    room.metering().request(Transport::LongPoll);
    // The session's counters, once the room has found the session (a poll that fell through to waiting has).
    let mut named = None;
    // Something is there already (or no wait was asked for): answer like a short poll, without opening a live
    // channel. A client that keeps up arrives with `since` at the head and goes straight to waiting.
    if hold.is_zero() || since.is_none_or(|since| since < room.head()) {
        if !hold.is_zero() && since.is_some() {
            // Behind a busy room: answer at the pacing tick, with what arrived meanwhile.
            Pacer::tick(&room).await;
        }
        let polled = room.poll(token, Transport::LongPoll, since, epoch).await?;
        let wire = room.metering().session(token);
        if !polled.deliveries.is_empty() || hold.is_zero() {
            let presence = presence_if(&room, with_presence).await?;
            let (deliveries, next, epoch) = (&polled.deliveries, polled.next, &polled.epoch);
            return Ok(respond(&room, Transport::LongPoll, &wire, deliveries, next, epoch, presence.as_ref()));
        }
        since = Some(polled.next);
        // Nothing to answer: the cursor is this epoch's now (a cursor of another epoch was answered at once).
        epoch = None;
        named = Some(wire);
    }
    let (mut channel, _) = room.open(token, Transport::LongPoll, since, epoch).await?;
    let wire = match named {
        Some(wire) => wire,
        None => room.metering().session(token),
    };
    let batch_max = room.config().poll_batch as usize;
    let mut deliveries = Vec::new();
    let deadline = tokio::time::Instant::now() + hold;
    let first = loop {
        match tokio::time::timeout_at(deadline, channel.next()).await {
            Ok(Item::Beat) => continue,
            other => break other,
        }
    };
    if let Ok(first) = first {
        if let Item::Deliver(_) = first {
            // While the server is busy, an answer waits for the pacing tick too, and takes what came meanwhile.
            Pacer::tick(&room).await;
        }
        let batch = channel.batch_from(first, batch_max).await;
        deliveries = batch.deliveries;
        if let Some(Item::Shutdown) = batch.end {
            let online = room.online().await.unwrap_or(0);
            deliveries.push(Delivery::Control { json: control::server_disconnected(online), resume_after: 0 });
        }
    }
    let next = channel.cursor();
    let epoch = channel.epoch().to_owned();
    drop(channel);
    // Who is online when the answer goes, not when the poll came: a held poll may have waited for a join.
    let presence = presence_if(&room, with_presence).await?;
    Ok(respond(&room, Transport::LongPoll, &wire, &deliveries, next, &epoch, presence.as_ref()))
}

/// `timeout=` in seconds (decimals allowed), clamped to `--longpoll-max`.
fn timeout(params: &Params, room: &Room) -> Result<Duration, AppError> {
    let max = room.config().longpoll_max as f64;
    match params.timeout() {
        None => Ok(Duration::from_secs(room.config().longpoll_default.min(room.config().longpoll_max))),
        Some(raw) => match raw.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::from_secs_f64(secs.min(max))),
            _ => Err(AppError::BadRequest(format!("timeout must be a number of seconds from 0 to {max}, got {raw:?}"))),
        },
    }
}
