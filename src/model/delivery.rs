//! What a channel or a poll hands a transport to write: a room event, or a per-client control event.

use std::sync::Arc;

use crate::model::event::{RoomEvent, Seq};

/// One thing to deliver to a client.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A room event.
    Event(Arc<RoomEvent>),
    /// A per-client control event (already JSON), such as `gap`: the client's cursor moves to `resume_after`
    /// (past the hole), or stays where it is if that is lower.
    Control {
        /// The event's JSON text.
        json: String,
        /// The cursor after this event (`0` for events that do not move it).
        resume_after: Seq,
    },
}

impl Delivery {
    /// The client's cursor once this is delivered.
    pub fn cursor(&self) -> Seq {
        match self {
            Delivery::Event(event) => event.seq,
            Delivery::Control { resume_after, .. } => *resume_after,
        }
    }

    /// The JSON text to write.
    pub fn json(&self) -> &[u8] {
        match self {
            Delivery::Event(event) => event.json.as_bytes(),
            Delivery::Control { json, .. } => json.as_bytes(),
        }
    }
}
