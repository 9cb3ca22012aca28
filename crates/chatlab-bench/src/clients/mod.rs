//! One client per technique, all behind `Participant`: join, send texts, leave. Each one's receiving side
//! runs in its own task, counting every bench message it gets into the phase's probe.
//!
//! | file | technique | down | up |
//! |---|---|---|---|
//! | `ws.rs` | WebSocket on `/ws` | text frames | text frames on the same socket |
//! | `sse.rs` | Server-Sent Events | one `text/event-stream` response | `POST /api/messages` |
//! | `stream.rs` | HTTP streaming | one `application/x-ndjson` response | `POST /api/messages` |
//! | `iframe.rs` | the forever iframe | one `text/html` response of `<script>` chunks | `POST /api/messages` |
//! | `long_poll.rs` | long polling | `GET /api/longpoll`, held until news | `POST /api/messages` |
//! | `short_poll.rs` | short polling | `GET /api/poll` every `--poll-interval` | `POST /api/messages` |
//! | `seed.rs` | the seed protocol (`ws://host:8180/`, the Node.js original or chatlab's `/`) | text frames | text frames |
//!
//! `mix` is not a client of its own: participant `i` of a mixed phase uses ws, sse, longpoll and poll in turn
//! (the four the published mixed figures were measured with).
//!
//! The HTTP techniques use two connections, as a browser does: one held by the receiving side (which also
//! joins), one for POSTs, opened at the first text: a participant that never sends holds one socket, so a
//! 15,000-participant room fits in one bench process's open files.

pub(crate) mod iframe;
pub(crate) mod long_poll;
pub(crate) mod seed;
pub(crate) mod short_poll;
pub(crate) mod sse;
pub(crate) mod stream;
pub(crate) mod ws;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::Http;
use super::probe::Probe;

/// A technique the bench can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Technique {
    /// WebSocket on chatlab's `/ws`.
    Ws,
    /// Server-Sent Events plus `POST /api/messages`.
    Sse,
    /// HTTP streaming (NDJSON) plus `POST /api/messages`.
    Stream,
    /// The forever iframe plus `POST /api/messages`.
    Iframe,
    /// Long polling plus `POST /api/messages`.
    #[value(name = "longpoll")]
    #[serde(rename = "longpoll")]
    LongPoll,
    /// Short polling plus `POST /api/messages`.
    Poll,
    /// The seed protocol at `--seed-url` (WebSocket only, no sessions).
    Seed,
    /// Four chatlab techniques at once in one phase: participant `i` uses ws, sse, longpoll, poll in turn.
    Mix,
}

impl Technique {
    /// Its name in tables and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Technique::Ws => "ws",
            Technique::Sse => "sse",
            Technique::Stream => "stream",
            Technique::Iframe => "iframe",
            Technique::LongPoll => "longpoll",
            Technique::Poll => "poll",
            Technique::Seed => "seed",
            Technique::Mix => "mix",
        }
    }

    /// The server transports whose counters (`/api/stats`) belong to this technique's phase.
    pub(crate) fn transports(self) -> &'static [&'static str] {
        match self {
            Technique::Ws => &["ws"],
            Technique::Sse => &["sse"],
            Technique::Stream => &["stream"],
            Technique::Iframe => &["iframe"],
            Technique::LongPoll => &["longpoll"],
            Technique::Poll => &["poll"],
            Technique::Seed => &["seed"],
            Technique::Mix => &["ws", "sse", "longpoll", "poll"],
        }
    }
}

/// The techniques of a mixed phase, in the order participants take them.
const MIX: [Technique; 4] = [Technique::Ws, Technique::Sse, Technique::LongPoll, Technique::Poll];

/// What every client of a phase shares.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// Where bytes, requests and deliveries are counted.
    pub(crate) probe: Arc<Probe>,
    /// Ends every receiving task.
    pub(crate) stop: CancellationToken,
    /// Short polling's interval.
    pub(crate) poll_interval: Duration,
    /// Send a browser's request headers on every HTTP request (`--headers browser`).
    pub(crate) browser_headers: bool,
    /// This client's number in the phase (spreads poll timings).
    pub(crate) index: usize,
}

/// One participant in the room, whatever its technique.
#[async_trait]
pub(crate) trait Participant: Send {
    /// Sends one chat text.
    async fn send(&mut self, text: &str) -> anyhow::Result<()>;
    /// Leaves the room (no lease left to run out during the next phase) and closes every connection.
    async fn leave(self: Box<Self>);
}

/// Joins one participant of `technique` at `target` (`host:port` for chatlab, a `ws://` URL for the seed).
///
/// # Errors
/// A connection or a join that failed.
pub(crate) async fn join(technique: Technique, target: &str, context: Context) -> anyhow::Result<Box<dyn Participant>> {
    let technique = if technique == Technique::Mix { MIX[context.index % MIX.len()] } else { technique };
    Ok(match technique {
        Technique::Ws => Box::new(ws::WsClient::join(target, context).await?),
        Technique::Sse => Box::new(sse::join(target, context).await?),
        Technique::Stream => Box::new(stream::join(target, context).await?),
        Technique::Iframe => Box::new(iframe::join(target, context).await?),
        Technique::LongPoll => Box::new(long_poll::join(target, context).await?),
        Technique::Poll => Box::new(short_poll::join(target, context).await?),
        Technique::Seed => Box::new(seed::SeedClient::join(target, context).await?),
        Technique::Mix => unreachable!("a mixed phase's participant takes one of the four techniques"),
    })
}

/// A small deterministic generator (SplitMix64) for the spread of start times: no dependency, same run twice.
pub(crate) fn spread(index: usize, salt: u64) -> f64 {
    let mut z = (index as u64).wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What the five HTTP techniques share: a session joined with `POST /api/sessions`, a receiving task that
/// owns the connection it joined on, and a second connection for `POST /api/messages`, opened at the first text.
pub(crate) struct HttpClient {
    up: Option<Http>,
    session: String,
    authority: String,
    context: Context,
    receiver: JoinHandle<()>,
}

impl HttpClient {
    fn new(authority: &str, session: String, context: Context, receiver: JoinHandle<()>) -> HttpClient {
        HttpClient { up: None, session, authority: authority.to_owned(), context, receiver }
    }

    /// The POST connection, opened on first use.
    async fn up(&mut self) -> anyhow::Result<&mut Http> {
        if self.up.is_none() {
            let http = Http::connect(&self.authority, self.context.probe.clone(), self.context.browser_headers).await?;
            self.up = Some(http);
        }
        Ok(self.up.as_mut().expect("opened above"))
    }
}

/// Joins as `transport` over HTTP: returns the connection it joined on (for receiving), the session and the
/// join cursor.
async fn join_http(authority: &str, transport: &str, context: &Context) -> anyhow::Result<(Http, String, u64)> {
    let mut down = Http::connect(authority, context.probe.clone(), context.browser_headers).await?;
    let (session, since) = down.join(transport).await?;
    Ok((down, session, since))
}

#[async_trait]
impl Participant for HttpClient {
    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let session = self.session.clone();
        self.up().await?.post_text(&session, text).await.context("POST /api/messages")
    }

    async fn leave(mut self: Box<Self>) {
        let session = self.session.clone();
        if let Ok(up) = self.up().await {
            let _ = up.leave(&session).await;
        }
        self.receiver.abort();
    }
}
