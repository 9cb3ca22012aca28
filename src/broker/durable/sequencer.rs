//! The sequencer thread: numbers texts within the reservation and appends them to the room in memory, which
//! feeds them to their readers at once, then passes them on to the committer.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use super::{stopped, unwritable, Job, Progress, Step, Stored};
use crate::broker::MemoryBroker;
use crate::model::{BrokerError, Draft, EventBody, Published, RoomEvent, Seq};

/// The thread that numbers texts and appends them to the room in memory (which feeds them to the fan-out).
pub(super) struct Sequencer {
    pub(super) memory: Arc<MemoryBroker>,
    pub(super) progress: Arc<Progress>,
    pub(super) steps: std_mpsc::Sender<Step>,
}

impl Sequencer {
    /// Sequences what publishers hand over until the broker is dropped.
    pub(super) fn run(self, queue: std_mpsc::Receiver<Job>) {
        while let Ok(job) = queue.recv() {
            match job {
                // A dropped reply answers `stopped()`: the committer is gone only when the store is closing.
                Job::Sync(reply) => {
                    let _ = self.steps.send(Step::Sync(reply));
                }
                Job::Publish(drafts, numbered, written) => match self.sequence(drafts) {
                    Ok((events, answers)) => {
                        // The publisher may number its next drafts now, while these are written.
                        let _ = numbered.send(Ok(answers));
                        let _ = self.steps.send(Step::Publish(events, written));
                    }
                    Err(error) => {
                        let _ = numbered.send(Err(error));
                    }
                },
            }
        }
    }

    /// Numbers and stamps `drafts` (those whose key was used before only answer that send's `seq`) within the
    /// reservation, and appends them to the room in memory. Refused, before anything is numbered, while the
    /// store cannot be written.
    fn sequence(&self, drafts: Vec<(Draft, Option<String>)>) -> Result<(Vec<Stored>, Vec<Published>), BrokerError> {
        // Only this thread appends, so the head cannot move until the events below are appended.
        let (head, online) = self.memory.head_and_online();
        self.wait_for(head + drafts.len() as u64)?;
        // Only this thread appends keys too: a key is used if memory remembers it or an earlier draft here has it.
        let mut batch: HashMap<String, Seq> = HashMap::new();
        let mut events: Vec<Stored> = Vec::with_capacity(drafts.len());
        let mut answers = Vec::with_capacity(drafts.len());
        let mut next = head + 1;
        for (draft, key) in drafts {
            let known = key.as_deref().and_then(|key| self.memory.sent(key).or_else(|| batch.get(key).copied()));
            if let Some(seq) = known {
                answers.push(Published::Repeated(seq));
                continue;
            }
            if let Some(key) = &key {
                batch.insert(key.clone(), next);
            }
            let event = Arc::new(RoomEvent::new(&EventBody::stamp(draft, next, online)));
            answers.push(Published::Fresh(event.clone()));
            events.push((event, key));
            next += 1;
        }
        self.memory.append(&events);
        Ok((events, answers))
    }

    /// Waits until the reservation on disk reaches `wanted` (asking the committer for it once), or fails while
    /// the store cannot be written.
    fn wait_for(&self, wanted: Seq) -> Result<(), BrokerError> {
        let mut state = self.progress.lock();
        let mut asked = false;
        loop {
            if let Some(why) = &state.failing {
                return Err(unwritable(why));
            }
            if state.reserved >= wanted {
                return Ok(());
            }
            if !asked {
                self.steps.send(Step::Reserve(wanted)).map_err(|_| stopped())?;
                asked = true;
            }
            state = self.progress.moved.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}
