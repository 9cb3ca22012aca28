//! Server-Sent Events: one `GET /api/sse` response that never ends, read frame by frame; texts go up as
//! `POST /api/messages` on a second connection. HTTP streaming and the forever iframe read their one long
//! response the same way ([`read_stream`]), only the end of an event differs.

use anyhow::bail;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};

use super::{join_http, Context, HttpClient};

/// Joins, opens the stream and counts every event on it.
pub(super) async fn join(authority: &str, context: Context) -> anyhow::Result<HttpClient> {
    read_stream(authority, context, "sse", b"\n\n").await
}

/// Joins as `transport`, opens `GET /api/<transport>` and counts every event on it; an event is complete once
/// `end` (the end of its framing) has arrived.
pub(super) async fn read_stream(
    authority: &str,
    context: Context,
    transport: &str,
    end: &'static [u8],
) -> anyhow::Result<HttpClient> {
    let (mut down, session, since) = join_http(authority, transport, &context).await?;
    let path = format!("/api/{transport}?session={session}&since={since}");
    let response = down.send(Method::GET, &path, None).await?;
    if response.status() != StatusCode::OK {
        bail!("the stream was refused: {}", response.status());
    }
    let mut body = response.into_body();
    let sending = context.clone();
    let receiver = tokio::spawn(async move {
        // The stream's connection lives as long as this task.
        let _down = down;
        // Frames may arrive split across reads: look at complete events only.
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
            if let Some(at) = pending.windows(end.len()).rposition(|w| w == end) {
                context.probe.observe(&pending[..at + end.len()]);
                pending.drain(..at + end.len());
            }
        }
    });
    Ok(HttpClient::new(authority, session, sending, receiver))
}
