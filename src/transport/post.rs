//! `POST /api/messages`: the client-to-server half of SSE, long polling and short polling.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::Json;
use serde_json::json;

use super::{read_body, send_key, ClientAddr, Params, SameOrigin};
use crate::core::Room;
use crate::error::AppError;

/// The header that names one send, so that sending it again is harmless.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Posts a text (`text/plain`: a chat line, or `/nick NAME`) as the session in `session=` or `X-Session`.
/// Answers `202 {"seq"}`: the event is sequenced; it reaches every receiver, the sender included, on its channel.
/// The text counts against its session's rate and its client's (`429 rate_limited`, `429 client_rate_limited`).
/// With an `Idempotency-Key` header (1 to `--max-ref-bytes` bytes of printable ASCII), a key the session already
/// used within the retained history publishes nothing and answers the first send's `seq`: a client that got no
/// answer (a connection cut, a process killed) sends again with the same key.
pub async fn handler(
    State(room): State<Room>,
    _: SameOrigin,
    ClientAddr(client): ClientAddr,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let token = params.require_session()?;
    let key = match headers.get(&IDEMPOTENCY_KEY) {
        Some(value) => {
            let value =
                value.to_str().map_err(|_| AppError::BadRequest("Idempotency-Key must be printable ASCII".into()))?;
            Some(send_key("Idempotency-Key", value, room.config().max_ref_bytes)?)
        }
        None => None,
    };
    let body = read_body(body, room.config().max_body_bytes).await?;
    let text = std::str::from_utf8(&body).map_err(|_| AppError::InvalidUtf8)?;
    let (seq, transport) = room.send_from(client, token, text, key).await?;
    room.metering().request(transport);
    room.metering().session(token);
    Ok((StatusCode::ACCEPTED, Json(json!({"seq": seq}))))
}
