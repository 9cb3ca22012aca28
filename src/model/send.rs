//! A send's identity for de-duplication, and what publishing it did.

use crate::model::event::{RoomEvent, Seq};
use std::sync::Arc;

/// A client's name for one send, for de-duplication: the session it is sent as, and the `ref` of a `/ws?ack=1`
/// frame or the `Idempotency-Key` of a POST. Only the same session's same key is a repeat.
#[derive(Debug, Clone, Copy)]
pub struct SendKey<'a> {
    /// The session's secret token.
    pub session: &'a str,
    /// The client's key for this send.
    pub key: &'a str,
}

impl SendKey<'_> {
    /// The key as stored: the session token, a space, the client's key (a token holds no space).
    pub fn stored(&self) -> String {
        let mut stored = String::with_capacity(self.session.len() + 1 + self.key.len());
        stored.push_str(self.session);
        stored.push(' ');
        stored.push_str(self.key);
        stored
    }
}

/// What [`crate::core::Broker::publish_once`] did.
#[derive(Debug, Clone)]
pub enum Published {
    /// The event was appended now.
    Fresh(Arc<RoomEvent>),
    /// The key was used before, within the retained history: nothing was appended; this is the `seq` the first
    /// send got.
    Repeated(Seq),
}

impl Published {
    /// The sequence number the send has: its new event's, or the first send's.
    pub fn seq(&self) -> Seq {
        match self {
            Published::Fresh(event) => event.seq,
            Published::Repeated(seq) => *seq,
        }
    }
}
