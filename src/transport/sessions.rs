//! Join, leave and presence over HTTP: `POST /api/sessions`, `DELETE /api/sessions/{session}`, `GET /api/presence`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{read_body, SameOrigin};
use crate::core::{Room, Transport};
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
/// notice, `epoch` the room's epoch it belongs to, `presence` who is online (the joiner included).
pub async fn create(State(room): State<Room>, _: SameOrigin, body: Body) -> Result<Response, AppError> {
    let body = read_body(body, room.config().max_body_bytes).await?;
    let request: JoinRequest = serde_json::from_slice(&body).map_err(|error| {
        AppError::BadRequest(format!(
            "expected {{\"transport\": \"sse\"|\"longpoll\"|\"poll\"|\"ws\", \"nickname\"?: string}}: {error}"
        ))
    })?;
    room.metering().request(request.transport);
    let (record, seq) = room.join(request.transport, request.nickname.as_deref(), false).await?;
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

/// `GET /api/presence`: who is online, with each participant's technique and join time (ms since the epoch).
pub async fn presence(State(room): State<Room>) -> Result<Json<serde_json::Value>, AppError> {
    let everyone = room.presence().await?;
    let participants: Vec<_> = everyone
        .iter()
        .map(|r| json!({"id": r.id, "nickname": r.nickname, "transport": r.transport, "since": r.since_ms}))
        .collect();
    Ok(Json(json!({"clientcount": participants.len(), "participants": participants})))
}
