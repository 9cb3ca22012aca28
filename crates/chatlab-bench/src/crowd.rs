//! A phase's participants, joined once and then driven through one or more measured windows: one window for a
//! plain bench, a ladder of send rates for `--find-max`.

use super::probe::Https;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::clients::{self, Context, Participant, Technique};
use super::probe::Probe;
use super::report::{self, Latency, PhaseResult, Rss, ServerCounters};
use super::{server, BenchArgs, Headers, Scenario};

/// The servers a phase measures: where its clients go, whose CPU time and memory count, whose counters to read.
#[derive(Debug, Clone)]
pub(crate) struct Servers {
    /// `host:port` (chatlab) or `ws://` URLs (the seed); participant `i` goes to `targets[i % len]`.
    pub(crate) targets: Vec<String>,
    /// Process ids, for CPU time and RSS.
    pub(crate) pids: Vec<u32>,
    /// `host:port` of servers with chatlab's `/api/stats` (none for the seed).
    pub(crate) stats: Vec<String>,
    /// Speak HTTPS to them (`--http2`).
    pub(crate) https: Option<Arc<Https>>,
}

/// What the senders do in one window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Idle, chat or burst.
    pub(crate) scenario: Scenario,
    /// Chat: seconds between one sender's texts; burst: seconds between bursts.
    pub(crate) send_every: f64,
    /// Burst: texts per sender per burst.
    pub(crate) burst: u32,
}

impl Load {
    /// Texts per second offered to the room by `senders` senders (none when idle).
    pub(crate) fn texts_per_s(self, senders: usize) -> Option<f64> {
        match self.scenario {
            Scenario::Idle => None,
            Scenario::Chat => Some(senders as f64 / self.send_every),
            Scenario::Burst => Some(senders as f64 * f64::from(self.burst) / self.send_every),
        }
    }
}

/// Joined participants of one technique, with what their joining cost.
pub(crate) struct Crowd {
    technique: Technique,
    servers: Servers,
    probe: Arc<Probe>,
    stop: CancellationToken,
    participants: Vec<Box<dyn Participant>>,
    join_errors: usize,
    join_s: f64,
    join_concurrency: usize,
    rss_before_join: Option<u64>,
    rss_after_join: Option<u64>,
    /// The first window reports the join's cost (time, memory); later ones do not repeat it.
    reported_join: bool,
}

impl Crowd {
    /// Joins `--participants` participants of `technique`, `--join-concurrency` at a time, then warms up.
    ///
    /// # Errors
    /// When no participant could join.
    pub(crate) async fn join(
        technique: Technique,
        servers: Servers,
        args: &BenchArgs,
        progress: &ProgressBar,
    ) -> anyhow::Result<Crowd> {
        let probe = Probe::with_delay(Duration::from_secs_f64(args.delay_ms / 1000.0), servers.https.clone());
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
                (servers.targets[index % servers.targets.len()].clone(), context)
            })
            .collect();
        let rss_before_join = server::rss_kib(&servers.pids);
        let started = Instant::now();
        // `buffered`, not `buffer_unordered`: participant `i` stays at index `i` (it decides who sends, and
        // which technique a mixed phase's participant uses).
        let joined: Vec<anyhow::Result<Box<dyn Participant>>> = futures_util::stream::iter(contexts)
            .map(|(target, context)| async move { clients::join(technique, &target, context).await })
            .buffered(args.join_concurrency as usize)
            .collect()
            .await;
        let join_s = started.elapsed().as_secs_f64();
        let mut participants = Vec::new();
        let mut join_errors = 0;
        for result in joined {
            match result {
                Ok(participant) => participants.push(participant),
                Err(error) => {
                    join_errors += 1;
                    if join_errors == 1 {
                        progress
                            .suspend(|| eprintln!("{}: a participant could not join: {error:#}", technique.as_str()));
                    }
                }
            }
        }
        if participants.is_empty() {
            bail!("no participant could join");
        }
        progress.suspend(|| {
            eprintln!("{}: {} joined in {join_s:.2} s ({join_errors} failed)", technique.as_str(), participants.len())
        });
        progress.set_message(format!("{}: warming up", technique.as_str()));
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        let rss_after_join = server::rss_kib(&servers.pids);
        Ok(Crowd {
            technique,
            servers,
            probe,
            stop,
            participants,
            join_errors,
            join_s,
            join_concurrency: args.join_concurrency as usize,
            rss_before_join,
            rss_after_join,
            reported_join: false,
        })
    }

    /// The technique.
    pub(crate) fn technique(&self) -> Technique {
        self.technique
    }

    /// One measured window of `load`: the first `--senders` participants send, everyone receives; then the
    /// bench waits (up to a poll interval plus 3 s) for texts still in flight and reads every counter.
    ///
    /// # Errors
    /// A server whose counters cannot be read, or a participant task that panicked.
    pub(crate) async fn window(&mut self, load: Load, args: &BenchArgs) -> anyhow::Result<PhaseResult> {
        let count = self.participants.len();
        let senders = args.senders.map_or(count, |n| (n as usize).min(count));
        let transports = self.technique.transports();
        let server_before = self.counters(transports).await?;
        let cpu_before = server::cpu_seconds(&self.servers.pids);
        let client_cpu_before = server::cpu_seconds(&[std::process::id()]);
        let machine_before = server::machine_busy_seconds();
        let before = self.probe.read();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(args.duration);
        let sampler = sample_rss(self.servers.pids.clone());
        // Only senders get a task; the others' receiving tasks run anyway.
        let mut participants = std::mem::take(&mut self.participants);
        let receivers_only = participants.split_off(senders);
        let tasks: Vec<_> = participants
            .into_iter()
            .enumerate()
            .map(|(index, participant)| {
                tokio::spawn(drive(participant, index, load, args.text_bytes, self.probe.clone(), start, end))
            })
            .collect();
        for task in tasks {
            self.participants.push(task.await.context("a participant's task panicked")?);
        }
        self.participants.extend(receivers_only);
        tokio::time::sleep_until(end).await;
        // Wait for texts still in flight (a short poll's last interval), then read everything.
        let drain_until = Instant::now() + Duration::from_secs_f64(args.poll_interval + 3.0);
        loop {
            let now = self.probe.read();
            let expected = (now.sent - before.sent) * count as u64;
            if now.deliveries - before.deliveries >= expected || Instant::now() >= drain_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = self.probe.read();
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_before.zip(server::cpu_seconds(&self.servers.pids)).map(|(b, a)| a - b);
        let client_cpu = client_cpu_before.zip(server::cpu_seconds(&[std::process::id()])).map(|(b, a)| a - b);
        let machine_cpu = machine_before.zip(server::machine_busy_seconds()).map(|(b, a)| a - b);
        let server_delta = self.counters(transports).await?.zip(server_before).map(|(a, b)| a.minus(b));
        let window_kib = sampler.finish();
        let first = !std::mem::replace(&mut self.reported_join, true);
        let server_rss = self.rss_before_join.zip(self.rss_after_join).map(|(before, after)| Rss {
            before_join_kib: before,
            after_join_kib: after,
            per_participant_bytes: (after as f64 - before as f64) * 1024.0 / count as f64,
            window_kib,
        });
        let latencies = self.probe.latencies_between(&before, &after);
        Ok(report::phase_result(report::PhaseInput {
            technique: self.technique,
            participants: count,
            join_errors: self.join_errors,
            senders,
            offered_texts_per_s: load.texts_per_s(senders),
            join_s: first.then_some(self.join_s),
            join_concurrency: self.join_concurrency,
            server_rss,
            client_cpu_s: client_cpu,
            machine_cpu_s: machine_cpu,
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

    /// Waits until deliveries stop arriving (one quiet second, at most `limit`): after an overloaded window,
    /// so that its backlog does not land in the next one.
    pub(crate) async fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        let mut last = self.probe.read().deliveries;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.probe.read().deliveries;
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// Everyone leaves (explicitly, so no lease runs out during the next phase) and every task stops.
    pub(crate) async fn leave(self) {
        futures_util::stream::iter(self.participants).for_each_concurrent(64, |p| p.leave()).await;
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// The servers' counters for `transports`, if they have counters.
    async fn counters(&self, transports: &[&str]) -> anyhow::Result<Option<ServerCounters>> {
        if self.servers.stats.is_empty() {
            return Ok(None);
        }
        Ok(Some(server::counters(&self.servers.stats, transports, self.servers.https.as_ref()).await?))
    }
}

/// Samples the servers' RSS about once a second until [`RssSampler::finish`].
fn sample_rss(pids: Vec<u32>) -> RssSampler {
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = samples.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Some(kib) = server::rss_kib(&pids) {
                // A std mutex: one push, never held across an await.
                into.lock().unwrap_or_else(|p| p.into_inner()).push(kib);
            }
        }
    });
    RssSampler { samples, task }
}

/// The RSS sampler of a window.
struct RssSampler {
    samples: Arc<std::sync::Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Stops sampling; the samples so far, in KiB.
    fn finish(self) -> Vec<u64> {
        self.task.abort();
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One sender's part of the scenario, from `start` until `end`.
async fn drive(
    mut participant: Box<dyn Participant>,
    index: usize,
    load: Load,
    text_bytes: usize,
    probe: Arc<Probe>,
    start: Instant,
    end: Instant,
) -> Box<dyn Participant> {
    let every = Duration::from_secs_f64(load.send_every);
    let (mut next, texts) = match load.scenario {
        Scenario::Idle => (end, 0),
        Scenario::Chat => (start + every.mul_f64(clients::spread(index, 1)), 1),
        Scenario::Burst => (start + every / 2, load.burst),
    };
    // Texts are due on a fixed schedule (open loop); a sender that falls behind sends late, its texts' latency
    // counting from when they were due, and stops at the end of the window: a window it could not fill shows
    // as fewer texts sent than the rate asked for.
    while next < end && Instant::now() < end {
        tokio::time::sleep_until(next).await;
        for _ in 0..texts {
            match participant.send(&probe.text(next.into_std(), index, text_bytes)).await {
                Ok(()) => probe.sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => probe.send_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        next += every;
    }
    participant
}
