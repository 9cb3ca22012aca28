//! The server side of a WebSocket (RFC 6455), shared by `/ws` and the seed protocol on `/`: the upgrade
//! handshake ([`Upgrade`]) and the connection (`Socket`).
//!
//! Client frames are read by tungstenite, which checks masks, sizes, fragments and UTF-8 and answers pings and
//! close frames. Room events are written here: a server frame is unmasked, so its bytes are the same for every
//! receiver, and a batch of events is encoded straight from their shared JSON into one buffer and written with
//! one call: tungstenite's message API would add, per delivery, a copy of the payload handed to it and its
//! per-message bookkeeping, which is most of a delivery's cost in a big room (docs/benchmarks.md has the figures).
//!
//! Closing (RFC 6455 7.1.1, 5.5.1): when the server ends a connection (`Socket::close`) it sends its Close
//! frame, then keeps reading (and discarding) until the client's Close comes back, at most
//! `--ws-close-timeout-ms`, and only then closes TCP; so the client learns the server's code instead of seeing
//! 1006. When the client closes first, tungstenite queues the echo of its code, `Socket::recv` writes it out,
//! and the socket is shut down (`Socket::shutdown`) rather than reset.
//!
//! tungstenite never touches the socket's write side: what it writes (pongs, close replies, and the few frames
//! sent through `Socket::send`) lands in the socket's queue, whole frames only, and goes out before or with
//! the next batch. So its frames and ours never interleave.

use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

use crate::config::Config;
use crate::error::AppError;

/// A valid WebSocket upgrade request (HTTP/1.1), as an extractor. A request that is not one is refused with
/// `400` and what is wrong with it; one for another protocol version with `426` and `Sec-WebSocket-Version: 13`.
#[derive(Debug)]
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let refuse = |why: &str| AppError::BadRequest(format!("not a WebSocket upgrade: {why}"));
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse("Connection must include upgrade"));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse("Upgrade must be websocket"));
        }
        match parts.headers.get(header::SEC_WEBSOCKET_VERSION) {
            Some(version) if version.as_bytes() == b"13" => {}
            Some(version) => {
                return Err(AppError::WebSocketVersion(String::from_utf8_lossy(version.as_bytes()).into_owned()))
            }
            None => return Err(refuse("Sec-WebSocket-Version is missing")),
        }
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).ok_or_else(|| refuse("Sec-WebSocket-Key is missing"))?;
        let key = key.clone();
        let on_upgrade =
            parts.extensions.remove::<OnUpgrade>().ok_or_else(|| refuse("the connection cannot upgrade"))?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` response; once it is sent, `serve` runs with the connection's [`Socket`].
    pub(crate) fn on_upgrade<F, Fut>(self, config: &Config, serve: F) -> Response<Body>
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.upgrade_with(Limits::chat(config), serve)
    }

    /// [`Upgrade::on_upgrade`] with the echo's message limits ([`Limits::echo`]).
    pub(crate) fn on_upgrade_echo<F, Fut>(self, config: &Config, serve: F) -> Response<Body>
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.upgrade_with(Limits::echo(config), serve)
    }

    fn upgrade_with<F, Fut>(self, limits: Limits, serve: F) -> Response<Body>
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            // A client that goes away before the handshake completes leaves nothing to serve.
            if let Ok(upgraded) = on_upgrade.await {
                serve(Socket::new(upgraded, limits)).await;
            }
        });
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // The accept key is base64: always a valid header value.
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Whether a comma-separated header includes `token` (case-insensitive): `Connection: keep-alive, Upgrade`.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What a socket enforces on its client, and how long it waits for the client's Close.
struct Limits {
    ws: WebSocketConfig,
    /// `--ws-close-timeout-ms`.
    close_timeout: Duration,
    /// `--ws-max-fragments`.
    max_fragments: u32,
}

/// Largest message (and frame) `/echo` takes and sends back: Autobahn|Testsuite's cases 9.1.* send texts of up
/// to 16 MiB. The echo is off unless `--echo` is given.
pub(crate) const ECHO_MAX_MESSAGE: usize = 16 * 1024 * 1024;

impl Limits {
    /// What tungstenite enforces on client frames, sized for chat. Its read buffer is allocated up front and
    /// kept for the connection's life, so it is small (a chat line is a few hundred bytes; a longer frame grows
    /// it as needed); tungstenite buffers only the control frames it writes, so its write buffer stays empty,
    /// and its limit is the most the socket's queue may hold before reading stops (`--ws-max-buffer`).
    fn chat(config: &Config) -> Limits {
        Limits {
            ws: WebSocketConfig::default()
                .read_buffer_size(256)
                .write_buffer_size(0)
                .max_write_buffer_size(config.ws_max_buffer.max(16 * 1024))
                .max_frame_size(Some(config.max_frame_bytes))
                .max_message_size(Some(config.max_frame_bytes)),
            close_timeout: config.ws_close_timeout(),
            max_fragments: config.ws_max_fragments,
        }
    }

    /// The echo's: messages up to [`ECHO_MAX_MESSAGE`] in and out (its write limit must hold one whole echoed
    /// message), and at least 2^20 frames per message (Autobahn's 9.3.1/9.4.1 send 4 MiB in 64-byte frames, and
    /// a 65,536 bound refused them); the close handling is the chat's.
    fn echo(config: &Config) -> Limits {
        let chat = Limits::chat(config);
        Limits {
            ws: chat
                .ws
                .max_write_buffer_size(ECHO_MAX_MESSAGE + 64 * 1024)
                .max_frame_size(Some(ECHO_MAX_MESSAGE))
                .max_message_size(Some(ECHO_MAX_MESSAGE)),
            max_fragments: chat.max_fragments.max(1 << 20),
            ..chat
        }
    }
}

/// Most bytes a socket's queue keeps allocated once it is written out: a busy connection's batches would
/// otherwise leave each idle one holding its largest.
const KEEP: usize = 512;

/// Most bytes a paced stream's queue keeps allocated from one tick to the next ([`Socket::write_out`]): a
/// typical paced write (tens of events) reuses its buffer, while a burst's write does not leave every busy
/// connection of a big room holding a burst-sized buffer until the room calms down.
const KEEP_PACED: usize = 8 * 1024;

/// One upgraded connection: reads client messages, writes room events and control frames.
pub(crate) struct Socket {
    io: TokioIo<Upgraded>,
    context: WebSocketContext,
    /// Bytes to write, whole frames only, in order: what tungstenite wrote and the room events of
    /// [`Socket::push_event`].
    queue: Vec<u8>,
    /// Counts the frames of the message being read (`--ws-max-fragments`).
    fragments: Fragments,
    /// `--ws-close-timeout-ms`.
    close_timeout: Duration,
}

impl Socket {
    fn new(upgraded: Upgraded, limits: Limits) -> Socket {
        Socket {
            io: TokioIo::new(upgraded),
            context: WebSocketContext::new(Role::Server, Some(limits.ws)),
            queue: Vec::new(),
            fragments: Fragments::new(limits.max_fragments),
            close_timeout: limits.close_timeout,
        }
    }

    /// Ends the connection from the server's side (RFC 6455 7.1.1): sends a Close frame with `code`, reads and
    /// discards what the client still sends until its Close comes back (or it closes TCP, or a read fails), then
    /// closes TCP. All of it within `--ws-close-timeout-ms`: a client that never answers (or never reads) is
    /// dropped when it runs out. A client that has sent a Close already is not waited for.
    pub(crate) async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) };
        let bound = self.close_timeout;
        let handshake = async {
            if self.send(Message::Close(Some(frame))).await.is_err() || self.fragments.peer_closed {
                // A client that has sent a Close (even one tungstenite refused, say with a bad code or reason)
                // sends nothing more (RFC 6455 5.5.1): there is nothing to wait for.
                return;
            }
            // Until the client's Close (`recv` then answers `None`), its end of TCP, or a broken frame.
            while let Some(Ok(_)) = self.recv().await {}
        };
        if tokio::time::timeout(bound, handshake).await.is_err() {
            tracing::debug!(code, "a WebSocket client did not answer the server's Close in time");
        }
        self.shutdown().await;
    }

    /// Closes TCP's write side (a FIN), bounded by `--ws-close-timeout-ms`; the connection is closed when the
    /// socket is dropped. Called after the closing handshake, so the peer gets an orderly end of stream.
    pub(crate) async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.close_timeout, poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx))).await;
    }

    /// The next message from the client; `None` once the connection is closed (after a close frame, the reply
    /// to it is already written and TCP's write side shut down). A ping shows here too, its pong already queued. Cancel-safe: a frame read in
    /// part stays buffered.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        let received = poll_fn(|cx| self.poll_recv(cx)).await;
        if matches!(received, Some(Ok(Message::Close(_)))) {
            // tungstenite queued the close reply (the client's own code, when the client closed first): send it
            // now, the peer is waiting for it; then end TCP in order, the handshake being complete.
            let _ = self.flush().await;
            self.shutdown().await;
        }
        received
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        // A pong or close reply queued earlier goes out as the socket allows, without holding up reading.
        if !self.queue.is_empty() {
            match self.poll_write_queue(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => self.shrink(),
                Poll::Pending => {}
            }
        }
        if self.queue.len() > self.context.get_config().max_write_buffer_size {
            // A client that pings without reading the pongs is not read any further until they drain
            // (`--ws-max-buffer`): what it costs the server stays bounded. The write waker is registered.
            return Poll::Pending;
        }
        let mut stream = Stream { io: &mut self.io, cx, queue: &mut self.queue, fragments: &mut self.fragments };
        let read = self.context.read(&mut stream);
        if !self.queue.is_empty() {
            // It may have queued a pong just now.
            let _ = self.poll_write_queue(cx);
        }
        match read {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            // The socket had nothing more; its waker is registered.
            Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    /// Sends one message through tungstenite (the welcome, errors, pings, close frames) and writes it out.
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        let mut stream = Queue(&mut self.queue);
        let queued = self.context.write(&mut stream, message).and_then(|()| self.context.flush(&mut stream));
        // Whatever it queued goes out, even when it then reports the connection closed.
        self.write_queue().await?;
        queued
    }

    /// Writes out whatever tungstenite has queued (the reply to a close frame: tungstenite then reports the
    /// connection closed, after queuing it).
    async fn flush(&mut self) -> Result<(), tungstenite::Error> {
        let queued = self.context.flush(&mut Queue(&mut self.queue));
        self.write_queue().await?;
        queued
    }

    /// Makes room for `bytes` more in the queue: a batch's frames are encoded into one buffer, allocated once.
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.queue.reserve(bytes);
    }

    /// Queues one room event's JSON as a text frame, behind whatever is queued; [`Socket::write_out`] sends it.
    pub(crate) fn push_event(&mut self, json: &[u8]) {
        push_text_frame(&mut self.queue, json);
    }

    /// Writes out everything queued, in as few writes as the socket allows, and keeps the queue's memory (up to
    /// [`KEEP_PACED`] bytes): a paced stream writes again at the next tick ([`Socket::shrink`] once it stops).
    pub(crate) fn write_out(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        self.write_keeping(KEEP_PACED)
    }

    /// Writes the queue out, then gives back its memory past [`KEEP`] bytes.
    fn write_queue(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        self.write_keeping(KEEP)
    }

    /// Writes the queue out, then keeps at most `keep` bytes of it allocated. Cancel-safe: what was written is
    /// removed from the queue, so a retry goes on from there. A plain function returning the `poll_fn`, not an
    /// `async fn`: each level of `async` nesting would add to every parked connection's task.
    fn write_keeping(&mut self, keep: usize) -> impl Future<Output = io::Result<()>> + '_ {
        poll_fn(move |cx| {
            ready!(self.poll_write_queue(cx))?;
            self.release(keep);
            Poll::Ready(Ok(()))
        })
    }

    /// Gives back the queue's memory past [`KEEP`] bytes once it is written out: an idle connection keeps no
    /// batch-sized buffer.
    pub(crate) fn shrink(&mut self) {
        self.release(KEEP);
    }

    /// Frees the queue if it is empty and holds more than `keep` bytes.
    fn release(&mut self, keep: usize) {
        if self.queue.is_empty() && self.queue.capacity() > keep {
            self.queue = Vec::new();
        }
    }

    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.queue))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queue.drain(..written);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// Longest header of an unmasked server frame: 2 bytes, plus 8 for a 64-bit length.
pub(crate) const MAX_HEADER: usize = 10;

/// Appends one final, unmasked text frame carrying `payload` (RFC 6455, 5.2).
fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    const FIN_TEXT: u8 = 0x80 | 0x1;
    out.push(FIN_TEXT);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// The socket as tungstenite sees it while reading: reads come from the connection (`WouldBlock` when it has
/// nothing, with the task's waker registered), writes go to the queue.
struct Stream<'a, 'b> {
    io: &'a mut TokioIo<Upgraded>,
    cx: &'a mut Context<'b>,
    queue: &'a mut Vec<u8>,
    fragments: &'a mut Fragments,
}

impl Read for Stream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                self.fragments.feed(buf.filled())?;
                Ok(buf.filled().len())
            }
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Stream<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Queue(self.queue).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The read error of a message in more frames than `--ws-max-fragments`: closes with 1009.
#[derive(Debug)]
pub(crate) struct TooManyFragments;

impl std::fmt::Display for TooManyFragments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a message in too many frames")
    }
}

impl std::error::Error for TooManyFragments {}

/// Whether a read error is [`TooManyFragments`].
pub(crate) fn is_too_many_fragments(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<TooManyFragments>()))
}

/// Follows the frame headers in the bytes read from the client, to count the frames of the message being read
/// (tungstenite joins them without saying how many there were): a text or binary frame starts a message, a
/// continuation adds one, control frames do not count. Frame syntax errors are left to tungstenite.
struct Fragments {
    max: u32,
    /// Frames of the current message so far.
    count: u32,
    /// The current frame's header so far (at most 14 bytes), or `None` while in its payload.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload: u64,
    /// Whether a Close frame's header has come from the client.
    peer_closed: bool,
}

impl Fragments {
    fn new(max: u32) -> Fragments {
        Fragments { max, count: 0, header: [0; 14], have: 0, payload: 0, peer_closed: false }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.payload > 0 {
                let skip = self.payload.min(bytes.len() as u64);
                self.payload -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let len7 = self.header[1] & 0x7F;
            let extended = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extended + mask {
                continue;
            }
            self.payload = match extended {
                0 => u64::from(len7),
                2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                _ => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or_default()),
            };
            self.have = 0;
            match self.header[0] & 0x0F {
                0x0 => self.count = self.count.saturating_add(1),
                0x8 => self.peer_closed = true,
                opcode if opcode < 0x8 => self.count = 1,
                _ => {}
            }
            if self.count > self.max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, TooManyFragments));
            }
        }
        Ok(())
    }
}

/// The socket as tungstenite sees it while writing: the queue, with nothing to read.
struct Queue<'a>(&'a mut Vec<u8>);

impl Read for Queue<'_> {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Queue<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames as a client reads them: tungstenite's own parser agrees on every length form.
    #[test]
    fn text_frames_parse_back_at_every_length_form() {
        for len in [0, 1, 125, 126, 127, 1000, 0xFFFF, 0x10000, 70_000] {
            let payload = "x".repeat(len);
            let mut out = Vec::new();
            push_text_frame(&mut out, payload.as_bytes());
            push_text_frame(&mut out, b"next");
            let mut context = WebSocketContext::new(Role::Client, None);
            let mut input = io::Cursor::new(out);
            let mut stream = ReadOnly(&mut input);
            assert_eq!(context.read(&mut stream).unwrap(), Message::Text(payload.into()), "length {len}");
            assert_eq!(context.read(&mut stream).unwrap(), Message::Text("next".into()));
        }
    }

    /// The frame follower counts a message's frames whatever the reads' boundaries: byte by byte or in one read,
    /// with every length form and masked headers, control frames not counted, a new message starting over.
    #[test]
    fn fragments_are_counted_across_any_read_boundaries() {
        fn masked(first: u8, len: usize) -> Vec<u8> {
            let mut frame = vec![first];
            match len {
                0..=125 => frame.push(0x80 | len as u8),
                126..=0xFFFF => {
                    frame.push(0x80 | 126);
                    frame.extend_from_slice(&(len as u16).to_be_bytes());
                }
                _ => {
                    frame.push(0x80 | 127);
                    frame.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            frame.extend_from_slice(&[1, 2, 3, 4]);
            frame.extend(std::iter::repeat_n(0x55, len));
            frame
        }
        // Three messages of 4 frames each (a ping in between), then one of 5.
        let mut ok = Vec::new();
        for _ in 0..3 {
            ok.extend(masked(0x01, 200));
            ok.extend(masked(0x00, 0));
            ok.extend(masked(0x89, 3));
            ok.extend(masked(0x00, 70_000));
            ok.extend(masked(0x80, 1));
        }
        let mut over = ok.clone();
        over.extend(masked(0x02, 0));
        for _ in 0..4 {
            over.extend(masked(0x00, 0));
        }
        for chunk in [1, 7, ok.len()] {
            let mut fragments = Fragments::new(4);
            assert!(ok.chunks(chunk).all(|bytes| fragments.feed(bytes).is_ok()), "reads of {chunk}");
            let mut fragments = Fragments::new(4);
            let error = over.chunks(chunk).find_map(|bytes| fragments.feed(bytes).err()).expect("the fifth frame");
            assert!(is_too_many_fragments(&tungstenite::Error::Io(error)), "reads of {chunk}");
        }
    }

    #[test]
    fn a_header_token_is_found_in_a_list_and_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!has_token(&headers, header::CONNECTION, "upgrade"), "a token, not a substring");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use super::ReadOnly;

        /// A payload length, mostly at and around the edges of the three length forms (125/126, 65,535/65,536).
        fn length() -> impl Strategy<Value = usize> {
            prop_oneof![
                0usize..=130,
                0xFFFF - 4..=0xFFFF + 4usize,
                prop::sample::select(vec![0usize, 125, 126, 127, 0xFFFF, 0x10000]),
                0usize..200_000,
            ]
        }

        /// A text of `len` bytes (ASCII, with a two-byte character where there is room for one).
        fn text(len: usize, fill: u8) -> String {
            let mut text = String::with_capacity(len);
            if len >= 2 {
                text.push('é');
            }
            text.extend(std::iter::repeat_n(char::from(b'a' + fill % 26), len - text.len()));
            text
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            /// Any run of text frames the server writes is read back by tungstenite's client, frame for frame, and
            /// each frame's header is the shortest form for its length (RFC 6455 5.2: 7-bit to 125, 16-bit to
            /// 65,535, 64-bit beyond), so its size is the payload's plus 2, 4 or 10 bytes.
            #[test]
            fn text_frames_read_back_in_the_shortest_form(lens in prop::collection::vec(length(), 1..4), fill in any::<u8>()) {
                let texts: Vec<String> = lens.iter().map(|&len| text(len, fill)).collect();
                let mut out = Vec::new();
                for text in &texts {
                    let before = out.len();
                    push_text_frame(&mut out, text.as_bytes());
                    let header = match text.len() {
                        0..=125 => 2,
                        126..=0xFFFF => 4,
                        _ => 10,
                    };
                    prop_assert_eq!(out.len() - before, header + text.len(), "length {}", text.len());
                    prop_assert!(header <= MAX_HEADER);
                }
                let mut context = WebSocketContext::new(Role::Client, None);
                let mut input = io::Cursor::new(out);
                let mut stream = ReadOnly(&mut input);
                for text in texts {
                    prop_assert_eq!(context.read(&mut stream).unwrap(), Message::Text(text.into()));
                }
                prop_assert_eq!(input.position() as usize, input.get_ref().len(), "nothing left over");
            }

            /// The frame follower counts the frames of a message like a reference count, whatever the frames
            /// (any opcode, length form and mask) and however the bytes are split into reads.
            #[test]
            fn fragments_count_like_a_reference(
                frames in prop::collection::vec((0u8..16, length().prop_map(|len| len.min(70_000)), any::<bool>()), 1..12),
                split in 1usize..4096,
                max in 1u32..6,
            ) {
                let mut bytes = Vec::new();
                let mut count = 0u32;
                let mut over = false;
                for &(opcode, len, masked) in &frames {
                    bytes.push(0x80 | opcode);
                    let mask_bit = if masked { 0x80 } else { 0 };
                    match len {
                        0..=125 => bytes.push(mask_bit | len as u8),
                        126..=0xFFFF => {
                            bytes.push(mask_bit | 126);
                            bytes.extend_from_slice(&(len as u16).to_be_bytes());
                        }
                        _ => {
                            bytes.push(mask_bit | 127);
                            bytes.extend_from_slice(&(len as u64).to_be_bytes());
                        }
                    }
                    if masked {
                        bytes.extend_from_slice(&[9, 8, 7, 6]);
                    }
                    bytes.extend(std::iter::repeat_n(0x41, len));
                    match opcode {
                        0x0 => count = count.saturating_add(1),
                        opcode if opcode < 0x8 => count = 1,
                        _ => {}
                    }
                    over |= count > max;
                    if over {
                        break;
                    }
                }
                let mut fragments = Fragments::new(max);
                let refused = bytes.chunks(split).any(|read| fragments.feed(read).is_err());
                prop_assert_eq!(refused, over);
            }
        }
    }

    struct ReadOnly<'a>(&'a mut io::Cursor<Vec<u8>>);

    impl Read for ReadOnly<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for ReadOnly<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
