//! The bench's report: figures per technique, rendered as a Markdown table (techniques side by side), as JSON,
//! or as an SVG bar chart (one panel per figure).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::clients::Technique;
use super::wrk::WrkReport;
use super::{Format, Headers, Scenario};

/// One technique's server-side counters (from `/api/stats`), summed over every server.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerCounters {
    /// Wire bytes the servers read.
    pub wire_bytes_in: u64,
    /// Wire bytes the servers wrote.
    pub wire_bytes_out: u64,
    /// HTTP requests.
    pub requests: u64,
    /// Room events delivered (bench messages and notices alike).
    pub events_delivered: u64,
    /// The server's part of the delivery latency (an event entering the process to its socket write): the
    /// histogram's non-empty buckets, `[upper bound in ms, count]`, merged over the servers.
    #[serde(default)]
    pub latency_buckets: Vec<(f64, u64)>,
    /// Seconds the servers spent pacing their streams (`--pace-when-busy`), summed over the servers.
    #[serde(default)]
    pub paced_s: f64,
}

impl ServerCounters {
    pub(crate) fn minus(self, earlier: ServerCounters) -> ServerCounters {
        let latency_buckets = self
            .latency_buckets
            .iter()
            .map(|&(bound, count)| {
                let before = earlier.latency_buckets.iter().find(|(b, _)| *b == bound).map_or(0, |(_, c)| *c);
                (bound, count.saturating_sub(before))
            })
            .filter(|&(_, count)| count > 0)
            .collect();
        ServerCounters {
            wire_bytes_in: self.wire_bytes_in.saturating_sub(earlier.wire_bytes_in),
            wire_bytes_out: self.wire_bytes_out.saturating_sub(earlier.wire_bytes_out),
            requests: self.requests.saturating_sub(earlier.requests),
            events_delivered: self.events_delivered.saturating_sub(earlier.events_delivered),
            latency_buckets,
            paced_s: (self.paced_s - earlier.paced_s).max(0.0),
        }
    }

    /// Adds a histogram's non-empty buckets to these, keeping them ordered by bound.
    pub(crate) fn add_buckets(&mut self, buckets: impl IntoIterator<Item = (f64, u64)>) {
        for (bound, count) in buckets {
            match self.latency_buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, sum)) => *sum += count,
                None => self.latency_buckets.push((bound, count)),
            }
        }
        self.latency_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// The server's latency at quantile `q` (0 to 1): the upper bound of the bucket holding it; `None` with no
    /// event counted.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_buckets.iter().map(|(_, count)| count).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        self.latency_buckets.iter().find_map(|&(bound, count)| {
            seen += count;
            (seen >= rank).then_some(bound)
        })
    }
}

/// A whole bench run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When it ran (UTC).
    pub date: String,
    /// Where it ran: CPU model, cores, memory.
    pub machine: String,
    /// The command line.
    pub command: String,
    /// The scenario.
    pub scenario: Scenario,
    /// Participants asked for per technique.
    pub participants: u32,
    /// Seconds of measured activity per technique.
    pub duration_s: f64,
    /// Short polling's interval.
    pub poll_interval_s: f64,
    /// Seconds between texts (chat) or bursts (burst).
    pub send_every_s: f64,
    /// Texts per participant per burst.
    pub burst: u32,
    /// Bytes per chat text.
    pub text_bytes: usize,
    /// Request headers of the HTTP clients.
    pub headers: Headers,
    /// Emulated one-way network delay the clients added, in ms.
    #[serde(default)]
    pub delay_ms: f64,
    /// The HTTP techniques spoke HTTP/2 inside TLS (`--http2`); else HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
    /// The servers driven.
    pub targets: Vec<String>,
    /// One per technique, in the order run (with `--find-max`: each technique's best passing window).
    pub results: Vec<PhaseResult>,
    /// `--find-max`: every window of every technique's search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<Search>,
    /// `--wrk`: polls against a bare handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrk: Option<WrkReport>,
    /// `--senders`, when only some participants send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<u32>,
}

/// `--find-max`: one technique's ladder of send rates, each window judged against the limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Search {
    /// The technique.
    pub technique: Technique,
    /// A window passes when its p99 latency is below this (ms) ...
    pub max_p99_ms: f64,
    /// ... and no text failed and no delivery was missed.
    pub steps: Vec<Step>,
    /// Deliveries per second of the best passing window (none if even the first one failed).
    pub best_deliveries_per_s: Option<f64>,
}

/// One window of a search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Whether it met the limits.
    pub passed: bool,
    /// Its figures.
    pub result: PhaseResult,
}

/// The server's resident memory (`VmRSS` of `/proc/<pid>/status`, summed over the servers), in KiB.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rss {
    /// Before the phase's participants joined.
    pub before_join_kib: u64,
    /// After they joined and the warm-up passed.
    pub after_join_kib: u64,
    /// (after − before) / participants, in bytes: what one more participant costs.
    pub per_participant_bytes: f64,
    /// Sampled about once a second during the measured window.
    pub window_kib: Vec<u64>,
}

/// Client-measured delivery latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// From sorted samples in microseconds (nearest-rank percentiles).
    pub(crate) fn of(sorted_micros: &[u32]) -> Latency {
        let at = |q: f64| -> f64 {
            if sorted_micros.is_empty() {
                return 0.0;
            }
            let rank = ((sorted_micros.len() as f64 * q).ceil() as usize).clamp(1, sorted_micros.len());
            sorted_micros[rank - 1] as f64 / 1000.0
        };
        Latency { p50: at(0.50), p99: at(0.99), max: at(1.0) }
    }
}

/// One technique's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    /// The technique.
    pub technique: Technique,
    /// Participants that joined.
    pub participants: usize,
    /// Participants that could not join.
    pub join_errors: usize,
    /// Participants that sent texts (`--senders`; the others only receive).
    #[serde(default)]
    pub senders: usize,
    /// Texts per second the scenario offered to the whole room (chat and burst), deliveries/s being this times
    /// the participants.
    #[serde(default)]
    pub offered_texts_per_s: Option<f64>,
    /// Seconds from the first participant's connect to the last one's welcome (its first frame, for
    /// WebSocket and the seed; its join answer or stream for HTTP).
    #[serde(default)]
    pub join_s: Option<f64>,
    /// Joins in flight at once (`--join-concurrency`).
    #[serde(default)]
    pub join_concurrency: usize,
    /// The server's resident memory around the phase.
    #[serde(default)]
    pub server_rss: Option<Rss>,
    /// CPU seconds the bench's own process (all clients) used in the measured span: near the machine's cores
    /// times the span, the clients, not the server, set the pace.
    #[serde(default)]
    pub client_cpu_s: Option<f64>,
    /// CPU seconds the whole machine was busy in the span (all cores): minus the server's and the clients',
    /// what other processes took, on a shared machine.
    #[serde(default)]
    pub machine_cpu_s: Option<f64>,
    /// Seconds measured: the window plus the wait for texts still in flight.
    pub elapsed_s: f64,
    /// Texts sent in the window, and sends that failed.
    pub sent: u64,
    /// Sends refused or broken.
    pub send_errors: u64,
    /// Bench texts received, one per text per receiver.
    pub deliveries: u64,
    /// Deliveries expected (texts sent × participants) but not seen before the wait ended.
    pub missed: u64,
    /// Deliveries per second of the window.
    pub deliveries_per_s: f64,
    /// Send-to-receive latency measured by the clients.
    pub latency_ms: Latency,
    /// Client-counted socket bytes: received, sent; HTTP requests; empty poll responses.
    pub bytes_down: u64,
    /// Bytes the clients' sockets wrote.
    pub bytes_up: u64,
    /// HTTP requests the clients sent.
    pub requests: u64,
    /// Poll responses with no event.
    pub empty_polls: u64,
    /// Wire bytes received per delivery.
    pub bytes_down_per_delivery: Option<f64>,
    /// Wire bytes sent per delivery.
    pub bytes_up_per_delivery: Option<f64>,
    /// HTTP requests per delivery.
    pub requests_per_delivery: Option<f64>,
    /// Wire bytes received per participant per minute.
    pub bytes_down_per_participant_min: f64,
    /// Wire bytes sent per participant per minute.
    pub bytes_up_per_participant_min: f64,
    /// HTTP requests per participant per minute.
    pub requests_per_participant_min: f64,
    /// Server CPU seconds used in the measured span.
    pub server_cpu_s: Option<f64>,
    /// Server CPU milliseconds per 1,000 deliveries.
    pub server_cpu_ms_per_1000: Option<f64>,
    /// Server CPU milliseconds per participant per minute.
    pub server_cpu_ms_per_participant_min: Option<f64>,
    /// What chatlab itself counted for the technique in the same span (none for the seed server).
    pub server: Option<ServerCounters>,
}

/// What a phase measured, before division.
pub(crate) struct PhaseInput {
    pub(crate) technique: Technique,
    pub(crate) participants: usize,
    pub(crate) join_errors: usize,
    pub(crate) senders: usize,
    pub(crate) offered_texts_per_s: Option<f64>,
    pub(crate) join_s: Option<f64>,
    pub(crate) join_concurrency: usize,
    pub(crate) server_rss: Option<Rss>,
    pub(crate) client_cpu_s: Option<f64>,
    pub(crate) machine_cpu_s: Option<f64>,
    pub(crate) elapsed: f64,
    pub(crate) duration: f64,
    pub(crate) sent: u64,
    pub(crate) send_errors: u64,
    pub(crate) deliveries: u64,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) requests: u64,
    pub(crate) empty_polls: u64,
    pub(crate) latency: Latency,
    pub(crate) server_cpu_s: Option<f64>,
    pub(crate) server: Option<ServerCounters>,
}

pub(crate) fn phase_result(m: PhaseInput) -> PhaseResult {
    let per_delivery = |x: u64| (m.deliveries > 0).then(|| x as f64 / m.deliveries as f64);
    let participant_minutes = m.participants as f64 * m.elapsed / 60.0;
    PhaseResult {
        technique: m.technique,
        participants: m.participants,
        join_errors: m.join_errors,
        senders: m.senders,
        offered_texts_per_s: m.offered_texts_per_s,
        join_s: m.join_s,
        join_concurrency: m.join_concurrency,
        server_rss: m.server_rss,
        client_cpu_s: m.client_cpu_s,
        machine_cpu_s: m.machine_cpu_s,
        elapsed_s: m.elapsed,
        sent: m.sent,
        send_errors: m.send_errors,
        deliveries: m.deliveries,
        missed: (m.sent * m.participants as u64).saturating_sub(m.deliveries),
        deliveries_per_s: m.deliveries as f64 / m.duration,
        latency_ms: m.latency,
        bytes_down: m.bytes_down,
        bytes_up: m.bytes_up,
        requests: m.requests,
        empty_polls: m.empty_polls,
        bytes_down_per_delivery: per_delivery(m.bytes_down),
        bytes_up_per_delivery: per_delivery(m.bytes_up),
        requests_per_delivery: per_delivery(m.requests),
        bytes_down_per_participant_min: m.bytes_down as f64 / participant_minutes,
        bytes_up_per_participant_min: m.bytes_up as f64 / participant_minutes,
        requests_per_participant_min: m.requests as f64 / participant_minutes,
        server_cpu_s: m.server_cpu_s,
        server_cpu_ms_per_1000: m
            .server_cpu_s
            .and_then(|cpu| (m.deliveries > 0).then(|| cpu * 1000.0 * 1000.0 / m.deliveries as f64)),
        server_cpu_ms_per_participant_min: m.server_cpu_s.map(|cpu| cpu * 1000.0 / participant_minutes),
        server: m.server,
    }
}

/// The median of several runs of the same bench: every figure is the median of its values, technique by
/// technique; the header (date, command) is the first run's, with the number of runs added.
///
/// # Errors
/// Runs that do not have the same techniques in the same order.
pub fn median(mut runs: Vec<Report>) -> anyhow::Result<Report> {
    if runs.len() == 1 {
        return Ok(runs.remove(0));
    }
    let techniques = |r: &Report| r.results.iter().map(|p| p.technique).collect::<Vec<_>>();
    let first = runs.first().ok_or_else(|| anyhow::anyhow!("no report"))?.clone();
    if runs.iter().any(|r| techniques(r) != techniques(&first)) {
        anyhow::bail!("the runs do not have the same techniques in the same order");
    }
    let mut results = Vec::new();
    for (i, result) in first.results.iter().enumerate() {
        let values: Vec<serde_json::Value> =
            runs.iter().map(|r| serde_json::to_value(&r.results[i])).collect::<Result<_, _>>()?;
        let mut merged = serde_json::to_value(result)?;
        median_into(&mut merged, &values);
        results.push(serde_json::from_value(merged)?);
    }
    let dates: Vec<&str> = runs.iter().map(|r| r.date.as_str()).collect();
    Ok(Report { date: format!("median of {} runs ({})", runs.len(), dates.join(", ")), results, ..first })
}

/// Replaces every number in `target` by the median of the numbers at the same place in `runs`.
fn median_into(target: &mut serde_json::Value, runs: &[serde_json::Value]) {
    use serde_json::Value;
    match target {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let inner: Vec<Value> = runs.iter().map(|r| r.get(key).cloned().unwrap_or(Value::Null)).collect();
                median_into(value, &inner);
            }
        }
        Value::Number(number) => {
            let mut values: Vec<f64> = runs.iter().filter_map(Value::as_f64).collect();
            if values.is_empty() {
                return;
            }
            values.sort_by(f64::total_cmp);
            let mid = values.len() / 2;
            let median = if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 };
            *number = if number.is_u64() {
                (median.round() as u64).into()
            } else {
                serde_json::Number::from_f64(median).unwrap_or_else(|| number.clone())
            };
        }
        _ => {}
    }
}

/// The report in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Md => markdown(report),
        Format::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        Format::Svg => svg(report),
    }
}

/// A number for people: thousands separated, a sensible number of decimals.
fn human(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let decimals = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else if x.abs() >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{x:.decimals$}");
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), human)
}

/// One line describing the run.
fn title(report: &Report) -> String {
    let what = match report.scenario {
        Scenario::Idle => "idle (nobody sends)".to_owned(),
        Scenario::Chat => match report.senders {
            Some(senders) => format!(
                "chat ({senders} senders, each sends a {} B text every {} s)",
                report.text_bytes, report.send_every_s
            ),
            None => {
                format!("chat (each participant sends a {} B text every {} s)", report.text_bytes, report.send_every_s)
            }
        },
        Scenario::Burst => format!(
            "burst ({} texts of {} B from every participant at once, every {} s)",
            report.burst, report.text_bytes, report.send_every_s
        ),
    };
    let delay =
        if report.delay_ms > 0.0 { format!("; {} ms emulated one-way delay", report.delay_ms) } else { String::new() };
    let version = if report.http2 { "; HTTP/2 over TLS (WebSockets on HTTP/1.1 over TLS)" } else { "" };
    format!(
        "{what}; {} participants per technique; {} s per technique; short-poll interval {} s; {:?} request \
         headers{delay}{version}",
        report.participants, report.duration_s, report.poll_interval_s, report.headers
    )
    .replace("Minimal", "minimal")
    .replace("Browser", "browser")
}

fn markdown(report: &Report) -> String {
    let r = &report.results;
    let mut out = String::new();
    if let Some(wrk) = &report.wrk {
        let _ = writeln!(out, "{} · {}  ", report.date, report.machine);
        let _ = writeln!(out, "`{}`\n", report.command);
        wrk_table(&mut out, wrk);
        return out;
    }
    let _ = writeln!(out, "**{}**  ", title(report));
    let _ = writeln!(out, "{} · {}  ", report.date, report.machine);
    let _ = writeln!(out, "servers: {}  ", report.targets.join(", "));
    let _ = writeln!(out, "`{}`\n", report.command);
    let _ = write!(out, "| |");
    for result in r {
        let _ = write!(out, " {} |", result.technique.as_str());
    }
    let _ = write!(out, "\n|---|");
    for _ in r {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    let mut row = |name: &str, cell: &dyn Fn(&PhaseResult) -> String| {
        let _ = write!(out, "| {name} |");
        for result in r {
            let _ = write!(out, " {} |", cell(result));
        }
        out.push('\n');
    };
    row("participants", &|p| p.participants.to_string());
    if r.iter().any(|p| p.senders > 0 && p.senders < p.participants) {
        row("senders", &|p| p.senders.to_string());
    }
    if r.iter().any(|p| p.offered_texts_per_s.is_some()) {
        row("offered texts/s (room)", &|p| opt(p.offered_texts_per_s));
    }
    row("deliveries/s", &|p| human(p.deliveries_per_s));
    row("latency p50 / p99 / max (ms)", &|p| {
        if p.deliveries == 0 {
            "–".into()
        } else {
            format!("{} / {} / {}", human(p.latency_ms.p50), human(p.latency_ms.p99), human(p.latency_ms.max))
        }
    });
    if r.iter().any(|p| p.server.as_ref().is_some_and(|s| !s.latency_buckets.is_empty())) {
        row("of which in the server p50 / p99 (ms)", &|p| {
            let server = p.server.as_ref();
            match (server.and_then(|s| s.latency_ms(0.5)), server.and_then(|s| s.latency_ms(0.99))) {
                (Some(p50), Some(p99)) => format!("≤ {} / ≤ {}", human(p50), human(p99)),
                _ => "–".into(),
            }
        });
        row("seconds paced (server behind)", &|p| p.server.as_ref().map_or("–".into(), |s| human(s.paced_s)));
    }
    row("wire bytes down per delivery", &|p| opt(p.bytes_down_per_delivery));
    row("wire bytes up per delivery", &|p| opt(p.bytes_up_per_delivery));
    row("HTTP requests per delivery", &|p| opt(p.requests_per_delivery));
    row("empty polls", &|p| p.empty_polls.to_string());
    row("server CPU ms per 1,000 deliveries", &|p| opt(p.server_cpu_ms_per_1000));
    row("wire bytes down per participant-minute", &|p| human(p.bytes_down_per_participant_min));
    row("wire bytes up per participant-minute", &|p| human(p.bytes_up_per_participant_min));
    row("HTTP requests per participant-minute", &|p| human(p.requests_per_participant_min));
    row("server CPU ms per participant-minute", &|p| opt(p.server_cpu_ms_per_participant_min));
    row("server-counted wire bytes down / up", &|p| {
        p.server
            .as_ref()
            .map_or("–".into(), |s| format!("{} / {}", human(s.wire_bytes_out as f64), human(s.wire_bytes_in as f64)))
    });
    row("client-counted wire bytes down / up", &|p| {
        format!("{} / {}", human(p.bytes_down as f64), human(p.bytes_up as f64))
    });
    row("texts sent / failed / deliveries missed", &|p| format!("{} / {} / {}", p.sent, p.send_errors, p.missed));
    if r.iter().any(|p| p.join_s.is_some()) {
        row("join: all welcomed after (s), joins in flight", &|p| format!("{}, {}", opt(p.join_s), p.join_concurrency));
    }
    if r.iter().any(|p| p.server_rss.is_some()) {
        row("server RSS before / after join (MiB)", &|p| {
            p.server_rss.as_ref().map_or("–".into(), |m| {
                format!("{} / {}", human(m.before_join_kib as f64 / 1024.0), human(m.after_join_kib as f64 / 1024.0))
            })
        });
        row("server RSS per participant (KiB)", &|p| {
            p.server_rss.as_ref().map_or("–".into(), |m| human(m.per_participant_bytes / 1024.0))
        });
        row("server RSS in the window: first / max / last (MiB)", &|p| {
            p.server_rss.as_ref().and_then(|m| window_rss(&m.window_kib)).unwrap_or_else(|| "–".into())
        });
    }
    if r.iter().any(|p| p.client_cpu_s.is_some()) {
        row("CPU s per window s: server / bench / other processes", &cpu_split);
    }
    for search in &report.searches {
        search_table(&mut out, search);
    }
    out
}

/// CPU seconds per second of the window: the server's, the bench's, and everything else's on the machine.
fn cpu_split(p: &PhaseResult) -> String {
    let per_s = |x: Option<f64>| opt(x.map(|c| c / p.elapsed_s));
    let others = p.machine_cpu_s.map(|m| (m - p.server_cpu_s.unwrap_or(0.0) - p.client_cpu_s.unwrap_or(0.0)).max(0.0));
    format!("{} / {} / {}", per_s(p.server_cpu_s), per_s(p.client_cpu_s), per_s(others))
}

/// `--wrk`: one row per target.
fn wrk_table(out: &mut String, wrk: &WrkReport) {
    let _ = writeln!(out, "`{}`, one session per connection; bare server: `{}`\n", wrk.wrk, wrk.bare);
    let _ = writeln!(out, "| target | requests/s (median) | of bare | each round | wrk p99 (ms) each round | non-2xx | rounds the room moved | other processes' CPU s/s each round |");
    let _ = writeln!(out, "|---|---:|---:|---|---|---:|---:|---|");
    for t in &wrk.targets {
        let list = |v: &[f64]| v.iter().map(|x| human(*x)).collect::<Vec<_>>().join(", ");
        let others = t.others_cpu_s_per_s.iter().map(|x| x.map_or("–".to_owned(), |x| format!("{x:.2}")));
        let _ = writeln!(
            out,
            "| {} `{}` | {} | {:.0}% | {} | {} | {} | {} | {} |",
            t.name,
            t.path,
            human(t.median_requests_per_s),
            t.ratio_to_bare * 100.0,
            list(&t.requests_per_s),
            list(&t.p99_ms),
            t.non_2xx,
            t.rounds_room_moved,
            others.collect::<Vec<_>>().join(", ")
        );
    }
}

/// First, highest and last of a window's RSS samples, in MiB.
fn window_rss(samples: &[u64]) -> Option<String> {
    let mib = |k: u64| human(k as f64 / 1024.0);
    let max = samples.iter().max()?;
    Some(format!("{} / {} / {}", mib(*samples.first()?), mib(*max), mib(*samples.last()?)))
}

/// A search's ladder: one row per window.
fn search_table(out: &mut String, search: &Search) {
    let _ = writeln!(
        out,
        "\n**{}: highest deliveries/s with p99 < {} ms and nothing lost: {}**\n",
        search.technique.as_str(),
        human(search.max_p99_ms),
        opt(search.best_deliveries_per_s)
    );
    let _ = writeln!(
        out,
        "| offered texts/s | deliveries/s | p50 / p99 / max (ms) | sent / failed / missed | server CPU ms per 1,000 | CPU s/s: server / bench / others | verdict |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---|");
    for step in &search.steps {
        let p = &step.result;
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} / {} | {} / {} / {} | {} | {} | {} |",
            opt(p.offered_texts_per_s),
            human(p.deliveries_per_s),
            human(p.latency_ms.p50),
            human(p.latency_ms.p99),
            human(p.latency_ms.max),
            p.sent,
            p.send_errors,
            p.missed,
            opt(p.server_cpu_ms_per_1000),
            cpu_split(p),
            if step.passed { "pass" } else { "fail" }
        );
    }
}

/// Colours per technique, stable across charts.
fn colour(technique: Technique) -> &'static str {
    match technique {
        Technique::Ws => "#2b6cb0",
        Technique::Sse => "#2f855a",
        Technique::Stream => "#2c7a7b",
        Technique::Iframe => "#b7791f",
        Technique::LongPoll => "#c05621",
        Technique::Poll => "#c53030",
        Technique::Seed => "#6b46c1",
        Technique::Mix => "#4a5568",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A chart: one panel of bars per figure, one bar per technique, each labelled with its value.
fn svg(report: &Report) -> String {
    type Figure = (&'static str, fn(&PhaseResult) -> Option<f64>);
    let per_delivery: [Figure; 6] = [
        ("deliveries per second", |p| Some(p.deliveries_per_s)),
        ("latency p50 (ms)", |p| (p.deliveries > 0).then_some(p.latency_ms.p50)),
        ("latency p99 (ms)", |p| (p.deliveries > 0).then_some(p.latency_ms.p99)),
        ("wire bytes down per delivery", |p| p.bytes_down_per_delivery),
        ("wire bytes up per delivery", |p| p.bytes_up_per_delivery),
        ("server CPU ms per 1,000 deliveries", |p| p.server_cpu_ms_per_1000),
    ];
    let per_minute: [Figure; 4] = [
        ("wire bytes down per participant-minute", |p| Some(p.bytes_down_per_participant_min)),
        ("wire bytes up per participant-minute", |p| Some(p.bytes_up_per_participant_min)),
        ("HTTP requests per participant-minute", |p| Some(p.requests_per_participant_min)),
        ("server CPU ms per participant-minute", |p| p.server_cpu_ms_per_participant_min),
    ];
    let figures: &[Figure] = if report.scenario == Scenario::Idle { &per_minute } else { &per_delivery };
    let results = &report.results;
    let (panel_w, panel_h, columns) = (300.0, 190.0, 3usize);
    let rows = figures.len().div_ceil(columns);
    let (width, height) = (panel_w * columns as f64 + 20.0, 95.0 + panel_h * rows as f64 + 10.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">chatlab bench: {:?}</text>"#,
        report.scenario
    );
    let _ = writeln!(out, r#"<text x="10" y="38">{}</text>"#, escape(&title(report)));
    let _ = writeln!(
        out,
        r##"<text x="10" y="54" fill="#555">{} · {}</text>"##,
        escape(&report.date),
        escape(&report.machine)
    );
    // Legend.
    for (i, result) in results.iter().enumerate() {
        let x = 10.0 + i as f64 * 90.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="66" width="10" height="10" fill="{}"/><text x="{}" y="75">{}</text>"#,
            colour(result.technique),
            x + 14.0,
            result.technique.as_str()
        );
    }
    for (n, (name, value)) in figures.iter().enumerate() {
        let (px, py) = (10.0 + (n % columns) as f64 * panel_w, 90.0 + (n / columns) as f64 * panel_h);
        let values: Vec<Option<f64>> = results.iter().map(value).collect();
        let max = values.iter().flatten().copied().fold(0.0f64, f64::max);
        let _ = writeln!(out, r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#, px + 5.0, py + 12.0, escape(name));
        let (chart_top, chart_h) = (py + 30.0, panel_h - 60.0);
        let bar_w = ((panel_w - 30.0) / results.len().max(1) as f64).min(50.0);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"/>"##,
            px + 5.0,
            chart_top + chart_h,
            px + panel_w - 20.0,
            chart_top + chart_h
        );
        for (i, (result, v)) in results.iter().zip(&values).enumerate() {
            let x = px + 10.0 + i as f64 * (bar_w + 6.0);
            let label_y = chart_top + chart_h + 14.0;
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{label_y}" text-anchor="middle">{}</text>"#,
                x + bar_w / 2.0,
                result.technique.as_str()
            );
            let Some(v) = v else {
                let _ = writeln!(
                    out,
                    r##"<text x="{}" y="{}" text-anchor="middle" fill="#999">n/a</text>"##,
                    x + bar_w / 2.0,
                    chart_top + chart_h - 4.0
                );
                continue;
            };
            let h = if max > 0.0 { (v / max * chart_h).max(1.0) } else { 1.0 };
            let _ = writeln!(
                out,
                r#"<rect x="{x}" y="{}" width="{bar_w}" height="{h}" fill="{}"/>"#,
                chart_top + chart_h - h,
                colour(result.technique)
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x + bar_w / 2.0,
                chart_top + chart_h - h - 3.0,
                human(*v)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (no date crate for one line).
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = chatlab::model::civil_date(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

/// The machine: CPU model, logical cores, memory (from `/proc`, Linux only).
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {mem_gib:.0} GiB, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}
