//! Leases: a participant without a live channel or a recent poll is announced as gone after `--session-lease`.

use crate::common;

use std::time::{Duration, Instant};

use common::*;

fn short_lease() -> chatlab::config::Config {
    let mut config = config();
    config.session_lease = 1;
    config
}

/// A short-poll participant that stops polling is announced as gone once, after the lease; one that keeps
/// polling and one with a live SSE stream stay.
#[tokio::test]
async fn lease_expiry_announces_the_leave() {
    let server = start_with(short_lease()).await;
    let mut watcher = ws(&server.ws_url("/ws")).await;
    ws_next(&mut watcher).await;
    ws_next(&mut watcher).await;
    let quitter = join(&server, "poll").await;
    let poller = join(&server, "poll").await;
    let streamer = join(&server, "sse").await;
    let mut stream = sse(&server, &format!("/api/sse?session={}", streamer.session), None).await;
    for _ in 0..3 {
        ws_next(&mut watcher).await; // three joins
    }
    let started = Instant::now();
    let keep_polling = {
        let url = server.url(&format!("/api/poll?session={}", poller.session));
        tokio::spawn(async move {
            for _ in 0..12 {
                assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let left = ws_next(&mut watcher).await;
    assert_eq!(left["message"], format!("{} 走了", quitter.nickname));
    assert_eq!(left["clientcount"], 3, "watcher, poller and streamer remain");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "not before the lease: {elapsed:?}");
    // Nobody else leaves while the poller polls and the stream is open (well past two leases).
    if let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(2200), futures_util::StreamExt::next(&mut watcher)).await
    {
        panic!("nobody else should leave: {frame:?}");
    }
    keep_polling.await.unwrap();
    assert_eq!(post(&server, &quitter.session, "too late").await.0, 404, "an expired session is unknown");
    assert_eq!(stream.data().await["type"], "welcome");
}

/// A `/ws` participant whose socket closes stays online for the lease (it may come back on any technique),
/// then is announced as gone; a seed participant on `/` leaves at once.
#[tokio::test]
async fn ws_waits_for_the_lease_seed_leaves_at_once() {
    let server = start_with(short_lease()).await;
    let mut watcher = ws(&server.ws_url("/ws")).await;
    ws_next(&mut watcher).await;
    ws_next(&mut watcher).await;

    let mut seed = ws(&server.ws_url("/")).await;
    let seed_join = ws_next(&mut seed).await;
    ws_next(&mut watcher).await;
    seed.close(None).await.unwrap();
    let started = Instant::now();
    let left = ws_next(&mut watcher).await;
    assert_eq!(left["message"], format!("{} 走了", seed_join["nickname"].as_str().unwrap()));
    assert!(started.elapsed() < Duration::from_millis(800), "a seed participant leaves at once");

    let mut socket = ws(&server.ws_url("/ws")).await;
    let welcome = ws_next(&mut socket).await;
    ws_next(&mut watcher).await;
    socket.close(None).await.unwrap();
    let started = Instant::now();
    let left = ws_next(&mut watcher).await;
    assert_eq!(left["message"], format!("{} 走了", welcome["nickname"].as_str().unwrap()));
    assert!(started.elapsed() >= Duration::from_millis(700), "a /ws participant is kept for the lease");
}
