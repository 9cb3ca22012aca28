//! `--flush-interval-ms`: a busy stream writes at most once per interval, with everything that arrived
//! meanwhile in that one write; nothing is lost or reordered, and the first event after a quiet spell goes at once.
//!
//! The sender posts `TEXTS` texts `SPACING` apart (270 ms in all). Unpaced, each is its own write; paced at
//! 300 ms, the first goes at once and the rest wait for at most two ticks. Pacing starts only when the runtime's
//! workers are busy (`--pace-when-busy`), so a server that keeps up is never paced, whatever its load.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const TEXTS: usize = 10;
const SPACING: Duration = Duration::from_millis(30);
const INTERVAL_MS: u64 = 300;

/// Paced at `interval_ms` from the first delivery on (`--pace-when-busy 0`), or never (`interval_ms` 0).
fn paced(interval_ms: u64) -> chatlab::config::Config {
    chatlab::config::Config { flush_interval_ms: interval_ms, pace_when_busy: 0, rate_limit: 0.0, ..config() }
}

/// Joins a poll-only sender and posts `texts` texts in the background after a quiet interval; returns when the
/// first was posted.
async fn post_spaced(server: &Server, texts: usize) -> tokio::task::JoinHandle<Instant> {
    let sender = join(server, "poll").await;
    let url = server.url(&format!("/api/messages?session={}", sender.session));
    tokio::spawn(async move {
        // The sender's arrival notice may wait up to one tick for its write, and the stream stops pacing at
        // the tick after that: two intervals on, the room is quiet.
        tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS + 100)).await;
        let started = Instant::now();
        for i in 0..texts {
            let response = http().post(&url).body(format!("paced {i}")).send().await.unwrap();
            assert_eq!(response.status(), 202);
            tokio::time::sleep(SPACING).await;
        }
        started
    })
}

/// The `count` texts posted, in order, exactly once, from a list of received pieces.
fn assert_all_in_order(texts: &[String], count: usize) {
    let expected: Vec<String> = (0..count).map(|i| format!("paced {i}")).collect();
    assert_eq!(texts, expected);
}

/// SSE: each write is one HTTP chunk, so the chunks holding the texts are the writes.
async fn sse_writes(interval_ms: u64) -> (usize, Duration) {
    let server = start_with(paced(interval_ms)).await;
    let receiver = join(&server, "sse").await;
    let mut response = http().get(server.url(&format!("/api/sse?session={}", receiver.session))).send().await.unwrap();
    let poster = post_spaced(&server, TEXTS).await;
    let (mut texts, mut writes, mut first_at) = (Vec::new(), 0, None);
    while texts.len() < TEXTS {
        let chunk = tokio::time::timeout(WAIT, response.chunk()).await.expect("a chunk in time").unwrap().unwrap();
        let chunk = std::str::from_utf8(&chunk).unwrap();
        let found: Vec<String> = chunk
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap())
            .filter_map(|event| event["message"].as_str().filter(|m| m.starts_with("paced ")).map(str::to_owned))
            .collect();
        if !found.is_empty() {
            writes += 1;
            first_at.get_or_insert_with(Instant::now);
            texts.extend(found);
        }
    }
    let started = poster.await.unwrap();
    assert_all_in_order(&texts, TEXTS);
    (writes, first_at.unwrap().duration_since(started))
}

#[tokio::test]
async fn a_paced_sse_stream_writes_once_per_interval() {
    let (writes, first) = sse_writes(INTERVAL_MS).await;
    assert!(writes <= 3, "10 texts over 270 ms at one write per 300 ms: at most 3 writes, got {writes}");
    assert!(first < Duration::from_millis(200), "the first text after a quiet spell goes at once: {first:?}");
    let (writes, _) = sse_writes(0).await;
    assert!(writes >= 5, "unpaced, texts 30 ms apart go out one by one: got {writes} writes");
}

/// WebSocket: frames of one write arrive together; count the bursts of arrivals of `texts` texts.
async fn ws_bursts(config: chatlab::config::Config, texts: usize) -> (usize, Duration, f64) {
    let server = start_with(config).await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    ws_next(&mut socket).await; // welcome
    ws_next(&mut socket).await; // its own arrival
    let poster = post_spaced(&server, texts).await;
    let mut arrivals: Vec<(Instant, String)> = Vec::new();
    while arrivals.len() < texts {
        let message = tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").unwrap().unwrap();
        let Message::Text(text) = message else { continue };
        let event: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Some(text) = event["message"].as_str().filter(|m| m.starts_with("paced ")) {
            arrivals.push((Instant::now(), text.to_owned()));
        }
    }
    let started = poster.await.unwrap();
    let received: Vec<String> = arrivals.iter().map(|(_, text)| text.clone()).collect();
    assert_all_in_order(&received, texts);
    let bursts = 1 + arrivals.windows(2).filter(|w| w[1].0 - w[0].0 > Duration::from_millis(15)).count();
    let paced_s = get_json(&server, "/api/stats").await.1["other"]["paced_seconds"].as_f64().expect("paced_seconds");
    (bursts, arrivals[0].0.duration_since(started), paced_s)
}

#[tokio::test]
async fn a_paced_websocket_writes_once_per_interval() {
    let (bursts, first, _) = ws_bursts(paced(INTERVAL_MS), TEXTS).await;
    assert!(bursts <= 3, "10 texts over 270 ms at one write per 300 ms: at most 3 bursts, got {bursts}");
    assert!(first < Duration::from_millis(200), "the first text after a quiet spell goes at once: {first:?}");
    let (bursts, _, _) = ws_bursts(paced(0), TEXTS).await;
    assert!(bursts >= 5, "unpaced, texts 30 ms apart arrive one by one: got {bursts} bursts");
}

/// `--pace-when-busy`: the same stream of texts (about 33 deliveries a second) is written text by text while the
/// runtime keeps up, and paced while a task holds one of its two workers (half the runtime's time, over the 40%
/// threshold), as a server falling behind its load would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_starts_only_when_the_runtime_is_busy() {
    const LONG: usize = 40;
    let config = chatlab::config::Config { pace_when_busy: 40, ..paced(INTERVAL_MS) };
    let (bursts, _, paced_s) = ws_bursts(config.clone(), LONG).await;
    // The server's own account decides whether it kept up: other processes holding the cores make its wake-ups
    // late, and a server behind its load paces, as it should. While it never paced, it wrote text by text.
    if paced_s == 0.0 {
        assert!(bursts >= 20, "a runtime that keeps up writes texts 30 ms apart one by one: got {bursts} bursts");
    } else {
        eprintln!("the machine was busy: the server paced for {paced_s} s of the quiet phase ({bursts} bursts)");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hog = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                tokio::task::yield_now().await;
            }
        }
    });
    let (bursts, _, paced_s) = ws_bursts(config, LONG).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hog.await.unwrap();
    assert!(paced_s > 0.0, "a worker held half the time: the server says it paced");
    assert!(bursts <= 8, "40 texts over 1.2 s, paced at 300 ms while the runtime is busy: got {bursts} bursts");
}

/// Long polling: a poller that comes back `pause` after each answer. While the server is busy, a poll is
/// answered at a tick with everything that arrived until then, whether it found texts waiting or was held for
/// one; returns how many answers carried the `texts` texts.
async fn longpoll_answers(config: chatlab::config::Config, texts: usize, pause: Duration) -> usize {
    let server = start_with(config).await;
    let receiver = join(&server, "longpoll").await;
    let poster = post_spaced(&server, texts).await;
    let (mut cursor, mut received, mut answers) = (receiver.seq, Vec::new(), 0);
    while received.len() < texts {
        let url = server.url(&format!("/api/longpoll?session={}&since={cursor}&timeout=5", receiver.session));
        let response = tokio::time::timeout(WAIT, http().get(url).send()).await.expect("an answer in time").unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        cursor = body["next"].as_u64().unwrap();
        let found: Vec<String> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|event| event["message"].as_str().filter(|m| m.starts_with("paced ")).map(str::to_owned))
            .collect();
        if !found.is_empty() {
            answers += 1;
            received.extend(found);
        }
        tokio::time::sleep(pause).await;
    }
    poster.await.unwrap();
    assert_all_in_order(&received, texts);
    answers
}

#[tokio::test]
async fn a_busy_server_answers_long_polls_at_the_ticks() {
    const LONG: usize = 20;
    for (pause, why) in [(40, "back 40 ms later, finding texts waiting"), (0, "back at once, held for the next text")] {
        let pause = Duration::from_millis(pause);
        let answers = longpoll_answers(paced(INTERVAL_MS), LONG, pause).await;
        assert!(answers <= 5, "20 texts over 570 ms, paced at 300 ms, a poller {why}: got {answers} answers");
        let answers = longpoll_answers(paced(0), LONG, pause).await;
        assert!(answers >= 8, "unpaced, a poller {why} takes one or two texts an answer: got {answers}");
    }
}

/// A paced WebSocket whose session is taken over by a newer channel while texts keep coming hears it at its next
/// tick (the `replaced` error, close 4000): a stream kept busy by its pacing does not wait for a quiet moment.
#[tokio::test]
async fn a_busy_paced_websocket_hears_it_was_replaced() {
    let server = start_with(paced(100)).await;
    let mut first = ws(&server.ws_url("/ws")).await;
    let welcome = ws_next(&mut first).await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let seq = welcome["seq"].as_u64().unwrap();
    // A text every 20 ms for 3 s: the first socket has something to write at every tick.
    let sender = join(&server, "poll").await;
    let url = server.url(&format!("/api/messages?session={}", sender.session));
    let posting = tokio::spawn(async move {
        for i in 0..150 {
            assert_eq!(http().post(&url).body(format!("busy {i}")).send().await.unwrap().status(), 202);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    while ws_next(&mut first).await["message"] != "busy 10" {}
    let mut second = ws(&server.ws_url(&format!("/ws?session={session}&since={}", seq + 1))).await;
    assert_eq!(ws_next(&mut second).await["type"], "welcome");
    let replaced = Instant::now();
    while ws_next(&mut first).await["code"] != "replaced" {}
    assert!(replaced.elapsed() < Duration::from_secs(1), "told within a tick or two: {:?}", replaced.elapsed());
    assert_eq!(ws_close_code(&mut first).await.map(u16::from), Some(4000));
    assert!(!posting.is_finished(), "texts were still coming");
    posting.abort();
}
