//! The durable room (the default broker): what a restart or a crash keeps, and the data directories it refuses.
//!
//! Store-level tests close and reopen a `DurableBroker` in a temporary directory. Process-level tests spawn the
//! built binary (`CARGO_BIN_EXE_chatlab`) on a temporary `--data-dir`, kill it (`kill -9`) or stop it (SIGTERM)
//! in the middle of a burst of texts, and start it again on the same directory. Every receive has a timeout.

use crate::common;
use crate::redis_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use chatlab::broker::durable::{StoreError, StoreOptions};
use chatlab::broker::DurableBroker;
use chatlab::config::Config;
use chatlab::core::Broker;
use chatlab::model::Missed;
use chatlab::model::SessionRecord;
use chatlab::model::{now_ms, Draft, EventKind};
use common::temp::TempDir;
use common::{http, post_keyed, ws, ws_next, ws_send};
use redis_support::Chatlab;

fn draft(message: &str) -> Draft {
    Draft::new(EventKind::Message, "u1".into(), "游客1".into(), message.into())
}

fn session(token: &str, guest: u64) -> SessionRecord {
    common::session_record(token, 1_000 + guest, guest)
}

/// Closed and opened again, a store has the room as it was: the retained events byte for byte, the head, the
/// sessions with their nicknames, cursors and leases, the guest counter and the epoch; numbering goes on.
#[tokio::test]
async fn a_reopened_store_has_the_room_as_it_was() {
    let dir = TempDir::new("reopen");
    let lease = now_ms() + 60_000;
    let (stored, epoch) = {
        let broker = DurableBroker::open(dir.path(), 5).unwrap();
        for i in 1..=7 {
            broker.publish(draft(&format!("m{i}"))).await.unwrap();
        }
        assert_eq!((broker.next_guest().await.unwrap(), broker.next_guest().await.unwrap()), (1, 2));
        broker.create_session(&session("a", 1), lease, 100).await.unwrap();
        broker.create_session(&session("b", 2), lease, 100).await.unwrap();
        assert!(broker.save_session(&SessionRecord { nickname: "alice".into(), ..session("a", 1) }).await.unwrap());
        broker.save_cursor("a", 6, lease + 5_000).await.unwrap();
        broker.remove_session("b").await.unwrap();
        let stored: Vec<_> = broker.since(0, 100).await.unwrap().events.iter().map(|e| e.json.clone()).collect();
        (stored, broker.epoch().to_owned())
        // Dropped here: the writer's last commit writes the cursor move it was holding.
    };
    let broker = DurableBroker::open(dir.path(), 5).unwrap();
    assert_eq!(broker.epoch(), epoch, "the same room");
    let backlog = broker.since(0, 100).await.unwrap();
    assert_eq!((backlog.head, backlog.missed), (7, Some(Missed::Gap { from: 1, to: 2 })));
    assert_eq!(backlog.events.iter().map(|e| e.json.clone()).collect::<Vec<_>>(), stored, "the same bytes");
    assert_eq!(
        broker.session("a").await.unwrap(),
        Some(SessionRecord { nickname: "alice".into(), cursor: 6, ..session("a", 1) })
    );
    assert_eq!(broker.session("b").await.unwrap(), None, "a removed session stays removed");
    assert!(broker.expire(lease + 4_000).await.unwrap().is_empty(), "the lease as it was renewed");
    assert_eq!(broker.expire(lease + 5_001).await.unwrap().len(), 1);
    assert_eq!(broker.next_guest().await.unwrap(), 3, "guest numbers go on");
    assert_eq!(broker.publish(draft("m8")).await.unwrap().seq, 8, "and so does the sequence");
}

/// A publisher numbers a batch while the one before it syncs: every batch is numbered (and readable) before any
/// is awaited as durable, with consecutive numbers; once a later batch is durable every earlier one is too; and
/// all of them are in the store once it is reopened.
#[tokio::test]
async fn batches_are_numbered_before_they_are_durable_and_made_durable_in_order() {
    let dir = TempDir::new("sequence");
    {
        let broker = DurableBroker::open(dir.path(), 1_000).unwrap();
        let mut batches = Vec::new();
        for b in 0..20 {
            let sends = (0..5).map(|i| (draft(&format!("b{b}-{i}")), None)).collect();
            batches.push(broker.sequence_all(sends).await.unwrap());
        }
        let seqs: Vec<u64> = batches.iter().flat_map(|b| b.published.iter().map(|p| p.seq())).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "numbered consecutively, in order");
        assert_eq!(broker.since(0, 1_000).await.unwrap().events.len(), 100, "readers have them all");
        let last = batches.pop().unwrap();
        last.durable.wait().await.unwrap();
        for (b, batch) in batches.into_iter().enumerate() {
            let ready = batch.durable.wait().now_or_never();
            assert!(matches!(ready, Some(Ok(()))), "batch {b} is durable once a later one is: {ready:?}");
        }
    }
    let broker = DurableBroker::open(dir.path(), 1_000).unwrap();
    let messages: Vec<String> =
        broker.since(0, 1_000).await.unwrap().events.iter().map(|e| e.body().draft.message).collect();
    let sent: Vec<String> = (0..20).flat_map(|b| (0..5).map(move |i| format!("b{b}-{i}"))).collect();
    assert_eq!(messages, sent);
}

/// An in-process server on the durable room in `dir`, with `config`'s other settings.
async fn durable_server(dir: &TempDir, config: Config) -> common::Server {
    common::start_with(Config { broker: "durable".into(), data_dir: dir.path().join("data"), ..config }).await
}

/// A `/ws?ack=1` sender that sends its next text as soon as it reads its previous one back (never waiting for an
/// ack): its next text is numbered and delivered while the previous one syncs, so some text comes back before
/// the ack of the one before it, which a connection that numbers a batch only once the previous one is answered
/// never shows. Every ack comes once, in order, with the seq its text was delivered with.
#[tokio::test]
async fn an_acked_sender_is_numbered_while_its_previous_texts_sync() {
    let dir = TempDir::new("overlap");
    let server = durable_server(&dir, common::config()).await;
    let mut socket = ws(&server.ws_url("/ws?ack=1")).await;
    assert_eq!(ws_next(&mut socket).await["type"], "welcome");
    const TEXTS: usize = 200;
    let mut frames = Vec::new();
    for i in 0..TEXTS {
        ws_send(&mut socket, &format!(r#"{{"ref":"r{i}","text":"t{i}"}}"#)).await;
        loop {
            let frame = ws_next(&mut socket).await;
            let back = frame["message"] == format!("t{i}");
            frames.push(frame);
            if back {
                break;
            }
        }
    }
    while !frames.iter().any(|f| f["type"] == "ack" && f["ref"] == format!("r{}", TEXTS - 1)) {
        frames.push(ws_next(&mut socket).await);
    }
    let acks: Vec<(usize, &Value)> = frames.iter().enumerate().filter(|(_, f)| f["type"] == "ack").collect();
    let refs: Vec<&str> = acks.iter().map(|(_, f)| f["ref"].as_str().unwrap()).collect();
    assert_eq!(refs, (0..TEXTS).map(|i| format!("r{i}")).collect::<Vec<_>>(), "each ack once, in order");
    let echo = |i: usize| frames.iter().position(|f| f["message"] == format!("t{i}")).unwrap();
    for (i, (_, ack)) in acks.iter().enumerate() {
        assert_eq!(ack["seq"], frames[echo(i)]["seq"], "ack {i} names the seq its text was delivered with");
    }
    assert!(acks.windows(2).all(|pair| pair[1].1["seq"].as_u64() > pair[0].1["seq"].as_u64()), "seqs increase");
    let overlapping = (1..TEXTS).filter(|&i| echo(i) < acks[i - 1].0).count();
    assert!(overlapping > 0, "no text was delivered before the ack of the one before it");
    println!("{overlapping} of {TEXTS} texts were delivered before the previous text's ack");
}

/// `--ws-outbox-max`: a client that sends far more than the bound without reading is held back, not dropped.
/// At every ack, the client's texts it has seen delivered and not yet acknowledged are at most the bound (a
/// frame is read only while fewer are unanswered); every text is acknowledged, once, in order, and kept; the
/// connection stays open.
#[tokio::test]
async fn a_sender_over_the_outbox_bound_is_held_back_and_loses_nothing() {
    const MAX: u64 = 2;
    const TEXTS: usize = 300;
    let dir = TempDir::new("outbox");
    let server = durable_server(&dir, Config { ws_outbox_max: MAX, ..common::config() }).await;
    let socket = ws(&server.ws_url("/ws?ack=1")).await;
    let (mut sink, mut stream) = socket.split();
    let welcome: Value = match stream.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).unwrap(),
        other => panic!("{other:?}"),
    };
    let writer = tokio::spawn(async move {
        for i in 0..TEXTS {
            let frame = format!(r#"{{"ref":"r{i}","text":"t{i}"}}"#);
            sink.feed(Message::Text(frame.into())).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    let (mut delivered, mut acked, mut most) = (0u64, Vec::new(), 0u64);
    while acked.len() < TEXTS {
        let frame = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("frames keep coming");
        let Some(Ok(Message::Text(frame))) = frame else { panic!("the connection ended: {frame:?}") };
        let frame: Value = serde_json::from_str(&frame).unwrap();
        match frame["type"].as_str() {
            Some("ack") => {
                // A text's own delivery may also come after its ack (a paced channel): then none is counted.
                let unanswered = delivered.saturating_sub(acked.len() as u64);
                assert!(unanswered <= MAX, "{unanswered} texts delivered and not answered at an ack");
                most = most.max(unanswered);
                acked.push((frame["ref"].as_str().unwrap().to_owned(), frame["seq"].as_u64().unwrap()));
            }
            Some("error") => panic!("refused: {frame}"),
            _ if frame["message"].as_str().is_some_and(|m| m.starts_with('t')) => delivered += 1,
            _ => {}
        }
    }
    let refs: Vec<&str> = acked.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(refs, (0..TEXTS).map(|i| format!("r{i}")).collect::<Vec<_>>(), "each ack once, in order");
    assert!(acked.windows(2).all(|pair| pair[1].1 > pair[0].1), "seqs increase");
    println!("at most {most} texts delivered and not yet answered at an ack (bound {MAX})");

    // Still open: one more text is answered.
    let mut socket = writer.await.unwrap().reunite(stream).unwrap();
    ws_send(&mut socket, r#"{"ref":"last","text":"last"}"#).await;
    let last = loop {
        let frame = ws_next(&mut socket).await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!((&last["type"], &last["ref"]), (&Value::from("ack"), &Value::from("last")), "{last}");
    let reader = common::join(&server, "poll").await.session;
    let (mut texts, mut since) = (Vec::new(), 0);
    loop {
        let (events, next) = common::poll(&server, &format!("/api/poll?session={reader}&since={since}")).await;
        if events.is_empty() {
            break;
        }
        let sent = events.iter().filter(|e| e["id"] == welcome["id"] && e["type"] == "message");
        texts.extend(sent.filter_map(|e| e["message"].as_str().map(str::to_owned)));
        since = next;
    }
    let mut sent: Vec<String> = (0..TEXTS).map(|i| format!("t{i}")).collect();
    sent.push("last".into());
    assert_eq!(texts, sent, "every text, in order");
}

/// `--history` trims the store too: reopened with a smaller history, the older events are gone from disk, and a
/// larger history later does not bring them back.
#[tokio::test]
async fn the_history_is_trimmed_on_disk() {
    let dir = TempDir::new("trim");
    async fn seqs(broker: &DurableBroker) -> Vec<u64> {
        broker.since(0, 100).await.unwrap().events.iter().map(|e| e.seq).collect()
    }
    {
        let broker = DurableBroker::open(dir.path(), 10).unwrap();
        for i in 1..=10 {
            broker.publish(draft(&format!("m{i}"))).await.unwrap();
        }
    }
    {
        let broker = DurableBroker::open(dir.path(), 3).unwrap();
        assert_eq!(seqs(&broker).await, vec![8, 9, 10]);
        broker.publish(draft("m11")).await.unwrap();
        assert_eq!(seqs(&broker).await, vec![9, 10, 11]);
    }
    let broker = DurableBroker::open(dir.path(), 10).unwrap();
    assert_eq!(seqs(&broker).await, vec![9, 10, 11], "what was trimmed is gone from the store");
    assert_eq!(broker.since(0, 10).await.unwrap().missed, Some(Missed::Gap { from: 1, to: 8 }));
}

/// Every new store gets an epoch of its own; it stays with the store.
#[tokio::test]
async fn a_new_store_has_a_new_epoch() {
    let (one, two) = (TempDir::new("epoch-a"), TempDir::new("epoch-b"));
    let first = DurableBroker::open(one.path(), 10).unwrap().epoch().to_owned();
    let second = DurableBroker::open(two.path(), 10).unwrap().epoch().to_owned();
    assert!(!first.is_empty() && first != second, "{first} vs {second}");
    assert_eq!(DurableBroker::open(one.path(), 10).unwrap().epoch(), first);
}

/// A directory in use is refused to a second opener until the first lets it go.
#[tokio::test]
async fn a_directory_in_use_is_refused_until_released() {
    let dir = TempDir::new("locked");
    let first = DurableBroker::open(dir.path(), 10).unwrap();
    first.publish(draft("mine")).await.unwrap();
    let second = DurableBroker::open(dir.path(), 10);
    assert!(matches!(second, Err(StoreError::Locked(_))), "{:?}", second.err());
    drop(first);
    let third = DurableBroker::open(dir.path(), 10).unwrap();
    assert_eq!(third.head().await.unwrap(), 1);
}

/// A file where the directory should be, a newer format, a directory of other files or a damaged `FORMAT` are
/// refused, and left as they were.
#[tokio::test]
async fn unusable_directories_are_refused_and_left_alone() {
    let dir = TempDir::new("unusable");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    assert!(matches!(DurableBroker::open(&file, 10), Err(StoreError::NotADirectory(_))));

    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(newer.join("FORMAT"), "chatlab-store 99\n").unwrap();
    assert!(matches!(DurableBroker::open(&newer, 10), Err(StoreError::Newer { found: 99, .. })));
    assert!(!newer.join("room.redb").exists(), "nothing written");
    assert_eq!(std::fs::read_to_string(newer.join("FORMAT")).unwrap(), "chatlab-store 99\n");

    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    assert!(matches!(DurableBroker::open(&foreign, 10), Err(StoreError::Foreign(_))));
    assert!(!foreign.join("room.redb").exists() && !foreign.join("FORMAT").exists(), "nothing written");

    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    std::fs::write(damaged.join("FORMAT"), "something else").unwrap();
    assert!(matches!(DurableBroker::open(&damaged, 10), Err(StoreError::Damaged { .. })));
}

// ---- the binary ----

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chatlab"))
}

/// Joins over HTTP with `transport`; the `201` body.
async fn join_at(server: &Chatlab, transport: &str) -> Value {
    let body = format!(r#"{{"transport":"{transport}"}}"#);
    let response = http().post(server.url("/api/sessions")).body(body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// Posts a text; the status and, for a `202`, the seq.
async fn post_at(server_url: &str, session: &str, text: &str) -> Result<(u16, Option<u64>), reqwest::Error> {
    let response = http()
        .post(format!("{server_url}/api/messages?session={session}"))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Ok((status, body["seq"].as_u64()))
}

/// Every retained event, read with `session`'s polls from the start (a page at a time).
async fn everything(server: &Chatlab, session: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut since = 0;
    loop {
        let url = server.url(&format!("/api/poll?session={session}&since={since}"));
        let response = http().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "the session is known");
        let body: Value = response.json().await.unwrap();
        let page = body["events"].as_array().unwrap().clone();
        since = body["next"].as_u64().unwrap();
        if page.is_empty() {
            return events;
        }
        events.extend(page.into_iter().filter(|e| e["seq"].is_u64()));
    }
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Term,
}

/// Starts the binary on a fresh `--data-dir`, with a renamed poller, an open WebSocket and four senders posting
/// as fast as they are answered; stops it `how` once some texts are acknowledged, with texts still in flight;
/// starts it again on the same directory, and checks that every acknowledged text is there with its seq, that a
/// new text gets a seq above every one seen before the stop, and that the sessions resume (same id, nickname and cursor) with no second join
/// notice.
async fn burst_then_restart(how: Stop) {
    let dir = TempDir::new(&format!("restart-{how:?}"));
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let args = [
        "--data-dir",
        data,
        "--rate-limit",
        "0",
        "--client-rate-limit",
        "0",
        "--max-sessions-per-client",
        "0",
        "--session-lease",
        "30",
    ];
    let mut server = Chatlab::spawn(binary(), &args);

    let poller = join_at(&server, "poll").await;
    let poller_session = poller["session"].as_str().unwrap().to_owned();
    assert_eq!(post_at(&server.url(""), &poller_session, "/nick alice").await.unwrap().0, 202);
    let mut socket = ws(&server.ws_url("/ws")).await;
    let welcome = ws_next(&mut socket).await;
    assert_eq!(welcome["type"], "welcome");
    let ws_session = welcome["session"].as_str().unwrap().to_owned();
    // The socket reads up to a text of its own sender, so its cursor is somewhere in the room.
    assert_eq!(post_at(&server.url(""), &ws_session, "from the socket").await.unwrap().0, 202);
    let mut ws_cursor = 0;
    while ws_cursor == 0 {
        let event = ws_next(&mut socket).await;
        if event["message"] == "from the socket" {
            ws_cursor = event["seq"].as_u64().unwrap();
        }
    }

    // A keyed POST and a `/ws?ack=1` frame, acknowledged before the stop: their keys must survive it.
    let (status, keyed) = post_keyed(&server.url(""), &poller_session, Some("crash-key"), "keyed once").await;
    assert_eq!(status, 202, "{keyed}");
    let keyed_seq = keyed["seq"].as_u64().unwrap();
    let mut acking = ws(&server.ws_url("/ws?ack=1")).await;
    let acking_welcome = ws_next(&mut acking).await;
    let acking_session = acking_welcome["session"].as_str().unwrap().to_owned();
    let epoch = acking_welcome["epoch"].clone();
    ws_send(&mut acking, r#"{"ref":"r-crash","text":"acked once"}"#).await;
    let ref_seq = loop {
        let frame = ws_next(&mut acking).await;
        if frame["type"] == "ack" {
            assert_eq!(frame["ref"], "r-crash");
            break frame["seq"].as_u64().unwrap();
        }
    };
    drop(acking);

    let acked = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let mut senders = Vec::new();
    for sender in 0..4 {
        let session = join_at(&server, "longpoll").await["session"].as_str().unwrap().to_owned();
        let (base, acked) = (server.url(""), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let text = format!("s{sender}-{i}");
                match post_at(&base, &session, &text).await {
                    Ok((202, Some(seq))) => acked.lock().unwrap().push((seq, text)),
                    _ => return,
                }
            }
        }));
    }
    // A WebSocket sender that does not wait for its acks (`/ws?ack=1`): a text is acknowledged once durable,
    // though readers see it before. The highest seq it reads is the highest any reader saw.
    let mut sender_socket = ws(&server.ws_url("/ws?ack=1")).await;
    ws_next(&mut sender_socket).await;
    let seen = Arc::new(Mutex::new(0u64));
    let socket_acks = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let socket_sender = {
        let (acked, seen, socket_acks) = (acked.clone(), seen.clone(), socket_acks.clone());
        tokio::spawn(async move {
            let (mut sink, mut stream) = sender_socket.split();
            let writer = tokio::spawn(async move {
                for i in 0..50_000 {
                    let frame = format!(r#"{{"ref":"w-{i}","text":"w-{i}"}}"#);
                    if sink.send(Message::Text(frame.into())).await.is_err() {
                        return;
                    }
                    if i % 16 == 15 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
            while let Ok(Some(Ok(Message::Text(frame)))) =
                tokio::time::timeout(Duration::from_secs(20), stream.next()).await
            {
                let event: Value = serde_json::from_str(&frame).unwrap();
                match (event["type"].as_str(), event["seq"].as_u64()) {
                    (Some("ack"), Some(seq)) => {
                        acked.lock().unwrap().push((seq, event["ref"].as_str().unwrap().to_owned()));
                        socket_acks.lock().unwrap().push((seq, event["ref"].as_str().unwrap().to_owned()));
                    }
                    (_, Some(seq)) => {
                        let mut seen = seen.lock().unwrap();
                        *seen = (*seen).max(seq);
                    }
                    _ => {}
                }
            }
            writer.abort();
        })
    };
    let started = Instant::now();
    while acked.lock().unwrap().len() < 400 {
        assert!(started.elapsed() < Duration::from_secs(20), "the senders are answered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match how {
        Stop::Kill => server.kill(),
        Stop::Term => assert!(server.terminate().success(), "a clean exit"),
    }
    for sender in senders.into_iter().chain([socket_sender]) {
        tokio::time::timeout(Duration::from_secs(45), sender).await.expect("senders stop").unwrap();
    }
    drop(socket);
    let acked = acked.lock().unwrap().clone();
    // The socket's texts, sent without waiting, were acknowledged once each, in the order they were sent.
    let socket_acks = socket_acks.lock().unwrap().clone();
    let refs: Vec<&str> = socket_acks.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(refs, (0..refs.len()).map(|i| format!("w-{i}")).collect::<Vec<_>>(), "each ack once, in order");
    assert!(socket_acks.windows(2).all(|pair| pair[1].0 > pair[0].0), "the acks' seqs increase");

    let server = Chatlab::spawn(binary(), &args);
    let events = everything(&server, &poller_session).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "the history has no hole");
    for (seq, text) in &acked {
        let event = &events[*seq as usize - 1];
        assert_eq!(event["message"], text.as_str(), "acknowledged text {seq} is there with its seq");
    }
    let from_socket: Vec<u64> =
        events.iter().filter_map(|e| e["message"].as_str()?.strip_prefix("w-")?.parse().ok()).collect();
    assert!(from_socket.windows(2).all(|pair| pair[1] == pair[0] + 1), "the socket's texts in their order");
    assert!(acked.iter().any(|(_, text)| text.starts_with("w-")), "some of the socket's texts were echoed");
    // The same keys after the restart answer the first seq and publish nothing; the epoch is the same.
    let (status, again) = post_keyed(&server.url(""), &poller_session, Some("crash-key"), "keyed once").await;
    assert_eq!((status, again["seq"].as_u64()), (202, Some(keyed_seq)), "{again}");
    let mut acking = ws(&server.ws_url(&format!("/ws?ack=1&session={acking_session}"))).await;
    let acking_welcome = ws_next(&mut acking).await;
    assert_eq!(acking_welcome["epoch"], epoch, "the epoch survives: {acking_welcome}");
    ws_send(&mut acking, r#"{"ref":"r-crash","text":"acked once"}"#).await;
    let resent = loop {
        let frame = ws_next(&mut acking).await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(
        (&resent["type"], &resent["ref"], resent["seq"].as_u64()),
        (&"ack".into(), &"r-crash".into(), Some(ref_seq))
    );
    drop(acking);
    let events = everything(&server, &poller_session).await;
    let count = |text: &str| events.iter().filter(|e| e["message"] == text).count();
    assert_eq!((count("keyed once"), count("acked once")), (1, 1), "one event each");
    let head = *seqs.last().unwrap();
    let seen = *seen.lock().unwrap();
    let (status, seq) = post_at(&server.url(""), &poller_session, "after the restart").await.unwrap();
    assert_eq!(status, 202);
    let seq = seq.unwrap();
    match how {
        // Texts seen but not yet durable may be lost: their numbers are skipped, never given again.
        Stop::Kill => assert!(seq > seen, "a new text gets {seq}, above every seq seen ({seen}): none is reused"),
        // A clean stop writes everything: nothing is skipped.
        Stop::Term => assert_eq!(seq, head + 1, "a new text gets the next seq"),
    }
    if seq > head + 1 {
        // The skip is told, not silent: a cursor at the last stored event hears of it, then gets the new text.
        let url = server.url(&format!("/api/poll?session={poller_session}&since={head}"));
        let body: Value = http().get(url).send().await.unwrap().json().await.unwrap();
        let told = &body["events"][0];
        assert_eq!(
            (&told["type"], &told["reason"], told["from"].as_u64(), told["to"].as_u64()),
            (&Value::from("gap"), &Value::from("skipped"), Some(head + 1), Some(seq - 1)),
            "{body}"
        );
        assert_eq!(body["events"][1]["seq"].as_u64(), Some(seq), "{body}");
    }

    // The poller is still alice, with the same id; the socket's session resumes where it read.
    let presence: Value = http().get(server.url("/api/presence")).send().await.unwrap().json().await.unwrap();
    let alice = presence["participants"].as_array().unwrap().iter().find(|p| p["id"] == poller["id"]).cloned();
    assert_eq!(alice.map(|p| p["nickname"].clone()), Some(Value::from("alice")), "{presence}");
    let mut socket = ws(&server.ws_url(&format!("/ws?session={ws_session}"))).await;
    let again = ws_next(&mut socket).await;
    assert_eq!(
        (&again["type"], &again["id"], &again["nickname"]),
        (&welcome["type"], &welcome["id"], &welcome["nickname"])
    );
    if let Stop::Term = how {
        // A clean stop saves where the closed channel stopped; a kill keeps what was saved before it.
        assert!(again["seq"].as_u64().unwrap() >= ws_cursor, "the cursor is kept: {again}");
    }
    // No one joined again or left: one join notice per participant, no leave notice.
    let joins = |id: &Value| events.iter().filter(|e| e["notice"] == "join" && &e["id"] == id).count();
    assert_eq!((joins(&poller["id"]), joins(&welcome["id"])), (1, 1));
    let all = everything(&server, &poller_session).await;
    let after: Vec<&Value> = all.iter().filter(|e| e["seq"].as_u64().unwrap() > head).collect();
    assert!(!after.is_empty(), "the text after the restart");
    assert!(
        after.iter().all(|e| e["notice"] != "join" && e["notice"] != "leave"),
        "no join or leave notice: {:?}",
        after.iter().filter(|e| e["notice"].is_string()).collect::<Vec<_>>()
    );
}

/// `kill -9` in the middle of a burst: after a restart on the same directory every acknowledged text is there
/// with its seq, no seq is reused, and the sessions resume with their id and nickname and no join notice.
#[tokio::test]
async fn kill_9_in_a_burst_loses_no_acknowledged_text() {
    burst_then_restart(Stop::Kill).await;
}

/// The same across a clean SIGTERM stop, which also keeps where each closed channel stopped.
#[tokio::test]
async fn a_sigterm_restart_keeps_the_room_and_its_sessions() {
    burst_then_restart(Stop::Term).await;
}

/// Runs the binary on `data_dir` until it exits (at most 15 s): its status and what it wrote to stderr.
fn run_to_exit(data_dir: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(binary())
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chatlab on {} did not exit", data_dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// A data directory that cannot be used ends the process at start with a non-zero exit and a message that
/// says why: one in use by another chatlab, a file where the directory should be, a newer format, a directory
/// of other files. (Tests run as root, for whom no permission is missing.)
#[test]
fn an_unusable_data_directory_is_a_clear_error_at_start() {
    let dir = TempDir::new("exit");
    let in_use = dir.path().join("in-use");
    let first = Chatlab::spawn(binary(), &["--data-dir", in_use.to_str().unwrap()]);
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(newer.join("FORMAT"), "chatlab-store 2\n").unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    for (path, says) in [
        (&in_use, "is in use by another chatlab process"),
        (&file, "not a directory"),
        (&newer, "holds a store of format 2, newer than this chatlab reads"),
        (&foreign, "is not empty and holds no chatlab store"),
    ] {
        let (status, stderr) = run_to_exit(path);
        assert!(!status.success(), "{}: {status:?}", path.display());
        assert!(stderr.contains(says) && stderr.contains(path.to_str().unwrap()), "{}: {stderr}", path.display());
    }
    drop(first);
}

/// The `--store-*` flags' defaults are the store's own.
#[test]
fn the_store_flags_default_to_the_stores_defaults() {
    let (flags, store) = (chatlab::config::Config::default().store_options(), StoreOptions::default());
    assert_eq!(
        (flags.session_sync, flags.batch_max, flags.unsynced_max),
        (store.session_sync, store.batch_max, store.unsynced_max)
    );
}

/// A backup: the data directory of a stopped server, copied, is the same room to a second server started on the
/// copy (same history byte for byte, same sessions and nicknames, numbering going on), and the original goes on
/// on its own.
#[tokio::test]
async fn a_copy_of_a_stopped_servers_directory_is_the_same_room() {
    let dir = TempDir::new("backup");
    let (original, copy) = (dir.path().join("original"), dir.path().join("copy"));
    let args = |data: &Path| -> Vec<String> {
        ["--data-dir", data.to_str().unwrap(), "--rate-limit", "0", "--session-lease", "60"].map(String::from).to_vec()
    };
    let spawn = |data: &Path| {
        let args = args(data);
        Chatlab::spawn(binary(), &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut server = spawn(&original);
    let joined = join_at(&server, "poll").await;
    let session = joined["session"].as_str().unwrap().to_owned();
    assert_eq!(post_at(&server.url(""), &session, "/nick bob").await.unwrap().0, 202);
    for i in 0..50 {
        assert_eq!(post_at(&server.url(""), &session, &format!("b{i}")).await.unwrap().0, 202);
    }
    let before = everything(&server, &session).await;
    assert!(server.terminate().success(), "a clean exit");

    copy_dir(&original, &copy);
    let original_server = spawn(&original);
    let copied_server = spawn(&copy);
    let head = before.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(everything(&copied_server, &session).await, before, "the copy has the same history");
    let presence: Value = http().get(copied_server.url("/api/presence")).send().await.unwrap().json().await.unwrap();
    let bob = presence["participants"].as_array().unwrap().iter().find(|p| p["id"] == joined["id"]).cloned();
    assert_eq!(bob.map(|p| p["nickname"].clone()), Some(Value::from("bob")), "{presence}");
    // Two rooms from here on, each numbering on from the same head.
    for server in [&copied_server, &original_server] {
        let (status, seq) = post_at(&server.url(""), &session, "after the copy").await.unwrap();
        assert_eq!((status, seq), (202, Some(head + 1)));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -t tmpfs -o size=...`) on `at`, or says why it cannot.
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "chatlab-test", at.to_str().unwrap()])
            .output()
            .map_err(|error| format!("mount: {error}"))?;
        if !output.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk: once a write of the store fails (`ENOSPC`), texts are refused with `503 unavailable` saying the
/// store cannot be written, never acknowledged; once space is back the same process takes texts again, without a
/// restart; and every text acknowledged before, during and after is there after a restart. Needs to mount a small
/// tmpfs (root); skipped, saying why, where that is not permitted.
#[tokio::test]
async fn a_full_disk_refuses_texts_and_the_store_heals_when_space_is_back() {
    let dir = TempDir::new("full");
    let mount = match Tmpfs::mount(&dir.path().join("mnt"), "4m") {
        Ok(mount) => mount,
        Err(why) => {
            println!("skipped: a small tmpfs cannot be mounted here ({why})");
            return;
        }
    };
    let data = mount.0.join("data");
    let args = ["--data-dir", data.to_str().unwrap(), "--rate-limit", "0", "--session-lease", "60"];
    let mut server = Chatlab::spawn(binary(), &args);
    let session = join_at(&server, "poll").await["session"].as_str().unwrap().to_owned();
    let mut acked = Vec::new();
    for i in 0..10 {
        let (status, body) = post_keyed(&server.url(""), &session, None, &format!("before {i}")).await;
        assert_eq!(status, 202, "{body}");
        acked.push((body["seq"].as_u64().unwrap(), format!("before {i}")));
    }

    // Fill what is left of the disk.
    let filler = mount.0.join("filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    }
    // Texts of 2,000 characters until the store needs space it cannot have (at most 2,000 texts: 8 MB).
    let long = "x".repeat(1_990);
    let mut refused = None;
    for i in 0..2_000 {
        let text = format!("{i:>6} {long}");
        let (status, body) = post_keyed(&server.url(""), &session, None, &text).await;
        match status {
            202 => acked.push((body["seq"].as_u64().unwrap(), text)),
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    let refused = refused.expect("a text is refused once the disk is full");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("the store cannot be written"), "{refused}");
    // While the disk stays full, texts are refused at once.
    let (status, body) = post_keyed(&server.url(""), &session, None, "while full").await;
    assert_eq!(status, 503, "{body}");

    // Space is back: the same process takes texts again within a few seconds.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    loop {
        let (status, body) = post_keyed(&server.url(""), &session, None, "space is back").await;
        if status == 202 {
            acked.push((body["seq"].as_u64().unwrap(), "space is back".to_owned()));
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(started.elapsed() < Duration::from_secs(20), "texts are taken again once space is back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every acknowledged text survives a restart, with its seq.
    assert!(server.terminate().success(), "a clean exit");
    let server = Chatlab::spawn(binary(), &args);
    let events = everything(&server, &session).await;
    for (seq, text) in &acked {
        let event = events.iter().find(|e| e["seq"].as_u64() == Some(*seq));
        assert_eq!(event.map(|e| e["message"].clone()), Some(Value::from(text.as_str())), "text {seq}");
    }
    assert!(events.iter().all(|e| e["message"] != "while full"), "a text refused at once is nowhere");
    drop(server);
}
