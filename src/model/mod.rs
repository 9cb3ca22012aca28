//! The room's vocabulary: sequence numbers, events, sessions, deliveries, what a store answers, and the errors of
//! a store. Every other layer speaks these words; this one imports nothing else of the crate (no broker, no
//! transport, no HTTP error), so it is the leaf every import points down to.

pub mod delivery;
pub mod error;
pub mod event;
pub mod history;
pub mod send;
pub mod session;

pub use delivery::Delivery;
pub use error::BrokerError;
pub use event::{civil_date, control, now_ms, Draft, EventBody, EventKind, Json, Notice, RoomEvent, Seq};
pub use history::{new_epoch, Backlog, Epoch, FeedItem, Missed};
pub use send::{Published, SendKey};
pub use session::{Participant, Presence, SessionRecord, Transport, Visit, PRESENCE_MAX};
