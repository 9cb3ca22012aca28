//! `--find-max`: the highest delivery rate a technique sustains within a latency limit, with nothing lost.
//!
//! One crowd joins once; then windows of `--duration` run at a rising room send rate (the chat scenario, the
//! `--senders` sharing the rate), from `--rate` up by `--step` each time, until a window fails; then
//! `--refine` more windows halve the interval between the last pass and the first fail (geometrically). A
//! window passes when its client-measured p99 latency is below `--max-p99-ms`, no text failed, no delivery
//! was missed (not arrived when the drain ended), and the senders kept up (sent at least 95% of the texts the
//! rate asked for: a sender that falls behind is overload too). After a failing window the bench waits for
//! its backlog to drain before the next one.
//!
//! The machine may be shared: a window that failed on latency alone (nothing lost) is tried again, up to
//! `--retries` times, and the rate passes if one try does (every try stays in the report). A window that lost
//! texts or connections (a server closing a consumer too slow to read) ends the search: the crowd is no
//! longer whole.

use std::time::Duration;

use indicatif::ProgressBar;

use super::crowd::{Crowd, Load};
use super::report::{PhaseResult, Search, Step};
use super::{BenchArgs, Scenario};

/// The longest wait for an overloaded window's backlog to drain.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Runs the search on a joined crowd.
///
/// # Errors
/// Those of [`Crowd::window`].
pub(crate) async fn find_max(
    crowd: &mut Crowd,
    participants: usize,
    args: &BenchArgs,
    progress: &ProgressBar,
) -> anyhow::Result<Search> {
    let senders = args.senders.map_or(participants, |n| (n as usize).min(participants)).max(1);
    let mut rate = args.rate.unwrap_or(10.0);
    let (mut low, mut high): (Option<f64>, Option<f64>) = (None, None);
    let mut refinements = 0;
    let mut steps = Vec::new();
    let mut windows = 0;
    'search: while windows < args.max_steps {
        let mut passed = false;
        for _ in 0..=args.retries {
            progress.set_message(format!("{}: {rate:.0} texts/s", crowd.technique().as_str()));
            let load = Load { scenario: Scenario::Chat, send_every: senders as f64 / rate, burst: 1 };
            let result = crowd.window(load, args).await?;
            windows += 1;
            passed = passes(&result, args);
            let lost = result.send_errors > 0 || result.sent == 0;
            progress.suspend(|| {
                eprintln!(
                    "{}: {rate:.0} texts/s -> {:.0} deliveries/s, p99 {:.1} ms, missed {}, failed {}: {}",
                    crowd.technique().as_str(),
                    result.deliveries_per_s,
                    result.latency_ms.p99,
                    result.missed,
                    result.send_errors,
                    if passed { "pass" } else { "fail" }
                )
            });
            let missed = result.missed > 0;
            steps.push(Step { passed, result });
            if passed {
                break;
            }
            crowd.settle(SETTLE_LIMIT).await;
            if lost {
                break 'search;
            }
            if missed || windows >= args.max_steps {
                break;
            }
        }
        if passed {
            low = Some(rate);
        } else {
            high = Some(rate);
        }
        rate = match (low, high) {
            (Some(_), None) => rate * args.step,
            (None, Some(_)) => rate / args.step,
            (Some(low), Some(high)) if refinements < args.refine && high / low > 1.05 => {
                refinements += 1;
                (low * high).sqrt()
            }
            _ => break,
        };
    }
    let best = steps.iter().filter(|s| s.passed).map(|s| s.result.deliveries_per_s).max_by(f64::total_cmp);
    Ok(Search { technique: crowd.technique(), max_p99_ms: args.max_p99_ms, steps, best_deliveries_per_s: best })
}

/// Whether a window met the limits.
fn passes(result: &PhaseResult, args: &BenchArgs) -> bool {
    // Each sender's schedule fits at least floor(duration / interval) texts into the window.
    let rate = result.offered_texts_per_s.unwrap_or(0.0);
    let per_sender = if rate > 0.0 { (args.duration * rate / result.senders.max(1) as f64).floor() } else { 0.0 };
    let asked = per_sender * result.senders as f64;
    result.deliveries > 0
        && result.latency_ms.p99 < args.max_p99_ms
        && result.missed == 0
        && result.send_errors == 0
        && result.sent as f64 >= 0.95 * asked
}
