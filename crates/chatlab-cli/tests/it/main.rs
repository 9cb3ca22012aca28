//! chatlab's integration tests, one binary: each module drives a real server (in process, or the built binary)
//! over real sockets with real clients of each technique. `common` starts servers and speaks every technique;
//! `redis_support` runs a real `redis-server` and chatlab processes. Run one module with
//! `cargo test --test it edge::` (or one test by name).

mod common;
mod redis_support;

mod ack;
mod bench;
mod broker_conformance;
mod client_limits;
mod closing;
mod cluster;
mod cross_transport;
mod crowd;
mod deploy_nginx;
mod durable;
mod edge;
mod events;
mod keepalive;
mod lease;
mod limits;
mod metering;
mod pacing;
mod resume;
mod rules;
mod seed_protocol;
mod shutdown;
mod static_files;
mod stream;
mod switch;
mod tls;
mod websocket;
mod wire_h2;
mod wire_view;
