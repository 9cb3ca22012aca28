//! Join, leave and presence over HTTP: `POST /api/sessions`, `DELETE /api/sessions/{session}`, `GET /api/presence`
//! (paged).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{read_body, ClientAddr, SameOrigin};
use crate::core::{Room, Transport, PRESENCE_MAX};
use crate::error::AppError;

/// The body of `POST /api/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    transport: Transport,
    nickname: Option<String>,
}

/// `POST /api/sessions`: a participant joins over HTTP; everyone is told `<nickname> 来了`.
/// Answers `201 {"session","id","nickname","seq","epoch","presence"}`; `seq` is the cursor just before the join
/// notice, `epoch` the room's epoch it belongs to, `presence` who is online (the joiner included). A client
/// holding `--max-sessions-per-client` sessions is refused `429 too_many_sessions`.
pub async fn create(
    State(room): State<Room>,
    _: SameOrigin,
    ClientAddr(client): ClientAddr,
    body: Body,
) -> Result<Response, AppError> {
    let body = read_body(body, room.config().max_body_bytes).await?;
    let request: JoinRequest = serde_json::from_slice(&body).map_err(|error| {
        AppError::BadRequest(format!(
            "expected {{\"transport\": \"sse\"|\"stream\"|\"iframe\"|\"longpoll\"|\"poll\"|\"ws\", \
             \"nickname\"?: string}}: {error}"
        ))
    })?;
    room.metering().request(request.transport);
    let (record, seq) = room.join_from(client, request.transport, request.nickname.as_deref(), false).await?;
    room.metering().session(&record.token);
    let read = async { Ok::<_, AppError>((room.epoch().await?, room.presence_now().await?)) };
    let (epoch, presence) = match read.await {
        Ok(read) => read,
        Err(error) => {
            // The store went away between the join and this read: leave, so the refusal changes nothing.
            let _ = room.leave(&record.token).await;
            return Err(error);
        }
    };
    let body = json!({"session": record.token, "id": record.id, "nickname": record.nickname, "seq": seq,
        "epoch": &*epoch, "presence": presence});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /api/sessions/{session}`: leave now (`<nickname> 走了`). `204`, or `404` if already gone.
pub async fn delete(
    State(room): State<Room>,
    _: SameOrigin,
    Path(token): Path<String>,
) -> Result<StatusCode, AppError> {
    if let Ok(record) = room.session(&token).await {
        room.metering().request(record.transport);
        room.metering().session(&token);
    }
    if room.leave(&token).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::UnknownSession)
    }
}

/// `GET /api/presence?after=&limit=`: who is online, a page at a time, in join order, with each participant's
/// technique and join time (ms since the epoch). `limit` (default and most [`PRESENCE_MAX`]) participants whose
/// guest number is above `after` (default 0, the first); the answer's `next` is the `after` of the next page
/// and `more` says whether there is one. `clientcount` is everyone online. Each page costs one broker call
/// reading at most `limit` records, whatever the number online.
pub async fn presence(State(room): State<Room>, uri: Uri) -> Result<Json<serde_json::Value>, AppError> {
    let (after, limit) = page_params(uri.query().unwrap_or(""))?;
    // One more than asked, to tell whether another page follows.
    let (online, mut page) = room.presence_page(after, limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = page.last().map_or(after, |last| last.guest);
    let participants: Vec<_> = page
        .iter()
        .map(|r| json!({"id": r.id, "nickname": r.nickname, "transport": r.transport, "since": r.since_ms}))
        .collect();
    Ok(Json(json!({"clientcount": online, "participants": participants, "more": more, "next": next})))
}

/// `after=` and `limit=` of a presence page: numbers, each given at most once; a `limit` above
/// [`PRESENCE_MAX`] gets that many.
fn page_params(query: &str) -> Result<(u64, usize), AppError> {
    let (mut after, mut limit) = (None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*name {
            "after" => &mut after,
            "limit" => &mut limit,
            _ => continue,
        };
        let number = value
            .trim()
            .parse::<u64>()
            .map_err(|_| AppError::BadRequest(format!("{name} must be a non-negative whole number, got {value:?}")))?;
        if slot.replace(number).is_some() {
            return Err(AppError::BadRequest(format!("{name}= is given twice: give it once")));
        }
    }
    let limit = match limit {
        None => PRESENCE_MAX,
        Some(0) => return Err(AppError::BadRequest("limit must be at least 1".into())),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(PRESENCE_MAX),
    };
    Ok((after.unwrap_or(0), limit))
}
