//! The seed protocol: a WebSocket on `/` (the Node.js original at `ws://host:8180`, or chatlab's `/`). No
//! welcome and no session: the connection is the participant, and closing it is leaving. A participant has
//! joined when its first frame arrives (its own arrival notice, which the seed sends to everyone including it).

use anyhow::Context as _;
use async_trait::async_trait;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::ws::{first_frame, open, receive};
use super::{Context, Participant};
use crate::probe::CountingStream;

/// A seed-protocol participant.
pub(crate) struct SeedClient {
    sink: SplitSink<WebSocketStream<CountingStream>, Message>,
    receiver: JoinHandle<()>,
}

impl SeedClient {
    /// `url` is `ws://host:port/`.
    pub(super) async fn join(url: &str, context: Context) -> anyhow::Result<SeedClient> {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .filter(|a| !a.is_empty())
            .with_context(|| format!("--seed-url must be ws://HOST:PORT/, got {url}"))?;
        let (sink, mut frames) = open(url, authority, &context).await?;
        first_frame(&mut frames).await?;
        Ok(SeedClient { sink, receiver: receive(frames, context) })
    }
}

#[async_trait]
impl Participant for SeedClient {
    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        Ok(self.sink.send(Message::text(text)).await?)
    }

    async fn leave(mut self: Box<Self>) {
        let _ = self.sink.send(Message::Close(None)).await;
        self.receiver.abort();
    }
}
