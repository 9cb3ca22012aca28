//! The durable broker (the default): the room of this process, kept in an embedded store under `--data-dir`, so
//! that its history, sessions and sequence survive a restart and a crash (`kill -9`).
//!
//! # Memory answers, the store remembers
//! The room itself is a [`MemoryBroker`]: every read (a backlog, a session, a poll, the presence) is answered
//! from memory and costs no disk I/O. The store is [redb](https://docs.rs/redb) (copy-on-write B-trees in one
//! file, one `fsync` per commit, see docs/architecture.md for why this one), written by two threads in a
//! pipeline:
//!
//! - **The sequencer numbers and delivers at once.** A publish is handed to the sequencer thread through a
//!   channel. It numbers and stamps the texts, appends them to the room in memory (which feeds them to the
//!   fan-out: readers see them now) and passes them on to the committer with their publishers' answers.
//! - **The committer makes them durable, many texts per sync, and only then answers.** It takes everything the
//!   sequencer passed on meanwhile (up to `--store-batch-max` texts), writes it in one transaction with the trim
//!   of the history and the sessions changed, commits (one sync) and only then answers the publishers: a `202`
//!   or a WebSocket `ack` means the text is on disk. While one commit syncs, the next batch gathers, and the
//!   sync is no longer on the way from a sender to its readers.
//! - **A sender may number its next texts while its previous ones sync.** [`Broker::sequence_all`] answers once
//!   the texts are numbered, with a [`Durability`] resolved by their commit: a WebSocket connection numbers its
//!   next batch as soon as the previous one is numbered, and writes each `ack` once its text is durable, in the
//!   order its frames came. A fast sender is held to the sequencer's pace, not to one batch per sync.
//! - **The sequence never repeats, even for texts seen and then lost in a crash.** A text is seen before it is
//!   durable, so a crash can lose a text its readers saw (never one its sender was told was kept). The store
//!   therefore holds a *reservation*: the highest number the sequencer may give out, written ahead of it (up to
//!   `--store-unsynced-max` numbers at a time). After a crash the room goes on after the reservation, not after
//!   the last durable text: numbers may be skipped, none is given twice. A clean stop writes everything and
//!   leaves no skip. The sequencer waits for the committer when it reaches the reservation, which also bounds
//!   how far readers run ahead of the disk.
//! - **A store that cannot be written refuses texts, and heals.** When a commit fails (a full disk: `ENOSPC`,
//!   or any other I/O error) its publishers are answered [`BrokerError::Unavailable`] (`503 unavailable`), never
//!   acknowledged, and every later text is refused at once, before it is numbered or seen, while the store
//!   fails. The committer reopens the store and tries again every [`RETRY_EVERY`] with what it holds (the
//!   texts already seen, the sessions changed); once a commit goes through, texts are taken again. Texts that
//!   were refused this way but already seen are written then: the history on disk stays the one readers saw.
//! - **Sessions change in memory at once and reach the store with the committer's next commit.** A join, leave,
//!   rename or expiry is written in the next commit, at the latest with the notice announcing it (a publish,
//!   itself a commit). Lease renewals and cursor moves, which every poll makes, are written at most once per
//!   `--store-session-sync-ms` for each session: a crash loses at most that much of a lease or a cursor move (a
//!   page resumes with `since=` anyway). The guest counter is written with every commit that follows a join.
//! - **One process per directory.** The directory's `LOCK` file is held (an exclusive `flock`) while a process
//!   uses it, and redb locks its file too: a second process on the same `--data-dir` is refused at start.
//!
//! # The data directory
//! `FORMAT` (`chatlab-store 1`: the layout below; a newer one is refused at start, never overwritten), `LOCK`,
//! and `room.redb` with four tables: `meta` (the epoch, a random id made when the store is created; the guest
//! counter; the reservation), `events` (seq → the event's JSON, the newest `--history`, and until the next trim up to a sixteenth more), `sessions` (token →
//! the record and the end of its lease) and `idempotency` (seq → the session and key a text was sent with,
//! trimmed with the events). Copy the directory while the server is stopped to back the room up.
//!
//! # Files
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`DurableBroker`], its pipeline's messages, its [`Broker`] methods (memory answers, changes marked) |
//! | `open.rs` | opening a data directory: its lock and `FORMAT`, the room read back, the two threads started |
//! | `sequencer.rs` | the thread that numbers texts and delivers them |
//! | `committer.rs` | the thread that writes, syncs, answers the publishers and retries a failing store |

mod committer;
mod open;
mod sequencer;

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use redb::TableDefinition;
use tokio::sync::{mpsc, oneshot};

use super::MemoryBroker;
use crate::core::broker::{Durability, Sequenced};
use crate::core::Broker;
use crate::model::{
    Backlog, BrokerError, Draft, Epoch, FeedItem, Published, RoomEvent, SendKey, Seq, SessionRecord, Visit,
};

/// The layout version this chatlab writes and reads (the `FORMAT` file and the `meta` table).
pub const FORMAT: u32 = 1;

/// After a failed commit, how often the committer reopens the store and tries again. Fixed: short enough that
/// texts are taken again soon after space is back, long enough that a failing disk is not hammered; the
/// attempts cost nothing while they fail.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const IDEMPOTENCY: TableDefinition<u64, &[u8]> = TableDefinition::new("idempotency");

/// The store's file in the data directory.
const STORE_FILE: &str = "room.redb";
const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "LOCK";

/// How the store writes (the `--store-*` flags; [`Default`] is their defaults).
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How often, at most, one session's lease renewals and cursor moves are written: what a crash may lose of
    /// them. Joins, leaves and renames are written with the next commit.
    pub session_sync: Duration,
    /// Most texts in one commit: bounds one transaction (and the memory it takes).
    pub batch_max: usize,
    /// Most numbers the sequencer may give out beyond the last durable text: how far readers may run ahead of
    /// the disk, and the most numbers a crash can skip (at least 1).
    pub unsynced_max: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { session_sync: Duration::from_secs(1), batch_max: 4096, unsynced_max: 16_384 }
    }
}

/// Why a data directory cannot be used. Each is a refusal at start, never a fresh room in its place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `--data-dir` names something that is not a directory.
    #[error("--data-dir {0}: not a directory")]
    NotADirectory(PathBuf),
    /// The directory or a file in it cannot be created, read or written (permissions, a full disk).
    #[error("--data-dir {path}: {source}")]
    Io {
        /// The data directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error(
        "--data-dir {0} is in use by another chatlab process (one process per data directory; processes share a \
         room through --broker redis://)"
    )]
    Locked(PathBuf),
    /// The directory was written by a newer chatlab.
    #[error(
        "--data-dir {path} holds a store of format {found}, newer than this chatlab reads ({FORMAT}): run the \
         chatlab that wrote it, or give another --data-dir"
    )]
    Newer {
        /// The data directory.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// The directory holds files but no chatlab store.
    #[error("--data-dir {0} is not empty and holds no chatlab store (no FORMAT file): give an empty or new directory")]
    Foreign(PathBuf),
    /// The store is there but cannot be read.
    #[error("--data-dir {path}: the store cannot be read: {why}")]
    Damaged {
        /// The data directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The durable broker: a [`MemoryBroker`] that answers, and a store under `--data-dir` written in group commits
/// by a sequencer and a committer thread (see the [module docs](self)).
pub struct DurableBroker {
    memory: Arc<MemoryBroker>,
    dirty: Arc<Mutex<Dirty>>,
    progress: Arc<Progress>,
    /// To the sequencer; taken on drop, which ends it (and then the committer).
    jobs: Option<std_mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    epoch: String,
    /// Held (locked) while this process uses the directory.
    _lock: File,
}

/// Sessions changed in memory and not yet written.
#[derive(Default)]
struct Dirty {
    /// Created, removed, renamed: written with the next commit.
    now: HashSet<String>,
    /// Lease renewed or cursor moved: written at most once per [`StoreOptions::session_sync`].
    soon: HashSet<String>,
}

/// What the committer tells the sequencer (and the broker): how far the store is.
struct Progress {
    state: Mutex<Durable>,
    /// Signalled whenever the state changes.
    moved: Condvar,
}

#[derive(Debug, Clone)]
struct Durable {
    /// The newest event written (numbers up to it are on disk or trimmed).
    head: Seq,
    /// The highest number the sequencer may give out: written, so a restart after a crash goes on above it.
    reserved: Seq,
    /// Why the store cannot be written, while it cannot.
    failing: Option<String>,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, Durable> {
        // Each section sets a field or two: a panic cannot leave the state half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, change: impl FnOnce(&mut Durable)) {
        change(&mut self.lock());
        self.moved.notify_all();
    }
}

/// What a publisher hands the sequencer.
enum Job {
    /// Drafts of one publisher, each with its stored send key if any, numbered consecutively: answered once
    /// numbered, and again once written.
    Publish(Vec<(Draft, Option<String>)>, Numbered, Written),
    /// Write every session change now, and answer once it is written (and everything sequenced before it).
    Sync(Written),
}

/// The answers of a publish once its drafts are numbered (and seen by readers).
type Numbered = oneshot::Sender<Result<Vec<Published>, BrokerError>>;

/// The answer once what was asked is durable.
type Written = oneshot::Sender<Result<(), BrokerError>>;

/// An event with the send key it was published with, if any: what the store writes of it.
type Stored = (Arc<RoomEvent>, Option<String>);

/// What the sequencer hands the committer, in sequence order.
enum Step {
    /// Events numbered and seen, with their publisher's answer once they are written.
    Publish(Vec<Stored>, Written),
    /// Answer once everything before is written (with every session change).
    Sync(Written),
    /// The sequencer waits for the reservation to reach this number.
    Reserve(Seq),
}

impl DurableBroker {
    /// The room's epoch: a random id made when the store was created, the same across restarts, new in a new
    /// (or wiped) data directory.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Writes every session change held only in memory now, in one commit, after every text published before.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be written.
    pub async fn sync(&self) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Sync(reply))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Hands `drafts` to the sequencer and waits for them to be numbered (and seen); the [`Durability`]
    /// resolves after their commit.
    async fn sequence(&self, drafts: Vec<(Draft, Option<String>)>) -> Result<Sequenced, BrokerError> {
        if drafts.is_empty() {
            return Ok(Sequenced { published: Vec::new(), durable: Durability::now() });
        }
        let (numbered, published) = oneshot::channel();
        let (written, durable) = oneshot::channel();
        self.send(Job::Publish(drafts, numbered, written))?;
        let published = published.await.map_err(|_| stopped())??;
        Ok(Sequenced { published, durable: Durability::once(durable) })
    }

    /// Hands `drafts` to the sequencer and waits for their commit.
    async fn commit(&self, drafts: Vec<(Draft, Option<String>)>) -> Result<Vec<Published>, BrokerError> {
        let Sequenced { published, durable } = self.sequence(drafts).await?;
        durable.wait().await?;
        Ok(published)
    }

    fn send(&self, job: Job) -> Result<(), BrokerError> {
        self.jobs.as_ref().and_then(|jobs| jobs.send(job).ok()).ok_or_else(stopped)
    }

    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        // Each section inserts into or takes a set: a panic cannot leave it half-written.
        self.dirty.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks a session to be written with the next commit.
    fn changed_now(&self, token: &str) {
        self.dirty().now.insert(token.to_owned());
    }

    /// Marks a session to be written within [`StoreOptions::session_sync`] (no allocation once it is marked).
    fn changed_soon<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) {
        let mut dirty = self.dirty();
        for token in tokens {
            if !dirty.soon.contains(token) {
                dirty.soon.insert(token.to_owned());
            }
        }
    }
}

impl Drop for DurableBroker {
    /// Ends the sequencer, then the committer after a last commit of everything held only in memory (which
    /// also gives back the numbers reserved and not used), before the directory is unlocked.
    fn drop(&mut self) {
        drop(self.jobs.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn stopped() -> BrokerError {
    BrokerError::Unavailable("the store's writer has stopped".into())
}

fn unwritable(why: &str) -> BrokerError {
    BrokerError::Unavailable(format!("the store cannot be written, so texts are refused: {why}"))
}

#[async_trait]
impl Broker for DurableBroker {
    async fn publish(&self, draft: Draft) -> Result<Arc<RoomEvent>, BrokerError> {
        match self.commit(vec![(draft, None)]).await?.pop() {
            Some(Published::Fresh(event)) => Ok(event),
            _ => Err(stopped()),
        }
    }

    async fn publish_once(&self, draft: Draft, key: SendKey<'_>) -> Result<Published, BrokerError> {
        self.commit(vec![(draft, Some(key.stored()))]).await?.pop().ok_or_else(stopped)
    }

    async fn published(&self, key: SendKey<'_>) -> Result<Option<Seq>, BrokerError> {
        let sent = self.memory.sent(&key.stored());
        // An answer that a text was sent is an acknowledgement: given once it is durable.
        if sent.is_some_and(|seq| seq > self.progress.lock().head) {
            self.sync().await?;
        }
        Ok(sent)
    }

    async fn epoch(&self) -> Result<Epoch, BrokerError> {
        self.memory.epoch().await
    }

    async fn publish_all(&self, sends: Vec<(Draft, Option<SendKey<'_>>)>) -> Result<Vec<Published>, BrokerError> {
        self.commit(sends.into_iter().map(|(draft, key)| (draft, key.map(|key| key.stored()))).collect()).await
    }

    async fn sequence_all(&self, sends: Vec<(Draft, Option<SendKey<'_>>)>) -> Result<Sequenced, BrokerError> {
        self.sequence(sends.into_iter().map(|(draft, key)| (draft, key.map(|key| key.stored()))).collect()).await
    }

    async fn alive(&self, tokens: &[String]) -> Result<Vec<bool>, BrokerError> {
        self.memory.alive(tokens).await
    }

    async fn page(&self, after: u64, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError> {
        self.memory.page(after, max).await
    }

    async fn since(&self, cursor: Seq, max: usize) -> Result<Backlog, BrokerError> {
        self.memory.since(cursor, max).await
    }

    async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<FeedItem>, BrokerError> {
        self.memory.subscribe().await
    }

    async fn next_guest(&self) -> Result<u64, BrokerError> {
        self.memory.next_guest().await
    }

    async fn create_session(&self, record: &SessionRecord, lease_until_ms: u64, max: usize) -> Result<(), BrokerError> {
        self.memory.create_session(record, lease_until_ms, max).await?;
        self.changed_now(&record.token);
        Ok(())
    }

    async fn session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError> {
        self.memory.session(token).await
    }

    async fn save_session(&self, record: &SessionRecord) -> Result<bool, BrokerError> {
        let saved = self.memory.save_session(record).await?;
        if saved {
            self.changed_now(&record.token);
        }
        Ok(saved)
    }

    async fn open(&self, visit: Visit<'_>) -> Result<Option<(SessionRecord, Backlog)>, BrokerError> {
        let opened = self.memory.open(visit).await?;
        if opened.is_some() {
            self.changed_soon([visit.token]);
        }
        Ok(opened)
    }

    async fn poll(&self, visit: Visit<'_>) -> Result<Option<(Seq, Backlog)>, BrokerError> {
        let polled = self.memory.poll(visit).await?;
        if polled.is_some() {
            self.changed_soon([visit.token]);
        }
        Ok(polled)
    }

    async fn save_cursor(&self, token: &str, cursor: Seq, lease_until_ms: u64) -> Result<(), BrokerError> {
        self.memory.save_cursor(token, cursor, lease_until_ms).await?;
        self.changed_soon([token]);
        Ok(())
    }

    async fn remove_session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError> {
        let removed = self.memory.remove_session(token).await?;
        if removed.is_some() {
            self.changed_now(token);
        }
        Ok(removed)
    }

    async fn renew(&self, tokens: &[String], until_ms: u64) -> Result<(), BrokerError> {
        self.memory.renew(tokens, until_ms).await?;
        self.changed_soon(tokens.iter().map(String::as_str));
        Ok(())
    }

    async fn expire(&self, now_ms: u64) -> Result<Vec<SessionRecord>, BrokerError> {
        let gone = self.memory.expire(now_ms).await?;
        if !gone.is_empty() {
            let mut dirty = self.dirty();
            dirty.now.extend(gone.iter().map(|record| record.token.clone()));
        }
        Ok(gone)
    }

    async fn presence(&self) -> Result<Vec<SessionRecord>, BrokerError> {
        self.memory.presence().await
    }

    async fn oldest(&self, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError> {
        self.memory.oldest(max).await
    }

    async fn online(&self) -> Result<u64, BrokerError> {
        self.memory.online().await
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        self.sync().await
    }
}
