//! The durable broker (the default): the room of this process, kept in an embedded store under `--data-dir`, so
//! that its history, sessions and sequence survive a restart and a crash (`kill -9`).
//!
//! # Memory answers, the store remembers
//! The room itself is a [`MemoryBroker`]: every read (a backlog, a session, a poll, the presence) is answered
//! from memory and costs no disk I/O. The store is [redb](https://docs.rs/redb) (copy-on-write B-trees in one
//! file, one `fsync` per commit, see docs/architecture.md for why this one), written by one thread, the
//! writer:
//!
//! - **A text is acknowledged once it is durable, and many texts share one sync.** A publish is handed to the
//!   writer through a channel. The writer takes every publish waiting, numbers and stamps them, writes them in
//!   one transaction together with the trim of the history, commits (one sync), and only then appends them to the
//!   room in memory, feeds them to the fan-out and answers their publishers. While one commit syncs, the next
//!   batch gathers. No one sees an event before it is on disk, so a crash can only lose numbers no one was told:
//!   the sequence never goes back and never repeats.
//! - **Sessions change in memory at once and reach the store with the writer's next commit.** A join, leave,
//!   rename or expiry is written in the next commit, at the latest with the notice announcing it (a publish,
//!   itself a commit). Lease renewals and cursor moves, which every poll makes, are written at most once per
//!   [`SESSION_SYNC`] for each session: a crash loses at most that much of a lease or a cursor move (a page
//!   resumes with `since=` anyway). The guest counter is written with every commit that follows a join.
//! - **One process per directory.** The directory's `LOCK` file is held (an exclusive `flock`) while a process
//!   uses it, and redb locks its file too: a second process on the same `--data-dir` is refused at start.
//!
//! # The data directory
//! `FORMAT` (`chatlab-store 1`: the layout below; a newer one is refused at start, never overwritten), `LOCK`,
//! and `room.redb` with four tables: `meta` (the epoch, a random id made when the store is created; the guest
//! counter), `events` (seq → the event's JSON, the newest `--history`), `sessions` (token → the record
//! and the end of its lease) and `idempotency` (seq → the session and key a text was sent with, trimmed with the
//! events). Copy the directory while the server is stopped to back the room up.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::MemoryBroker;
use crate::core::Broker;
use crate::model::{
    Backlog, BrokerError, Draft, Epoch, EventBody, FeedItem, Published, RoomEvent, SendKey, Seq, SessionRecord, Visit,
};

/// The layout version this chatlab writes and reads (the `FORMAT` file and the `meta` table).
pub const FORMAT: u32 = 1;

/// How often, at most, one session's lease renewals and cursor moves are written: what a crash may lose of
/// them. Joins, leaves and renames are written with the next commit.
pub const SESSION_SYNC: Duration = Duration::from_secs(1);

/// Most texts in one commit. Publishers wait for their answer, so the queue is bounded by the clients anyway;
/// this bounds one transaction.
const MAX_BATCH: usize = 4096;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const IDEMPOTENCY: TableDefinition<u64, &[u8]> = TableDefinition::new("idempotency");

/// The store's file in the data directory.
const STORE_FILE: &str = "room.redb";
const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "LOCK";

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

/// The durable broker: a [`MemoryBroker`] that answers, and a store under `--data-dir` written by one thread
/// in group commits (see the [module docs](self)).
pub struct DurableBroker {
    memory: Arc<MemoryBroker>,
    dirty: Arc<Mutex<Dirty>>,
    /// To the writer; taken on drop, which ends it.
    jobs: Option<std_mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    epoch: String,
    /// Held (locked) while this process uses the directory.
    _lock: File,
}

/// Sessions changed in memory and not yet written.
#[derive(Default)]
struct Dirty {
    /// Created, removed, renamed: written with the next commit.
    now: HashSet<String>,
    /// Lease renewed or cursor moved: written at most once per [`SESSION_SYNC`].
    soon: HashSet<String>,
}

enum Job {
    /// Drafts of one publisher, each with its stored send key if any, numbered consecutively in one commit.
    Publish(Vec<(Draft, Option<String>)>, oneshot::Sender<Result<Vec<Published>, BrokerError>>),
    Sync(oneshot::Sender<Result<(), BrokerError>>),
}

impl DurableBroker {
    /// Opens the room kept in `dir` (created, with a fresh room, if it does not exist or is empty), retaining the
    /// newest `history` events (at least one; older ones are trimmed from the store too), and starts its writer.
    ///
    /// # Errors
    /// [`StoreError`]: `dir` is not a directory, cannot be created or written, is held by another process, holds
    /// a newer format, holds files but no store, or holds a store that cannot be read.
    pub fn open(dir: &Path, history: usize) -> Result<Self, StoreError> {
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
        let db = Database::create(dir.join(STORE_FILE)).map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StoreError::Locked(path.clone())
            }
            other => StoreError::Damaged { path: path.clone(), why: other.to_string() },
        })?;
        let capacity = history.max(1);
        let loaded = load(&db, capacity as u64).map_err(|why| StoreError::Damaged { path: path.clone(), why })?;
        let memory = Arc::new(MemoryBroker::restore(
            capacity,
            loaded.epoch.as_str().into(),
            loaded.head,
            loaded.guests,
            loaded.events,
            loaded.sessions,
        ));
        let dirty = Arc::new(Mutex::new(Dirty::default()));
        let (jobs, queue) = std_mpsc::channel();
        let writer = Writer {
            db,
            memory: memory.clone(),
            dirty: dirty.clone(),
            capacity: capacity as u64,
            guests: loaded.guests,
            synced: Instant::now(),
        };
        let writer =
            std::thread::Builder::new().name("chatlab-store".into()).spawn(move || writer.run(queue)).map_err(io)?;
        Ok(DurableBroker { memory, dirty, jobs: Some(jobs), writer: Some(writer), epoch: loaded.epoch, _lock: lock })
    }

    /// The room's epoch: a random id made when the store was created, the same across restarts, new in a new
    /// (or wiped) data directory.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Writes every session change held only in memory now, in one commit.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be written.
    pub async fn sync(&self) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Sync(reply))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Hands `drafts` to the writer and waits for their commit.
    async fn commit(&self, drafts: Vec<(Draft, Option<String>)>) -> Result<Vec<Published>, BrokerError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Publish(drafts, reply))?;
        answer.await.map_err(|_| stopped())?
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

    /// Marks a session to be written within [`SESSION_SYNC`] (no allocation once it is marked).
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
    /// Ends the writer after a last commit of what is held only in memory, before the directory is unlocked.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn stopped() -> BrokerError {
    BrokerError::Unavailable("the store's writer has stopped".into())
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
    head: Seq,
    guests: u64,
    events: Vec<(Arc<RoomEvent>, Option<String>)>,
    sessions: Vec<(SessionRecord, u64)>,
}

fn u64_of(bytes: &[u8]) -> Result<u64, String> {
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| format!("a counter of {} bytes", bytes.len()))?))
}

/// Reads the room from the store, in one write transaction that also makes a new store's tables and epoch and
/// trims the history to `capacity` (a smaller `--history` than last time).
fn load(db: &Database, capacity: u64) -> Result<Loaded, String> {
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
        // The events are consecutive: anything else is not a store this chatlab wrote.
        if !retained.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1) {
            return Err("the events retained have a hole".into());
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
        Loaded { epoch, head, guests, events: retained, sessions: online }
    };
    tx.commit().map_err(|e| text(e.into()))?;
    Ok(loaded)
}

/// The one thread that writes the store.
struct Writer {
    db: Database,
    memory: Arc<MemoryBroker>,
    dirty: Arc<Mutex<Dirty>>,
    capacity: u64,
    /// The guest counter as stored.
    guests: u64,
    /// When sessions marked [`Dirty::soon`] were last written.
    synced: Instant,
}

impl Writer {
    /// Commits what the queue brings until the broker is dropped, then once more.
    fn run(mut self, queue: std_mpsc::Receiver<Job>) {
        loop {
            let first = match queue.recv_timeout(SESSION_SYNC) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(error) = self.commit(Vec::new(), true) {
                        tracing::error!(%error, "the store's last commit failed");
                    }
                    return;
                }
            };
            let (mut drafts, mut publishers, mut syncs) = (Vec::new(), Vec::new(), Vec::new());
            let mut next = first;
            while let Some(job) = next.take() {
                match job {
                    Job::Publish(mine, reply) => {
                        publishers.push((mine.len(), reply));
                        drafts.extend(mine);
                    }
                    Job::Sync(reply) => syncs.push(reply),
                }
                // Every publish waiting joins this commit.
                if drafts.len() < MAX_BATCH {
                    next = queue.try_recv().ok();
                }
            }
            let all = !syncs.is_empty() || self.synced.elapsed() >= SESSION_SYNC;
            match self.commit(drafts, all) {
                Ok(events) => {
                    let mut events = events.into_iter();
                    for (count, reply) in publishers {
                        let _ = reply.send(Ok(events.by_ref().take(count).collect()));
                    }
                    for reply in syncs {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "the store cannot be written");
                    let why = format!("the store cannot be written: {error}");
                    for (_, reply) in publishers {
                        let _ = reply.send(Err(BrokerError::Unavailable(why.clone())));
                    }
                    for reply in syncs {
                        let _ = reply.send(Err(BrokerError::Unavailable(why.clone())));
                    }
                }
            }
        }
    }

    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers and stamps `drafts` (those whose key was used before only answer that send's `seq`), writes them
    /// and their keys with the sessions changed (all of them when `all`, else those changed now) in one
    /// transaction, and once it is committed appends them to the room in memory (which feeds them). On failure
    /// nothing is appended and the sessions stay marked. Answers one [`Published`] per draft, in order.
    fn commit(&mut self, drafts: Vec<(Draft, Option<String>)>, all: bool) -> Result<Vec<Published>, redb::Error> {
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
        let guests = self.memory.guests();
        if drafts.is_empty() && tokens.is_empty() && guests == self.guests {
            return Ok(Vec::new());
        }
        // Only this thread appends, so the head cannot move until the events below are appended.
        let (head, online) = self.memory.head_and_online();
        // Only this thread appends keys too: a key is used if memory remembers it or an earlier draft here has it.
        let mut batch: std::collections::HashMap<String, Seq> = std::collections::HashMap::new();
        let mut events: Vec<(Arc<RoomEvent>, Option<String>)> = Vec::with_capacity(drafts.len());
        let mut answers: Vec<Result<usize, Seq>> = Vec::with_capacity(drafts.len());
        let mut next = head + 1;
        let keyed: Vec<Option<Seq>> =
            drafts.iter().map(|(_, key)| key.as_deref().and_then(|key| self.memory.sent(key))).collect();
        for ((draft, key), known) in drafts.into_iter().zip(keyed) {
            if let Some(seq) = known.or_else(|| key.as_deref().and_then(|key| batch.get(key).copied())) {
                answers.push(Err(seq));
                continue;
            }
            if let Some(key) = &key {
                batch.insert(key.clone(), next);
            }
            answers.push(Ok(events.len()));
            let event = Arc::new(RoomEvent::new(&EventBody::stamp(draft, next, online)));
            events.push((event, key));
            next += 1;
        }
        match self.write(&events, &tokens, guests) {
            Ok(()) => {
                self.guests = guests;
                self.memory.append(&events);
                Ok(answers
                    .into_iter()
                    .map(|answer| match answer {
                        Ok(index) => Published::Fresh(events[index].0.clone()),
                        Err(seq) => Published::Repeated(seq),
                    })
                    .collect())
            }
            Err(error) => {
                self.dirty().now.extend(tokens);
                Err(error)
            }
        }
    }

    /// One transaction: the events (the newest is the head), the trim of the history, the sessions of `tokens` as
    /// they are now in memory (removed when gone) and the guest counter; committed with one sync.
    fn write(
        &self,
        events: &[(Arc<RoomEvent>, Option<String>)],
        tokens: &HashSet<String>,
        guests: u64,
    ) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            if let Some((last, _)) = events.last() {
                let mut table = tx.open_table(EVENTS)?;
                let mut keys = tx.open_table(IDEMPOTENCY)?;
                for (event, key) in events {
                    table.insert(event.seq, event.json.as_bytes())?;
                    if let Some(key) = key {
                        keys.insert(event.seq, key.as_bytes())?;
                    }
                }
                let first_kept = (last.seq + 1).saturating_sub(self.capacity);
                table.retain_in(..first_kept, |_, _| false)?;
                if !keys.is_empty()? {
                    keys.retain_in(..first_kept, |_, _| false)?;
                }
            }
            if guests != self.guests {
                meta.insert("guests", guests.to_le_bytes().as_slice())?;
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
        Ok(self.memory.sent(&key.stored()))
    }

    async fn epoch(&self) -> Result<Epoch, BrokerError> {
        self.memory.epoch().await
    }

    async fn publish_all(&self, sends: Vec<(Draft, Option<SendKey<'_>>)>) -> Result<Vec<Published>, BrokerError> {
        self.commit(sends.into_iter().map(|(draft, key)| (draft, key.map(|key| key.stored()))).collect()).await
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
