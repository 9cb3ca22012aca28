//! Cursors: resuming, held and immediate polls, and the explicit `gap` for a cursor older than the history.

use crate::common;

use std::time::{Duration, Instant};

use common::*;

/// An SSE stream reopened with `Last-Event-ID` continues right after that event, without repeating it, even when
/// the URL still carries the older `since=` it was first opened with.
#[tokio::test]
async fn sse_resumes_from_last_event_id() {
    let server = start().await;
    let user = join(&server, "sse").await;
    let mut stream = sse(&server, &format!("/api/sse?session={}", user.session), None).await;
    assert_eq!(stream.data().await["type"], "welcome");
    assert_eq!(stream.next().await.unwrap().data["message"], format!("{} 来了", user.nickname));
    post(&server, &user.session, "one").await;
    let one = stream.next().await.unwrap();
    assert_eq!(one.data["message"], "one");
    drop(stream);
    post(&server, &user.session, "two").await;
    post(&server, &user.session, "three").await;

    // As a browser reconnects: the same URL (with its original `since=`) plus the newest id seen.
    let mut resumed = sse(&server, &format!("/api/sse?session={}&since={}", user.session, user.seq), one.id).await;
    let welcome = resumed.data().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["seq"], one.id.unwrap(), "the welcome names the cursor it resumes from");
    assert_eq!(resumed.data().await["message"], "two");
    assert_eq!(resumed.data().await["message"], "three");
    resumed.quiet().await;
}

/// A long poll with nothing new is held, and is answered as soon as an event is published.
#[tokio::test]
async fn long_poll_is_held_then_woken() {
    let server = start().await;
    let user = join(&server, "longpoll").await;
    let (events, head) = poll(&server, &format!("/api/longpoll?session={}&since={}", user.session, user.seq)).await;
    assert_eq!(events.len(), 1, "its own join is already there: answered at once");

    let url = server.url(&format!("/api/longpoll?session={}&since={head}&timeout=10", user.session));
    let started = Instant::now();
    let held =
        tokio::spawn(async move { http().get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "held while there is no news");
    post(&server, &user.session, "wake up").await;
    let body = tokio::time::timeout(WAIT, held).await.expect("woken in time").unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body["events"][0]["message"], "wake up");
    assert_eq!(body["next"], head + 1);
}

/// A long poll with no news returns an empty list after its `timeout`, keeping the cursor.
#[tokio::test]
async fn long_poll_times_out_empty() {
    let server = start().await;
    let user = join(&server, "longpoll").await;
    let head = user.seq + 1;
    let started = Instant::now();
    let (events, next) =
        poll(&server, &format!("/api/longpoll?session={}&since={head}&timeout=0.3", user.session)).await;
    assert!(events.is_empty());
    assert_eq!(next, head);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// A short poll is answered at once, with or without events.
#[tokio::test]
async fn short_poll_answers_at_once() {
    let server = start().await;
    let user = join(&server, "poll").await;
    let started = Instant::now();
    let (events, next) = poll(&server, &format!("/api/poll?session={}&since={}", user.session, user.seq + 1)).await;
    assert!(events.is_empty());
    assert_eq!(next, user.seq + 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    post(&server, &user.session, "news").await;
    let (events, next) = poll(&server, &format!("/api/poll?session={}&since={}", user.session, user.seq + 1)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["message"], "news");
    assert_eq!(next, user.seq + 2);
}

/// A cursor older than the retained history gets a `gap` event naming the missed range, then what is retained.
#[tokio::test]
async fn stale_cursor_gets_an_explicit_gap() {
    let mut config = config();
    config.history = 5;
    let server = start_with(config).await;
    let user = join(&server, "poll").await; // seq 1
    for i in 0..9 {
        post(&server, &user.session, &format!("text {i}")).await; // seqs 2..=10
    }
    // Retained: 6..=10. A cursor of 1 missed 2..=5.
    let (events, next) = poll(&server, &format!("/api/poll?session={}&since=1", user.session)).await;
    assert_eq!(events[0]["type"], "gap");
    assert_eq!(events[0]["from"], 2);
    assert_eq!(events[0]["to"], 5);
    assert!(events[0].get("seq").is_none(), "a control event has no seq");
    let seqs: Vec<u64> = events[1..].iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [6, 7, 8, 9, 10]);
    assert_eq!(next, 10);

    // The same on a WebSocket and an SSE stream.
    let mut socket = ws(&server.ws_url(&format!("/ws?session={}&since=0", user.session))).await;
    assert_eq!(ws_next(&mut socket).await["type"], "welcome");
    let gap = ws_next(&mut socket).await;
    assert_eq!((gap["type"].as_str(), gap["from"].as_u64(), gap["to"].as_u64()), (Some("gap"), Some(1), Some(5)));
    assert_eq!(ws_next(&mut socket).await["seq"], 6);
    drop(socket);
    let mut stream = sse(&server, &format!("/api/sse?session={}&since=3", user.session), None).await;
    stream.data().await;
    let gap = stream.next().await.unwrap();
    assert_eq!(gap.id, None, "a gap does not move the SSE resume point by itself");
    assert_eq!((gap.data["from"].as_u64(), gap.data["to"].as_u64()), (Some(4), Some(5)));
    assert_eq!(stream.next().await.unwrap().id, Some(6));
}

/// A cursor ahead of the room (say, from before a restart) is told so, and resumes from the newest event.
#[tokio::test]
async fn cursor_ahead_of_the_room_is_reset_explicitly() {
    let server = start().await;
    let user = join(&server, "poll").await;
    let (events, next) = poll(&server, &format!("/api/poll?session={}&since=500", user.session)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "gap");
    assert_eq!(next, 1);
}
