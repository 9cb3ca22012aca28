//! WebSocket on chatlab's `/ws`: one socket, text frames both ways. The first frame is `welcome`, which names
//! the session (used only to leave at the end).

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{Context, Participant};
use crate::http::Http;
use crate::probe::{self, CountingStream};

type Socket = WebSocketStream<CountingStream>;

/// How long a joining participant waits for its first frame (chatlab's `welcome`, the seed's own arrival
/// notice). Generous: a server that announces every join to everyone takes seconds per join in a big room.
pub(super) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits for the first frame of a fresh socket.
pub(crate) async fn first_frame(frames: &mut SplitStream<Socket>) -> anyhow::Result<Message> {
    Ok(tokio::time::timeout(FIRST_FRAME_TIMEOUT, frames.next())
        .await
        .with_context(|| format!("no first frame within {} s", FIRST_FRAME_TIMEOUT.as_secs()))?
        .context("closed before the first frame")??)
}

/// Opens a WebSocket to `url` over a counting socket to `authority` (TLS for a `wss://` URL).
pub(crate) async fn open(
    url: &str,
    authority: &str,
    context: &Context,
) -> anyhow::Result<(SplitSink<Socket, Message>, SplitStream<Socket>)> {
    let stream = if url.starts_with("wss://") {
        probe::connect(authority, context.probe.clone()).await
    } else {
        probe::connect_plain(authority, context.probe.clone()).await
    };
    let stream = stream.with_context(|| format!("connecting to {authority}"))?;
    context.probe.request();
    let (socket, _) = tokio_tungstenite::client_async(url, stream).await.with_context(|| format!("upgrading {url}"))?;
    Ok(socket.split())
}

/// Counts every text frame until the phase stops or the server closes. Frames that have already arrived are
/// looked at together, as an SSE client looks at a chunk: one clock read and one lock for a burst, so the bench's
/// own cost per delivery does not cap what it can measure.
pub(super) fn receive(mut frames: SplitStream<Socket>, context: Context) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stop = context.stop.cancelled();
        tokio::pin!(stop);
        let mut texts: Vec<u8> = Vec::new();
        loop {
            let mut frame = tokio::select! {
                () = &mut stop => return,
                frame = frames.next() => frame,
            };
            let open = loop {
                match frame {
                    Some(Ok(Message::Text(text))) => texts.extend_from_slice(text.as_bytes()),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break false,
                }
                match frames.next().now_or_never() {
                    Some(next) => frame = next,
                    None => break true,
                }
            };
            context.probe.observe(&texts);
            texts.clear();
            if !open {
                return;
            }
        }
    })
}

/// A `/ws` participant.
pub(crate) struct WsClient {
    sink: SplitSink<Socket, Message>,
    session: String,
    authority: String,
    context: Context,
    receiver: JoinHandle<()>,
}

impl WsClient {
    pub(super) async fn join(authority: &str, context: Context) -> anyhow::Result<WsClient> {
        let (sink, mut frames) = open(
            &format!("{}://{authority}/ws", if context.probe.https.is_some() { "wss" } else { "ws" }),
            authority,
            &context,
        )
        .await?;
        let welcome = first_frame(&mut frames).await?;
        let welcome: serde_json::Value = serde_json::from_slice(welcome.into_data().as_ref())?;
        let session = welcome["session"].as_str().context("the welcome names no session")?.to_owned();
        let receiver = receive(frames, context.clone());
        Ok(WsClient { sink, session, authority: authority.to_owned(), context, receiver })
    }
}

#[async_trait]
impl Participant for WsClient {
    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        Ok(self.sink.send(Message::text(text)).await?)
    }

    async fn leave(mut self: Box<Self>) {
        // Leave explicitly: a closed `/ws` would otherwise be announced only when its lease runs out.
        if let Ok(mut http) = Http::connect(&self.authority, self.context.probe.clone(), false).await {
            let _ = http.leave(&self.session).await;
        }
        let _ = self.sink.send(Message::Close(None)).await;
        self.receiver.abort();
    }
}
