//! The in-memory broker: the room lives in this process and is gone when it stops (`--broker memory`).
//!
//! It is also the durable broker's in-memory copy of the room ([`super::durable`]), which answers every read.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use foldhash::HashMap;
use tokio::sync::mpsc;

use crate::core::Broker;
use crate::model::{
    new_epoch, Backlog, BrokerError, Draft, Epoch, EventBody, FeedItem, Published, RoomEvent, SendKey, Seq,
    SessionRecord, Visit,
};

/// The in-memory broker: a bounded history, a session table, the keys of recent sends and a feed, behind one
/// mutex. Its epoch is made when it is: a new in-memory room is a new numbering.
///
/// The mutex is a `std` one: every critical section is a few map or deque operations and never awaits, so it is
/// cheaper than an async lock and cannot be held across a suspension point.
pub struct MemoryBroker {
    state: Mutex<State>,
    epoch: Epoch,
}

struct State {
    /// The newest sequence number given out.
    head: Seq,
    /// The retained events, oldest first, in sequence order: consecutive numbers, but for those a durable
    /// room skipped after a crash (see [`MemoryBroker::restore`]); at most `capacity`.
    history: VecDeque<Arc<RoomEvent>>,
    capacity: usize,
    guests: u64,
    /// Sessions by token, with the time (ms) their lease ends.
    /// Boxed, so the table's empty slots (a hash table is up to half empty) cost a pointer, not a record.
    sessions: HashMap<String, Box<(SessionRecord, u64)>>,
    /// The sessions in join order, `(guest number, token)`: the oldest few are read without a sort of them all.
    joined: BTreeSet<(u64, String)>,
    /// Where published events go: the room's fan-out point (one per process, and here there is one process).
    feeds: Vec<mpsc::UnboundedSender<FeedItem>>,
    /// The keys of sends published with one ([`SendKey::stored`]), and the `seq` each got.
    sent: HashMap<String, Seq>,
    /// The same keys in sequence order, so they are forgotten with their events: at most one per retained event.
    sent_order: VecDeque<(Seq, String)>,
}

impl MemoryBroker {
    /// A room with no events, retaining the newest `history` events (at least one).
    pub fn new(history: usize) -> Self {
        let capacity = history.max(1);
        MemoryBroker {
            state: Mutex::new(State {
                head: 0,
                history: VecDeque::with_capacity(capacity.min(4096)),
                capacity,
                guests: 0,
                sessions: HashMap::default(),
                joined: BTreeSet::new(),
                feeds: Vec::new(),
                sent: HashMap::default(),
                sent_order: VecDeque::new(),
            }),
            epoch: new_epoch(),
        }
    }

    /// A room restored from a store: its head (which may be above the newest event retained, when a crash
    /// skipped numbers), guest counter, retained events (in sequence order, oldest first) and
    /// sessions with the time their lease ends; each event with the send key it was published with, if any.
    pub(crate) fn restore(
        history: usize,
        epoch: Epoch,
        head: Seq,
        guests: u64,
        events: Vec<(Arc<RoomEvent>, Option<String>)>,
        sessions: Vec<(SessionRecord, u64)>,
    ) -> Self {
        let mut broker = MemoryBroker::new(history);
        broker.epoch = epoch;
        {
            let mut state = broker.lock();
            state.head = head;
            state.guests = guests;
            for (event, key) in events {
                state.retain(event, key);
            }
            for (record, lease_until_ms) in sessions {
                state.joined.insert((record.guest, record.token.clone()));
                state.sessions.insert(record.token.clone(), Box::new((record, lease_until_ms)));
            }
        }
        broker
    }

    /// The newest sequence number given out, and how many sessions are online: what stamps the next events.
    pub(crate) fn head_and_online(&self) -> (Seq, u64) {
        let state = self.lock();
        (state.head, state.sessions.len() as u64)
    }

    /// The guest counter (the last number given out).
    pub(crate) fn guests(&self) -> u64 {
        self.lock().guests
    }

    /// Appends events sequenced and stamped elsewhere (the durable broker's writer), which follow the head with
    /// no hole, and feeds them, in one section.
    pub(crate) fn append(&self, events: &[(Arc<RoomEvent>, Option<String>)]) {
        let mut state = self.lock();
        for (event, key) in events {
            debug_assert_eq!(event.seq, state.head + 1, "appended events follow the head");
            state.head = event.seq;
            state.retain(event.clone(), key.clone());
            state.feed(event);
        }
    }

    /// The `seq` of the event published with this stored key ([`SendKey::stored`]), while it is remembered.
    pub(crate) fn sent(&self, stored: &str) -> Option<Seq> {
        self.lock().sent.get(stored).copied()
    }

    /// The sessions of `tokens` as they are now, with the time their lease ends; `None` for those gone.
    pub(crate) fn entries<'a>(
        &self,
        tokens: impl IntoIterator<Item = &'a String>,
    ) -> Vec<(&'a String, Option<(SessionRecord, u64)>)> {
        let state = self.lock();
        tokens.into_iter().map(|token| (token, state.sessions.get(token).map(|entry| (**entry).clone()))).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written (each section is a few simple
        // updates), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Keeps `event` in the bounded history, and its send key (if any) for as long as it is retained.
    fn retain(&mut self, event: Arc<RoomEvent>, key: Option<String>) {
        let seq = event.seq;
        if self.history.len() == self.capacity {
            self.history.pop_front();
        }
        self.history.push_back(event);
        // Keys go with their events: one whose event left the history is forgotten (a cheap check when none is
        // due, and sends without a key never add one).
        let oldest = self.history.front().map_or(seq, |event| event.seq);
        while self.sent_order.front().is_some_and(|(seq, _)| *seq < oldest) {
            if let Some((_, gone)) = self.sent_order.pop_front() {
                self.sent.remove(&gone);
            }
        }
        if let Some(key) = key {
            self.sent.insert(key.clone(), seq);
            self.sent_order.push_back((seq, key));
        }
    }

    /// Feeds `event` to every subscribed room. Called under the lock, which keeps the feed in sequence order; an
    /// unbounded send never blocks, and the receiver (the room's pump) only forwards into the fan-out, so the
    /// queue stays near empty.
    fn feed(&mut self, event: &Arc<RoomEvent>) {
        self.feeds.retain(|feed| feed.send(FeedItem::Event(event.clone())).is_ok());
    }

    /// Removes a session and its place in the join order.
    fn remove(&mut self, token: &str) -> Option<SessionRecord> {
        let (record, _) = *self.sessions.remove(token)?;
        self.joined.remove(&(record.guest, record.token.clone()));
        Some(record)
    }

    /// A client of the session showed up (see [`Broker::open`]): the record as it is now.
    fn visit(&mut self, visit: &Visit<'_>) -> Option<&SessionRecord> {
        let entry = self.sessions.get_mut(visit.token)?;
        entry.0.transport = visit.transport;
        entry.1 = entry.1.max(visit.lease_until_ms);
        Some(&entry.0)
    }

    /// At most `max` retained events after `cursor`, with the hole the client must be told of.
    fn since(&self, epoch: &Epoch, cursor: Seq, max: usize) -> Backlog {
        let oldest = self.history.front().map(|event| event.seq);
        // The history is in sequence order (with a hole where a durable room's crash skipped numbers).
        let skip = self.history.partition_point(|event| event.seq <= cursor);
        let events = self.history.range(skip..).take(max).cloned().collect();
        Backlog::read(epoch.clone(), cursor, self.head, oldest, events)
    }

    /// Appends an event (see [`Broker::publish`]); with `key`, remembers it beside its `seq`.
    fn append(&mut self, draft: Draft, key: Option<String>) -> Arc<RoomEvent> {
        self.head += 1;
        let body = EventBody::stamp(draft, self.head, self.sessions.len() as u64);
        let event = Arc::new(RoomEvent::new(&body));
        self.retain(event.clone(), key);
        self.feed(&event);
        event
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, draft: Draft) -> Result<Arc<RoomEvent>, BrokerError> {
        Ok(self.lock().append(draft, None))
    }

    async fn publish_once(&self, draft: Draft, key: SendKey<'_>) -> Result<Published, BrokerError> {
        let stored = key.stored();
        let mut state = self.lock();
        if let Some(&seq) = state.sent.get(&stored) {
            return Ok(Published::Repeated(seq));
        }
        Ok(Published::Fresh(state.append(draft, Some(stored))))
    }

    async fn published(&self, key: SendKey<'_>) -> Result<Option<Seq>, BrokerError> {
        Ok(self.lock().sent.get(&key.stored()).copied())
    }

    async fn epoch(&self) -> Result<Epoch, BrokerError> {
        Ok(self.epoch.clone())
    }

    async fn since(&self, cursor: Seq, max: usize) -> Result<Backlog, BrokerError> {
        Ok(self.lock().since(&self.epoch, cursor, max))
    }

    async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<FeedItem>, BrokerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().feeds.push(tx);
        Ok(rx)
    }

    async fn next_guest(&self) -> Result<u64, BrokerError> {
        let mut state = self.lock();
        state.guests += 1;
        Ok(state.guests)
    }

    async fn create_session(&self, record: &SessionRecord, lease_until_ms: u64, max: usize) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if state.sessions.len() >= max {
            return Err(BrokerError::Full);
        }
        state.remove(&record.token);
        state.joined.insert((record.guest, record.token.clone()));
        state.sessions.insert(record.token.clone(), Box::new((record.clone(), lease_until_ms)));
        Ok(())
    }

    async fn session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError> {
        Ok(self.lock().sessions.get(token).map(|entry| entry.0.clone()))
    }

    async fn save_session(&self, record: &SessionRecord) -> Result<bool, BrokerError> {
        let mut state = self.lock();
        let State { sessions, joined, .. } = &mut *state;
        match sessions.get_mut(&record.token) {
            Some(entry) => {
                if entry.0.guest != record.guest {
                    joined.remove(&(entry.0.guest, record.token.clone()));
                    joined.insert((record.guest, record.token.clone()));
                }
                entry.0 = record.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn open(&self, visit: Visit<'_>) -> Result<Option<(SessionRecord, Backlog)>, BrokerError> {
        let mut state = self.lock();
        let Some(record) = state.visit(&visit).cloned() else {
            return Ok(None);
        };
        let backlog = state.since(&self.epoch, visit.after(record.cursor), visit.max);
        Ok(Some((record, backlog)))
    }

    async fn poll(&self, visit: Visit<'_>) -> Result<Option<(Seq, Backlog)>, BrokerError> {
        let mut state = self.lock();
        let Some(cursor) = state.visit(&visit).map(|record| record.cursor) else {
            return Ok(None);
        };
        Ok(Some((cursor, state.since(&self.epoch, visit.after(cursor), visit.max))))
    }

    async fn save_cursor(&self, token: &str, cursor: Seq, lease_until_ms: u64) -> Result<(), BrokerError> {
        if let Some(entry) = self.lock().sessions.get_mut(token) {
            entry.0.cursor = entry.0.cursor.max(cursor);
            entry.1 = entry.1.max(lease_until_ms);
        }
        Ok(())
    }

    async fn remove_session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError> {
        Ok(self.lock().remove(token))
    }

    async fn renew(&self, tokens: &[String], until_ms: u64) -> Result<(), BrokerError> {
        let mut state = self.lock();
        for token in tokens {
            if let Some(entry) = state.sessions.get_mut(token) {
                entry.1 = entry.1.max(until_ms);
            }
        }
        Ok(())
    }

    async fn expire(&self, now_ms: u64) -> Result<Vec<SessionRecord>, BrokerError> {
        let mut state = self.lock();
        let gone: Vec<String> =
            state.sessions.iter().filter(|(_, entry)| entry.1 < now_ms).map(|(token, _)| token.clone()).collect();
        Ok(gone.iter().filter_map(|token| state.remove(token)).collect())
    }

    async fn presence(&self) -> Result<Vec<SessionRecord>, BrokerError> {
        let mut all: Vec<SessionRecord> = self.lock().sessions.values().map(|entry| entry.0.clone()).collect();
        all.sort_by(|a, b| a.since_ms.cmp(&b.since_ms).then(a.guest.cmp(&b.guest)));
        Ok(all)
    }

    async fn oldest(&self, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError> {
        let state = self.lock();
        let oldest =
            state.joined.iter().take(max).filter_map(|(_, token)| state.sessions.get(token)).map(|e| e.0.clone());
        Ok((state.sessions.len() as u64, oldest.collect()))
    }

    async fn alive(&self, tokens: &[String]) -> Result<Vec<bool>, BrokerError> {
        let state = self.lock();
        Ok(tokens.iter().map(|token| state.sessions.contains_key(token)).collect())
    }

    async fn page(&self, after: u64, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError> {
        let state = self.lock();
        let page = state
            .joined
            .range((after.saturating_add(1), String::new())..)
            .take(max)
            .filter_map(|(_, token)| state.sessions.get(token))
            .map(|e| e.0.clone());
        Ok((state.sessions.len() as u64, page.collect()))
    }

    async fn online(&self) -> Result<u64, BrokerError> {
        Ok(self.lock().sessions.len() as u64)
    }
}
