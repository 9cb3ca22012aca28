//! What each technique costs: counters per transport, exposed on `/api/stats` and `/metrics`.
//!
//! Every counter says what it counts. `payload_*` counts the JSON event texts alone; `wire_*` counts bytes read
//! from and written to sockets, headers and framing included. Counting is lock-free (relaxed atomics): a counter
//! read while requests are in flight may be a few events behind, never torn.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the counters, the latency histogram, the `/api/stats` document |
//! | [`busy`] | whether the server is behind, which paces streams (`--pace-when-busy`) |
//! | [`wire`] | the byte-counting listener and how a connection's bytes are given to a technique and a session |
//! | [`session`] | per-session wire counters, and the watchers of the live wire log |
//! | [`capture`] | how a connection's bytes are read back as HTTP heads, WebSocket frames and SSE writes |
//! | [`prometheus`] | `/metrics`: the same counters in the Prometheus text format |

pub mod busy;
pub mod capture;
mod h2;
pub mod prometheus;
pub mod session;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub(crate) use crate::model::now_ms;
use crate::model::{Delivery, RoomEvent, Transport};

/// Counters for one technique.
#[derive(Debug, Default)]
pub struct Counters {
    /// Live receiving channels now (WebSockets, SSE, NDJSON and iframe streams, held long polls).
    pub connections_open: AtomicU64,
    /// Receiving channels ever opened.
    pub connections_total: AtomicU64,
    /// HTTP requests served for this technique (a WebSocket counts its upgrade request).
    pub requests: AtomicU64,
    /// Wire bytes read from clients: request lines, headers, bodies, WebSocket frames with their headers.
    pub wire_bytes_in: AtomicU64,
    /// Wire bytes written to clients: status lines, headers, chunk framing, SSE fields, WebSocket frame headers.
    pub wire_bytes_out: AtomicU64,
    /// Of `requests`, those that came over HTTP/2 (the rest came over HTTP/1.1).
    pub http2_requests: AtomicU64,
    /// Of `wire_bytes_in`, those of HTTP/2 streams: their frames, headers (HPACK-compressed) and payload.
    pub http2_wire_bytes_in: AtomicU64,
    /// Of `wire_bytes_out`, those of HTTP/2 streams.
    pub http2_wire_bytes_out: AtomicU64,
    /// Payload bytes written: the JSON texts of delivered room events, nothing else.
    pub payload_bytes_out: AtomicU64,
    /// Room events delivered (one per event per receiver).
    pub events_delivered: AtomicU64,
    /// Poll responses that carried no event.
    pub empty_responses: AtomicU64,
    /// Receivers closed for falling too far behind (`--send-queue`).
    pub slow_consumers: AtomicU64,
    /// Connections of this technique closed because a write waited `--write-timeout` on a peer that does not read.
    pub write_timeouts: AtomicU64,
    /// Publish-to-write latency of delivered events.
    pub latency: Histogram,
}

/// Per-technique counters for the whole server. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metering {
    transports: Arc<[Counters; Transport::ALL.len()]>,
    others: Arc<Others>,
    load: Arc<Load>,
    busy: Arc<busy::Busy>,
    sessions: Arc<session::Sessions>,
}

/// What counts under none of the techniques.
#[derive(Debug, Default)]
pub struct Others {
    /// TCP connections accepted now.
    pub tcp_connections_open: AtomicU64,
    /// TCP connections ever accepted.
    pub tcp_connections_total: AtomicU64,
    /// Wire bytes read for requests of no technique (`/api/stats`, `/metrics`, `/healthz`, `/api/presence`, the
    /// demo's files, refused requests whose technique was never known).
    pub wire_bytes_in: AtomicU64,
    /// Wire bytes written for those requests.
    pub wire_bytes_out: AtomicU64,
    /// Connections closed because a write waited `--write-timeout` while they carried no technique's request.
    pub write_timeouts: AtomicU64,
    /// Connections closed because a request head (or a keep-alive connection's next one) did not arrive within
    /// `--header-timeout`.
    pub header_timeouts: AtomicU64,
    /// Joins refused because their client held `--max-sessions-per-client` sessions (or `--max-clients` clients
    /// held sessions).
    pub client_sessions_refused: AtomicU64,
    /// Texts refused because their client was over `--client-rate-limit`, across its sessions.
    pub client_texts_refused: AtomicU64,
    /// Clients the per-client limits track now (a gauge).
    pub clients_tracked: AtomicU64,
    /// Idle sockets (no request in flight, no open channel) closed to make room for a new one at `--max-sockets`.
    pub idle_evictions: AtomicU64,
    /// Request heads refused at the socket (malformed, a request line or a head too long): answered 400, 414 or
    /// 431 with a JSON body, then closed.
    pub bad_heads: AtomicU64,
    /// HTTPS connections whose TLS handshake completed (each then speaks HTTP/2 or HTTP/1.1, as ALPN chose).
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed (a client that does not trust the certificate, a protocol error; one that did
    /// not finish within `--header-timeout` counts as a header timeout instead).
    pub tls_handshake_failures: AtomicU64,
    /// TLS record bytes read from HTTPS sockets, handshakes included: what the network carries. Every other
    /// wire counter counts the HTTP bytes inside TLS (what the techniques cost each other).
    pub tls_bytes_in: AtomicU64,
    /// TLS record bytes written to HTTPS sockets, handshakes included.
    pub tls_bytes_out: AtomicU64,
    /// Plain-HTTP requests to the HTTPS port, refused `400` with a JSON body, then closed.
    pub plain_http_refused: AtomicU64,
    /// Connections that spoke HTTP/2 (ALPN `h2`).
    pub http2_connections_total: AtomicU64,
    /// Of `wire_bytes_in`, the HTTP/2 connections' own bytes: the client's preface and the frames of stream 0
    /// (`SETTINGS`, `PING`, connection `WINDOW_UPDATE`, `GOAWAY`), which belong to no request.
    pub http2_connection_bytes_in: AtomicU64,
    /// Of `wire_bytes_out`, the HTTP/2 connections' own frames.
    pub http2_connection_bytes_out: AtomicU64,
}

impl Metering {
    /// The counters of one technique.
    pub fn of(&self, transport: Transport) -> &Counters {
        &self.transports[transport as usize]
    }

    /// What counts under none of the techniques.
    pub fn others(&self) -> &Others {
        &self.others
    }

    /// The per-session counters, and what the wire view costs.
    pub fn sessions(&self) -> &session::Sessions {
        &self.sessions
    }

    /// Counts one HTTP request of the session `token` (which the room has just found to exist), and gives the
    /// request's wire bytes (and its response's; if it upgrades, its connection's) to that session as well as to
    /// the technique named by [`Metering::request`]. Returns the session's counters, for the events its channel
    /// delivers. One hash lookup per request.
    pub fn session(&self, token: &str) -> Arc<session::SessionWire> {
        let wire = self.sessions.request(token);
        wire::chosen_session(wire.clone());
        wire
    }

    /// Counts one request of a wire view (`/api/wire`, `/api/sessions/{session}/wire`): its bytes count under
    /// `other.wire_view`, never under a technique or a session.
    pub fn wire_view_request(&self) {
        self.sessions.wire_view.requests.fetch_add(1, Ordering::Relaxed);
        wire::chosen_wire_view();
    }

    /// How busy the process is: deliveries per second (see [`Load`]).
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Whether the server is behind, and so paces its streams (see [`busy::Busy`]).
    pub fn busy(&self) -> &Arc<busy::Busy> {
        &self.busy
    }

    /// Counts the room events among `deliveries`, handed to the socket writer together just now (every
    /// transport calls it right as it has written a batch or a poll body). Each event's latency runs from when it
    /// entered this process. One clock read and a few atomic additions per batch, not per event: these counters
    /// are shared by every worker thread. Returns how many room events there were.
    pub fn delivered(&self, transport: Transport, deliveries: &[Delivery]) -> u64 {
        let mut delivering = self.delivering(transport);
        for delivery in deliveries {
            if let Delivery::Event(event) = delivery {
                delivering.event(event);
            }
        }
        delivering.finish()
    }

    /// Starts counting deliveries written together one at a time, for a transport that writes events without
    /// a slice of them ([`Metering::delivered`] for a slice); [`Delivering::finish`] once they are written.
    pub fn delivering(&self, transport: Transport) -> Delivering<'_> {
        let counters = self.of(transport);
        Delivering { counters, now: Instant::now(), events: 0, bytes: 0, latencies: counters.latency.recording() }
    }

    /// Counts one HTTP request of a technique, and gives the request's wire bytes (and those of its response)
    /// to that technique: see [`wire`] for how the connection learns it.
    pub fn request(&self, transport: Transport) {
        let counters = self.of(transport);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if wire::chosen(transport) {
            counters.http2_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a channel as open until the guard drops.
    pub fn open(&self, transport: Transport) -> OpenGuard {
        let counters = self.of(transport);
        counters.connections_open.fetch_add(1, Ordering::Relaxed);
        counters.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenGuard { metering: self.clone(), transport }
    }

    /// The `/api/stats` document.
    pub fn snapshot(&self) -> Value {
        let mut transports = serde_json::Map::new();
        for transport in Transport::ALL {
            let c = self.of(transport);
            let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            transports.insert(
                transport.as_str().to_owned(),
                json!({
                    "connections_open": get(&c.connections_open),
                    "connections_total": get(&c.connections_total),
                    "requests": get(&c.requests),
                    "wire_bytes_in": get(&c.wire_bytes_in),
                    "wire_bytes_out": get(&c.wire_bytes_out),
                    "http2_requests": get(&c.http2_requests),
                    "http2_wire_bytes_in": get(&c.http2_wire_bytes_in),
                    "http2_wire_bytes_out": get(&c.http2_wire_bytes_out),
                    "payload_bytes_out": get(&c.payload_bytes_out),
                    "events_delivered": get(&c.events_delivered),
                    "empty_responses": get(&c.empty_responses),
                    "slow_consumers": get(&c.slow_consumers),
                    "write_timeouts": get(&c.write_timeouts),
                    "latency_ms": {
                        "p50": c.latency.quantile_ms(0.50),
                        "p99": c.latency.quantile_ms(0.99),
                        "buckets": c.latency.buckets_ms(),
                    },
                }),
            );
        }
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let o = &self.others;
        let v = &self.sessions.wire_view;
        json!({
            "transports": transports,
            "other": {
                "tcp_connections_open": get(&o.tcp_connections_open),
                "tcp_connections_total": get(&o.tcp_connections_total),
                "wire_bytes_in": get(&o.wire_bytes_in),
                "wire_bytes_out": get(&o.wire_bytes_out),
                "write_timeouts": get(&o.write_timeouts),
                "header_timeouts": get(&o.header_timeouts),
                "client_sessions_refused": get(&o.client_sessions_refused),
                "client_texts_refused": get(&o.client_texts_refused),
                "clients_tracked": get(&o.clients_tracked),
                "idle_evictions": get(&o.idle_evictions),
                "bad_heads": get(&o.bad_heads),
                "tls_handshakes": get(&o.tls_handshakes),
                "tls_handshake_failures": get(&o.tls_handshake_failures),
                "tls_bytes_in": get(&o.tls_bytes_in),
                "tls_bytes_out": get(&o.tls_bytes_out),
                "plain_http_refused": get(&o.plain_http_refused),
                "http2_connections_total": get(&o.http2_connections_total),
                "http2_connection_bytes_in": get(&o.http2_connection_bytes_in),
                "http2_connection_bytes_out": get(&o.http2_connection_bytes_out),
                "deliveries_per_second": self.load.per_second(Instant::now()),
                "busy_percent": self.busy.percent(),
                "paced": self.busy.paced(),
                "paced_seconds": self.busy.paced_seconds(),
                "wire_view": {
                    "requests": get(&v.requests),
                    "connections_open": get(&v.connections_open),
                    "connections_total": get(&v.connections_total),
                    "wire_bytes_in": get(&v.wire_bytes_in),
                    "wire_bytes_out": get(&v.wire_bytes_out),
                    "records": get(&v.records),
                    "records_dropped": get(&v.dropped),
                    "records_queued": get(&v.queued),
                    "sessions_counted": self.sessions.len(),
                },
            },
            "units": {
                "connections_open": "live receiving channels (WebSockets, SSE, NDJSON and iframe streams, held long polls)",
                "requests": "HTTP requests, POSTs included; a WebSocket counts its upgrade",
                "wire_bytes_in": "bytes read from sockets, headers and framing included",
                "wire_bytes_out": "bytes written to sockets, headers and framing included",
                "payload_bytes_out": "JSON event bytes only, no headers or framing",
                "http2_requests": "of requests, those that came over HTTP/2 (the rest came over HTTP/1.1)",
                "http2_wire_bytes_in": "of wire_bytes_in, those of HTTP/2 streams (frame headers, HPACK-compressed \
                                        headers, bodies); over HTTPS, wire bytes are the HTTP bytes inside TLS",
                "http2_wire_bytes_out": "of wire_bytes_out, those of HTTP/2 streams",
                "tls_bytes_in": "TLS record bytes read from HTTPS sockets, handshakes included (what the network \
                                 carries; every other wire counter counts the HTTP bytes inside TLS)",
                "tls_bytes_out": "TLS record bytes written to HTTPS sockets, handshakes included",
                "tls_handshakes": "HTTPS connections whose TLS handshake completed",
                "tls_handshake_failures": "TLS handshakes that failed (not those that timed out: header_timeouts)",
                "plain_http_refused": "plain-HTTP requests to the HTTPS port, refused 400 with a JSON body, then closed",
                "http2_connections_total": "connections that spoke HTTP/2 (ALPN h2)",
                "http2_connection_bytes_in": "of other.wire_bytes_in, the HTTP/2 connections' own bytes: the client \
                                              preface and stream 0's frames (SETTINGS, PING, WINDOW_UPDATE, GOAWAY)",
                "http2_connection_bytes_out": "of other.wire_bytes_out, the HTTP/2 connections' own frames",
                "write_timeouts": "connections closed because a write waited --write-timeout on a peer that does not \
                                   read (under other: those carrying no technique's request)",
                "header_timeouts": "connections closed because no complete request head arrived within \
                                    --header-timeout of the accept or of the previous response",
                "client_sessions_refused": "joins refused 429 too_many_sessions: their client (IP address) held \
                                            --max-sessions-per-client sessions",
                "client_texts_refused": "texts refused 429 client_rate_limited: their client was over \
                                         --client-rate-limit across all its sessions",
                "clients_tracked": "clients (IP addresses) the per-client limits remember now",
                "idle_evictions": "idle sockets (no request in flight, no open channel) closed, oldest idle first, to \
                                   make room for a new one at --max-sockets",
                "bad_heads": "request heads refused before any handler (malformed: 400 bad_request; request line too \
                              long: 414 uri_too_long; head over --max-head-bytes: 431 head_too_large), then closed",
                "latency_ms": "publish (event entering this process) to socket write, milliseconds; buckets: [upper bound \
                               in ms, count] of the non-empty histogram buckets, since the server started",
                "other": "TCP connections of the whole server, wire bytes of requests of no technique, and deliveries per \
                          second (events times the live channels each went to, plus events answered to polls from \
                          history; the last quarter second)",
                "busy_percent": "how busy the server was over the last 100 ms: the share of the runtime workers' time spent \
                                 running tasks, or how late its tasks woke as a share of 4 ms, whichever is higher",
                "paced": "whether streams and long polls pace their writes now (--pace-when-busy)",
                "paced_seconds": "seconds spent paced since the server started",
                "wire_view": "what the wire view itself costs (GET /api/wire and /api/sessions/{session}/wire): its \
                              requests, connections and wire bytes, counted under no technique and no session; records \
                              sent to watchers, dropped for a full queue (--wire-view-queue), queued now; sessions with \
                              counters in this process",
            },
        })
    }
}

/// Deliveries of one transport written together, counted as they are added ([`Metering::delivering`]).
#[derive(Debug)]
pub struct Delivering<'a> {
    counters: &'a Counters,
    /// When counting began: each event's latency runs from when it entered this process to this. For a batch that
    /// was written first, the end of the write; for a paced stream's run taken from the ring, the moment its
    /// write starts (the events are counted as they are copied into the write buffer, under the ring's lock).
    now: Instant,
    events: u64,
    bytes: u64,
    latencies: Recording<'a>,
}

impl Delivering<'_> {
    /// Counts one room event.
    pub fn event(&mut self, event: &RoomEvent) {
        self.events += 1;
        self.bytes += event.json.len() as u64;
        self.latencies.add(self.now.saturating_duration_since(event.seen));
    }

    /// Adds the counts to the transport's counters: one clock read and a few atomic additions per write, not
    /// per event (these counters are shared by every worker thread). Returns how many room events there were.
    pub fn finish(self) -> u64 {
        self.latencies.finish();
        if self.events > 0 {
            self.counters.events_delivered.fetch_add(self.events, Ordering::Relaxed);
            self.counters.payload_bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
        }
        self.events
    }
}

/// How much the process delivers: deliveries per second, in windows of [`Load::WINDOW`] (`/api/stats`'
/// `deliveries_per_second`). An event counts once per live channel (WebSocket, SSE stream, held long poll) it is fanned out
/// to, when it is fanned out (not when it is written, so pacing the writes does not change the figure), and once
/// per poll that answers it from history (a short poll, a long poll that did not wait). Lock-free: one atomic
/// addition per event or poll, and one compare-and-swap per window to roll it over.
#[derive(Debug)]
pub struct Load {
    origin: Instant,
    /// The window being counted, as a number of windows since `origin`.
    window: AtomicU64,
    /// Deliveries counted in that window so far.
    count: AtomicU64,
    /// Deliveries per second in the window before it (0 if that one saw none).
    rate: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self { origin: Instant::now(), window: AtomicU64::new(0), count: AtomicU64::new(0), rate: AtomicU64::new(0) }
    }
}

impl Load {
    /// How long the rate is counted over before it is updated.
    pub const WINDOW: Duration = Duration::from_millis(250);
    /// Windows per second.
    const PER_SECOND: u64 = 1000 / Self::WINDOW.as_millis() as u64;

    fn window_of(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / Self::WINDOW.as_nanos()) as u64
    }

    /// Counts `deliveries` made at `now` (an event fanned out to that many channels, or a poll answered with
    /// that many events). The first count of a new window closes the one before.
    pub fn add(&self, now: Instant, deliveries: u64) {
        let window = self.window_of(now);
        let current = self.window.load(Ordering::Relaxed);
        if window > current
            && self.window.compare_exchange(current, window, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let counted = self.count.swap(deliveries, Ordering::Relaxed);
            // A window that saw no batch at all lies between: the last whole window was quiet.
            let rate = if window == current + 1 { counted * Self::PER_SECOND } else { 0 };
            self.rate.store(rate, Ordering::Relaxed);
        } else {
            self.count.fetch_add(deliveries, Ordering::Relaxed);
        }
    }

    /// Deliveries per second over the last whole window before `now`; 0 when the process has been quiet since.
    pub fn per_second(&self, now: Instant) -> u64 {
        let (window, current) = (self.window_of(now), self.window.load(Ordering::Relaxed));
        match window.saturating_sub(current) {
            0 => self.rate.load(Ordering::Relaxed),
            // The window being counted is over and nothing has rolled it yet: it is the last whole one.
            1 => self.count.load(Ordering::Relaxed) * Self::PER_SECOND,
            _ => 0,
        }
    }
}

/// Decrements `connections_open` when dropped.
#[derive(Debug)]
pub struct OpenGuard {
    metering: Metering,
    transport: Transport,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.metering.of(self.transport).connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Buckets per doubling of latency, of equal width: a quantile is within 12.5% of the true value.
const SUB_BUCKETS: usize = 8;
/// Doublings covered, from 1 µs to about 2^40 µs.
const OCTAVES: usize = 40;

/// A lock-free log-scale latency histogram in microseconds (fixed size: 320 counters).
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// Latencies being recorded together ([`Histogram::recording`]): counted locally, then one addition per run of
/// values in the same bucket, and one for the sum.
#[derive(Debug)]
pub struct Recording<'a> {
    histogram: &'a Histogram,
    sum: u64,
    /// The bucket of the current run of values, and its length.
    run: Option<(usize, u64)>,
}

impl Recording<'_> {
    /// Adds one value.
    pub fn add(&mut self, latency: Duration) {
        let micros = latency.as_micros() as u64;
        self.sum += micros;
        let index = Histogram::index(micros);
        self.run = match self.run {
            Some((bucket, n)) if bucket == index => Some((bucket, n + 1)),
            Some((bucket, n)) => {
                self.histogram.buckets[bucket].fetch_add(n, Ordering::Relaxed);
                Some((index, 1))
            }
            None => Some((index, 1)),
        };
    }

    /// Adds what is left to the histogram.
    pub fn finish(self) {
        if let Some((bucket, n)) = self.run {
            self.histogram.buckets[bucket].fetch_add(n, Ordering::Relaxed);
            self.histogram.sum_micros.fetch_add(self.sum, Ordering::Relaxed);
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..SUB_BUCKETS * OCTAVES).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// The bucket of a value: its octave (the position of its leading one), then which of eight equal steps of
    /// that octave (the three bits after it). Integer arithmetic only: it runs for every delivery.
    fn index(micros: u64) -> usize {
        let v = micros.clamp(1, (1 << OCTAVES) - 1);
        let octave = (u64::BITS - 1 - v.leading_zeros()) as usize;
        let step = (((v - (1 << octave)) * SUB_BUCKETS as u64) >> octave) as usize;
        (octave * SUB_BUCKETS + step).min(SUB_BUCKETS * OCTAVES - 1)
    }

    fn upper_micros(index: usize) -> f64 {
        let (octave, step) = (index / SUB_BUCKETS, index % SUB_BUCKETS);
        (1u64 << octave) as f64 * (1.0 + (step + 1) as f64 / SUB_BUCKETS as f64)
    }

    /// Starts recording latencies measured together, one at a time; [`Recording::finish`] adds them.
    pub fn recording(&self) -> Recording<'_> {
        Recording { histogram: self, sum: 0, run: None }
    }

    /// The sum of recorded values, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Counts per power of two of microseconds: `(bound_secs, count of values below bound and at or above the
    /// previous bound)`, the last bound being `f64::MAX`. The bounds are bucket edges of this histogram, so the
    /// counts are exact, not interpolated.
    pub fn octaves(&self) -> Vec<(f64, u64)> {
        const FIRST: usize = 3; // 8 µs: nothing here is faster
        const LAST: usize = 25; // 2^25 µs, about 33.5 s: longer than any long-poll hold
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let mut out = Vec::with_capacity(LAST - FIRST + 2);
        let mut start = 0;
        for octave in FIRST..=LAST {
            let end = octave * SUB_BUCKETS;
            out.push(((1u64 << octave) as f64 / 1e6, counts[start..end].iter().sum()));
            start = end;
        }
        out.push((f64::MAX, counts[start..].iter().sum()));
        out
    }

    /// The non-empty buckets as `[upper bound in ms, count]`, lowest first: a client can subtract an earlier
    /// reading and take quantiles of what happened in between.
    pub fn buckets_ms(&self) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(index, bucket)| {
                let count = bucket.load(Ordering::Relaxed);
                (count > 0).then(|| ((Self::upper_micros(index) / 1000.0 * 1000.0).round() / 1000.0, count))
            })
            .collect()
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) in milliseconds, as its bucket's upper bound; 0 when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (Self::upper_micros(index) / 1000.0 * 1000.0).round() / 1000.0;
            }
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Load::WINDOW;

    #[test]
    fn load_is_the_rate_of_the_last_whole_window() {
        let load = Load::default();
        let t0 = load.origin;
        assert_eq!(load.per_second(t0), 0, "nothing delivered yet");
        load.add(t0 + Q / 10, 100);
        load.add(t0 + Q / 2, 150);
        assert_eq!(load.per_second(t0 + Q / 2), 0, "the first window is not over");
        assert_eq!(load.per_second(t0 + Q + Q / 2), 250 * 4, "over, though nothing rolled it yet");
        load.add(t0 + Q + Q / 2, 10);
        assert_eq!(load.per_second(t0 + Q + Q / 2), 250 * 4, "the batch that rolled it counts in the next");
        assert_eq!(load.per_second(t0 + 2 * Q + Q / 2), 10 * 4);
        assert_eq!(load.per_second(t0 + 3 * Q + Q / 2), 0, "a quiet window since: not busy any more");
        load.add(t0 + 5 * Q, 1000);
        assert_eq!(load.per_second(t0 + 5 * Q), 0, "the window before this batch was quiet");
    }

    #[test]
    fn latency_buckets_split_each_octave_in_eight_equal_steps() {
        for (micros, index) in [(0, 0), (1, 0), (2, 8), (3, 12), (1000, 9 * 8 + 7), (1024, 10 * 8), (1100, 10 * 8)] {
            assert_eq!(Histogram::index(micros), index, "{micros} µs");
        }
        for micros in [1u64, 7, 100, 999, 1_000_000, 123_456_789] {
            let index = Histogram::index(micros);
            let (lower, upper) =
                (if index == 0 { 0.0 } else { Histogram::upper_micros(index - 1) }, Histogram::upper_micros(index));
            assert!(lower <= micros as f64 && (micros as f64) < upper, "{micros} in [{lower}, {upper})");
            assert!(
                upper <= micros as f64 * 2.0 && (micros < 8 || upper <= micros as f64 * 1.125 + 1.0),
                "{micros}: {upper}"
            );
        }
        assert_eq!(Histogram::index(u64::MAX), SUB_BUCKETS * OCTAVES - 1, "the last bucket holds the rest");
    }

    #[test]
    fn load_counts_batches_from_many_threads() {
        let load = Arc::new(Load::default());
        let t0 = load.origin;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let load = Arc::clone(&load);
                std::thread::spawn(move || (0..1000).for_each(|_| load.add(t0 + Q / 2, 3)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(load.per_second(t0 + Q + Q / 2), 4 * 1000 * 3 * 4);
    }
}
