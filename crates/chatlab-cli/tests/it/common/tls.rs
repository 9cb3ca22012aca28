//! An HTTPS client for the tests: one TLS connection (ALPN as asked), HTTP/2 or HTTP/1.1 as the server chose, with
//! every plaintext byte counted (the HTTP bytes inside TLS, as the server's wire counters count them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chatlab::metering::wire::{Counted, Tally};
use chatlab::tls::Trust;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{Server, WAIT};

/// Bytes a client read and wrote (plaintext).
#[derive(Debug, Default)]
pub struct Bytecount {
    pub read: AtomicU64,
    pub wrote: AtomicU64,
    /// Over HTTP/2: the bytes of each stream, from the frame headers both ways.
    pub h2: Mutex<Option<H2Count>>,
}

/// One direction of an HTTP/2 stream, as a client counts it from the frames it wrote or read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SideCount {
    /// Every byte of the stream's frames (9-byte frame headers included).
    pub bytes: u64,
    /// `HEADERS` and `CONTINUATION` frames, whole.
    pub head: u64,
    /// `DATA` frames, whole.
    pub body: u64,
    /// `DATA` payloads.
    pub data: u64,
    pub frames: u64,
}

/// An HTTP/2 stream both ways: `up` what the client wrote, `down` what it read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamCount {
    pub up: SideCount,
    pub down: SideCount,
}

/// One direction's frame follower: the preface still to pass, the frame header being read, the current frame
/// (type, stream, payload bytes left).
#[derive(Debug, Default)]
struct Follow {
    preface: usize,
    head: [u8; 9],
    have: usize,
    current: Option<(u8, u32, usize)>,
}

impl Follow {
    /// Follows `data`: `count(kind, stream, bytes, payload bytes, a frame starts)` for each run of it.
    fn feed(&mut self, mut data: &[u8], count: &mut impl FnMut(u8, u32, u64, u64, bool)) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                count(0xFF, 0, n as u64, 0, false);
                data = &data[n..];
                continue;
            }
            match &mut self.current {
                Some((kind, stream, left)) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    count(*kind, *stream, n as u64, n as u64, false);
                    if *left == 0 {
                        self.current = None;
                    }
                    data = &data[n..];
                }
                None => {
                    let n = (9 - self.have).min(data.len());
                    self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    if self.have == 9 {
                        self.have = 0;
                        let h = self.head;
                        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                        count(h[3], stream, 9, 0, true);
                        if len > 0 {
                            self.current = Some((h[3], stream, len));
                        }
                    }
                }
            }
        }
    }
}

/// An HTTP/2 client connection's bytes by stream.
#[derive(Debug, Default)]
pub struct H2Count {
    wrote: Follow,
    read: Follow,
    /// The streams, by id.
    pub streams: std::collections::BTreeMap<u32, StreamCount>,
    /// The streams the client opened, in order.
    pub opened: Vec<u32>,
    /// The connection's own bytes: the preface and the frames of stream 0.
    pub connection: StreamCount,
}

impl H2Count {
    fn new() -> Self {
        H2Count { wrote: Follow { preface: 24, ..Follow::default() }, ..H2Count::default() }
    }

    fn feed(&mut self, data: &[u8], wrote: bool) {
        let H2Count { wrote: w, read: r, streams, opened, connection } = self;
        let follow = if wrote { w } else { r };
        follow.feed(data, &mut |kind, stream, n, payload, starts| {
            if stream == 0 {
                let side = if wrote { &mut connection.up } else { &mut connection.down };
                side.bytes += n;
                side.frames += u64::from(starts);
                return;
            }
            if wrote && starts && kind == 0x1 && !streams.contains_key(&stream) {
                opened.push(stream);
            }
            let count = streams.entry(stream).or_default();
            let side = if wrote { &mut count.up } else { &mut count.down };
            side.bytes += n;
            side.frames += u64::from(starts);
            match kind {
                0x1 | 0x9 => side.head += n,
                0x0 => {
                    side.body += n;
                    side.data += payload;
                }
                _ => {}
            }
        });
    }
}

/// The client's tally: a handle on its [`Bytecount`].
#[derive(Debug, Clone, Default)]
pub struct Count(pub Arc<Bytecount>);

impl Tally for Count {
    fn read(&self, data: &[u8]) {
        self.0.read.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(h2) = self.0.h2.lock().unwrap().as_mut() {
            h2.feed(data, false);
        }
    }

    fn wrote(&self, data: &[u8]) {
        self.0.wrote.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(h2) = self.0.h2.lock().unwrap().as_mut() {
            h2.feed(data, true);
        }
    }
}

/// A TLS stream whose plaintext is counted.
pub type Secure = Counted<TlsStream<TcpStream>, Count>;

/// Opens TLS to `server` offering `alpn`, believing any certificate (the server's is self-signed).
pub async fn secure(server: &Server, alpn: &[&[u8]]) -> Secure {
    secure_trusting(server, alpn, &Trust::Anyone).await.expect("TLS handshake")
}

/// Opens TLS to `server` offering `alpn`, believing `trust`.
pub async fn secure_trusting(server: &Server, alpn: &[&[u8]], trust: &Trust) -> std::io::Result<Secure> {
    let config = chatlab::tls::client_config(trust, alpn)?;
    let tcp = TcpStream::connect(server.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp)).await??;
    Ok(Counted::new(tls, Count::default()))
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection speaking the HTTP version ALPN chose.
pub struct Client {
    sender: Sender,
    /// Its plaintext bytes.
    pub bytes: Arc<Bytecount>,
    /// `h2` or `http/1.1`.
    pub alpn: String,
    /// The host requests name (`:authority` or `Host`); `localhost` unless a test changes it.
    pub authority: String,
}

impl Client {
    /// Connects to `server` offering only `alpn` (`h2` or `http/1.1`).
    pub async fn connect(server: &Server, alpn: &str) -> Client {
        let stream = secure(server, &[alpn.as_bytes()]).await;
        let chosen = stream.get_ref().get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        assert_eq!(chosen.as_deref(), Some(alpn), "ALPN chose the protocol offered");
        let bytes = stream.tally().0.clone();
        let io = TokioIo::new(stream);
        let sender = if alpn == "h2" {
            *bytes.h2.lock().unwrap() = Some(H2Count::new());
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await.expect("HTTP/2 handshake");
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
            tokio::spawn(connection.with_upgrades());
            Sender::H1(sender)
        };
        Client { sender, bytes, alpn: alpn.to_owned(), authority: "localhost".to_owned() }
    }

    /// Another handle on the same HTTP/2 connection, for requests in parallel with this one's.
    pub fn fork(&self) -> Client {
        let Sender::H2(sender) = &self.sender else { panic!("only an HTTP/2 connection carries requests in parallel") };
        Client {
            sender: Sender::H2(sender.clone()),
            bytes: self.bytes.clone(),
            alpn: self.alpn.clone(),
            authority: self.authority.clone(),
        }
    }

    /// An HTTP/2 stream's bytes as this connection counted them so far.
    pub fn stream(&self, id: u32) -> StreamCount {
        let h2 = self.bytes.h2.lock().unwrap();
        h2.as_ref().expect("an HTTP/2 connection").streams.get(&id).copied().unwrap_or_default()
    }

    /// The connection's own bytes (preface, stream 0's frames) as counted so far.
    pub fn connection(&self) -> StreamCount {
        self.bytes.h2.lock().unwrap().as_ref().expect("an HTTP/2 connection").connection
    }

    /// The HTTP/2 streams this connection opened, in order.
    pub fn opened(&self) -> Vec<u32> {
        self.bytes.h2.lock().unwrap().as_ref().expect("an HTTP/2 connection").opened.clone()
    }

    /// Bytes (read, written) so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.bytes.read.load(Ordering::Relaxed), self.bytes.wrote.load(Ordering::Relaxed))
    }

    /// Sends a request (headers as given, plus `host` on HTTP/1.1), the response's body left to the caller.
    pub async fn send(&mut self, method: Method, path: &str, body: Option<(&str, &str)>) -> Response<Incoming> {
        self.request(method, path, body, &[]).await
    }

    /// Sends a bodyless request with extra `headers`.
    pub async fn send_with(&mut self, method: Method, path: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
        self.request(method, path, None, headers).await
    }

    /// Sends a request with a body (if any) and extra `headers`.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, &str)>,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let mut request = Request::builder().method(method);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request = match &self.sender {
            Sender::H2(_) => request.uri(format!("https://{}{path}", self.authority)),
            Sender::H1(_) => request.uri(path).header("host", &self.authority),
        };
        let body = match body {
            Some((content_type, text)) => {
                request = request.header("content-type", content_type);
                Bytes::from(text.to_owned())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body)).unwrap();
        let response = tokio::time::timeout(WAIT, async {
            match &mut self.sender {
                Sender::H1(sender) => {
                    sender.ready().await.expect("connection open");
                    sender.send_request(request).await
                }
                Sender::H2(sender) => {
                    sender.ready().await.expect("connection open");
                    sender.send_request(request).await
                }
            }
        });
        let response = response.await.expect("a response in time").expect("a response");
        let expected = if self.alpn == "h2" { hyper::Version::HTTP_2 } else { hyper::Version::HTTP_11 };
        assert_eq!(response.version(), expected);
        response
    }

    /// Sends a request and reads the whole answer as JSON.
    pub async fn json(&mut self, method: Method, path: &str, body: Option<(&str, &str)>) -> (u16, Value) {
        let response = self.send(method, path, body).await;
        let status = response.status().as_u16();
        let body = tokio::time::timeout(WAIT, response.into_body().collect()).await.expect("a body in time");
        let body = body.expect("a body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Joins as `transport`: (session, join seq).
    pub async fn join(&mut self, transport: &str) -> (String, u64) {
        let body = format!("{{\"transport\":\"{transport}\"}}");
        let (status, json) = self.json(Method::POST, "/api/sessions", Some(("application/json", &body))).await;
        assert_eq!(status, 201, "{json}");
        (json["session"].as_str().unwrap().to_owned(), json["seq"].as_u64().unwrap())
    }

    /// Posts a chat text for `session`: its seq.
    pub async fn post(&mut self, session: &str, text: &str) -> u64 {
        let path = format!("/api/messages?session={session}");
        let (status, json) = self.json(Method::POST, &path, Some(("text/plain;charset=UTF-8", text))).await;
        assert_eq!(status, 202, "{json}");
        json["seq"].as_u64().unwrap()
    }
}

/// Reads a streamed body (SSE, NDJSON, iframe) until `needle` has come; returns everything read.
pub async fn read_until(body: &mut Incoming, needle: &str) -> String {
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        while !text.contains(needle) {
            let frame = body.frame().await.expect("the stream goes on").expect("a frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} did not come; got {text:?}"));
    text
}
