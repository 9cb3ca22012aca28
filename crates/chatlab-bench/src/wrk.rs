//! `--wrk`: requests per second of chatlab's short and long polls against a bare axum handler, measured with
//! [wrk](https://github.com/wg/wrk) in the same run.
//!
//! The bench starts `chatlab bench-bare` (see [`super::bare`]) next to the chatlab under test, both as child
//! processes, then runs `wrk` (which must be on `PATH`) against three targets, round after round so that the
//! machine's drift hits all three alike:
//!
//! - `bare`: the fixed body, `{"events":[],"next":N,"epoch":"E"}`, as many bytes as chatlab answers an empty poll
//!   with;
//! - `poll`: `GET /api/poll?session=S&since=HEAD`, answered at once with no event;
//! - `longpoll`: `GET /api/longpoll?session=S&since=HEAD&timeout=0`, likewise (a zero hold answers at once).
//!
//! Each round joins one session per wrk connection right before its run (wrk's Lua `request` hands the
//! sessions out in turn) and leaves them after it; `HEAD` is the room's cursor after those joins, so every
//! answer is empty unless the room moved (the report says if it did). The bench's report gives each target's
//! median and the ratio of each poll to `bare`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::http::{count_poll, Http};
use super::probe::Probe;
use super::BenchArgs;

/// What `--wrk` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkReport {
    /// The wrk command line's shape (threads, connections, seconds per run).
    pub wrk: String,
    /// How the bare server ran: on the same runtime shape as the chatlab the bench started (its `--threads`).
    #[serde(default)]
    pub bare: String,
    /// One per target, in the order run within a round.
    pub targets: Vec<WrkTarget>,
}

/// One target's runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkTarget {
    /// `bare`, `poll` or `longpoll`.
    pub name: String,
    /// The path wrk asked for (`S` stands for the session, one per connection).
    pub path: String,
    /// Requests per second of each round.
    pub requests_per_s: Vec<f64>,
    /// Their median.
    pub median_requests_per_s: f64,
    /// wrk's p99 latency of each round, in ms.
    pub p99_ms: Vec<f64>,
    /// Answers that were not 2xx or 3xx, over all rounds.
    pub non_2xx: u64,
    /// Rounds in which the room moved during the run (some answers may then have carried events).
    pub rounds_room_moved: u32,
    /// CPU seconds per second the machine's other processes took during each round (busy time from
    /// `/proc/stat` minus the server's and wrk's): near 0 for a clean round; `None` where it could not be read.
    #[serde(default)]
    pub others_cpu_s_per_s: Vec<Option<f64>>,
    /// `median_requests_per_s` over `bare`'s.
    pub ratio_to_bare: f64,
}

/// A bare server the bench started; killed when dropped.
struct Bare {
    authority: String,
    child: tokio::process::Child,
}

/// Runs the comparison against the chatlab at `authority` (its processes `pids`, if known, for the other
/// processes' share of the machine).
///
/// # Errors
/// When wrk or the bare server cannot be started, or chatlab refuses a join or a poll.
pub(crate) async fn compare(authority: &str, pids: &[u32], args: &BenchArgs) -> anyhow::Result<WrkReport> {
    let connections = args.wrk_connections.max(1);
    // The body chatlab answers an empty poll with, for the bare server to send the same bytes.
    let sessions = join(authority, "poll", 1).await?;
    let (_, body) = head(authority, &sessions[0]).await?;
    leave(authority, &sessions).await;
    let threads = threads_of(&args.server_args);
    let bare = start_bare(&String::from_utf8_lossy(&body), threads.as_deref()).await?;
    let names = ["bare", "poll", "longpoll"];
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut paths = vec![String::new(); 3];
    let mut moved = [0u32; 3];
    let bare_pids: Vec<u32> = bare.child.id().into_iter().collect();
    for round in 0..args.repeat.max(1) {
        for (i, name) in names.iter().enumerate() {
            eprintln!("wrk round {}: {name}", round + 1);
            let (target, list, sessions, server) = match *name {
                "bare" => (bare.authority.clone(), vec!["/".to_owned()], Vec::new(), &bare_pids[..]),
                transport => {
                    let sessions = join(authority, transport, connections).await?;
                    let (head, _) = head(authority, &sessions[0]).await?;
                    let path = |s: &String| match transport {
                        "poll" => format!("/api/poll?session={s}&since={head}"),
                        _ => format!("/api/longpoll?session={s}&since={head}&timeout=0"),
                    };
                    (authority.to_owned(), sessions.iter().map(path).collect(), sessions, pids)
                }
            };
            paths[i] = match sessions.first() {
                Some(first) => list[0].replace(first.as_str(), "S"),
                None => list[0].clone(),
            };
            let head_before = match sessions.first() {
                Some(s) => Some(head(authority, s).await?.0),
                None => None,
            };
            runs[i].push(run_wrk(&target, &list, server, args).await?);
            if let Some(before) = head_before {
                if head(authority, &sessions[0]).await?.0 != before {
                    moved[i] += 1;
                }
            }
            leave(authority, &sessions).await;
        }
    }
    drop(bare);
    let median_of = |runs: &[WrkRun]| median(runs.iter().map(|r| r.requests_per_s).collect());
    let bare_median = median_of(&runs[0]);
    let targets = names
        .iter()
        .enumerate()
        .map(|(i, name)| WrkTarget {
            name: (*name).to_owned(),
            path: paths[i].clone(),
            requests_per_s: runs[i].iter().map(|r| r.requests_per_s).collect(),
            median_requests_per_s: median_of(&runs[i]),
            p99_ms: runs[i].iter().map(|r| r.p99_ms).collect(),
            non_2xx: runs[i].iter().map(|r| r.non_2xx).sum(),
            rounds_room_moved: moved[i],
            others_cpu_s_per_s: runs[i].iter().map(|r| r.others_cpu_s_per_s).collect(),
            ratio_to_bare: median_of(&runs[i]) / bare_median,
        })
        .collect();
    Ok(WrkReport {
        wrk: format!("wrk -t{} -c{connections} -d{}s --latency", args.wrk_threads, args.wrk_seconds),
        bare: match &threads {
            Some(n) => format!("chatlab --threads {n} bench-bare"),
            None => "chatlab bench-bare".to_owned(),
        },
        targets,
    })
}

/// One wrk run's figures.
struct WrkRun {
    requests_per_s: f64,
    p99_ms: f64,
    non_2xx: u64,
    others_cpu_s_per_s: Option<f64>,
}

/// The machine's busy CPU seconds, the server's and wrk's so far (wrk's once it has been waited for).
fn cpu_now(server: &[u32]) -> Option<(f64, f64, f64)> {
    Some((
        super::server::machine_busy_seconds()?,
        super::server::cpu_seconds(server)?,
        super::server::reaped_children_cpu_seconds()?,
    ))
}

/// Runs wrk against `authority` (served by the processes `server`), its requests cycling through `paths`.
async fn run_wrk(authority: &str, paths: &[String], server: &[u32], args: &BenchArgs) -> anyhow::Result<WrkRun> {
    let script = std::env::temp_dir().join(format!("chatlab-wrk-{}.lua", std::process::id()));
    let list = paths.iter().map(|p| format!("  \"{p}\",")).collect::<Vec<_>>().join("\n");
    std::fs::write(
        &script,
        format!(
            "local paths = {{\n{list}\n}}\nlocal n = 0\nrequest = function()\n  n = n % #paths + 1\n  return wrk.format(\"GET\", paths[n])\nend\n"
        ),
    )?;
    let before = cpu_now(server);
    let started = std::time::Instant::now();
    let output = Command::new("wrk")
        .arg(format!("-t{}", args.wrk_threads))
        .arg(format!("-c{}", args.wrk_connections.max(1)))
        .arg(format!("-d{}s", args.wrk_seconds))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{authority}"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running wrk (apt-get install wrk)")?;
    let elapsed = started.elapsed().as_secs_f64();
    // What the machine was busy with beyond the server under test and wrk itself.
    let others_cpu_s_per_s = before.zip(cpu_now(server)).map(|((machine0, server0, wrk0), (machine, server, wrk))| {
        ((machine - machine0) - (server - server0) - (wrk - wrk0)).max(0.0) / elapsed
    });
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .map(|r| r.split_whitespace().next().unwrap_or(""))
    };
    let requests_per_s =
        field("Requests/sec:").and_then(|r| r.parse().ok()).with_context(|| format!("no Requests/sec in: {text}"))?;
    let p99_ms = field("99%").map_or(f64::NAN, wrk_ms);
    let non_2xx = field("Non-2xx or 3xx responses:").and_then(|r| r.parse().ok()).unwrap_or(0);
    Ok(WrkRun { requests_per_s, p99_ms, non_2xx, others_cpu_s_per_s })
}

/// wrk's duration (`812.00us`, `1.20ms`, `2.00s`) in ms.
fn wrk_ms(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => f64::NAN,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Joins `n` sessions of `transport`.
async fn join(authority: &str, transport: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut http = Http::connect(authority, Probe::new(), false).await?;
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(http.join(transport).await?.0);
    }
    Ok(sessions)
}

/// Leaves every session (best effort).
async fn leave(authority: &str, sessions: &[String]) {
    if let Ok(mut http) = Http::connect(authority, Probe::new(), false).await {
        for session in sessions {
            let _ = http.leave(session).await;
        }
    }
}

/// The room's cursor as `session` sees it (after everything so far), and the body of an empty poll there.
async fn head(authority: &str, session: &str) -> anyhow::Result<(u64, Bytes)> {
    let mut http = Http::connect(authority, Probe::new(), false).await?;
    let mut since = 0;
    // Poll until the answer is empty: then `next` is the head.
    for _ in 0..100 {
        let (status, body) =
            http.call(Method::GET, &format!("/api/poll?session={session}&since={since}"), None).await?;
        if status != StatusCode::OK {
            bail!("/api/poll answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let next = count_poll(&Probe::new(), &body).context("a poll answer without next")?;
        if body.starts_with(b"{\"events\":[]") {
            return Ok((next, body));
        }
        since = next;
    }
    bail!("the room did not stop moving")
}

/// The `--threads` among the flags the bench gives the chatlab it starts (`--threads=N` or `--threads N`).
fn threads_of(server_args: &[String]) -> Option<String> {
    server_args.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix("--threads") {
        Some("") => server_args.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_owned),
        None => None,
    })
}

/// Starts `chatlab bench-bare` on a free port, serving `body`, with chatlab's `--threads` when one was given (a
/// yardstick on one thread against a chatlab on two, or the reverse, would measure the runtimes, not chatlab);
/// waits until it answers.
async fn start_bare(body: &str, threads: Option<&str>) -> anyhow::Result<Bare> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let authority = format!("127.0.0.1:{port}");
    let mut command = Command::new(std::env::current_exe()?);
    if let Some(threads) = threads {
        command.args(["--threads", threads]);
    }
    let child = command
        .args(["bench-bare", "--bind", &authority, "--body", body])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting chatlab bench-bare")?;
    for _ in 0..100 {
        if let Ok(mut http) = Http::connect(&authority, Probe::new(), false).await {
            if http.call(Method::GET, "/", None).await.is_ok() {
                return Ok(Bare { authority, child });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("chatlab bench-bare did not answer on {authority} within 10 s")
}

#[cfg(test)]
mod tests {
    use super::threads_of;

    #[test]
    fn the_bare_server_takes_chatlabs_threads() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(threads_of(&args(&["--send-queue=4096", "--threads=1"])), Some("1".to_owned()));
        assert_eq!(threads_of(&args(&["--threads", "3"])), Some("3".to_owned()));
        assert_eq!(threads_of(&args(&["--send-queue=4096"])), None);
        assert_eq!(threads_of(&args(&["--threadsx=2"])), None);
    }
}
