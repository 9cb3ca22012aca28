//! The room's background tasks, one per concern, each ending when the server stops: the feed pump (the broker's
//! events into the ring), the lease reaper, the crowd announcer of a big room, and the keep-alive beat.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::core::room::Room;
use crate::model::{now_ms, Draft, FeedItem};

/// Most sessions holding client seats the reaper checks at one tick (one broker round trip): a session that
/// ended through another process frees its seat here within about `sessions / CHECK_SEATS` ticks.
const CHECK_SEATS: usize = 1024;

/// How often a big room hears who came and went.
const CROWD_EVERY: Duration = Duration::from_secs(1);

impl Room {
    /// Forwards the broker's feed into the fan-out, in order.
    pub(super) async fn pump(self, mut feed: tokio::sync::mpsc::UnboundedReceiver<FeedItem>) {
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

    /// After an outage: if the store came back with fewer events than were fanned out here (a Redis restarted
    /// without persistence), numbering starts again below our head, and [`Room::fan_out`] would skip every new
    /// event as already sent. Follow the store instead; receivers re-reading from their cursors get a `gap`
    /// notice that the room was reset.
    pub(super) async fn rebase_head(&self) {
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

    /// Renews the leases of sessions with a live channel here, and announces sessions whose lease ran out.
    pub(super) async fn reap(self) {
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
                self.local().buckets.forget_quiet_since(horizon);
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

    /// Once a second, while there are any, announces how many participants came and went without a notice of
    /// their own (`12 人来了，3 人走了`). The event's `clientcount` is exact, as on every event.
    pub(super) async fn announce_crowd(self) {
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
    pub(super) async fn beat(self) {
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
}
