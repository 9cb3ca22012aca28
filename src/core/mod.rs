//! The room: the one fan-out point, the sessions' service, the per-client limits, and the [`Broker`] trait it
//! keeps its shared state behind.
//!
//! The room's vocabulary (events, sessions, deliveries) lives one layer down, in [`crate::model`]; the names the
//! transports use most are re-exported here.

pub mod broker;
mod channel;
pub mod clients;
pub mod nickname;
mod open;
mod rate;
mod ring;
pub mod room;
mod service;
mod tasks;

pub use crate::model::{Delivery, EventKind, Notice, RoomEvent, Seq};
pub use crate::model::{Participant, Presence, SessionRecord, Transport, PRESENCE_MAX};
pub use broker::Broker;
pub use channel::{Batch, Channel, Item};
pub use clients::client_of;
pub use open::Polled;
pub use room::Room;
pub use service::Posted;
