//! Issue 17's rules: the join cursor (no unasked replay), a long poll's `next` for a cursor ahead of the room,
//! the `Host` check, nickname rules and the HTTP layer's own errors as JSON. Each against a real server.

mod common;

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
    // The room holds the join notice only.
    let mut head = user.seq + 1;
    for timeout in ["0", "1"] {
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
        head += 1;
    }
}
