//! The `chatlab` command line: the server's flags ([`chatlab::config::Config`]) and its subcommands, the bench's.
//! `main.rs` parses them and serves or benches; the integration tests parse them the same way.

use clap::{Parser, Subcommand};

use chatlab::config::Config;

/// `chatlab`: one chat room, six web push techniques, measured on the wire.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Server options (used when no subcommand is given).
    #[command(flatten)]
    pub serve: Config,

    /// Something else than serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `chatlab <command>`; without one, `chatlab` serves.
#[derive(Debug, Subcommand)]
// Parsed once at start-up: the size of the bench's flags does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Drive real clients of each technique against a chatlab (started here, or `--url`) and compare what each
    /// costs: deliveries/s, latency, wire bytes and HTTP requests per delivered message, server CPU time.
    Bench(chatlab_bench::BenchArgs),
    /// A bare axum server with one fixed answer: `chatlab bench --wrk`'s yardstick (started by the bench).
    #[command(hide = true)]
    BenchBare(chatlab_bench::bare::BareArgs),
}
