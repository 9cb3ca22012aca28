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

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::MemoryBroker;
use crate::core::broker::{Durability, Sequenced};
use crate::core::Broker;
use crate::model::{
    Backlog, BrokerError, Draft, Epoch, EventBody, FeedItem, Published, RoomEvent, SendKey, Seq, SessionRecord, Visit,
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
    /// Opens the room kept in `dir` with the default [`StoreOptions`] (see [`DurableBroker::open_with`]).
    ///
    /// # Errors
    /// As [`DurableBroker::open_with`].
    pub fn open(dir: &Path, history: usize) -> Result<Self, StoreError> {
        DurableBroker::open_with(dir, history, StoreOptions::default())
    }

    /// Opens the room kept in `dir` (created, with a fresh room, if it does not exist or is empty), retaining the
    /// newest `history` events (at least one; older ones are trimmed from the store too), and starts its
    /// sequencer and committer.
    ///
    /// # Errors
    /// [`StoreError`]: `dir` is not a directory, cannot be created or written, is held by another process, holds
    /// a newer format, holds files but no store, or holds a store that cannot be read.
    pub fn open_with(dir: &Path, history: usize, options: StoreOptions) -> Result<Self, StoreError> {
        let options =
            StoreOptions { batch_max: options.batch_max.max(1), unsynced_max: options.unsynced_max.max(1), ..options };
        let path = dir.to_path_buf();
        let io = |source| StoreError::Io { path: path.clone(), source };
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::NotADirectory(path));
        }
        fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE)).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked(path)),
            Err(TryLockError::Error(error)) => return Err(io(error)),
        }
        match fs::read_to_string(dir.join(FORMAT_FILE)) {
            Ok(text) => check_format(&path, &text)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // A `FORMAT.tmp` is a first start that stopped before its rename: ours, and rewritten now.
                let ours = |name: &std::ffi::OsStr| name == LOCK_FILE || name == format!("{FORMAT_FILE}.tmp").as_str();
                let foreign = fs::read_dir(dir).map_err(io)?.filter_map(Result::ok).any(|e| !ours(&e.file_name()));
                if foreign {
                    return Err(StoreError::Foreign(path));
                }
                write_format(dir).map_err(io)?;
            }
            Err(error) => return Err(io(error)),
        }
        let db = open_store(&dir.join(STORE_FILE)).map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StoreError::Locked(path.clone())
            }
            other => StoreError::Damaged { path: path.clone(), why: other.to_string() },
        })?;
        let capacity = history.max(1);
        let loaded = load(&db, capacity as u64, options.unsynced_max)
            .map_err(|why| StoreError::Damaged { path: path.clone(), why })?;
        let trimmed = loaded.events.first().map_or(0, |(event, _)| event.seq);
        let memory = Arc::new(MemoryBroker::restore(
            capacity,
            loaded.epoch.as_str().into(),
            loaded.start,
            loaded.guests,
            loaded.events,
            loaded.sessions,
        ));
        let dirty = Arc::new(Mutex::new(Dirty::default()));
        let progress = Arc::new(Progress {
            state: Mutex::new(Durable { head: loaded.start, reserved: loaded.reserved, failing: None }),
            moved: Condvar::new(),
        });
        let (jobs, queue) = std_mpsc::channel();
        let (steps, step_queue) = std_mpsc::channel();
        let sequencer = Sequencer { memory: memory.clone(), progress: progress.clone(), steps };
        let committer = Committer {
            db: Some(db),
            file: dir.join(STORE_FILE),
            memory: memory.clone(),
            dirty: dirty.clone(),
            progress: progress.clone(),
            options,
            capacity: capacity as u64,
            guests: loaded.guests,
            reserved: loaded.reserved,
            written: loaded.start,
            trimmed,
            unwritten: Vec::new(),
            synced: Instant::now(),
        };
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(run).map_err(io)
        };
        let threads = vec![
            spawn("chatlab-sequencer", Box::new(move || sequencer.run(queue)))?,
            spawn("chatlab-store", Box::new(move || committer.run(step_queue)))?,
        ];
        Ok(DurableBroker { memory, dirty, progress, jobs: Some(jobs), threads, epoch: loaded.epoch, _lock: lock })
    }

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

/// redb's page cache. The room is served from memory and the store is only written to (and read back at start),
/// so its cache need only hold the pages a commit touches; redb's own default (1 GiB) could keep every page the
/// churn of sessions and history ever touches.
const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Opens (or creates) the store's file; redb checks and repairs a file that was not closed cleanly.
fn open_store(file: &Path) -> Result<Database, DatabaseError> {
    redb::Builder::new().set_cache_size(STORE_CACHE_BYTES).create(file)
}

/// Checks a `FORMAT` file's `chatlab-store N`.
fn check_format(path: &Path, text: &str) -> Result<(), StoreError> {
    let found = text.trim().strip_prefix("chatlab-store ").and_then(|n| n.parse::<u32>().ok());
    match found {
        Some(FORMAT) => Ok(()),
        Some(found) if found > FORMAT => Err(StoreError::Newer { path: path.to_path_buf(), found }),
        _ => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            why: format!("{FORMAT_FILE} says {:?}, expected \"chatlab-store {FORMAT}\"", text.trim()),
        }),
    }
}

/// Writes `FORMAT` atomically (a temporary file synced, renamed, the directory synced).
fn write_format(dir: &Path) -> std::io::Result<()> {
    let temporary = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut file = File::create(&temporary)?;
    writeln!(file, "chatlab-store {FORMAT}")?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(FORMAT_FILE))?;
    File::open(dir)?.sync_all()
}

/// What a store holds at start.
struct Loaded {
    epoch: String,
    /// The head the room goes on from: the newest event, or the reservation when a crash left one above it.
    start: Seq,
    /// The reservation written at start.
    reserved: Seq,
    guests: u64,
    events: Vec<Stored>,
    sessions: Vec<(SessionRecord, u64)>,
}

fn u64_of(bytes: &[u8]) -> Result<u64, String> {
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| format!("a counter of {} bytes", bytes.len()))?))
}

/// Reads the room from the store, in one write transaction that also makes a new store's tables and epoch, trims
/// the history to `capacity` (a smaller `--history` than last time) and reserves the next `window` numbers.
fn load(db: &Database, capacity: u64, window: u64) -> Result<Loaded, String> {
    let text = |error: redb::Error| error.to_string();
    let tx = db.begin_write().map_err(|e| text(e.into()))?;
    let loaded = {
        let mut meta = tx.open_table(META).map_err(|e| text(e.into()))?;
        let mut events = tx.open_table(EVENTS).map_err(|e| text(e.into()))?;
        let sessions = tx.open_table(SESSIONS).map_err(|e| text(e.into()))?;
        let mut keys = tx.open_table(IDEMPOTENCY).map_err(|e| text(e.into()))?;
        let stored = |meta: &redb::Table<&str, &[u8]>, name: &str| -> Result<Option<Vec<u8>>, String> {
            Ok(meta.get(name).map_err(|e| text(e.into()))?.map(|value| value.value().to_vec()))
        };
        let epoch = match stored(&meta, "epoch")? {
            Some(epoch) => String::from_utf8(epoch).map_err(|_| "the epoch is not text".to_owned())?,
            None => {
                if events.len().map_err(|e| text(e.into()))? > 0 {
                    return Err("events but no epoch".into());
                }
                let epoch = uuid::Uuid::new_v4().simple().to_string();
                meta.insert("epoch", epoch.as_bytes()).map_err(|e| text(e.into()))?;
                meta.insert("format", u64::from(FORMAT).to_le_bytes().as_slice()).map_err(|e| text(e.into()))?;
                epoch
            }
        };
        let format = stored(&meta, "format")?.map(|v| u64_of(&v)).transpose()?.unwrap_or(0);
        if format != u64::from(FORMAT) {
            return Err(format!("the store says format {format}, its FORMAT file {FORMAT}"));
        }
        // The head is the newest event: at least one is always retained once there has been one.
        let head = events.last().map_err(|e| text(e.into()))?.map_or(0, |(seq, _)| seq.value());
        let guests = stored(&meta, "guests")?.map(|v| u64_of(&v)).transpose()?.unwrap_or(0);
        // After a crash, numbers up to the reservation may have been seen: the room goes on above them.
        let start = stored(&meta, "reserved")?.map(|v| u64_of(&v)).transpose()?.unwrap_or(0).max(head);
        let reserved = start + window;
        meta.insert("reserved", reserved.to_le_bytes().as_slice()).map_err(|e| text(e.into()))?;
        let first_kept = (head + 1).saturating_sub(capacity);
        events.retain_in(..first_kept, |_, _| false).map_err(|e| text(e.into()))?;
        keys.retain_in(..first_kept, |_, _| false).map_err(|e| text(e.into()))?;
        let mut retained = Vec::new();
        for entry in events.range(first_kept..).map_err(|e| text(e.into()))? {
            let (seq, json) = entry.map_err(|e| text(e.into()))?;
            let event = RoomEvent::from_json(Bytes::copy_from_slice(json.value()))
                .map_err(|error| format!("event {}: {error}", seq.value()))?;
            if event.seq != seq.value() {
                return Err(format!("event {} is stored under {}", event.seq, seq.value()));
            }
            retained.push(Arc::new(event));
        }
        let mut sent = std::collections::HashMap::new();
        for entry in keys.range(first_kept..).map_err(|e| text(e.into()))? {
            let (seq, key) = entry.map_err(|e| text(e.into()))?;
            let key =
                String::from_utf8(key.value().to_vec()).map_err(|_| format!("key of {}: not text", seq.value()))?;
            sent.insert(seq.value(), key);
        }
        // The events are in order (consecutive but where a crash skipped numbers): anything else is not a store
        // this chatlab wrote.
        if !retained.windows(2).all(|pair| pair[1].seq > pair[0].seq) {
            return Err("the events retained are out of order".into());
        }
        let retained = retained
            .into_iter()
            .map(|event| {
                let key = sent.remove(&event.seq);
                (event, key)
            })
            .collect();
        let mut online = Vec::new();
        for entry in sessions.iter().map_err(|e| text(e.into()))? {
            let (token, value) = entry.map_err(|e| text(e.into()))?;
            let session: (SessionRecord, u64) =
                serde_json::from_slice(value.value()).map_err(|error| format!("session {}: {error}", token.value()))?;
            online.push(session);
        }
        Loaded { epoch, start, reserved, guests, events: retained, sessions: online }
    };
    tx.commit().map_err(|e| text(e.into()))?;
    Ok(loaded)
}

/// The thread that numbers texts and appends them to the room in memory (which feeds them to the fan-out).
struct Sequencer {
    memory: Arc<MemoryBroker>,
    progress: Arc<Progress>,
    steps: std_mpsc::Sender<Step>,
}

impl Sequencer {
    /// Sequences what publishers hand over until the broker is dropped.
    fn run(self, queue: std_mpsc::Receiver<Job>) {
        while let Ok(job) = queue.recv() {
            match job {
                // A dropped reply answers `stopped()`: the committer is gone only when the store is closing.
                Job::Sync(reply) => {
                    let _ = self.steps.send(Step::Sync(reply));
                }
                Job::Publish(drafts, numbered, written) => match self.sequence(drafts) {
                    Ok((events, answers)) => {
                        // The publisher may number its next drafts now, while these are written.
                        let _ = numbered.send(Ok(answers));
                        let _ = self.steps.send(Step::Publish(events, written));
                    }
                    Err(error) => {
                        let _ = numbered.send(Err(error));
                    }
                },
            }
        }
    }

    /// Numbers and stamps `drafts` (those whose key was used before only answer that send's `seq`) within the
    /// reservation, and appends them to the room in memory. Refused, before anything is numbered, while the
    /// store cannot be written.
    fn sequence(&self, drafts: Vec<(Draft, Option<String>)>) -> Result<(Vec<Stored>, Vec<Published>), BrokerError> {
        // Only this thread appends, so the head cannot move until the events below are appended.
        let (head, online) = self.memory.head_and_online();
        self.wait_for(head + drafts.len() as u64)?;
        // Only this thread appends keys too: a key is used if memory remembers it or an earlier draft here has it.
        let mut batch: HashMap<String, Seq> = HashMap::new();
        let mut events: Vec<Stored> = Vec::with_capacity(drafts.len());
        let mut answers = Vec::with_capacity(drafts.len());
        let mut next = head + 1;
        for (draft, key) in drafts {
            let known = key.as_deref().and_then(|key| self.memory.sent(key).or_else(|| batch.get(key).copied()));
            if let Some(seq) = known {
                answers.push(Published::Repeated(seq));
                continue;
            }
            if let Some(key) = &key {
                batch.insert(key.clone(), next);
            }
            let event = Arc::new(RoomEvent::new(&EventBody::stamp(draft, next, online)));
            answers.push(Published::Fresh(event.clone()));
            events.push((event, key));
            next += 1;
        }
        self.memory.append(&events);
        Ok((events, answers))
    }

    /// Waits until the reservation on disk reaches `wanted` (asking the committer for it once), or fails while
    /// the store cannot be written.
    fn wait_for(&self, wanted: Seq) -> Result<(), BrokerError> {
        let mut state = self.progress.lock();
        let mut asked = false;
        loop {
            if let Some(why) = &state.failing {
                return Err(unwritable(why));
            }
            if state.reserved >= wanted {
                return Ok(());
            }
            if !asked {
                self.steps.send(Step::Reserve(wanted)).map_err(|_| stopped())?;
                asked = true;
            }
            state = self.progress.moved.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// The thread that writes the store.
struct Committer {
    /// `None` after a failed commit: reopened by the next attempt.
    db: Option<Database>,
    file: PathBuf,
    memory: Arc<MemoryBroker>,
    dirty: Arc<Mutex<Dirty>>,
    progress: Arc<Progress>,
    options: StoreOptions,
    capacity: u64,
    /// The guest counter as stored.
    guests: u64,
    /// The reservation as stored.
    reserved: Seq,
    /// The newest event written.
    written: Seq,
    /// Every event below this is trimmed from the store.
    trimmed: Seq,
    /// Events sequenced (and seen) whose commit failed: written with the next commit that goes through.
    unwritten: Vec<Stored>,
    /// When sessions marked [`Dirty::soon`] were last written.
    synced: Instant,
}

impl Committer {
    /// Commits what the sequencer passes on until it ends, then once more, giving back the numbers reserved
    /// and not used.
    fn run(mut self, queue: std_mpsc::Receiver<Step>) {
        loop {
            let failing = self.progress.lock().failing.is_some();
            let first = match queue.recv_timeout(if failing { RETRY_EVERY } else { self.options.session_sync }) {
                Ok(step) => Some(step),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(why) = self.commit(Vec::new(), true, Ending::Last) {
                        tracing::error!(%why, "the store's last commit failed");
                    }
                    return;
                }
            };
            let (mut events, mut publishers, mut syncs, mut reserve) = (Vec::new(), Vec::new(), Vec::new(), 0);
            let mut next = first;
            while let Some(step) = next.take() {
                match step {
                    Step::Publish(mine, reply) => {
                        events.extend(mine);
                        publishers.push(reply);
                    }
                    Step::Sync(reply) => syncs.push(reply),
                    Step::Reserve(wanted) => reserve = reserve.max(wanted),
                }
                // Everything the sequencer passed on meanwhile joins this commit.
                if events.len() < self.options.batch_max {
                    next = queue.try_recv().ok();
                }
            }
            let all = !syncs.is_empty() || self.synced.elapsed() >= self.options.session_sync;
            match self.commit(events, all, Ending::Reserve(reserve)) {
                Ok(()) => {
                    for reply in publishers.into_iter().chain(syncs) {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(why) => {
                    for reply in publishers.into_iter().chain(syncs) {
                        let _ = reply.send(Err(unwritable(&why)));
                    }
                }
            }
        }
    }

    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `events` (after those a failed commit left), the sessions changed (all of them when `all`, else
    /// those changed now), the guest counter and the reservation in one transaction. On failure the events and
    /// sessions are kept for the next attempt, the store is closed (reopened by that attempt) and the sequencer
    /// refuses texts until a commit goes through.
    fn commit(&mut self, events: Vec<Stored>, all: bool, ending: Ending) -> Result<(), String> {
        let tokens = {
            let mut dirty = self.dirty();
            let mut tokens = std::mem::take(&mut dirty.now);
            if all {
                tokens.extend(std::mem::take(&mut dirty.soon));
            }
            tokens
        };
        if all {
            self.synced = Instant::now();
        }
        self.unwritten.extend(events);
        let newest = self.unwritten.last().map_or(self.written, |(event, _)| event.seq);
        let window = self.options.unsynced_max;
        let reserved = match ending {
            // Everything sequenced is here: the numbers beyond it were never given out.
            Ending::Last => newest,
            // Extended in steps of half the window, so that the meta table is not rewritten by every commit.
            Ending::Reserve(wanted) if wanted > self.reserved || newest + window / 2 > self.reserved => {
                wanted.max(newest + window).max(self.reserved)
            }
            Ending::Reserve(_) => self.reserved,
        };
        // The history is trimmed in steps of a sixteenth of it: a trim rewrites the oldest pages of the events,
        // which a trim by every commit would add to every commit's writes.
        let first_kept = (newest + 1).saturating_sub(self.capacity);
        let trim = (first_kept >= self.trimmed + (self.capacity / 16).max(1)).then_some(first_kept);
        let guests = self.memory.guests();
        let failing = self.progress.lock().failing.is_some();
        let idle = self.unwritten.is_empty() && tokens.is_empty() && guests == self.guests;
        if !failing && idle && reserved == self.reserved {
            return Ok(());
        }
        let written = match self.db.take() {
            Some(db) => Ok(db),
            None => open_store(&self.file).map_err(|error| error.to_string()),
        }
        .and_then(|db| {
            let done = self.write(&db, &tokens, guests, reserved, trim).map_err(|error| error.to_string());
            // A store whose write failed is closed: redb answers nothing more after an I/O error.
            if done.is_ok() {
                self.db = Some(db);
            }
            done
        });
        match written {
            Ok(()) => {
                self.unwritten.clear();
                self.written = newest;
                self.trimmed = trim.unwrap_or(self.trimmed);
                self.guests = guests;
                self.reserved = reserved;
                if failing {
                    tracing::warn!("the store can be written again: texts are taken again");
                }
                self.progress.set(|state| {
                    state.head = newest;
                    state.reserved = state.reserved.max(reserved);
                    state.failing = None;
                });
                Ok(())
            }
            Err(why) => {
                self.dirty().now.extend(tokens);
                if !failing {
                    tracing::error!(%why, "the store cannot be written: texts are refused until it can");
                }
                self.progress.set(|state| state.failing = Some(why.clone()));
                Err(why)
            }
        }
    }

    /// One transaction: the events not yet written (the newest is the head), the trim of the history to `trim`
    /// if any, the sessions of `tokens` as they are now in memory (removed when gone), the guest counter and the
    /// reservation; committed with one sync.
    fn write(
        &self,
        db: &Database,
        tokens: &HashSet<String>,
        guests: u64,
        reserved: Seq,
        trim: Option<Seq>,
    ) -> Result<(), redb::Error> {
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            if !self.unwritten.is_empty() {
                let mut table = tx.open_table(EVENTS)?;
                let mut keys = tx.open_table(IDEMPOTENCY)?;
                for (event, key) in &self.unwritten {
                    table.insert(event.seq, event.json.as_bytes())?;
                    if let Some(key) = key {
                        keys.insert(event.seq, key.as_bytes())?;
                    }
                }
            }
            if let Some(first_kept) = trim {
                tx.open_table(EVENTS)?.retain_in(..first_kept, |_, _| false)?;
                let mut keys = tx.open_table(IDEMPOTENCY)?;
                if !keys.is_empty()? {
                    keys.retain_in(..first_kept, |_, _| false)?;
                }
            }
            if guests != self.guests {
                meta.insert("guests", guests.to_le_bytes().as_slice())?;
            }
            if reserved != self.reserved {
                meta.insert("reserved", reserved.to_le_bytes().as_slice())?;
            }
            if !tokens.is_empty() {
                let mut sessions = tx.open_table(SESSIONS)?;
                for (token, entry) in self.memory.entries(tokens) {
                    match entry {
                        Some(entry) => {
                            let value = serde_json::to_vec(&entry).expect("a session always serialises");
                            sessions.insert(token.as_str(), value.as_slice())?;
                        }
                        None => {
                            sessions.remove(token.as_str())?;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// What a commit writes as the reservation.
#[derive(Clone, Copy)]
enum Ending {
    /// At least this (0: nothing asked), extended ahead of the newest event when it runs short.
    Reserve(Seq),
    /// The store is closing: exactly the newest event.
    Last,
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
