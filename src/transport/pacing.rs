//! Pacing: while the server is behind, a stream writes what arrived at one shared tick rather than at every
//! event ([`Pacer`]).

use std::sync::LazyLock;

use crate::core::Room;

/// Most events written together by a stream that is not paced: enough to empty a burst in few writes, few
/// enough that the first of them is not held back long.
const BATCH: usize = 64;

/// Where the pacing ticks of every stream are counted from.
static TICKS: LazyLock<tokio::time::Instant> = LazyLock::new(tokio::time::Instant::now);

/// `--flush-interval-ms` for one stream (a WebSocket or an SSE response) while the server is behind
/// (`--pace-when-busy`), and for long polls ([`Pacer::tick`]): after a write, the stream sleeps for the interval and
/// then writes whatever arrived meanwhile in one go, instead of waking for every event. When nothing arrived it
/// goes back to waiting for the next event, which is written at once: a quiet room pays no delay and no timer.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    /// When the stream may write again, if it wrote less than an interval ago.
    next: Option<tokio::time::Instant>,
}

impl Pacer {
    /// The interval a stream of `room` waits after a write now: `--flush-interval-ms` while the server is behind
    /// (see [`crate::metering::busy::Busy`]), else zero.
    fn interval(room: &Room) -> std::time::Duration {
        if room.metering().busy().paced() {
            room.config().flush_interval()
        } else {
            std::time::Duration::ZERO
        }
    }

    /// Whether the stream is between a write and the end of its interval.
    pub(crate) fn pacing(&self) -> bool {
        self.next.is_some()
    }

    /// Resolves at the end of the interval (at once when not pacing), which ends the pacing.
    pub(crate) async fn ready(&mut self) {
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
            self.next = None;
        }
    }

    /// Notes that a write just went out: when the server is busy, the next may go at the next tick of the
    /// interval. Ticks are on one clock for every stream of the process, so busy streams wake together, and one
    /// worker thread woken once writes many of them, rather than each stream waking a parked thread at its own
    /// moment.
    pub(crate) fn wrote(&mut self, room: &Room) {
        self.next = Self::next_tick(room);
    }

    /// The next tick of the interval while the server is busy; `None` when it is not.
    fn next_tick(room: &Room) -> Option<tokio::time::Instant> {
        let interval = Self::interval(room).as_nanos();
        if interval == 0 {
            return None;
        }
        let now = tokio::time::Instant::now();
        let into_tick = now.duration_since(*TICKS).as_nanos() % interval;
        Some(now + std::time::Duration::from_nanos((interval - into_tick) as u64))
    }

    /// For a long poll about to answer with events (found waiting, or the one it was held for): while the server
    /// is busy, waits for the next tick, so the answer carries everything that arrived until then, as a paced
    /// stream's write does, and a poller gets at most one answer per tick. Returns at once when it is not busy.
    pub(crate) async fn tick(room: &Room) {
        if let Some(next) = Self::next_tick(room) {
            tokio::time::sleep_until(next).await;
        }
    }

    /// Most deliveries one write may carry: everything queued while the server is busy (the stream waited for
    /// them), else [`BATCH`].
    pub(crate) fn batch(room: &Room) -> usize {
        if Self::interval(room).is_zero() {
            BATCH
        } else {
            room.config().send_queue as usize
        }
    }
}
