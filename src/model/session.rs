//! Sessions: a participant's identity, which outlives any one connection.
//!
//! A session is created by a join (a `/ws` or seed WebSocket without `session=`, or `POST /api/sessions`) and
//! identified by a secret `token` (the `session` of the wire); its public `id` and nickname appear in events.
//! It ends with an explicit leave, when a seed connection closes, or when its lease runs out: a session with no
//! live channel and no recent poll is announced as gone after `--session-lease` seconds.

use serde::{Deserialize, Serialize};

use crate::model::event::Seq;

/// The six techniques, as named on the wire (`/api/presence`, `/api/stats`, `POST /api/sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket, on `/ws` or the seed protocol on `/`.
    Ws,
    /// Server-Sent Events plus `POST /api/messages`.
    Sse,
    /// Long polling plus `POST /api/messages`.
    #[serde(rename = "longpoll")]
    LongPoll,
    /// Short (interval) polling plus `POST /api/messages`.
    Poll,
    /// HTTP streaming: one chunked NDJSON response plus `POST /api/messages`.
    Stream,
    /// The forever iframe: one chunked HTML response of `<script>` chunks plus `POST /api/messages`.
    Iframe,
}

impl Transport {
    /// Every technique, in the order tables show them.
    pub const ALL: [Transport; 6] =
        [Transport::Ws, Transport::Sse, Transport::Stream, Transport::Iframe, Transport::LongPoll, Transport::Poll];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
            Transport::Poll => "poll",
            Transport::Stream => "stream",
            Transport::Iframe => "iframe",
        }
    }
}

/// What the broker stores about a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The secret that lets a client act as this participant (the wire's `session`).
    pub token: String,
    /// The public participant id (a UUID), as in events.
    pub id: String,
    /// The current nickname.
    pub nickname: String,
    /// The guest number given at join (the `N` of `游客N`).
    pub guest: u64,
    /// The technique the participant uses now.
    pub transport: Transport,
    /// When the participant joined, ms since the epoch.
    pub since_ms: u64,
    /// The last sequence number delivered when its last channel ended: where a resume without `since=` starts.
    pub cursor: Seq,
    /// A seed-protocol connection on `/`: it leaves as soon as it closes.
    pub seed: bool,
}

/// Most participants a [`Presence`] lists: enough for any list a page shows, and what bounds the cost of a
/// welcome in a big room (reading 200 records, whatever the number online).
pub const PRESENCE_MAX: usize = 200;

/// Who is online, as a page first learns it (the `presence` of a welcome, of a join's `201`, of a poll asked
/// with `presence=1`); it then keeps its list from join, leave, nick_update and message events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// How many participants are online (all of them, listed or not).
    pub clientcount: u64,
    /// The oldest participants, in join order, at most [`PRESENCE_MAX`].
    pub participants: Vec<Participant>,
    /// Whether some participants were left out of `participants`.
    pub more: bool,
}

/// One participant as others see it: never its session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The public id, as in events.
    pub id: String,
    /// The current nickname.
    pub nickname: String,
    /// The technique it uses now.
    pub transport: Transport,
    /// When it joined, ms since the epoch.
    pub since: u64,
}

impl From<&SessionRecord> for Participant {
    fn from(record: &SessionRecord) -> Self {
        Participant {
            id: record.id.clone(),
            nickname: record.nickname.clone(),
            transport: record.transport,
            since: record.since_ms,
        }
    }
}

/// A client of a session showing up ([`crate::core::Broker::open`], [`crate::core::Broker::poll`]): who, with what technique, until when,
/// and what it reads.
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    /// The session's secret token.
    pub token: &'a str,
    /// The technique it shows up with: the session's from now on.
    pub transport: Transport,
    /// When its lease ends (ms since the epoch), unless it already ends later.
    pub lease_until_ms: u64,
    /// Read after this cursor; after the session's saved cursor when `None`.
    pub since: Option<Seq>,
    /// Read at most this many events.
    pub max: usize,
}

impl Visit<'_> {
    /// The cursor to read after: the one the visit gives, else the session's `saved` one.
    pub(crate) fn after(&self, saved: Seq) -> Seq {
        self.since.unwrap_or(saved)
    }
}
