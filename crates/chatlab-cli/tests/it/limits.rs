//! Bad input gets a clear error and changes nothing else (SPEC section 5).

use crate::common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// After a refusal, the room still works for everyone: `session` sends and `watcher` hears it.
async fn still_works(server: &Server, session: &str, watcher: &mut Ws) {
    assert_eq!(post(server, session, "still fine").await.0, 202);
    loop {
        if ws_next(watcher).await["message"] == "still fine" {
            return;
        }
    }
}

async fn watcher(server: &Server) -> Ws {
    let mut socket = ws(&server.ws_url("/ws")).await;
    ws_next(&mut socket).await;
    ws_next(&mut socket).await;
    socket
}

fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "a readable error: {body}");
}

/// Texts: empty, whitespace-only, too long, invalid UTF-8, and bodies over the limit are refused with JSON.
#[tokio::test]
async fn bad_texts_are_refused() {
    let mut config = config();
    config.max_message_chars = 10;
    config.max_body_bytes = 64;
    let server = start_with(config).await;
    let mut watch = watcher(&server).await;
    let user = join(&server, "poll").await;
    ws_next(&mut watch).await;

    let (status, body) = post(&server, &user.session, "").await;
    assert_error(status, &body, 400, "empty_text");
    let (status, body) = post(&server, &user.session, " \n\t ").await;
    assert_error(status, &body, 400, "empty_text");
    let (status, body) = post(&server, &user.session, "12345678901").await;
    assert_error(status, &body, 400, "text_too_long");
    assert_eq!(post(&server, &user.session, "一二三四五六七八九十").await.0, 202, "the limit counts characters");
    ws_next(&mut watch).await;
    let (status, body) = post(&server, &user.session, &"x".repeat(65)).await;
    assert_error(status, &body, 413, "too_large");

    let response = http()
        .post(server.url(&format!("/api/messages?session={}", user.session)))
        .body(vec![0xff, 0xfe, b'a'])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "invalid_utf8");

    ws_quiet(&mut watch).await;
    still_works(&server, &user.session, &mut watch).await;
}

/// Nicknames: trimmed; empty, too long or with control characters refused, on `/nick` and on join.
#[tokio::test]
async fn bad_nicknames_are_refused() {
    let server = start().await;
    let mut watch = watcher(&server).await;
    let user = join(&server, "poll").await;
    ws_next(&mut watch).await;
    for bad in ["/nick    ", &format!("/nick {}", "n".repeat(33)), "/nick a\u{7}b", "/nick a\nb"] {
        let (status, body) = post(&server, &user.session, bad).await;
        assert_error(status, &body, 400, "bad_nickname");
    }
    ws_quiet(&mut watch).await;
    assert_eq!(post(&server, &user.session, "/nick   Alice  ").await.0, 202);
    let renamed = ws_next(&mut watch).await;
    assert_eq!(renamed["nickname"], "Alice");
    assert_eq!(renamed["message"], format!("用户 {} 改名为: Alice", user.nickname));

    for body in [r#"{"transport":"sse","nickname":" "}"#, r#"{"transport":"sse","nickname":"a\u0000"}"#] {
        let response = http().post(server.url("/api/sessions")).body(body).send().await.unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(response.json::<Value>().await.unwrap()["code"], "bad_nickname");
    }
    for body in ["not json", r#"{"transport":"carrier-pigeon"}"#, r#"{}"#] {
        let response = http().post(server.url("/api/sessions")).body(body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.json::<Value>().await.unwrap()["code"], "bad_request");
    }
    let response =
        http().post(server.url("/api/sessions")).body(r#"{"transport":"sse","nickname":"  Bob "}"#).send().await;
    assert_eq!(response.unwrap().json::<Value>().await.unwrap()["nickname"], "Bob");
    assert_eq!(ws_next(&mut watch).await["message"], "Bob 来了");
    ws_quiet(&mut watch).await;
}

/// Unknown sessions get 404 on every technique; missing ones 400; malformed `since` and `timeout` 400, and so
/// does any of the three given twice.
#[tokio::test]
async fn unknown_sessions_and_malformed_cursors() {
    let server = start().await;
    let user = join(&server, "poll").await;
    for path in ["/api/poll?session=nope", "/api/longpoll?session=nope&timeout=1", "/api/sse?session=nope"] {
        let (status, body) = get_json(&server, path).await;
        assert_error(status, &body, 404, "unknown_session");
    }
    let (status, body) = post(&server, "nope", "hi").await;
    assert_error(status, &body, 404, "unknown_session");
    let error = tokio_tungstenite::connect_async(server.ws_url("/ws?session=nope")).await.unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 404),
        other => panic!("expected an HTTP 404 refusal, got {other:?}"),
    }
    let (status, body) = get_json(&server, "/api/poll").await;
    assert_error(status, &body, 400, "bad_request");
    for query in ["since=abc", "since=-1", "since=1.5", "since=99999999999999999999999"] {
        let (status, body) = get_json(&server, &format!("/api/poll?session={}&{query}", user.session)).await;
        assert_error(status, &body, 400, "bad_request");
    }
    for query in ["timeout=abc", "timeout=-1", "timeout=NaN", "timeout=inf"] {
        let (status, body) = get_json(&server, &format!("/api/longpoll?session={}&{query}", user.session)).await;
        assert_error(status, &body, 400, "bad_request");
    }
    let response = http().get(server.url("/api/sse?session=x")).header("last-event-id", "zz").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let session = &user.session;
    for path in [
        format!("/api/poll?session={session}&since=0&since=1"),
        format!("/api/poll?session={session}&session={session}"),
        format!("/api/longpoll?session={session}&timeout=0&timeout=1"),
        format!("/api/sse?session={session}&since=0&since=0"),
    ] {
        let (status, body) = get_json(&server, &path).await;
        assert_error(status, &body, 400, "bad_request");
        assert!(body["error"].as_str().unwrap().contains("given twice"), "{path}: {body}");
    }
    let response = http().post(server.url(&format!("/api/messages?session={session}&session=x"))).body("hi");
    assert_eq!(response.send().await.unwrap().status(), 400, "a POST too");
    assert_eq!(poll(&server, &format!("/api/poll?session={}", user.session)).await.1, 1, "the session is intact");
}

/// Flooding: over the per-session rate, POSTs get 429 with Retry-After and WebSocket texts an `error`
/// event; other participants are not affected.
#[tokio::test]
async fn flooding_is_rate_limited() {
    let mut config = config();
    config.rate_limit = 2.0;
    config.rate_burst = 3.0;
    let server = start_with(config).await;
    let flooder = join(&server, "poll").await;
    let other = join(&server, "poll").await;
    let mut statuses = vec![];
    for i in 0..6 {
        let response = http()
            .post(server.url(&format!("/api/messages?session={}", flooder.session)))
            .body(format!("flood {i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(response.json::<Value>().await.unwrap()["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429, 429]);
    assert_eq!(post(&server, &other.session, "unaffected").await.0, 202);

    let mut socket = ws(&server.ws_url("/ws")).await;
    ws_next(&mut socket).await;
    for i in 0..5 {
        ws_send(&mut socket, &format!("ws flood {i}")).await;
    }
    let mut errors = 0;
    let mut echoed = 0;
    while errors + echoed < 6 {
        let frame = ws_next(&mut socket).await;
        match frame["type"].as_str() {
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                errors += 1;
            }
            Some("message") if frame["message"].as_str().unwrap().starts_with("ws flood") => echoed += 1,
            _ => echoed += usize::from(frame["type"] == "notification"),
        }
    }
    assert_eq!(errors, 2, "3 of 5 pass the burst, 2 are refused, and the socket stays open");
}

/// Cross-site requests: a foreign Origin is refused on WebSocket upgrades and POSTs; the same host,
/// localhost and `--allow-origin` pass.
#[tokio::test]
async fn cross_site_requests_are_refused() {
    let mut config = config();
    config.allowed_origins = vec!["https://chat.example.com".into()];
    let server = start_with(config).await;
    let user = join(&server, "poll").await;
    let send = |origin: &'static str| {
        http()
            .post(server.url(&format!("/api/messages?session={}", user.session)))
            .header("origin", origin)
            .body("hi")
            .send()
    };
    let refused = send("http://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "forbidden_origin");
    assert_eq!(send("http://localhost:3000").await.unwrap().status(), 202);
    assert_eq!(send("https://chat.example.com").await.unwrap().status(), 202);
    let same_host: &'static str = format!("http://{}", server.addr).leak();
    assert_eq!(send(same_host).await.unwrap().status(), 202);
    let join_refused = http()
        .post(server.url("/api/sessions"))
        .header("origin", "http://evil.example")
        .body(r#"{"transport":"sse"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(join_refused.status(), 403);

    for path in ["/ws", "/"] {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url(path))
                .unwrap();
        request.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
        match tokio_tungstenite::connect_async(request).await.unwrap_err() {
            tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
            other => panic!("expected 403, got {other:?}"),
        }
    }
    assert_eq!(get_json(&server, "/api/presence").await.1["clientcount"], 1, "refused upgrades joined nobody");
}

/// Too many connections or sessions: 503 with a JSON body, and the open ones keep working.
#[tokio::test]
async fn connection_and_session_limits() {
    let mut config = config();
    config.max_connections = 2;
    config.max_sessions = 3;
    let server = start_with(config).await;
    let a = join(&server, "sse").await;
    let b = join(&server, "sse").await;
    let c = join(&server, "sse").await;
    let response = http().post(server.url("/api/sessions")).body(r#"{"transport":"poll"}"#).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "room_full");

    let mut stream_a = sse(&server, &format!("/api/sse?session={}", a.session), None).await;
    let _stream_b = sse(&server, &format!("/api/sse?session={}", b.session), None).await;
    let (status, body) = get_json(&server, &format!("/api/sse?session={}", c.session)).await;
    assert_error(status, &body, 503, "too_many_connections");
    // A long poll that would have to wait needs a live channel; one that can be answered from history does not.
    let head = c.seq + 1;
    let (status, body) =
        get_json(&server, &format!("/api/longpoll?session={}&since={head}&timeout=1", c.session)).await;
    assert_error(status, &body, 503, "too_many_connections");
    let (status, body) = get_json(&server, &format!("/api/longpoll?session={}&since=0&timeout=1", c.session)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next"], head, "{body}");
    assert_eq!(stream_a.data().await["type"], "welcome");
    post(&server, &c.session, "c can still post").await;
    loop {
        if stream_a.data().await["message"] == "c can still post" {
            break;
        }
    }
    drop(stream_a);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut stream_c = sse(&server, &format!("/api/sse?session={}", c.session), None).await;
    assert_eq!(stream_c.data().await["type"], "welcome", "a freed slot can be taken");
}

/// WebSocket frames: binary frames get an error and close 1003; frames over the limit close 1009; invalid
/// UTF-8 closes 1007; the other participants carry on.
#[tokio::test]
async fn bad_websocket_frames() {
    let mut config = config();
    config.max_frame_bytes = 1024;
    let server = start_with(config).await;
    let mut watch = watcher(&server).await;
    let user = join(&server, "poll").await;
    ws_next(&mut watch).await;

    let mut binary = ws(&server.ws_url("/ws")).await;
    ws_next(&mut binary).await;
    futures_util::SinkExt::send(&mut binary, tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let mut saw_error = false;
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut binary)).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => saw_error |= t.contains("\"error\""),
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1003));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_error, "an error event before the close");

    let mut big = ws(&server.ws_url("/ws")).await;
    ws_next(&mut big).await;
    let _ =
        futures_util::SinkExt::send(&mut big, tokio_tungstenite::tungstenite::Message::Text("x".repeat(2000).into()))
            .await;
    assert_eq!(ws_close_code(&mut big).await.map(u16::from), Some(1009));

    // Invalid UTF-8 in a text frame: no client library will send one, so write the frame by hand.
    assert_eq!(raw_text_frame(&server, &[b'o', b'k', 0xff, 0xfe]).await, 1007);

    still_works(&server, &user.session, &mut watch).await;
}

/// Opens `/ws` over a plain socket, sends one masked text frame with `payload`, returns the close code.
async fn raw_text_frame(server: &Server, payload: &[u8]) -> u16 {
    let (mut stream, mut data) = raw_ws_upgrade(server).await;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
    // Read frames (welcome, join) until the close frame: opcode 0x8, then a 2-byte code.
    let mut chunk = [0u8; 4096];
    loop {
        while data.len() >= 2 {
            let len = (data[1] & 0x7f) as usize;
            let (start, len) = match len {
                126 if data.len() >= 4 => (4, u16::from_be_bytes([data[2], data[3]]) as usize),
                126 => break,
                _ => (2, len),
            };
            if data.len() < start + len {
                break;
            }
            if data[0] & 0x0f == 0x8 {
                return u16::from_be_bytes([data[start], data[start + 1]]);
            }
            data.drain(..start + len);
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed without a close frame");
        data.extend_from_slice(&chunk[..n]);
    }
}

/// A WebSocket reader that falls more than `--send-queue` events behind is told and closed with 4008; it
/// resumes from its cursor with nothing lost, and the room never waited for it.
#[tokio::test]
async fn slow_consumer_is_closed_and_resumes() {
    let mut config = config();
    config.send_queue = 16;
    let server = start_with(config).await;
    let talker = join(&server, "poll").await;

    // A reader with a tiny receive window that does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut slow, _) = tokio_tungstenite::client_async(server.ws_url("/ws"), stream).await.unwrap();
    let welcome = ws_next(&mut slow).await;
    let session = welcome["session"].as_str().unwrap().to_owned();

    // More than the kernel's socket buffers can absorb (tcp_wmem's max is 4 MiB): 4,000 texts of 1,900 bytes,
    // posted by a poller, which has no channel of its own to fall behind on (a talker on a WebSocket would itself
    // be a slow consumer at a queue of 16 whenever its own echoes queue up while the server reads its texts).
    // Every post is accepted at once: the room never waits for the reader that does not read.
    let client = http();
    let url = server.url(&format!("/api/messages?session={}", talker.session));
    let text = "y".repeat(1900);
    for _ in 0..4000 {
        let answer = client.post(&url).header("content-type", "text/plain").body(text.clone()).send().await.unwrap();
        assert_eq!(answer.status(), 202, "the room never waits for a slow reader");
    }
    let mut last_seq = welcome["seq"].as_u64().unwrap();
    let mut code = None;
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut slow)).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let event: Value = serde_json::from_str(&t).unwrap();
                if let Some(seq) = event["seq"].as_u64() {
                    assert_eq!(seq, last_seq + 1, "no hole before the close");
                    last_seq = seq;
                } else {
                    assert_eq!(event["code"], "slow_consumer");
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                code = frame.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert_eq!(code, Some(4008));
    let (_, stats) = get_json(&server, "/api/stats").await;
    assert!(stats["transports"]["ws"]["slow_consumers"].as_u64().unwrap() >= 1);

    let (events, next) = poll(&server, &format!("/api/poll?session={session}&since={last_seq}")).await;
    assert!(events.iter().all(|e| e["type"] == "message"));
    assert_eq!(events.first().map(|e| e["seq"].as_u64().unwrap()), Some(last_seq + 1), "resumes right after");
    assert!(next > last_seq);
}

/// Too many sockets: past `--max-sockets`, with every socket busy (two WebSockets), a new client waits (in the
/// listener, then in the kernel's backlog) and is served as soon as a socket closes.
#[tokio::test]
async fn socket_limit_makes_new_clients_wait() {
    let server = start_with(chatlab::config::Config { max_sockets: 2, ..config() }).await;
    let mut first = ws(&server.ws_url("/ws")).await;
    let _second = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut first).await["type"], "welcome");
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let waited = tokio::time::timeout(QUIET, third.read_to_end(&mut answer)).await;
    assert!(waited.is_err(), "not served while two busy sockets are open");
    drop(first);
    tokio::time::timeout(WAIT, third.read_to_end(&mut answer)).await.expect("served once a socket closed").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}
