//! Acknowledged, idempotent sends and the room epoch, over real sockets: `/ws?ack=1` frames answered with the
//! `seq` others see, a repeated `ref` or `Idempotency-Key` published once (across processes sharing a real Redis,
//! and across a `kill -9` between a send and its ack), bad frames and keys refused without effect; the epoch in
//! welcomes, joins and poll answers, and a cursor of another epoch (a restarted in-memory process, a wiped Redis)
//! answered with a `gap` of reason `epoch` and the room from its oldest retained event.

use crate::common;
use crate::redis_support;

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use chatlab::config::Config;
use common::{http, post_keyed, ws, ws_next, ws_quiet, ws_send, ws_until, Ws, QUIET};
use redis_support::{Chatlab, RedisServer};

/// Sends `{"ref", "text"}` on an `ack=1` socket and returns the answer naming that `ref` (an ack or an error).
async fn send_acked(socket: &mut Ws, reference: &str, text: &str) -> Value {
    ws_send(socket, &json!({"ref": reference, "text": text}).to_string()).await;
    ws_until(socket, "an answer to the send", |frame| {
        (frame["type"] == "ack" || frame["type"] == "error") && frame["ref"] == reference
    })
    .await
}

/// The chat messages with this text among `frames`.
fn count(frames: &[Value], kind: &str, text: &str) -> usize {
    frames.iter().filter(|f| f["type"] == kind && f["message"] == text).count()
}

/// Reads a socket's frames until one is the `kind` event with this text, then for a while longer, until it is
/// quiet: every frame read.
async fn listen_for(socket: &mut Ws, kind: &str, text: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    while !frames.last().is_some_and(|f: &Value| f["type"] == kind && f["message"] == text) {
        frames.push(ws_next(socket).await);
    }
    while let Ok(Some(Ok(Message::Text(frame)))) = tokio::time::timeout(QUIET, socket.next()).await {
        frames.push(serde_json::from_str(&frame).unwrap());
    }
    frames
}

/// `POST /api/sessions` to `base`: the answer.
async fn join(base: &str, transport: &str) -> Value {
    let response = http().post(format!("{base}/api/sessions")).json(&json!({"transport": transport})).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// A GET to `base`: status and JSON.
async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = http().get(format!("{base}{path}")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every event the room retains, read by a new poller from `since=0`.
async fn retained(base: &str) -> Vec<Value> {
    let joined = join(base, "poll").await;
    let (status, body) = get(base, &format!("/api/poll?session={}&since=0", joined["session"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// An ack carries the `seq` of the event, as another participant sees it; the sender's own channel brings the
/// same event; plain `/ws` (no `ack=1`) answers nothing to a text it accepts.
#[tokio::test]
async fn an_ack_carries_the_seq_another_participant_sees() {
    let server = common::start().await;
    let mut listener = ws(&server.ws_url("/ws")).await;
    ws_next(&mut listener).await;
    let mut sender = ws(&server.ws_url("/ws?ack=1")).await;
    let welcome = ws_next(&mut sender).await;
    assert_eq!(welcome["type"], "welcome");

    // The sender's own line comes once it is numbered, the ack once it is kept: in either order.
    ws_send(&mut sender, &json!({"ref": "r-1", "text": "hello, acked"}).to_string()).await;
    let (mut ack, mut echo) = (Value::Null, Value::Null);
    while ack.is_null() || echo.is_null() {
        let frame = ws_next(&mut sender).await;
        if frame["ref"] == "r-1" {
            ack = frame;
        } else if frame["message"] == "hello, acked" {
            echo = frame;
        }
    }
    assert_eq!(ack["type"], "ack", "{ack}");
    let seq = ack["seq"].as_u64().expect("the ack names a seq");
    let seen = ws_until(&mut listener, "the line", |f| f["message"] == "hello, acked").await;
    assert_eq!(seen["seq"], seq, "the ack's seq is the event's");
    assert_eq!(echo["seq"], seq);
    assert_eq!(echo["id"], welcome["id"]);

    ws_send(&mut listener, "plain text").await;
    let line = ws_until(&mut listener, "the plain line", |f| f["message"] == "plain text").await;
    assert_eq!(line["type"], "message");
    ws_quiet(&mut listener).await;
}

/// A `ref` sent again, on the same socket or after a reconnect, answers the first `seq` and publishes nothing:
/// a listener sees the line once; the same for `/nick` (a resent old rename does not rename back).
#[tokio::test]
async fn a_repeated_ref_answers_the_same_seq_and_publishes_nothing() {
    let server = common::start().await;
    let mut listener = ws(&server.ws_url("/ws")).await;
    ws_next(&mut listener).await;
    let mut sender = ws(&server.ws_url("/ws?ack=1")).await;
    let session = ws_next(&mut sender).await["session"].as_str().unwrap().to_owned();

    let first = send_acked(&mut sender, "r-1", "only once").await["seq"].as_u64().unwrap();
    let again = send_acked(&mut sender, "r-1", "only once").await;
    assert_eq!((again["type"].as_str(), again["seq"].as_u64()), (Some("ack"), Some(first)));
    let renamed = send_acked(&mut sender, "r-2", "/nick ackbob").await["seq"].as_u64().unwrap();
    let later = send_acked(&mut sender, "r-3", "/nick ackcarol").await["seq"].as_u64().unwrap();

    // A new connection of the same session resends what it was not sure of.
    drop(sender);
    let mut sender = ws(&server.ws_url(&format!("/ws?ack=1&session={session}"))).await;
    ws_next(&mut sender).await;
    assert_eq!(send_acked(&mut sender, "r-1", "only once").await["seq"], first);
    assert_eq!(send_acked(&mut sender, "r-2", "/nick ackbob").await["seq"], renamed, "the first rename's seq");

    let frames = listen_for(&mut listener, "nick_update", "用户 ackbob 改名为: ackcarol").await;
    assert_eq!(count(&frames, "message", "only once"), 1, "the listener saw the line once: {frames:#?}");
    assert_eq!(frames.iter().filter(|f| f["type"] == "nick_update").count(), 2, "two renames: {frames:#?}");
    let history = retained(&server.url("")).await;
    assert_eq!(count(&history, "message", "only once"), 1, "one line: {history:#?}");
    let renames: Vec<&Value> = history.iter().filter(|e| e["type"] == "nick_update").collect();
    assert_eq!(renames.len(), 2, "two renames, not three: {renames:#?}");
    assert_eq!(renames[1]["seq"], later);
    let (_, presence) = get(&server.url(""), "/api/presence").await;
    let names: Vec<&str> =
        presence["participants"].as_array().unwrap().iter().map(|p| p["nickname"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"ackcarol") && !names.contains(&"ackbob"),
        "the resent rename did not rename back: {names:?}"
    );
}

/// `Idempotency-Key` on `POST /api/messages`: the same key of the same session answers the first `seq` and
/// publishes nothing; another session's same key is its own send; no key, no de-duplication.
#[tokio::test]
async fn an_idempotency_key_answers_the_same_seq_and_publishes_once() {
    let server = common::start().await;
    let base = server.url("");
    let mut listener = ws(&server.ws_url("/ws")).await;
    ws_next(&mut listener).await;
    let (one, two) = (join(&base, "sse").await, join(&base, "poll").await);
    let (one, two) = (one["session"].as_str().unwrap(), two["session"].as_str().unwrap());

    let (status, first) = post_keyed(&base, one, Some("key-1"), "posted once").await;
    assert_eq!(status, 202, "{first}");
    let seq = first["seq"].as_u64().unwrap();
    let (status, again) = post_keyed(&base, one, Some("key-1"), "posted once").await;
    assert_eq!((status, again["seq"].as_u64()), (202, Some(seq)), "the first send's seq: {again}");
    let (_, other) = post_keyed(&base, two, Some("key-1"), "posted once").await;
    assert!(other["seq"].as_u64().unwrap() > seq, "another session's key is another send");
    post_keyed(&base, one, None, "posted once").await;

    let frames = listen_for(&mut listener, "message", "posted once").await;
    assert_eq!(count(&frames, "message", "posted once"), 3, "one keyed, one of another session, one unkeyed");
    assert_eq!(count(&retained(&base).await, "message", "posted once"), 3);
}

/// Bad frames and keys are refused with errors (naming the `ref` when one could be read), publish nothing, and
/// leave the connection usable; a bad `ack=` or `Idempotency-Key` is a `400` JSON.
#[tokio::test]
async fn bad_frames_and_keys_are_refused_and_change_nothing() {
    let server = common::start_with(Config { max_ref_bytes: 16, ..common::config() }).await;
    let base = server.url("");
    let mut listener = ws(&server.ws_url("/ws")).await;
    ws_next(&mut listener).await;
    let mut sender = ws(&server.ws_url("/ws?ack=1")).await;
    let session = ws_next(&mut sender).await["session"].as_str().unwrap().to_owned();
    listen_for(&mut listener, "notification", "游客2 来了").await;
    listen_for(&mut sender, "notification", "游客2 来了").await;

    let cases: [(&str, Option<&str>, &str); 9] = [
        ("hello", None, "bad_request"),
        ("[1,2]", None, "bad_request"),
        (r#"{"text":"no ref"}"#, None, "bad_request"),
        (r#"{"ref":5,"text":"a number"}"#, None, "bad_request"),
        (r#"{"ref":"no-text"}"#, Some("no-text"), "bad_request"),
        (r#"{"ref":"","text":"empty ref"}"#, Some(""), "bad_request"),
        (r#"{"ref":"0123456789abcdefg","text":"long ref"}"#, Some("0123456789abcdefg"), "bad_request"),
        (r#"{"ref":"é","text":"not ascii"}"#, Some("é"), "bad_request"),
        (r#"{"ref":"blank","text":"   "}"#, Some("blank"), "empty_text"),
    ];
    for (frame, reference, code) in cases {
        ws_send(&mut sender, frame).await;
        let error = ws_next(&mut sender).await;
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some(code)), "{frame}: {error}");
        assert_eq!(error.get("ref").and_then(Value::as_str), reference, "{frame}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws_quiet(&mut listener).await;
    let ack = send_acked(&mut sender, "fine", "still open").await;
    assert_eq!(ack["type"], "ack", "the connection still works: {ack}");
    listen_for(&mut listener, "message", "still open").await;

    let (status, body) = get(&base, "/ws?ack=2").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    for key in ["", "0123456789abcdefg", "tab\there"] {
        let (status, body) = post_keyed(&base, &session, Some(key), "bad key").await;
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "key {key:?}: {body}");
    }
    let response = http()
        .post(format!("{base}/api/messages?session={session}"))
        .header("idempotency-key", reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
        .body("bad key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    ws_quiet(&mut listener).await;
    assert_eq!(count(&retained(&base).await, "message", "bad key"), 0);
}

/// The same `Idempotency-Key` sent to two processes sharing a real Redis, at once: one event, one `seq` for both.
#[tokio::test]
async fn the_same_key_on_two_processes_publishes_once() {
    let Some(redis) = RedisServer::start_or_skip("the_same_key_on_two_processes_publishes_once") else { return };
    let (a, b) = (chatlab(&redis, &[]), chatlab(&redis, &[]));
    let (base_a, base_b) = (a.url(""), b.url(""));
    let joined = join(&base_a, "sse").await;
    let session = joined["session"].as_str().unwrap();
    for round in 0..20 {
        let key = format!("race-{round}");
        let text = format!("raced {round}");
        let (one, two) = tokio::join!(
            post_keyed(&base_a, session, Some(&key), &text),
            post_keyed(&base_b, session, Some(&key), &text)
        );
        assert_eq!((one.0, two.0), (202, 202));
        assert_eq!(one.1["seq"], two.1["seq"], "round {round}: one seq for both");
    }
    let history = retained(&base_b).await;
    for round in 0..20 {
        assert_eq!(count(&history, "message", &format!("raced {round}")), 1, "round {round}");
    }
}

/// `kill -9` of a Redis-backed process between a send on `/ws?ack=1` and its ack: the client resends the same
/// `ref` to another process, and the room holds the line exactly once, whether or not the dead process had
/// published it.
#[tokio::test]
async fn a_send_resent_after_kill_9_is_in_the_room_once() {
    let Some(redis) = RedisServer::start_or_skip("a_send_resent_after_kill_9_is_in_the_room_once") else { return };
    let survivor = chatlab(&redis, &[]);
    let mut listener = ws(&survivor.ws_url("/ws")).await;
    ws_next(&mut listener).await;
    for round in 0..3u64 {
        let mut doomed = chatlab(&redis, &[]);
        let mut sender = ws(&doomed.ws_url("/ws?ack=1")).await;
        let session = ws_next(&mut sender).await["session"].as_str().unwrap().to_owned();
        let (reference, text) = (format!("last-words-{round}"), format!("the last line {round}"));
        ws_send(&mut sender, &json!({"ref": reference, "text": text}).to_string()).await;
        // Killed before the ack is read (round 0 at once; later rounds after a moment, so both orders happen).
        tokio::time::sleep(Duration::from_millis(round * 5)).await;
        doomed.kill();
        drop(sender);

        let mut resumed = ws(&survivor.ws_url(&format!("/ws?ack=1&session={session}"))).await;
        assert_eq!(ws_next(&mut resumed).await["type"], "welcome");
        let ack = send_acked(&mut resumed, &reference, &text).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let seen = listen_for(&mut listener, "message", &text).await;
        assert_eq!(count(&seen, "message", &text), 1, "round {round}: the listener saw it once");
        let line = seen.iter().find(|f| f["message"] == text.as_str()).unwrap();
        assert_eq!(line["seq"], ack["seq"], "the ack names the one event");
        let history = retained(&survivor.url("")).await;
        assert_eq!(count(&history, "message", &text), 1, "round {round}: exactly once in the room");
    }
}

/// The epoch is in the join's `201`, in the welcome of `/ws` and SSE, and in every poll and long-poll answer:
/// the same one throughout a room's life.
#[tokio::test]
async fn the_epoch_is_in_joins_welcomes_and_poll_answers() {
    let server = common::start().await;
    let base = server.url("");
    let joined = join(&base, "sse").await;
    let epoch = joined["epoch"].as_str().expect("the join names the epoch").to_owned();
    assert!(!epoch.is_empty());
    let session = joined["session"].as_str().unwrap();

    let mut socket = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut socket).await["epoch"], epoch.as_str(), "a /ws welcome");
    let mut stream = common::sse(&server, &format!("/api/sse?session={session}"), None).await;
    assert_eq!(stream.data().await["epoch"], epoch.as_str(), "an SSE welcome");
    for path in [
        format!("/api/poll?session={session}"),
        format!("/api/poll?session={session}&since=0&presence=1"),
        format!("/api/longpoll?session={session}&timeout=0"),
        format!("/api/longpoll?session={session}&since=0&timeout=1"),
    ] {
        let (status, body) = get(&base, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["epoch"], epoch.as_str(), "{path}: {body}");
    }
    // Given back with a cursor of this epoch, it changes nothing.
    let (_, body) = get(&base, &format!("/api/poll?session={session}&since=0&epoch={epoch}")).await;
    assert!(body["events"].as_array().unwrap().iter().all(|e| e["type"] != "gap"), "{body}");
    assert_eq!(body["epoch"], epoch.as_str());
}

/// A restarted in-memory server is a new process and a new epoch: a cursor of the old one, on a poll, a long
/// poll, SSE or `/ws`, gets a `gap` with `"reason":"epoch"`, then the retained events from the oldest.
#[tokio::test]
async fn a_cursor_from_before_a_restart_gets_an_epoch_gap_then_the_room_from_its_oldest() {
    let mut first = Chatlab::spawn(binary(), &["--broker", "memory", "--rate-limit", "0"]);
    let old = join(&first.url(""), "poll").await;
    let old_epoch = old["epoch"].as_str().unwrap().to_owned();
    let old_session = old["session"].as_str().unwrap();
    for i in 0..30 {
        assert_eq!(post_keyed(&first.url(""), old_session, None, &format!("before {i}")).await.0, 202);
    }
    let old_cursor = 31;
    first.kill();

    let second = Chatlab::spawn(binary(), &["--broker", "memory", "--rate-limit", "0"]);
    let base = second.url("");
    let speaker = join(&base, "poll").await;
    assert_ne!(speaker["epoch"].as_str().unwrap(), old_epoch, "a new process, a new epoch");
    let new_epoch = speaker["epoch"].as_str().unwrap().to_owned();
    post_keyed(&base, speaker["session"].as_str().unwrap(), None, "after the restart").await;

    let check = |events: &[Value], what: &str| {
        let gap = &events[0];
        assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("epoch")), "{what}: {events:#?}");
        assert_eq!(gap["epoch"], new_epoch.as_str(), "{what}");
        assert_eq!(gap["to"], 0, "{what}: the room follows from its first event");
        assert!(gap["from"].is_u64() && gap["message"].is_string(), "{what}: the gap's fields: {gap}");
        assert_eq!(events[1]["seq"], 1, "{what}: from the oldest retained event");
        assert!(count(events, "message", "after the restart") == 1, "{what}: {events:#?}");
    };
    let lister = join(&base, "poll").await;
    let lister = lister["session"].as_str().unwrap();
    for path in [
        format!("/api/poll?session={lister}&since={old_cursor}&epoch={old_epoch}"),
        format!("/api/longpoll?session={lister}&since={old_cursor}&epoch={old_epoch}&timeout=5"),
        format!("/api/longpoll?session={lister}&since=2&epoch={old_epoch}&timeout=0"),
    ] {
        let (status, body) = get(&base, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        check(body["events"].as_array().unwrap(), &path);
        assert_eq!(body["epoch"], new_epoch.as_str());
    }

    let mut socket = ws(&second.ws_url(&format!("/ws?since={old_cursor}&epoch={old_epoch}"))).await;
    let welcome = ws_next(&mut socket).await;
    assert_eq!(welcome["epoch"], new_epoch.as_str());
    check(&listen_for(&mut socket, "message", "after the restart").await, "/ws");

    let response = http()
        .get(format!("{base}/api/sse?session={lister}&since={old_cursor}&epoch={old_epoch}"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();
    let mut body = String::new();
    let mut response = response;
    assert_eq!(response.status(), 200);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_millis(500), response.chunk()).await {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let frames: Vec<Value> =
        body.lines().filter_map(|line| line.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(frames[0]["type"], "welcome");
    check(&frames[1..], "sse");
}

/// A wiped Redis (`FLUSHALL`) is a new epoch: a new channel's welcome names it, and a cursor of the old epoch
/// gets the epoch gap.
#[tokio::test]
async fn a_wiped_redis_changes_the_epoch_a_new_channel_sees() {
    let Some(redis) = RedisServer::start_or_skip("a_wiped_redis_changes_the_epoch_a_new_channel_sees") else { return };
    let process = chatlab(&redis, &[]);
    let mut before = ws(&process.ws_url("/ws")).await;
    let old = ws_next(&mut before).await;
    let old_epoch = old["epoch"].as_str().unwrap().to_owned();
    drop(before);

    redis.flushall();
    let mut after = ws(&process.ws_url("/ws")).await;
    let welcome = ws_next(&mut after).await;
    assert_eq!(welcome["type"], "welcome");
    let new_epoch = welcome["epoch"].as_str().unwrap();
    assert_ne!(new_epoch, old_epoch, "a wiped store, a new epoch");
    let joined = join(&process.url(""), "poll").await;
    assert_eq!(joined["epoch"], new_epoch, "the join says the same");
    let session = joined["session"].as_str().unwrap();
    let (_, body) = get(&process.url(""), &format!("/api/poll?session={session}&since=1&epoch={old_epoch}")).await;
    let gap = &body["events"][0];
    assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("epoch")), "{body}");
    assert_eq!(body["epoch"], new_epoch);
}

/// A live channel that catches up from history after an outage, and finds Redis wiped meanwhile, is told the room
/// started over (the epoch `gap`), then follows the new room from its first event.
#[tokio::test]
async fn a_live_channel_that_catches_up_after_a_wipe_is_told_of_the_new_epoch() {
    let test = "a_live_channel_that_catches_up_after_a_wipe_is_told_of_the_new_epoch";
    let Some(redis) = RedisServer::start_or_skip(test) else { return };
    let process = chatlab(&redis, &[]);
    let mut socket = ws(&process.ws_url("/ws")).await;
    let old_epoch = ws_next(&mut socket).await["epoch"].as_str().unwrap().to_owned();
    ws_send(&mut socket, "before the wipe").await;
    listen_for(&mut socket, "message", "before the wipe").await;

    redis.flushall();
    redis.kill_pubsub_clients();
    let gap = ws_until(&mut socket, "the epoch gap", |f| f["type"] == "gap").await;
    assert_eq!(gap["reason"], "epoch", "{gap}");
    assert_ne!(gap["epoch"].as_str().unwrap(), old_epoch);
    assert_eq!(gap["to"], 0, "the new room follows from its first event");
    let joined = join(&process.url(""), "poll").await;
    assert_eq!(joined["epoch"], gap["epoch"]);
    let notice = ws_until(&mut socket, "the next join", |f| f["type"] == "notification").await;
    assert_eq!(notice["seq"], 1, "the new room's first event: {notice}");
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chatlab"))
}

/// A chatlab process on the room in `redis`, rate limit off.
fn chatlab(redis: &RedisServer, extra: &[&str]) -> Chatlab {
    let url = redis.url();
    let mut args = vec!["--broker", url.as_str(), "--rate-limit", "0", "--shutdown-grace", "1"];
    args.extend_from_slice(extra);
    Chatlab::spawn(binary(), &args)
}

/// Frames sent without waiting (posted in batches, one commit each with the durable room) are each answered, in
/// the order they were sent: acks with consecutive seqs, a repeated `ref` with its first seq, refusals (bad JSON,
/// a bad `ref`, an empty text) naming their `ref` in their place.
async fn frames_sent_at_once_are_answered_in_order(server: common::Server) {
    let mut sender = ws(&server.ws_url("/ws?ack=1")).await;
    ws_next(&mut sender).await;
    let mut frames: Vec<(String, &str)> = Vec::new();
    for i in 0..60 {
        let reference = format!("b-{i}");
        let frame = match i % 10 {
            3 => "not json".to_owned(),
            5 => json!({"ref": "", "text": "bad ref"}).to_string(),
            7 => json!({"ref": reference, "text": "  "}).to_string(),
            8 => json!({"ref": "b-0", "text": "line 0"}).to_string(),
            _ => json!({"ref": reference, "text": format!("line {i}")}).to_string(),
        };
        let expected = match i % 10 {
            3 | 5 | 7 => "error",
            _ => "ack",
        };
        frames.push((frame, expected));
    }
    for (frame, _) in &frames {
        ws_send(&mut sender, frame).await;
    }
    let mut answers = Vec::new();
    while answers.len() < frames.len() {
        let frame = ws_next(&mut sender).await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            answers.push(frame);
        }
    }
    let kinds: Vec<&str> = answers.iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, frames.iter().map(|(_, kind)| *kind).collect::<Vec<_>>(), "{answers:#?}");
    let mut last = 0;
    for (i, answer) in answers.iter().enumerate() {
        match i % 10 {
            3 | 5 => {}
            8 => assert_eq!(answer["seq"], answers[0]["seq"], "a repeated ref answers the first seq"),
            _ => {
                assert_eq!(answer["ref"], format!("b-{i}"), "{answer}");
                if answer["type"] == "ack" {
                    let seq = answer["seq"].as_u64().unwrap();
                    assert!(seq > last, "acks in order: {answers:#?}");
                    last = seq;
                }
            }
        }
    }
    let history = retained(&server.url("")).await;
    assert_eq!(count(&history, "message", "line 0"), 1, "the repeated ref published once");
}

#[tokio::test]
async fn frames_sent_at_once_are_answered_in_order_in_memory() {
    frames_sent_at_once_are_answered_in_order(common::start().await).await;
}

#[tokio::test]
async fn frames_sent_at_once_are_answered_in_order_durable() {
    let dir = common::temp::TempDir::new("ack-batch");
    let config = Config { broker: "durable".into(), data_dir: dir.path().join("data"), ..common::config() };
    frames_sent_at_once_are_answered_in_order(common::start_with(config).await).await;
}
