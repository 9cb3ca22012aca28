//! Test harness: a real chatlab on 127.0.0.1:0 and real clients of each technique, every receive under a timeout.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use chatlab::config::Config;
use chatlab::core::Room;

pub mod raw;
pub mod temp;
pub mod tls;
pub mod wire;

pub use raw::masked;

/// How long any single receive may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub room: Room,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Defaults with rate limiting (per session and per client) off unless a test asks for it (tests send quickly on
/// purpose, all from 127.0.0.1), in an in-memory room (each test makes its own; the durable room has tests of its
/// own, each in a temporary directory).
pub fn config() -> Config {
    Config { rate_limit: 0.0, client_rate_limit: 0.0, broker: "memory".into(), ..Config::default() }
}

/// Starts a server with the default test config.
pub async fn start() -> Server {
    start_with(config()).await
}

/// Starts a server on 127.0.0.1:0 with `config`.
pub async fn start_with(config: Config) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let room = chatlab::build_room(config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(chatlab::run(listener, room.clone(), async move {
        let _ = stopped.await;
    }));
    Server { addr, room, stop: Some(stop), task }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends the shutdown signal (as SIGTERM would).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(40)).build().unwrap()
}

/// An HTTP client whose connections come from `source` (another loopback address, such as 127.0.0.2: Linux routes
/// all of 127.0.0.0/8 to the loopback interface), so the server sees another client.
pub fn http_from(source: std::net::IpAddr) -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(40)).local_address(source).build().unwrap()
}

/// A TCP connection to `addr` from `source` (see [`http_from`]).
pub async fn tcp_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4().unwrap(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6().unwrap(),
    };
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(addr)).await.expect("connect in time").unwrap()
}

/// A WebSocket upgrade of `url` (`ws://` on the server at `addr`) over a connection from `source`: the open
/// socket, or the refusal's HTTP status and JSON body.
pub async fn ws_from(source: std::net::IpAddr, addr: SocketAddr, url: &str) -> Result<Ws, (u16, Value)> {
    let stream = MaybeTlsStream::Plain(tcp_from(source, addr).await);
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream)).await.expect("upgrade in time") {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(other) => panic!("upgrade of {url}: {other}"),
    }
}

/// A joined HTTP participant.
#[derive(Debug, Clone)]
pub struct Joined {
    pub session: String,
    pub id: String,
    pub nickname: String,
    pub seq: u64,
}

/// `POST /api/sessions` and expect 201.
pub async fn join(server: &Server, transport: &str) -> Joined {
    let response = http()
        .post(server.url("/api/sessions"))
        .json(&serde_json::json!({"transport": transport}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "join over HTTP");
    let body: Value = response.json().await.unwrap();
    Joined {
        session: body["session"].as_str().unwrap().to_owned(),
        id: body["id"].as_str().unwrap().to_owned(),
        nickname: body["nickname"].as_str().unwrap().to_owned(),
        seq: body["seq"].as_u64().unwrap(),
    }
}

/// `POST /api/messages` as `session` through `client`; the response as it came.
pub async fn post_with(client: &reqwest::Client, server: &Server, session: &str, text: &str) -> reqwest::Response {
    client
        .post(server.url(&format!("/api/messages?session={session}")))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
}

/// `POST /api/messages` as `session`; returns the status and JSON body.
pub async fn post(server: &Server, session: &str, text: &str) -> (u16, Value) {
    let response = post_with(&http(), server, session, text).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A GET returning status and JSON.
pub async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let response = http().get(server.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One short or long poll: the events and `next`.
pub async fn poll(server: &Server, path: &str) -> (Vec<Value>, u64) {
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(40), get_json(server, path)).await.expect("poll answered");
    assert_eq!(status, 200, "poll {path}: {body}");
    (body["events"].as_array().unwrap().clone(), body["next"].as_u64().unwrap())
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket.
pub async fn ws(url: &str) -> Ws {
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.expect("ws connect in time").unwrap().0
}

/// The next text frame as JSON (pings and pongs skipped).
pub async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time").expect("open").unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads text frames (as JSON) until one satisfies `wanted`, which it returns; frames before it are dropped.
pub async fn ws_until(ws: &mut Ws, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame =
            tokio::time::timeout_at(deadline, ws_next(ws)).await.unwrap_or_else(|_| panic!("{what} within {WAIT:?}"));
        if wanted(&frame) {
            return frame;
        }
    }
}

/// Reads frames until a close frame; returns its code.
pub async fn ws_close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

pub async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// Asserts nothing arrives on the socket for a short while.
pub async fn ws_quiet(ws: &mut Ws) {
    if let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(QUIET, ws.next()).await {
        panic!("expected silence, got {text}");
    }
}

/// An SSE stream read frame by frame (never collected).
pub struct Sse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

/// One SSE frame: its `id:` if any, and its `data:` as JSON.
#[derive(Debug, Clone)]
pub struct SseFrame {
    pub id: Option<u64>,
    pub data: Value,
}

/// Opens `GET path` as an event stream, with an optional `Last-Event-ID`.
pub async fn sse(server: &Server, path: &str, last_event_id: Option<u64>) -> Sse {
    let mut request = http().get(server.url(path)).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = tokio::time::timeout(WAIT, request.send()).await.expect("sse headers in time").unwrap();
    assert_eq!(response.status(), 200, "sse {path}");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Sse { response, buffer: Vec::new() }
}

impl Sse {
    /// The next frame with data (comments skipped); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(raw).unwrap();
                let mut id = None;
                let mut data = None;
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                match data {
                    Some(data) => return Some(SseFrame { id, data }),
                    None => continue,
                }
            }
            match tokio::time::timeout(WAIT, self.response.chunk()).await.expect("sse data in time") {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// The next frame's data; panics if the stream ends.
    pub async fn data(&mut self) -> Value {
        self.next().await.expect("stream still open").data
    }

    /// Asserts no frame arrives for a short while.
    pub async fn quiet(&mut self) {
        if let Ok(frame) = tokio::time::timeout(QUIET, self.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }
}

/// Room events only (control events dropped), for comparing what participants saw.
pub fn room_events(events: &[Value]) -> Vec<Value> {
    events.iter().filter(|e| e.get("seq").is_some()).cloned().collect()
}

/// `(seq, type, message)` triples, the comparable part of room events.
pub fn summary(events: &[Value]) -> Vec<(u64, String, String)> {
    room_events(events)
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Opens `/ws` over a plain TCP socket, by hand (for what no client library sends, or a client that never reads).
/// Returns the socket and the bytes that came after the `101` response head.
pub async fn raw_ws_upgrade(server: &Server) -> (TcpStream, Vec<u8>) {
    let (stream, _, rest) = raw_ws_upgrade_head(server).await;
    (stream, rest)
}

/// [`raw_ws_upgrade`], also returning the `101` response head. The request is RFC 6455's example (its key is
/// `dGhlIHNhbXBsZSBub25jZQ==`) with `Connection` as Firefox sends it, a list.
pub async fn raw_ws_upgrade_head(server: &Server) -> (TcpStream, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("a response in time").unwrap();
        assert!(n > 0, "closed before the response head");
        buffer.extend_from_slice(&chunk[..n]);
    };
    assert!(buffer.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buffer));
    let rest = buffer.split_off(end);
    (stream, String::from_utf8_lossy(&buffer).into_owned(), rest)
}

/// How a streaming response of HTTP streaming or the forever iframe frames its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `GET /api/stream`: one JSON event per line.
    Ndjson,
    /// `GET /api/iframe`: `<script nonce=..>parent.chatlab(EVENT)</script>` per event.
    Script,
}

impl Framing {
    /// Both, with their technique's name.
    pub const ALL: [(Framing, &'static str); 2] = [(Framing::Ndjson, "stream"), (Framing::Script, "iframe")];
}

/// An NDJSON stream or a forever-iframe document read event by event (never collected).
pub struct Streamed {
    pub response: reqwest::Response,
    pub framing: Framing,
    buffer: Vec<u8>,
    /// Every script's opening tag seen, for checking nonces.
    pub tags: Vec<String>,
}

/// Opens `GET path` (an `/api/stream` or `/api/iframe` URL) and expects `200`.
pub async fn streamed(server: &Server, path: &str) -> Streamed {
    let framing = if path.starts_with("/api/iframe") { Framing::Script } else { Framing::Ndjson };
    let response =
        tokio::time::timeout(WAIT, http().get(server.url(path)).send()).await.expect("headers in time").unwrap();
    assert_eq!(response.status(), 200, "{path}");
    Streamed { response, framing, buffer: Vec::new(), tags: Vec::new() }
}

impl Streamed {
    /// The next event; `None` when the response ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.take() {
                return Some(event);
            }
            match tokio::time::timeout(WAIT, self.response.chunk()).await.expect("stream data in time") {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// An event from the buffer, if a whole one is there; keep-alives and the document's start are skipped.
    fn take(&mut self) -> Option<Value> {
        loop {
            let end = self.buffer.iter().position(|b| *b == b'\n')?;
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8(line).unwrap();
            let line = line.trim_end_matches('\n');
            match self.framing {
                Framing::Ndjson if line.is_empty() => continue,
                Framing::Ndjson => return Some(serde_json::from_str(line).unwrap()),
                Framing::Script => {
                    let Some(rest) = line.strip_prefix("<script") else { continue };
                    let (tag, call) = rest.split_once('>').expect("a script's tag ends");
                    self.tags.push(format!("<script{tag}>"));
                    let json = call
                        .strip_prefix("parent.chatlab(")
                        .and_then(|c| c.strip_suffix(")</script>"))
                        .unwrap_or_else(|| panic!("a script calls parent.chatlab: {line}"));
                    assert!(!json.contains('<'), "no `<` inside a script: {json}");
                    return Some(serde_json::from_str(json).unwrap());
                }
            }
        }
    }

    /// The next event; panics if the response ends.
    pub async fn data(&mut self) -> Value {
        self.next().await.expect("stream still open")
    }

    /// Asserts no event arrives for a short while.
    pub async fn quiet(&mut self) {
        if let Ok(event) = tokio::time::timeout(QUIET, self.next()).await {
            panic!("expected silence, got {event:?}");
        }
    }
}

/// `POST /api/messages` to `base` as `session`, with an `Idempotency-Key` when given.
pub async fn post_keyed(base: &str, session: &str, key: Option<&str>, text: &str) -> (u16, Value) {
    let mut request = http().post(format!("{base}/api/messages?session={session}")).body(text.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A stored session record as the brokers keep it: guest `guest` (nickname `游客N`), joined at `since_ms` over SSE,
/// cursor 0.
pub fn session_record(token: &str, since_ms: u64, guest: u64) -> chatlab::model::SessionRecord {
    chatlab::model::SessionRecord {
        token: token.into(),
        id: format!("id-{token}"),
        nickname: format!("游客{guest}"),
        guest,
        transport: chatlab::model::Transport::Sse,
        since_ms,
        cursor: 0,
        seed: false,
    }
}
