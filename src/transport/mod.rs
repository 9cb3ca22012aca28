//! The six doors into the room, one file each, plus what they share.
//!
//! | file | technique |
//! |---|---|
//! | [`seed`] | the seed's WebSocket protocol on `/` |
//! | [`ws`] | WebSocket on `/ws`, with sessions and resume |
//! | [`echo`] | `/echo` (`--echo`): a WebSocket echo for conformance suites |
//! | [`sse`] | Server-Sent Events on `/api/sse` |
//! | [`stream`] | HTTP streaming (NDJSON) on `/api/stream` |
//! | [`iframe`] | the forever iframe on `/api/iframe` |
//! | [`streaming`] | the body the three streaming responses share |
//! | `writer` | the delivery writer of every long-lived technique: pace, batch, encode, write, meter, end |
//! | [`long_poll`] | long polling on `/api/longpoll` |
//! | [`short_poll`] | short polling on `/api/poll` |
//! | [`poll`] | the answer of a poll, short or long |
//! | [`post`] | `POST /api/messages`, the upstream of the five HTTP techniques |
//! | [`sessions`] | join, leave and presence over HTTP |
//! | [`stats`] | the counters: `/api/stats` and `/metrics` |
//! | [`assets`] | the demo page and its files |
//! | [`docs`] | the docs, rendered for the demo's readers |
//! | [`websocket`] | the WebSocket handshake and connection that [`ws`], [`seed`] and [`wire_view`] share |
//! | [`wire_view`] | a session's wire counters, and the live log of what its requests and channel put on the wire |
//!
//! And what every handler shares: [`params`] (the query and headers a transport reads), [`origin`] (the
//! cross-site, host and client-address checks), `pacing` (writing at one shared tick while the server is
//! behind) and [`body`] (reading a body under a limit).

pub mod assets;
pub mod body;
pub mod docs;
pub mod echo;
pub mod iframe;
pub mod long_poll;
pub mod origin;
mod pacing;
pub mod params;
pub mod poll;
pub mod post;
pub mod seed;
pub mod sessions;
pub mod short_poll;
pub mod sse;
pub mod stats;
pub mod stream;
pub mod streaming;
pub mod websocket;
pub mod wire_view;
mod writer;
pub mod ws;

pub use body::read_body;
pub(crate) use origin::client_addr;
pub use origin::{check_host, check_origin, host_guard, ClientAddr, SameOrigin};
pub(crate) use pacing::Pacer;
pub use params::{send_key, Params};
pub use poll::poll_body;
