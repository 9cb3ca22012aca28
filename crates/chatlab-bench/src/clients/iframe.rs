//! The forever iframe: one `GET /api/iframe` HTML document of `<script>` chunks that never ends, read as a
//! hidden iframe's parser would get it; texts go up as `POST /api/messages` on a second connection.

use super::{sse::read_stream, Context, HttpClient};

/// Joins, opens the document and counts every event on it (an event is complete at its `</script>`).
pub(super) async fn join(authority: &str, context: Context) -> anyhow::Result<HttpClient> {
    read_stream(authority, context, "iframe", b"</script>\n").await
}
