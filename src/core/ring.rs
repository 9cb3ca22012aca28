//! The ring of recent events: the newest `--send-queue` events in sequence order, which every live channel of
//! this process reads from its own cursor. A channel whose cursor fell out of it is lagged.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::model::{RoomEvent, Seq};

/// The ring of recent events, in sequence order (with the holes the broker's feed may leave).
#[derive(Default)]
pub(super) struct Recent {
    pub(super) events: VecDeque<Arc<RoomEvent>>,
    /// The newest sequence number pushed out of the ring (0 when none was): a channel whose cursor is below it
    /// missed it.
    pub(super) dropped: Seq,
}

impl Recent {
    /// Where the events after `cursor` start. Without holes an event's place follows from its number, which
    /// is checked; a ring with holes is searched.
    pub(super) fn after(&self, cursor: Seq) -> usize {
        let guess = self.events.front().map_or(0, |oldest| (cursor + 1).saturating_sub(oldest.seq) as usize);
        let fits = |at: usize| at == 0 || self.events.get(at - 1).is_some_and(|event| event.seq <= cursor);
        if guess <= self.events.len() && fits(guess) && self.events.get(guess).is_none_or(|event| event.seq > cursor) {
            return guess;
        }
        self.events.partition_point(|event| event.seq <= cursor)
    }

    /// The run of events that follow `cursor` in sequence, with no hole (at most `max`).
    pub(super) fn run_after(&self, cursor: Seq, max: usize) -> impl Iterator<Item = &Arc<RoomEvent>> {
        self.events
            .range(self.after(cursor)..)
            .take(max)
            .zip(cursor + 1..)
            .take_while(|(event, seq)| event.seq == *seq)
            .map(|(event, _)| event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Draft, EventBody, EventKind, RoomEvent, Seq};
    use std::sync::Arc;

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
