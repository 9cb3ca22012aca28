//! Where the room's shared state lives: the implementations of [`Broker`](crate::core::Broker).
//!
//! A broker owns what must be agreed by every process serving the room: the sequence counter and the event
//! history (appended atomically together), the sessions with their leases, and the guest counter. It feeds every
//! event, in sequence order, to the one fan-out point of each process ([`crate::core::Room`]); transports never
//! talk to it. [`durable::DurableBroker`] (the default) keeps it in this process and in an embedded store on disk,
//! so that it survives a restart or a crash; [`memory::MemoryBroker`] keeps it in this process only;
//! [`redis::RedisBroker`] keeps it in Redis, shared by every process pointed at it.

pub mod durable;
pub mod memory;
pub mod redis;

pub use durable::DurableBroker;
pub use memory::MemoryBroker;
pub use redis::RedisBroker;
