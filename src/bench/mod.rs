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
//! | `mod.rs` | the flags, the phases, the scenarios |
//! | [`clients`] | one client per technique behind one `Participant` trait |
//! | `probe.rs` | what clients measure, and the byte-counting socket |
//! | `http.rs` | a plain HTTP/1.1 client connection |
//! | `server.rs` | the server under test: started here or given, its counters and CPU time |
//! | [`report`] | Markdown, JSON and SVG output |

pub mod clients;
mod delay;
mod http;
mod probe;
pub mod report;
mod server;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::clients::{Context, Participant, Technique};
use self::probe::Probe;
use self::report::{Latency, PhaseResult, Report, ServerCounters};

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

/// `chatlab bench`: drive real clients of each technique and compare what they cost.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
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

    /// Techniques to run, in order (`seed` is added when `--seed-url` is given).
    #[arg(long, value_delimiter = ',', default_value = "ws,sse,longpoll,poll")]
    pub techniques: Vec<Technique>,

    /// What participants do.
    #[arg(long, value_enum, default_value_t = Scenario::Chat)]
    pub scenario: Scenario,

    /// Participants per technique.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub participants: u32,

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
    let positive = [args.duration, args.poll_interval, args.send_every].iter().all(|x| *x > 0.0);
    if !positive || args.warmup.is_nan() || args.warmup < 0.0 || args.delay_ms.is_nan() || args.delay_ms < 0.0 {
        bail!("--duration, --poll-interval and --send-every must be positive; --warmup and --delay-ms not negative");
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
    // The server under test: given, or started here (only if some phase needs chatlab).
    let mut own = None;
    let (authorities, pids) = if !args.urls.is_empty() {
        let authorities = args.urls.iter().map(|u| server::authority_of(u)).collect::<anyhow::Result<Vec<_>>>()?;
        (authorities, args.server_pids.clone())
    } else if chatlab_phases {
        let server = server::start(&args.server_args).await?;
        let found = (vec![server.authority.clone()], vec![server.pid]);
        own = Some(server);
        found
    } else {
        (Vec::new(), Vec::new())
    };

    let phase_secs = args.warmup + args.duration;
    let progress = ProgressBar::new((phase_secs * techniques.len() as f64 * 10.0) as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {elapsed}/{duration}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut results = Vec::new();
    for (n, technique) in techniques.iter().enumerate() {
        progress.set_position((n as f64 * phase_secs * 10.0) as u64);
        let (targets, pids, stats) = match technique {
            Technique::Seed => {
                (vec![args.seed_url.clone().unwrap_or_default()], args.seed_pid.into_iter().collect(), Vec::new())
            }
            _ => (authorities.clone(), pids.clone(), authorities.clone()),
        };
        let result = phase(*technique, &targets, &pids, &stats, args, &progress)
            .await
            .with_context(|| format!("the {} phase", technique.as_str()))?;
        results.push(result);
    }
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
        send_every_s: args.send_every,
        burst: args.burst,
        text_bytes: args.text_bytes,
        headers: args.headers,
        delay_ms: args.delay_ms,
        targets,
        results,
    })
}

/// One technique's phase: join, warm up, measure, drain, leave.
async fn phase(
    technique: Technique,
    targets: &[String],
    pids: &[u32],
    stats: &[String],
    args: &BenchArgs,
    progress: &ProgressBar,
) -> anyhow::Result<PhaseResult> {
    let probe = Probe::with_delay(Duration::from_secs_f64(args.delay_ms / 1000.0));
    let stop = CancellationToken::new();
    progress.set_message(format!("{}: joining", technique.as_str()));
    let contexts: Vec<(String, Context)> = (0..args.participants as usize)
        .map(|index| {
            let context = Context {
                probe: probe.clone(),
                stop: stop.clone(),
                poll_interval: Duration::from_secs_f64(args.poll_interval),
                browser_headers: args.headers == Headers::Browser,
                index,
            };
            (targets[index % targets.len()].clone(), context)
        })
        .collect();
    let joined: Vec<anyhow::Result<Box<dyn Participant>>> = futures_util::stream::iter(contexts)
        .map(|(target, context)| async move { clients::join(technique, &target, context).await })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut participants = Vec::new();
    let mut join_errors = 0;
    for result in joined {
        match result {
            Ok(participant) => participants.push(participant),
            Err(error) => {
                join_errors += 1;
                if join_errors == 1 {
                    progress.suspend(|| eprintln!("{}: a participant could not join: {error:#}", technique.as_str()));
                }
            }
        }
    }
    if participants.is_empty() {
        bail!("no participant could join");
    }
    let count = participants.len();

    let ticker = tick_progress(progress.clone(), args.warmup + args.duration);
    progress.set_message(format!("{}: warming up", technique.as_str()));
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    // The measured window.
    progress.set_message(format!("{}: {:?}", technique.as_str(), args.scenario).to_lowercase());
    let transport = technique.as_str();
    let server_before = server_counters(stats, transport).await?;
    let cpu_before = server::cpu_seconds(pids);
    let before = probe.read();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = participants
        .into_iter()
        .enumerate()
        .map(|(index, participant)| tokio::spawn(drive(participant, index, args.clone(), probe.clone(), start, end)))
        .collect();
    let mut participants = Vec::with_capacity(count);
    for task in tasks {
        participants.push(task.await.context("a participant's task panicked")?);
    }
    // Wait for texts still in flight (a short poll's last interval), then read everything.
    progress.set_message(format!("{}: draining", technique.as_str()));
    let drain_until = Instant::now() + Duration::from_secs_f64(args.poll_interval + 3.0);
    loop {
        let now = probe.read();
        let expected = (now.sent - before.sent) * count as u64;
        if now.deliveries - before.deliveries >= expected || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = probe.read();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(server::cpu_seconds(pids)).map(|(b, a)| a - b);
    let server_delta = server_counters(stats, transport).await?.zip(server_before).map(|(a, b)| a.minus(b));
    ticker.abort();

    progress.set_message(format!("{}: leaving", technique.as_str()));
    futures_util::stream::iter(participants).for_each_concurrent(16, |p| p.leave()).await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let latencies = probe.latencies_between(&before, &after);
    Ok(report::phase_result(report::PhaseInput {
        technique,
        participants: count,
        join_errors,
        elapsed,
        duration: args.duration,
        sent: after.sent - before.sent,
        send_errors: after.send_errors - before.send_errors,
        deliveries: after.deliveries - before.deliveries,
        bytes_up: after.bytes_up - before.bytes_up,
        bytes_down: after.bytes_down - before.bytes_down,
        requests: after.requests - before.requests,
        empty_polls: after.empty_polls - before.empty_polls,
        latency: Latency::of(&latencies),
        server_cpu_s: cpu,
        server: server_delta,
    }))
}

/// The servers' counters of `transport`, if there are servers with counters.
async fn server_counters(stats: &[String], transport: &str) -> anyhow::Result<Option<ServerCounters>> {
    if stats.is_empty() {
        return Ok(None);
    }
    Ok(Some(server::counters(stats, transport).await?))
}

/// Moves the progress bar along with the phase's clock.
fn tick_progress(progress: ProgressBar, secs: f64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for _ in 0..(secs * 10.0) as u64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            progress.inc(1);
        }
    })
}

/// One participant's part of the scenario, from `start` until `end`.
async fn drive(
    mut participant: Box<dyn Participant>,
    index: usize,
    args: BenchArgs,
    probe: Arc<Probe>,
    start: Instant,
    end: Instant,
) -> Box<dyn Participant> {
    let every = Duration::from_secs_f64(args.send_every);
    let (mut next, texts) = match args.scenario {
        Scenario::Idle => (end, 0),
        Scenario::Chat => (start + every.mul_f64(clients::spread(index, 1)), 1),
        Scenario::Burst => (start + every / 2, args.burst),
    };
    while next < end {
        tokio::time::sleep_until(next).await;
        for _ in 0..texts {
            match participant.send(&probe.text(index, args.text_bytes)).await {
                Ok(()) => probe.sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => probe.send_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        next += every;
    }
    tokio::time::sleep_until(end).await;
    participant
}
