//! HTTP streaming: one `GET /api/stream` response of NDJSON lines that never ends; texts go up as
//! `POST /api/messages` on a second connection.

use super::{sse::read_stream, Context, HttpClient};

/// Joins, opens the stream and counts every event on it (an event is complete at its newline).
pub(super) async fn join(authority: &str, context: Context) -> anyhow::Result<HttpClient> {
    read_stream(authority, context, "stream", b"\n").await
}
