//! The room: the one fan-out point of this process.
//!
//! Every transport talks to a [`Room`]: [`Room::join`], [`Room::post`], [`Room::open`] (a receiving channel
//! that resumes from a cursor), [`Room::poll`], [`Room::leave`]. The broker feeds each room event once into a
//! ring of recent events, and a `watch` wakes the channels waiting for one; every channel reads the ring from its
//! own cursor, a run of events under one read lock, and writes the events' pre-serialised bytes. Fan-out costs
//! the sender one ring slot and one wake-up, whatever the number of channels, and never holds a lock while a
//! socket is written.
//!
//! This file holds the handle, what it shares, and the fan-out itself. The rest of the room, one idea a file:
//! `service.rs` (join, send, leave, who is online), `open.rs` (opening a channel, answering a poll),
//! `channel.rs` ([`Channel`](crate::core::Channel)), `ring.rs` (the ring of recent events), `rate.rs` (the
//! per-session rate limit) and `tasks.rs` (the feed pump, the lease reaper, the crowd announcer, the beat).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use foldhash::HashMap;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::broker::{Broker, Sequenced};
use crate::core::clients::Clients;
use crate::core::rate::Buckets;
use crate::core::ring::Recent;
use crate::error::AppError;
use crate::metering::Metering;
use crate::model::{now_ms, Backlog, BrokerError, Draft, Epoch, Published, RoomEvent, SendKey, Seq};

/// A handle on the room; clones share it.
#[derive(Clone)]
pub struct Room {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) broker: Arc<dyn Broker>,
    /// The fan-out: the newest `--send-queue` events, which every channel reads from its own cursor. A channel
    /// more than that behind is lagged.
    pub(super) recent: RwLock<Recent>,
    /// Bumped once each event is in `recent`: a channel with nothing left to read waits for it. Its receiver
    /// count is the number of live channels.
    pub(super) added: watch::Sender<()>,
    /// The newest sequence number fanned out here (read without the lock).
    pub(super) head: AtomicU64,
    /// Serialises fan-out so events enter the ring in sequence order, whether they come from the broker's
    /// feed or straight from a local publish. A `std` mutex: the section is a comparison, a ring push and a
    /// `watch` bump, none of which waits.
    pub(super) fanout_order: Mutex<()>,
    /// The broker feed's health and the keep-alive beat, which every live channel watches.
    pub(super) pulse: watch::Sender<Pulse>,
    pub(super) config: Config,
    /// Live channels and rate buckets of this process. A `std` mutex: every section is a map operation and never
    /// awaits, so it is cheaper than an async lock and cannot be held across a suspension point.
    pub(super) local: Mutex<Local>,
    /// Live receiving channels allowed (`--max-connections`).
    pub(super) live: Arc<Semaphore>,
    pub(super) shutdown: CancellationToken,
    pub(super) metering: Metering,
    /// Arrivals and departures not yet announced (rooms above `--coalesce-above`).
    pub(super) crowd: Crowd,
    /// The cursor saves of closed channels still running: [`Room::flush`] waits for them.
    pub(super) saves: TaskTracker,
    /// The per-client limits (`--max-sessions-per-client`, `--client-rate-limit`).
    pub(super) clients: Clients,
}

/// What live channels watch besides events, in one `watch` so that waiting costs one registration.
#[derive(Debug, Clone, Default)]
pub(super) struct Pulse {
    /// Whether the broker's feed is down (`Some(why)`) or up (`None`), from its `Down`/`Up` items: channels
    /// tell their client when it goes down and re-read history from their cursor when it is back.
    pub(super) down: Option<String>,
    /// The keep-alive beat, counting up every `--keepalive` seconds.
    pub(super) beat: u64,
}

#[derive(Default)]
pub(super) struct Crowd {
    pub(super) joined: AtomicU64,
    pub(super) left: AtomicU64,
}

#[derive(Default)]
pub(super) struct Local {
    pub(super) channels: HashMap<String, LiveChannel>,
    pub(super) buckets: Buckets,
    pub(super) generation: u64,
}

pub(super) struct LiveChannel {
    pub(super) generation: u64,
    /// Cancelled when a newer channel takes the session over, or the session leaves.
    pub(super) ended: CancellationToken,
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

    pub(super) fn local(&self) -> MutexGuard<'_, Local> {
        self.shared.local.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands an event to every local receiver, in sequence order. An event published here is fanned out at
    /// once if it is the next one (`direct`), without waiting for it to come back through the broker's feed: a
    /// sender's own echo is then queued before it reads its next text, and local delivery skips a task hop.
    /// Anything else waits for the feed, which brings every event in order; what was already sent is skipped.
    pub(super) fn fan_out(&self, event: Arc<RoomEvent>, direct: bool) {
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

    pub(super) fn recent(&self) -> RwLockReadGuard<'_, Recent> {
        self.shared.recent.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn recent_mut(&self) -> std::sync::RwLockWriteGuard<'_, Recent> {
        self.shared.recent.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes through the broker and fans the event out here at once when it is next in order.
    pub(super) async fn publish(&self, draft: Draft) -> Result<Arc<RoomEvent>, BrokerError> {
        let event = self.shared.broker.publish(draft).await?;
        self.fan_out(event.clone(), true);
        Ok(event)
    }

    /// Numbers `sends` in this order ([`Broker::sequence_all`]) and fans each new event out as
    /// [`Room::publish`] does, without waiting for them to be durable ([`Sequenced::durable`]).
    pub(super) async fn sequence_all(
        &self,
        sends: Vec<(Draft, Option<SendKey<'_>>)>,
    ) -> Result<Sequenced, BrokerError> {
        let sequenced = self.shared.broker.sequence_all(sends).await?;
        for published in &sequenced.published {
            if let Published::Fresh(event) = published {
                self.fan_out(event.clone(), true);
            }
        }
        Ok(sequenced)
    }

    /// [`Room::publish`] under a send's key: a repeated key publishes nothing and answers the first `seq`.
    pub(super) async fn publish_once(&self, draft: Draft, key: SendKey<'_>) -> Result<Seq, BrokerError> {
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
    pub(super) async fn in_epoch(
        &self,
        backlog: Backlog,
        theirs: Option<&str>,
        max: usize,
    ) -> Result<Backlog, AppError> {
        match theirs {
            Some(theirs) if theirs != &*backlog.epoch => {
                let since = backlog.after;
                Ok(self.shared.broker.since(0, max).await?.restarted(since))
            }
            _ => Ok(backlog),
        }
    }

    /// When a lease that starts now ends (ms since the epoch).
    pub(super) fn lease_end(&self) -> u64 {
        now_ms() + self.shared.config.lease().as_millis() as u64
    }
}
