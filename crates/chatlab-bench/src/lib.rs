//! `chatlab bench`: real clients of each technique against a real server, measured from both ends.
//!
//! The bench runs one phase per technique, one after another, each with the same scenario and the same number
//! of participants: they join, warm up, then (during `--duration`) chat as the scenario says while every
//! client counts the bytes on its sockets, its HTTP requests, its empty polls, and the latency of every bench
//! message it receives (the send time travels in the text: all clients share this process's clock). After the
//! window the bench waits for the messages still in flight, reads the server's CPU time (`/proc/<pid>/stat`)
//! and counters (`/api/stats`), and everyone leaves. Phases run apart because a process's CPU time cannot be
//! split between techniques that run at once.
//!
//! | file | what |
//! |---|---|
//! | `lib.rs` | the flags and the phases |
//! | `crowd.rs` | a phase's participants: join once, then measured windows of a scenario |
//! | `search.rs` | `--find-max`: the highest rate within a p99 limit with nothing lost |
//! | `wrk.rs` | `--wrk`: chatlab's polls against a bare axum handler, with wrk |
//! | [`bare`] | `chatlab bench-bare`, that bare handler |
//! | [`clients`] | one client per technique behind one `Participant` trait |
//! | `probe.rs` | what clients measure, and the byte-counting socket |
//! | `http.rs` | a plain HTTP/1.1 client connection |
//! | `server.rs` | the server under test: started here or given, its counters and CPU time |
//! | [`soak`] | `chatlab bench soak`: a mixed crowd for minutes, some stalled, some reconnecting: loss, RSS, let-go |
//! | [`report`] | Markdown, JSON and SVG output |

pub mod bare;
pub mod clients;
mod crowd;
mod delay;
mod http;
mod probe;
pub mod report;
mod search;
mod server;
pub mod soak;
pub mod wrk;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use self::clients::Technique;
use self::crowd::{Crowd, Load, Servers};
use self::report::Report;

/// What participants do during the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Nobody sends: what it costs just to stay connected (use a long `--duration`: keep-alives and long-poll
    /// timeouts come every 15 to 25 s).
    Idle,
    /// Each participant sends one text every `--send-every` seconds, from a random start.
    Chat,
    /// Every `--send-every` seconds, every participant sends `--burst` texts back to back, all at once.
    Burst,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A Markdown table, techniques side by side.
    Md,
    /// Every figure, machine-readable (and re-renderable with `--from`).
    Json,
    /// A bar chart per figure.
    Svg,
}

/// Request headers the HTTP clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Headers {
    /// `Host` (and `Content-Type` on POSTs) only: the floor of what HTTP costs.
    Minimal,
    /// What a desktop Chrome adds to a same-origin `fetch` (cookies aside): what a real page pays.
    Browser,
}

/// `chatlab bench <command>`: something else than the side-by-side phases.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// A mixed crowd (all four techniques) for a long time, 5 % of it stalled (never reading) and 5 %
    /// reconnecting: checks nothing is lost or duplicated, the server's memory stays flat, and every stalled
    /// connection is let go within `--write-timeout` + 1 s.
    Soak(soak::SoakArgs),
}

/// `chatlab bench`: drive real clients of each technique and compare what they cost.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Another kind of run than the phases (`soak`).
    #[command(subcommand)]
    pub command: Option<BenchCommand>,

    /// chatlab server(s) to drive, as `http://HOST:PORT` (repeat to spread participants over several processes
    /// sharing one room through `--broker redis://`). Default: start one here, as a child process.
    #[arg(long = "url")]
    pub urls: Vec<String>,

    /// Also drive a plain seed-protocol WebSocket server (such as the Node.js original), e.g. `ws://127.0.0.1:8180/`.
    #[arg(long)]
    pub seed_url: Option<String>,

    /// Process id(s) of the `--url` servers, for their CPU time (read from `/proc/<pid>/stat`).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,

    /// Process id of the `--seed-url` server, for its CPU time.
    #[arg(long)]
    pub seed_pid: Option<u32>,

    /// Techniques to run, in order (`seed` is added when `--seed-url` is given): ws, sse, stream, iframe,
    /// longpoll, poll, mix, seed.
    #[arg(long, value_delimiter = ',', default_value = "ws,sse,longpoll,poll")]
    pub techniques: Vec<Technique>,

    /// What participants do.
    #[arg(long, value_enum, default_value_t = Scenario::Chat)]
    pub scenario: Scenario,

    /// Participants per technique.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub participants: u32,

    /// Only the first N participants send (chat and burst); the others only receive. Default: all.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub senders: Option<u32>,

    /// Chat: texts per second in the whole room, shared by the senders (sets `--send-every` to senders / rate).
    /// With `--find-max`, the first window's rate (default 10).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Search, per technique, for the highest send rate whose window has p99 latency below `--max-p99-ms`, no
    /// failed text and no missed delivery: windows of `--duration` from `--rate` up by `--step`, then
    /// `--refine` windows between the last pass and the first fail. Chat scenario; the crowd joins once.
    #[arg(long)]
    pub find_max: bool,

    /// `--find-max`: the p99 latency limit, in ms.
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,

    /// `--find-max`: the factor between consecutive rates.
    #[arg(long, default_value_t = 1.5)]
    pub step: f64,

    /// `--find-max`: windows spent narrowing between the last pass and the first fail.
    #[arg(long, default_value_t = 2)]
    pub refine: u32,

    /// `--find-max`: tries of a rate whose window failed on latency alone (nothing lost), on a shared machine.
    #[arg(long, default_value_t = 1)]
    pub retries: u32,

    /// `--find-max`: at most this many windows per technique.
    #[arg(long, default_value_t = 20)]
    pub max_steps: u32,

    /// Joins in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub join_concurrency: u32,

    /// Instead of phases: requests per second of `GET /api/poll` and `GET /api/longpoll?timeout=0` (no news)
    /// against a bare axum handler with the same body (`chatlab bench-bare`), with `wrk`, `--repeat` rounds.
    #[arg(long)]
    pub wrk: bool,

    /// `--wrk`: wrk's connections (one session each).
    #[arg(long, default_value_t = 64)]
    pub wrk_connections: usize,

    /// `--wrk`: wrk's threads.
    #[arg(long, default_value_t = 1)]
    pub wrk_threads: usize,

    /// `--wrk`: seconds per run.
    #[arg(long, default_value_t = 10)]
    pub wrk_seconds: u32,

    /// `--wrk`: rounds (each runs every target once; the report gives medians).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,

    /// Seconds of measured activity per technique.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,

    /// Seconds between the last join and the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Short polling's interval, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,

    /// Chat: seconds between one participant's texts. Burst: seconds between bursts.
    #[arg(long, default_value_t = 5.0)]
    pub send_every: f64,

    /// Burst: texts each participant sends per burst.
    #[arg(long, default_value_t = 5)]
    pub burst: u32,

    /// Length of each chat text, in bytes.
    #[arg(long, default_value_t = 32)]
    pub text_bytes: usize,

    /// Request headers of the HTTP clients.
    #[arg(long, value_enum, default_value_t = Headers::Minimal)]
    pub headers: Headers,

    /// Emulated one-way network delay, in ms, that the clients add to every byte each way (a round trip gets
    /// twice this longer). 0 leaves loopback as it is.
    #[arg(long, default_value_t = 0.0)]
    pub delay_ms: f64,

    /// Speak HTTPS to chatlab: the HTTP techniques over HTTP/2 (ALPN `h2`, one HPACK context per connection),
    /// WebSockets over HTTP/1.1 inside TLS. Byte figures count the HTTP bytes inside TLS, as chatlab's counters
    /// do. The chatlab started here gets `--tls-self-signed` (and its certificate is believed); a `--url` must then
    /// be `https://HOST:PORT`, its certificate believed through `--tls-ca` or `--insecure`.
    #[arg(long)]
    pub http2: bool,

    /// `--http2` with `--url`: believe the server's certificate if it chains to these PEM certificates.
    #[arg(long, requires = "http2")]
    pub tls_ca: Option<PathBuf>,

    /// `--http2` with `--url`: believe any certificate (a chatlab on loopback with `--tls-self-signed`).
    #[arg(long, requires = "http2")]
    pub insecure: bool,

    /// Extra flag for the chatlab the bench starts itself (repeat; e.g. `--server-arg=--send-queue=4096`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,

    /// Also write the report to this file, in the format its extension names (`.md`, `.json`, `.svg`); repeat.
    #[arg(long = "out")]
    pub outs: Vec<PathBuf>,

    /// Render a report saved with `--out FILE.json` instead of running a bench; repeat to render the median of
    /// several runs (each figure's median, technique by technique).
    #[arg(long)]
    pub from: Vec<PathBuf>,
}

/// Runs `chatlab bench`.
///
/// # Errors
/// Bad flags, a server that cannot be started or reached, a phase in which no participant could join, or an
/// output file that cannot be written.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchCommand::Soak(soak)) = args.command {
        return soak::run(soak).await;
    }
    let report = if args.from.is_empty() {
        measure(&args).await?
    } else {
        let mut runs = Vec::new();
        for path in &args.from {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            runs.push(
                serde_json::from_str(&text).with_context(|| format!("{} is not a bench report", path.display()))?,
            );
        }
        report::median(runs)?
    };
    print!("{}", report::render(&report, args.format));
    for path in &args.outs {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("md") => Format::Md,
            Some("json") => Format::Json,
            Some("svg") => Format::Svg,
            _ => bail!("--out {}: the extension must be .md, .json or .svg", path.display()),
        };
        std::fs::write(path, report::render(&report, format)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs every phase and gathers the report.
async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let positive = [args.duration, args.poll_interval, args.send_every, args.rate.unwrap_or(1.0), args.step - 1.0]
        .iter()
        .all(|x| *x > 0.0);
    if !positive || args.warmup.is_nan() || args.warmup < 0.0 || args.delay_ms.is_nan() || args.delay_ms < 0.0 {
        bail!(
            "--duration, --poll-interval, --send-every and --rate must be positive, --step above 1; --warmup and \
             --delay-ms not negative"
        );
    }
    if args.wrk {
        return wrk_report(args).await;
    }
    let mut techniques = args.techniques.clone();
    techniques.dedup();
    if args.seed_url.is_some() && !techniques.contains(&Technique::Seed) {
        techniques.push(Technique::Seed);
    }
    if techniques.contains(&Technique::Seed) && args.seed_url.is_none() {
        bail!("the seed technique needs --seed-url ws://HOST:PORT/");
    }
    let chatlab_phases = techniques.iter().any(|t| *t != Technique::Seed);
    let mut server_args = args.server_args.clone();
    let https = if args.http2 {
        let trust = match (&args.tls_ca, args.insecure) {
            (Some(ca), _) => chatlab::tls::Trust::roots_from(ca)?,
            (None, true) => chatlab::tls::Trust::Anyone,
            // The server started here makes its own certificate: the bench believes the one it started.
            (None, false) if args.urls.is_empty() => chatlab::tls::Trust::Anyone,
            (None, false) => bail!("--http2 with --url needs --tls-ca FILE or --insecure to believe the certificate"),
        };
        server_args.push("--tls-self-signed".into());
        Some(probe::Https::new(&trust)?)
    } else {
        None
    };
    // The server under test: given, or started here (only if some phase needs chatlab).
    let mut own = None;
    let (authorities, pids) = if !args.urls.is_empty() {
        let scheme = if args.http2 { "https" } else { "http" };
        let authorities =
            args.urls.iter().map(|u| server::authority_of(u, scheme)).collect::<anyhow::Result<Vec<_>>>()?;
        (authorities, args.server_pids.clone())
    } else if chatlab_phases {
        let server = server::start(&server_args, https.clone()).await?;
        let found = (vec![server.authority.clone()], vec![server.pid]);
        own = Some(server);
        found
    } else {
        (Vec::new(), Vec::new())
    };

    let windows = if args.find_max { args.max_steps } else { 1 };
    let phase_secs = args.warmup + args.duration * f64::from(windows);
    let progress = ProgressBar::new((phase_secs * techniques.len() as f64 * 10.0) as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ticker = tick_progress(progress.clone());
    let mut results = Vec::new();
    let mut searches = Vec::new();
    for technique in &techniques {
        let servers = match technique {
            Technique::Seed => Servers {
                targets: vec![args.seed_url.clone().unwrap_or_default()],
                pids: args.seed_pid.into_iter().collect(),
                stats: Vec::new(),
                https: None,
            },
            _ => Servers {
                targets: authorities.clone(),
                pids: pids.clone(),
                stats: authorities.clone(),
                https: https.clone(),
            },
        };
        let what = || format!("the {} phase", technique.as_str());
        let mut crowd = Crowd::join(*technique, servers, args, &progress).await.with_context(what)?;
        if args.find_max {
            let count = args.participants as usize;
            let search = search::find_max(&mut crowd, count, args, &progress).await.with_context(what)?;
            // The table's column is the best passing window (or the first window, if none passed).
            let best = search
                .steps
                .iter()
                .filter(|s| s.passed)
                .max_by(|a, b| a.result.deliveries_per_s.total_cmp(&b.result.deliveries_per_s))
                .or(search.steps.first());
            results.extend(best.map(|s| s.result.clone()));
            searches.push(search);
        } else {
            progress.set_message(format!("{}: {:?}", technique.as_str(), args.scenario).to_lowercase());
            let senders = args.senders.map_or(args.participants, |n| n.min(args.participants));
            let send_every = args.rate.map_or(args.send_every, |rate| f64::from(senders) / rate);
            let load = Load { scenario: args.scenario, send_every, burst: args.burst };
            results.push(crowd.window(load, args).await.with_context(what)?);
        }
        progress.set_message(format!("{}: leaving", technique.as_str()));
        crowd.leave().await;
    }
    ticker.abort();
    progress.finish_and_clear();
    drop(own);

    let mut targets: Vec<String> = args.urls.clone();
    if targets.is_empty() && chatlab_phases {
        targets.push("chatlab started by the bench (child process)".into());
    }
    targets.extend(args.seed_url.iter().map(|u| format!("seed: {u}")));
    Ok(Report {
        date: report::utc_now(),
        machine: report::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        scenario: args.scenario,
        participants: args.participants,
        duration_s: args.duration,
        poll_interval_s: args.poll_interval,
        send_every_s: match (args.rate, args.find_max) {
            (Some(rate), false) => {
                f64::from(args.senders.map_or(args.participants, |n| n.min(args.participants))) / rate
            }
            _ => args.send_every,
        },
        burst: args.burst,
        text_bytes: args.text_bytes,
        headers: args.headers,
        delay_ms: args.delay_ms,
        http2: args.http2,
        targets,
        results,
        searches,
        wrk: None,
        senders: args.senders,
    })
}

/// `--wrk`: the polls against a bare handler, in a report of their own.
async fn wrk_report(args: &BenchArgs) -> anyhow::Result<Report> {
    let mut own = None;
    let (authority, pids) = match args.urls.first() {
        Some(url) => (server::authority_of(url, "http")?, args.server_pids.clone()),
        None => {
            let server = server::start(&args.server_args, None).await?;
            let found = (server.authority.clone(), vec![server.pid]);
            own = Some(server);
            found
        }
    };
    let wrk = wrk::compare(&authority, &pids, args).await?;
    drop(own);
    Ok(Report {
        date: report::utc_now(),
        machine: report::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        scenario: Scenario::Idle,
        participants: 0,
        duration_s: f64::from(args.wrk_seconds),
        poll_interval_s: args.poll_interval,
        send_every_s: args.send_every,
        burst: args.burst,
        text_bytes: args.text_bytes,
        headers: args.headers,
        delay_ms: 0.0,
        http2: false,
        targets: vec![format!("chatlab at {authority} and chatlab bench-bare")],
        results: Vec::new(),
        searches: Vec::new(),
        wrk: Some(wrk),
        senders: None,
    })
}

/// Moves the progress bar along with the clock.
fn tick_progress(progress: ProgressBar) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            progress.inc(1);
        }
    })
}
