//! Deadlines at the socket (`--write-timeout`, `--header-timeout`): a peer that stops reading, or never finishes a
//! request head, is let go in time, counted, and costs the others nothing.
mod common;

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
/// counted under `ws.write_timeouts`, its channel and socket freed, while the others get every event.
#[tokio::test]
async fn a_websocket_that_never_reads_is_let_go() {
    let server = start_with(edge_config()).await;
    let stalled = small_window(server.addr).await;
    let (_stalled, _) = tokio_tungstenite::client_async(server.ws_url("/ws"), stalled).await.unwrap();
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

/// Idle sockets filling --max-sockets no longer lock everyone out: they are let go after --header-timeout, and a
/// client waiting in the backlog is then served.
#[tokio::test]
async fn idle_sockets_at_the_socket_limit_are_let_go() {
    let server = start_with(chatlab::config::Config { max_sockets: 3, ..edge_config() }).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut waiting = TcpStream::connect(server.addr).await.unwrap(); // in the kernel's backlog
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(2500), waiting.read(&mut buf))
        .await
        .expect("served once the idle sockets are let go")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(started.elapsed() >= Duration::from_millis(500), "it did wait for a slot: {:?}", started.elapsed());
    for mut socket in idle {
        closed_within(&mut socket, Duration::from_secs(1)).await;
    }
}
