//! Whether the server is behind: the share of time its runtime's worker threads spent running tasks.
//!
//! Streams and long polls pace their writes (`--flush-interval-ms`) only while this says so. A sampler task reads
//! tokio's per-worker busy time every [`Busy::WINDOW`]; when the workers were busy for `--pace-when-busy` percent
//! of a window or more, pacing starts, and it stops once they are below three quarters of that for a whole
//! [`Busy::HOLD`]. A server that keeps up with its load (whatever the deliveries per second) writes every event
//! at once; one that is falling behind puts what queued during an interval into one write per stream, which is
//! what lets it keep up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The runtime's recent busy share and whether streams are paced now. Read without locks by every write.
#[derive(Debug, Default)]
pub struct Busy {
    /// Whether streams pace their writes now.
    paced: AtomicBool,
    /// Percent of the workers' time spent busy over the last window.
    percent: AtomicU64,
    /// Windows in which pacing was on, since start.
    paced_windows: AtomicU64,
}

impl Busy {
    /// How often the workers' busy time is read.
    pub const WINDOW: Duration = Duration::from_millis(100);
    /// How long the busy share must stay low before pacing stops, so that the lighter load pacing itself brings
    /// does not switch it off and on every window.
    pub const HOLD: Duration = Duration::from_secs(1);

    /// Whether streams pace their writes now.
    pub fn paced(&self) -> bool {
        self.paced.load(Ordering::Relaxed)
    }

    /// Percent of the runtime workers' time spent running tasks over the last [`Busy::WINDOW`].
    pub fn percent(&self) -> u64 {
        self.percent.load(Ordering::Relaxed)
    }

    /// Seconds spent paced since start.
    pub fn paced_seconds(&self) -> f64 {
        self.paced_windows.load(Ordering::Relaxed) as f64 * Self::WINDOW.as_secs_f64()
    }

    /// Pacing decided by the threshold: `0` paces always, `100` never; in between, pacing starts at a window
    /// busy `threshold` percent or more and stops after [`Busy::HOLD`] below three quarters of it.
    fn decide(&self, threshold: u8, percent: u64, quiet_for: &mut Duration) -> bool {
        let was = self.paced();
        let now = match threshold {
            0 => true,
            100.. => false,
            _ if percent >= u64::from(threshold) => {
                *quiet_for = Duration::ZERO;
                true
            }
            _ if !was => false,
            _ => {
                if percent * 4 < u64::from(threshold) * 3 {
                    *quiet_for += Self::WINDOW;
                } else {
                    *quiet_for = Duration::ZERO;
                }
                *quiet_for < Self::HOLD
            }
        };
        self.paced.store(now, Ordering::Relaxed);
        now
    }

    /// Samples the current runtime's workers every [`Busy::WINDOW`] until `stop`, deciding pacing by `threshold`
    /// (`--pace-when-busy`).
    /// The pacing the threshold sets at start (always, never, or not yet) holds as soon as this returns.
    pub fn watch(
        self: std::sync::Arc<Self>,
        threshold: u8,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut quiet_for = Duration::ZERO;
        self.decide(threshold, 0, &mut quiet_for);
        self.sample(threshold, stop)
    }

    async fn sample(self: std::sync::Arc<Self>, threshold: u8, stop: CancellationToken) {
        let metrics = Handle::current().metrics();
        let workers = metrics.num_workers().max(1);
        let busy_total = || (0..workers).map(|worker| metrics.worker_total_busy_duration(worker)).sum::<Duration>();
        let mut before = (tokio::time::Instant::now(), busy_total());
        let mut quiet_for = Duration::ZERO;
        let mut ticks = tokio::time::interval(Self::WINDOW);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = (tokio::time::Instant::now(), busy_total());
            let elapsed = now.0.duration_since(before.0).as_nanos() * workers as u128;
            let busy = now.1.saturating_sub(before.1).as_nanos();
            before = now;
            if elapsed == 0 {
                continue;
            }
            let percent = (busy * 100 / elapsed).min(100) as u64;
            self.percent.store(percent, Ordering::Relaxed);
            if self.decide(threshold, percent, &mut quiet_for) {
                self.paced_windows.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(threshold: u8, percents: &[u64]) -> Vec<bool> {
        let busy = Busy::default();
        let mut quiet = Duration::ZERO;
        percents.iter().map(|&p| busy.decide(threshold, p, &mut quiet)).collect()
    }

    #[test]
    fn zero_paces_always_and_hundred_never() {
        assert_eq!(run(0, &[0, 50, 100]), [true, true, true]);
        assert_eq!(run(100, &[0, 50, 100]), [false, false, false]);
    }

    #[test]
    fn pacing_starts_at_the_threshold_and_stops_after_a_quiet_hold() {
        let windows = (Busy::HOLD.as_millis() / Busy::WINDOW.as_millis()) as usize;
        let mut percents = vec![10, 79, 80, 70];
        // Below three quarters of 80 (60) for a whole hold: the last of these windows ends pacing.
        percents.extend(std::iter::repeat_n(59, windows));
        let paced = run(80, &percents);
        assert_eq!(&paced[..4], [false, false, true, true]);
        assert!(paced[4..4 + windows - 1].iter().all(|&p| p), "{paced:?}");
        assert!(!paced[4 + windows - 1]);
    }

    #[test]
    fn a_busy_window_restarts_the_hold() {
        let windows = (Busy::HOLD.as_millis() / Busy::WINDOW.as_millis()) as usize;
        let mut percents = vec![90];
        percents.extend(std::iter::repeat_n(10, windows - 1));
        percents.push(65);
        percents.extend(std::iter::repeat_n(10, windows - 1));
        let paced = run(80, &percents);
        assert!(paced.iter().all(|&p| p), "{paced:?}");
    }
}
