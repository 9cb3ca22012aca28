//! HTTPS with HTTP/2 and HTTP/1.1 (ALPN) over real TLS connections: every technique over both versions, exact
//! wire counters per version, the certificate errors at start, the plain-HTTP refusal and the handshake deadline.

use crate::common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chatlab::config::Config;
use chatlab::core::Transport;
use chatlab::tls::Trust;
use common::tls::{read_until, secure_trusting, Client};
use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn tls_config() -> Config {
    Config { tls_self_signed: true, ..config() }
}

const VERSIONS: [&str; 2] = ["h2", "http/1.1"];

/// Every HTTP technique, over each HTTP version, receives a text posted over that version: short and long polls,
/// SSE, the NDJSON stream and the forever iframe, on one connection per version (HTTP/2 multiplexes the held
/// requests on it; HTTP/1.1 gets a connection per held request, as a browser does).
#[tokio::test]
async fn every_http_technique_delivers_over_h2_and_http11() {
    let server = start_with(tls_config()).await;
    for alpn in VERSIONS {
        let mut up = Client::connect(&server, alpn).await;
        let (talker, _) = up.join("poll").await;
        let mut streams = vec![];
        for (technique, framing) in [("sse", "data: "), ("stream", "{"), ("iframe", "<script")] {
            let mut down = Client::connect(&server, alpn).await;
            let (session, seq) = down.join(technique).await;
            let mut response =
                down.send(Method::GET, &format!("/api/{technique}?session={session}&since={seq}"), None).await;
            assert_eq!(response.status(), 200, "{technique} over {alpn}");
            let welcome = read_until(response.body_mut(), "welcome").await;
            assert!(welcome.contains(framing), "{technique} over {alpn}: {welcome}");
            streams.push((technique, down, response));
        }
        let mut poller = Client::connect(&server, alpn).await;
        let (polling, poll_seq) = poller.join("poll").await;
        let (long_polling, long_seq) = poller.join("longpoll").await;
        let text = format!("hello over {alpn}");
        let seq = up.post(&talker, &text).await;
        for (technique, _down, response) in &mut streams {
            let got = read_until(response.body_mut(), &text).await;
            assert!(got.contains(&format!("\"seq\":{seq}")), "{technique} over {alpn}: {got}");
        }
        let (status, polled) =
            poller.json(Method::GET, &format!("/api/poll?session={polling}&since={poll_seq}"), None).await;
        assert_eq!(status, 200);
        assert!(polled["events"].as_array().unwrap().iter().any(|e| e["message"] == text.as_str()), "{polled}");
        let path = format!("/api/longpoll?session={long_polling}&since={long_seq}&timeout=5");
        let (status, held) = poller.json(Method::GET, &path, None).await;
        assert_eq!(status, 200);
        assert!(held["events"].as_array().unwrap().iter().any(|e| e["message"] == text.as_str()), "{held}");
    }
    let stats = &server.room.metering();
    for transport in [Transport::Sse, Transport::Stream, Transport::Iframe, Transport::LongPoll, Transport::Poll] {
        let c = stats.of(transport);
        let (all, h2) = (c.requests.load(Ordering::Relaxed), c.http2_requests.load(Ordering::Relaxed));
        assert!(h2 > 0 && all > h2, "{transport:?}: {h2} of {all} requests over HTTP/2, the rest over HTTP/1.1");
    }
    assert!(stats.others().http2_connections_total.load(Ordering::Relaxed) >= 5);
}

/// A held long poll does not hold up the other requests of its HTTP/2 connection: a join and a POST go by it on
/// the same connection, and the POST answers the long poll.
#[tokio::test]
async fn one_h2_connection_carries_a_held_long_poll_beside_other_requests() {
    let server = start_with(tls_config()).await;
    let mut client = Client::connect(&server, "h2").await;
    let (waiting, since) = client.join("longpoll").await;
    let mut holder = client.fork();
    let held = tokio::spawn(async move {
        let mut since = since;
        loop {
            let path = format!("/api/longpoll?session={waiting}&since={since}&timeout=10");
            let (status, body) = holder.json(Method::GET, &path, None).await;
            if status != 200 || body["events"].as_array().unwrap().iter().any(|e| e["type"] == "message") {
                return (status, body);
            }
            since = body["next"].as_u64().unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (talker, _) = client.join("poll").await;
    let seq = client.post(&talker, "past the held poll").await;
    let (status, body) = tokio::time::timeout(WAIT, held).await.expect("answered").unwrap();
    assert_eq!(status, 200);
    let events = body["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["message"] == "past the held poll" && e["seq"] == seq), "{body}");
    assert_eq!(server.room.metering().others().tcp_connections_total.load(Ordering::Relaxed), 1, "one connection");
}

/// The server's (in, out) bytes of `transport`'s HTTP/2 streams plus the HTTP/2 connections' own bytes.
fn h2_wire(server: &Server, transport: Transport) -> (u64, u64) {
    let m = server.room.metering();
    let (c, o) = (m.of(transport), m.others());
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    (
        get(&c.http2_wire_bytes_in) + get(&o.http2_connection_bytes_in),
        get(&c.http2_wire_bytes_out) + get(&o.http2_connection_bytes_out),
    )
}

/// Waits (at most 3 s) for `read` to give `expected`, then asserts it does: the server counts a write just after
/// it is handed to TLS, so a fast client may read the bytes a moment earlier.
async fn settle<T: PartialEq + std::fmt::Debug>(expected: T, read: impl Fn() -> T, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while read() != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(), expected, "{what}");
}

/// Over HTTP/2, every plaintext byte the client counts is counted by the server exactly once: a technique's
/// streams (its join, polls and POST) under that technique's `http2_wire_bytes_*` (and its `wire_bytes_*`), the
/// preface and stream 0's frames under `other.http2_connection_bytes_*`. Over HTTP/1.1 inside TLS, the
/// technique's counters move by exactly the client's bytes, as over plain TCP.
#[tokio::test]
async fn wire_counters_are_exact_inside_tls_for_both_versions() {
    let server = start_with(tls_config()).await;
    // Every client stays open to the end: a closing one's last frames would land in the next one's sums.
    let mut open = vec![];
    for (transport, name) in [(Transport::Poll, "poll"), (Transport::LongPoll, "longpoll")] {
        let before = h2_wire(&server, transport);
        let connection_before = server.room.metering().others().http2_connection_bytes_in.load(Ordering::Relaxed);
        let mut client = Client::connect(&server, "h2").await;
        let (session, seq) = client.join(name).await;
        let path = format!("/api/{name}?session={session}&since={seq}");
        let path = if name == "longpoll" { format!("{path}&timeout=1") } else { path };
        for _ in 0..3 {
            assert_eq!(client.json(Method::GET, &path, None).await.0, 200);
        }
        client.post(&session, "counted").await;
        let (read, wrote) = client.totals();
        settle((before.0 + wrote, before.1 + read), || h2_wire(&server, transport), name).await;
        let m = server.room.metering();
        let c = m.of(transport);
        assert_eq!(c.wire_bytes_in.load(Ordering::Relaxed), c.http2_wire_bytes_in.load(Ordering::Relaxed));
        assert_eq!(c.wire_bytes_out.load(Ordering::Relaxed), c.http2_wire_bytes_out.load(Ordering::Relaxed));
        assert_eq!(c.http2_requests.load(Ordering::Relaxed), 5, "{name}: the join, three polls, the POST");
        let connection = m.others().http2_connection_bytes_in.load(Ordering::Relaxed) - connection_before;
        assert!(connection >= 24 + 9, "{name}: the preface and SETTINGS count for the connection ({connection})");
        open.push(client);
    }

    // HTTP/1.1 inside TLS: the technique's counters move by exactly the client's plaintext bytes.
    let mut client = Client::connect(&server, "http/1.1").await;
    let before = wire(&server, Transport::Iframe);
    let (session, seq) = client.join("iframe").await;
    let mut response = client.send(Method::GET, &format!("/api/iframe?session={session}&since={seq}"), None).await;
    read_until(response.body_mut(), "welcome").await;
    let (read, wrote) = client.totals();
    settle((before.0 + wrote, before.1 + read), || wire(&server, Transport::Iframe), "iframe over http/1.1").await;
    assert_eq!(server.room.metering().of(Transport::Iframe).http2_requests.load(Ordering::Relaxed), 0);
    // The TLS records carry more than the HTTP bytes inside them (handshakes, record headers, tags).
    let others = server.room.metering().others();
    assert!(others.tls_bytes_out.load(Ordering::Relaxed) > read);
    assert_eq!(others.tls_handshakes.load(Ordering::Relaxed), 3);
}

fn wire(server: &Server, transport: Transport) -> (u64, u64) {
    let c = server.room.metering().of(transport);
    (c.wire_bytes_in.load(Ordering::Relaxed), c.wire_bytes_out.load(Ordering::Relaxed))
}

/// WebSocket over HTTPS: the upgrade on an HTTP/1.1 (ALPN `http/1.1`) connection, as browsers open `wss://`
/// when the server does not offer HTTP/2's extended CONNECT.
#[tokio::test]
async fn websocket_works_over_tls_on_http11() {
    let server = start_with(tls_config()).await;
    let stream = common::tls::secure(&server, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.expect("WebSocket over TLS");
    assert_eq!(response.status(), 101);
    let welcome = loop {
        let Some(Ok(Message::Text(text))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "welcome" {
            break v;
        }
    };
    assert!(welcome["id"].is_string());
    ws.send(Message::text("over wss")).await.unwrap();
    let echoed = loop {
        let Some(Ok(Message::Text(text))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() else { continue };
        if text.contains("over wss") {
            break text;
        }
    };
    assert!(echoed.contains("\"type\":\"message\""), "{echoed}");
}

/// `--tls-cert`/`--tls-key` serve the given certificate: a client that trusts only it connects.
#[tokio::test]
async fn a_given_certificate_is_served_and_trusted() {
    let dir = temp::TempDir::new("tls-cert");
    let (cert, key) = write_certificate(&dir, "good");
    let server = start_with(Config { tls_cert: Some(cert.clone()), tls_key: Some(key), ..config() }).await;
    let trust = Trust::roots_from(&cert).unwrap();
    let stream = secure_trusting(&server, &[b"h2"], &trust).await.expect("the given certificate is trusted");
    assert_eq!(stream.get_ref().get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Another certificate is not.
    let (other, _) = write_certificate(&dir, "other");
    let refused = secure_trusting(&server, &[b"h2"], &Trust::roots_from(&other).unwrap()).await;
    assert!(refused.is_err(), "a client trusting another certificate refuses the handshake");
    settle(1, || server.room.metering().others().tls_handshake_failures.load(Ordering::Relaxed), "failures").await;
}

fn write_certificate(dir: &temp::TempDir, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join(format!("{name}.crt"));
    let key = dir.path().join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A missing, non-PEM or mismatched certificate or key stops `chatlab` at start with a message naming the problem
/// and a non-zero exit, before it serves.
#[tokio::test]
async fn a_bad_certificate_or_key_stops_the_server_at_start() {
    let dir = temp::TempDir::new("tls-bad");
    let (cert, key) = write_certificate(&dir, "a");
    let (_, other_key) = write_certificate(&dir, "b");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (missing.clone(), key.clone(), "--tls-cert"),
        (cert.clone(), missing.clone(), "--tls-key"),
        (garbage.clone(), key.clone(), "no PEM certificate"),
        (cert.clone(), garbage.clone(), "no PEM private key"),
        (cert.clone(), other_key.clone(), "do not make a usable certificate"),
    ];
    for (cert, key, said) in cases {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatlab"))
            .args(["--broker", "memory", "--bind", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), output).await.expect("exits at once").unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{cert:?} {key:?}: exits non-zero");
        assert!(stderr.contains(said), "{cert:?} {key:?}: says {said:?}; said {stderr}");
        assert!(!stderr.contains("serving"), "{stderr}");
    }
}

/// A plain-HTTP request to the HTTPS port is answered `400` with a JSON body that says so, then closed.
#[tokio::test]
async fn plain_http_to_the_https_port_is_refused_with_json() {
    let server = start_with(tls_config()).await;
    let mut raw = raw::Raw::connect(server.addr).await;
    raw.send(&raw::get("/api/stats")).await;
    let response = raw.response().await;
    assert!(response.head.starts_with("HTTP/1.1 400"), "{}", response.head);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let json = response.json();
    assert_eq!(json["code"], "bad_request");
    assert!(json["error"].as_str().unwrap().contains("HTTPS"), "{json}");
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut all = vec![];
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut all)).await.expect("closed after the refusal").unwrap();
    assert!(all.starts_with(b"HTTP/1.1 400"));
    assert_eq!(server.room.metering().others().plain_http_refused.load(Ordering::Relaxed), 2);
}

/// A TLS handshake that never completes, and a socket that sends nothing, are closed after `--header-timeout`.
#[tokio::test]
async fn a_handshake_that_never_completes_is_closed_after_the_header_timeout() {
    let server = start_with(Config { header_timeout: 1, ..tls_config() }).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The first bytes of a TLS record header (a handshake record), then nothing.
    partial.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    for socket in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed by the server: {closed:?}");
    }
    assert_eq!(server.room.metering().others().header_timeouts.load(Ordering::Relaxed), 2);
}

/// An HTTP/2 connection that opens no stream is closed after `--header-timeout`, as an idle HTTP/1.1 one is.
#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_the_header_timeout() {
    let server = start_with(Config { header_timeout: 1, ..tls_config() }).await;
    let mut client = Client::connect(&server, "h2").await;
    let (status, _) = client.json(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    settle(0, || server.room.metering().others().tcp_connections_open.load(Ordering::Relaxed), "closed").await;
    assert_eq!(server.room.metering().others().header_timeouts.load(Ordering::Relaxed), 1);
}

/// Over HTTP/2 a request head is bounded by `--max-head-bytes` too: a larger one is answered `431` on its own
/// stream, and the connection serves the next request.
#[tokio::test]
async fn an_h2_head_over_the_limit_is_refused_on_its_stream_only() {
    let server = start_with(tls_config()).await;
    let mut client = Client::connect(&server, "h2").await;
    let big = "a".repeat(20_000);
    let response = client.send_with(Method::GET, "/healthz", &[("x-big", &big)]).await;
    assert_eq!(response.status(), 431);
    let (status, _) = client.json(Method::GET, "/api/stats", None).await;
    assert_eq!(status, 200, "the connection goes on");
}

/// `--h2-max-streams` is what the server announces and enforces: with one stream allowed, a request sent while a
/// long poll is held on the same connection is answered only after the long poll.
#[tokio::test]
async fn h2_max_streams_bounds_the_requests_a_connection_has_open() {
    let server = start_with(Config { h2_max_streams: 1, ..tls_config() }).await;
    let mut client = Client::connect(&server, "h2").await;
    let (waiting, since) = client.join("longpoll").await;
    let (done, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut holder = client.fork();
    let held_done = done.clone();
    tokio::spawn(async move {
        let path = format!("/api/longpoll?session={waiting}&since={}&timeout=1", since + 1);
        let (status, _) = holder.json(Method::GET, &path, None).await;
        let _ = held_done.send(("longpoll", status));
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::spawn(async move {
        let (status, _) = client.json(Method::GET, "/healthz", None).await;
        let _ = done.send(("healthz", status));
    });
    let first = tokio::time::timeout(WAIT, order.recv()).await.unwrap().unwrap();
    let second = tokio::time::timeout(WAIT, order.recv()).await.unwrap().unwrap();
    assert_eq!([first, second], [("longpoll", 200), ("healthz", 200)]);
}

/// A page served under its own name posts over HTTP/2 as over HTTP/1.1: its `Origin` is checked against the name
/// the request gives (`:authority` over HTTP/2, `Host` over HTTP/1.1), and a foreign origin is refused on both.
#[tokio::test]
async fn the_origin_check_reads_the_authority_over_h2() {
    let server = start_with(Config { allowed_hosts: vec!["chat.example.org".into()], ..tls_config() }).await;
    for alpn in VERSIONS {
        let mut client = Client::connect(&server, alpn).await;
        client.authority = "chat.example.org".into();
        let (session, _) = client.join("poll").await;
        let path = format!("/api/messages?session={session}");
        for (origin, expected) in [("https://chat.example.org", 202), ("https://evil.example.net", 403)] {
            let body = Some(("text/plain;charset=UTF-8", "hi"));
            let response = client.request(Method::POST, &path, body, &[("origin", origin)]).await;
            assert_eq!(response.status(), expected, "{origin} over {alpn}");
        }
    }
}
