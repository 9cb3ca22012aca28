//! `chatlab bench soak`: a long run of a mixed crowd against one server, checking what must hold over time
//! rather than how fast it goes.
//!
//! Participant `i` takes WebSocket, SSE, long polling and short polling in turn. Among them:
//!
//! - **stalled** (`i % 40` is 0 or 1: 5 %, WebSockets and SSE streams): a channel on a socket with a 4 KiB
//!   receive buffer and a 536-byte MSS (what a WAN peer advertises; on loopback the server's send buffer would
//!   otherwise grow to 4 MiB) that stops reading after its response head. Once the server lets it go, it opens
//!   another the same way, until the end.
//! - **reconnecting** (`i % 80` in 2..=5: 5 %, every technique): closes its channel every `--reconnect-every`
//!   seconds and opens a new one on the same session with `since=` its cursor.
//! - **healthy**: the others. The first `--senders` of them also send, `--rate` texts a second in all.
//!
//! Every participant that reads checks the room's sequence: each room event's `seq` must follow the previous
//! one, from its join cursor on (a hole is a lost event, a repeat a duplicate). A stalled channel is watched in
//! `/proc/net/tcp` (the server is on this machine) every 200 ms: its server-side socket's send queue stops growing
//! when the server's writes block (the *stall*). The let-go is seen at once when the server resets the connection
//! (its pending error, read every 50 ms), and otherwise when the socket leaves the server (its inode becomes 0, or
//! it is gone, in two samples in a row). The server's RSS (`VmRSS`) is sampled every second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::clients::{self, Technique};
use super::http::Http;
use super::probe::Probe;
use super::server;

/// `chatlab bench soak`: a mixed crowd for a long time, with clients that stall and clients that reconnect.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The chatlab to drive, as `http://HOST:PORT` on this machine (its sockets are watched in `/proc/net/tcp`).
    /// Default: start one here, as a child process.
    #[arg(long)]
    pub url: Option<String>,

    /// Process id of the `--url` server, for its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Extra flag for the chatlab the soak starts itself (repeat).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,

    /// Participants, all four techniques in turn.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(8..=15_000))]
    pub participants: u32,

    /// Seconds of soak after everyone has joined.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,

    /// Texts per second in the whole room.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,

    /// Participants that send (healthy ones, mixed techniques).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub senders: u32,

    /// Length of each text, in bytes.
    #[arg(long, default_value_t = 1000)]
    pub text_bytes: usize,

    /// Seconds between a reconnecting participant's reconnections.
    #[arg(long, default_value_t = 5.0)]
    pub reconnect_every: f64,

    /// Short polling's interval, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,

    /// The server's `--write-timeout`, in seconds: given to the server the soak starts, and the bound a stalled
    /// connection must be let go within (plus a second).
    #[arg(long, default_value_t = 10)]
    pub write_timeout: u64,

    /// Joins in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub join_concurrency: u32,

    /// Texts of `--text-bytes` posted before anyone joins, so that the server's retained history is full when the
    /// soak's clock starts and its RSS measures the crowd, not the history filling up. Default: the server's
    /// default `--history`; 0 posts none. A `--url` server must take them (its rate limits).
    #[arg(long, default_value_t = 10_000)]
    pub fill_history: u64,

    /// Also write the report, as JSON, to this file.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// How much the server's RSS may grow from the soak's first minute to its last and still count as flat.
pub const RSS_GROWTH_MAX: f64 = 0.05;

/// What a soak found.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SoakReport {
    /// When it ran (UTC) and the command.
    pub date: String,
    /// The command line.
    pub command: String,
    /// Participants by role.
    pub participants: u32,
    /// Healthy participants (they read everything), the senders among them.
    pub healthy: u32,
    /// Participants that reconnect every `--reconnect-every` seconds.
    pub reconnecting: u32,
    /// Participants whose channels stop reading.
    pub stalled: u32,
    /// Participants that could not join.
    pub join_errors: u32,
    /// Texts posted before the joins to fill the retained history (`--fill-history`).
    #[serde(default)]
    pub history_filled: u64,
    /// Seconds the joins took.
    pub join_s: f64,
    /// Seconds of soak.
    pub duration_s: f64,
    /// Texts sent, and sends refused or broken.
    pub sent: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Reconnections made.
    pub reconnects: u64,
    /// Room events received by readers (healthy and reconnecting).
    pub events_received: u64,
    /// Room events missing from a reader's sequence (holes, and the tail it never got).
    pub lost: u64,
    /// Room events a reader got twice.
    pub duplicated: u64,
    /// `gap` events readers got (a cursor older than the history: none expected).
    pub gaps: u64,
    /// Readers whose channel failed for good (counted as losing the rest).
    pub readers_failed: u64,
    /// Why readers' channels failed (a reconnecting reader retries): message -> times.
    pub reader_errors: std::collections::BTreeMap<String, u64>,
    /// Stalled channels opened, and let go by the server.
    pub stalled_channels: u64,
    /// Stalled channels the server let go.
    pub let_go: u64,
    /// Stalled channels still open at the end whose writes had been blocked more than `--write-timeout` + 1 s.
    pub overdue: u64,
    /// From the stall (the server's send queue stopped growing) to the let-go, in seconds: median and max.
    pub let_go_after_stall_s: Option<(f64, f64)>,
    /// The same, 99th percentile.
    pub let_go_after_stall_p99_s: Option<f64>,
    /// Let-gos later than `--write-timeout` + 1 s after the stall.
    pub let_go_late: u64,
    /// From the client's last read to the stall (the buffers filling), in seconds: median and max.
    pub fill_s: Option<(f64, f64)>,
    /// From the client's last read to the let-go, in seconds: median and max.
    pub let_go_after_last_read_s: Option<(f64, f64)>,
    /// Server RSS in KiB: median of the first and of the last minute of the soak (or third, if shorter), and max.
    pub rss_first_kib: Option<u64>,
    /// See `rss_first_kib`.
    pub rss_last_kib: Option<u64>,
    /// See `rss_first_kib`.
    pub rss_max_kib: Option<u64>,
    /// Connection attempts the kernel dropped over the soak because a listening socket's accept queue was full
    /// (`TcpExt: ListenOverflows` in `/proc/net/netstat`, machine-wide): a client whose connect is dropped retries
    /// after 1, 3, 7, 15 s, which can outlast a session's lease.
    pub listen_overflows: Option<u64>,
    /// Server RSS in KiB, the median of each minute of the soak (of each tenth, if shorter than ten minutes): whether
    /// it levels off or keeps growing.
    pub rss_per_minute_kib: Vec<u64>,
    /// The server's `/api/stats` at the end (`write_timeouts`, `slow_consumers`, ... per technique, and `other`).
    pub server: serde_json::Value,
    /// `--write-timeout`, seconds.
    pub write_timeout_s: u64,
}

impl SoakReport {
    /// Everyone joined, nothing lost or duplicated, every stalled channel let go in time, and the server's RSS
    /// flat after the first minute.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// What failed, one line each (empty when the soak passed).
    pub fn failures(&self) -> Vec<String> {
        let bound = self.write_timeout_s as f64 + 1.0;
        let mut failed = Vec::new();
        if self.join_errors > 0 {
            failed.push(format!("{} participants could not join", self.join_errors));
        }
        if self.lost > 0 || self.duplicated > 0 || self.readers_failed > 0 {
            failed.push(format!(
                "readers lost {} events, got {} twice, {} readers failed",
                self.lost, self.duplicated, self.readers_failed
            ));
        }
        let late_max = self.let_go_after_stall_s.map_or(0.0, |(_, max)| max);
        if self.overdue > 0 || self.let_go_late > 0 || late_max > bound {
            failed.push(format!(
                "{} stalled connections let go later than {bound} s after their stall (max {late_max:.2} s), {} still \
                 open past it",
                self.let_go_late, self.overdue
            ));
        }
        if self.rss_flat() == Some(false) {
            failed.push(format!(
                "the server's RSS grew more than {:.0} % after the first minute",
                RSS_GROWTH_MAX * 100.0
            ));
        }
        failed
    }

    /// Whether the server's RSS in the last minute (median) is within [`RSS_GROWTH_MAX`] of the first minute's:
    /// the first minute is the warm-up (stalled channels filling their buffers), and with the history filled
    /// beforehand (`--fill-history`) nothing else should grow. `None` without RSS samples.
    pub fn rss_flat(&self) -> Option<bool> {
        let (first, last) = (self.rss_first_kib?, self.rss_last_kib?);
        Some(last as f64 <= first as f64 * (1.0 + RSS_GROWTH_MAX))
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let pair = |p: Option<(f64, f64)>| p.map_or("-".into(), |(m, x)| format!("{m:.2} s median, {x:.2} s max"));
        let kib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let other = &self.server["other"];
        let timeouts: Vec<String> = ["ws", "sse", "longpoll", "poll"]
            .iter()
            .map(|t| format!("{t} {}", self.server["transports"][t]["write_timeouts"]))
            .collect();
        let failures = self.failures();
        let why: String =
            failures.iter().map(|f| format!("- {f}\n")).chain(failures.first().map(|_| "\n".into())).collect();
        let slow: u64 = ["ws", "sse", "longpoll", "poll"]
            .iter()
            .filter_map(|t| self.server["transports"][t]["slow_consumers"].as_u64())
            .sum();
        format!(
            "## chatlab soak: {verdict}\n\n`{command}` ({date})\n\n{why}\
             | | |\n|---|---|\n\
             | participants | {p} ({h} healthy, {r} reconnecting, {s} stalled; {je} could not join; joined in {js:.1} s) |\n\
             | soak | {d:.0} s, {sent} texts sent ({se} failed), {rc} reconnections |\n\
             | readers | {ev} room events received; lost {lost}, duplicated {dup}, gaps {gaps}, failed readers {rf} |\n\
             | reader errors | {errors} |\n\
             | stalled channels | {sc} opened, {lg} let go, {od} overdue |\n\
             | stall → let go | {las}, p99 {p99}; {late} later than --write-timeout {wt} s + 1 s |\n\
             | last read → stall (buffers filling) | {fill} |\n\
             | last read → let go | {lar} |\n\
             | server RSS | first minute {rf1}, last minute {rl1} ({flat}), max {rmx}; history filled with {hf} texts first |\n\
             | server RSS over time (MiB) | {rpm} |\n\
             | server write_timeouts | {timeouts}, other {owt} |\n\
             | server slow_consumers, header_timeouts, idle_evictions | {slow}, {ht}, {ie} |\n\
             | connection attempts dropped, accept queue full (machine-wide) | {lo} |\n",
            verdict = if failures.is_empty() { "passed" } else { "FAILED" },
            command = self.command,
            date = self.date,
            p = self.participants,
            h = self.healthy,
            r = self.reconnecting,
            s = self.stalled,
            je = self.join_errors,
            js = self.join_s,
            d = self.duration_s,
            sent = self.sent,
            se = self.send_errors,
            rc = self.reconnects,
            ev = self.events_received,
            lost = self.lost,
            dup = self.duplicated,
            gaps = self.gaps,
            rf = self.readers_failed,
            errors = if self.reader_errors.is_empty() {
                "none".to_owned()
            } else {
                self.reader_errors.iter().map(|(e, n)| format!("{n}× {e}")).collect::<Vec<_>>().join("; ")
            },
            sc = self.stalled_channels,
            lg = self.let_go,
            od = self.overdue,
            las = pair(self.let_go_after_stall_s),
            p99 = self.let_go_after_stall_p99_s.map_or("-".into(), |p| format!("{p:.2} s")),
            late = self.let_go_late,
            wt = self.write_timeout_s,
            fill = pair(self.fill_s),
            lar = pair(self.let_go_after_last_read_s),
            rf1 = kib(self.rss_first_kib),
            rl1 = kib(self.rss_last_kib),
            rmx = kib(self.rss_max_kib),
            flat = match self.rss_flat() {
                Some(true) => format!("flat: within {:.0} %", RSS_GROWTH_MAX * 100.0),
                Some(false) => format!("GROWING: over {:.0} %", RSS_GROWTH_MAX * 100.0),
                None => "not measured".to_owned(),
            },
            hf = self.history_filled,
            rpm = self.rss_per_minute_kib.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(", "),
            timeouts = timeouts.join(", "),
            owt = other["write_timeouts"],
            ht = other["header_timeouts"],
            ie = other["idle_evictions"],
            lo = self.listen_overflows.map_or("-".into(), |n| n.to_string()),
        )
    }
}

/// What a participant does besides reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Healthy,
    Reconnecting,
    Stalled,
}

/// The technique of participant `index`, and its role.
fn assign(index: usize) -> (Technique, Role) {
    const ORDER: [Technique; 4] = [Technique::Ws, Technique::Sse, Technique::LongPoll, Technique::Poll];
    let role = match (index % 40, index % 80) {
        (0 | 1, _) => Role::Stalled,
        (_, 2..=5) => Role::Reconnecting,
        _ => Role::Healthy,
    };
    (ORDER[index % 4], role)
}

/// One reader's view of the room's sequence. Only its own task writes it.
#[derive(Debug, Default)]
struct Sequence {
    /// The next `seq` expected.
    next: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    gaps: AtomicU64,
    /// The channel failed and could not be reopened.
    failed: AtomicU64,
}

impl Sequence {
    fn starting_after(cursor: u64) -> Arc<Sequence> {
        let sequence = Sequence::default();
        sequence.next.store(cursor + 1, Ordering::Relaxed);
        Arc::new(sequence)
    }

    /// The cursor to resume from (`since=`): the last `seq` seen.
    fn cursor(&self) -> u64 {
        self.next.load(Ordering::Relaxed) - 1
    }

    /// Looks at received bytes (WebSocket frames, SSE events, poll bodies) for room events and `gap`s.
    fn observe(&self, bytes: &[u8]) {
        const START: &[u8] = b"{\"type\":\"";
        for at in memchr::memmem::find_iter(bytes, START) {
            let rest = &bytes[at + START.len()..];
            if rest.starts_with(b"gap\"") {
                self.gaps.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let room_event =
                [&b"message\""[..], b"notification\"", b"nick_update\""].iter().any(|t| rest.starts_with(t));
            if !room_event {
                continue; // welcome, error: no seq of the room
            }
            let Some(seq) = number_after(rest, b"\"seq\":") else { continue };
            self.see(seq);
        }
    }

    fn see(&self, seq: u64) {
        let next = self.next.load(Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
        if seq < next {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if seq > next {
            self.lost.fetch_add(seq - next, Ordering::Relaxed);
        }
        self.next.store(seq + 1, Ordering::Relaxed);
    }
}

/// The number after the first `key` in `bytes`.
fn number_after(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(bytes, key)? + key.len();
    let digits = &bytes[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// What every participant shares.
#[derive(Clone)]
struct Shared {
    authority: String,
    probe: Arc<Probe>,
    stop: CancellationToken,
    /// When the soak ends: reconnections and new stalled channels stop.
    end: Instant,
    reconnect_every: Duration,
    poll_interval: Duration,
    reconnects: Arc<AtomicU64>,
    watch: Arc<Watch>,
    /// Why readers' channels failed: message -> times.
    errors: Arc<Mutex<HashMap<String, u64>>>,
}

impl Shared {
    /// Counts one failure of a reader's channel.
    fn failed(&self, technique: Technique, error: &str) {
        let key = format!("{}: {}", technique.as_str(), error.chars().take(120).collect::<String>());
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
    }

    fn context(&self, index: usize) -> clients::Context {
        clients::Context {
            probe: self.probe.clone(),
            stop: self.stop.clone(),
            poll_interval: self.poll_interval,
            browser_headers: false,
            index,
        }
    }

    /// When a reconnecting reader next reconnects (never for the others).
    fn reconnect_at(&self, role: Role, index: usize) -> Option<Instant> {
        (role == Role::Reconnecting)
            .then(|| Instant::now() + self.reconnect_every.mul_f64(0.5 + clients::spread(index, 3)))
            .filter(|at| *at < self.end)
    }
}

/// A joined reader: its session, its sequence, and how to send (for senders).
struct Joined {
    sequence: Arc<Sequence>,
    session: String,
    /// A WebSocket's sending half (a sender on `/ws` sends on it).
    sink: Option<futures_util::stream::SplitSink<WsSocket, Message>>,
}

type WsSocket = tokio_tungstenite::WebSocketStream<super::probe::CountingStream>;

/// Joins reader `index` and starts its reading task.
async fn join_reader(shared: &Shared, index: usize, technique: Technique, role: Role) -> anyhow::Result<Joined> {
    let authority = shared.authority.clone();
    if technique == Technique::Ws {
        let context = shared.context(index);
        let (sink, mut frames) = clients::ws::open(&format!("ws://{authority}/ws"), &authority, &context).await?;
        let welcome = clients::ws::first_frame(&mut frames).await?;
        let welcome: serde_json::Value = serde_json::from_slice(welcome.into_data().as_ref())?;
        let session = welcome["session"].as_str().context("the welcome names no session")?.to_owned();
        let sequence = Sequence::starting_after(welcome["seq"].as_u64().context("the welcome has no seq")?);
        let (keep, sink) = if role == Role::Reconnecting { (Some(sink), None) } else { (None, Some(sink)) };
        tokio::spawn(read_ws(shared.clone(), index, role, session.clone(), sequence.clone(), frames, keep));
        return Ok(Joined { sequence, session, sink });
    }
    let transport = match technique {
        Technique::Sse => "sse",
        Technique::LongPoll => "longpoll",
        _ => "poll",
    };
    let mut down = Http::connect(&authority, shared.probe.clone(), false).await?;
    let (session, cursor) = down.join(transport).await?;
    let sequence = Sequence::starting_after(cursor);
    tokio::spawn(read_http(shared.clone(), index, technique, role, session.clone(), sequence.clone(), down));
    Ok(Joined { sequence, session, sink: None })
}

/// A WebSocket reader: counts every frame; a reconnecting one reopens `/ws?session=&since=` now and then.
async fn read_ws(
    shared: Shared,
    index: usize,
    role: Role,
    session: String,
    sequence: Arc<Sequence>,
    mut frames: futures_util::stream::SplitStream<WsSocket>,
    mut sink: Option<futures_util::stream::SplitSink<WsSocket, Message>>,
) {
    let mut reconnect_at = shared.reconnect_at(role, index);
    let mut failures = 0;
    loop {
        let frame = tokio::select! {
            () = shared.stop.cancelled() => return,
            () = sleep_until(reconnect_at) => None,
            frame = frames.next() => Some(frame),
        };
        match frame {
            Some(Some(Ok(Message::Text(text)))) => {
                failures = 0;
                sequence.observe(text.as_bytes());
            }
            Some(Some(Ok(_))) => {}
            frame => {
                if let Some(frame) = frame {
                    // A broken socket: reconnect from the cursor a second later, as a page does; a third
                    // failure in a row is the end.
                    shared.failed(Technique::Ws, &format!("{frame:?}"));
                    failures += 1;
                    if failures > MAX_FAILURES {
                        sequence.failed.store(1, Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Reconnect (its time came, or the socket broke): same session, from the cursor.
                if let Some(mut old) = sink.take() {
                    let _ = old.close().await;
                }
                let url = format!("ws://{}/ws?session={session}&since={}", shared.authority, sequence.cursor());
                let opened = async {
                    let (new_sink, mut new_frames) =
                        clients::ws::open(&url, &shared.authority, &shared.context(index)).await?;
                    clients::ws::first_frame(&mut new_frames).await?; // its welcome
                    anyhow::Ok((new_sink, new_frames))
                };
                match opened.await {
                    Ok((new_sink, new_frames)) => {
                        sink = Some(new_sink);
                        frames = new_frames;
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        shared.failed(Technique::Ws, &format!("reconnecting: {error:#}"));
                        sequence.failed.store(1, Ordering::Relaxed);
                        return;
                    }
                }
                reconnect_at = shared.reconnect_at(role, index);
            }
        }
    }
}

/// An SSE, long-poll or short-poll reader; a reconnecting one drops its connection now and then and continues on
/// a new one from its cursor.
async fn read_http(
    shared: Shared,
    index: usize,
    technique: Technique,
    role: Role,
    session: String,
    sequence: Arc<Sequence>,
    mut down: Http,
) {
    let mut reconnect_at = shared.reconnect_at(role, index);
    let mut failures = 0;
    let mut ticks = tokio::time::interval_at(
        Instant::now() + shared.poll_interval.mul_f64(clients::spread(index, 7)),
        shared.poll_interval,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let round = async {
            match technique {
                Technique::Sse => {
                    let path = format!("/api/sse?session={session}&since={}", sequence.cursor());
                    let response = down.send(Method::GET, &path, None).await?;
                    if response.status() != StatusCode::OK {
                        bail!("stream refused: {}", response.status());
                    }
                    let mut body = response.into_body();
                    let mut pending: Vec<u8> = Vec::new();
                    while let Some(frame) = body.frame().await {
                        let Ok(data) = frame?.into_data() else { continue };
                        pending.extend_from_slice(&data);
                        if let Some(end) = memchr::memmem::rfind(&pending, b"\n\n") {
                            sequence.observe(&pending[..end + 2]);
                            pending.drain(..end + 2);
                        }
                    }
                    bail!("the stream ended")
                }
                _ => {
                    let long = technique == Technique::LongPoll;
                    if !long {
                        ticks.tick().await;
                    }
                    let endpoint = if long { "longpoll" } else { "poll" };
                    let path = format!("/api/{endpoint}?session={session}&since={}", sequence.cursor());
                    let (status, body) = down.call(Method::GET, &path, None).await?;
                    if status != StatusCode::OK {
                        bail!("poll refused: {status}");
                    }
                    sequence.observe(&body);
                    Ok(())
                }
            }
        };
        let outcome = tokio::select! {
            () = shared.stop.cancelled() => return,
            () = sleep_until(reconnect_at) => None,
            outcome = round => Some(outcome),
        };
        match outcome {
            Some(Ok(())) => {
                failures = 0;
                continue;
            }
            outcome => {
                if let Some(Err(error)) = outcome {
                    // A failed round: counted, and retried on a new connection a second later, as a page does;
                    // a refusal (an unknown session) or a third failure in a row is the end.
                    let message = format!("{error:#}");
                    shared.failed(technique, &message);
                    failures += 1;
                    if failures > MAX_FAILURES || message.contains("refused") {
                        sequence.failed.store(1, Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // A new connection, as a page does after a network change; the cursor carries on.
                match Http::connect(&shared.authority, shared.probe.clone(), false).await {
                    Ok(fresh) => down = fresh,
                    Err(error) => {
                        shared.failed(technique, &format!("connecting: {error:#}"));
                        sequence.failed.store(1, Ordering::Relaxed);
                        return;
                    }
                }
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                reconnect_at = shared.reconnect_at(role, index);
            }
        }
    }
}

/// The kernel's count of connection attempts dropped because an accept queue was full, if it can be read.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|name| name == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Failures in a row after which a reader gives up.
const MAX_FAILURES: u32 = 3;

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A sender: `--rate` / `--senders` texts a second from a spread start, on its WebSocket or by POST.
async fn send(
    shared: Shared,
    index: usize,
    joined_session: String,
    mut sink: Option<futures_util::stream::SplitSink<WsSocket, Message>>,
    every: Duration,
    text_bytes: usize,
    counters: Arc<(AtomicU64, AtomicU64)>,
) {
    let mut up = None;
    let mut next = Instant::now() + every.mul_f64(clients::spread(index, 1));
    let mut n = 0u64;
    while next < shared.end {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let mut text = format!("soak #{index} {n} ");
        while text.len() < text_bytes {
            text.push('x');
        }
        n += 1;
        let sent = match &mut sink {
            Some(sink) => sink.send(Message::text(text)).await.is_ok(),
            None => {
                // A kept-alive connection the server has since closed (idle past --header-timeout) is replaced
                // and the text sent again on the new one, as a browser does.
                let mut posted = false;
                for _ in 0..2 {
                    if up.is_none() {
                        up = Http::connect(&shared.authority, shared.probe.clone(), false).await.ok();
                    }
                    let Some(http) = &mut up else { break };
                    if http.post_text(&joined_session, &text).await.is_ok() {
                        posted = true;
                        break;
                    }
                    up = None;
                }
                posted
            }
        };
        let counter = if sent { &counters.0 } else { &counters.1 };
        counter.fetch_add(1, Ordering::Relaxed);
        next += every;
    }
}

/// One stalled channel's watch.
#[derive(Debug)]
struct Watched {
    /// When the client last read.
    stopped: Instant,
    /// The server-side socket's send queue, and when it last changed.
    queue: u64,
    changed: Instant,
    /// The first of the samples, in a row, in which it was missing: one is not enough, as `/proc/net/tcp` is read
    /// in pieces and a socket can slip between them while others come and go.
    missing: Option<Instant>,
    let_go: Option<oneshot::Sender<()>>,
}

impl Watched {
    /// The let-go of this channel, seen at `gone`.
    fn let_go_at(&self, gone: Instant) -> LetGo {
        LetGo { fill: (self.changed - self.stopped).as_secs_f64(), after_stall: (gone - self.changed).as_secs_f64() }
    }
}

/// One let-go, in seconds: the buffers filling (last read to stall), and stall to let-go.
#[derive(Debug, Clone, Copy)]
struct LetGo {
    fill: f64,
    after_stall: f64,
}

/// The stalled channels, watched through `/proc/net/tcp` by their client port.
#[derive(Debug, Default)]
struct Watch {
    /// The server's port.
    port: u16,
    /// A std mutex: a few map operations per sample or per stalled channel, never held across an `.await`.
    watched: Mutex<HashMap<u16, Watched>>,
    done: Mutex<Vec<LetGo>>,
    opened: AtomicU64,
}

/// How often `/proc/net/tcp` is read while stalled channels are watched.
const SAMPLE: Duration = Duration::from_millis(200);

/// How often a stalled channel's socket is asked whether the server has reset it.
const RESET_LOOK: Duration = Duration::from_millis(50);

impl Watch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the channel on client port `port`, which stopped reading now; resolves when the server lets it go.
    fn add(&self, port: u16) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(port, Watched { stopped: now, queue: 0, changed: now, missing: None, let_go: Some(tx) });
        rx
    }

    /// One sample: each watched socket's send queue, or its departure.
    fn sample(&self) {
        if self.lock().is_empty() {
            return;
        }
        let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return };
        let now = Instant::now();
        // Server-side sockets on the server's port: remote port -> (send queue, inode).
        let mut sockets: HashMap<u16, (u64, u64)> = HashMap::new();
        for line in table.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(remote), Some(_state), Some(queues)) =
                (fields.next().and(fields.next()), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let port = |address: &str| address.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if port(local) != Some(self.port) {
                continue;
            }
            let Some(remote) = port(remote) else { continue };
            let queue = queues.split(':').next().and_then(|q| u64::from_str_radix(q, 16).ok()).unwrap_or(0);
            let inode = fields.nth(4).and_then(|i| i.parse().ok()).unwrap_or(0);
            sockets.insert(remote, (queue, inode));
        }
        let mut done = Vec::new();
        self.lock().retain(|port, watched| match sockets.get(port) {
            Some(&(queue, inode)) if inode != 0 => {
                watched.missing = None;
                if queue != watched.queue {
                    watched.queue = queue;
                    watched.changed = now;
                }
                true
            }
            _ if watched.missing.is_none() => {
                watched.missing = Some(now);
                true
            }
            _ => {
                let gone = watched.missing.unwrap_or(now);
                done.push(watched.let_go_at(gone));
                if let Some(tx) = watched.let_go.take() {
                    let _ = tx.send(());
                }
                false
            }
        });
        self.done.lock().unwrap_or_else(|p| p.into_inner()).extend(done);
    }

    /// The channel on client port `port` was reset by the server now.
    fn reset(&self, port: u16) {
        let Some(watched) = self.lock().remove(&port) else { return };
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push(watched.let_go_at(Instant::now()));
    }

    /// Channels still watched whose send queue has not moved for longer than `bound`.
    fn overdue(&self, bound: Duration) -> u64 {
        let now = Instant::now();
        self.lock().values().filter(|w| w.queue > 0 && now - w.changed > bound).count() as u64
    }
}

/// A client socket that holds little: a 4 KiB receive buffer and a 536-byte MSS.
async fn small_socket(authority: &str) -> anyhow::Result<TcpStream> {
    let addr: std::net::SocketAddr = authority.parse().context("the soak needs --url http://IP:PORT")?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_recv_buffer_size(4096)?;
    socket.set_tcp_mss(536)?;
    socket.set_nonblocking(true)?;
    Ok(tokio::net::TcpSocket::from_std_stream(socket.into()).connect(addr).await?)
}

/// A stalled participant: opens a channel that stops reading after its head, waits for the server to let it
/// go, and does it again until the end.
async fn stall(shared: Shared, technique: Technique) {
    let session = match technique {
        Technique::Ws => None,
        _ => match Http::connect(&shared.authority, shared.probe.clone(), false).await {
            Ok(mut http) => http.join("sse").await.ok().map(|(session, _)| session),
            Err(_) => None,
        },
    };
    while Instant::now() < shared.end && !shared.stop.is_cancelled() {
        let opened = async {
            let mut socket = small_socket(&shared.authority).await?;
            let port = socket.local_addr()?.port();
            let path = match (&session, technique) {
                (Some(session), _) => format!("/api/sse?session={session}"),
                _ => "/ws".to_owned(),
            };
            let upgrade = if session.is_none() {
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n"
            } else {
                ""
            };
            let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{upgrade}\r\n", shared.authority);
            socket.write_all(head.as_bytes()).await?;
            let mut first = [0u8; 12];
            socket.read_exact(&mut first).await?;
            if !(first.starts_with(b"HTTP/1.1 200") || first.starts_with(b"HTTP/1.1 101")) {
                bail!("refused: {}", String::from_utf8_lossy(&first));
            }
            anyhow::Ok((socket, port))
        };
        let Ok((socket, port)) = opened.await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        // From here on it never reads. A server that resets the connection it lets go is seen at once here (the
        // socket's pending error, which reading nothing leaves in place); one that closes it is seen by the
        // watch, when the socket leaves the server.
        let mut let_go = shared.watch.add(port);
        let mut look = tokio::time::interval(RESET_LOOK);
        loop {
            tokio::select! {
                () = shared.stop.cancelled() => return,
                _ = &mut let_go => break,
                _ = look.tick() => {
                    if let Ok(Some(_)) = socket2::SockRef::from(&socket).take_error() {
                        shared.watch.reset(port);
                        break;
                    }
                }
            }
        }
        drop(socket);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the soak and prints its report.
///
/// # Errors
/// Bad flags, a server that cannot be started or reached, or a report that cannot be written.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let report = soak(&args).await?;
    print!("{}", report.markdown());
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if !report.passed() {
        bail!("the soak failed: {}", report.failures().join("; "));
    }
    Ok(())
}

/// Runs the soak.
///
/// # Errors
/// Bad flags, or a server that cannot be started or reached.
pub async fn soak(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    if !(args.duration > 0.0 && args.rate > 0.0 && args.reconnect_every > 0.0 && args.poll_interval > 0.0) {
        bail!("--duration, --rate, --reconnect-every and --poll-interval must be positive");
    }
    // Each participant holds a socket here (senders two), and the server one per socket.
    let needed = u64::from(args.participants) + u64::from(args.senders) + 256;
    if let Some(limit) = open_files_limit() {
        if limit < needed {
            bail!("{} participants need about {needed} open files; `ulimit -n` allows {limit}", args.participants);
        }
    }
    let mut own = None;
    let (authority, pid) = match &args.url {
        Some(url) => (server::authority_of(url, "http")?, args.server_pid),
        None => {
            let mut extra = vec![format!("--write-timeout={}", args.write_timeout)];
            extra.extend(args.server_args.iter().cloned());
            let started = server::start(&extra, None).await?;
            let found = (started.authority.clone(), Some(started.pid));
            own = Some(started);
            found
        }
    };
    let port = authority.rsplit(':').next().and_then(|p| p.parse().ok()).context("no port in the server's address")?;
    let stop = CancellationToken::new();
    let guard = stop.clone().drop_guard();
    let watch = Arc::new(Watch { port, ..Watch::default() });
    let count = args.participants as usize;
    // Everyone joins first; the soak's clock starts after.
    let mut shared = Shared {
        authority: authority.clone(),
        probe: Probe::new(),
        stop: stop.clone(),
        end: Instant::now() + Duration::from_secs(86_400),
        reconnect_every: Duration::from_secs_f64(args.reconnect_every),
        poll_interval: Duration::from_secs_f64(args.poll_interval),
        reconnects: Arc::default(),
        watch: watch.clone(),
        errors: Arc::default(),
    };
    if args.fill_history > 0 {
        let started = Instant::now();
        fill_history(&authority, args.fill_history, args.text_bytes).await?;
        eprintln!("soak: history filled with {} texts in {:.1} s", args.fill_history, started.elapsed().as_secs_f64());
    }
    let roles: Vec<(Technique, Role)> = (0..count).map(assign).collect();
    eprintln!("soak: {count} participants joining");
    let started = Instant::now();
    // Readers join with no end yet: a reconnecting reader reconnects until the soak stops.
    let joined: Vec<Option<Joined>> = futures_util::stream::iter(roles.iter().enumerate())
        .map(|(index, &(technique, role))| {
            let shared = shared.clone();
            async move {
                match role {
                    Role::Stalled => None,
                    _ => join_reader(&shared, index, technique, role).await.ok(),
                }
            }
        })
        .buffered(args.join_concurrency as usize)
        .collect()
        .await;
    let join_s = started.elapsed().as_secs_f64();
    let readers = roles.iter().filter(|(_, role)| *role != Role::Stalled).count();
    let join_errors = readers - joined.iter().filter(|j| j.is_some()).count();
    eprintln!("soak: joined in {join_s:.1} s ({join_errors} failed); soaking for {} s", args.duration);

    // The soak proper.
    let start = Instant::now();
    let overflows_before = listen_overflows();
    // Stalled participants and senders start now and stop at the end.
    shared.end = start + Duration::from_secs_f64(args.duration);
    let rss = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    // On a thread of its own: reading `/proc/net/tcp` blocks, and the clients' tasks must not wait for it.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (rss, sampling, watch) = (rss.clone(), sampling.clone(), watch.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while sampling.load(Ordering::Relaxed) {
                let next = std::time::Instant::now() + SAMPLE;
                watch.sample();
                n += 1;
                if n.is_multiple_of(5) {
                    if let Some(kib) = pid.and_then(|pid| server::rss_kib(&[pid])) {
                        rss.lock().unwrap_or_else(|p| p.into_inner()).push((start.elapsed().as_secs_f64(), kib));
                    }
                }
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
        })
    };
    for &(technique, role) in &roles {
        if role == Role::Stalled {
            tokio::spawn(stall(shared.clone(), technique));
        }
    }
    let counters = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let senders: Vec<usize> = roles
        .iter()
        .enumerate()
        .filter(|(i, (_, role))| *role == Role::Healthy && joined[*i].is_some())
        .map(|(i, _)| i)
        .take(args.senders as usize)
        .collect();
    let every = Duration::from_secs_f64(senders.len().max(1) as f64 / args.rate);
    let mut sequences = Vec::new();
    let mut joined = joined;
    for (index, slot) in joined.iter_mut().enumerate() {
        let Some(reader) = slot.take() else { continue };
        sequences.push(reader.sequence.clone());
        if senders.contains(&index) {
            let task =
                send(shared.clone(), index, reader.session, reader.sink, every, args.text_bytes, counters.clone());
            tokio::spawn(task);
        }
    }
    tokio::time::sleep_until(shared.end).await;
    let bound = Duration::from_secs(args.write_timeout) + Duration::from_secs(1);
    let overdue = watch.overdue(bound);

    // Let the last texts arrive, then every reader must have reached the newest event anyone saw.
    tokio::time::sleep(Duration::from_secs_f64(args.poll_interval) + Duration::from_secs(3)).await;
    let newest = sequences.iter().map(|s| s.cursor()).max().unwrap_or(0);
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle
        && sequences.iter().any(|s| s.cursor() < newest && s.failed.load(Ordering::Relaxed) == 0)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let get = |f: fn(&Sequence) -> &AtomicU64| sequences.iter().map(|s| f(s).load(Ordering::Relaxed)).sum::<u64>();
    let tail: u64 = sequences.iter().map(|s| newest.saturating_sub(s.cursor())).sum();
    let server = match Http::connect(&authority, Probe::new(), false).await {
        Ok(mut http) => match http.call(Method::GET, "/api/stats", None).await {
            Ok((StatusCode::OK, body)) => serde_json::from_slice(&body).unwrap_or_default(),
            _ => serde_json::Value::Null,
        },
        Err(_) => serde_json::Value::Null,
    };
    drop(guard);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    drop(own);

    let done = watch.done.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let rss = rss.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let minute = (args.duration / 3.0).min(60.0);
    let median_between = |from: f64, to: f64| {
        let mut kib: Vec<u64> = rss.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, k)| *k).collect();
        kib.sort_unstable();
        kib.get(kib.len() / 2).copied()
    };
    let reader_errors = shared.errors.lock().unwrap_or_else(|p| p.into_inner()).clone().into_iter().collect();
    let count_role = |want: Role| roles.iter().filter(|(_, role)| *role == want).count() as u32;
    Ok(SoakReport {
        date: super::report::utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        participants: args.participants,
        healthy: count_role(Role::Healthy),
        reconnecting: count_role(Role::Reconnecting),
        stalled: count_role(Role::Stalled),
        join_errors: join_errors as u32,
        history_filled: args.fill_history,
        join_s,
        duration_s: args.duration,
        sent: counters.0.load(Ordering::Relaxed),
        send_errors: counters.1.load(Ordering::Relaxed),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        events_received: get(|s| &s.received),
        lost: get(|s| &s.lost) + tail,
        duplicated: get(|s| &s.duplicated),
        gaps: get(|s| &s.gaps),
        readers_failed: get(|s| &s.failed),
        reader_errors,
        stalled_channels: watch.opened.load(Ordering::Relaxed),
        let_go: done.len() as u64,
        overdue,
        let_go_after_stall_s: median_max(done.iter().map(|d| d.after_stall)),
        let_go_after_stall_p99_s: {
            let mut all: Vec<f64> = done.iter().map(|d| d.after_stall).collect();
            all.sort_by(f64::total_cmp);
            all.get((all.len() * 99).div_ceil(100).saturating_sub(1)).copied()
        },
        let_go_late: done.iter().filter(|d| d.after_stall > bound.as_secs_f64()).count() as u64,
        fill_s: median_max(done.iter().map(|d| d.fill)),
        let_go_after_last_read_s: median_max(done.iter().map(|d| d.fill + d.after_stall)),
        rss_first_kib: median_between(0.0, minute),
        rss_last_kib: median_between(args.duration - minute, args.duration),
        rss_max_kib: rss.iter().map(|(_, k)| *k).max(),
        listen_overflows: overflows_before.zip(listen_overflows()).map(|(before, after)| after.saturating_sub(before)),
        rss_per_minute_kib: {
            let step = if args.duration >= 600.0 { 60.0 } else { args.duration / 10.0 };
            (0..(args.duration / step).ceil() as usize)
                .filter_map(|i| median_between(i as f64 * step, (i + 1) as f64 * step))
                .collect()
        },
        server,
        write_timeout_s: args.write_timeout,
    })
}

/// Posts `texts` texts of `text_bytes` from one session over a few connections at once (a refused one again after
/// a pause), then leaves.
async fn fill_history(authority: &str, texts: u64, text_bytes: usize) -> anyhow::Result<()> {
    const CONNECTIONS: u64 = 16;
    let mut control = Http::connect(authority, Probe::new(), false).await?;
    let (session, _) = control.join("poll").await?;
    let posters = (0..CONNECTIONS).map(|connection| {
        let (authority, session) = (authority.to_owned(), session.clone());
        async move {
            let mut http = Http::connect(&authority, Probe::new(), false).await?;
            let path = format!("/api/messages?session={session}");
            for n in (connection..texts).step_by(CONNECTIONS as usize) {
                let mut text = format!("history {n} ");
                text.extend(std::iter::repeat_n('x', text_bytes.saturating_sub(text.len())));
                let text = Bytes::from(text);
                // A server with rate limits (a `--url` one) refuses some: each is sent again a little later.
                loop {
                    let body = Some(("text/plain;charset=UTF-8", text.clone()));
                    match http.call(Method::POST, &path, body).await? {
                        (StatusCode::ACCEPTED, _) => break,
                        (StatusCode::TOO_MANY_REQUESTS, _) => tokio::time::sleep(Duration::from_millis(100)).await,
                        (status, body) => {
                            bail!("filling the history: {status} {}", String::from_utf8_lossy(&body))
                        }
                    }
                }
            }
            anyhow::Ok(())
        }
    });
    futures_util::future::try_join_all(posters).await?;
    control.leave(&session).await
}

/// The median and the max of `values`, if any.
fn median_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut all: Vec<f64> = values.collect();
    if all.is_empty() {
        return None;
    }
    all.sort_by(f64::total_cmp);
    Some((all[all.len() / 2], all[all.len() - 1]))
}

/// This process's soft limit on open files (`Max open files` in `/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
