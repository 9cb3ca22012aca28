//! Issue 17's rules: the join cursor (no unasked replay), a long poll's `next` for a cursor ahead of the room,
//! the `Host` check, nickname rules and the HTTP layer's own errors as JSON. Each against a real server.

use crate::common;

use common::*;
use serde_json::Value;

/// Fills the room with `n` chat lines from a participant of its own.
async fn chatter(server: &Server, n: usize) {
    let talker = join(server, "poll").await;
    for i in 0..n {
        assert_eq!(post(server, &talker.session, &format!("history {i}")).await.0, 202);
    }
}

/// No line of the history said before the join is in the events.
fn no_history(events: &[Value], joined: u64) {
    for event in events {
        if let Some(seq) = event.get("seq").and_then(Value::as_u64) {
            if event["type"] != "welcome" {
                assert!(seq > joined, "replayed unasked: {event} (joined at {joined})");
            }
        }
        assert_ne!(event["type"], "gap", "a fresh session is told of no gap: {event}");
    }
}

#[tokio::test]
async fn a_first_poll_without_since_starts_at_the_join() {
    let server = start().await;
    chatter(&server, 20).await;
    let user = join(&server, "poll").await;
    assert!(user.seq >= 21, "the join answers the head: {}", user.seq);
    let (events, next) = poll(&server, &format!("/api/poll?session={}", user.session)).await;
    no_history(&events, user.seq);
    // Its own join notice is the first event it hears.
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["notice"], "join");
    assert_eq!(events[0]["seq"], user.seq + 1);
    assert_eq!(next, user.seq + 1);
    // A page that wants the last lines asks with since=.
    let (events, _) = poll(&server, &format!("/api/poll?session={}&since={}", user.session, user.seq - 3)).await;
    assert_eq!(events[0]["seq"], user.seq - 2, "since= still reads history: {events:?}");
}

#[tokio::test]
async fn a_first_long_poll_without_since_starts_at_the_join() {
    let server = start().await;
    chatter(&server, 20).await;
    let user = join(&server, "longpoll").await;
    let (events, next) = poll(&server, &format!("/api/longpoll?session={}&timeout=2", user.session)).await;
    no_history(&events, user.seq);
    assert_eq!(events[0]["seq"], user.seq + 1, "{events:?}");
    assert_eq!(next, user.seq + 1);
}

#[tokio::test]
async fn a_first_sse_stream_without_since_starts_at_the_join() {
    let server = start().await;
    chatter(&server, 20).await;
    let user = join(&server, "sse").await;
    let mut stream = sse(&server, &format!("/api/sse?session={}", user.session), None).await;
    let welcome = stream.data().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["seq"], user.seq, "the welcome names the join's cursor");
    let first = stream.data().await;
    assert_eq!(first["notice"], "join", "{first}");
    assert_eq!(first["seq"], user.seq + 1);
    stream.quiet().await;
}

#[tokio::test]
async fn a_first_websocket_without_since_starts_at_the_join() {
    let server = start().await;
    chatter(&server, 20).await;
    // Joined over HTTP, then opened on /ws without since=.
    let user = join(&server, "ws").await;
    let mut socket = ws(&server.ws_url(&format!("/ws?session={}", user.session))).await;
    let welcome = ws_next(&mut socket).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["seq"], user.seq);
    let first = ws_next(&mut socket).await;
    assert_eq!(first["notice"], "join", "{first}");
    assert_eq!(first["seq"], user.seq + 1);
    ws_quiet(&mut socket).await;
    // Joined on /ws itself: the same.
    let mut joined = ws(&server.ws_url("/ws?nickname=late")).await;
    let welcome = ws_next(&mut joined).await;
    let head = welcome["seq"].as_u64().unwrap();
    assert!(head > user.seq, "{welcome}");
    assert_eq!(ws_next(&mut joined).await["seq"], head + 1);
    ws_quiet(&mut joined).await;
}

/// A long poll whose cursor is ahead of the room answers the head as `next` with the `gap` event, held or not.
#[tokio::test]
async fn a_long_poll_ahead_of_the_room_answers_the_head() {
    let server = start().await;
    let user = join(&server, "longpoll").await;
    // The room holds the join notice only; each round adds one line.
    for (head, timeout) in (user.seq + 1..).zip(["0", "1"]) {
        let path = format!("/api/longpoll?session={}&since={}&timeout={timeout}", user.session, head + 1000);
        let (events, next) = poll(&server, &path).await;
        assert_eq!(next, head, "timeout={timeout}: next is the head, not the cursor: {events:?}");
        assert_eq!(events.len(), 1, "timeout={timeout}: {events:?}");
        assert_eq!(events[0]["type"], "gap");
        assert_eq!(events[0]["from"], head + 1);
        assert_eq!(events[0]["to"], head + 1000);
        // Following next, the client hears the next line.
        let (status, _) = post(&server, &user.session, "after").await;
        assert_eq!(status, 202);
        let (events, _) =
            poll(&server, &format!("/api/longpoll?session={}&since={next}&timeout=2", user.session)).await;
        assert_eq!(events[0]["message"], "after", "{events:?}");
    }
}

/// `/nick` (over POST) as `session`: the status and the error code, if any.
async fn nick(server: &Server, session: &str, name: &str) -> (u16, Value) {
    let (status, body) = post(server, session, &format!("/nick {name}")).await;
    (status, body["code"].clone())
}

#[tokio::test]
async fn nick_to_another_participants_name_is_refused() {
    let server = start().await;
    let alice = join(&server, "poll").await;
    let bob = join(&server, "poll").await;
    assert_eq!(nick(&server, &alice.session, "alice").await.0, 202);
    let before = server.room.head();
    assert_eq!(nick(&server, &bob.session, "alice").await, (409, "nickname_taken".into()));
    // Nothing changed: no rename event, bob keeps his name.
    tokio::time::sleep(QUIET).await;
    assert_eq!(server.room.head(), before, "a refused rename publishes nothing");
    let (_, presence) = get_json(&server, "/api/presence").await;
    let names: Vec<&str> =
        presence["participants"].as_array().unwrap().iter().map(|p| p["nickname"].as_str().unwrap()).collect();
    assert!(names.contains(&bob.nickname.as_str()) && names.contains(&"alice"), "{names:?}");
    // Renaming to one's own name, and to a free name, pass; a name given up is free again.
    assert_eq!(nick(&server, &alice.session, "alice").await.0, 202);
    assert_eq!(nick(&server, &alice.session, "alicia").await.0, 202);
    assert_eq!(nick(&server, &bob.session, "alice").await.0, 202);
    // Over a WebSocket, the refusal is an error event.
    let mut socket = ws(&server.ws_url(&format!("/ws?session={}&since={}", alice.session, server.room.head()))).await;
    assert_eq!(ws_next(&mut socket).await["type"], "welcome");
    ws_send(&mut socket, "/nick alice").await;
    let error = ws_next(&mut socket).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "nickname_taken", "{error}");
}

#[tokio::test]
async fn guest_names_are_reserved_for_their_guest() {
    let server = start().await;
    let guest = join(&server, "poll").await;
    let other = join(&server, "poll").await;
    assert!(guest.nickname.starts_with("游客"), "{}", guest.nickname);
    // Another's guest name, or one not given to anyone yet, is refused.
    assert_eq!(nick(&server, &other.session, &guest.nickname).await, (400, "bad_nickname".into()));
    assert_eq!(nick(&server, &other.session, "游客999").await, (400, "bad_nickname".into()));
    // One's own guest name is fine (back to it after a rename).
    assert_eq!(nick(&server, &guest.session, "named").await.0, 202);
    assert_eq!(nick(&server, &guest.session, &guest.nickname).await.0, 202);
    // The join's nickname too.
    let response = http()
        .post(server.url("/api/sessions"))
        .json(&serde_json::json!({"transport": "poll", "nickname": "游客1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "bad_nickname");
}

#[tokio::test]
async fn invisible_and_bidi_characters_are_refused_in_nicknames() {
    let server = start().await;
    let user = join(&server, "poll").await;
    for name in ["ali\u{200B}ce", "\u{202E}ecila", "a\u{2066}b", "\u{FEFF}bom", "x\u{200D}y", "\u{3164}"] {
        assert_eq!(nick(&server, &user.session, name).await, (400, "bad_nickname".into()), "/nick {name:?}");
        let response = http()
            .post(server.url("/api/sessions"))
            .json(&serde_json::json!({"transport": "poll", "nickname": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "join as {name:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "bad_nickname");
        assert!(body["error"].as_str().unwrap().contains("invisible"), "{body}");
    }
    // Letters of any script pass.
    assert_eq!(nick(&server, &user.session, "Zoë 小明").await.0, 202);
}

/// Sends a raw request head and returns the status line and body.
async fn raw(server: &Server, request: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await.expect("answered and closed").unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_browser_request_by_a_rebound_name_is_refused() {
    let mut config = config();
    config.allowed_hosts = vec!["chat.example.com".into()];
    let server = start_with(config).await;
    let get = |host: &str, browser: &str| {
        format!("GET /api/stats HTTP/1.1\r\nHost: {host}\r\n{browser}Connection: close\r\n\r\n")
    };
    // A page of evil.example rebound to 127.0.0.1: same-origin to the browser, refused here.
    let (status, body) = raw(&server, &get("evil.example:8080", "Origin: http://evil.example:8080\r\n")).await;
    assert!(status.contains(" 421 "), "{status}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "forbidden_host", "{body}");
    let (status, _) = raw(&server, &get("evil.example", "Sec-Fetch-Site: same-origin\r\n")).await;
    assert!(status.contains(" 421 "), "a GET without Origin but from a browser: {status}");
    // Loopback names, IP addresses and allowed names pass; so does a client that is not a browser.
    for host in ["localhost:1", "app.localhost", "127.0.0.1:9", "[::1]:9", "Chat.Example.com"] {
        let (status, _) = raw(&server, &get(host, "Sec-Fetch-Site: same-origin\r\n")).await;
        assert!(status.contains(" 200 "), "{host}: {status}");
    }
    let (status, _) = raw(&server, &get("evil.example", "")).await;
    assert!(status.contains(" 200 "), "curl by any name: {status}");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request_and_a_long_one_too_large() {
    let server = start().await;
    let user = join(&server, "poll").await;
    let head = |extra: &str| {
        format!(
            "POST /api/messages?session={} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{extra}",
            user.session
        )
    };
    let (status, body) = raw(&server, &head("zz\r\nhello\r\n0\r\n\r\n")).await;
    assert!(status.contains(" 400 "), "a chunk size that is not hex: {status} {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "bad_request", "{body}");
    let big = "x".repeat(server.room.config().max_body_bytes + 1);
    let (status, _) = raw(&server, &head(&format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()))).await;
    assert!(status.contains(" 413 "), "over --max-body-bytes: {status}");
}
