//! `POST /api/messages`: the client-to-server half of SSE, long polling and short polling.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use super::{read_body, ClientAddr, Params, SameOrigin};
use crate::core::Room;
use crate::error::AppError;

/// Posts a text (`text/plain`: a chat line, or `/nick NAME`) as the session in `session=` or `X-Session`.
/// Answers `202 {"seq"}`: the event is sequenced; it reaches every receiver, the sender included, on its channel.
/// The text counts against its session's rate and its client's (`429 rate_limited`, `429 client_rate_limited`).
pub async fn handler(
    State(room): State<Room>,
    _: SameOrigin,
    ClientAddr(client): ClientAddr,
    params: Params,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let token = params.require_session()?;
    let body = read_body(body, room.config().max_body_bytes).await?;
    let text = std::str::from_utf8(&body).map_err(|_| AppError::InvalidUtf8)?;
    let (seq, transport) = room.post_from(client, token, text).await?;
    room.metering().request(transport);
    room.metering().session(token);
    Ok((StatusCode::ACCEPTED, Json(json!({"seq": seq}))))
}
