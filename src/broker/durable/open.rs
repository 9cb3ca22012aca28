//! Opening a data directory: its `LOCK` and `FORMAT`, the store file, and the room read back from it (trimmed
//! to `--history`, with a new reservation); the sequencer and the committer start here.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;
use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata};

use super::committer::Committer;
use super::sequencer::Sequencer;
use super::{
    Dirty, Durable, DurableBroker, Progress, StoreError, StoreOptions, Stored, EVENTS, FORMAT, FORMAT_FILE,
    IDEMPOTENCY, LOCK_FILE, META, SESSIONS, STORE_FILE,
};
use crate::broker::MemoryBroker;
use crate::model::{RoomEvent, Seq, SessionRecord};

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
}

/// redb's page cache. The room is served from memory and the store is only written to (and read back at start),
/// so its cache need only hold the pages a commit touches; redb's own default (1 GiB) could keep every page the
/// churn of sessions and history ever touches.
const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Opens (or creates) the store's file; redb checks and repairs a file that was not closed cleanly.
pub(super) fn open_store(file: &Path) -> Result<Database, DatabaseError> {
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
