//! A raw HTTP/1.1 and WebSocket client over a plain TCP socket that counts every byte it sends and receives: what
//! the wire-counter tests compare the server's counts with.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::WAIT;

/// A WebSocket upgrade request's version and headers, after `GET <path> `.
pub const UPGRADE: &str = "HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw client socket that counts every byte it sends and receives.
pub struct Raw {
    pub stream: TcpStream,
    pub buffer: Vec<u8>,
    pub sent: u64,
    pub received: u64,
}

/// One HTTP response as read off the socket.
pub struct Response {
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (the first of its name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Raw {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = timeout(WAIT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        Raw { stream, buffer: Vec::new(), sent: 0, received: 0 }
    }

    /// (sent, received) so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// Writes `bytes`, counting them.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.sent += bytes.len() as u64;
    }

    /// Reads more bytes into the buffer; panics at end of stream or after [`WAIT`].
    pub async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, self.stream.read(&mut chunk)).await.expect("bytes in time").expect("read");
        assert!(n > 0, "the server closed the connection");
        self.received += n as u64;
        self.buffer.extend_from_slice(&chunk[..n]);
    }

    /// The next `n` bytes.
    pub async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buffer.len() < n {
            self.fill().await;
        }
        self.buffer.drain(..n).collect()
    }

    /// The bytes up to and including the next `end`.
    pub async fn take_until(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.buffer.windows(end.len()).position(|w| w == end) {
                return self.buffer.drain(..at + end.len()).collect();
            }
            self.fill().await;
        }
    }

    /// A response head, up to and including its blank line.
    pub async fn head(&mut self) -> String {
        String::from_utf8(self.take_until(b"\r\n\r\n").await).expect("UTF-8 head")
    }

    /// One chunk of a chunked body (empty for the last one).
    pub async fn chunk(&mut self) -> Vec<u8> {
        let line = self.take_until(b"\r\n").await;
        let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).expect("chunk size");
        let data = self.take(size).await;
        assert_eq!(self.take(2).await, b"\r\n");
        data
    }

    /// Appends the chunks of a chunked body, as text, to `text` until it contains `needle`.
    pub async fn chunks_until(&mut self, text: &mut String, needle: &str) {
        while !text.contains(needle) {
            text.push_str(&String::from_utf8(self.chunk().await).expect("UTF-8 chunk"));
        }
    }

    /// A whole response with a `Content-Length` or chunked body.
    pub async fn response(&mut self) -> Response {
        let head = self.head().await;
        let mut response = Response { head, body: Vec::new() };
        if let Some(length) = response.header("content-length") {
            response.body = self.take(length.parse().expect("length")).await;
        } else if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let chunk = self.chunk().await;
                if chunk.is_empty() {
                    break;
                }
                response.body.extend(chunk);
            }
        }
        response
    }

    /// Sends a request and reads its whole response; returns it with the bytes sent and received for it.
    pub async fn exchange(&mut self, request: &[u8]) -> (Response, (u64, u64)) {
        let before = self.totals();
        self.send(request).await;
        let response = self.response().await;
        assert!(self.buffer.is_empty(), "nothing beyond the response");
        (response, (self.sent - before.0, self.received - before.1))
    }

    /// Reads one unmasked server frame: (header bytes, opcode, payload).
    pub async fn server_frame(&mut self) -> (usize, u8, Vec<u8>) {
        let header = self.take(2).await;
        assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
        let (extra, length) = match header[1] & 0x7f {
            126 => (2, u16::from_be_bytes(self.take(2).await.try_into().unwrap()) as usize),
            127 => (8, u64::from_be_bytes(self.take(8).await.try_into().unwrap()) as usize),
            n => (0, n as usize),
        };
        (2 + extra, header[0] & 0x0f, self.take(length).await)
    }
}

/// A `GET` request.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: raw-test\r\n\r\n").into_bytes()
}

/// A `POST` request with a `Content-Length` body.
pub fn post(path: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One client frame, masked as RFC 6455 requires: `first` is the FIN bit and opcode byte; payloads up to 64 KiB.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![first];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(len).expect("a payload under 64 KiB").to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A final client frame of `opcode`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked(0x80 | opcode, payload)
}
