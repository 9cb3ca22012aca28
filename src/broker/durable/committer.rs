//! The committer thread: writes what the sequencer passed on, with the sessions changed, the guest counter and
//! the reservation, in one transaction and one sync per batch; answers the publishers once that is durable; and
//! retries a store that cannot be written.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use redb::{Database, ReadableTableMetadata};

use super::open::open_store;
use super::{
    unwritable, Dirty, Progress, Step, StoreOptions, Stored, EVENTS, IDEMPOTENCY, META, RETRY_EVERY, SESSIONS,
};
use crate::broker::MemoryBroker;
use crate::model::Seq;

/// The thread that writes the store.
pub(super) struct Committer {
    /// `None` after a failed commit: reopened by the next attempt.
    pub(super) db: Option<Database>,
    pub(super) file: PathBuf,
    pub(super) memory: Arc<MemoryBroker>,
    pub(super) dirty: Arc<Mutex<Dirty>>,
    pub(super) progress: Arc<Progress>,
    pub(super) options: StoreOptions,
    pub(super) capacity: u64,
    /// The guest counter as stored.
    pub(super) guests: u64,
    /// The reservation as stored.
    pub(super) reserved: Seq,
    /// The newest event written.
    pub(super) written: Seq,
    /// Every event below this is trimmed from the store.
    pub(super) trimmed: Seq,
    /// Events sequenced (and seen) whose commit failed: written with the next commit that goes through.
    pub(super) unwritten: Vec<Stored>,
    /// When sessions marked [`Dirty::soon`] were last written.
    pub(super) synced: Instant,
}

impl Committer {
    /// Commits what the sequencer passes on until it ends, then once more, giving back the numbers reserved
    /// and not used.
    pub(super) fn run(mut self, queue: std_mpsc::Receiver<Step>) {
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
