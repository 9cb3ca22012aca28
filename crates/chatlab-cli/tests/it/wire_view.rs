//! The wire view over real sockets: a session's counters equal the bytes a raw client counted, the live log
//! shows heads byte-exact and frames with their true sizes, the view's own bytes count apart, and a watcher
//! that never reads stays bounded.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chatlab::core::{Room, Transport};
use common::raw::{client_frame, get, post, Raw, UPGRADE};
use common::wire::{next_of, record};
use common::{start, start_with, Server, WAIT};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A session's counters as the server answers them on `GET /api/sessions/{session}/wire`.
async fn counters(server: &Server, token: &str) -> Value {
    let response = common::http().get(server.url(&format!("/api/sessions/{token}/wire"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert!(json["units"]["wire_bytes_in"].is_string(), "{json}");
    json["session_wire"].clone()
}

/// Waits (at most 3 s) for the session's byte counters to reach `(sent, received)` (the server counts a write
/// just after its syscall, so a fast client may read the bytes a moment before), then returns the counters.
async fn settled(server: &Server, token: &str, sent: u64, received: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let wire = counters(server, token).await;
        let bytes = (wire["wire_bytes_in"].as_u64().unwrap(), wire["wire_bytes_out"].as_u64().unwrap());
        if bytes == (sent, received) || tokio::time::Instant::now() > deadline {
            assert_eq!(bytes, (sent, received), "(bytes in, bytes out) of the session: {wire}");
            return wire;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type WireView = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a wire view on `token`; returns it and its first record (`totals`).
async fn watch(server: &Server, token: &str) -> (WireView, Value) {
    let url = server.ws_url(&format!("/api/wire?session={token}"));
    let (mut view, _) = timeout(WAIT, tokio_tungstenite::connect_async(url)).await.expect("in time").expect("open");
    let first = record(&mut view).await;
    assert_eq!(first["type"], "totals", "{first}");
    (view, first)
}

fn u(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("a number: {value}"))
}

/// Short polling: the join, polls and a POST of one session on one keep-alive connection; the session's
/// counters are exactly the bytes the client sent and received, its requests and the events it got.
#[tokio::test]
async fn a_short_poll_sessions_counters_equal_what_the_client_counted() {
    let server = start().await;
    let mut raw = Raw::connect(server.addr).await;
    let joined = raw.exchange(&post("/api/sessions", "application/json", r#"{"transport":"poll"}"#)).await.0;
    assert!(joined.head.starts_with("HTTP/1.1 201"), "{}", joined.head);
    let token = joined.json()["session"].as_str().unwrap().to_owned();
    let first = raw.exchange(&get(&format!("/api/poll?session={token}"))).await.0;
    let next = u(&first.json()["next"]);
    let posted = raw.exchange(&post(&format!("/api/messages?session={token}"), "text/plain", "hello")).await.0;
    assert!(posted.head.starts_with("HTTP/1.1 202"), "{}", posted.head);
    let second = raw.exchange(&get(&format!("/api/poll?session={token}&since={next}"))).await.0;
    let events = first.json()["events"].as_array().unwrap().len() + second.json()["events"].as_array().unwrap().len();
    assert_eq!(events, 2, "the join notice, then hello");

    let wire = settled(&server, &token, raw.sent, raw.received).await;
    assert_eq!(u(&wire["requests"]), 4, "join, two polls, a POST: {wire}");
    assert_eq!(u(&wire["events_delivered"]), 2);
    assert_eq!((u(&wire["frames_in"]), u(&wire["frames_out"])), (0, 0));

    // The technique's histogram, bucket by bucket, holds exactly the events it delivered.
    let stats: Value = common::http().get(server.url("/api/stats")).send().await.unwrap().json().await.unwrap();
    let buckets = stats["transports"]["poll"]["latency_ms"]["buckets"].as_array().unwrap().clone();
    assert!(!buckets.is_empty());
    assert_eq!(buckets.iter().map(|b| u(&b[1])).sum::<u64>(), 2, "{buckets:?}");
    assert!(buckets.iter().all(|b| b[0].as_f64().unwrap() > 0.0 && u(&b[1]) > 0), "non-empty buckets only");
    assert!(stats["transports"]["ws"]["latency_ms"]["buckets"].as_array().unwrap().is_empty());
}

/// WebSocket: the handshake and every frame both ways of a `/ws` session equal what a raw client counted, and
/// its frames are counted one by one, control frames included.
#[tokio::test]
async fn a_websocket_sessions_counters_equal_what_the_client_counted() {
    let server = start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(format!("GET /ws {UPGRADE}").as_bytes()).await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, _, welcome) = raw.server_frame().await;
    let welcome: Value = serde_json::from_slice(&welcome).unwrap();
    let token = welcome["session"].as_str().unwrap().to_owned();
    let mut frames_out = 1;
    raw.send(&client_frame(0x1, b"hello")).await;
    loop {
        let (_, opcode, payload) = raw.server_frame().await;
        frames_out += 1;
        assert_eq!(opcode, 0x1);
        if String::from_utf8(payload).unwrap().contains("\"message\":\"hello\"") {
            break;
        }
    }
    raw.send(&client_frame(0x9, b"are you there")).await;
    let (_, opcode, payload) = raw.server_frame().await;
    assert_eq!((opcode, payload.as_slice()), (0xA, b"are you there".as_slice()), "the pong");
    raw.send(&client_frame(0x8, &1000u16.to_be_bytes())).await;
    let (_, opcode, _) = raw.server_frame().await;
    assert_eq!(opcode, 0x8, "the close reply");
    frames_out += 2;

    let wire = settled(&server, &token, raw.sent, raw.received).await;
    assert_eq!(u(&wire["requests"]), 1, "the upgrade");
    assert_eq!(u(&wire["frames_in"]), 3, "text, ping, close: {wire}");
    assert_eq!(u(&wire["frames_out"]), frames_out, "welcome, join notice, hello, pong, close: {wire}");
    assert_eq!(u(&wire["events_delivered"]), 2, "the join notice and hello");
}

/// The log of a short poll shows its request and response heads as the exact bytes that crossed the socket,
/// with body sizes, and the totals right after it equal the session's counters.
#[tokio::test]
async fn the_wire_log_shows_a_poll_byte_exact() {
    let server = start().await;
    let mut raw = Raw::connect(server.addr).await;
    let joined = raw.exchange(&post("/api/sessions", "application/json", r#"{"transport":"poll"}"#)).await.0;
    let token = joined.json()["session"].as_str().unwrap().to_owned();
    let (mut view, first) = watch(&server, &token).await;
    assert_eq!((u(&first["requests"]), u(&first["totals"]["requests"])), (1, 1), "the join: {first}");
    assert_eq!(u(&first["wire_bytes_in"]), raw.sent, "{first}");

    let request = get(&format!("/api/poll?session={token}"));
    let response = raw.exchange(&request).await.0;
    let http = next_of(&mut view, "http").await;
    assert_eq!(http["technique"], "poll");
    assert_eq!(http["streaming"], false);
    assert_eq!(http["request"]["head"].as_str().unwrap().as_bytes(), request.as_slice(), "{http}");
    assert_eq!(u(&http["request"]["head_bytes"]), request.len() as u64);
    assert_eq!(u(&http["request"]["body_bytes"]), 0);
    assert_eq!(http["response"]["head"], response.head.as_str(), "{http}");
    assert_eq!(u(&http["response"]["head_bytes"]), response.head.len() as u64);
    assert_eq!(u(&http["response"]["body_bytes"]), response.body.len() as u64);
    assert!(http["ms"].as_f64().unwrap() >= 0.0 && u(&http["at"]) > 1_600_000_000_000, "{http}");
    assert_eq!(u(&http["totals"]["wire_bytes_in"]), raw.sent, "{http}");
    assert_eq!(u(&http["totals"]["wire_bytes_out"]), raw.received, "{http}");
    assert_eq!(u(&http["totals"]["requests"]), 2);

    // A POST's body is counted apart from its head.
    let body = "a line of chat";
    let request = post(&format!("/api/messages?session={token}"), "text/plain", body);
    let response = raw.exchange(&request).await.0;
    let http = next_of(&mut view, "http").await;
    assert_eq!(http["request"]["head"].as_str().unwrap().as_bytes(), &request[..request.len() - body.len()]);
    assert_eq!(u(&http["request"]["body_bytes"]), body.len() as u64);
    assert_eq!(http["response"]["head"], response.head.as_str());
    assert_eq!(u(&http["totals"]["wire_bytes_out"]), raw.received, "{http}");
}

/// The log of a WebSocket session shows each frame with its direction, opcode, header and payload sizes: a
/// client frame's header includes its 4-byte mask key.
#[tokio::test]
async fn the_wire_log_shows_websocket_frames_with_their_sizes() {
    let server = start().await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send(format!("GET /ws {UPGRADE}").as_bytes()).await;
    raw.head().await;
    let (_, _, welcome) = raw.server_frame().await;
    let token = serde_json::from_slice::<Value>(&welcome).unwrap()["session"].as_str().unwrap().to_owned();
    let (_, _, _join_notice) = raw.server_frame().await;
    let (mut view, _) = watch(&server, &token).await;

    raw.send(&client_frame(0x1, b"hello")).await;
    let (header, opcode, echo) = raw.server_frame().await;
    assert_eq!(opcode, 0x1);
    let incoming = next_of(&mut view, "frame").await;
    assert_eq!((incoming["dir"].as_str(), incoming["opcode"].as_str()), (Some("in"), Some("text")), "{incoming}");
    assert_eq!((u(&incoming["header_bytes"]), u(&incoming["payload_bytes"])), (6, 5), "2 + the mask key");
    assert_eq!(incoming["preview"], "hello");
    let outgoing = next_of(&mut view, "frame").await;
    assert_eq!((outgoing["dir"].as_str(), outgoing["opcode"].as_str()), (Some("out"), Some("text")), "{outgoing}");
    assert_eq!(u(&outgoing["header_bytes"]), header as u64);
    assert_eq!(u(&outgoing["payload_bytes"]), echo.len() as u64);
    assert_eq!(outgoing["preview"].as_str().unwrap(), String::from_utf8(echo).unwrap());
    assert_eq!(u(&outgoing["totals"]["frames_out"]), 3, "welcome, join notice, hello");
    assert_eq!(u(&outgoing["totals"]["wire_bytes_out"]), raw.received, "{outgoing}");

    raw.send(&client_frame(0x9, b"")).await;
    let ping = next_of(&mut view, "frame").await;
    assert_eq!((ping["opcode"].as_str(), u(&ping["payload_bytes"])), (Some("ping"), 0));
    let pong = next_of(&mut view, "frame").await;
    assert_eq!((pong["dir"].as_str(), pong["opcode"].as_str()), (Some("out"), Some("pong")), "{pong}");
    assert_eq!(u(&pong["header_bytes"]), 2);
}

/// SSE: the stream's head is reported once written, then each write with its chunk framing and events.
#[tokio::test]
async fn the_wire_log_shows_sse_writes_and_their_events() {
    let server = start().await;
    let mut control = Raw::connect(server.addr).await;
    let (joined, _) = control.exchange(&post("/api/sessions", "application/json", r#"{"transport":"sse"}"#)).await;
    let token = joined.json()["session"].as_str().unwrap().to_owned();
    let (mut view, _) = watch(&server, &token).await;
    let mut stream = Raw::connect(server.addr).await;
    stream.send(&get(&format!("/api/sse?session={token}"))).await;
    let head = stream.head().await;
    let http = next_of(&mut view, "http").await;
    assert_eq!((http["technique"].as_str(), &http["streaming"]), (Some("sse"), &Value::Bool(true)));
    assert_eq!(http["response"]["head"], head.as_str());
    let sse = next_of(&mut view, "sse").await;
    let events = sse["events"].as_array().unwrap();
    // The welcome comes first (the join notice may share its write).
    assert!(events[0]["id"].is_null(), "a control event has no id: {sse}");
    assert!(
        u(&events[0]["data_bytes"]) > 50 && u(&events[0]["field_bytes"]) == 8,
        "data: , its newline, the blank line"
    );
    assert!(u(&sse["chunk_bytes"]) >= 5, "size line and CRLFs: {sse}");

    control.exchange(&post(&format!("/api/messages?session={token}"), "text/plain", "hi")).await;
    let sse = loop {
        let sse = next_of(&mut view, "sse").await;
        if sse["events"].as_array().unwrap().iter().any(|e| e["id"].is_u64()) {
            break sse;
        }
    };
    let event = &sse["events"].as_array().unwrap()[0];
    assert!(u(&event["data_bytes"]) > 20 && u(&event["field_bytes"]) > 8, "{sse}");
    assert_eq!(
        u(&sse["bytes"]),
        u(&sse["chunk_bytes"])
            + sse["events"].as_array().unwrap().iter().map(|e| u(&e["field_bytes"]) + u(&e["data_bytes"])).sum::<u64>(),
        "a write is its framing and its events: {sse}"
    );
}

/// HTTP streaming and the forever iframe: the response head is reported once written, then each write as an
/// `ndjson` or `script` record whose events are the lines' JSON (data) and framing (fields), ids their `seq`.
#[tokio::test]
async fn the_wire_log_shows_ndjson_and_script_writes_and_their_events() {
    let server = start().await;
    for (technique, kind, framing) in [("stream", "ndjson", 1), ("iframe", "script", 65)] {
        let mut control = Raw::connect(server.addr).await;
        let body = format!(r#"{{"transport":"{technique}"}}"#);
        let (joined, _) = control.exchange(&post("/api/sessions", "application/json", &body)).await;
        let token = joined.json()["session"].as_str().unwrap().to_owned();
        let (mut view, _) = watch(&server, &token).await;
        let mut stream = Raw::connect(server.addr).await;
        stream.send(&get(&format!("/api/{technique}?session={token}"))).await;
        let head = stream.head().await;
        let http = next_of(&mut view, "http").await;
        assert_eq!((http["technique"].as_str(), &http["streaming"]), (Some(technique), &Value::Bool(true)));
        assert_eq!(http["response"]["head"], head.as_str());

        let (posted, _) = control.exchange(&post(&format!("/api/messages?session={token}"), "text/plain", "hi")).await;
        let seq = posted.json()["seq"].as_u64().unwrap();
        let write = loop {
            let write = next_of(&mut view, kind).await;
            if write["events"].as_array().unwrap().iter().any(|e| e["id"] == seq) {
                break write;
            }
        };
        let events = write["events"].as_array().unwrap();
        let event = events.iter().find(|e| e["id"] == seq).unwrap();
        assert_eq!(u(&event["field_bytes"]), framing, "{technique}: {write}");
        assert_eq!(
            u(&write["bytes"]),
            u(&write["chunk_bytes"]) + events.iter().map(|e| u(&e["field_bytes"]) + u(&e["data_bytes"])).sum::<u64>(),
            "{technique}: a write is its framing and its events: {write}"
        );
        // The data is the event's JSON as the client read it.
        let mut text = String::new();
        stream.chunks_until(&mut text, "\"message\":\"hi\"").await;
        let line = text.lines().find(|l| l.contains("\"message\":\"hi\"")).unwrap();
        assert_eq!(u(&event["data_bytes"]) + framing - 1, line.len() as u64, "{technique}: {line}");
    }
}

/// The counters of every technique, of no technique, and of every session, as the room has them.
fn everything_but_the_wire_view(room: &Room, tokens: &[&str]) -> Vec<u64> {
    let metering = room.metering();
    let mut all = Vec::new();
    for transport in Transport::ALL {
        let c = metering.of(transport);
        all.extend([c.requests.load(Ordering::Relaxed), c.wire_bytes_in.load(Ordering::Relaxed)]);
        all.push(c.wire_bytes_out.load(Ordering::Relaxed));
    }
    all.push(metering.others().wire_bytes_in.load(Ordering::Relaxed));
    all.push(metering.others().wire_bytes_out.load(Ordering::Relaxed));
    for token in tokens {
        let totals = metering.sessions().get(token).expect("counters").totals();
        all.extend(totals.as_object().unwrap().values().map(u));
    }
    all
}

/// Opening, reading and closing a wire view, and asking for a session's counters, change no technique's and
/// no session's counters: they count under `other.wire_view` only.
#[tokio::test]
async fn the_wire_views_own_bytes_count_apart() {
    let server = start().await;
    let mut raw = Raw::connect(server.addr).await;
    let joined = raw.exchange(&post("/api/sessions", "application/json", r#"{"transport":"poll"}"#)).await.0;
    let token = joined.json()["session"].as_str().unwrap().to_owned();
    let before = everything_but_the_wire_view(&server.room, &[&token]);

    let (mut view, _) = watch(&server, &token).await;
    counters(&server, &token).await;
    view.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = timeout(WAIT, view.next()).await {}
    let mut raw_view = Raw::connect(server.addr).await;
    raw_view.exchange(&get(&format!("/api/sessions/{token}/wire"))).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let view_counters = &server.room.metering().sessions().wire_view;
    while view_counters.connections_open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(everything_but_the_wire_view(&server.room, &[&token]), before);
    assert_eq!(view_counters.connections_total.load(Ordering::Relaxed), 1);
    assert_eq!(view_counters.connections_open.load(Ordering::Relaxed), 0);
    assert_eq!(view_counters.requests.load(Ordering::Relaxed), 3, "the log and two counter requests");
    assert!(view_counters.wire_bytes_in.load(Ordering::Relaxed) > raw_view.sent);
    assert!(view_counters.wire_bytes_out.load(Ordering::Relaxed) > raw_view.received);
    let stats: Value = common::http().get(server.url("/api/stats")).send().await.unwrap().json().await.unwrap();
    let shown = &stats["other"]["wire_view"];
    assert_eq!(u(&shown["connections_total"]), 1, "{shown}");
    assert!(u(&shown["wire_bytes_out"]) > raw_view.received, "{shown}");
    let metrics = common::http().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("chatlab_wire_view_wire_out_bytes_total "), "{metrics}");
}

/// An unknown session is refused on both endpoints with `404 unknown_session`, as is one that has left.
#[tokio::test]
async fn an_unknown_session_gets_404_on_both_endpoints() {
    let server = start().await;
    let joined = common::join(&server, "poll").await;
    common::http().delete(server.url(&format!("/api/sessions/{}", joined.session))).send().await.unwrap();
    for token in ["nobody", joined.session.as_str()] {
        let response = common::http().get(server.url(&format!("/api/sessions/{token}/wire"))).send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(response.json::<Value>().await.unwrap()["code"], "unknown_session");
        let url = server.ws_url(&format!("/api/wire?session={token}"));
        match timeout(WAIT, tokio_tungstenite::connect_async(url)).await.expect("in time") {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
            other => panic!("expected a 404, got {other:?}"),
        }
    }
    assert!(server.room.metering().sessions().get(&joined.session).is_none(), "forgotten on leave");
}

/// A wire view whose client never reads holds at most `--wire-view-queue` records; the rest are dropped,
/// counted, and announced with `lagged` once it reads again.
#[tokio::test]
async fn a_watcher_that_never_reads_stays_bounded() {
    let server = start_with(chatlab::config::Config { wire_view_queue: 8, ..common::config() }).await;
    let mut raw = Raw::connect(server.addr).await;
    let joined = raw.exchange(&post("/api/sessions", "application/json", r#"{"transport":"poll"}"#)).await.0;
    let token = joined.json()["session"].as_str().unwrap().to_owned();
    // A client socket with a small receive window, so the server's writes to it soon block.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = server.ws_url(&format!("/api/wire?session={token}"));
    let (mut view, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.expect("open");

    // Polls with a 6 KiB header: each record carries it, so the socket buffers fill after a few hundred.
    let padding = "x".repeat(6 * 1024);
    let request = format!("GET /api/poll?session={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {padding}\r\n\r\n");
    let counters = &server.room.metering().sessions().wire_view;
    let mut polls = 0;
    while counters.dropped.load(Ordering::Relaxed) == 0 {
        assert!(polls < 5000, "nothing dropped after {polls} polls");
        raw.exchange(request.as_bytes()).await;
        polls += 1;
        assert!(counters.queued.load(Ordering::Relaxed) <= 8, "at most the queue's bound is held");
    }
    for _ in 0..50 {
        raw.exchange(request.as_bytes()).await;
        assert!(counters.queued.load(Ordering::Relaxed) <= 8);
    }
    let dropped = counters.dropped.load(Ordering::Relaxed);
    assert!(dropped >= 50, "{dropped} dropped");

    // Reading again: the queued records, then how many were dropped.
    let mut lagged = 0;
    while lagged == 0 {
        let record = record(&mut view).await;
        if record["type"] == "lagged" {
            lagged = u(&record["dropped"]);
            assert!(u(&record["totals"]["requests"]) > polls, "{record}");
        }
    }
    assert_eq!(lagged, dropped, "every dropped record is announced");
}

/// A session whose lease runs out is forgotten with its counters: memory follows the live sessions.
#[tokio::test]
async fn an_expired_sessions_counters_are_forgotten() {
    let server = start_with(chatlab::config::Config { session_lease: 1, ..common::config() }).await;
    let joined = common::join(&server, "poll").await;
    let sessions = server.room.metering().sessions();
    assert!(sessions.get(&joined.session).is_some(), "counted from its join");
    assert_eq!(sessions.len(), 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while sessions.get(&joined.session).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "still counted after its lease ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sessions.is_empty());
    let response =
        common::http().get(server.url(&format!("/api/sessions/{}/wire", joined.session))).send().await.unwrap();
    assert_eq!(response.status(), 404);
}
