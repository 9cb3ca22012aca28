//! `chatlab bench` end to end, small and fast: every technique against an in-process server.

use std::time::Duration;

use chatlab::bench::report::Report;
use chatlab::config::{Cli, Command, Config};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Serves a room with the rate limit off on `127.0.0.1:0` until the returned sender is dropped.
async fn start_server() -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let config = Config { rate_limit: 0.0, ..Config::default() };
    let room = chatlab::build_room(config).await.expect("room");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(chatlab::run(listener, room, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Runs `chatlab bench` with `flags` (plus `--format json --out FILE`) and returns its report.
async fn bench(flags: &[&str]) -> Report {
    let out = std::env::temp_dir().join(format!("chatlab-bench-{}-{}.json", std::process::id(), flags.len()));
    let out_arg = out.display().to_string();
    let mut argv = vec!["chatlab", "bench"];
    argv.extend_from_slice(flags);
    argv.extend_from_slice(&["--format", "json", "--out", &out_arg]);
    let Some(Command::Bench(args)) = Cli::try_parse_from(argv).expect("flags").command else {
        panic!("not the bench subcommand");
    };
    tokio::time::timeout(Duration::from_secs(60), chatlab::bench::run(args))
        .await
        .expect("the bench finishes within 60 s")
        .expect("the bench runs");
    let report = serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("JSON");
    let _ = std::fs::remove_file(&out);
    report
}

/// A short bench of all four techniques plus the seed protocol (chatlab's own `/`) delivers every text to
/// every participant, and the bytes its clients counted agree with what the server counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_every_technique_and_agrees_with_the_server() {
    let (addr, _stop) = start_server().await;
    let (url, seed_url) = (format!("http://{addr}"), format!("ws://{addr}/"));
    #[rustfmt::skip]
    let report = bench(&[
        "--url", &url, "--seed-url", &seed_url, "--participants", "3", "--duration", "1.5",
        "--warmup", "0.2", "--poll-interval", "0.3", "--send-every", "0.5",
    ]).await;
    let names: Vec<&str> = report.results.iter().map(|r| r.technique.as_str()).collect();
    assert_eq!(names, ["ws", "sse", "longpoll", "poll", "seed"]);
    for result in &report.results {
        let name = result.technique.as_str();
        assert_eq!(result.participants, 3, "{name}");
        assert!(result.sent > 0 && result.send_errors == 0, "{name}: {result:?}");
        assert_eq!(result.deliveries, result.sent * 3, "{name}: every text reaches every participant");
        assert!(result.latency_ms.p50 > 0.0, "{name}");
        if let Some(server) = result.server {
            let close = |client: u64, server: u64| client.abs_diff(server) <= 2_000;
            assert!(close(result.bytes_down, server.wire_bytes_out), "{name}: down {result:?}");
            assert!(close(result.bytes_up, server.wire_bytes_in), "{name}: up {result:?}");
        }
    }
    let ws = &report.results[0];
    let server = ws.server.expect("chatlab's counters");
    assert_eq!((ws.bytes_down, ws.bytes_up), (server.wire_bytes_out, server.wire_bytes_in), "WebSocket: exact");
    assert_eq!(ws.requests, 0, "a WebSocket makes no HTTP request once open");
    assert!(report.results[3].requests > 0, "short polling asks");
}

/// `--find-max` on a mixed crowd with one sender: a passing window raises the rate by `--step`, every text
/// reaches all four techniques' participants, and the server's counters of the four transports add up to what
/// the clients counted. (The p99 limit is above the short-poll interval: a poller waits for its next poll.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_climbs_the_rate_on_a_mixed_crowd() {
    let (addr, _stop) = start_server().await;
    let url = format!("http://{addr}");
    #[rustfmt::skip]
    let report = bench(&[
        "--url", &url, "--techniques", "mix", "--participants", "4", "--senders", "1", "--find-max", "--rate", "4",
        "--step", "2", "--max-steps", "2", "--refine", "0", "--retries", "0", "--max-p99-ms", "2000",
        "--duration", "1", "--warmup", "0.2", "--poll-interval", "0.2",
    ]).await;
    assert_eq!(report.searches.len(), 1);
    let steps = &report.searches[0].steps;
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0].result.offered_texts_per_s, Some(4.0));
    assert_eq!(steps[1].result.offered_texts_per_s, Some(8.0));
    for step in steps {
        assert!(step.passed, "{step:?}");
        let result = &step.result;
        assert_eq!(result.senders, 1);
        assert_eq!(result.deliveries, result.sent * 4, "every text reaches every participant: {result:?}");
        let server = result.server.expect("chatlab's counters");
        assert!(result.bytes_down.abs_diff(server.wire_bytes_out) <= 2_000, "{result:?}");
    }
    assert!(steps[0].result.join_s.is_some(), "the first window reports the join");
    assert!(steps[1].result.join_s.is_none(), "later windows do not repeat it");
}
