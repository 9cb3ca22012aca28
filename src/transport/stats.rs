//! The room's counters over HTTP: `GET /api/stats` (JSON, with what each counts) and `GET /metrics` (the same
//! counters in the Prometheus text format, rendered by [`crate::metering::prometheus`]).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use crate::core::Room;
use crate::metering::prometheus;

/// `GET /api/stats`: the per-technique counters, with what each counts.
pub async fn json(State(room): State<Room>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Json(room.metering().snapshot()))
}

/// `GET /metrics`.
pub async fn metrics(State(room): State<Room>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")],
        prometheus::render(room.metering()),
    )
}
