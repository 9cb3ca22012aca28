//! The WebSocket protocol itself (RFC 6455) as chatlab speaks it on `/ws` and `/`: the handshake and its
//! refusals, pings, the closing handshake, fragmented texts, and bursts of frames written together.

use crate::common;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// The handshake answers the client's key as RFC 6455 computes it (the RFC's own example); a request that is
/// not an upgrade is refused with `400` and a reason, one for another protocol version with `426` and the
/// version spoken, and neither joins anybody.
#[tokio::test]
async fn the_handshake_accepts_the_rfc_example_and_refuses_what_is_not_an_upgrade() {
    let server = start().await;
    let (_stream, head, _) = raw_ws_upgrade_head(&server).await;
    let head = head.to_lowercase();
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");

    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    for (headers, status, why) in [
        (String::new(), 400, "Connection"),
        (format!("{upgrade}Sec-WebSocket-Key: x\r\n"), 400, "Version"),
        (format!("{upgrade}Sec-WebSocket-Version: 13\r\n"), 400, "Key"),
        (format!("{upgrade}Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 8\r\n"), 426, "version 8"),
    ] {
        for path in ["/ws", "/"] {
            let (code, head, body) = raw_status(&server, path, &headers).await;
            if path == "/" && headers.is_empty() {
                assert_eq!(code, 200, "a plain GET / is the page");
                continue;
            }
            assert_eq!(code, status, "{path} without a valid {why}: {body}");
            assert!(body.contains(why), "the reason names {why}: {body}");
            if status == 426 {
                assert!(head.to_lowercase().contains("sec-websocket-version: 13"), "the version spoken: {head}");
            }
        }
    }
    assert_eq!(get_json(&server, "/api/presence").await.1["clientcount"], 1, "only the one real upgrade joined");
}

/// Sends a GET with extra header lines; returns the status, the response head and the body.
async fn raw_status(server: &Server, path: &str, headers: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{headers}\r\n", server.addr);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.unwrap().unwrap();
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
            });
            if n == 0 || length.is_some_and(|length| body.len() >= length) {
                return (head[9..12].parse().unwrap(), head.to_owned(), body.to_owned());
            }
        }
        assert!(n > 0, "closed before a whole response");
    }
}

/// A ping from the client is answered with a pong carrying the same payload, and the connection carries on.
#[tokio::test]
async fn pings_are_answered_with_their_payload() {
    let server = start().await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut socket).await["type"], "welcome");
    socket.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    let pong = loop {
        match tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap() {
            Message::Pong(payload) => break payload,
            Message::Text(_) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    };
    assert_eq!(&pong[..], b"are you there");
    ws_send(&mut socket, "still here").await;
    loop {
        let event = ws_next(&mut socket).await;
        if event["message"] == "still here" {
            break;
        }
    }
}

/// The closing handshake: the client's close frame is echoed with its code, then the connection ends; the
/// participant stays for its lease on `/ws` and leaves at once on `/` (the seed's protocol).
#[tokio::test]
async fn a_client_close_is_echoed_and_ends_the_connection() {
    let server = start().await;
    for path in ["/ws", "/"] {
        let mut socket = ws(&server.ws_url(path)).await;
        ws_next(&mut socket).await;
        let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        socket.send(Message::Close(Some(frame))).await.unwrap();
        let echoed = loop {
            match tokio::time::timeout(WAIT, socket.next()).await.unwrap() {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("{path}: expected the close echo, got {other:?}"),
            }
        };
        assert_eq!(echoed.map(|f| f.code), Some(CloseCode::Normal), "{path}");
        let end = tokio::time::timeout(WAIT, socket.next()).await.unwrap();
        assert!(end.is_none() || matches!(end, Some(Err(_))), "{path}: the connection ends after the echo: {end:?}");
    }
}

/// A text sent in fragments (a first frame and continuations, with a ping between them, as RFC 6455 allows)
/// is one text; and a burst of texts reaches a reader as separate, whole frames, in order.
#[tokio::test]
async fn fragmented_texts_are_one_text_and_bursts_arrive_as_whole_frames() {
    let server = start().await;
    let mut reader = ws(&server.ws_url("/ws")).await;
    ws_next(&mut reader).await;
    let (mut stream, _) = raw_ws_upgrade(&server).await;
    let mut frames = Vec::new();
    frames.extend(masked(0x01, b"hello, "));
    frames.extend(masked(0x89, b"ping"));
    frames.extend(masked(0x00, b"fragmented "));
    frames.extend(masked(0x80, "世界".as_bytes()));
    // 300 texts at once, the long ones over 125 bytes (a 16-bit length).
    for i in 0..300 {
        let text = if i % 2 == 0 { format!("burst {i}") } else { format!("burst {i} {}", "x".repeat(200)) };
        frames.extend(masked(0x81, text.as_bytes()));
    }
    stream.write_all(&frames).await.unwrap();
    let mut texts = Vec::new();
    while texts.len() < 301 {
        let event = ws_next(&mut reader).await;
        if event["type"] == "message" {
            texts.push(event["message"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(texts[0], "hello, fragmented 世界");
    for (i, text) in texts[1..].iter().enumerate() {
        assert!(text.starts_with(&format!("burst {i}")), "in order and whole: {i}: {text}");
        assert_eq!(text.len(), if i % 2 == 0 { format!("burst {i}").len() } else { format!("burst {i}").len() + 201 });
    }
}

/// A client that sends pings and never reads the pongs is not read any further once `--ws-max-buffer` bytes of
/// pongs wait unsent: its own writes stall (the server holds a bounded queue, not every pong), and the room
/// carries on for everyone else.
#[tokio::test]
async fn a_client_that_never_reads_its_pongs_is_held_back() {
    let config = chatlab::config::Config { ws_max_buffer: 16 * 1024, ..config() };
    let server = start_with(config).await;
    let (mut stream, _) = raw_ws_upgrade(&server).await;
    // 48 MiB of pings: far more than the loopback socket buffers of both sides hold (a few MiB each way).
    let ping = masked(0x89, &[b'p'; 120]);
    let pings = ping.repeat((48 << 20) / ping.len());
    let written = tokio::time::timeout(std::time::Duration::from_secs(3), stream.write_all(&pings)).await;
    assert!(written.is_err(), "the server kept reading pings whose pongs nobody read");
    let mut other = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut other).await["type"], "welcome", "everyone else is served");
}
