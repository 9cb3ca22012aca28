//! What a connection tells a wire view: its bytes, read back as HTTP heads, WebSocket frames and SSE writes.
//!
//! A connection ([`super::wire::Connection`]) hands every read and write to its `Log`, which follows the
//! bytes just far enough to describe them:
//!
//! - an HTTP request's head is kept (at most [`HEAD_MAX`] bytes) from its first byte, but only while some wire
//!   view is open anywhere (`Sessions::capturing`), since the session is known only once the
//!   handler names it; the response head is kept as it is written, and the exchange becomes an `http` record
//!   once the response head is out (a streaming response: SSE, a WebSocket upgrade) or once its body is complete;
//! - after a `101 Switching Protocols`, each direction is cut into WebSocket frames (RFC 6455, 5.2) by their
//!   headers alone, always, as the session's `frames_in`/`frames_out` count them; a watched session also gets
//!   a `frame` record per frame;
//! - an SSE response's body is cut into chunks (its `Transfer-Encoding: chunked` framing), always, and while the
//!   session is watched each write becomes an `sse` record listing the events it completed. The server writes
//!   whole events per chunk, so a watch that begins mid-stream starts reading events at the next chunk.
//!
//! An HTTP/2 connection's bytes are given to its streams by their frames (`super::h2`), and each stream has an
//! `H2Log`: it counts the stream's frames by kind both ways, always (a few integers). While some wire view is
//! open, each request's head is kept as the server decoded it (`H2Request`); if the stream's session is
//! watched, the response's head is added when it is ready, and the exchange becomes an `http` record marked
//! `h2` once the stream ends (or, for a stream of events, once its response `HEADERS` are out), its figures the
//! stream's frames. A streaming response's `DATA` frames are read as events like HTTP/1.1 chunks, one record per
//! frame, from the first frame after the watch began.
//!
//! Nothing here allocates for an unwatched session: the frame and chunk cutters are a few integers.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | a connection's `Log`: HTTP/1.1 heads kept, exchanges reported, the writes handed to a cutter |
//! | `frames.rs` | WebSocket frames, cut by their headers |
//! | `sse.rs` | a streaming body's chunks, and the events in them: SSE, NDJSON lines, the iframe's scripts |
//! | `h2.rs` | an HTTP/2 stream's frames counted, its heads as decoded, its exchange |

mod frames;
mod h2;
mod sse;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use self::frames::{Direction, FrameCutter};
pub(crate) use self::h2::{H2Connection, H2Exchange, H2Head, H2Log, H2Request};
use self::sse::{SseCutter, SseWrite};
use super::now_ms;
use super::session::SessionWire;
use crate::model::Transport;

/// Most bytes of a request or response head a record shows.
pub const HEAD_MAX: usize = 8 * 1024;

/// What a response's body is, as far as the log is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A body that ends: the exchange is reported once it has.
    Plain,
    /// `text/event-stream`: reported once the head is out; the body as `sse` records.
    Sse,
    /// HTTP streaming's NDJSON: reported once the head is out; the body as `ndjson` records.
    Ndjson,
    /// The forever iframe's document: reported once the head is out; the body as `script` records.
    Script,
    /// `101 Switching Protocols` to a WebSocket: reported once the head is out; then frames.
    Upgrade,
}

/// One connection's log state.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// The HTTP exchange being kept for a wire view, if any.
    exchange: Option<Box<Exchange>>,
    /// How written bytes are being read.
    out: Out,
    /// Client frames, once upgraded.
    frames_in: Option<FrameCutter>,
}

#[derive(Debug, Default)]
enum Out {
    /// Nothing to follow (an unwatched plain response, or nothing answered yet).
    #[default]
    Idle,
    /// The response head is being written: `matched` bytes of its `\r\n\r\n` end were seen last.
    Head { kind: Kind, matched: u8 },
    /// A plain body being counted for the exchange.
    Body,
    /// Server frames.
    Frames(FrameCutter),
    /// An SSE body.
    Sse(SseCutter),
}

/// An HTTP request and its response, as kept for a wire view.
#[derive(Debug)]
struct Exchange {
    technique: Option<Transport>,
    at_ms: u64,
    started: Instant,
    request: Head,
    request_bytes: u64,
    response: Head,
    response_bytes: u64,
    /// Request to response head, in ms, once the head is out.
    ms: f64,
    kind: Kind,
    /// Body bytes the response announced (`Content-Length`; 0 for a bodiless status); `None`: read to the end.
    expect_body: Option<u64>,
}

/// A head being kept: its bytes (at most [`HEAD_MAX`]), its length and whether its end was seen.
#[derive(Debug, Default)]
struct Head {
    bytes: Vec<u8>,
    len: u64,
    matched: u8,
    done: bool,
}

impl Head {
    /// Takes head bytes from the start of `data`; returns how many belonged to the head.
    fn feed(&mut self, data: &[u8]) -> usize {
        if self.done {
            return 0;
        }
        let (used, done) = head_end(&mut self.matched, data);
        let room = HEAD_MAX.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..used.min(room)]);
        self.len += used as u64;
        self.done = done;
        used
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Finds the end of a head (`\r\n\r\n`) in `data`, `matched` bytes of it having been seen just before: how
/// many bytes of `data` belong to the head, and whether it ended there.
fn head_end(matched: &mut u8, data: &[u8]) -> (usize, bool) {
    const END: &[u8; 4] = b"\r\n\r\n";
    for (i, &byte) in data.iter().enumerate() {
        *matched = if byte == END[*matched as usize] {
            *matched + 1
        } else if byte == b'\r' {
            1
        } else {
            0
        };
        if *matched == 4 {
            *matched = 0;
            return (i + 1, true);
        }
    }
    (data.len(), false)
}

impl Log {
    /// A new request's first bytes were read; `capturing` when some wire view is open. An exchange still
    /// waiting for the end of its body (no length was announced) is reported now.
    pub(crate) fn request_starts(&mut self, capturing: bool, session: Option<&SessionWire>) {
        if let (Some(exchange), Some(session)) = (self.exchange.take(), session) {
            if matches!(self.out, Out::Body) {
                exchange.report(session);
            }
        }
        self.out = Out::Idle;
        if capturing {
            self.exchange = Some(Box::new(Exchange {
                technique: None,
                at_ms: now_ms(),
                started: Instant::now(),
                request: Head::default(),
                request_bytes: 0,
                response: Head::default(),
                response_bytes: 0,
                ms: 0.0,
                kind: Kind::Plain,
                expect_body: None,
            }));
        }
    }

    /// Bytes read. Before a response: the request's. After an upgrade: client frames.
    pub(crate) fn read(&mut self, data: &[u8], session: Option<&SessionWire>) {
        if let Some(cutter) = &mut self.frames_in {
            if let Some(session) = session {
                cutter.feed(data, Direction::In, session);
            }
            return;
        }
        if let Some(exchange) = &mut self.exchange {
            exchange.request_bytes += data.len() as u64;
            exchange.request.feed(data);
        }
    }

    /// The handler's answer is ready: a response of `kind` to a request of `technique` of `session` (`None`: of
    /// no session). Decides what the written bytes will be read as.
    pub(crate) fn answered(&mut self, technique: Option<Transport>, session: Option<&Arc<SessionWire>>, kind: Kind) {
        let watched = session.is_some_and(|s| s.watched());
        match &mut self.exchange {
            Some(exchange) if watched => {
                exchange.technique = technique;
                exchange.kind = kind;
            }
            _ => self.exchange = None,
        }
        self.out = if session.is_some() && kind != Kind::Plain || self.exchange.is_some() {
            Out::Head { kind, matched: 0 }
        } else {
            Out::Idle
        };
        if kind == Kind::Upgrade && session.is_some() {
            self.frames_in = Some(FrameCutter::default());
        }
    }

    /// Whether written bytes need reading (else only counted).
    pub(crate) fn follows_writes(&self) -> bool {
        !matches!(self.out, Out::Idle)
    }

    /// Whether read bytes need reading.
    pub(crate) fn follows_reads(&self) -> bool {
        self.exchange.is_some() || self.frames_in.is_some()
    }

    /// Bytes written (one write call's worth, its slices in order), already counted into `session`.
    pub(crate) fn wrote(&mut self, slices: &mut dyn Iterator<Item = &[u8]>, session: Option<&SessionWire>) {
        let Some(session) = session else {
            // Bytes of no session: only an exchange of no session would be kept, and none is.
            self.out = Out::Idle;
            return;
        };
        let mut sse_write = SseWrite::default();
        for mut data in slices {
            while !data.is_empty() {
                match &mut self.out {
                    Out::Idle => return,
                    Out::Head { kind, matched } => {
                        let kind = *kind;
                        let (used, done) = match &mut self.exchange {
                            Some(exchange) => {
                                let used = exchange.response.feed(data);
                                exchange.response_bytes += used as u64;
                                if exchange.response.done {
                                    exchange.head_written();
                                }
                                (used, exchange.response.done)
                            }
                            None => head_end(matched, data),
                        };
                        data = &data[used..];
                        if done {
                            self.out = match kind {
                                Kind::Plain => Out::Body,
                                Kind::Sse | Kind::Ndjson | Kind::Script => Out::Sse(SseCutter::new(kind)),
                                Kind::Upgrade => Out::Frames(FrameCutter::default()),
                            };
                            if kind != Kind::Plain {
                                if let Some(exchange) = self.exchange.take() {
                                    exchange.report(session);
                                }
                            }
                            self.finish_body(session);
                        }
                    }
                    Out::Body => {
                        if let Some(exchange) = &mut self.exchange {
                            exchange.response_bytes += data.len() as u64;
                        }
                        data = &[];
                        self.finish_body(session);
                    }
                    Out::Frames(cutter) => {
                        cutter.feed(data, Direction::Out, session);
                        data = &[];
                    }
                    Out::Sse(cutter) => {
                        cutter.feed(data, session.watched(), &mut sse_write);
                        data = &[];
                    }
                }
            }
        }
        if sse_write.bytes > 0 && session.watched() {
            sse_write.report(session);
        }
    }

    /// Reports a plain exchange whose body is complete, and stops following the writes.
    fn finish_body(&mut self, session: &SessionWire) {
        if !matches!(self.out, Out::Body) {
            return;
        }
        let Some(exchange) = &self.exchange else {
            self.out = Out::Idle;
            return;
        };
        let body = exchange.response_bytes - exchange.response.len;
        if exchange.expect_body.is_some_and(|expected| body >= expected) {
            if let Some(exchange) = self.exchange.take() {
                exchange.report(session);
            }
            self.out = Out::Idle;
        }
    }

    /// The connection closed: an exchange still waiting for its body's end is reported as it stands.
    pub(crate) fn closed(&mut self, session: Option<&SessionWire>) {
        if let (Some(exchange), Some(session)) = (self.exchange.take(), session) {
            if matches!(self.out, Out::Body) {
                exchange.report(session);
            }
        }
    }
}

impl Exchange {
    /// The response head is out: the timing, and how long the body will be.
    fn head_written(&mut self) {
        self.ms = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let head = self.response.text();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        self.expect_body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Some(0)
        } else {
            head.lines().skip(1).find_map(|line| {
                let (name, value) = line.split_once(':')?;
                if name.trim().eq_ignore_ascii_case("content-length") {
                    value.trim().parse().ok()
                } else {
                    None
                }
            })
        };
    }

    fn report(self, session: &SessionWire) {
        let request_body = self.request_bytes.saturating_sub(self.request.len);
        let response_body = if self.kind == Kind::Plain { self.response_bytes - self.response.len } else { 0 };
        let record = json!({
            "type": "http",
            "version": "http/1.1",
            "technique": self.technique.map(Transport::as_str),
            "at": self.at_ms,
            "ms": self.ms,
            "request": {"head": self.request.text(), "head_bytes": self.request.len, "body_bytes": request_body},
            "response": {"head": self.response.text(), "head_bytes": self.response.len, "body_bytes": response_body},
            "streaming": self.kind != Kind::Plain,
        });
        if let Value::Object(record) = record {
            session.emit(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_are_found_across_reads() {
        let mut matched = 0;
        assert_eq!(head_end(&mut matched, b"GET / HTTP/1.1\r\nHost: a\r\n\r"), (26, false));
        assert_eq!(head_end(&mut matched, b"\nbody"), (1, true));
        let mut matched = 0;
        assert_eq!(head_end(&mut matched, b"a\r\r\n\r\nb"), (6, true));
    }
}
