//! The WebSocket closing handshake (RFC 6455 7.1.1, 5.5.1) as the server finishes it: a close the server starts
//! (replaced, shutdown, protocol error) waits for the client's Close before TCP ends, so a real client reads the
//! code rather than 1006, but not forever; a client's Close is echoed with its code; a message in too many
//! frames is refused with a code; `--echo` serves `/echo` through the same socket code.

use crate::common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// A client Close frame with `code`.
fn close_frame(code: u16) -> Vec<u8> {
    masked(0x88, &code.to_be_bytes())
}

/// Server frames read off a raw socket, one at a time.
struct Frames {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Frames {
    /// The next whole frame: (opcode, payload); `None` at the end of the stream.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buffer.len() >= 2 {
                let (len, header) = match self.buffer[1] & 0x7F {
                    126 if self.buffer.len() >= 4 => (u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize, 4),
                    127 if self.buffer.len() >= 10 => {
                        (u64::from_be_bytes(self.buffer[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    len => (len as usize, 2),
                };
                if len != usize::MAX && self.buffer.len() >= header + len {
                    let opcode = self.buffer[0] & 0x0F;
                    let payload = self.buffer[header..header + len].to_vec();
                    self.buffer.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await.expect("a frame in time").ok()?;
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads up to the server's Close frame; its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.next().await {
                Some((0x8, payload)) => return u16::from_be_bytes([payload[0], payload[1]]),
                Some(_) => continue,
                None => panic!("the connection ended without a Close frame"),
            }
        }
    }

    /// Waits for the end of the stream (the server closed TCP); panics on any frame or after `within`.
    async fn end(&mut self, within: Duration) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(within, self.stream.read(&mut chunk))
            .await
            .expect("the server closes TCP in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing after the Close: {:?}", &chunk[..n]);
    }

    /// Asserts TCP stays open for a while (the server is waiting for the client's Close).
    async fn still_open(&mut self) {
        let mut chunk = [0u8; 1024];
        if let Ok(read) = tokio::time::timeout(QUIET, self.stream.read(&mut chunk)).await {
            panic!("the server did not wait for the client's Close: read {read:?}");
        }
    }
}

/// A raw `/ws` connection past its welcome; returns it and its session token.
async fn raw_joined(server: &Server) -> (Frames, String) {
    let (stream, rest) = raw_ws_upgrade(server).await;
    let mut frames = Frames { stream, buffer: rest };
    let (opcode, welcome) = frames.next().await.expect("the welcome");
    assert_eq!(opcode, 0x1);
    let welcome: Value = serde_json::from_slice(&welcome).unwrap();
    (frames, welcome["session"].as_str().unwrap().to_owned())
}

/// Takes `session` over with a newer `/ws`, which closes the older one with 4000.
async fn take_over(server: &Server, session: &str) -> Ws {
    let mut newer = ws(&server.ws_url(&format!("/ws?session={session}"))).await;
    assert_eq!(ws_next(&mut newer).await["type"], "welcome");
    newer
}

/// A replaced channel's client reads 4000 and a clean end (tokio-tungstenite reports an unclean one as an error:
/// what a browser shows as 1006); on the wire, the server keeps TCP open after its Close until the client's
/// Close comes back, and closes it right after.
#[tokio::test]
async fn a_replaced_client_reads_4000_and_the_server_waits_for_its_close() {
    let server = start().await;
    let mut older = ws(&server.ws_url("/ws")).await;
    let session = ws_next(&mut older).await["session"].as_str().unwrap().to_owned();
    let _newer = take_over(&server, &session).await;
    assert_eq!(ws_close_code(&mut older).await.map(u16::from), Some(4000));
    let end = tokio::time::timeout(WAIT, older.next()).await.expect("the end in time");
    assert!(end.is_none(), "a clean end after the handshake, got {end:?}");

    let (mut raw, session) = raw_joined(&server).await;
    let _newer = take_over(&server, &session).await;
    assert_eq!(raw.close_code().await, 4000);
    raw.still_open().await;
    raw.stream.write_all(&close_frame(1000)).await.unwrap();
    let answered = Instant::now();
    raw.end(WAIT).await;
    assert!(answered.elapsed() < Duration::from_secs(1), "TCP ends as soon as the client answered");
}

/// A client that never answers the server's Close is dropped once `--ws-close-timeout-ms` has passed, not
/// before and not much after.
#[tokio::test]
async fn a_client_that_never_answers_the_close_is_dropped_after_the_bound() {
    let server = start_with(chatlab::config::Config { ws_close_timeout_ms: 800, ..config() }).await;
    let (mut raw, session) = raw_joined(&server).await;
    let _newer = take_over(&server, &session).await;
    assert_eq!(raw.close_code().await, 4000);
    let closed = Instant::now();
    raw.end(WAIT).await;
    let waited = closed.elapsed();
    assert!(waited >= Duration::from_millis(650), "waited for the client's Close: {waited:?}");
    assert!(waited < Duration::from_millis(2500), "but not much longer than the bound: {waited:?}");
}

/// On shutdown a tokio-tungstenite client reads 1001 and a clean end.
#[tokio::test]
async fn a_shutdown_close_is_read_with_1001_and_ends_cleanly() {
    let mut server = start().await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut socket).await["type"], "welcome");
    server.stop();
    assert_eq!(ws_close_code(&mut socket).await.map(u16::from), Some(1001));
    let end = tokio::time::timeout(WAIT, socket.next()).await.expect("the end in time");
    assert!(end.is_none(), "a clean end after the handshake, got {end:?}");
}

/// A client's Close is echoed with its own code (here an application code), then the server closes TCP.
#[tokio::test]
async fn a_client_close_is_echoed_with_its_code_then_tcp_ends() {
    let server = start().await;
    let (mut raw, _) = raw_joined(&server).await;
    raw.stream.write_all(&close_frame(4321)).await.unwrap();
    assert_eq!(raw.close_code().await, 4321);
    raw.end(WAIT).await;
}

/// A message may come in at most `--ws-max-fragments` frames (default 128): exactly that many is a text like
/// any other; one empty continuation more is refused with 1009, and the server still finishes the handshake.
#[tokio::test]
async fn a_message_in_too_many_frames_is_refused_with_1009() {
    let server = start().await;
    let (mut raw, _) = raw_joined(&server).await;
    let mut message = masked(0x01, b"in pieces");
    for _ in 0..126 {
        message.extend(masked(0x00, b""));
    }
    message.extend(masked(0x80, b"!"));
    raw.stream.write_all(&message).await.unwrap();
    loop {
        let (opcode, payload) = raw.next().await.expect("the text comes back as a room event");
        assert_eq!(opcode, 0x1);
        let event: Value = serde_json::from_slice(&payload).unwrap();
        if event["type"] == "message" {
            assert_eq!(event["message"], "in pieces!");
            break;
        }
    }

    let mut flood = masked(0x01, b"never ends");
    for _ in 0..1000 {
        flood.extend(masked(0x00, b""));
    }
    raw.stream.write_all(&flood).await.unwrap();
    assert_eq!(raw.close_code().await, 1009);
    raw.stream.write_all(&close_frame(1000)).await.unwrap();
    raw.end(WAIT).await;
}

/// `--echo` serves `/echo`: texts and binaries come back as sent, a client's close is echoed; without the flag
/// `/echo` is not there.
#[tokio::test]
async fn the_echo_sends_back_texts_and_binaries_only_when_enabled() {
    let server = start_with(chatlab::config::Config { echo: true, ..config() }).await;
    let mut echo = ws(&server.ws_url("/echo")).await;
    let big = "é".repeat(40_000);
    for message in [Message::Text("hello".into()), Message::Binary(vec![0u8, 255, 7].into()), Message::Text(big.into())]
    {
        echo.send(message.clone()).await.unwrap();
        let back = tokio::time::timeout(WAIT, echo.next()).await.expect("the echo in time").unwrap().unwrap();
        assert_eq!(back, message);
    }
    echo.close(None).await.unwrap();
    let end = tokio::time::timeout(WAIT, echo.next()).await.expect("the end in time");
    assert!(matches!(end, None | Some(Ok(Message::Close(_)))), "{end:?}");

    let plain = start().await;
    let (status, _) = get_json(&plain, "/echo").await;
    assert_eq!(status, 404, "no /echo without --echo");
}
