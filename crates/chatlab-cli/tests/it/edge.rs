//! Deadlines at the socket (`--write-timeout`, `--header-timeout`): a peer that stops reading, or never finishes a
//! request head, is let go in time, counted, and costs the others nothing.
use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Deadlines of one second each, so a test sees them pass quickly.
fn edge_config() -> chatlab::config::Config {
    chatlab::config::Config { write_timeout: 1, header_timeout: 1, ..config() }
}

/// A client socket with a small receive buffer: a peer that stops reading fills its window quickly.
async fn small_window(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(WAIT, stream.connect(addr)).await.expect("connect in time").unwrap()
}

async fn stats(server: &Server) -> Value {
    get_json(server, "/api/stats").await.1
}

/// Waits until `check` holds on `/api/stats`, at most `limit`; returns how long it took.
async fn stats_until(server: &Server, limit: Duration, check: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let stats = stats(server).await;
        if check(&stats) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the server closes the socket (end of stream or reset); panics if it stays open past `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = limit.checked_sub(started.elapsed()).expect("the server closed the socket in time");
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("socket still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// The server reset the socket (rather than closing it behind the bytes still queued for a client that does not
/// read): the client learns of it at once, without reading, as the socket's pending error.
async fn assert_reset(stream: &TcpStream) {
    let started = Instant::now();
    loop {
        match socket2::SockRef::from(stream).take_error().unwrap() {
            Some(error) => return assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
            None if started.elapsed() < WAIT => tokio::time::sleep(Duration::from_millis(20)).await,
            None => panic!("the let-go socket was not reset"),
        }
    }
}

/// The talk the stalled client does not read: `texts` lines of 1,900 characters posted by a polling participant
/// as fast as it can (more than a loopback socket's largest send buffer, 4 MiB, when it counts), while `listener` must get
/// every one of them, in order.
async fn talk(server: &Server, listener: &mut Ws, texts: usize) {
    let line = "x".repeat(1900);
    let talker = join(server, "poll").await;
    let client = http();
    let url = server.url(&format!("/api/messages?session={}", talker.session));
    let sending = async {
        for i in 0..texts {
            let response = client.post(&url).header("content-type", "text/plain").body(format!("{i} {line}"));
            assert!(response.send().await.unwrap().status().is_success());
        }
    };
    let receiving = async {
        let mut seen = 0;
        while seen < texts {
            let event = ws_next(listener).await;
            if event["type"] == "message" {
                let text = event["message"].as_str().unwrap();
                assert!(text.starts_with(&format!("{seen} ")), "in order, nothing lost: {seen}");
                seen += 1;
            }
        }
    };
    tokio::join!(sending, receiving);
}

/// A WebSocket whose client never reads is closed within --write-timeout + 1 s of the talk filling its window,
/// counted under `ws.write_timeouts`, its channel and socket freed (reset, so the bytes queued for it go too), while
/// the others get every event.
#[tokio::test]
async fn a_websocket_that_never_reads_is_let_go() {
    let server = start_with(edge_config()).await;
    let stalled = small_window(server.addr).await;
    let (stalled, _) = tokio_tungstenite::client_async(server.ws_url("/ws"), stalled).await.unwrap();
    let mut listener = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut listener).await["type"], "welcome");
    stats_until(&server, WAIT, |s| s["transports"]["ws"]["connections_open"] == 2).await;

    talk(&server, &mut listener, 3000).await;
    let took = stats_until(&server, Duration::from_secs(3), |s| {
        s["transports"]["ws"]["write_timeouts"] == 1 && s["transports"]["ws"]["connections_open"] == 1
    })
    .await;
    assert!(took <= Duration::from_secs(2), "let go within write-timeout + 1 s of the talk: {took:?}");
    let stats = stats(&server).await;
    // Its socket is gone: what is left is the listener and this GET.
    assert_eq!(stats["other"]["tcp_connections_open"], 2, "{stats}");
    assert_reset(stalled.get_ref()).await;
    // The others are still served.
    talk(&server, &mut listener, 3).await;
}

/// An SSE stream, an HTTP stream and a forever iframe whose client never reads are let go the same way, each
/// counted under its own technique's `write_timeouts`.
#[tokio::test]
async fn a_stream_that_never_reads_is_let_go() {
    for technique in ["sse", "stream", "iframe"] {
        let server = start_with(edge_config()).await;
        let joined = join(&server, technique).await;
        let mut stalled = small_window(server.addr).await;
        let head = format!("GET /api/{technique}?session={} HTTP/1.1\r\nHost: {}\r\n\r\n", joined.session, server.addr);
        stalled.write_all(head.as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        tokio::time::timeout(WAIT, stalled.read_exact(&mut first)).await.unwrap().unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        let mut listener = ws(&server.ws_url("/ws")).await;
        stats_until(&server, WAIT, |s| s["transports"][technique]["connections_open"] == 1).await;

        talk(&server, &mut listener, 3000).await;
        let took = stats_until(&server, Duration::from_secs(3), |s| {
            s["transports"][technique]["write_timeouts"] == 1 && s["transports"][technique]["connections_open"] == 0
        })
        .await;
        assert!(took <= Duration::from_secs(2), "{technique}: let go within write-timeout + 1 s of the talk: {took:?}");
        assert_eq!(stats(&server).await["transports"]["ws"]["write_timeouts"], 0, "the readers are not touched");
        assert_reset(&stalled).await;
    }
}

/// A WebSocket client that reads late, but always within --write-timeout, is never cut and gets every event.
#[tokio::test]
async fn a_slow_reader_within_the_deadline_is_kept() {
    let server = start_with(chatlab::config::Config { write_timeout: 2, ..edge_config() }).await;
    let slow = small_window(server.addr).await;
    let (mut slow, _) = tokio_tungstenite::client_async(server.ws_url("/ws"), slow).await.unwrap();
    let mut listener = ws(&server.ws_url("/ws")).await;
    stats_until(&server, WAIT, |s| s["transports"]["ws"]["connections_open"] == 2).await;

    // Reads in spurts with pauses shorter than the deadline while the room talks, until every line has arrived.
    let slow_reading = async {
        let mut seen = 0;
        while seen < 2000 {
            let message = tokio::time::timeout(WAIT, slow.next()).await.expect("a frame").expect("open").unwrap();
            if let Message::Text(text) = message {
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["type"] == "message" {
                    seen += 1;
                    if seen % 400 == 0 {
                        tokio::time::sleep(Duration::from_millis(700)).await;
                    }
                }
            }
        }
    };
    tokio::join!(talk(&server, &mut listener, 2000), slow_reading);
    let stats = stats(&server).await;
    assert_eq!(stats["transports"]["ws"]["write_timeouts"], 0, "{stats}");
    assert_eq!(stats["transports"]["ws"]["connections_open"], 2, "{stats}");
}

/// A silent socket, a partial request line and headers trickled a byte every 300 ms are all closed within
/// --header-timeout + 1 s of the accept, and counted as `header_timeouts`; /healthz answers meanwhile.
#[tokio::test]
async fn unfinished_request_heads_are_let_go() {
    let server = start_with(edge_config()).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"GET /healthz HT").await.unwrap();
    let mut trickle = TcpStream::connect(server.addr).await.unwrap();
    let trickling = tokio::spawn(async move {
        let started = Instant::now();
        for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if trickle.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let took = closed_within(&mut trickle, Duration::from_secs(3)).await;
        started.elapsed().min(took + started.elapsed())
    });
    let (status, _) = get_json(&server, "/healthz").await;
    assert_eq!(status, 200);
    let limit = Duration::from_secs(2);
    assert!(closed_within(&mut silent, limit).await <= limit);
    assert!(closed_within(&mut partial, limit).await <= limit);
    let took = tokio::time::timeout(WAIT, trickling).await.unwrap().unwrap();
    assert!(took <= Duration::from_millis(2500), "the trickle is cut near the deadline: {took:?}");
    assert_eq!(stats(&server).await["other"]["header_timeouts"], 3);
}

/// A keep-alive connection left idle after a response is closed within --header-timeout + 1 s; one that sends
/// its next request in time is served.
#[tokio::test]
async fn idle_keep_alive_connections_are_let_go() {
    let server = start_with(edge_config()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        socket.write_all(request).await.unwrap();
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        tokio::time::sleep(Duration::from_millis(600)).await; // within the deadline: kept
    }
    let took = closed_within(&mut socket, Duration::from_secs(2)).await;
    assert!(took >= Duration::from_millis(300), "not before the deadline: {took:?}");
    assert_eq!(stats(&server).await["other"]["header_timeouts"], 1);
}

/// A POST whose body stops arriving is given up after --header-timeout, and the socket is closed.
#[tokio::test]
async fn a_body_that_stops_arriving_is_given_up() {
    let server = start_with(edge_config()).await;
    let joined = join(&server, "poll").await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/messages?session={} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nhalf",
        joined.session
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let took = closed_within(&mut socket, Duration::from_secs(4)).await;
    assert!(took <= Duration::from_secs(3), "{took:?}");
    let (events, _) = poll(&server, &format!("/api/poll?session={}&since=0", joined.session)).await;
    assert!(events.iter().all(|e| e["type"] != "message"), "nothing was posted: {events:?}");
}

/// Sends `request` on a fresh socket (the server may stop reading it midway) and reads the refusal; asserts the
/// server then closes the connection.
async fn refused(server: &Server, request: &[u8]) -> common::raw::Response {
    let mut raw = common::raw::Raw::connect(server.addr).await;
    // The server answers as soon as it has seen enough, possibly before the whole request is sent.
    let _ = tokio::time::timeout(WAIT, raw.stream.write_all(request)).await;
    let response = raw.response().await;
    assert!(raw.buffer.is_empty(), "nothing after the refusal");
    closed_within(&mut raw.stream, Duration::from_secs(3)).await;
    response
}

/// The server still answers others after a refusal.
async fn still_serving(server: &Server) {
    let (status, _) = get_json(server, "/healthz").await;
    assert_eq!(status, 200);
}

/// A request line too long for --max-head-bytes (a 70 KB URI) is refused `414 uri_too_long` with the JSON body,
/// the connection closed, its bytes counted under `other`, and the server serves others.
#[tokio::test]
async fn a_uri_too_long_is_a_json_414() {
    let server = start().await;
    let request = format!("GET /api/poll?x={} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(70_000));
    let response = refused(&server, request.as_bytes()).await;
    assert!(response.head.starts_with("HTTP/1.1 414 "), "{}", response.head);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json()["code"], "uri_too_long", "{}", response.json());
    assert!(response.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    still_serving(&server).await;
    let stats = stats(&server).await;
    assert_eq!(stats["other"]["bad_heads"], 1, "{stats}");
    assert!(stats["other"]["wire_bytes_in"].as_u64().unwrap() >= 16 * 1024, "the head's bytes count under other");
}

/// A header line of 500 KB is refused `431 head_too_large` (JSON) at --max-head-bytes, and the connection closed.
#[tokio::test]
async fn a_huge_header_is_a_json_431() {
    let server = start_with(chatlab::config::Config { max_head_bytes: 8 * 1024, ..config() }).await;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(500_000));
    let response = refused(&server, request.as_bytes()).await;
    assert!(response.head.starts_with("HTTP/1.1 431 "), "{}", response.head);
    assert_eq!(response.json()["code"], "head_too_large", "{}", response.json());
    assert!(response.json()["error"].as_str().unwrap().contains("8192"), "names the limit: {}", response.json());
    // Under the limit is fine.
    let (status, _) = get_json(&server, "/healthz").await;
    assert_eq!(status, 200);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(6_000));
    let (response, _) = common::raw::Raw::connect(server.addr).await.exchange(request.as_bytes()).await;
    assert!(response.head.starts_with("HTTP/1.1 200 "), "{}", response.head);
}

/// A malformed request line is refused `400 bad_request` (JSON), the connection closed, and others served.
#[tokio::test]
async fn a_malformed_request_line_is_a_json_400() {
    let server = start().await;
    for request in [&b"GET\x01 / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..], b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"] {
        let response = refused(&server, request).await;
        assert!(response.head.starts_with("HTTP/1.1 400 "), "{}", response.head);
        assert_eq!(response.json()["code"], "bad_request", "{}", response.json());
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    }
    still_serving(&server).await;
    assert_eq!(stats(&server).await["other"]["bad_heads"], 2);
}

/// Deadlines far away, so that only the socket limit frees sockets.
fn limit_config(max_sockets: usize) -> chatlab::config::Config {
    chatlab::config::Config { max_sockets, header_timeout: 60, ..config() }
}

/// `/healthz` on a fresh socket, kept alive; the response head, or `None` if nothing came within `limit`.
async fn healthz_within(addr: SocketAddr, limit: Duration) -> (TcpStream, Option<String>) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(limit, socket.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            (socket, Some(head))
        }
        _ => (socket, None),
    }
}

/// At --max-sockets with every socket idle (one silent since its accept, one kept alive after a response, one
/// with half a request line), a new client's `/healthz` is answered at once: the oldest idle socket is closed
/// to make room (counted as `idle_evictions`), the others stay open.
#[tokio::test]
async fn the_oldest_idle_socket_makes_room_at_the_socket_limit() {
    let server = start_with(limit_config(3)).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut kept_alive = common::raw::Raw::connect(server.addr).await;
    let (response, _) = kept_alive.exchange(&common::raw::get("/healthz")).await;
    assert!(response.head.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"GET /heal").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (_client, head) = healthz_within(server.addr, Duration::from_secs(1)).await;
    assert!(head.expect("answered without waiting for a deadline").starts_with("HTTP/1.1 200"));
    closed_within(&mut silent, Duration::from_secs(1)).await;
    // The next one makes room by closing the next oldest: the kept-alive one.
    let (_client, head) = healthz_within(server.addr, Duration::from_secs(1)).await;
    assert!(head.expect("answered").starts_with("HTTP/1.1 200"));
    closed_within(&mut kept_alive.stream, Duration::from_secs(1)).await;
    // The partial head was never touched: it can still finish its request.
    partial.write_all(b"thz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, partial.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    closed_within(&mut partial, WAIT).await; // its slot is free for the next request
    let stats = stats(&server).await;
    assert_eq!(stats["other"]["idle_evictions"], 2, "{stats}");
    assert_eq!(stats["other"]["header_timeouts"], 0, "{stats}");
}

/// Joins over a socket of its own that closes after the answer (so it takes no slot afterwards).
async fn join_closing(server: &Server, transport: &str) -> String {
    let body = format!("{{\"transport\":\"{transport}\"}}");
    let request = format!(
        "POST /api/sessions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut raw = common::raw::Raw::connect(server.addr).await;
    let (response, _) = raw.exchange(request.as_bytes()).await;
    assert!(response.head.starts_with("HTTP/1.1 201"), "{}", response.head);
    closed_within(&mut raw.stream, WAIT).await;
    response.json()["session"].as_str().unwrap().to_owned()
}

/// At --max-sockets with every socket busy (a WebSocket, an SSE stream, a held long poll), none is closed for a
/// new client, which waits; once the long poll is answered its kept-alive socket is idle, and it makes room.
#[tokio::test]
async fn busy_sockets_are_not_closed_at_the_socket_limit() {
    let server = start_with(limit_config(3)).await;
    let sse_session = join_closing(&server, "sse").await;
    let poll_session = join_closing(&server, "longpoll").await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut socket).await["type"], "welcome");
    let joined = ws_next(&mut socket).await;
    assert_eq!(joined["type"], "notification", "its own join: {joined}");
    let mut stream = common::raw::Raw::connect(server.addr).await;
    stream.send(&common::raw::get(&format!("/api/sse?session={sse_session}"))).await;
    assert!(stream.head().await.starts_with("HTTP/1.1 200"));
    let mut held = common::raw::Raw::connect(server.addr).await;
    let since = joined["seq"].as_u64().unwrap();
    held.send(&common::raw::get(&format!("/api/longpoll?session={poll_session}&since={since}&timeout=30"))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let waiting = tokio::spawn(healthz_within(server.addr, WAIT));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "a busy socket was closed to make room");

    // The WebSocket talks: every busy socket is still there to hear it, and the long poll is answered.
    ws_send(&mut socket, "still here").await;
    loop {
        let event = ws_next(&mut socket).await;
        if event["type"] == "message" {
            assert_eq!(event["message"], "still here");
            break;
        }
    }
    let answer = held.response().await;
    assert!(String::from_utf8_lossy(&answer.body).contains("still here"), "{}", String::from_utf8_lossy(&answer.body));
    assert!(String::from_utf8_lossy(&stream.take_until(b"still here").await).contains("data:"));
    // The answered long poll's socket is now idle: it is the one closed for the waiting client.
    let (_client, head) = waiting.await.unwrap();
    assert!(head.expect("served once a socket was idle").starts_with("HTTP/1.1 200"));
    closed_within(&mut held.stream, Duration::from_secs(1)).await;
    // This request's socket makes room by closing the only idle one, the kept-alive `/healthz` client's.
    let stats = stats(&server).await;
    assert_eq!(stats["other"]["idle_evictions"], 2, "{stats}");
    assert_eq!(stats["transports"]["ws"]["connections_open"], 1, "{stats}");
    assert_eq!(stats["transports"]["sse"]["connections_open"], 1, "{stats}");
}

/// The listen backlog as the kernel sees it (`ss`: a listening socket's Send-Q): `--listen-backlog`, or 4,096
/// capped by `net.core.somaxconn`, so that a burst of connection attempts waits in the kernel instead of being
/// dropped and retried a second or more later.
#[test]
fn the_listen_backlog_is_the_flags() {
    let backlog = |args: &[&str]| {
        let server = crate::redis_support::Chatlab::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_chatlab")),
            &[&["--broker", "memory"], args].concat(),
        );
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{}", server.addr.port())])
            .output()
            .expect("ss (iproute2) runs");
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        // State, Recv-Q, Send-Q (the backlog), local address, peer address.
        line.split_whitespace().nth(2).and_then(|q| q.parse::<u32>().ok()).unwrap_or_else(|| panic!("ss: {line:?}"))
    };
    assert_eq!(backlog(&["--listen-backlog", "77"]), 77);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    assert_eq!(backlog(&[]), 4096.min(somaxconn));
}
