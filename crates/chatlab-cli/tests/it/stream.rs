//! HTTP streaming (`GET /api/stream`, NDJSON) and the forever iframe (`GET /api/iframe`, `<script>` chunks) over
//! real sockets: the welcome first, resume from a cursor, the epoch gap, switching to and from the other
//! techniques, the slow consumer, shutdown, bad input, and a hostile message that cannot break out of its script.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// The texts of the `message` events among `events`.
fn texts(events: &[Value]) -> Vec<String> {
    events.iter().filter(|e| e["type"] == "message").map(|e| e["message"].as_str().unwrap().to_owned()).collect()
}

/// Each technique's response starts with the welcome (as SSE's: identity, cursor, epoch, presence), carries what
/// is said after it, and a new response from the last `seq` seen carries exactly what was said in between.
#[tokio::test]
async fn a_stream_starts_with_the_welcome_and_resumes_from_a_cursor() {
    let server = start().await;
    let talker = join(&server, "poll").await;
    for (framing, technique) in Framing::ALL {
        let me = join(&server, technique).await;
        let mut stream = streamed(&server, &format!("/api/{technique}?session={}&since={}", me.session, me.seq)).await;
        assert_eq!(stream.framing, framing);
        let welcome = stream.data().await;
        assert_eq!(welcome["type"], "welcome", "{technique}");
        assert_eq!((welcome["id"].as_str(), welcome["seq"].as_u64()), (Some(me.id.as_str()), Some(me.seq)));
        assert_eq!(welcome["session"], me.session.as_str());
        assert!(welcome["epoch"].is_string() && welcome["presence"].is_object(), "{welcome}");
        assert_eq!(stream.data().await["message"], format!("{} 来了", me.nickname), "its own join");
        for i in 0..3 {
            assert_eq!(post(&server, &talker.session, &format!("{technique} {i}")).await.0, 202);
        }
        let mut seen = vec![];
        while texts(&seen).len() < 3 {
            seen.push(stream.data().await);
        }
        let cursor = seen.last().unwrap()["seq"].as_u64().unwrap();
        drop(stream);
        for i in 3..5 {
            assert_eq!(post(&server, &talker.session, &format!("{technique} {i}")).await.0, 202);
        }
        let path = format!("/api/{technique}?session={}&since={cursor}", me.session);
        let mut stream = streamed(&server, &path).await;
        assert_eq!(stream.data().await["seq"], cursor, "the welcome names the cursor");
        seen.push(stream.data().await);
        seen.push(stream.data().await);
        stream.quiet().await;
        let expected: Vec<String> = (0..5).map(|i| format!("{technique} {i}")).collect();
        assert_eq!(texts(&seen), expected, "{technique}: every text once, in order");
        let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{technique}: consecutive: {seqs:?}");
    }
}

/// A new participant's first stream or iframe, opened without `since=`, starts at its join: history said
/// before it is not replayed, its own join notice comes first.
#[tokio::test]
async fn a_first_channel_without_since_starts_at_the_join() {
    let server = start().await;
    let talker = join(&server, "poll").await;
    for i in 0..3 {
        assert_eq!(post(&server, &talker.session, &format!("history {i}")).await.0, 202);
    }
    for (_, technique) in Framing::ALL {
        let me = join(&server, technique).await;
        let mut stream = streamed(&server, &format!("/api/{technique}?session={}", me.session)).await;
        assert_eq!(stream.data().await["seq"], me.seq, "{technique}: the welcome names the join cursor");
        let first = stream.data().await;
        assert_eq!(first["message"], format!("{} 来了", me.nickname), "{technique}: {first}");
        stream.quiet().await;
    }
}

/// A cursor of another epoch gets the welcome, then a `gap` of reason `epoch`, then the room from its oldest
/// retained event: never a silent skip.
#[tokio::test]
async fn a_cursor_of_another_epoch_gets_a_gap_then_the_room_from_its_oldest() {
    let server = start().await;
    let talker = join(&server, "poll").await;
    assert_eq!(post(&server, &talker.session, "before").await.0, 202);
    for (_, technique) in Framing::ALL {
        let me = join(&server, technique).await;
        let path = format!("/api/{technique}?session={}&since=40&epoch=another", me.session);
        let mut stream = streamed(&server, &path).await;
        let welcome = stream.data().await;
        assert_eq!(welcome["type"], "welcome");
        let gap = stream.data().await;
        assert_eq!((gap["type"].as_str(), gap["reason"].as_str()), (Some("gap"), Some("epoch")), "{technique}: {gap}");
        assert_eq!(gap["epoch"], welcome["epoch"]);
        assert_eq!(stream.data().await["seq"], 1, "{technique}: from the oldest retained event");
    }
}

/// A participant moves WS -> stream -> iframe -> SSE -> stream -> WS while another keeps talking, texts
/// published during each switch: every text arrives exactly once, in order, with no leave or join notice, and
/// each replaced channel's last word is `replaced`.
#[tokio::test]
async fn switching_to_and_from_the_streams_loses_and_repeats_nothing() {
    let server = start().await;
    let talker = join(&server, "poll").await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    let welcome = ws_next(&mut socket).await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let id = welcome["id"].as_str().unwrap().to_owned();
    let mut seen: Vec<Value> = vec![ws_next(&mut socket).await];
    let mut current = Open::Ws(socket);
    let mut said = 0;
    for technique in ["stream", "iframe", "sse", "stream", "ws"] {
        for _ in 0..2 {
            said += 1;
            assert_eq!(post(&server, &talker.session, &format!("text {said}")).await.0, 202);
        }
        while texts(&seen).len() < said - 1 {
            seen.push(current.next().await.expect("the channel is open"));
        }
        // The last text is published while switching: the next channel carries it.
        let cursor = seen.last().unwrap()["seq"].as_u64().unwrap();
        let mut next = Open::open(&server, technique, &session, cursor).await;
        let welcome = next.next().await.unwrap();
        assert_eq!((welcome["type"].as_str(), welcome["id"].as_str()), (Some("welcome"), Some(id.as_str())));
        let old = std::mem::replace(&mut current, next);
        old.end_replaced().await;
    }
    while texts(&seen).len() < said {
        seen.push(current.next().await.expect("the channel is open"));
    }
    let Open::Ws(mut socket) = current else { unreachable!("the last step is a WebSocket") };
    ws_quiet(&mut socket).await;

    let expected: Vec<String> = (1..=said).map(|i| format!("text {i}")).collect();
    assert_eq!(texts(&seen), expected, "every text exactly once, in order");
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().expect("only room events")).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive seqs: {seqs:?}");
    assert!(seen[1..].iter().all(|e| e["type"] == "message"), "no join or leave notice while switching");
    let (_, presence) = get_json(&server, "/api/presence").await;
    let me = presence["participants"].as_array().unwrap().iter().find(|p| p["id"] == id.as_str()).unwrap().clone();
    assert_eq!(me["transport"], "ws", "presence follows the switch");
}

/// A live channel of any streaming kind, for the switching test.
enum Open {
    Ws(Ws),
    Sse(Sse),
    Streamed(Streamed),
}

impl Open {
    /// Opens `technique`'s channel for `session` from `since`.
    async fn open(server: &Server, technique: &str, session: &str, since: u64) -> Open {
        match technique {
            "ws" => Open::Ws(ws(&server.ws_url(&format!("/ws?session={session}&since={since}"))).await),
            "sse" => Open::Sse(sse(server, &format!("/api/sse?session={session}&since={since}"), None).await),
            _ => Open::Streamed(streamed(server, &format!("/api/{technique}?session={session}&since={since}")).await),
        }
    }

    /// The next event; `None` once the channel ended.
    async fn next(&mut self) -> Option<Value> {
        use tokio_tungstenite::tungstenite::Message;
        match self {
            Open::Ws(socket) => loop {
                match tokio::time::timeout(WAIT, futures_util::StreamExt::next(socket)).await.expect("in time") {
                    Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue,
                }
            },
            Open::Sse(stream) => stream.next().await.map(|frame| frame.data),
            Open::Streamed(stream) => stream.next().await,
        }
    }

    /// Reads a replaced channel to its end: its last event is `error` `replaced`, then it ends.
    async fn end_replaced(mut self) {
        let mut last = None;
        while let Some(event) = self.next().await {
            last = Some(event);
        }
        let last = last.expect("the replaced channel says why before it ends");
        assert_eq!((last["type"].as_str(), last["code"].as_str()), (Some("error"), Some("replaced")), "{last}");
    }
}

/// A reader that falls more than `--send-queue` events behind is told `slow_consumer` and its response ends,
/// counted under its technique; it resumes from its cursor with nothing lost, and the room never waited for it.
#[tokio::test]
async fn a_slow_stream_reader_is_told_and_resumes() {
    let server = start_with(chatlab::config::Config { send_queue: 16, write_timeout: 0, ..config() }).await;
    let talker = join(&server, "poll").await;
    let me = join(&server, "stream").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut slow = socket.connect(server.addr).await.unwrap();
    let head = format!(
        "GET /api/stream?session={}&since={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        me.session, me.seq, server.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut slow, head.as_bytes()).await.unwrap();

    // More than the socket buffers hold (see tests/it/limits.rs): the room accepts every text at once.
    let client = http();
    let url = server.url(&format!("/api/messages?session={}", talker.session));
    let text = "s".repeat(1900);
    for _ in 0..4000 {
        let answer = client.post(&url).header("content-type", "text/plain").body(text.clone()).send().await.unwrap();
        assert_eq!(answer.status(), 202, "the room never waits for a slow reader");
    }
    // Read the whole response (the server ends it) and pick the NDJSON lines out of the chunked body.
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut raw))
        .await
        .expect("the response ends")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let events: Vec<Value> =
        text.lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(events[0]["type"], "welcome");
    let mut last_seq = me.seq;
    for event in &events[1..events.len() - 1] {
        assert_eq!(event["seq"].as_u64(), Some(last_seq + 1), "no hole before the end");
        last_seq += 1;
    }
    let end = events.last().unwrap();
    assert_eq!((end["type"].as_str(), end["code"].as_str()), (Some("error"), Some("slow_consumer")), "{end}");
    let (_, stats) = get_json(&server, "/api/stats").await;
    assert!(stats["transports"]["stream"]["slow_consumers"].as_u64().unwrap() >= 1, "{stats}");

    let path = format!("/api/stream?session={}&since={last_seq}", me.session);
    let mut resumed = streamed(&server, &path).await;
    assert_eq!(resumed.data().await["type"], "welcome");
    assert_eq!(resumed.data().await["seq"], last_seq + 1, "resumes right after");
}

/// On shutdown, an open stream and an open iframe document both get the `Server has disconnected` notice and
/// end, and the server returns in time.
#[tokio::test]
async fn shutdown_ends_both_responses() {
    let mut server = start().await;
    let mut open = vec![];
    for (_, technique) in Framing::ALL {
        let me = join(&server, technique).await;
        let mut stream = streamed(&server, &format!("/api/{technique}?session={}", me.session)).await;
        assert_eq!(stream.data().await["type"], "welcome");
        open.push(stream);
    }
    server.stop();
    for mut stream in open {
        loop {
            let event = stream.next().await.expect("the notice before the end");
            if event["message"] == "Server has disconnected" {
                assert_eq!(event["type"], "notification");
                break;
            }
        }
        assert!(stream.next().await.is_none(), "the response ends");
    }
    tokio::time::timeout(Duration::from_secs(5), server.task).await.expect("run returns in time").unwrap().unwrap();
}

/// A message holding `</script>`, `<!--` and a script of its own reaches the iframe as one call whose argument
/// is the message unchanged, with no `<` in the script; every script carries the response's nonce, and the
/// document's policy allows that nonce only, framed by this origin only.
#[tokio::test]
async fn a_hostile_message_cannot_break_out_of_its_script() {
    let server = start().await;
    let me = join(&server, "iframe").await;
    let mut document = streamed(&server, &format!("/api/iframe?session={}&since={}", me.session, me.seq)).await;
    let headers = document.response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap().to_owned();
    let nonce = policy.split("'nonce-").nth(1).and_then(|n| n.split('\'').next()).expect("a nonce in the policy");
    assert!(nonce.len() >= 22, "{policy}");
    for directive in ["default-src 'none'", "frame-ancestors 'self'", "base-uri 'none'"] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    document.data().await;
    document.data().await;
    let hostile =
        "</script><script>parent.chatlab({\"type\":\"message\",\"message\":\"forged\"})</script><!-- <script>";
    assert_eq!(post(&server, &me.session, hostile).await.0, 202);
    let event = document.data().await;
    assert_eq!(event["message"], hostile, "the text, unchanged, as the one argument");
    document.quiet().await;
    assert!(document.tags.iter().all(|tag| *tag == format!("<script nonce=\"{nonce}\">")), "{:?}", document.tags);
    // A second document gets another nonce.
    let again = streamed(&server, &format!("/api/iframe?session={}", me.session)).await;
    assert_ne!(again.response.headers()["content-security-policy"], policy.as_str());
}

/// The document opens with `--iframe-padding` bytes of padding before its first script (1 KiB by default), and
/// none at 0.
#[tokio::test]
async fn the_iframe_padding_is_as_configured() {
    for (padding, at_least) in [(1024, 1024), (0, 0)] {
        let server = start_with(chatlab::config::Config { iframe_padding: padding, ..config() }).await;
        let me = join(&server, "iframe").await;
        let mut document = streamed(&server, &format!("/api/iframe?session={}", me.session)).await;
        let first = document.response.chunk().await.unwrap().unwrap();
        let before_script = first.windows(7).position(|w| w == b"<script").expect("the welcome in the first chunk");
        assert!(before_script >= at_least as usize, "{padding}: {before_script}");
        assert!(before_script < at_least as usize + 80, "{padding}: only the doctype besides: {before_script}");
    }
}

/// Bad requests are clear JSON errors and open nothing: no session, an unknown one, a cursor that is not a
/// number; `POST /api/sessions` names the two techniques in its error for an unknown one.
#[tokio::test]
async fn bad_requests_are_refused_with_json() {
    let server = start().await;
    let me = join(&server, "stream").await;
    for (_, technique) in Framing::ALL {
        for (path, status, code) in [
            (format!("/api/{technique}"), 400, "bad_request"),
            (format!("/api/{technique}?session=nobody"), 404, "unknown_session"),
            (format!("/api/{technique}?session={}&since=x", me.session), 400, "bad_request"),
        ] {
            let (got, body) = get_json(&server, &path).await;
            assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{path}: {body}");
        }
    }
    let (_, stats) = get_json(&server, "/api/stats").await;
    assert_eq!(stats["transports"]["stream"]["connections_total"], 0);
    assert_eq!(stats["transports"]["iframe"]["connections_total"], 0);
    let response =
        http().post(server.url("/api/sessions")).json(&serde_json::json!({"transport": "comet"})).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("\"iframe\""), "{body}");
}
