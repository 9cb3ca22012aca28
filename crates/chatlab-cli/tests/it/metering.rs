//! The wire counters are exact: each test speaks a technique over a plain TCP socket with known bytes, counts
//! every byte it reads back, and checks that the server's counters moved by exactly those numbers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chatlab::config::Config;
use chatlab::core::{Room, Transport};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::common;

use common::raw::{client_frame, get, post, Raw, UPGRADE};

/// A server on 127.0.0.1:0; it stops when the returned sender drops.
async fn start() -> (SocketAddr, Room, oneshot::Sender<()>) {
    let room = chatlab::build_room(Config { broker: "memory".into(), ..Config::default() }).await.expect("room");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(chatlab::run(listener, room.clone(), async move {
        let _ = stopped.await;
    }));
    (addr, room, stop)
}

/// Wire counters of one technique, or of none (`None`).
fn wire(room: &Room, transport: Option<Transport>) -> (u64, u64) {
    let metering = room.metering();
    match transport {
        Some(t) => {
            let c = metering.of(t);
            (c.wire_bytes_in.load(Ordering::Relaxed), c.wire_bytes_out.load(Ordering::Relaxed))
        }
        None => {
            let o = metering.others();
            (o.wire_bytes_in.load(Ordering::Relaxed), o.wire_bytes_out.load(Ordering::Relaxed))
        }
    }
}

/// Waits (at most 3 s) for the server's counters to reach `expected`, then asserts they are exactly that:
/// the server counts a write just after the syscall, so a fast client may read the bytes a moment earlier.
async fn assert_wire(room: &Room, transport: Option<Transport>, expected: (u64, u64)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while wire(room, transport) != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(wire(room, transport), expected, "(bytes in, bytes out) of {transport:?}");
}

fn add(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0 + b.0, a.1 + b.1)
}

/// Joins over HTTP on `raw` for `transport`; returns the session token, the join cursor and the exchange's bytes.
async fn join(raw: &mut Raw, transport: &str) -> (String, u64, (u64, u64)) {
    let body = format!("{{\"transport\":\"{transport}\"}}");
    let (response, bytes) = raw.exchange(&post("/api/sessions", "application/json", &body)).await;
    assert!(response.head.starts_with("HTTP/1.1 201"), "{}", response.head);
    let json = response.json();
    (json["session"].as_str().unwrap().to_owned(), json["seq"].as_u64().unwrap(), bytes)
}

/// Short polling: the join, two polls and the requests of no technique on the same keep-alive connection are
/// each counted exactly, under `poll` or under none.
#[tokio::test]
async fn short_poll_bytes_are_exact_and_stats_requests_count_under_none() {
    let (addr, room, _stop) = start().await;
    let mut raw = Raw::connect(addr).await;
    let (token, _, joined) = join(&mut raw, "poll").await;
    let (_, health) = raw.exchange(&get("/healthz")).await;
    let (first, polled) = raw.exchange(&get(&format!("/api/poll?session={token}"))).await;
    assert_eq!(first.json()["events"].as_array().unwrap().len(), 1, "the join notice");
    let next = first.json()["next"].as_u64().unwrap();
    let (_, stats) = raw.exchange(&get("/api/stats")).await;
    let (empty, polled_empty) = raw.exchange(&get(&format!("/api/poll?session={token}&since={next}"))).await;
    assert!(empty.json()["events"].as_array().unwrap().is_empty());
    let (_, asset) = raw.exchange(&get("/")).await;

    assert_wire(&room, Some(Transport::Poll), add(add(joined, polled), polled_empty)).await;
    assert_wire(&room, None, add(add(health, stats), asset)).await;
    let poll = room.metering().of(Transport::Poll);
    assert_eq!(poll.requests.load(Ordering::Relaxed), 3, "join + two polls");
    assert_eq!(poll.empty_responses.load(Ordering::Relaxed), 1);
    assert_eq!(poll.events_delivered.load(Ordering::Relaxed), 1);
    for other in [Transport::Ws, Transport::Sse, Transport::LongPoll] {
        assert_eq!(wire(&room, Some(other)), (0, 0), "{other:?} untouched");
    }
}

/// Long polling: an answered poll and one that times out empty are counted exactly under `longpoll`.
#[tokio::test]
async fn long_poll_bytes_are_exact() {
    let (addr, room, _stop) = start().await;
    let mut raw = Raw::connect(addr).await;
    let (token, seq, joined) = join(&mut raw, "longpoll").await;
    let (answered, first) = raw.exchange(&get(&format!("/api/longpoll?session={token}&since={seq}"))).await;
    let next = answered.json()["next"].as_u64().unwrap();
    let (empty, second) = raw.exchange(&get(&format!("/api/longpoll?session={token}&since={next}&timeout=0.2"))).await;
    assert!(empty.json()["events"].as_array().unwrap().is_empty());

    assert_wire(&room, Some(Transport::LongPoll), add(add(joined, first), second)).await;
    let counters = room.metering().of(Transport::LongPoll);
    assert_eq!(counters.requests.load(Ordering::Relaxed), 3);
    assert_eq!(counters.empty_responses.load(Ordering::Relaxed), 1);
    // The first poll found its event waiting and was answered at once; only the second was held on a channel.
    assert_eq!(counters.connections_total.load(Ordering::Relaxed), 1);
}

/// SSE: the stream's head, chunk framing and frames, plus the join and the POSTed message on other
/// connections, all count exactly under `sse`; closing the stream adds nothing.
#[tokio::test]
async fn sse_bytes_are_exact_including_chunk_framing() {
    let (addr, room, _stop) = start().await;
    let mut control = Raw::connect(addr).await;
    let (token, seq, joined) = join(&mut control, "sse").await;

    let mut stream = Raw::connect(addr).await;
    stream.send(&get(&format!("/api/sse?session={token}&since={seq}"))).await;
    let head = stream.head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut text = String::new();
    stream.chunks_until(&mut text, "来了").await;
    assert!(text.starts_with("data: {\"type\":\"welcome\""), "{text}");

    let (accepted, posted) =
        control.exchange(&post(&format!("/api/messages?session={token}"), "text/plain", "hello")).await;
    assert!(accepted.head.starts_with("HTTP/1.1 202"), "{}", accepted.head);
    stream.chunks_until(&mut text, "\"message\":\"hello\"").await;

    let expected = add(add(joined, posted), stream.totals());
    assert_wire(&room, Some(Transport::Sse), expected).await;
    let counters = room.metering().of(Transport::Sse);
    assert_eq!(counters.events_delivered.load(Ordering::Relaxed), 2, "join notice and hello");
    assert_eq!(counters.requests.load(Ordering::Relaxed), 3, "join, stream, POST");

    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_wire(&room, Some(Transport::Sse), expected).await;
}

/// HTTP streaming and the forever iframe: the response's head, chunk framing, NDJSON lines or scripts (and the
/// iframe's padding), plus the join and the POSTed message on another connection, all count exactly under their
/// technique; closing the response adds nothing.
#[tokio::test]
async fn stream_and_iframe_bytes_are_exact_including_chunk_framing() {
    let (addr, room, _stop) = start().await;
    for (transport, name, welcome) in [
        (Transport::Stream, "stream", "{\"type\":\"welcome\""),
        (Transport::Iframe, "iframe", "parent.chatlab({\"type\":\"welcome\""),
    ] {
        let mut control = Raw::connect(addr).await;
        let (token, seq, joined) = join(&mut control, name).await;
        let mut stream = Raw::connect(addr).await;
        stream.send(&get(&format!("/api/{name}?session={token}&since={seq}"))).await;
        let head = stream.head().await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        let mut text = String::new();
        stream.chunks_until(&mut text, "来了").await;
        assert!(text.contains(welcome), "{text}");
        let (accepted, posted) =
            control.exchange(&post(&format!("/api/messages?session={token}"), "text/plain", "hello")).await;
        assert!(accepted.head.starts_with("HTTP/1.1 202"), "{}", accepted.head);
        stream.chunks_until(&mut text, "\"message\":\"hello\"").await;
        let expected = add(add(joined, posted), stream.totals());
        assert_wire(&room, Some(transport), expected).await;
        let counters = room.metering().of(transport);
        assert_eq!(counters.events_delivered.load(Ordering::Relaxed), 2, "{name}: join notice and hello");
        assert_eq!(counters.requests.load(Ordering::Relaxed), 3, "{name}: join, stream, POST");
        drop(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_wire(&room, Some(transport), expected).await;
    }
    assert_eq!(wire(&room, Some(Transport::Sse)), (0, 0), "SSE untouched");
}

/// Sends `hello` on an open WebSocket, reads frames until it comes back, then closes cleanly.
async fn talk_and_close(raw: &mut Raw) {
    raw.send(&client_frame(0x1, b"hello")).await;
    loop {
        let (_, opcode, payload) = raw.server_frame().await;
        assert_eq!(opcode, 0x1);
        if String::from_utf8(payload).unwrap().contains("\"message\":\"hello\"") {
            break;
        }
    }
    raw.send(&client_frame(0x8, &1000u16.to_be_bytes())).await;
    let (_, opcode, _) = raw.server_frame().await;
    assert_eq!(opcode, 0x8, "the server answers the close");
}

/// WebSocket on `/ws`: the upgrade request, the 101 response and every frame both ways count exactly under `ws`.
#[tokio::test]
async fn websocket_bytes_are_exact_from_handshake_to_close() {
    let (addr, room, _stop) = start().await;
    let mut raw = Raw::connect(addr).await;
    raw.send(format!("GET /ws {UPGRADE}").as_bytes()).await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, _, welcome) = raw.server_frame().await;
    assert!(String::from_utf8(welcome).unwrap().contains("\"type\":\"welcome\""));
    talk_and_close(&mut raw).await;

    assert_wire(&room, Some(Transport::Ws), raw.totals()).await;
    assert_eq!(room.metering().of(Transport::Ws).requests.load(Ordering::Relaxed), 1, "the upgrade");
    assert_eq!(wire(&room, None), (0, 0), "nothing counted under none");
}

/// The seed protocol on `/` is a WebSocket too: counted exactly under `ws`.
#[tokio::test]
async fn seed_websocket_bytes_count_under_ws() {
    let (addr, room, _stop) = start().await;
    let mut raw = Raw::connect(addr).await;
    raw.send(format!("GET / {UPGRADE}").as_bytes()).await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    talk_and_close(&mut raw).await;
    assert_wire(&room, Some(Transport::Ws), raw.totals()).await;
}

/// Metering changes nothing it measures: responses that have a length keep their `Content-Length` header
/// (a body wrapper that lost `size_hint` would turn them into chunked ones).
#[tokio::test]
async fn content_length_responses_keep_their_header() {
    let (addr, _room, _stop) = start().await;
    let mut raw = Raw::connect(addr).await;
    let (token, _, _) = join(&mut raw, "poll").await;
    let requests = [
        get(&format!("/api/poll?session={token}")),
        get(&format!("/api/longpoll?session={token}&timeout=0")),
        post(&format!("/api/messages?session={token}"), "text/plain", "hi"),
        get("/api/stats"),
        get("/metrics"),
        get("/healthz"),
        get("/"),
    ];
    for request in requests {
        let (response, _) = raw.exchange(&request).await;
        let line = response.head.lines().next().unwrap().to_owned();
        assert_eq!(response.header("transfer-encoding"), None, "{line}: not chunked");
        let length = response.header("content-length").unwrap_or_else(|| panic!("{line}: Content-Length"));
        assert_eq!(length.parse::<usize>().unwrap(), response.body.len(), "{line}");
    }
}

/// `/metrics` shows the same numbers as `/api/stats`, in the Prometheus text format.
#[tokio::test]
async fn metrics_expose_the_same_counters() {
    let (addr, room, _stop) = start().await;
    let mut raw = Raw::connect(addr).await;
    let (token, _, _) = join(&mut raw, "poll").await;
    raw.exchange(&get(&format!("/api/poll?session={token}"))).await;
    let (response, _) = raw.exchange(&get("/metrics")).await;
    assert!(response.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let text = String::from_utf8(response.body).unwrap();
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{transport=\"poll\"}} ");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{prefix} in {text}"));
        line[prefix.len()..].parse().unwrap()
    };
    let (wire_in, wire_out) = wire(&room, Some(Transport::Poll));
    assert_eq!(value("chatlab_wire_in_bytes_total"), wire_in);
    assert_eq!(value("chatlab_wire_out_bytes_total"), wire_out);
    assert_eq!(value("chatlab_requests_total"), 2);
    assert_eq!(value("chatlab_events_delivered_total"), 1);
    assert_eq!(value("chatlab_delivery_latency_seconds_count"), 1);
    assert!(text.contains("chatlab_delivery_latency_seconds_bucket{le=\"+Inf\",transport=\"poll\"} 1"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
}
