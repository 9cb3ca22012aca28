//! Three chatlab processes, one room, through a real `redis-server`: every participant on every process sees the
//! same events in the same order, across a `kill -9` of one process and a restart of Redis.
//!
//! The processes are the built binary (`CARGO_BIN_EXE_chatlab`) on `127.0.0.1:0`; Redis runs on a free loopback
//! port with its own data directory (see `redis_support`). Every receive has a timeout.

use crate::redis_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use redis_support::{Chatlab, RedisServer};

/// Longest wait for any one frame, response or condition.
const WAIT: Duration = Duration::from_secs(10);
/// `--session-lease` of the processes: short, so a participant who does not come back is announced quickly.
const LEASE: &str = "2";

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts a chatlab process on the room in `redis`.
fn chatlab(redis: &RedisServer) -> Chatlab {
    let binary = Path::new(env!("CARGO_BIN_EXE_chatlab"));
    let url = redis.url();
    Chatlab::spawn(binary, &["--broker", &url, "--session-lease", LEASE, "--rate-limit", "0", "--shutdown-grace", "1"])
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// What one participant received, in order: room events (with `seq`) and per-client control events.
#[derive(Default, Debug)]
struct Seen {
    frames: Vec<Value>,
}

impl Seen {
    fn push(&mut self, frame: Value) {
        self.frames.push(frame);
    }

    fn room_events(&self) -> impl Iterator<Item = &Value> {
        self.frames.iter().filter(|f| f.get("seq").is_some() && f["type"] != "welcome")
    }

    fn last_seq(&self) -> Option<u64> {
        self.room_events().last().map(|e| e["seq"].as_u64().unwrap())
    }

    fn count_message(&self, text: &str) -> usize {
        self.room_events().filter(|e| e["message"] == text).count()
    }

    fn has_all(&self, texts: &[String]) -> bool {
        texts.iter().all(|t| self.count_message(t) > 0)
    }

    /// `error` events with this code, from frame `from` on.
    fn errors_since(&self, from: usize, code: &str) -> usize {
        self.frames[from..].iter().filter(|f| f["type"] == "error" && f["code"] == code).count()
    }
}

/// A participant on `/ws`.
struct WsUser {
    socket: Socket,
    session: String,
    nickname: String,
    seen: Seen,
}

impl WsUser {
    async fn join(process: &Chatlab) -> WsUser {
        let (socket, welcome) = ws_open(&process.ws_url("/ws")).await;
        let mut seen = Seen::default();
        seen.push(welcome.clone());
        WsUser {
            socket,
            session: welcome["session"].as_str().unwrap().to_owned(),
            nickname: welcome["nickname"].as_str().unwrap().to_owned(),
            seen,
        }
    }

    /// Reconnects to another process as the same participant, resuming after the last event it saw.
    async fn resume(&mut self, process: &Chatlab) {
        let since = self.seen.last_seq().unwrap();
        let (socket, welcome) = ws_open(&process.ws_url(&format!("/ws?session={}&since={since}", self.session))).await;
        self.seen.push(welcome.clone());
        assert_eq!(welcome["session"], self.session.as_str(), "the same participant");
        assert_eq!(welcome["seq"], since, "resumes where it stopped");
        self.socket = socket;
    }

    async fn send(&mut self, text: &str) {
        tokio::time::timeout(WAIT, self.socket.send(Message::Text(text.into()))).await.unwrap().unwrap();
    }

    /// Reads frames until `done` holds.
    async fn read_until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("ws {}: {what} in time; saw {:#?}", self.nickname, self.seen.frames));
            match frame {
                Some(Ok(Message::Text(text))) => self.seen.push(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("ws {}: {what}: the socket ended: {other:?}", self.nickname),
            }
        }
    }

    /// Reads until the connection is gone (its process died).
    async fn read_until_dropped(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next()).await.expect("the socket drops in time") {
                Some(Ok(Message::Text(text))) => self.seen.push(serde_json::from_str(&text).unwrap()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    }
}

async fn ws_open(url: &str) -> (Socket, Value) {
    let (mut socket, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.expect("ws connect in time").unwrap();
    let first: Value = match tokio::time::timeout(WAIT, socket.next()).await.expect("welcome in time") {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected the welcome frame, got {other:?}"),
    };
    assert_eq!(first["type"], "welcome", "{first}");
    (socket, first)
}

/// A participant on SSE (it posts through another process).
struct SseUser {
    response: reqwest::Response,
    buffer: Vec<u8>,
    session: String,
    nickname: String,
    seen: Seen,
}

impl SseUser {
    async fn join(joins_at: &Chatlab, streams_from: &Chatlab) -> SseUser {
        let (session, nickname, seq) = join_http(joins_at, "sse").await;
        // No overall timeout for a stream: every read below has its own.
        let client = reqwest::Client::builder().connect_timeout(WAIT).build().unwrap();
        let request = client.get(streams_from.url(&format!("/api/sse?session={session}&since={seq}")));
        let response = tokio::time::timeout(WAIT, request.send()).await.expect("sse headers in time").unwrap();
        assert_eq!(response.status(), 200);
        let mut user = SseUser { response, buffer: Vec::new(), session, nickname, seen: Seen::default() };
        user.read_until("welcome", |seen| !seen.frames.is_empty()).await;
        assert_eq!(user.seen.frames[0]["type"], "welcome");
        user
    }

    async fn read_until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.seen) {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(raw).unwrap();
                let mut id = None;
                for line in text.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = Some(value.parse::<u64>().unwrap());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        let data: Value = serde_json::from_str(data).unwrap();
                        assert_eq!(id, data["seq"].as_u64().filter(|_| data["type"] != "welcome"), "id is the seq");
                        self.seen.push(data);
                    }
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(other) => panic!("sse {}: {what}: the stream ended: {other:?}", self.nickname),
                Err(_) => panic!("sse {}: {what} in time; saw {:#?}", self.nickname, self.seen.frames),
            }
        }
    }
}

/// A long-poll participant that asks a different process each time.
struct PollUser {
    session: String,
    nickname: String,
    cursor: u64,
    turn: usize,
    seen: Seen,
}

impl PollUser {
    async fn join(process: &Chatlab) -> PollUser {
        let (session, nickname, seq) = join_http(process, "longpoll").await;
        PollUser { session, nickname, cursor: seq, turn: 0, seen: Seen::default() }
    }

    /// The next process in turn.
    fn next<'a>(&mut self, processes: &[&'a Chatlab]) -> &'a Chatlab {
        self.turn += 1;
        processes[self.turn % processes.len()]
    }

    /// One long poll (held at most a second) on the next process; returns the status.
    async fn poll(&mut self, processes: &[&Chatlab]) -> u16 {
        let process = self.next(processes);
        let url = process.url(&format!("/api/longpoll?session={}&since={}&timeout=1", self.session, self.cursor));
        let response = http().get(url).send().await.expect("long poll answered");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == 200 {
            for event in body["events"].as_array().unwrap() {
                self.seen.push(event.clone());
            }
            self.cursor = body["next"].as_u64().unwrap();
        } else {
            let messages: Vec<&Value> = self.seen.room_events().map(|e| &e["message"]).collect();
            let recent = &messages[messages.len().saturating_sub(5)..];
            assert_eq!(body["code"], "unavailable", "{status} {body} from {}; last saw {recent:?}", process.addr);
        }
        status
    }

    async fn read_until(&mut self, what: &str, processes: &[&Chatlab], done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.seen) {
            assert!(Instant::now() < deadline, "long poll {}: {what} in time; saw {:#?}", self.nickname, self.seen);
            assert_eq!(self.poll(processes).await, 200);
        }
    }
}

/// `POST /api/sessions`: (session, nickname, seq).
async fn join_http(process: &Chatlab, transport: &str) -> (String, String, u64) {
    let response =
        http().post(process.url("/api/sessions")).json(&json!({ "transport": transport })).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (
        body["session"].as_str().unwrap().to_owned(),
        body["nickname"].as_str().unwrap().to_owned(),
        body["seq"].as_u64().unwrap(),
    )
}

/// `POST /api/messages` through `process`: (status, body).
async fn post(process: &Chatlab, session: &str, text: &str) -> (u16, Value) {
    let response = http()
        .post(process.url(&format!("/api/messages?session={session}")))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .expect("POST answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every participant's room events have consecutive seqs (no hole, no duplicate, no reordering, across
/// reconnects), and an event with a given seq is the same event for everyone.
fn check_same_sequence(seen: &[(&str, &Seen)]) -> BTreeMap<u64, Value> {
    let mut room: BTreeMap<u64, Value> = BTreeMap::new();
    for (who, seen) in seen {
        let events: Vec<&Value> = seen.room_events().collect();
        for pair in events.windows(2) {
            let (a, b) = (pair[0]["seq"].as_u64().unwrap(), pair[1]["seq"].as_u64().unwrap());
            assert_eq!(b, a + 1, "{who}: seq {b} follows {a}: {:#?}", seen.frames);
        }
        for event in events {
            let seq = event["seq"].as_u64().unwrap();
            match room.get(&seq) {
                Some(other) => assert_eq!(other, event, "{who}: seq {seq} is the same event for everyone"),
                None => {
                    room.insert(seq, event.clone());
                }
            }
        }
    }
    room
}

/// One round: each participant sends a text (the long poller through a different process each time); returns
/// the texts.
async fn round(
    name: &str,
    ws: &mut WsUser,
    sse: &SseUser,
    sse_posts_to: &Chatlab,
    poller: &mut PollUser,
    processes: &[&Chatlab],
) -> Vec<String> {
    let texts = vec![format!("ws {name}"), format!("sse {name}"), format!("longpoll {name}")];
    ws.send(&texts[0]).await;
    assert_eq!(post(sse_posts_to, &sse.session, &texts[1]).await.0, 202);
    let through = poller.next(processes);
    assert_eq!(post(through, &poller.session, &texts[2]).await.0, 202);
    texts
}

/// A WebSocket participant on the first process, an SSE participant on the second posting through the third,
/// and a long poller alternating processes all see the same sequence; after `kill -9` of the first process the
/// WebSocket participant resumes on another with `session` and `since` and misses nothing, while the one that
/// does not return is announced as gone exactly once; after Redis stops and starts again, the same holds, and
/// nobody is announced as gone.
#[tokio::test]
async fn three_processes_share_one_room_through_kill_and_redis_restart() {
    let Some(mut redis) = RedisServer::start_or_skip("three_processes_share_one_room_through_kill_and_redis_restart")
    else {
        return;
    };
    let mut a = chatlab(&redis);
    let mut b = chatlab(&redis);
    let mut c = chatlab(&redis);

    // --- Everyone joins, on different processes.
    let mut w1 = WsUser::join(&a).await;
    let mut w2 = WsUser::join(&a).await;
    let mut sse = SseUser::join(&c, &b).await;
    let mut poller = PollUser::join(&c).await;
    let all = [&a, &b, &c];
    let (_, presence) = get(&c, "/api/presence").await;
    assert_eq!(presence["clientcount"], 4, "presence is cluster-wide: {presence}");

    // --- Phase 1: everyone talks; everyone sees the same sequence.
    let mut texts = Vec::new();
    for i in 1..=3 {
        texts.extend(round(&format!("before {i}"), &mut w1, &sse, &c, &mut poller, &all).await);
        w2.send(&format!("w2 before {i}")).await;
        texts.push(format!("w2 before {i}"));
    }
    let done = |seen: &Seen| seen.has_all(&texts);
    w1.read_until("phase 1", done).await;
    w2.read_until("phase 1", done).await;
    sse.read_until("phase 1", done).await;
    poller.read_until("phase 1", &all, done).await;
    check_same_sequence(&[("w1", &w1.seen), ("w2", &w2.seen), ("sse", &sse.seen), ("longpoll", &poller.seen)]);
    let last = w1.seen.room_events().last().unwrap().clone();
    assert_eq!(last["clientcount"], 4, "clientcount counts every process's participants");

    // --- Phase 2: kill -9 the first process. w1 comes back on the second; w2 never does.
    a.kill();
    w1.read_until_dropped().await;
    w2.read_until_dropped().await;
    let alive = [&b, &c];
    // Others keep talking meanwhile: w1 must get these from history when it resumes.
    for i in 1..=2 {
        let text = format!("sse while w1 is away {i}");
        assert_eq!(post(&c, &sse.session, &text).await.0, 202);
        texts.push(text);
    }
    w1.resume(&b).await;
    let gone = format!("{} 走了", w2.nickname);
    texts.push(gone.clone());
    for i in 1..=2 {
        texts.extend(round(&format!("after kill {i}"), &mut w1, &sse, &c, &mut poller, &alive).await);
    }
    // The leave comes after the lease (2 s) and a reaper tick. The long poller waits for it first: it must keep
    // polling to stay online, while the streams stay online by being open.
    let done = |seen: &Seen| seen.has_all(&texts);
    poller.read_until("phase 2", &alive, done).await;
    w1.read_until("phase 2", done).await;
    sse.read_until("phase 2", done).await;
    let room = check_same_sequence(&[("w1", &w1.seen), ("sse", &sse.seen), ("longpoll", &poller.seen)]);
    for (who, seen) in [("w1", &w1.seen), ("sse", &sse.seen), ("longpoll", &poller.seen)] {
        assert_eq!(seen.count_message(&gone), 1, "{who} hears once that w2 is gone");
    }
    assert_eq!(room.values().filter(|e| e["message"] == gone.as_str()).count(), 1, "announced once, room-wide");
    let joined = format!("{} 来了", w1.nickname);
    assert_eq!(w1.seen.count_message(&joined), 1, "w1's move to another process was no new join");
    assert_eq!(w1.seen.count_message(&format!("{} 走了", w1.nickname)), 0, "w1 did not leave");
    // Nothing from the last phase is still in flight: it is all delivered and nobody else left.
    let (_, presence) = get(&b, "/api/presence").await;
    assert_eq!(presence["clientcount"], 3, "{presence}");

    // --- Phase 3: Redis stops. Clients get clear errors; nothing crashes.
    let (w1_mark, sse_mark) = (w1.seen.frames.len(), sse.seen.frames.len());
    redis.stop();
    w1.read_until("an unavailable error", |seen| seen.errors_since(w1_mark, "unavailable") > 0).await;
    sse.read_until("an unavailable error", |seen| seen.errors_since(sse_mark, "unavailable") > 0).await;
    let (status, body) = post(&c, &sse.session, "lost in the outage").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    assert_eq!(poller.poll(&alive).await, 503);
    w1.send("also refused").await;
    w1.read_until("its text refused", |seen| seen.errors_since(w1_mark, "unavailable") > 1).await;

    redis.restart();
    // The processes reconnect by themselves: POSTs succeed again soon.
    let deadline = Instant::now() + WAIT;
    let back = loop {
        let (status, body) = post(&c, &sse.session, "sse after the outage").await;
        if status == 202 {
            break body;
        }
        assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
        assert!(Instant::now() < deadline, "the cluster recovers in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(back["seq"].as_u64().is_some());
    texts.push("sse after the outage".into());
    for i in 1..=2 {
        texts.extend(round(&format!("after redis {i}"), &mut w1, &sse, &c, &mut poller, &alive).await);
    }
    // The poller first again: it has not polled since the outage began, and only polling keeps it online.
    let done = |seen: &Seen| seen.has_all(&texts);
    poller.read_until("phase 3", &alive, done).await;
    w1.read_until("phase 3", done).await;
    sse.read_until("phase 3", done).await;
    let room = check_same_sequence(&[("w1", &w1.seen), ("sse", &sse.seen), ("longpoll", &poller.seen)]);
    for text in &texts {
        assert_eq!(room.values().filter(|e| e["message"] == text.as_str()).count(), 1, "{text} once");
    }
    for text in ["lost in the outage", "also refused"] {
        assert_eq!(room.values().filter(|e| e["message"] == text).count(), 0, "a refused text is not in the room");
    }
    // Let the reapers run for more than a lease after recovery (the poller polling all along): nobody who
    // stayed is announced as gone.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(poller.poll(&alive).await, 200);
    }
    let (status, body) = post(&b, &sse.session, "final").await;
    assert_eq!(status, 202, "{body}");
    texts.push("final".into());
    let done = |seen: &Seen| seen.has_all(&texts);
    w1.read_until("the final text", done).await;
    sse.read_until("the final text", done).await;
    poller.read_until("the final text", &alive, done).await;
    let room = check_same_sequence(&[("w1", &w1.seen), ("sse", &sse.seen), ("longpoll", &poller.seen)]);
    let leaves: Vec<&str> =
        room.values().filter_map(|e| e["message"].as_str()).filter(|m| m.ends_with(" 走了")).collect();
    assert_eq!(leaves, vec![gone.as_str()], "only w2 ever left");
    let (_, presence) = get(&c, "/api/presence").await;
    let mut online: Vec<&str> =
        presence["participants"].as_array().unwrap().iter().map(|p| p["nickname"].as_str().unwrap()).collect();
    online.sort_unstable();
    let mut expected = vec![w1.nickname.as_str(), sse.nickname.as_str(), poller.nickname.as_str()];
    expected.sort_unstable();
    assert_eq!(online, expected);
    assert!(b.alive() && c.alive(), "no process crashed");
    assert_eq!(get(&b, "/healthz").await.0, 200);
}

async fn get(process: &Chatlab, path: &str) -> (u16, Value) {
    let response = http().get(process.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A long poller in a busy room, asking a different process each time, stays online: each poll is answered at
/// once (so it is almost never a live channel when a reaper renews leases), yet it counts as activity.
#[tokio::test]
async fn a_busy_long_poller_hopping_processes_stays_online() {
    let Some(redis) = RedisServer::start_or_skip("a_busy_long_poller_hopping_processes_stays_online") else {
        return;
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_chatlab"));
    let url = redis.url();
    let args = ["--broker", url.as_str(), "--session-lease", "1", "--rate-limit", "0"];
    let (a, b) = (Chatlab::spawn(binary, &args), Chatlab::spawn(binary, &args));
    let both = [&a, &b];
    let mut talker = WsUser::join(&a).await;
    let mut poller = PollUser::join(&b).await;
    let until = Instant::now() + Duration::from_secs(3);
    let mut sent = 0;
    while Instant::now() < until {
        sent += 1;
        talker.send(&format!("busy {sent}")).await;
        let last = format!("busy {sent}");
        poller.read_until("the newest text", &both, |seen| seen.count_message(&last) == 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = format!("{} 走了", poller.nickname);
    talker.read_until("every text", |seen| seen.count_message(&format!("busy {sent}")) == 1).await;
    assert_eq!(talker.seen.count_message(&gone), 0, "the poller was never announced as gone");
    assert_eq!(post(&a, &poller.session, "still here").await.0, 202, "its session is alive");
    check_same_sequence(&[("talker", &talker.seen), ("poller", &poller.seen)]);
}

/// The next text frame of a socket as JSON.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Presence and the notice fields are room-wide: a welcome on one process lists, in join order, who joined on
/// the others, and events from another process carry `notice`, `transport` and `previous` as published.
#[tokio::test]
async fn presence_and_notice_fields_cross_processes() {
    let Some(redis) = RedisServer::start_or_skip("presence_and_notice_fields_cross_processes") else {
        return;
    };
    let (a, b) = (chatlab(&redis), chatlab(&redis));
    let (mut first, welcome) = ws_open(&a.ws_url("/ws?nickname=first")).await;
    assert_eq!(welcome["presence"]["clientcount"], 1);
    assert_eq!(next_json(&mut first).await["notice"], "join");

    let response = http().post(b.url("/api/sessions")).json(&json!({"transport": "sse", "nickname": "second"}));
    let joined: Value = response.send().await.unwrap().json().await.unwrap();
    let listed: Vec<&str> = joined["presence"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["nickname"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["first", "second"], "{joined}");
    let notice = next_json(&mut first).await;
    assert_eq!((notice["notice"].as_str(), notice["transport"].as_str()), (Some("join"), Some("sse")), "{notice}");

    let session = joined["session"].as_str().unwrap();
    assert_eq!(post(&b, session, "/nick zweite").await.0, 202);
    let renamed = next_json(&mut first).await;
    assert_eq!((renamed["previous"].as_str(), renamed["nickname"].as_str()), (Some("second"), Some("zweite")));
    assert_eq!(post(&a, session, "hello").await.0, 202);
    assert_eq!(next_json(&mut first).await["transport"], "sse");

    let (_, welcome) = ws_open(&b.ws_url("/ws?nickname=third")).await;
    let presence = &welcome["presence"];
    assert_eq!(presence["clientcount"], 3);
    let listed: Vec<(&str, &str)> = presence["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["nickname"].as_str().unwrap(), p["transport"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("first", "ws"), ("zweite", "sse"), ("third", "ws")]);
    assert_eq!(presence["more"], false);
}
