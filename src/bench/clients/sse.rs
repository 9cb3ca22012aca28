//! Server-Sent Events: one `GET /api/sse` response that never ends, read frame by frame; texts go up as
//! `POST /api/messages` on a second connection.

use anyhow::bail;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};

use super::{join_http, Context, HttpClient};

/// Joins, opens the stream and counts every event on it.
pub(super) async fn join(authority: &str, context: Context) -> anyhow::Result<HttpClient> {
    let (mut down, session, since) = join_http(authority, "sse", &context).await?;
    let response = down.send(Method::GET, &format!("/api/sse?session={session}&since={since}"), None).await?;
    if response.status() != StatusCode::OK {
        bail!("the stream was refused: {}", response.status());
    }
    let mut body = response.into_body();
    let sending = context.clone();
    let receiver = tokio::spawn(async move {
        // The stream's connection lives as long as this task.
        let _down = down;
        // Frames may arrive split across reads: look at complete events (ending in a blank line) only.
        let mut pending: Vec<u8> = Vec::new();
        let stop = context.stop.cancelled();
        tokio::pin!(stop);
        loop {
            let frame = tokio::select! {
                () = &mut stop => return,
                frame = body.frame() => frame,
            };
            let Some(Ok(frame)) = frame else { return };
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            if let Some(end) = pending.windows(2).rposition(|w| w == b"\n\n") {
                context.probe.observe(&pending[..end + 2]);
                pending.drain(..end + 2);
            }
        }
    });
    Ok(HttpClient::new(authority, session, sending, receiver))
}
