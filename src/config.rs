//! Every flag, its default and why.
//!
//! Every limit of the server lives here, so `chatlab --help` is the one place a reader finds what a bound is
//! and how to move it. Defaults are sized for a laptop demo that still survives a hostile client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

/// Everything the server needs to know, with the defaults `chatlab --help` shows.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on. 8180 is the seed's port, so its page's `ws://localhost:8180` works unchanged.
    #[arg(long, default_value = "127.0.0.1:8180")]
    pub bind: SocketAddr,

    /// Where the room lives: `durable` (this process, kept on disk under `--data-dir`: history, sessions and the
    /// sequence survive a restart and a crash), `memory` (this process only, gone when it stops) or
    /// `redis://HOST:PORT[/DB]` (shared by processes).
    #[arg(long, default_value = "durable")]
    pub broker: String,

    /// The durable room's directory (`--broker durable`, the default), created if missing. One process at a
    /// time: a second one on the same directory is refused at start. Copy it while the server is stopped to
    /// back the room up.
    #[arg(long, default_value = "./chatlab-data")]
    pub data_dir: PathBuf,

    /// The durable room: how often, at most, in milliseconds, one session's lease renewals and cursor moves are
    /// written (joins, leaves and renames are written with the next commit). What a crash may lose of a lease or
    /// a cursor move; smaller writes more often while clients poll.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub store_session_sync_ms: u64,

    /// The durable room: most texts in one commit (one transaction, one sync). Texts waiting beyond it go in the
    /// next commit.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub store_batch_max: u64,

    /// The durable room: most texts readers may see before they are on disk (a text is delivered at once and
    /// acknowledged once durable). Also the most sequence numbers a crash can skip: numbers are reserved on
    /// disk this far ahead, so that none is given twice. Past it, sending waits for the disk.
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub store_unsynced_max: u64,

    /// Room events retained for resume; a cursor older than this gets an explicit `gap` event.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub history: u64,

    /// Seconds a participant without a live channel (closed stream, no recent poll) stays online.
    /// Must exceed the slowest short-poll interval a client uses.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_lease: u64,

    /// Longest a long poll may be held, in seconds; a request asking for more gets this.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub longpoll_max: u64,

    /// Long-poll hold, in seconds, when the request gives no `timeout=`.
    #[arg(long, default_value_t = 25)]
    pub longpoll_default: u64,

    /// Most events in one poll or long-poll response; the client continues from `next`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_batch: u64,

    /// Seconds between keep-alives: an SSE comment (so proxies do not cut a quiet stream) and a WebSocket ping.
    /// A WebSocket whose peer answers nothing for two of them is dropped (a vanished client is noticed, and
    /// its lease can run out).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive: u64,

    /// Bytes of padding (an HTML comment of spaces) at the start of a forever-iframe document
    /// (`GET /api/iframe`), before its first `<script>`. Old browsers held the first kilobyte or so of a
    /// document before running any of it (Safari and Chrome of the 2000s about 1 KB, Internet Explorer 256
    /// bytes); a browser of today that is told the charset in the `Content-Type` header runs each script as it
    /// arrives without it (docs/techniques.md measures it). Sent once per channel; 0 sends none.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub iframe_padding: u64,

    /// Longest chat text, in characters.
    #[arg(long, default_value_t = 2000)]
    pub max_message_chars: usize,

    /// Longest nickname, in characters (after trimming).
    #[arg(long, default_value_t = 32)]
    pub max_nickname_chars: usize,

    /// Largest HTTP request body, in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Largest HTTP request head (request line and headers), in bytes. A longer one is refused before any
    /// handler runs, and the connection closed: `431 head_too_large`, or `414 uri_too_long` when the request line
    /// alone does not fit; a head that cannot be parsed gets `400 bad_request`. Each costs the server at most
    /// this much memory while it arrives.
    #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(1024..=256 * 1024))]
    pub max_head_bytes: u64,

    /// Largest WebSocket frame (and message) a client may send, in bytes; larger closes with 1009.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_frame_bytes: usize,

    /// Longest `ref` of a `/ws?ack=1` frame and longest `Idempotency-Key` of a POST, in bytes (printable ASCII).
    /// The server remembers one per retained event (`--history`), so this bounds what de-duplication holds.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_ref_bytes: u64,

    /// Sustained chat texts per second per session; 0 turns rate limiting off.
    #[arg(long, default_value_t = 20.0)]
    pub rate_limit: f64,

    /// Texts a session may send in one burst above the sustained rate.
    #[arg(long, default_value_t = 40.0)]
    pub rate_burst: f64,

    /// Most live receiving channels (WebSockets, SSE, NDJSON and iframe streams, held long polls) at once; more get 503.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,

    /// Most TCP connections at once; at the limit the server stops accepting until one closes (new clients wait
    /// in the kernel's backlog). Under the 20,000 open files a process may have here, with room for the rest.
    #[arg(long, default_value_t = 18_000)]
    pub max_sockets: usize,

    /// Connections the kernel may hold for the server before it accepts them (the listen backlog; Linux caps it at
    /// `net.core.somaxconn`). Past it, a connection attempt is dropped and the client retries after 1, 3, 7 s...:
    /// a burst of joins or reconnections while the accept loop is busy should fit.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub listen_backlog: u32,

    /// Seconds a write may wait on a peer that does not read (its TCP window full) before the connection is
    /// closed, whatever the technique: a WebSocket, an SSE stream, a poll answer, a static file. The slot under
    /// `--max-sockets`, the channel and its queued events are freed at once; the close counts as `write_timeouts`
    /// in `/api/stats` and `/metrics`. A slow client that reads within this time is never cut. 0: never.
    #[arg(long, default_value_t = 10)]
    pub write_timeout: u64,

    /// Seconds a connection may take to send a complete request head, counted from its accept or from the end of
    /// its previous response (an idle keep-alive connection): silent sockets, partial request lines and headers
    /// trickled a byte at a time are closed after it (`header_timeouts` in `/api/stats`). A request body that
    /// stops arriving for this long is given up too. 0: never.
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,

    /// Most sessions (participants) at once; more joins get 503.
    #[arg(long, default_value_t = 100_000)]
    pub max_sessions: usize,

    /// Most sessions one client (one IP address; an IPv6 client is its /64) may hold at once, over every
    /// technique; its next join is refused `429 too_many_sessions` until one of them leaves or its lease runs
    /// out. Enough for a classroom behind one NAT, far from one script taking all of `--max-sessions`. Counted
    /// by each process of a cluster on its own (the process that counted a session finds out from the broker when
    /// it ended through another). 0: no limit.
    #[arg(long, default_value_t = 1000)]
    pub max_sessions_per_client: usize,

    /// Sustained chat texts per second from one client, across all its sessions (beside each session's
    /// `--rate-limit`): fresh sessions do not buy a flooder more. Over it a text is refused
    /// `429 client_rate_limited` with `Retry-After`. 0 turns it off.
    #[arg(long, default_value_t = 100.0)]
    pub client_rate_limit: f64,

    /// Texts one client may send in one burst above `--client-rate-limit`.
    #[arg(long, default_value_t = 200.0)]
    pub client_rate_burst: f64,

    /// Most clients the per-client limits track at once. A client is forgotten when it has no session left and
    /// its text budget is full again; when the table is full, clients with no session are forgotten first, and
    /// if every one holds a session a join from a new client is refused `503 room_full`.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_clients: u64,

    /// Proxies whose `X-Forwarded-For` is believed (IP addresses, comma-separated or repeated; default none).
    /// Only for a request whose peer is one of them is the client taken from that header: its right-most entry
    /// that is not itself a trusted proxy. From any other peer the header is ignored (anyone can write it).
    #[arg(long = "trust-proxy", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Room size above which joins and leaves are not announced one by one (N notices to N people is N² frames)
    /// but in one notice a second naming how many came and went; `clientcount` stays exact on every event.
    #[arg(long, default_value_t = 100)]
    pub coalesce_above: u64,

    /// Room events a receiver may fall behind the newest before it is closed as a slow consumer
    /// (it resumes from its cursor). This bounds every connection's queue. The queue is one ring shared by all
    /// receivers (a pointer per slot, the events themselves are in the history anyway), so a deep one is cheap:
    /// 8192 lets a burst of thousands of texts pass without closing receivers that are merely busy writing.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub send_queue: u64,

    /// When the server is behind (see `--pace-when-busy`), streams (WebSocket, SSE) write at most once per this many
    /// milliseconds: events that arrive within the interval after a write wait for its end and go out together,
    /// in one write. The first event after a quiet interval goes at once. Long polls are answered with events
    /// only at the ticks of this interval. It trades up to that much latency for far fewer system calls per
    /// delivery (see docs/benchmarks.md). 0 never paces: each connection writes as soon as its task runs,
    /// coalescing only what queued meanwhile.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub flush_interval_ms: u64,

    /// How busy the server is, in percent over 100 ms (the runtime workers' busy share, or how late its tasks
    /// wake beyond the timer's millisecond as a share of 4 ms, whichever is higher), at which streams and long polls
    /// start to be paced by `--flush-interval-ms`; pacing stops after a second below three quarters of it. A
    /// server that keeps up writes every event at once, whatever the load; one falling behind puts what queued
    /// during an interval into one write. 0 paces always, 100 never.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub pace_when_busy: u8,

    /// Bytes of control frames (pongs, close replies) a WebSocket may hold unsent while its client does not
    /// read; past it the server stops reading that client until they drain.
    #[arg(long, default_value_t = 256 * 1024)]
    pub ws_max_buffer: usize,

    /// Milliseconds a WebSocket the server closes (shutdown, replaced, slow consumer, protocol error) waits for
    /// the client's Close frame before closing TCP (RFC 6455 7.1.1), so the client sees the server's code rather
    /// than 1006. A client that never answers is dropped when it runs out. Kept under `--shutdown-grace`.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub ws_close_timeout_ms: u64,

    /// Most frames one WebSocket message may come in (its first frame and its continuations); more closes with
    /// 1009. Without it, empty continuation frames could keep a message open forever at no size cost.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_max_fragments: u32,

    /// Most text frames of one WebSocket connection read and not yet answered (waiting, being numbered, or
    /// numbered and waiting to be durable): past it, the connection is not read until some are answered, so a
    /// client sending faster than the room takes its texts is held back by TCP, not dropped.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ws_outbox_max: u64,

    /// Serve `GET /echo`: a WebSocket that sends back every text and binary message (for conformance suites
    /// such as Autobahn|Testsuite), through the same socket code as `/ws`. Off by default.
    #[arg(long)]
    pub echo: bool,

    /// Records a wire view (`GET /api/wire`) may hold unsent while its client does not read: past it, new records
    /// are dropped and counted, and the client is told how many with a `lagged` record. A record is at most a
    /// few KiB (heads are cut at 8 KiB each), so a watcher costs at most about this many times 16 KiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub wire_view_queue: u64,

    /// Extra origins allowed to open WebSockets and POST (e.g. `https://chat.example.com`).
    /// The page's own host and localhost are always allowed; requests without `Origin` are not browsers.
    #[arg(long = "allow-origin")]
    pub allowed_origins: Vec<String>,

    /// Extra host names a browser may reach this server by (the `Host` header, without the port; repeatable;
    /// `*` allows any). Loopback names (`localhost`, `*.localhost`), IP addresses and the hosts of the
    /// `--allow-origin`s are always allowed; default none. A browser request (one that carries `Origin` or
    /// `Sec-Fetch-Site`) by another name is refused `421 forbidden_host`: a page that rebinds its DNS name to
    /// this server passes the origin check (its origin is its own host), but not this. Requests from
    /// non-browser clients are not checked. Behind a proxy that keeps the public name, give that name here.
    #[arg(long = "allow-host")]
    pub allowed_hosts: Vec<String>,

    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first), with `--tls-key`. ALPN offers
    /// `h2` and `http/1.1` on `--bind`; a plain-HTTP request to the port is refused `400` with a JSON body. A file
    /// that is missing, not PEM, or whose key does not match ends the process at start.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS with a certificate for `localhost`, `127.0.0.1` and `::1` made at start (a new key each run;
    /// browsers warn about it, and clients must be told to accept it): for trying HTTP/2 without a certificate.
    #[arg(long)]
    pub tls_self_signed: bool,

    /// Most HTTP/2 streams (requests) one connection may have open at once (the `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// the server announces); a client that opens more has them refused. Each held long poll or open stream is
    /// one. The request head limit of HTTP/2 is `--max-head-bytes` too (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub h2_max_streams: u32,

    /// Seconds to wait for connections to drain on shutdown before exiting anyway.
    #[arg(long, default_value_t = 3)]
    pub shutdown_grace: u64,

    /// Threads running connections (tokio's worker threads). Default: one per CPU core. `1` runs everything on
    /// one thread, as the Node.js original does: no wake-ups, work stealing or cache lines shared between
    /// threads, so each delivery costs less CPU, with one core's ceiling (see docs/benchmarks.md).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
}

/// The flags alone, parsed from nothing: [`Config`]'s defaults are the ones `chatlab --help` shows.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    config: Config,
}

impl Default for Config {
    fn default() -> Self {
        Defaults::parse_from(["chatlab"]).config
    }
}

impl Config {
    /// The session lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.session_lease)
    }

    /// `--write-timeout` as a duration; `None` when it is 0 (never).
    pub fn write_timeout(&self) -> Option<Duration> {
        (self.write_timeout > 0).then(|| Duration::from_secs(self.write_timeout))
    }

    /// `--header-timeout` as a duration; `None` when it is 0 (never).
    pub fn header_timeout(&self) -> Option<Duration> {
        (self.header_timeout > 0).then(|| Duration::from_secs(self.header_timeout))
    }

    /// `--flush-interval-ms` as a duration (zero: no pacing).
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// The durable room's `--store-*` flags.
    pub fn store_options(&self) -> crate::broker::durable::StoreOptions {
        crate::broker::durable::StoreOptions {
            session_sync: Duration::from_millis(self.store_session_sync_ms),
            batch_max: self.store_batch_max as usize,
            unsynced_max: self.store_unsynced_max,
        }
    }

    /// Whether the server speaks HTTPS (`--tls-cert` or `--tls-self-signed`).
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed
    }

    /// `--ws-close-timeout-ms` as a duration.
    pub fn ws_close_timeout(&self) -> Duration {
        Duration::from_millis(self.ws_close_timeout_ms)
    }
}
