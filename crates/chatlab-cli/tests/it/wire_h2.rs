//! The wire view of HTTP/2 (HTTPS, ALPN `h2`) over real TLS connections: each request of a watched session is an
//! `http` record marked `h2` with its stream, its heads as decoded and its frames' bytes both ways, equal to what
//! the client counted on that stream; a streaming response's `DATA` frames are its `sse`/`ndjson`/`script`
//! records; HPACK makes a repeated head smaller on the wire, and the HTTP/1.1 equivalents are what HTTP/1.1 sends.

use crate::common;

use std::time::Duration;

use chatlab::config::Config;
use common::tls::{read_until, Client, Secure, SideCount};
use common::wire::{next_of, record};
use common::{config, start_with, Server, WAIT};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;

type View = WebSocketStream<Secure>;

/// Opens a wire view on `token` over `wss://` (WebSocket goes over HTTP/1.1) and reads its `totals`.
async fn watch(server: &Server, token: &str) -> View {
    let stream = common::tls::secure(server, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/api/wire?session={token}", server.addr.port());
    let (mut view, _) = timeout(WAIT, tokio_tungstenite::client_async(url, stream)).await.unwrap().expect("open");
    assert_eq!(record(&mut view).await["type"], "totals");
    view
}

fn u(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("a number: {value}"))
}

/// One side of an `h2` record's figures, as the client counts them.
fn side(record: &Value) -> SideCount {
    SideCount {
        bytes: u(&record["bytes"]),
        head: u(&record["head_bytes"]),
        body: u(&record["body_bytes"]),
        data: u(&record["data_bytes"]),
        frames: u(&record["frames"]),
    }
}

/// The next `http` record, which must be `technique`'s exchange on `stream`, over HTTP/2, with the byte figures
/// the client counted on that stream.
async fn exchange(view: &mut View, client: &Client, stream: u32, technique: &str) -> Value {
    let record = next_of(view, "http").await;
    assert_eq!(record["version"], "h2", "{record}");
    assert_eq!(u(&record["stream"]), u64::from(stream), "{record}");
    assert_eq!(record["technique"], technique, "{record}");
    let counted = client.stream(stream);
    assert_eq!(side(&record["request"]), counted.up, "the request's frames as the client wrote them: {record}");
    assert_eq!(side(&record["response"]), counted.down, "the response's frames as the client read them: {record}");
    // The connection so far: its streams, and its own bytes (the preface and SETTINGS at least), which the client
    // has counted too by the time the record arrives.
    let connection = &record["connection"];
    let opened = client.opened();
    assert!(opened.contains(&stream) && u(&connection["streams"]) <= opened.len() as u64, "{record}");
    let own = client.connection();
    assert!((24 + 9..=own.up.bytes).contains(&u(&connection["bytes_in"])), "{record} against {own:?}");
    assert!((9..=own.down.bytes).contains(&u(&connection["bytes_out"])), "{record} against {own:?}");
    record
}

/// Headers a browser sends with every poll.
const BROWSER: &[(&str, &str)] = &[
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ),
    ("accept", "*/*"),
    ("accept-language", "en-US,en;q=0.9"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("referer", "https://localhost/"),
    ("sec-fetch-mode", "cors"),
];

fn head(record: &Value, side: &str) -> String {
    record[side]["head"].as_str().unwrap().to_owned()
}

/// Short polls and a POST over one HTTP/2 connection: each is a record with its stream, its decoded heads
/// (pseudo-headers first) and exactly the bytes the client counted; the second identical poll's `HEADERS` are
/// smaller than the first's (HPACK's dynamic table), and the HTTP/1.1 sizes beside them are what the same
/// requests take over HTTP/1.1.
#[tokio::test]
async fn h2_polls_and_posts_are_shown_with_the_bytes_of_their_streams() {
    let server = start_with(Config { tls_self_signed: true, ..config() }).await;
    let mut client = Client::connect(&server, "h2").await;
    let (session, seq) = client.join("poll").await;
    let mut view = watch(&server, &session).await;

    let path = format!("/api/poll?session={session}&since={seq}");
    let mut polls = vec![];
    for _ in 0..2 {
        let response = client.request(Method::GET, &path, None, BROWSER).await;
        assert_eq!(response.status(), 200);
        timeout(WAIT, response.into_body().collect()).await.expect("in time").expect("a body");
        let stream = *client.opened().last().unwrap();
        let record = exchange(&mut view, &client, stream, "poll").await;
        let request = head(&record, "request");
        let pseudo = format!(":method: GET\r\n:path: {path}\r\n:authority: localhost\r\n:scheme: https\r\n");
        assert!(request.starts_with(&pseudo), "pseudo-headers first: {request:?}");
        let response = head(&record, "response");
        assert!(response.starts_with(":status: 200\r\n"), "{response:?}");
        assert!(
            response.contains("\r\ncontent-type: application/json") && response.contains("\r\ndate: "),
            "{response:?}"
        );
        assert_eq!(record["streaming"], false);
        assert!(record["ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(u(&record["request"]["frames"]), 1, "one HEADERS with END_STREAM: {record}");
        polls.push(record);
    }
    let (first, second) = (&polls[0], &polls[1]);
    assert_eq!(first["connection"]["id"], second["connection"]["id"], "one connection");
    let streams = (u(&first["connection"]["streams"]), u(&second["connection"]["streams"]));
    assert_eq!(streams.1, streams.0 + 1, "one more stream on it");
    let (h1, h2) = (u(&first["request"]["head_bytes"]), u(&second["request"]["head_bytes"]));
    assert!(h2 < h1, "the repeated request head is mostly HPACK table references: {h2} < {h1}");
    let (h1, h2) = (u(&first["response"]["head_bytes"]), u(&second["response"]["head_bytes"]));
    assert!(h2 <= h1, "the repeated response head is no larger (only its date may change): {h2} <= {h1}");
    for side in ["request", "response"] {
        let (wire, text) = (u(&second[side]["head_bytes"]), u(&second[side]["http1_head_bytes"]));
        assert!(wire * 3 < text, "{side}: {wire} bytes of HEADERS against {text} of HTTP/1.1 text");
    }

    // The same poll over HTTP/1.1: its heads are the sizes the h2 record gave as HTTP/1.1 text.
    let mut plain = Client::connect(&server, "http/1.1").await;
    let response = plain.request(Method::GET, &path, None, BROWSER).await;
    assert_eq!(response.status(), 200);
    timeout(WAIT, response.into_body().collect()).await.expect("in time").expect("a body");
    let record = next_of(&mut view, "http").await;
    assert_eq!(record["version"], "http/1.1", "{record}");
    for side in ["request", "response"] {
        assert_eq!(record[side]["head_bytes"], second[side]["http1_head_bytes"], "{side}: {record} against {second}");
    }
    assert_eq!(record["response"]["body_bytes"], second["response"]["data_bytes"], "the same body");

    // A POST: its body in DATA, its head naming the type.
    let text = "hello over h2";
    client.post(&session, text).await;
    let stream = *client.opened().last().unwrap();
    let record = exchange(&mut view, &client, stream, "poll").await;
    assert!(head(&record, "request").starts_with(":method: POST\r\n"), "{record}");
    assert!(head(&record, "request").contains("\r\ncontent-type: text/plain;charset=UTF-8\r\n"), "{record}");
    assert!(head(&record, "response").starts_with(":status: 202\r\n"), "{record}");
    assert_eq!(u(&record["request"]["data_bytes"]), text.len() as u64);
    assert_eq!(u(&record["request"]["body_bytes"]), text.len() as u64 + 9, "one DATA frame and its header");
}

/// A long poll held beside other requests on the same HTTP/2 connection is reported when answered, with its own
/// stream's bytes; SSE, the NDJSON stream and the forever iframe are reported once their response `HEADERS` are
/// out, and each `DATA` frame then is an `sse`/`ndjson`/`script` record (its 9-byte header as framing, its events),
/// which together are every `DATA` byte the client read on that stream.
#[tokio::test]
async fn h2_held_and_streaming_responses_are_shown_frame_by_frame() {
    let server = start_with(Config { tls_self_signed: true, ..config() }).await;
    let mut client = Client::connect(&server, "h2").await;
    let (talker, _) = client.join("poll").await;
    let (waiting, since) = client.join("longpoll").await;
    let mut view = watch(&server, &waiting).await;
    // The first answer is at once (the join notice); the next one is held.
    let (status, body) =
        client.json(Method::GET, &format!("/api/longpoll?session={waiting}&since={since}&timeout=5"), None).await;
    assert_eq!(status, 200, "{body}");
    exchange(&mut view, &client, *client.opened().last().unwrap(), "longpoll").await;
    let since = u(&body["next"]);
    let opened = client.opened().len();
    let mut holder = client.fork();
    let path = format!("/api/longpoll?session={waiting}&since={since}&timeout=5");
    let held = tokio::spawn(async move { holder.json(Method::GET, &path, None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = client.opened()[opened];
    let seq = client.post(&talker, "to the held poll").await;
    let (status, body) = timeout(WAIT, held).await.expect("answered").unwrap();
    assert_eq!(status, 200);
    assert!(body["events"].as_array().unwrap().iter().any(|e| e["seq"] == seq), "{body}");
    let record = exchange(&mut view, &client, stream, "longpoll").await;
    assert!(record["ms"].as_f64().unwrap() >= 150.0, "held until the post: {record}");
    assert!(head(&record, "request").starts_with(":method: GET\r\n:path: /api/longpoll?"), "{record}");

    for (technique, kind, framing) in
        [("sse", "sse", "data: "), ("stream", "ndjson", "{"), ("iframe", "script", "<script")]
    {
        let (session, since) = client.join(technique).await;
        let mut view = watch(&server, &session).await;
        let mut response =
            client.send(Method::GET, &format!("/api/{technique}?session={session}&since={since}"), None).await;
        assert_eq!(response.status(), 200);
        let stream = *client.opened().last().unwrap();
        let record = next_of(&mut view, "http").await;
        assert_eq!((record["version"].as_str(), u(&record["stream"])), (Some("h2"), u64::from(stream)), "{record}");
        assert_eq!(record["streaming"], true, "{record}");
        let counted = client.stream(stream);
        assert_eq!(side(&record["request"]), counted.up, "{technique}: {record}");
        assert_eq!(u(&record["response"]["head_bytes"]), counted.down.head, "{technique}: {record}");
        assert_eq!(u(&record["response"]["body_bytes"]), 0, "reported before its body: {record}");
        read_until(response.body_mut(), "welcome").await;

        let text = format!("to the {technique} stream");
        let seq = client.post(&talker, &text).await;
        let got = read_until(response.body_mut(), &text).await;
        assert!(got.contains(framing), "{technique}: {got}");
        // Every DATA frame up to the one carrying the post, each a record.
        let (mut bytes, mut data, mut frames) = (0, 0, 0);
        loop {
            let write = next_of(&mut view, kind).await;
            assert_eq!((write["version"].as_str(), u(&write["stream"])), (Some("h2"), u64::from(stream)), "{write}");
            assert_eq!(u(&write["chunk_bytes"]), 9, "a DATA frame's header: {write}");
            let events = write["events"].as_array().unwrap();
            let framed: u64 = events.iter().map(|e| u(&e["field_bytes"]) + u(&e["data_bytes"])).sum();
            if !write["comment"].as_bool().unwrap() {
                assert_eq!(u(&write["bytes"]), 9 + framed, "a frame is its header and its events: {write}");
            }
            bytes += u(&write["bytes"]);
            data += u(&write["bytes"]) - 9;
            frames += 1;
            if events.iter().any(|e| e["id"] == seq) {
                break;
            }
        }
        let down = client.stream(stream).down;
        assert_eq!((down.body, down.data, down.frames), (bytes, data, frames + 1), "{technique}: HEADERS, then DATA");
    }
}

/// Requests sent at once on one HTTP/2 connection count for their own sessions, whatever order the server's
/// threads run them in: each of eight sessions polls at the same moment with a header of its own length, and the
/// bytes each session's counters gain grow with that length, request by request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_h2_requests_count_for_their_own_sessions() {
    let server = start_with(Config { tls_self_signed: true, ..config() }).await;
    let mut client = Client::connect(&server, "h2").await;
    let mut sessions = vec![];
    for _ in 0..8 {
        sessions.push(client.join("poll").await.0);
    }
    let bytes_in = |server: &Server, session: &str| {
        let wire = server.room.metering().sessions().get(session).expect("a known session");
        wire.wire_bytes_in.load(std::sync::atomic::Ordering::Relaxed)
    };
    // Characters of one HPACK Huffman length (5 bits), a new one each round so that no value is a table hit.
    for round in ['a', 'c', 'e', 'i', 'o'] {
        let before: Vec<u64> = sessions.iter().map(|s| bytes_in(&server, s)).collect();
        let polls = sessions.iter().enumerate().map(|(i, session)| {
            let mut client = client.fork();
            let pad = round.to_string().repeat(200 * (i + 1));
            let path = format!("/api/poll?session={session}");
            async move { client.request(Method::GET, &path, None, &[("x-pad", &pad)]).await.status() }
        });
        let statuses = futures_util::future::join_all(polls).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        let gained: Vec<u64> = sessions.iter().zip(&before).map(|(s, b)| bytes_in(&server, s) - b).collect();
        // 200 more characters are 125 more bytes; HPACK's table evicting older entries moves a head by a few tens.
        for pair in gained.windows(2) {
            assert!((75..=175).contains(&(pair[1] - pair[0].min(pair[1]))), "round {round}: {gained:?}");
        }
    }
}
