//! The room: the one fan-out point of this process.
//!
//! Every transport talks to a [`Room`]: [`Room::join`], [`Room::post`], [`Room::open`] (a receiving channel
//! that resumes from a cursor), [`Room::poll`], [`Room::leave`]. The broker feeds each room event once into a
//! ring of recent events, and a `watch` wakes the channels waiting for one; every channel reads the ring from its
//! own cursor, a run of events under one read lock, and writes the events' pre-serialised bytes. Fan-out costs
//! the sender one ring slot and one wake-up, whatever the number of channels, and never holds a lock while a
//! socket is written.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;
use crate::core::broker::Broker;
use crate::core::clients::Clients;
use crate::core::nickname::{clean_nickname, guest_number};
use crate::error::AppError;
use crate::metering::Metering;
use crate::model::{
    control, now_ms, Backlog, BrokerError, Delivery, Draft, Epoch, FeedItem, Missed, Participant, Presence, Published,
    RoomEvent, SendKey, Seq, SessionRecord, Transport, Visit, PRESENCE_MAX,
};

/// A handle on the room; clones share it.
#[derive(Clone)]
pub struct Room {
    shared: Arc<Shared>,
}

struct Shared {
    broker: Arc<dyn Broker>,
    /// The fan-out: the newest `--send-queue` events, which every channel reads from its own cursor. A channel
    /// more than that behind is lagged.
    recent: RwLock<Recent>,
    /// Bumped once each event is in `recent`: a channel with nothing left to read waits for it. Its receiver
    /// count is the number of live channels.
    added: watch::Sender<()>,
    /// The newest sequence number fanned out here (read without the lock).
    head: AtomicU64,
    /// Serialises fan-out so events enter the ring in sequence order, whether they come from the broker's
    /// feed or straight from a local publish. A `std` mutex: the section is a comparison, a ring push and a
    /// `watch` bump, none of which waits.
    fanout_order: Mutex<()>,
    /// The broker feed's health and the keep-alive beat, which every live channel watches.
    pulse: watch::Sender<Pulse>,
    config: Config,
    /// Live channels and rate buckets of this process. A `std` mutex: every section is a map operation and never
    /// awaits, so it is cheaper than an async lock and cannot be held across a suspension point.
    local: Mutex<Local>,
    /// Live receiving channels allowed (`--max-connections`).
    live: Arc<Semaphore>,
    shutdown: CancellationToken,
    metering: Metering,
    /// Arrivals and departures not yet announced (rooms above `--coalesce-above`).
    crowd: Crowd,
    /// The cursor saves of closed channels still running: [`Room::flush`] waits for them.
    saves: TaskTracker,
    /// The per-client limits (`--max-sessions-per-client`, `--client-rate-limit`).
    clients: Clients,
}

/// What live channels watch besides events, in one `watch` so that waiting costs one registration.
#[derive(Debug, Clone, Default)]
struct Pulse {
    /// Whether the broker's feed is down (`Some(why)`) or up (`None`), from its `Down`/`Up` items: channels
    /// tell their client when it goes down and re-read history from their cursor when it is back.
    down: Option<String>,
    /// The keep-alive beat, counting up every `--keepalive` seconds.
    beat: u64,
}

/// The ring of recent events, in sequence order (with the holes the broker's feed may leave).
#[derive(Default)]
struct Recent {
    events: VecDeque<Arc<RoomEvent>>,
    /// The newest sequence number pushed out of the ring (0 when none was): a channel whose cursor is below it
    /// missed it.
    dropped: Seq,
}

impl Recent {
    /// Where the events after `cursor` start. Without holes an event's place follows from its number, which
    /// is checked; a ring with holes is searched.
    fn after(&self, cursor: Seq) -> usize {
        let guess = self.events.front().map_or(0, |oldest| (cursor + 1).saturating_sub(oldest.seq) as usize);
        let fits = |at: usize| at == 0 || self.events.get(at - 1).is_some_and(|event| event.seq <= cursor);
        if guess <= self.events.len() && fits(guess) && self.events.get(guess).is_none_or(|event| event.seq > cursor) {
            return guess;
        }
        self.events.partition_point(|event| event.seq <= cursor)
    }

    /// The run of events that follow `cursor` in sequence, with no hole (at most `max`).
    fn run_after(&self, cursor: Seq, max: usize) -> impl Iterator<Item = &Arc<RoomEvent>> {
        self.events
            .range(self.after(cursor)..)
            .take(max)
            .zip(cursor + 1..)
            .take_while(|(event, seq)| event.seq == *seq)
            .map(|(event, _)| event)
    }
}

/// Most sessions holding client seats the reaper checks at one tick (one broker round trip): a session that
/// ended through another process frees its seat here within about `sessions / CHECK_SEATS` ticks.
const CHECK_SEATS: usize = 1024;

/// How often a big room hears who came and went.
const CROWD_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Crowd {
    joined: AtomicU64,
    left: AtomicU64,
}

#[derive(Default)]
struct Local {
    channels: HashMap<String, LiveChannel>,
    buckets: HashMap<String, Bucket>,
    generation: u64,
}

struct LiveChannel {
    generation: u64,
    /// Cancelled when a newer channel takes the session over, or the session leaves.
    ended: CancellationToken,
}

/// A token bucket for the per-session rate limit.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Room {
    /// Starts the room on `broker`: subscribes to its feed and starts the lease reaper.
    ///
    /// # Errors
    /// When the broker cannot be subscribed to.
    pub async fn start(broker: Arc<dyn Broker>, config: Config, metering: Metering) -> Result<Room, AppError> {
        let feed = broker.subscribe().await?;
        let head = broker.head().await?;
        let room = Room {
            shared: Arc::new(Shared {
                broker,
                recent: RwLock::new(Recent { events: VecDeque::with_capacity(config.send_queue as usize), dropped: 0 }),
                added: watch::Sender::new(()),
                head: AtomicU64::new(head),
                fanout_order: Mutex::new(()),
                pulse: watch::Sender::new(Pulse::default()),
                live: Arc::new(Semaphore::new(config.max_connections)),
                clients: Clients::new(&config, metering.clone()),
                config,
                local: Mutex::new(Local::default()),
                shutdown: CancellationToken::new(),
                metering,
                crowd: Crowd::default(),
                saves: TaskTracker::new(),
            }),
        };
        tokio::spawn(room.clone().pump(feed));
        tokio::spawn(room.clone().reap());
        tokio::spawn(room.clone().announce_crowd());
        tokio::spawn(room.clone().beat());
        let busy = room.shared.metering.busy().clone();
        tokio::spawn(busy.watch(room.shared.config.pace_when_busy, room.shared.shutdown.clone()));
        Ok(room)
    }

    /// The server's configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The per-technique counters.
    pub fn metering(&self) -> &Metering {
        &self.shared.metering
    }

    /// Cancelled when the server begins to stop: every long-lived loop selects on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Tells every open channel the server is stopping; they say `Server has disconnected` and end.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Resolves once every live channel has ended (after [`Room::shutdown`], when they have said goodbye).
    pub async fn drained(&self) {
        let all = self.shared.config.max_connections.min(u32::MAX as usize) as u32;
        let _ = self.shared.live.acquire_many(all).await;
    }

    /// Makes durable what the broker holds only in memory ([`Broker::flush`]), once the closed channels have saved
    /// their cursors; the server calls it once it has stopped serving.
    ///
    /// # Errors
    /// [`AppError::Unavailable`] when the store cannot be written.
    pub async fn flush(&self) -> Result<(), AppError> {
        self.shared.saves.close();
        self.shared.saves.wait().await;
        Ok(self.shared.broker.flush().await?)
    }

    /// The newest sequence number this process has fanned out.
    pub fn head(&self) -> Seq {
        self.shared.head.load(Ordering::Acquire)
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.shared.local.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forwards the broker's feed into the fan-out, in order.
    async fn pump(self, mut feed: tokio::sync::mpsc::UnboundedReceiver<FeedItem>) {
        loop {
            let item = tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                item = feed.recv() => item,
            };
            match item {
                Some(FeedItem::Event(event)) => self.fan_out(event, false),
                Some(FeedItem::Down(why)) => {
                    tracing::warn!(%why, "the broker feed is down");
                    self.shared.pulse.send_modify(|pulse| pulse.down = Some(why));
                }
                Some(FeedItem::Up) => {
                    tracing::info!("the broker feed is back");
                    self.rebase_head().await;
                    self.shared.pulse.send_modify(|pulse| pulse.down = None);
                }
                None => {
                    tracing::error!("the broker feed ended; no more events will be delivered");
                    return;
                }
            }
        }
    }

    /// Hands an event to every local receiver, in sequence order. An event published here is fanned out at
    /// once if it is the next one (`direct`), without waiting for it to come back through the broker's feed: a
    /// sender's own echo is then queued before it reads its next text, and local delivery skips a task hop.
    /// Anything else waits for the feed, which brings every event in order; what was already sent is skipped.
    fn fan_out(&self, event: Arc<RoomEvent>, direct: bool) {
        let _order = self.shared.fanout_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let head = self.shared.head.load(Ordering::Acquire);
        if event.seq <= head || (direct && event.seq != head + 1) {
            return;
        }
        self.shared.head.store(event.seq, Ordering::Release);
        let seen = event.seen;
        {
            let mut recent = self.recent_mut();
            if recent.events.len() >= self.shared.config.send_queue.max(1) as usize {
                if let Some(oldest) = recent.events.pop_front() {
                    recent.dropped = oldest.seq;
                }
            }
            recent.events.push_back(event);
        }
        self.shared.added.send_replace(());
        self.metering().load().add(seen, self.shared.added.receiver_count() as u64);
    }

    fn recent(&self) -> RwLockReadGuard<'_, Recent> {
        self.shared.recent.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn recent_mut(&self) -> std::sync::RwLockWriteGuard<'_, Recent> {
        self.shared.recent.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// After an outage: if the store came back with fewer events than were fanned out here (a Redis restarted
    /// without persistence), numbering starts again below our head, and [`Room::fan_out`] would skip every new
    /// event as already sent. Follow the store instead; receivers re-reading from their cursors get a `gap`
    /// notice that the room was reset.
    async fn rebase_head(&self) {
        let Ok(stored) = self.shared.broker.head().await else { return };
        let _order = self.shared.fanout_order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let head = self.shared.head.load(Ordering::Acquire);
        if stored < head {
            tracing::error!(stored, fanned_out = head, "the broker lost events: the room restarts its numbering");
            self.shared.head.store(stored, Ordering::Release);
            // The ring's events carry the old numbers: channels re-read from the store (they are stale).
            let mut recent = self.recent_mut();
            recent.events.clear();
            recent.dropped = recent.dropped.min(stored);
        }
    }

    /// Publishes through the broker and fans the event out here at once when it is next in order.
    async fn publish(&self, draft: Draft) -> Result<Arc<RoomEvent>, BrokerError> {
        let event = self.shared.broker.publish(draft).await?;
        self.fan_out(event.clone(), true);
        Ok(event)
    }

    /// Publishes `sends` in this order ([`Broker::publish_all`]) and fans each new event out as
    /// [`Room::publish`] does.
    async fn publish_all(&self, sends: Vec<(Draft, Option<SendKey<'_>>)>) -> Result<Vec<Published>, BrokerError> {
        let published = self.shared.broker.publish_all(sends).await?;
        for published in &published {
            if let Published::Fresh(event) = published {
                self.fan_out(event.clone(), true);
            }
        }
        Ok(published)
    }

    /// [`Room::publish`] under a send's key: a repeated key publishes nothing and answers the first `seq`.
    async fn publish_once(&self, draft: Draft, key: SendKey<'_>) -> Result<Seq, BrokerError> {
        match self.shared.broker.publish_once(draft, key).await? {
            Published::Fresh(event) => {
                self.fan_out(event.clone(), true);
                Ok(event.seq)
            }
            Published::Repeated(seq) => Ok(seq),
        }
    }

    /// The room's epoch now (see [`Epoch`]): what a join's answer names, so a client can tell this room's
    /// numbering from that of a room that started over.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn epoch(&self) -> Result<Epoch, AppError> {
        Ok(self.shared.broker.epoch().await?)
    }

    /// What to read for a client that gave `epoch=`: the backlog as read, or, when the client's cursor is from
    /// another epoch, the room from its oldest retained event after a [`Missed::Epoch`] notice.
    async fn in_epoch(&self, backlog: Backlog, theirs: Option<&str>, max: usize) -> Result<Backlog, AppError> {
        match theirs {
            Some(theirs) if theirs != &*backlog.epoch => {
                let since = backlog.after;
                Ok(self.shared.broker.since(0, max).await?.restarted(since))
            }
            _ => Ok(backlog),
        }
    }

    /// Renews the leases of sessions with a live channel here, and announces sessions whose lease ran out.
    async fn reap(self) {
        let lease = self.shared.config.lease();
        let mut tick = tokio::time::interval((lease / 4).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pulse = self.shared.pulse.subscribe();
        let mut was_down = false;
        // After a broker outage no lease was renewed for a while, anywhere: expiring at once would announce the
        // departure of participants whose process simply has not renewed yet. Every process saw the outage, so
        // each one only renews for one lease before it expires again.
        let mut renew_only_until: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if pulse.has_changed().unwrap_or(false) {
                let down = pulse.borrow_and_update().down.is_some();
                if was_down && !down {
                    renew_only_until = Some(Instant::now() + lease);
                }
                was_down = down;
            }
            let live: Vec<String> = self.local().channels.keys().cloned().collect();
            let now = now_ms();
            if let Err(error) = self.shared.broker.renew(&live, now + lease.as_millis() as u64).await {
                tracing::warn!(%error, "could not renew leases");
                continue;
            }
            if renew_only_until.is_some_and(|until| Instant::now() < until) {
                continue;
            }
            match self.shared.broker.expire(now).await {
                Ok(gone) => {
                    for record in gone {
                        self.forget(&record.token);
                        self.announce_leave(&record).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "could not expire leases"),
            }
            // Rate buckets of sessions quiet for two leases are forgotten (a full bucket is the default anyway).
            if let Some(horizon) = Instant::now().checked_sub(2 * lease) {
                self.local().buckets.retain(|_, bucket| bucket.last > horizon);
            }
            // And clients with no session whose text budget is full again.
            self.shared.clients.sweep();
            // Seats of sessions that ended through another process of a cluster are given back here.
            let due = self.shared.clients.due(CHECK_SEATS, lease);
            if !due.is_empty() {
                match self.shared.broker.alive(&due).await {
                    Ok(alive) => {
                        for (token, alive) in due.iter().zip(alive) {
                            if !alive {
                                self.shared.clients.release(token);
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "could not check the sessions holding client seats"),
                }
            }
            // So are the wire counters of sessions that ended on another process of a cluster (a session whose
            // channel is here is not idle, however long ago it made its last request).
            let horizon = now.saturating_sub(2 * lease.as_millis() as u64);
            let channels = self.local();
            self.shared.metering.sessions().forget_idle(horizon, |token| channels.channels.contains_key(token));
        }
    }

    /// Whether the room is above `--coalesce-above` participants, where joins and leaves are announced in bulk.
    async fn crowded(&self) -> bool {
        match self.shared.broker.online().await {
            Ok(online) => online > self.shared.config.coalesce_above,
            Err(_) => false,
        }
    }

    /// Once a second, while there are any, announces how many participants came and went without a notice of
    /// their own (`12 人来了，3 人走了`). The event's `clientcount` is exact, as on every event.
    async fn announce_crowd(self) {
        let mut tick = tokio::time::interval(CROWD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let joined = self.shared.crowd.joined.swap(0, Ordering::Relaxed);
            let left = self.shared.crowd.left.swap(0, Ordering::Relaxed);
            if joined == 0 && left == 0 {
                continue;
            }
            let draft = Draft::crowd(joined, left);
            if let Err(error) = self.publish(draft).await {
                tracing::warn!(%error, joined, left, "could not announce arrivals and departures");
                self.shared.crowd.joined.fetch_add(joined, Ordering::Relaxed);
                self.shared.crowd.left.fetch_add(left, Ordering::Relaxed);
            }
        }
    }

    /// Beats every `--keepalive` seconds for every live channel at once.
    async fn beat(self) {
        let every = Duration::from_secs(self.shared.config.keepalive.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => self.shared.pulse.send_modify(|pulse| pulse.beat += 1),
            }
        }
    }

    /// Drops what this process holds for a session: its live channel ends, its rate bucket goes.
    fn forget(&self, token: &str) {
        self.end_channel(token);
        self.local().buckets.remove(token);
        self.shared.clients.release(token);
        self.shared.metering.sessions().forget(token);
    }

    async fn announce_leave(&self, record: &SessionRecord) {
        if self.crowded().await {
            self.shared.crowd.left.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let draft = Draft::leave(record.id.clone(), record.nickname.clone());
        if let Err(error) = self.publish(draft).await {
            tracing::warn!(%error, nickname = %record.nickname, "could not announce a leave");
        }
    }

    /// A new participant joins: a session is created and everyone is told `<nickname> 来了`.
    ///
    /// Returns the session and the cursor just before its join notice, so a receiver opened from there sees
    /// its own arrival, as in the seed.
    ///
    /// # Errors
    /// [`AppError::BadNickname`] for a refused nickname, [`AppError::RoomFull`], [`AppError::Unavailable`],
    /// [`AppError::ShuttingDown`].
    pub async fn join(
        &self,
        transport: Transport,
        nickname: Option<&str>,
        seed: bool,
    ) -> Result<(SessionRecord, Seq), AppError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(AppError::ShuttingDown);
        }
        let nickname = nickname.map(|n| clean_nickname(n, self.shared.config.max_nickname_chars)).transpose()?;
        let guest = self.shared.broker.next_guest().await?;
        if let Some(name) = &nickname {
            if guest_number(name).is_some() && *name != format!("游客{guest}") {
                return Err(AppError::BadNickname(format!(
                    "{name} is a guest's name: guest names are given, not taken"
                )));
            }
        }
        let record = SessionRecord {
            token: Uuid::new_v4().simple().to_string(),
            id: Uuid::new_v4().to_string(),
            nickname: nickname.unwrap_or_else(|| format!("游客{guest}")),
            guest,
            transport,
            since_ms: now_ms(),
            // Saved with the session, so that its first channel opened without `since=` starts here (never at the
            // start of the retained history): at most the events between this and the join notice are delivered.
            cursor: self.head(),
            seed,
        };
        self.shared.broker.create_session(&record, self.lease_end(), self.shared.config.max_sessions).await?;
        if self.crowded().await {
            // A big room hears one notice a second naming how many came, not N notices to N people (N²).
            self.shared.crowd.joined.fetch_add(1, Ordering::Relaxed);
            let cursor = record.cursor;
            return Ok((record, cursor));
        }
        let draft = Draft::join(record.id.clone(), record.nickname.clone(), record.transport);
        let joined = match self.publish(draft).await {
            Ok(event) => event,
            Err(error) => {
                // Leave no silent participant behind if the notice could not be published.
                let _ = self.shared.broker.remove_session(&record.token).await;
                return Err(error.into());
            }
        };
        let mut record = record;
        let cursor = joined.seq - 1;
        if cursor > record.cursor {
            // Others spoke between the session's creation and its notice (or this process's head lagged the
            // broker's): the join's `seq` and the saved cursor must be the same, or the first channel would
            // replay what the answer said was before the join.
            self.shared.broker.save_cursor(&record.token, cursor, self.lease_end()).await?;
            record.cursor = cursor;
        }
        Ok((record.clone(), cursor))
    }

    /// [`Room::join`] for a request from `client` (its IP address; `None` when unknown, which no per-client limit
    /// applies to): the session counts against the client until it leaves or its lease runs out.
    ///
    /// # Errors
    /// [`AppError::TooManySessions`] when the client holds `--max-sessions-per-client` sessions, and those of
    /// [`Room::join`].
    pub async fn join_from(
        &self,
        client: Option<IpAddr>,
        transport: Transport,
        nickname: Option<&str>,
        seed: bool,
    ) -> Result<(SessionRecord, Seq), AppError> {
        // The seat is taken before the join, so joins racing from one client cannot pass the limit together;
        // it is given back if the join fails.
        let seat = self.shared.clients.seat(client)?;
        let joined = self.join(transport, nickname, seed).await?;
        seat.bind(&joined.0.token);
        Ok(joined)
    }

    /// [`Room::send`] for a request from `client`: the text counts against the client's budget
    /// (`--client-rate-limit`), whichever of its sessions it speaks for.
    ///
    /// # Errors
    /// [`AppError::ClientRateLimited`], and those of [`Room::post`].
    pub async fn send_from(
        &self,
        client: Option<IpAddr>,
        token: &str,
        text: &str,
        key: Option<&str>,
    ) -> Result<(Seq, Transport), AppError> {
        self.shared.clients.text(client)?;
        self.send(token, text, key).await
    }

    /// Looks a session up.
    ///
    /// # Errors
    /// [`AppError::UnknownSession`] when there is none (or it expired); [`AppError::Unavailable`].
    pub async fn session(&self, token: &str) -> Result<SessionRecord, AppError> {
        self.shared.broker.session(token).await?.ok_or(AppError::UnknownSession)
    }

    /// A participant sends a text: a chat message, or `/nick NAME` to rename. Returns the event's `seq` and the
    /// sender's technique (whose counters the request belongs to).
    ///
    /// # Errors
    /// [`AppError::RateLimited`], [`AppError::EmptyText`], [`AppError::TextTooLong`], [`AppError::BadNickname`],
    /// [`AppError::NicknameTaken`], [`AppError::UnknownSession`], [`AppError::Unavailable`],
    /// [`AppError::ShuttingDown`].
    pub async fn post(&self, token: &str, text: &str) -> Result<(Seq, Transport), AppError> {
        self.send(token, text, None).await
    }

    /// [`Room::post`], with the client's key for this send (a `/ws?ack=1` frame's `ref`, a POST's
    /// `Idempotency-Key`): a key the session already used, within the retained history, publishes nothing again
    /// and answers the first send's `seq`, whatever process the first send reached. A repeated `/nick` renames
    /// nothing again either (the session's nickname may have changed since).
    ///
    /// # Errors
    /// As [`Room::post`].
    pub async fn send(&self, token: &str, text: &str, key: Option<&str>) -> Result<(Seq, Transport), AppError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(AppError::ShuttingDown);
        }
        let mut record = self.session(token).await?;
        let transport = record.transport;
        let key = key.map(|key| SendKey { session: token, key });
        let published = match self.draft(&mut record, text, key).await? {
            Err(seq) => return Ok((seq, transport)),
            Ok(draft) => match key {
                Some(key) => self.publish_once(draft, key).await?,
                None => self.publish(draft).await?.seq,
            },
        };
        Ok((published, transport))
    }

    /// Several texts of one participant from `client`, in order, each with its key if any, as
    /// [`Room::send_from`] each (the same checks, limits, keys and errors, text by text), published together: one
    /// step for the broker (with the durable broker, one commit), so that a sender whose texts arrive faster than
    /// one sync each is not held to one text per sync. Returns each text's outcome, in order.
    pub async fn post_all(
        &self,
        client: Option<IpAddr>,
        token: &str,
        texts: &[(String, Option<String>)],
    ) -> Vec<Result<Seq, AppError>> {
        if self.shared.shutdown.is_cancelled() {
            return texts.iter().map(|_| Err(AppError::ShuttingDown)).collect();
        }
        let mut record = match self.session(token).await {
            Ok(record) => record,
            // The lookup can only fail as an unknown session or an unavailable store: each text is told so.
            Err(AppError::UnknownSession) => return texts.iter().map(|_| Err(AppError::UnknownSession)).collect(),
            Err(error) => return texts.iter().map(|_| Err(AppError::Unavailable(error.to_string()))).collect(),
        };
        let mut outcomes = Vec::with_capacity(texts.len());
        let mut sends = Vec::with_capacity(texts.len());
        for (text, key) in texts {
            let key = key.as_deref().map(|key| SendKey { session: token, key });
            let drafted = match self.shared.clients.text(client) {
                Ok(()) => self.draft(&mut record, text, key).await,
                Err(error) => Err(error),
            };
            match drafted {
                Ok(Ok(draft)) => {
                    sends.push((draft, key));
                    outcomes.push(None);
                }
                Ok(Err(seq)) => outcomes.push(Some(Ok(seq))),
                Err(error) => outcomes.push(Some(Err(error))),
            }
        }
        // Each text drafted waits for its place in the batch published, in order.
        let published = self.publish_all(sends).await;
        let mut fresh = published.as_ref().map(|published| published.iter().map(Published::seq)).ok();
        outcomes
            .into_iter()
            .map(|outcome| match (outcome, &published, fresh.as_mut()) {
                (Some(outcome), _, _) => outcome,
                (None, Err(error), _) => Err(AppError::from(error.clone())),
                (None, Ok(_), Some(seqs)) => seqs.next().ok_or_else(|| AppError::Unavailable("no answer".into())),
                (None, Ok(_), None) => Err(AppError::Unavailable("no answer".into())),
            })
            .collect()
    }

    /// The event a participant's text makes: a chat message, or for `/nick NAME` a rename (saved in `record` and
    /// in the broker now, before the event is published). `Ok(Err(seq))`: a rename under a `key` already used,
    /// whose event is `seq` (nothing is renamed again).
    async fn draft(
        &self,
        record: &mut SessionRecord,
        text: &str,
        key: Option<SendKey<'_>>,
    ) -> Result<Result<Draft, Seq>, AppError> {
        let token = record.token.clone();
        let token = token.as_str();
        let transport = record.transport;
        self.take_rate_token(token)?;
        let draft = if let Some(name) = text.strip_prefix("/nick ") {
            // A rename is saved before it is published: a repeat must be caught before that, or a resent old
            // `/nick` would quietly rename back. (Renames are rare: the extra read costs nothing that matters.)
            if let Some(key) = key {
                if let Some(seq) = self.shared.broker.published(key).await? {
                    return Ok(Err(seq));
                }
            }
            let new = clean_nickname(name, self.shared.config.max_nickname_chars)?;
            if guest_number(&new).is_some() && new != format!("游客{}", record.guest) {
                return Err(AppError::BadNickname(format!(
                    "{new} is a guest's name: guest names are given, not taken"
                )));
            }
            // Checked against who is online now (one read of the presence, as rare as a rename); two renames to
            // the same name at the same instant in two processes can both pass.
            if new != record.nickname
                && self
                    .shared
                    .broker
                    .presence()
                    .await?
                    .iter()
                    .any(|other| other.token != token && other.nickname == new)
            {
                return Err(AppError::NicknameTaken(new));
            }
            let old = std::mem::replace(&mut record.nickname, new.clone());
            if !self.shared.broker.save_session(record).await? {
                return Err(AppError::UnknownSession);
            }
            Draft::rename(record.id.clone(), old, new)
        } else {
            if text.trim().is_empty() {
                return Err(AppError::EmptyText);
            }
            let max = self.shared.config.max_message_chars;
            if text.len() > max && text.chars().count() > max {
                return Err(AppError::TextTooLong(max));
            }
            Draft::message(record.id.clone(), record.nickname.clone(), text.to_owned(), transport)
        };
        Ok(Ok(draft))
    }

    /// Takes one token from the session's bucket.
    fn take_rate_token(&self, token: &str) -> Result<(), AppError> {
        let rate = self.shared.config.rate_limit;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = self.shared.config.rate_burst.max(1.0);
        let now = Instant::now();
        let mut local = self.local();
        let bucket = local.buckets.entry(token.to_owned()).or_insert(Bucket { tokens: burst, last: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64;
            Err(AppError::RateLimited(wait_ms))
        }
    }

    /// A participant leaves now: everyone is told `<nickname> 走了`. `false` if it had already gone.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn leave(&self, token: &str) -> Result<bool, AppError> {
        let removed = self.shared.broker.remove_session(token).await?;
        self.forget(token);
        match removed {
            Some(record) => {
                self.announce_leave(&record).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Everyone online, oldest first.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn presence(&self) -> Result<Vec<SessionRecord>, AppError> {
        Ok(self.shared.broker.presence().await?)
    }

    /// Who is online now, as a welcome gives it: how many, and the oldest [`PRESENCE_MAX`] in join order. It
    /// costs one broker call reading at most that many records, whatever the number online; it is made once
    /// per join, channel opened or poll that asks for it, never per delivery.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn presence_now(&self) -> Result<Presence, AppError> {
        let (clientcount, oldest) = self.shared.broker.oldest(PRESENCE_MAX).await?;
        let participants: Vec<Participant> = oldest.iter().map(Participant::from).collect();
        Ok(Presence { more: clientcount > participants.len() as u64, clientcount, participants })
    }

    /// One page of who is online, in join order: how many are online, and at most `max` of them whose guest
    /// number is above `after` (0: from the first). The next page starts after the last one's guest number.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn presence_page(&self, after: u64, max: usize) -> Result<(u64, Vec<SessionRecord>), AppError> {
        Ok(self.shared.broker.page(after, max).await?)
    }

    /// How many participants are online.
    ///
    /// # Errors
    /// [`AppError::Unavailable`].
    pub async fn online(&self) -> Result<u64, AppError> {
        Ok(self.shared.broker.online().await?)
    }

    /// When a lease that starts now ends (ms since the epoch).
    fn lease_end(&self) -> u64 {
        now_ms() + self.shared.config.lease().as_millis() as u64
    }

    /// Makes `transport` the session's one receiving channel: any older channel of the session ends now. The
    /// session's technique is now `transport` and its lease runs from now (a poll does the same within
    /// [`Broker::poll`]: a long poll answered at once is rarely live at a reaper tick, so without it an active long
    /// poller would be announced as gone). Returns the record, what was retained after `since` (default: the
    /// session's cursor), the channel's generation and the token cancelled when this channel is replaced.
    async fn claim(
        &self,
        token: &str,
        transport: Transport,
        since: Option<Seq>,
        epoch: Option<&str>,
    ) -> Result<Claimed, AppError> {
        let visit = Visit { token, transport, lease_until_ms: self.lease_end(), since, max: usize::MAX };
        let (record, backlog) = self.shared.broker.open(visit).await?.ok_or(AppError::UnknownSession)?;
        let backlog = self.in_epoch(backlog, epoch, usize::MAX).await?;
        let ended = self.shared.shutdown.child_token();
        let mut local = self.local();
        local.generation += 1;
        let generation = local.generation;
        let old = local.channels.insert(token.to_owned(), LiveChannel { generation, ended: ended.clone() });
        drop(local);
        if let Some(old) = old {
            old.ended.cancel();
        }
        Ok(Claimed { record, backlog, generation, ended })
    }

    /// Ends the session's live channel in this process, if it has one (its client has moved to polling, or left).
    fn end_channel(&self, token: &str) {
        let old = self.local().channels.remove(token);
        if let Some(old) = old {
            old.ended.cancel();
        }
    }

    /// Opens a live receiving channel for a session (WebSocket, SSE stream, held long poll), resuming after
    /// `since` (default: where the session's last channel stopped). Any older channel of the session ends. With
    /// `epoch` (the epoch the client's cursor is from), a cursor of another epoch gets a `gap` with
    /// `"reason":"epoch"`, then the room from its oldest retained event.
    ///
    /// Returns the channel and the session's record (for a welcome frame; the channel keeps only the token).
    ///
    /// # Errors
    /// [`AppError::UnknownSession`], [`AppError::TooManyConnections`], [`AppError::Unavailable`],
    /// [`AppError::ShuttingDown`].
    pub async fn open(
        &self,
        token: &str,
        transport: Transport,
        since: Option<Seq>,
        epoch: Option<&str>,
    ) -> Result<(Channel, SessionRecord), AppError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(AppError::ShuttingDown);
        }
        let permit = self.shared.live.clone().try_acquire_owned().map_err(|_| AppError::TooManyConnections)?;
        // Events published while history is read are in the ring too, where the channel finds them after it.
        let added = self.shared.added.subscribe();
        let Claimed { record, backlog, generation, ended } = self.claim(token, transport, since, epoch).await?;
        // A cursor ahead of the room starts over at the head (after the `gap` event that says so): the channel's
        // cursor, which a long poll answers as `next` and a closing channel saves, must be one the room will reach.
        let start = match backlog.missed {
            Some(Missed::Ahead) => backlog.head,
            _ => backlog.after,
        };
        let mut channel = Channel {
            room: self.clone(),
            token: record.token.clone(),
            epoch: backlog.epoch.clone(),
            transport,
            generation,
            added,
            pending: VecDeque::new(),
            last: start,
            delivered: start,
            ended,
            pulse: self.shared.pulse.subscribe(),
            seen_down: false,
            seen_beat: self.shared.pulse.borrow().beat,
            stale: false,
            _permit: permit,
            _open: self.shared.metering.open(transport),
        };
        channel.queue_backlog(backlog);
        Ok((channel, record))
    }

    /// One poll, answered at once: up to `--poll-batch` retained events after `since` (default: the session's
    /// cursor). It renews the session's lease, moves its cursor, and ends any live channel the session had (it
    /// has moved to polling). A long poll that has something to answer at once is served here too, without
    /// opening a channel.
    ///
    /// `epoch`: as for [`Room::open`]. Returns the deliveries, the cursor after them (the answer's `next`) and the
    /// room's epoch.
    ///
    /// # Errors
    /// [`AppError::UnknownSession`], [`AppError::Unavailable`].
    pub async fn poll(
        &self,
        token: &str,
        transport: Transport,
        since: Option<Seq>,
        epoch: Option<&str>,
    ) -> Result<Polled, AppError> {
        let max = self.shared.config.poll_batch as usize;
        let visit = Visit { token, transport, lease_until_ms: self.lease_end(), since, max };
        let (cursor, backlog) = self.shared.broker.poll(visit).await?.ok_or(AppError::UnknownSession)?;
        let backlog = self.in_epoch(backlog, epoch, max).await?;
        let epoch = backlog.epoch.clone();
        self.end_channel(token);
        // Sized exactly: an empty answer, the commonest poll, allocates nothing.
        let mut items = Vec::with_capacity(backlog.events.len() + usize::from(backlog.missed.is_some()));
        let next = push_backlog(&mut items, backlog);
        if next > cursor {
            self.shared.broker.save_cursor(token, next, self.lease_end()).await?;
        }
        // Answered from history, not fanned out to a channel: the load counts them here (an empty answer, the
        // commonest poll, costs it nothing).
        if !items.is_empty() {
            self.metering().load().add(Instant::now(), items.len() as u64);
        }
        Ok(Polled { deliveries: items, next, epoch })
    }

    /// Ends this process's hold on a session's channel, unless a newer channel has taken it over.
    fn release(&self, token: &str, generation: u64) {
        let mut local = self.local();
        if local.channels.get(token).is_some_and(|c| c.generation == generation) {
            local.channels.remove(token);
        }
    }
}

/// A poll's answer ([`Room::poll`]).
#[derive(Debug)]
pub struct Polled {
    /// What to deliver, in order.
    pub deliveries: Vec<Delivery>,
    /// The cursor after them: the answer's `next`.
    pub next: Seq,
    /// The room's epoch: the answer's `epoch`, the numbering `next` belongs to.
    pub epoch: Epoch,
}

/// What [`Room::claim`] gives a channel being opened.
struct Claimed {
    record: SessionRecord,
    backlog: Backlog,
    generation: u64,
    ended: CancellationToken,
}

/// Deliveries ready together, and what ended the batch early, if anything.
#[derive(Debug, Default)]
pub struct Batch {
    /// What to deliver, in order.
    pub deliveries: Vec<Delivery>,
    /// Set when the channel must end after the deliveries (lagged, replaced, shutdown).
    pub end: Option<Item>,
}

/// What a live channel yields next.
#[derive(Debug)]
pub enum Item {
    /// The keep-alive beat (every `--keepalive` seconds, shared by every channel: no timer per connection):
    /// an SSE stream writes a comment, a WebSocket pings and drops a peer that stopped answering.
    Beat,
    /// Deliver this.
    Deliver(Delivery),
    /// The receiver fell more than `--send-queue` events behind: close it; the client resumes from its cursor.
    Lagged,
    /// A newer channel of the same session took over, or the session left.
    Replaced,
    /// The server is stopping.
    Shutdown,
}

/// A session's live receiving channel: the retained backlog after its cursor, then live events, in order,
/// with no duplicate and no hole. Dropping it releases the session's channel slot and saves its cursor.
pub struct Channel {
    room: Room,
    /// The session's token: all a channel needs to know of its session once open.
    token: String,
    /// The room's epoch when the channel opened (or last caught up from history).
    epoch: Epoch,
    transport: Transport,
    generation: u64,
    /// Wakes the channel when an event enters the ring.
    added: watch::Receiver<()>,
    /// Deliveries queued but not yet handed out: a backlog, or a run taken from the ring.
    pending: VecDeque<Delivery>,
    /// The newest sequence number queued or delivered (or skipped past a gap): the de-duplication mark.
    last: Seq,
    /// The client's cursor: the newest sequence number handed out by this channel.
    delivered: Seq,
    ended: CancellationToken,
    /// The broker feed's health and the keep-alive beat (see [`Pulse`]).
    pulse: watch::Receiver<Pulse>,
    /// Whether this channel has told its client the feed is down.
    seen_down: bool,
    /// The last keep-alive beat this channel handed out.
    seen_beat: u64,
    /// Set when the feed came back after an outage: history must be re-read from `last` before waiting for
    /// live events (kept until that read succeeds, so a cancelled `next` retries it).
    stale: bool,
    _permit: OwnedSemaphorePermit,
    _open: crate::metering::OpenGuard,
}

impl Channel {
    /// The session token this channel serves.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The cursor: the newest sequence number handed out by this channel.
    pub fn cursor(&self) -> Seq {
        self.delivered
    }

    /// The room's epoch: the numbering [`Channel::cursor`] belongs to.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Reads history after the channel's mark to catch up (after an outage, or to fill a hole in the feed). A
    /// store that came back as another epoch (a wiped Redis) is told to the client as such, and the channel goes
    /// on from the new room's oldest retained event.
    async fn catch_up(&mut self) -> Result<Backlog, BrokerError> {
        let backlog = self.room.shared.broker.since(self.last, usize::MAX).await?;
        if backlog.epoch == self.epoch {
            return Ok(backlog);
        }
        self.epoch = backlog.epoch.clone();
        let restarted = self.room.shared.broker.since(0, usize::MAX).await?.restarted(self.last);
        // The cursor is a position in the new numbering from now on (it is never moved back otherwise).
        self.delivered = restarted.after;
        Ok(restarted)
    }

    /// The room this channel belongs to.
    pub fn room(&self) -> &Room {
        &self.room
    }

    fn queue_backlog(&mut self, backlog: Backlog) {
        let mut items = Vec::with_capacity(backlog.events.len() + 1);
        self.last = push_backlog(&mut items, backlog);
        self.pending.extend(items);
    }

    /// Completes a batch: `first` (from [`Channel::next`]) plus up to `max` deliveries in all that are ready
    /// now, so several events go out in one write or one poll response. Await it to completion once started:
    /// unlike `next`, it is not cancel-safe.
    pub async fn batch_from(&mut self, first: Item, max: usize) -> Batch {
        // Room for a typical batch at once (a paced write carries a few to a few tens), rather than growing.
        let mut batch = Batch { deliveries: Vec::with_capacity(max.clamp(1, 16)), end: None };
        match first {
            Item::Deliver(delivery) => batch.deliveries.push(delivery),
            Item::Beat => return batch,
            end => {
                batch.end = Some(end);
                return batch;
            }
        }
        while batch.deliveries.len() < max.max(1) {
            match self.ready().await {
                Some(Item::Deliver(delivery)) => batch.deliveries.push(delivery),
                Some(end) => {
                    batch.end = Some(end);
                    break;
                }
                None => break,
            }
        }
        batch
    }

    /// Marks a delivery as handed out: the cursor moves past it.
    fn hand_out(&mut self, delivery: Delivery) -> Item {
        self.delivered = self.delivered.max(delivery.cursor());
        Item::Deliver(delivery)
    }

    /// The next thing to deliver. Cancel-safe: if the future is dropped, nothing is lost (the ring is read by
    /// cursor, and what was queued stays queued).
    ///
    /// When the broker's feed goes down, the client gets an `error` event with code `unavailable` (and the
    /// channel stays open); when it is back, the channel re-reads history from its cursor, so what the feed lost
    /// meanwhile is delivered in order, once.
    pub async fn next(&mut self) -> Item {
        loop {
            if let Some(delivery) = self.pending.pop_front() {
                return self.hand_out(delivery);
            }
            if self.stale {
                // Events published while the feed was down never reached the fan-out: read them from history.
                match self.catch_up().await {
                    Ok(backlog) => {
                        self.stale = false;
                        self.queue_backlog(backlog);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not catch up after an outage; closing the channel so it resumes");
                        return Item::Lagged;
                    }
                }
            }
            // Fast path: events already in the ring are taken without registering a waker on every signal (which
            // costs a few locks per call); the signals are checked by their flags first, so none is missed.
            if let Some(end) = self.ending() {
                return end;
            }
            if !self.pulse.has_changed().unwrap_or(false) {
                // Marked as seen before the ring is read: an event added after the read wakes the wait below.
                self.added.mark_unchanged();
                match self.take_recent() {
                    Taken::Queued => continue,
                    Taken::Hole(event) => {
                        if let Some(item) = self.accept(event).await {
                            return item;
                        }
                        continue;
                    }
                    Taken::Lagged => return self.lagged(),
                    Taken::Nothing => {}
                }
            }
            tokio::select! {
                biased;
                // `ended` is a child of the server's shutdown token, so it covers both: a wait on the shutdown
                // token itself would have every channel of the process take that one token's lock.
                () = self.ended.cancelled() => return self.ending().unwrap_or(Item::Replaced),
                Ok(()) = self.pulse.changed() => {
                    let pulse = self.pulse.borrow_and_update().clone();
                    match (pulse.down, self.seen_down) {
                        // The client hears of the outage at once; its cursor does not move.
                        (Some(why), false) => {
                            self.seen_down = true;
                            let json = AppError::Unavailable(why).to_event();
                            return self.hand_out(Delivery::Control { json, resume_after: 0 });
                        }
                        (None, true) => {
                            self.seen_down = false;
                            self.stale = true;
                        }
                        _ => {}
                    }
                    if pulse.beat != self.seen_beat {
                        self.seen_beat = pulse.beat;
                        return Item::Beat;
                    }
                }
                added = self.added.changed() => {
                    if added.is_err() {
                        return Item::Shutdown;
                    }
                }
            }
        }
    }

    /// What is ready now, without waiting for new events (it may read history to fill a hole): a stream that
    /// paces its writes collects with it what arrived while it waited.
    pub async fn ready(&mut self) -> Option<Item> {
        loop {
            if let Some(delivery) = self.pending.pop_front() {
                return Some(self.hand_out(delivery));
            }
            // A stream kept busy by its pacing never waits in `next`: it hears here that it is over.
            if let Some(end) = self.ending() {
                return Some(end);
            }
            match self.take_recent() {
                Taken::Queued => {}
                Taken::Hole(event) => {
                    if let Some(item) = self.accept(event).await {
                        return Some(item);
                    }
                }
                Taken::Lagged => return Some(self.lagged()),
                Taken::Nothing => return None,
            }
        }
    }

    /// Queues the run of ring events that follow the cursor in sequence (at most [`RUN`]), under one read lock.
    fn take_recent(&mut self) -> Taken {
        let recent = self.room.recent();
        if self.last < recent.dropped {
            return Taken::Lagged;
        }
        let queued = self.pending.len();
        for event in recent.run_after(self.last, RUN) {
            self.last = event.seq;
            self.pending.push_back(Delivery::Event(event.clone()));
        }
        if self.pending.len() > queued {
            return Taken::Queued;
        }
        // Nothing in sequence: the next event in the ring, if any, is past a hole.
        match recent.events.get(recent.after(self.last)) {
            Some(event) => Taken::Hole(event.clone()),
            None => Taken::Nothing,
        }
    }

    /// A paced stream's fast path: hands `write` the run of room events that follow the cursor (at most `max`),
    /// by reference, in order, under one read lock of the ring, and moves the cursor past them. No reference
    /// count, queue entry or batch per event: a stream that copies each event's bytes into its write buffer keeps
    /// nothing. Returns how many events it handed; none when anything else must go first (a queued backlog or
    /// control event, a hole in the ring, a lag, history to re-read after an outage, the channel's end), which
    /// [`Channel::ready`] then brings.
    pub fn drain(&mut self, max: usize, mut write: impl FnMut(&RoomEvent)) -> usize {
        if !self.pending.is_empty() || self.stale || self.ended.is_cancelled() {
            return 0;
        }
        let recent = self.room.recent();
        if self.last < recent.dropped {
            return 0;
        }
        let mut handed = 0;
        for event in recent.run_after(self.last, max) {
            write(event);
            self.last = event.seq;
            handed += 1;
        }
        self.delivered = self.delivered.max(self.last);
        handed
    }

    /// Why the channel must end now, if it must: the server is stopping, or a newer channel took the session.
    fn ending(&self) -> Option<Item> {
        if !self.ended.is_cancelled() {
            return None;
        }
        Some(if self.room.shared.shutdown.is_cancelled() { Item::Shutdown } else { Item::Replaced })
    }

    /// Counts a slow consumer and says so.
    fn lagged(&self) -> Item {
        self.room.metering().of(self.transport).slow_consumers.fetch_add(1, Ordering::Relaxed);
        Item::Lagged
    }

    /// Takes a live event in order: skips what was already delivered, and fills a hole from history (a broker
    /// that lost part of its feed) rather than skipping it.
    async fn accept(&mut self, event: Arc<RoomEvent>) -> Option<Item> {
        if event.seq <= self.last {
            return None;
        }
        if event.seq == self.last + 1 {
            self.last = event.seq;
            return Some(self.hand_out(Delivery::Event(event)));
        }
        match self.catch_up().await {
            Ok(backlog) => {
                self.queue_backlog(backlog);
                if self.last + 1 < event.seq {
                    // Not in history either: the client hears of the gap, and the channel goes on past it.
                    let (from, to) = (self.last + 1, event.seq - 1);
                    self.pending.push_back(Delivery::Control { json: control::gap(from, to), resume_after: to });
                    self.last = to;
                }
                let next = self.pending.pop_front()?;
                Some(self.hand_out(next))
            }
            Err(error) => {
                tracing::warn!(%error, "could not fill a hole in the feed; closing the channel so it resumes");
                Some(Item::Lagged)
            }
        }
    }
}

/// Most events a channel takes from the ring under one read lock.
const RUN: usize = 64;

/// What the ring holds after a channel's cursor.
enum Taken {
    /// Nothing newer.
    Nothing,
    /// A run of events in sequence, now in the channel's queue.
    Queued,
    /// The next event in the ring is not the next in sequence (the broker's feed lost some): filled from history.
    Hole(Arc<RoomEvent>),
    /// The channel fell more than `--send-queue` events behind.
    Lagged,
}

/// Appends the backlog's gap notice (if any) and events to `items`; returns the new cursor.
fn push_backlog(items: &mut Vec<Delivery>, backlog: Backlog) -> Seq {
    let mut last = backlog.after;
    match backlog.missed {
        Some(Missed::Gap { from, to }) => {
            items.push(Delivery::Control { json: control::gap(from, to), resume_after: to });
            last = to;
        }
        Some(Missed::Ahead) => {
            items.push(Delivery::Control { json: control::reset(last, backlog.head), resume_after: backlog.head });
            last = backlog.head;
        }
        Some(Missed::Epoch { since, to }) => {
            items.push(Delivery::Control { json: control::epoch_gap(since, to, &backlog.epoch), resume_after: to });
            last = to;
        }
        None => {}
    }
    for event in backlog.events {
        if event.seq > last {
            last = event.seq;
            items.push(Delivery::Event(event));
        }
    }
    last
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.room.release(&self.token, self.generation);
        // Remember where this channel stopped, so a resume without `since=` continues from here.
        let room = self.room.clone();
        let token = std::mem::take(&mut self.token);
        let cursor = self.delivered;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let saves = self.room.shared.saves.clone();
            handle.spawn(saves.track_future(async move {
                // The lease runs from when the channel closed, not from the reaper's last tick.
                let _ = room.shared.broker.save_cursor(&token, cursor, room.lease_end()).await;
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Draft, EventBody, EventKind};

    fn ring(seqs: &[Seq]) -> Recent {
        let event = |seq| {
            let draft = Draft::new(EventKind::Message, "a".into(), "a".into(), "m".into());
            Arc::new(RoomEvent::new(&EventBody::stamp(draft, seq, 1)))
        };
        Recent { events: seqs.iter().map(|&seq| event(seq)).collect(), dropped: 0 }
    }

    /// `after` agrees with a search of the ring for every cursor, with and without holes, and `run_after` is the
    /// events numbered cursor + 1, cursor + 2, ... that the ring holds without a hole, at most `max`.
    #[test]
    fn where_the_events_after_a_cursor_start() {
        for seqs in [&[][..], &[5], &[5, 6, 7, 8], &[5, 6, 9, 10, 11], &[3, 7], &[1, 2, 3, 5, 6, 7, 20]] {
            let recent = ring(seqs);
            for cursor in 0..25 {
                let searched = recent.events.partition_point(|event| event.seq <= cursor);
                assert_eq!(recent.after(cursor), searched, "ring {seqs:?}, cursor {cursor}");
                for max in [1, 2, 64] {
                    let run: Vec<Seq> = recent.run_after(cursor, max).map(|event| event.seq).collect();
                    let expected: Vec<Seq> = (cursor + 1..).take_while(|seq| seqs.contains(seq)).take(max).collect();
                    assert_eq!(run, expected, "ring {seqs:?}, cursor {cursor}, max {max}");
                }
            }
        }
    }
}
