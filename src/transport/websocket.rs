//! The server side of a WebSocket (RFC 6455), shared by `/ws` and the seed protocol on `/`: the upgrade
//! handshake ([`Upgrade`]) and the connection (`Socket`).
//!
//! Client frames are read by tungstenite, which checks masks, sizes, fragments and UTF-8 and answers pings and
//! close frames. Room events are written here: a server frame is unmasked, so its bytes are the same for every
//! receiver, and a batch of events is encoded straight from their shared JSON into one buffer and written with
//! one call. Going through tungstenite's message API instead cost, per delivery, a reference-counted copy of
//! the payload handed to it and its per-message bookkeeping; at a hundred receivers per text that was a sixth
//! of the server's CPU time (see docs/benchmarks.md).
//!
//! tungstenite never touches the socket's write side: what it writes (pongs, close replies, and the few frames
//! sent through `Socket::send`) lands in the socket's queue, whole frames only, and goes out before or with
//! the next batch. So its frames and ours never interleave.

use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::config::Config;
use crate::core::Delivery;
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
        let limits = limits(config);
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

/// What tungstenite enforces on client frames, sized for chat. Its read buffer is allocated up front and kept
/// for the connection's life, so it is small (a chat line is a few hundred bytes; a longer frame grows it as
/// needed); tungstenite buffers only the control frames it writes, so its write buffer stays empty, and its
/// limit is the most the socket's queue may hold before reading stops (`--ws-max-buffer`).
fn limits(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_write_buffer_size(config.ws_max_buffer.max(16 * 1024))
        .max_frame_size(Some(config.max_frame_bytes))
        .max_message_size(Some(config.max_frame_bytes))
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
    /// Bytes to write, whole frames only, in order: what tungstenite wrote and the batches of [`Socket::deliver`].
    queue: Vec<u8>,
}

impl Socket {
    fn new(upgraded: Upgraded, limits: WebSocketConfig) -> Socket {
        Socket {
            io: TokioIo::new(upgraded),
            context: WebSocketContext::new(Role::Server, Some(limits)),
            queue: Vec::new(),
        }
    }

    /// The next message from the client; `None` once the connection is closed (after a close frame, the reply
    /// to it is already written). A ping shows here too, its pong already queued. Cancel-safe: a frame read in
    /// part stays buffered.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        let received = poll_fn(|cx| self.poll_recv(cx)).await;
        if matches!(received, Some(Ok(Message::Close(_)))) {
            // tungstenite queued the close reply: send it now, the peer is waiting for it.
            let _ = self.flush().await;
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
        let mut stream = Stream { io: &mut self.io, cx, queue: &mut self.queue };
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

    /// Writes room deliveries, one text frame each, with everything queued before them, in one buffer and as
    /// few writes as the socket allows. Each frame is encoded from the delivery's JSON; nothing is allocated
    /// per delivery.
    pub(crate) async fn deliver(&mut self, deliveries: &[Delivery]) -> io::Result<()> {
        let size: usize = deliveries.iter().map(|d| d.json().len() + MAX_HEADER).sum();
        self.queue.reserve(size);
        for delivery in deliveries {
            self.push_event(delivery.json());
        }
        self.write_queue().await
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
const MAX_HEADER: usize = 10;

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
}

impl Read for Stream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
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

    #[test]
    fn a_header_token_is_found_in_a_list_and_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!has_token(&headers, header::CONNECTION, "upgrade"), "a token, not a substring");
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
