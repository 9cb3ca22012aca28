//! The chat room core: events, sessions, the one fan-out point and the per-client limits.

pub mod clients;
pub mod event;
pub mod room;
pub mod session;

pub use clients::client_of;
pub use event::{EventKind, Notice, RoomEvent, Seq};
pub use room::{Batch, Channel, Delivery, Item, Polled, Room};
pub use session::{Participant, Presence, SessionRecord, Transport, PRESENCE_MAX};
