//! What a store answers when a cursor asks for history: the retained events after it, the hole (if any), and
//! the epoch its numbers belong to; and what a store feeds to each process's fan-out point.

use std::sync::Arc;

use crate::model::event::{RoomEvent, Seq};

/// What is retained after a cursor.
#[derive(Debug, Default)]
pub struct Backlog {
    /// The room's epoch at the time of reading ([`crate::core::Broker::epoch`]): a cursor is a position in this numbering.
    pub epoch: Epoch,
    /// The cursor the backlog was read after: the one asked for, or the session's saved one ([`Visit::since`](crate::model::Visit::since)).
    /// A receiver's cursor starts here.
    pub after: Seq,
    /// The newest sequence number at the time of reading.
    pub head: Seq,
    /// Set when the cursor cannot be served without a hole: the client must be told.
    pub missed: Option<Missed>,
    /// Retained events after the cursor (after the hole, if any), oldest first, at most the asked number.
    pub events: Vec<Arc<RoomEvent>>,
}

/// A cursor the history cannot continue seamlessly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Events `from..=to` fell out of the retained history.
    Gap {
        /// The first missed sequence number.
        from: Seq,
        /// The last missed sequence number.
        to: Seq,
    },
    /// Numbers `from..=to` were skipped when a durable room recovered from a crash: numbers given out before the
    /// crash but never stored (texts readers may have seen whose commit had not finished), or never given out.
    /// Nothing after the cursor was dropped from the history; the room's numbering jumps.
    Skipped {
        /// The first skipped sequence number.
        from: Seq,
        /// The last skipped sequence number.
        to: Seq,
    },
    /// The cursor ([`Backlog::after`]) is ahead of the room: a restarted in-memory room, or a made-up cursor.
    Ahead,
    /// The cursor is a position in another epoch: the room started over since. What follows is the room from its
    /// oldest retained event, which comes after `to`.
    Epoch {
        /// The cursor as the client gave it (a position in its old epoch).
        since: Seq,
        /// The sequence number the events that follow come after (the oldest retained one minus one).
        to: Seq,
    },
}

impl Backlog {
    /// What is retained after `cursor`, from what a store read: its head, the oldest event it retains (`None`
    /// when it retains none) and the retained events after the cursor. Both brokers answer through here, so
    /// they tell a hole and a cursor ahead of the room alike.
    pub(crate) fn read(
        epoch: Epoch,
        cursor: Seq,
        head: Seq,
        oldest: Option<Seq>,
        mut events: Vec<Arc<RoomEvent>>,
    ) -> Backlog {
        if cursor > head {
            return Backlog { epoch, after: cursor, head, missed: Some(Missed::Ahead), events: Vec::new() };
        }
        let first = oldest.unwrap_or(head + 1);
        let mut missed = (cursor + 1 < first).then(|| Missed::Gap { from: cursor + 1, to: first - 1 });
        if missed.is_none() {
            // A hole inside the history is a skip (a durable room's recovery), told when the cursor reaches it:
            // the events before it now, the skip on the next read.
            let next = events.first().map(|event| event.seq);
            if let Some(next) = next.filter(|&next| next > cursor + 1) {
                missed = Some(Missed::Skipped { from: cursor + 1, to: next - 1 });
            }
            if let Some(cut) = events.windows(2).position(|pair| pair[1].seq != pair[0].seq + 1) {
                events.truncate(cut + 1);
            }
        }
        Backlog { epoch, after: cursor, head, missed, events }
    }

    /// Turns a read from the start of the room (cursor 0) into the answer to a cursor of another epoch: the
    /// client is told the room started over ([`Missed::Epoch`]), then gets what is retained from the oldest.
    pub fn restarted(mut self, since: Seq) -> Backlog {
        let to = self.events.first().map_or(self.head, |event| event.seq - 1);
        self.after = to;
        self.missed = Some(Missed::Epoch { since, to });
        self
    }
}

/// The room's epoch: an opaque string that changes whenever its sequence starts over (a new in-memory room, a
/// wiped Redis), so a client can tell "I missed nothing" from "this is another room now". Shared, not copied:
/// every backlog read carries it.
pub type Epoch = Arc<str>;

/// A fresh epoch: 16 random hex digits (64 bits), short because every poll answer carries it.
pub fn new_epoch() -> Epoch {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    Arc::from(format!("{bits:016x}"))
}

/// What a broker feeds to a process's fan-out point.
#[derive(Debug)]
pub enum FeedItem {
    /// A room event, in sequence order.
    Event(Arc<RoomEvent>),
    /// The store went away: events may be missing until [`FeedItem::Up`].
    Down(String),
    /// The store is back; receivers should re-read history from their cursors.
    Up,
}
