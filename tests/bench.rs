//! `chatlab bench` end to end, small and fast: every technique against an in-process server.

use std::time::Duration;

use chatlab::bench::report::Report;
use chatlab::config::{Cli, Command, Config};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A short bench of all four techniques plus the seed protocol (chatlab's own `/`) delivers every text to
/// every participant, and the bytes its clients counted agree with what the server counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_every_technique_and_agrees_with_the_server() {
    let config = Config { rate_limit: 0.0, ..Config::default() };
    let room = chatlab::build_room(config).await.expect("room");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(chatlab::run(listener, room, async move {
        let _ = stopped.await;
    }));

    let out = std::env::temp_dir().join(format!("chatlab-bench-{}.json", std::process::id()));
    let (url, seed_url, out_arg) = (format!("http://{addr}"), format!("ws://{addr}/"), out.display().to_string());
    #[rustfmt::skip]
    let argv = [
        "chatlab", "bench", "--url", &url, "--seed-url", &seed_url, "--participants", "3", "--duration", "1.5",
        "--warmup", "0.2", "--poll-interval", "0.3", "--send-every", "0.5", "--format", "json", "--out", &out_arg,
    ];
    let Some(Command::Bench(args)) = Cli::try_parse_from(argv).expect("flags").command else {
        panic!("not the bench subcommand");
    };
    tokio::time::timeout(Duration::from_secs(60), chatlab::bench::run(args))
        .await
        .expect("the bench finishes within 60 s")
        .expect("the bench runs");

    let report: Report = serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("JSON");
    let _ = std::fs::remove_file(&out);
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
