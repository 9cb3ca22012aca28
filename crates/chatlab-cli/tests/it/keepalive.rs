//! Keep-alives: one shared beat; SSE streams get a comment, WebSockets a ping, and a silent peer is dropped.

use crate::common;

use std::time::{Duration, Instant};

use common::*;

fn beating() -> chatlab::config::Config {
    chatlab::config::Config { keepalive: 1, session_lease: 1, ..config() }
}

/// A quiet SSE stream receives a `: keep-alive` comment every `--keepalive` seconds.
#[tokio::test]
async fn sse_streams_get_keepalive_comments() {
    let server = start_with(beating()).await;
    let user = join(&server, "sse").await;
    let mut response = http().get(server.url(&format!("/api/sse?session={}", user.session))).send().await.unwrap();
    let started = Instant::now();
    let mut text = String::new();
    while !text.contains(": keep-alive\n\n") {
        let chunk = tokio::time::timeout(WAIT, response.chunk()).await.expect("a chunk in time").unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(3), "within a beat or two");
}

/// A quiet HTTP stream and a quiet forever iframe each receive a bare newline every `--keepalive` seconds, between
/// whole events: a reader skips it, a proxy sees the response alive.
#[tokio::test]
async fn streams_and_iframes_get_keepalive_newlines() {
    for (framing, technique) in Framing::ALL {
        // A server each: another participant's lease running out would be news on the stream.
        let server = start_with(beating()).await;
        let user = join(&server, technique).await;
        let mut streamed = streamed(&server, &format!("/api/{technique}?session={}", user.session)).await;
        let started = Instant::now();
        let mut text = String::new();
        while !text.contains("\n\n") {
            let chunk = tokio::time::timeout(WAIT, streamed.response.chunk()).await.expect("a chunk in time").unwrap();
            text.push_str(std::str::from_utf8(&chunk.expect("the response is still open")).unwrap());
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{technique}: within a beat or two");
        assert!(text.contains(r#"{"type":"welcome""#), "{technique}: {text:?}");
        // The newline comes alone, after a whole event, and only newlines follow it.
        let (before, after) = text.split_once("\n\n").unwrap();
        let ends = if framing == Framing::Script { ")</script>" } else { "}" };
        assert!(before.ends_with(ends), "{technique}: {text:?}");
        assert!(after.bytes().all(|b| b == b'\n'), "{technique}: only keep-alives follow: {text:?}");
    }
}

/// A WebSocket client that answers pings (every client library does) stays connected through many beats.
#[tokio::test]
async fn answering_websockets_stay() {
    let server = start_with(beating()).await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    ws_next(&mut socket).await;
    ws_next(&mut socket).await;
    // Reading answers the server's pings (tungstenite replies by itself); no text arrives meanwhile.
    ws_quiet_for(&mut socket, Duration::from_millis(4500)).await;
    ws_send(&mut socket, "still here").await;
    assert_eq!(ws_next(&mut socket).await["message"], "still here");
    assert_eq!(get_json(&server, "/api/presence").await.1["clientcount"], 1);
}

/// A peer that vanished without closing (here: a socket that never reads again, so never answers a ping) is
/// dropped after two unanswered pings, and then announced as gone when its lease runs out.
#[tokio::test]
async fn silent_websockets_are_dropped_and_announced() {
    let server = start_with(beating()).await;
    let mut watcher = ws(&server.ws_url("/ws")).await;
    ws_next(&mut watcher).await;
    ws_next(&mut watcher).await;

    let (silent, _) = raw_ws_upgrade(&server).await;
    let joined = ws_next(&mut watcher).await;
    assert!(joined["message"].as_str().unwrap().ends_with("来了"));

    let started = Instant::now();
    let left = ws_next_within(&mut watcher, Duration::from_secs(15)).await;
    assert_eq!(left["message"], format!("{} 走了", joined["nickname"].as_str().unwrap()));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "not before two beats went unanswered: {elapsed:?}");
    drop(silent);
}

async fn ws_quiet_for(socket: &mut Ws, how_long: Duration) {
    let deadline = tokio::time::Instant::now() + how_long;
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(socket)).await {
        match frame.unwrap() {
            tokio_tungstenite::tungstenite::Message::Ping(_) | tokio_tungstenite::tungstenite::Message::Pong(_) => {}
            other => panic!("expected only pings, got {other:?}"),
        }
    }
}

/// The next text frame as JSON, waiting up to `how_long` (longer than the harness's usual wait).
async fn ws_next_within(socket: &mut Ws, how_long: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + how_long;
    loop {
        let frame = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(socket)).await;
        match frame.expect("an event in time").expect("open").unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            _ => continue,
        }
    }
}
