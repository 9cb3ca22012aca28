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
    /// The room's epoch at the time of reading ([`Broker::epoch`]): a cursor is a position in this numbering.
    pub epoch: Epoch,
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
    /// The cursor is a position in another epoch: the room started over since. What follows is the room from its
    /// oldest retained event, which comes after `to`.
    Epoch {
        /// The cursor as the client gave it (a position in its old epoch).
        since: Seq,
        /// The sequence number the events that follow come after (the oldest retained one minus one).
        to: Seq,
    },
}

impl Backlog {
    /// What is retained after `cursor`, from what a store read: its head, the oldest event it retains (`None`
    /// when it retains none) and the retained events after the cursor. Both brokers answer through here, so
    /// they tell a hole and a cursor ahead of the room alike.
    pub(crate) fn read(
        epoch: Epoch,
        cursor: Seq,
        head: Seq,
        oldest: Option<Seq>,
        events: Vec<Arc<RoomEvent>>,
    ) -> Backlog {
        if cursor > head {
            return Backlog { epoch, after: cursor, head, missed: Some(Missed::Ahead), events: Vec::new() };
        }
        let first = oldest.unwrap_or(head + 1);
        let missed = (cursor + 1 < first).then(|| Missed::Gap { from: cursor + 1, to: first - 1 });
        Backlog { epoch, after: cursor, head, missed, events }
    }

    /// Turns a read from the start of the room (cursor 0) into the answer to a cursor of another epoch: the
    /// client is told the room started over ([`Missed::Epoch`]), then gets what is retained from the oldest.
    pub fn restarted(mut self, since: Seq) -> Backlog {
        let to = self.events.first().map_or(self.head, |event| event.seq - 1);
        self.after = to;
        self.missed = Some(Missed::Epoch { since, to });
        self
    }
}

/// The room's epoch: an opaque string that changes whenever its sequence starts over (a new in-memory room, a
/// wiped Redis), so a client can tell "I missed nothing" from "this is another room now". Shared, not copied:
/// every backlog read carries it.
pub type Epoch = Arc<str>;

/// A fresh epoch: 16 random hex digits (64 bits), short because every poll answer carries it.
pub fn new_epoch() -> Epoch {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    Arc::from(format!("{bits:016x}"))
}

/// A client's name for one send, for de-duplication: the session it is sent as, and the `ref` of a `/ws?ack=1`
/// frame or the `Idempotency-Key` of a POST. Only the same session's same key is a repeat.
#[derive(Debug, Clone, Copy)]
pub struct SendKey<'a> {
    /// The session's secret token.
    pub session: &'a str,
    /// The client's key for this send.
    pub key: &'a str,
}

impl SendKey<'_> {
    /// The key as stored: the session token, a space, the client's key (a token holds no space).
    pub fn stored(&self) -> String {
        let mut stored = String::with_capacity(self.session.len() + 1 + self.key.len());
        stored.push_str(self.session);
        stored.push(' ');
        stored.push_str(self.key);
        stored
    }
}

/// What [`Broker::publish_once`] did.
#[derive(Debug, Clone)]
pub enum Published {
    /// The event was appended now.
    Fresh(Arc<RoomEvent>),
    /// The key was used before, within the retained history: nothing was appended; this is the `seq` the first
    /// send got.
    Repeated(Seq),
}

impl Published {
    /// The sequence number the send has: its new event's, or the first send's.
    pub fn seq(&self) -> Seq {
        match self {
            Published::Fresh(event) => event.seq,
            Published::Repeated(seq) => *seq,
        }
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

    /// [`Broker::publish`] unless `key` was used before: the check and the append are one atomic step, so two
    /// processes racing with the same key append once, and the loser is told the winner's `seq`
    /// ([`Published::Repeated`]). Keys are remembered as long as their event is retained (`--history`), and
    /// trimmed with it, so the memory they take is bounded by the history.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable; nothing was appended then.
    async fn publish_once(&self, draft: Draft, key: SendKey<'_>) -> Result<Published, BrokerError>;

    /// The `seq` of the event published with `key`, while it is remembered (see [`Broker::publish_once`]).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn published(&self, key: SendKey<'_>) -> Result<Option<Seq>, BrokerError>;

    /// The room's epoch ([`Epoch`]): the same for as long as its sequence goes on, a new one once it starts
    /// over. Every [`Backlog`] carries it too.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn epoch(&self) -> Result<Epoch, BrokerError>;

    /// Appends `sends` as [`Broker::publish`] (or, with a key, [`Broker::publish_once`]) does, in this order, with
    /// consecutive sequence numbers when nothing else is published meanwhile: one step for a sender's texts that
    /// arrived together. Answers one [`Published`] per send, in order. By default one publish after another; the
    /// durable broker writes them (and their keys) in one commit.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable; the sends before the failure were appended.
    async fn publish_all(&self, sends: Vec<(Draft, Option<SendKey<'_>>)>) -> Result<Vec<Published>, BrokerError> {
        let mut published = Vec::with_capacity(sends.len());
        for (draft, key) in sends {
            published.push(match key {
                Some(key) => self.publish_once(draft, key).await?,
                None => Published::Fresh(self.publish(draft).await?),
            });
        }
        Ok(published)
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

    /// Whether each of these sessions still exists, in order. This default looks them up one by one; the brokers
    /// here answer in one step.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn alive(&self, tokens: &[String]) -> Result<Vec<bool>, BrokerError> {
        let mut alive = Vec::with_capacity(tokens.len());
        for token in tokens {
            alive.push(self.session(token).await?.is_some());
        }
        Ok(alive)
    }

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

    /// One page of the sessions in join order (`GET /api/presence?after=&limit=`): how many are online, and at
    /// most `max` sessions whose guest number is above `after`, ascending. Paging from 0 and then from the last
    /// page's last guest number lists every session online throughout exactly once. This default reads every
    /// session ([`Broker::presence`]); the brokers here read the page from their join-order index, at a cost
    /// bounded by `max`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store is unreachable.
    async fn page(&self, after: u64, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError> {
        let mut everyone = self.presence().await?;
        let online = everyone.len() as u64;
        everyone.retain(|record| record.guest > after);
        everyone.sort_by_key(|record| record.guest);
        everyone.truncate(max);
        Ok((online, everyone))
    }

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
