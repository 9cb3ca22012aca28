//! The one trait between the room and where its state lives.
//!
//! A broker owns what must be agreed by every process serving the room: the sequence counter and the event
//! history (appended atomically together), the sessions with their leases, and the guest counter. It feeds every
//! event, in sequence order, to the one fan-out point of each process ([`crate::core::Room`]); transports never
//! talk to it. [`durable::DurableBroker`] (the default) keeps it in this process and in an embedded store on disk,
//! so that it survives a restart or a crash; [`memory::MemoryBroker`] keeps it in this process only;
//! [`redis::RedisBroker`] keeps it in Redis, shared by every process pointed at it.

pub mod durable;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::core::event::{Draft, RoomEvent, Seq};
use crate::core::session::{SessionRecord, Transport};

pub use durable::DurableBroker;
pub use memory::MemoryBroker;
pub use redis::RedisBroker;

/// Why a broker call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The shared store cannot be reached; the caller may retry later.
    #[error("the room's store is unavailable: {0}")]
    Unavailable(String),
    /// The room holds `--max-sessions` participants already.
    #[error("the room is full")]
    Full,
}

/// What is retained after a cursor.
#[derive(Debug, Default)]
pub struct Backlog {
    /// The cursor the backlog was read after: the one asked for, or the session's saved one ([`Visit::since`]).
    /// A receiver's cursor starts here.
    pub after: Seq,
    /// The newest sequence number at the time of reading.
    pub head: Seq,
    /// Set when the cursor cannot be served without a hole: the client must be told.
    pub missed: Option<Missed>,
    /// Retained events after the cursor (after the hole, if any), oldest first, at most the asked number.
    pub events: Vec<Arc<RoomEvent>>,
}

/// A cursor the history cannot continue seamlessly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Events `from..=to` fell out of the retained history.
    Gap {
        /// The first missed sequence number.
        from: Seq,
        /// The last missed sequence number.
        to: Seq,
    },
    /// The cursor ([`Backlog::after`]) is ahead of the room: a restarted in-memory room, or a made-up cursor.
    Ahead,
}

impl Backlog {
    /// What is retained after `cursor`, from what a store read: its head, the oldest event it retains (`None`
    /// when it retains none) and the retained events after the cursor. Both brokers answer through here, so
    /// they tell a hole and a cursor ahead of the room alike.
    pub(crate) fn read(cursor: Seq, head: Seq, oldest: Option<Seq>, events: Vec<Arc<RoomEvent>>) -> Backlog {
        if cursor > head {
            return Backlog { after: cursor, head, missed: Some(Missed::Ahead), events: Vec::new() };
        }
        let first = oldest.unwrap_or(head + 1);
        let missed = (cursor + 1 < first).then(|| Missed::Gap { from: cursor + 1, to: first - 1 });
        Backlog { after: cursor, head, missed, events }
    }
}

/// A client of a session showing up ([`Broker::open`], [`Broker::poll`]): who, with what technique, until when,
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

/// What a broker feeds to a process's fan-out point.
#[derive(Debug)]
pub enum FeedItem {
    /// A room event, in sequence order.
    Event(Arc<RoomEvent>),
    /// The store went away: events may be missing until [`FeedItem::Up`].
    Down(String),
    /// The store is back; receivers should re-read history from their cursors.
    Up,
}

/// Where the room's shared state lives. Implementations: [`DurableBroker`] (this process, kept on disk),
/// [`MemoryBroker`] (this process only) and [`RedisBroker`] (several processes).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Appends a room event: assigns the next sequence number atomically with appending it to the history
    /// (trimmed to `--history`), stamps the online count and time, and feeds it to every subscribed process.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable; nothing was appended then.
    async fn publish(&self, draft: Draft) -> Result<Arc<RoomEvent>, BrokerError>;

    /// Appends `drafts` as [`Broker::publish`] does, in this order, with consecutive sequence numbers when nothing
    /// else is published meanwhile: one step for a sender's texts that arrived together. By default one publish
    /// after another; the durable broker writes them in one commit.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable; the drafts before the failure were appended.
    async fn publish_all(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<RoomEvent>>, BrokerError> {
        let mut events = Vec::with_capacity(drafts.len());
        for draft in drafts {
            events.push(self.publish(draft).await?);
        }
        Ok(events)
    }

    /// Reads at most `max` retained events after `cursor`, with the hole (if any) the client must be told of.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn since(&self, cursor: Seq, max: usize) -> Result<Backlog, BrokerError>;

    /// The newest sequence number given out (0 in a room with no event yet).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn head(&self) -> Result<Seq, BrokerError> {
        Ok(self.since(Seq::MAX, 0).await?.head)
    }

    /// The feed of every event of the room, in sequence order. The room calls it once, at start.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<FeedItem>, BrokerError>;

    /// The next guest number (1, 2, ...) for the nickname `游客N`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn next_guest(&self) -> Result<u64, BrokerError>;

    /// Stores a new session, online until `lease_until_ms` unless renewed.
    ///
    /// # Errors
    /// [`BrokerError::Full`] when `max` sessions exist already; [`BrokerError::Unavailable`].
    async fn create_session(&self, record: &SessionRecord, lease_until_ms: u64, max: usize) -> Result<(), BrokerError>;

    /// Looks a session up by its secret token.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError>;

    /// Replaces a live session's record (nickname, transport, cursor); `false` if it is gone.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn save_session(&self, record: &SessionRecord) -> Result<bool, BrokerError>;

    /// A client of the session opens a receiving channel: the session's technique becomes the visit's and its
    /// lease runs until the visit's end (never shortened), and the events after the visit's cursor (the session's
    /// saved one when `None`) are read, at most `max`. Returns the record as stored now and the backlog, or
    /// `None` if the session is gone (nothing is written then). One step for what would otherwise be
    /// a lookup, a save, a renewal and a read: one lock, one round trip to a shared store.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn open(&self, visit: Visit<'_>) -> Result<Option<(SessionRecord, Backlog)>, BrokerError>;

    /// A poll of the session: [`Broker::open`] without a copy of the record (the saved cursor is enough). The
    /// empty poll is the commonest request the server sees. Returns the saved cursor and the backlog, or `None`
    /// if the session is gone.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn poll(&self, visit: Visit<'_>) -> Result<Option<(Seq, Backlog)>, BrokerError>;

    /// Moves a live session's cursor forward to `cursor` (never back; its other fields are left alone, so a
    /// rename meanwhile is kept) and extends its lease to `lease_until_ms`. A session that is gone stays gone.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn save_cursor(&self, token: &str, cursor: Seq, lease_until_ms: u64) -> Result<(), BrokerError>;

    /// Removes a session; returns it if this call removed it, so exactly one caller announces the leave.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn remove_session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError>;

    /// Extends the leases of these sessions (those still present) to `until_ms`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn renew(&self, tokens: &[String], until_ms: u64) -> Result<(), BrokerError>;

    /// Removes and returns every session whose lease ended before `now_ms`, each returned to exactly one caller.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn expire(&self, now_ms: u64) -> Result<Vec<SessionRecord>, BrokerError>;

    /// Every session online, oldest first.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn presence(&self) -> Result<Vec<SessionRecord>, BrokerError>;

    /// How many sessions are online, and the oldest `max` of them in join order (by guest number): what a
    /// welcome's `presence` lists. Its cost is bounded by `max`, not by the number online: both brokers keep the
    /// sessions in join order for it.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn oldest(&self, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError>;

    /// How many sessions are online.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn online(&self) -> Result<u64, BrokerError>;

    /// Makes durable what is held only in this process (the durable broker's session changes not yet written);
    /// called once the server has stopped serving. Nothing to do for the others.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be written.
    async fn flush(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
