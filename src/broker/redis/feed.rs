//! The room's feed from Redis: one pub/sub connection per subscriber, its messages forwarded as events, an outage
//! reported once as [`FeedItem::Down`], and [`FeedItem::Up`] once it is subscribed again and commands work.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use redis::{Client, RedisError, Value};
use tokio::sync::mpsc;

use super::within;
use crate::model::{FeedItem, RoomEvent};

/// How often the pub/sub connection is pinged, so a silently dead connection is noticed (and reported `Down`).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// First and longest pause between reconnection attempts of the feed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Opens a pub/sub connection subscribed to `channel`; returns once Redis has confirmed the subscription, so
/// nothing published afterwards is missed.
pub(super) async fn listen(client: &Client, channel: &str) -> Result<(PubSubSink, PubSubStream), RedisError> {
    let (mut sink, stream) = client.get_async_pubsub().await?.split();
    sink.subscribe(channel).await?;
    Ok((sink, stream))
}

/// The task behind one [`Broker::subscribe`](crate::core::Broker::subscribe): forwards pub/sub messages, reports
/// outages, reconnects.
pub(super) struct Feed {
    pub(super) client: Client,
    pub(super) conn: ConnectionManager,
    pub(super) channel: String,
    pub(super) tx: mpsc::UnboundedSender<FeedItem>,
}

impl Feed {
    /// Runs until the receiver is dropped.
    pub(super) async fn run(mut self, first: (PubSubSink, PubSubStream)) {
        let mut current = Some(first);
        let mut up = true;
        let mut backoff = BACKOFF_MIN;
        loop {
            let connected = match current.take() {
                Some(connected) => Ok(connected),
                None => {
                    tokio::select! {
                        _ = self.tx.closed() => return,
                        connected = within(listen(&self.client, &self.channel)) => connected,
                    }
                }
            };
            let (sink, stream) = match connected {
                Ok(connected) => connected,
                Err(error) => {
                    self.down(&mut up, error.to_string());
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            if !up {
                // Receivers re-read history on `Up`: the command connection must work again first.
                let mut conn = self.conn.clone();
                if let Err(error) = within(redis::cmd("PING").query_async::<()>(&mut conn)).await {
                    self.down(&mut up, error.to_string());
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                    continue;
                }
                tracing::info!("redis is back: the room's feed is subscribed again");
                up = true;
                backoff = BACKOFF_MIN;
                if self.tx.send(FeedItem::Up).is_err() {
                    return;
                }
            }
            match self.forward(sink, stream).await {
                Some(why) => self.down(&mut up, why),
                None => return,
            }
        }
    }

    /// Reports an outage once (while it lasts).
    fn down(&self, up: &mut bool, why: String) {
        if *up {
            *up = false;
            tracing::warn!(%why, "redis is unreachable: the room's feed is down; reconnecting");
            let _ = self.tx.send(FeedItem::Down(format!("redis: {why}")));
        }
    }

    /// Waits before the next reconnection attempt; `false` if the receiver went away meanwhile.
    async fn pause(&self, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = self.tx.closed() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// Forwards messages until the connection fails (returns why) or the receiver goes away (`None`).
    async fn forward(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> Option<String> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.reset();
        loop {
            tokio::select! {
                _ = self.tx.closed() => return None,
                message = stream.next() => {
                    let Some(message) = message else {
                        return Some("the pub/sub connection closed".into());
                    };
                    match RoomEvent::from_json(Bytes::copy_from_slice(message.get_payload_bytes())) {
                        Ok(event) => {
                            if self.tx.send(FeedItem::Event(Arc::new(event))).is_err() {
                                return None;
                            }
                        }
                        // Not ours: a receiver that needs the event re-reads it from the history.
                        Err(error) => tracing::warn!(%error, "ignoring a malformed message on the room's channel"),
                    }
                }
                _ = heartbeat.tick() => {
                    if let Err(error) = within(sink.ping::<Value>()).await {
                        return Some(format!("the pub/sub connection stopped answering: {error}"));
                    }
                }
            }
        }
    }
}
