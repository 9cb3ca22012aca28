//! The one trait between the room and where its state lives.
//!
//! A broker owns what must be agreed by every process serving the room: the sequence counter and the event
//! history (appended atomically together), the sessions with their leases, and the guest counter. It feeds every
//! event, in sequence order, to the one fan-out point of each process ([`crate::core::Room`]); transports never
//! talk to it. The implementations live one layer up, in [`crate::broker`]: the room knows only this trait.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::model::{
    Backlog, BrokerError, Draft, Epoch, FeedItem, Published, RoomEvent, SendKey, Seq, SessionRecord, Visit,
};

/// Sends numbered by [`Broker::sequence_all`]: one [`Published`] per send, in order, and when they are durable.
#[derive(Debug)]
pub struct Sequenced {
    /// One answer per send, in order: the new event, or the `seq` a key's first send got.
    pub published: Vec<Published>,
    /// Resolves once these sends are durable.
    pub durable: Durability,
}

/// When sends already numbered are durable ([`Broker::sequence_all`]): at once for a broker that answers only
/// once they are, after the commit that holds them for the durable broker.
#[derive(Debug)]
pub struct Durability(Option<oneshot::Receiver<Result<(), BrokerError>>>);

impl Durability {
    /// Durable already.
    pub fn now() -> Self {
        Durability(None)
    }

    /// Durable once `written` is answered `Ok`; a dropped sender means the store's writer stopped first.
    pub fn once(written: oneshot::Receiver<Result<(), BrokerError>>) -> Self {
        Durability(Some(written))
    }

    /// Waits until the sends are durable.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when they could not be written (they were numbered and seen, and are not
    /// acknowledged).
    pub async fn wait(self) -> Result<(), BrokerError> {
        match self.0 {
            None => Ok(()),
            Some(written) => written.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable("the store's writer stopped before the texts were written".into()))
            }),
        }
    }
}

/// Where the room's shared state lives. Implementations: [`DurableBroker`](crate::broker::DurableBroker) (this process, kept on disk),
/// [`MemoryBroker`](crate::broker::MemoryBroker) (this process only) and [`RedisBroker`](crate::broker::RedisBroker) (several processes).
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

    /// [`Broker::publish_all`] in two steps: answers as soon as the sends are numbered (and fed to the room's
    /// readers), with a [`Durability`] that resolves once they are durable. A caller may number its next sends
    /// meanwhile; the durability of sends numbered later never resolves before that of sends numbered earlier.
    /// A send's answer to its client (a `202`, an `ack`) waits for its [`Durability`]: a send numbered and never
    /// made durable (a crash, a failed write) is seen by readers but never acknowledged. By default
    /// [`Broker::publish_all`], durable once it answers; the durable broker numbers at once and resolves after its
    /// commit.
    ///
    /// # Errors
    /// As [`Broker::publish_all`]; [`Durability::wait`] answers [`BrokerError::Unavailable`] when the sends were
    /// numbered (and seen) but could not be written.
    async fn sequence_all(&self, sends: Vec<(Draft, Option<SendKey<'_>>)>) -> Result<Sequenced, BrokerError> {
        Ok(Sequenced { published: self.publish_all(sends).await?, durable: Durability::now() })
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
