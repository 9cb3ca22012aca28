//! Per-session wire counters, and the watchers of the live wire log (`GET /api/wire`).
//!
//! Every session that made a metered request to this process has a [`SessionWire`]: the same socket bytes the
//! technique's counters get for that session's requests (its join, its channel, its POSTs, its DELETE), its
//! WebSocket frames and the room events delivered to it. A connection learns whose bytes it carries when the
//! handler names the session ([`crate::metering::Metering::session`]), exactly as it learns the technique (see
//! [`super::wire`]). Unwatched, a session costs a few relaxed atomic additions per socket read or write.
//!
//! A wire view is a [`Watcher`] of one session: while a session has one, its connections describe what they
//! carry as records (JSON texts, see docs/protocol.md) and push them to every watcher's bounded queue. A watcher
//! that falls behind loses the newest records and is told how many (`lagged`), so a client that never reads
//! costs at most `--wire-view-queue` records.
//!
//! Entries are forgotten when the room forgets the session (a leave, an expired lease) and, for a session that
//! ended on another process of a cluster, after two leases without a request here ([`Sessions::forget_idle`]):
//! memory follows the number of live sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use super::now_ms;

/// One session's wire counters, and the wire views watching it.
#[derive(Debug, Default)]
pub struct SessionWire {
    /// HTTP requests of the session (a WebSocket counts its upgrade).
    pub requests: AtomicU64,
    /// Socket bytes read for the session's requests and channel: heads, bodies, WebSocket frames.
    pub wire_bytes_in: AtomicU64,
    /// Socket bytes written for them: heads, bodies, chunk framing, SSE fields, WebSocket frames.
    pub wire_bytes_out: AtomicU64,
    /// WebSocket frames read from the session's channel (control frames included).
    pub frames_in: AtomicU64,
    /// WebSocket frames written to the session's channel (control frames included).
    pub frames_out: AtomicU64,
    /// Room events delivered to the session, on any technique.
    pub events_delivered: AtomicU64,
    /// When the session last made a request here (ms since the epoch).
    last_seen_ms: AtomicU64,
    /// Whether any watcher is attached: the one thing a connection reads before doing more than counting.
    watched: AtomicBool,
    watchers: Mutex<Vec<Arc<Watcher>>>,
}

impl SessionWire {
    /// Whether a wire view watches this session now.
    pub fn watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    /// Counts `events` room events delivered to the session.
    pub fn delivered(&self, events: u64) {
        if events > 0 {
            self.events_delivered.fetch_add(events, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_bytes(&self, read: u64, written: u64) {
        if read > 0 {
            self.wire_bytes_in.fetch_add(read, Ordering::Relaxed);
        }
        if written > 0 {
            self.wire_bytes_out.fetch_add(written, Ordering::Relaxed);
        }
    }

    /// The counters, as the `session_wire` object and every record's `totals`.
    pub fn totals(&self) -> Value {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        json!({
            "requests": get(&self.requests),
            "wire_bytes_in": get(&self.wire_bytes_in),
            "wire_bytes_out": get(&self.wire_bytes_out),
            "frames_in": get(&self.frames_in),
            "frames_out": get(&self.frames_out),
            "events_delivered": get(&self.events_delivered),
        })
    }

    fn watchers(&self) -> MutexGuard<'_, Vec<Arc<Watcher>>> {
        self.watchers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `record` (an object with its `type`) to every watcher, with the counters as they are now
    /// (`totals`). Serialised once, whatever the number of watchers.
    pub(crate) fn emit(&self, mut record: Map<String, Value>) {
        if !self.watched() {
            return;
        }
        record.insert("totals".into(), self.totals());
        let text: Arc<str> = Value::Object(record).to_string().into();
        for watcher in self.watchers().iter() {
            watcher.push(text.clone());
        }
    }

    fn attach(&self, watcher: Arc<Watcher>) {
        let mut watchers = self.watchers();
        watchers.push(watcher);
        self.watched.store(true, Ordering::Relaxed);
    }

    fn detach(&self, watcher: &Arc<Watcher>) -> bool {
        let mut watchers = self.watchers();
        let before = watchers.len();
        watchers.retain(|w| !Arc::ptr_eq(w, watcher));
        self.watched.store(!watchers.is_empty(), Ordering::Relaxed);
        watchers.len() < before
    }
}

/// What the wire view costs: its own requests, connections and bytes, never a technique's or a session's.
#[derive(Debug, Default)]
pub struct WireViewCounters {
    /// Requests to `/api/wire` and `/api/sessions/{session}/wire`.
    pub requests: AtomicU64,
    /// Wire views open now.
    pub connections_open: AtomicU64,
    /// Wire views ever opened.
    pub connections_total: AtomicU64,
    /// Socket bytes read for those requests and connections.
    pub wire_bytes_in: AtomicU64,
    /// Socket bytes written for them.
    pub wire_bytes_out: AtomicU64,
    /// Records put in watchers' queues.
    pub records: AtomicU64,
    /// Records dropped because a watcher's queue was full.
    pub dropped: AtomicU64,
    /// Records waiting in watchers' queues now.
    pub queued: AtomicU64,
}

/// The per-session counters of the process.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<Box<str>, Arc<SessionWire>, foldhash::fast::RandomState>>,
    /// Watchers attached anywhere: while there are none, no connection keeps a request's head.
    watchers: AtomicUsize,
    /// What the wire view itself costs.
    pub wire_view: Arc<WireViewCounters>,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<SessionWire>, foldhash::fast::RandomState>> {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The counters of a session, if it made a metered request here.
    pub fn get(&self, token: &str) -> Option<Arc<SessionWire>> {
        self.map().get(token).cloned()
    }

    /// The counters of a session the room knows, made on its first request here; the request is counted.
    pub(crate) fn request(&self, token: &str) -> Arc<SessionWire> {
        let wire = {
            let mut map = self.map();
            match map.get(token) {
                Some(wire) => wire.clone(),
                None => map.entry(token.into()).or_default().clone(),
            }
        };
        wire.requests.fetch_add(1, Ordering::Relaxed);
        wire.last_seen_ms.store(now_ms(), Ordering::Relaxed);
        wire
    }

    /// The counters of a session the room knows, made if it has none yet (a wire view opened on a session that
    /// has made no request here).
    pub(crate) fn get_or_insert(&self, token: &str) -> Arc<SessionWire> {
        let mut map = self.map();
        match map.get(token) {
            Some(wire) => wire.clone(),
            None => {
                let wire: Arc<SessionWire> = Arc::default();
                wire.last_seen_ms.store(now_ms(), Ordering::Relaxed);
                map.insert(token.into(), wire.clone());
                wire
            }
        }
    }

    /// Forgets a session's counters (it left, or its lease ran out). Watchers keep theirs until they close.
    pub fn forget(&self, token: &str) {
        self.map().remove(token);
    }

    /// Forgets sessions without a request here since `horizon_ms` (ms since the epoch), without a live channel
    /// here (`live`) and without a watcher: those that ended on another process of a cluster.
    pub fn forget_idle(&self, horizon_ms: u64, live: impl Fn(&str) -> bool) {
        self.map().retain(|token, wire| {
            wire.watched() || wire.last_seen_ms.load(Ordering::Relaxed) >= horizon_ms || live(token)
        });
    }

    /// Sessions with counters here.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no session has counters here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any wire view is open: connections then keep each request's head until its session is known.
    pub(crate) fn capturing(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Attaches a watcher holding at most `capacity` records to `wire`; it is detached when the returned guard
    /// drops.
    pub fn watch(&self, wire: Arc<SessionWire>, capacity: usize) -> Watch<'_> {
        let watcher = Arc::new(Watcher {
            queue: Mutex::new(Queue { records: VecDeque::new(), dropped: 0 }),
            notify: Notify::new(),
            capacity: capacity.max(1),
            counters: self.wire_view.clone(),
        });
        self.watchers.fetch_add(1, Ordering::Relaxed);
        wire.attach(watcher.clone());
        Watch { sessions: self, wire, watcher }
    }
}

/// An attached watcher; detaches on drop.
#[derive(Debug)]
pub struct Watch<'a> {
    sessions: &'a Sessions,
    wire: Arc<SessionWire>,
    watcher: Arc<Watcher>,
}

impl Watch<'_> {
    /// The session watched.
    pub fn wire(&self) -> &Arc<SessionWire> {
        &self.wire
    }

    /// Waits for records, then takes them all, oldest first, and how many were dropped after them.
    pub async fn next(&self) -> (Vec<Arc<str>>, u64) {
        loop {
            let notified = self.watcher.notify.notified();
            let taken = self.watcher.take();
            if !taken.0.is_empty() || taken.1 > 0 {
                return taken;
            }
            notified.await;
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if self.wire.detach(&self.watcher) {
            self.sessions.watchers.fetch_sub(1, Ordering::Relaxed);
        }
        let queue = self.watcher.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.watcher.counters.queued.fetch_sub(queue.records.len() as u64, Ordering::Relaxed);
    }
}

/// One wire view's queue of records.
#[derive(Debug)]
pub struct Watcher {
    queue: Mutex<Queue>,
    notify: Notify,
    capacity: usize,
    counters: Arc<WireViewCounters>,
}

#[derive(Debug)]
struct Queue {
    records: VecDeque<Arc<str>>,
    /// Records dropped since the queue was last taken.
    dropped: u64,
}

impl Watcher {
    fn push(&self, record: Arc<str>) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if queue.records.len() >= self.capacity {
                queue.dropped += 1;
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            queue.records.push_back(record);
        }
        self.counters.records.fetch_add(1, Ordering::Relaxed);
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn take(&self) -> (Vec<Arc<str>>, u64) {
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let records: Vec<_> = queue.records.drain(..).collect();
        self.counters.queued.fetch_sub(records.len() as u64, Ordering::Relaxed);
        (records, std::mem::take(&mut queue.dropped))
    }
}
