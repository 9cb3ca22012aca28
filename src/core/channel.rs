//! A session's live receiving channel: the retained backlog after its cursor, then live events read from the
//! ring, in order, with no duplicate and no hole; the broker's outages, the keep-alive beat, a lag and the end of
//! the channel arrive through it too.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::core::room::{Pulse, Room};
use crate::error::AppError;
use crate::model::{control, Backlog, BrokerError, Delivery, Epoch, Missed, RoomEvent, Seq, Transport};

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
    pub(super) room: Room,
    /// The session's token: all a channel needs to know of its session once open.
    pub(super) token: String,
    /// The room's epoch when the channel opened (or last caught up from history).
    pub(super) epoch: Epoch,
    pub(super) transport: Transport,
    pub(super) generation: u64,
    /// Wakes the channel when an event enters the ring.
    pub(super) added: watch::Receiver<()>,
    /// Deliveries queued but not yet handed out: a backlog, or a run taken from the ring.
    pub(super) pending: VecDeque<Delivery>,
    /// The newest sequence number queued or delivered (or skipped past a gap): the de-duplication mark.
    pub(super) last: Seq,
    /// The client's cursor: the newest sequence number handed out by this channel.
    pub(super) delivered: Seq,
    pub(super) ended: CancellationToken,
    /// The broker feed's health and the keep-alive beat (see [`Pulse`]).
    pub(super) pulse: watch::Receiver<Pulse>,
    /// Whether this channel has told its client the feed is down.
    pub(super) seen_down: bool,
    /// The last keep-alive beat this channel handed out.
    pub(super) seen_beat: u64,
    /// Set when the feed came back after an outage: history must be re-read from `last` before waiting for
    /// live events (kept until that read succeeds, so a cancelled `next` retries it).
    pub(super) stale: bool,
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) _open: crate::metering::OpenGuard,
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

    pub(super) fn queue_backlog(&mut self, backlog: Backlog) {
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
            if let Some(item) = self.take(Mode::Next).await {
                return item;
            }
            if let Some(item) = self.wait().await {
                return item;
            }
        }
    }

    /// What is ready now, without waiting for new events (it may read history to fill a hole): a stream that
    /// paces its writes collects with it what arrived while it waited. A stream kept busy by its pacing never
    /// waits in [`Channel::next`]: it hears here that it is over.
    pub async fn ready(&mut self) -> Option<Item> {
        self.take(Mode::Ready).await
    }

    /// The one path of [`Channel::next`] and [`Channel::ready`]: what is queued, else history to re-read after an
    /// outage, else the channel's end, else the ring after the cursor (filling a hole from history, or a lag).
    /// `None` when nothing is ready, or (for `next`) when a signal of the pulse must be heard first.
    async fn take(&mut self, mode: Mode) -> Option<Item> {
        loop {
            if let Some(delivery) = self.pending.pop_front() {
                return Some(self.hand_out(delivery));
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
                        return Some(Item::Lagged);
                    }
                }
            }
            if let Some(end) = self.ending() {
                return Some(end);
            }
            if mode == Mode::Next {
                // Events already in the ring are taken without registering a waker on every signal (which costs
                // a few locks per call); a changed pulse is heard first, in `wait`.
                if self.pulse.has_changed().unwrap_or(false) {
                    return None;
                }
                // Marked as seen before the ring is read: an event added after the read wakes `wait`.
                self.added.mark_unchanged();
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

    /// Waits for an event in the ring, a change of the pulse (the feed's health, the beat) or the channel's end.
    /// `Some` when the wait itself has something to hand out; `None` when [`Channel::take`] should look again.
    async fn wait(&mut self) -> Option<Item> {
        tokio::select! {
            biased;
            // `ended` is a child of the server's shutdown token, so it covers both: a wait on the shutdown
            // token itself would have every channel of the process take that one token's lock.
            () = self.ended.cancelled() => Some(self.ending().unwrap_or(Item::Replaced)),
            Ok(()) = self.pulse.changed() => {
                let pulse = self.pulse.borrow_and_update().clone();
                match (pulse.down, self.seen_down) {
                    // The client hears of the outage at once; its cursor does not move.
                    (Some(why), false) => {
                        self.seen_down = true;
                        let json = AppError::Unavailable(why).to_event();
                        return Some(self.hand_out(Delivery::Control { json, resume_after: 0 }));
                    }
                    (None, true) => {
                        self.seen_down = false;
                        self.stale = true;
                    }
                    _ => {}
                }
                if pulse.beat != self.seen_beat {
                    self.seen_beat = pulse.beat;
                    return Some(Item::Beat);
                }
                None
            }
            added = self.added.changed() => added.is_err().then_some(Item::Shutdown),
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

/// Who asks [`Channel::take`]: [`Channel::next`], which waits when nothing is ready and so hears the pulse first,
/// or [`Channel::ready`], which never waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Next,
    Ready,
}

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
pub(super) fn push_backlog(items: &mut Vec<Delivery>, backlog: Backlog) -> Seq {
    let mut last = backlog.after;
    match backlog.missed {
        Some(Missed::Gap { from, to }) => {
            items.push(Delivery::Control { json: control::gap(from, to), resume_after: to });
            last = to;
        }
        Some(Missed::Skipped { from, to }) => {
            items.push(Delivery::Control { json: control::skipped(from, to), resume_after: to });
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
    //! `Channel` against a real room on the memory broker: what a client resuming, falling behind or being
    //! replaced receives, item by item.

    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::Value;
    use tokio::time::timeout;

    use super::{Channel, Item};
    use crate::broker::MemoryBroker;
    use crate::config::Config;
    use crate::core::Room;
    use crate::metering::Metering;
    use crate::model::{Delivery, Seq, Transport};

    const WAIT: Duration = Duration::from_secs(5);

    /// A room on a memory broker retaining `history` events, with no rate limit.
    async fn room(history: usize, config: Config) -> Room {
        let config = Config { rate_limit: 0.0, ..config };
        Room::start(Arc::new(MemoryBroker::new(history)), config, Metering::default()).await.unwrap()
    }

    /// A participant who joined (the join notice is seq 1 in a new room) and said `texts` (seq 2, 3, ...).
    async fn speaker(room: &Room, texts: usize) -> String {
        let (record, _) = room.join(Transport::Sse, None, false).await.unwrap();
        for i in 0..texts {
            room.post(&record.token, &format!("text {i}")).await.unwrap();
        }
        record.token
    }

    async fn next(channel: &mut Channel) -> Item {
        timeout(WAIT, channel.next()).await.expect("the channel hands something out")
    }

    /// The seq of a room event handed out, or the JSON of a control event.
    fn delivered(item: Item) -> Result<Seq, Value> {
        match item {
            Item::Deliver(Delivery::Event(event)) => Ok(event.seq),
            Item::Deliver(Delivery::Control { json, .. }) => Err(serde_json::from_str(&json).unwrap()),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    /// A channel opened after a cursor hands out the retained events after it, in order, then waits, then hands
    /// out what is published later; its cursor is the last one handed out.
    #[tokio::test]
    async fn resumes_after_its_cursor_then_goes_live() {
        let room = room(100, Config::default()).await;
        let token = speaker(&room, 3).await;
        let (mut channel, _) = room.open(&token, Transport::Sse, Some(2), None).await.unwrap();
        assert_eq!(delivered(next(&mut channel).await), Ok(3));
        assert_eq!(delivered(next(&mut channel).await), Ok(4));
        assert!(channel.ready().await.is_none(), "nothing else is ready");
        assert!(timeout(Duration::from_millis(50), channel.next()).await.is_err(), "and next waits");
        let (item, posted) = tokio::join!(next(&mut channel), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            room.post(&token, "later").await.unwrap()
        });
        assert_eq!(delivered(item), Ok(posted.0));
        assert_eq!(channel.cursor(), 5);
    }

    /// A cursor older than the retained history hears of the hole first (`gap`, from the cursor to the oldest
    /// retained event), then gets what is retained.
    #[tokio::test]
    async fn a_cursor_behind_the_history_hears_of_the_gap() {
        let room = room(2, Config::default()).await;
        let token = speaker(&room, 3).await;
        let (mut channel, _) = room.open(&token, Transport::Sse, Some(0), None).await.unwrap();
        let gap = delivered(next(&mut channel).await).unwrap_err();
        assert_eq!((gap["type"].as_str(), gap["from"].as_u64(), gap["to"].as_u64()), (Some("gap"), Some(1), Some(2)));
        assert_eq!(delivered(next(&mut channel).await), Ok(3));
        assert_eq!(delivered(next(&mut channel).await), Ok(4));
    }

    /// A cursor from another epoch of the room hears that the room started over, then gets the room from its
    /// oldest retained event; a cursor ahead of the room is moved back to its head.
    #[tokio::test]
    async fn a_cursor_of_another_epoch_or_ahead_starts_again() {
        let room = room(100, Config::default()).await;
        let token = speaker(&room, 2).await;
        let (mut channel, _) = room.open(&token, Transport::Sse, Some(2), Some("another-room")).await.unwrap();
        let gap = delivered(next(&mut channel).await).unwrap_err();
        assert_eq!((gap["reason"].as_str(), gap["to"].as_u64()), (Some("epoch"), Some(0)));
        assert_eq!(gap["epoch"].as_str(), Some(channel.epoch()));
        assert_eq!(delivered(next(&mut channel).await), Ok(1), "from the oldest retained event");
        drop(channel);

        let (mut ahead, _) = room.open(&token, Transport::Sse, Some(99), None).await.unwrap();
        let reset = delivered(next(&mut ahead).await).unwrap_err();
        assert_eq!((reset["from"].as_u64(), reset["to"].as_u64()), (Some(4), Some(99)));
        assert_eq!(ahead.cursor(), 3, "the cursor is the room's head");
    }

    /// A channel that falls more than `--send-queue` events behind the ring is lagged, and counted as a slow
    /// consumer of its technique.
    #[tokio::test]
    async fn a_slow_consumer_is_lagged_and_counted() {
        let room = room(100, Config { send_queue: 4, ..Config::default() }).await;
        let token = speaker(&room, 0).await;
        let (mut channel, _) = room.open(&token, Transport::Sse, Some(1), None).await.unwrap();
        for i in 0..10 {
            room.post(&token, &format!("unread {i}")).await.unwrap();
        }
        assert!(matches!(next(&mut channel).await, Item::Lagged));
        assert_eq!(room.metering().of(Transport::Sse).slow_consumers.load(Ordering::Relaxed), 1);
    }

    /// A batch collects what is ready after its first item, in order; `ready` then has nothing, and the cursor
    /// is the batch's last.
    #[tokio::test]
    async fn a_batch_takes_what_is_ready() {
        let room = room(100, Config::default()).await;
        let token = speaker(&room, 5).await;
        let (mut channel, _) = room.open(&token, Transport::Ws, Some(0), None).await.unwrap();
        let first = next(&mut channel).await;
        let batch = channel.batch_from(first, 4).await;
        let seqs: Vec<Seq> = batch.deliveries.iter().map(Delivery::cursor).collect();
        assert_eq!((seqs, batch.end.is_none()), (vec![1, 2, 3, 4], true));
        let first = next(&mut channel).await;
        let rest = channel.batch_from(first, 64).await;
        assert_eq!(rest.deliveries.iter().map(Delivery::cursor).collect::<Vec<_>>(), vec![5, 6]);
        assert!(channel.ready().await.is_none());
        assert_eq!(channel.cursor(), 6);
    }

    /// A newer channel of the same session replaces the older one (which hands out what it had queued first); the
    /// server's stop ends a channel; a dropped channel saves its cursor, where a poll without `since` goes on.
    #[tokio::test]
    async fn a_channel_ends_when_replaced_or_stopped_and_saves_its_cursor() {
        let room = room(100, Config::default()).await;
        let token = speaker(&room, 2).await;
        let (mut older, _) = room.open(&token, Transport::Sse, Some(2), None).await.unwrap();
        let (mut newer, _) = room.open(&token, Transport::Ws, Some(0), None).await.unwrap();
        assert_eq!(delivered(next(&mut older).await), Ok(3), "its queued backlog");
        assert!(matches!(next(&mut older).await, Item::Replaced));
        for seq in 1..=3 {
            assert_eq!(delivered(next(&mut newer).await), Ok(seq));
        }
        drop(older);
        drop(newer);
        room.post(&token, "after").await.unwrap();
        // The saves run on tasks of their own: `flush` waits for them.
        room.flush().await.unwrap();
        let polled = room.poll(&token, Transport::Poll, None, None).await.unwrap();
        assert_eq!(polled.deliveries.iter().map(Delivery::cursor).collect::<Vec<_>>(), vec![4], "after the saved 3");

        let (mut open, _) = room.open(&token, Transport::Sse, None, None).await.unwrap();
        room.shutdown();
        assert!(matches!(next(&mut open).await, Item::Shutdown));
    }
}
