//! The chat room core: events, sessions and the one fan-out point.

pub mod event;
pub mod room;
pub mod session;

pub use event::{EventKind, Notice, RoomEvent, Seq};
pub use room::{Batch, Channel, Delivery, Item, Polled, Room};
pub use session::{Participant, Presence, SessionRecord, Transport, PRESENCE_MAX};
