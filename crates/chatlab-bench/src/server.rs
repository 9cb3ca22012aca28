//! The servers under test: a chatlab the bench starts itself (a child process, so its CPU time is its own),
//! or the ones given with `--url`; their `/api/stats` counters and their CPU time from `/proc/<pid>/stat`.

use std::sync::Arc;

use super::probe::Https;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hyper::{Method, StatusCode};
use tokio::process::{Child, Command};

use super::http::Http;
use super::report::ServerCounters;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on every mainstream Linux architecture; the
/// kernel reports in this unit whatever its internal tick rate.
const USER_HZ: f64 = 100.0;

/// A chatlab the bench started; killed when dropped, and its data directory (if the bench made one) removed.
#[derive(Debug)]
pub(crate) struct OwnServer {
    /// `127.0.0.1:PORT`.
    pub(crate) authority: String,
    /// The child's process id, for its CPU time.
    pub(crate) pid: u32,
    child: Child,
    /// The temporary `--data-dir` of a durable room the bench made.
    data_dir: Option<PathBuf>,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts `chatlab` (this very binary, without a subcommand) on a free loopback port, with the per-session and
/// per-client limits off (the bench's senders would trip the rates, and all its participants come from
/// 127.0.0.1) and `extra` flags; waits until `/healthz` answers. Unless `extra` gives a `--data-dir`, a durable
/// room (the default broker) is kept in a new temporary directory, removed afterwards: every run starts from an
/// empty room, and never touches `./chatlab-data`.
///
/// # Errors
/// When the binary cannot be started or does not answer within 10 s.
pub(crate) async fn start(extra: &[String], https: Option<Arc<Https>>) -> anyhow::Result<OwnServer> {
    let port = {
        // Ask the OS for a free port, then hand it to the child (a tiny race, fine on a bench machine).
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let authority = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe().context("locating the chatlab binary")?;
    let data_dir = (!extra.iter().any(|arg| arg.starts_with("--data-dir")))
        .then(|| std::env::temp_dir().join(format!("chatlab-bench-{}-{port}", std::process::id())));
    let mut command = Command::new(exe);
    command.args([
        "--bind",
        &authority,
        "--rate-limit",
        "0",
        "--client-rate-limit",
        "0",
        "--max-sessions-per-client",
        "0",
    ]);
    if let Some(dir) = &data_dir {
        let _ = std::fs::remove_dir_all(dir);
        command.arg("--data-dir").arg(dir);
    }
    let child = command
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting chatlab")?;
    let pid = child.id().context("the child has no pid")?;
    let server = OwnServer { authority, pid, child, data_dir };
    for _ in 0..100 {
        if let Ok(mut http) = Http::connect_control(&server.authority, https.clone()).await {
            if let Ok((StatusCode::OK, _)) = http.call(Method::GET, "/healthz", None).await {
                return Ok(server);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("chatlab did not answer on {} within 10 s", server.authority)
}

/// `host:port` of a `scheme://` URL (`http`, or `https` with `--http2`).
///
/// # Errors
/// Anything but `scheme://HOST:PORT[/]`.
pub(crate) fn authority_of(url: &str, scheme: &str) -> anyhow::Result<String> {
    let wrong = || format!("--url must be {scheme}://HOST:PORT, got {url}");
    let rest = url.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("://")).with_context(wrong)?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!(wrong());
    }
    Ok(authority.to_owned())
}

/// Reads the counters of `transports` from every server's `/api/stats` and adds them up.
///
/// # Errors
/// A server that does not answer, or answers something else than chatlab's stats.
pub(crate) async fn counters(
    authorities: &[String],
    transports: &[&str],
    https: Option<&Arc<Https>>,
) -> anyhow::Result<ServerCounters> {
    let mut sum = ServerCounters::default();
    for authority in authorities {
        let mut http = Http::connect_control(authority, https.cloned()).await?;
        let (status, body) = http.call(Method::GET, "/api/stats", None).await?;
        if status != StatusCode::OK {
            bail!("{authority}/api/stats answered {status}");
        }
        let stats: serde_json::Value = serde_json::from_slice(&body)?;
        for transport in transports {
            let of = &stats["transports"][transport];
            let get = |name: &str| of[name].as_u64().with_context(|| format!("{authority}/api/stats has no {name}"));
            sum.wire_bytes_in += get("wire_bytes_in")?;
            sum.wire_bytes_out += get("wire_bytes_out")?;
            sum.requests += get("requests")?;
            sum.events_delivered += get("events_delivered")?;
            let buckets: Vec<(f64, u64)> =
                serde_json::from_value(of["latency_ms"]["buckets"].clone()).unwrap_or_default();
            sum.add_buckets(buckets);
        }
        sum.paced_s += stats["other"]["paced_seconds"].as_f64().unwrap_or(0.0);
        // HTTP/2 connections' own frames (preface, SETTINGS, PING, WINDOW_UPDATE) belong to no request, so to no
        // technique; phases run one at a time, so those of a phase are its clients'.
        sum.wire_bytes_in += stats["other"]["http2_connection_bytes_in"].as_u64().unwrap_or(0);
        sum.wire_bytes_out += stats["other"]["http2_connection_bytes_out"].as_u64().unwrap_or(0);
    }
    Ok(sum)
}

/// CPU time (user + system) the processes have used, in seconds; `None` if any cannot be read.
pub(crate) fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut ticks = 0u64;
    for pid in pids {
        // Fields 14 (utime) and 15 (stime) of proc(5).
        ticks += stat_ticks(&format!("/proc/{pid}/stat"), 14)?;
    }
    Some(ticks as f64 / USER_HZ)
}

/// CPU time (user + system) this process's waited-for children have used, in seconds (`cutime` + `cstime` of
/// `/proc/self/stat`): a child's CPU counts here once it has exited and been waited for, as `wrk` is.
pub(crate) fn reaped_children_cpu_seconds() -> Option<f64> {
    // Fields 16 (cutime) and 17 (cstime) of proc(5).
    Some(stat_ticks("/proc/self/stat", 16)? as f64 / USER_HZ)
}

/// The sum of fields `field` and `field + 1` (numbered from 1, as in proc(5)) of a `/proc/.../stat` file: a
/// user and a system time, in clock ticks.
fn stat_ticks(path: &str, field: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces or parentheses: count fields after its closing ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_whitespace().skip(field - 3);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

/// Resident memory of the processes (`VmRSS` of `/proc/<pid>/status`, summed), in KiB; `None` if any cannot be
/// read.
pub(crate) fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        sum += line.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
    }
    Some(sum)
}

/// CPU seconds the whole machine has been busy (all cores: every `/proc/stat` `cpu` field but idle and
/// iowait), to tell other processes' load apart from the bench's and the server's.
pub(crate) fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle) as f64 / USER_HZ)
}
