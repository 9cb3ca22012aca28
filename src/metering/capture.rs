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

use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Map, Value};

use super::now_ms;
use super::session::SessionWire;
use crate::model::Transport;

/// Most bytes of a request or response head a record shows.
pub const HEAD_MAX: usize = 8 * 1024;
/// Most characters of a text frame's payload a record shows.
const PREVIEW_CHARS: usize = 200;
/// Bytes kept to make that preview (UTF-8 takes at most four per character).
const PREVIEW_BYTES: usize = PREVIEW_CHARS * 4;

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

#[derive(Debug, Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// Cuts one direction of a WebSocket into frames by their headers.
#[derive(Debug, Default)]
struct FrameCutter {
    /// The header read so far (at most 2 + 8 + 4 bytes).
    header: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come; `None` while reading a header.
    left: Option<u64>,
    /// The first bytes of the current text frame's payload (unmasked), while watched.
    preview: Option<Vec<u8>>,
    /// Payload bytes of the current frame seen so far.
    seen: u64,
}

impl FrameCutter {
    /// The header's length once its first two bytes are known.
    fn header_len(&self) -> u8 {
        let extended = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if self.header[1] & 0x80 != 0 { 4 } else { 0 }
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0; 8])),
            len => len as u64,
        }
    }

    /// Cuts `data` into frames, describing each completed one to a watching wire view; counts them into the
    /// session with one addition per call.
    fn feed(&mut self, mut data: &[u8], direction: Direction, session: &SessionWire) {
        let mut frames = 0;
        while !data.is_empty() {
            match self.left {
                None => {
                    let need = if self.have < 2 { 2 } else { self.header_len() };
                    let take = usize::from(need - self.have).min(data.len());
                    self.header[self.have as usize..self.have as usize + take].copy_from_slice(&data[..take]);
                    self.have += take as u8;
                    data = &data[take..];
                    if self.have >= 2 && self.have == self.header_len() {
                        let len = self.payload_len();
                        self.left = Some(len);
                        self.seen = 0;
                        let text = self.header[0] & 0x0F == 1;
                        self.preview = (text && session.watched()).then(Vec::new);
                        if len == 0 {
                            frames += self.complete(direction, session);
                        }
                    }
                }
                Some(left) => {
                    let take = left.min(data.len() as u64) as usize;
                    let masked = self.header[1] & 0x80 != 0;
                    let key_at = (self.header_len() as usize).saturating_sub(4);
                    if let Some(preview) = &mut self.preview {
                        let room = PREVIEW_BYTES.saturating_sub(preview.len()).min(take);
                        for (i, &byte) in data[..room].iter().enumerate() {
                            let offset = (self.seen as usize + i) % 4;
                            preview.push(if masked { byte ^ self.header[key_at + offset] } else { byte });
                        }
                    }
                    self.seen += take as u64;
                    data = &data[take..];
                    self.left = Some(left - take as u64);
                    if left == take as u64 {
                        frames += self.complete(direction, session);
                    }
                }
            }
        }
        if frames > 0 {
            let counter = match direction {
                Direction::In => &session.frames_in,
                Direction::Out => &session.frames_out,
            };
            counter.fetch_add(frames, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A whole frame has crossed: describe it to a watching wire view (counted first, so that the record's
    /// totals include it), and start reading the next. Returns 1 when the frame is left for the caller to
    /// count, with the others of its write.
    fn complete(&mut self, direction: Direction, session: &SessionWire) -> u64 {
        let watched = session.watched();
        if watched {
            let counter = match direction {
                Direction::In => &session.frames_in,
                Direction::Out => &session.frames_out,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if watched {
            let opcode = match self.header[0] & 0x0F {
                0 => "continuation",
                1 => "text",
                2 => "binary",
                8 => "close",
                9 => "ping",
                10 => "pong",
                _ => "reserved",
            };
            let mut record = Map::new();
            record.insert("type".into(), "frame".into());
            record.insert("dir".into(), if matches!(direction, Direction::In) { "in" } else { "out" }.into());
            record.insert("opcode".into(), opcode.into());
            record.insert("fin".into(), (self.header[0] & 0x80 != 0).into());
            record.insert("header_bytes".into(), self.header_len().into());
            record.insert("payload_bytes".into(), self.payload_len().into());
            if let Some(preview) = self.preview.take() {
                let text = String::from_utf8_lossy(&preview);
                record.insert("preview".into(), text.chars().take(PREVIEW_CHARS).collect::<String>().into());
            }
            record.insert("at".into(), now_ms().into());
            session.emit(record);
        }
        self.have = 0;
        self.left = None;
        self.preview = None;
        u64::from(!watched)
    }
}

/// Cuts an SSE response body into its chunks (`Transfer-Encoding: chunked`), and the chunks' data into events
/// while watched.
#[derive(Debug)]
struct SseCutter {
    /// How the chunks' text is framed: SSE fields, NDJSON lines or `<script>` lines.
    kind: Kind,
    chunk: Chunk,
    /// Reading events: set at a chunk's start while watched (chunks hold whole events).
    reading: bool,
    event: EventScan,
}

#[derive(Debug, Default, Clone, Copy)]
enum Chunk {
    /// The size line, its hex digits so far.
    #[default]
    Start,
    Size(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last (empty) chunk: its closing CRLF.
    Last(u8),
    Done,
}

/// One event being read: its id, field bytes, data bytes, and the line under way.
#[derive(Debug)]
struct EventScan {
    id: Option<u64>,
    field_bytes: u64,
    data_bytes: u64,
    comment: bool,
    /// The current line's first bytes (enough for its field name and an id, or a script's opening tag and
    /// its event's `seq`), and its length.
    line: [u8; 96],
    line_len: u64,
    /// The current line's last bytes (NDJSON and scripts: where an event's `"seq":N` is, near its end).
    tail: [u8; 48],
    tail_len: usize,
}

impl Default for EventScan {
    fn default() -> Self {
        EventScan {
            id: None,
            field_bytes: 0,
            data_bytes: 0,
            comment: false,
            line: [0; 96],
            line_len: 0,
            tail: [0; 48],
            tail_len: 0,
        }
    }
}

/// What one write of a streaming response carried (over HTTP/2: one `DATA` frame of its stream).
#[derive(Debug)]
struct SseWrite {
    kind: Kind,
    bytes: u64,
    /// The framing: chunked encoding's over HTTP/1.1, the `DATA` frame's header over HTTP/2.
    chunk_bytes: u64,
    events: Vec<Value>,
    comment: bool,
    /// The HTTP/2 stream, over HTTP/2.
    stream: Option<u32>,
}

impl Default for SseWrite {
    fn default() -> Self {
        SseWrite { kind: Kind::Sse, bytes: 0, chunk_bytes: 0, events: Vec::new(), comment: false, stream: None }
    }
}

impl SseWrite {
    fn report(self, session: &SessionWire) {
        let kind = match self.kind {
            Kind::Ndjson => "ndjson",
            Kind::Script => "script",
            Kind::Sse | Kind::Plain | Kind::Upgrade => "sse",
        };
        let record = json!({
            "type": kind,
            "at": now_ms(),
            "bytes": self.bytes,
            "chunk_bytes": self.chunk_bytes,
            "events": self.events,
            "comment": self.comment,
        });
        if let Value::Object(mut record) = record {
            if let Some(stream) = self.stream {
                record.insert("version".into(), "h2".into());
                record.insert("stream".into(), stream.into());
            }
            session.emit(record);
        }
    }
}

impl Default for SseCutter {
    fn default() -> Self {
        SseCutter::new(Kind::Sse)
    }
}

impl SseCutter {
    fn new(kind: Kind) -> Self {
        SseCutter { kind, chunk: Chunk::default(), reading: false, event: EventScan::default() }
    }

    fn feed(&mut self, mut data: &[u8], watched: bool, write: &mut SseWrite) {
        write.kind = self.kind;
        write.bytes += data.len() as u64;
        while let Some((&byte, rest)) = data.split_first() {
            match self.chunk {
                Chunk::Data(left) => {
                    let take = left.min(data.len() as u64) as usize;
                    if self.reading {
                        self.event.feed(&data[..take], self.kind, write);
                    }
                    data = &data[take..];
                    self.chunk = if left == take as u64 { Chunk::DataCr } else { Chunk::Data(left - take as u64) };
                    continue;
                }
                Chunk::Start | Chunk::Size(_) => {
                    let size = if let Chunk::Size(size) = self.chunk { size } else { 0 };
                    self.chunk = match (byte as char).to_digit(16) {
                        Some(digit) => Chunk::Size(size.saturating_mul(16).saturating_add(digit as u64)),
                        None if byte == b'\r' => Chunk::SizeLf(size),
                        None => Chunk::Size(size), // a chunk extension: not written by this server
                    };
                }
                Chunk::SizeLf(size) => {
                    self.chunk = if size == 0 { Chunk::Last(0) } else { Chunk::Data(size) };
                    self.reading = watched;
                    if watched {
                        self.event = EventScan::default();
                    }
                }
                Chunk::DataCr => self.chunk = Chunk::DataLf,
                Chunk::DataLf => self.chunk = Chunk::Start,
                Chunk::Last(seen) => self.chunk = if seen == 1 { Chunk::Done } else { Chunk::Last(seen + 1) },
                Chunk::Done => {}
            }
            write.chunk_bytes += 1;
            data = rest;
        }
    }
}

impl EventScan {
    fn feed(&mut self, mut data: &[u8], kind: Kind, write: &mut SseWrite) {
        while !data.is_empty() {
            let (line, ended) = match memchr::memchr(b'\n', data) {
                Some(at) => (&data[..at], true),
                None => (data, false),
            };
            let start = self.line_len as usize;
            if start < self.line.len() {
                let take = line.len().min(self.line.len() - start);
                self.line[start..start + take].copy_from_slice(&line[..take]);
            }
            self.line_len += line.len() as u64;
            if kind != Kind::Sse {
                self.keep_tail(line);
            }
            data = &data[line.len() + usize::from(ended)..];
            if ended {
                match kind {
                    Kind::Ndjson | Kind::Script => self.end_event_line(kind, write),
                    Kind::Sse | Kind::Plain | Kind::Upgrade => self.end_line(write),
                }
            }
        }
    }

    /// Keeps the last bytes of the line under way, `piece` being its next bytes.
    fn keep_tail(&mut self, piece: &[u8]) {
        let cap = self.tail.len();
        if piece.len() >= cap {
            self.tail.copy_from_slice(&piece[piece.len() - cap..]);
            self.tail_len = cap;
            return;
        }
        let keep = (cap - piece.len()).min(self.tail_len);
        self.tail.copy_within(self.tail_len - keep..self.tail_len, 0);
        self.tail[keep..keep + piece.len()].copy_from_slice(piece);
        self.tail_len = keep + piece.len();
    }

    /// A line of NDJSON or of the iframe's document ended: one event per line (a `<script>` one for the
    /// iframe), its framing counted as field bytes; any other line (a keep-alive, the document's start) is
    /// framing alone.
    fn end_event_line(&mut self, kind: Kind, write: &mut SseWrite) {
        let len = self.line_len;
        let shown = &self.line[..(len as usize).min(self.line.len())];
        let framing = match kind {
            Kind::Script if shown.starts_with(b"<script") => {
                // `<script nonce=..>parent.chatlab(` + JSON + `)</script>`, then the newline.
                memchr::memchr(b'(', shown).map(|open| open as u64 + 1 + 10)
            }
            Kind::Ndjson if len > 0 => Some(0),
            _ => None,
        };
        match framing {
            Some(framing) if framing <= len => {
                let seq = seq_of(shown).or_else(|| seq_of(&self.tail[..self.tail_len]));
                write.events.push(json!({"id": seq, "field_bytes": framing + 1, "data_bytes": len - framing}));
            }
            _ => write.comment = true,
        }
        *self = EventScan::default();
    }

    /// A line ended (its `\n` seen): a blank one ends the event.
    fn end_line(&mut self, write: &mut SseWrite) {
        let len = self.line_len;
        let shown = &self.line[..(len as usize).min(self.line.len())];
        self.line_len = 0;
        if len == 0 {
            self.field_bytes += 1;
            if self.comment && self.data_bytes == 0 && self.id.is_none() {
                write.comment = true;
            } else {
                write.events.push(json!({
                    "id": self.id,
                    "field_bytes": self.field_bytes,
                    "data_bytes": self.data_bytes,
                }));
            }
            *self = EventScan::default();
            return;
        }
        if let Some(value) = shown.strip_prefix(b"data:") {
            let space = u64::from(value.first() == Some(&b' '));
            self.data_bytes += len - 5 - space;
            self.field_bytes += 5 + space + 1;
        } else {
            if shown.starts_with(b":") {
                self.comment = true;
            } else if let Some(value) = shown.strip_prefix(b"id:") {
                self.id = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok());
            }
            self.field_bytes += len + 1;
        }
    }
}

/// The `seq` of a room event's JSON, if `shown` (the first or the last bytes of its line) holds `"seq":N` whole.
fn seq_of(shown: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\":";
    let at = memchr::memmem::find(shown, KEY)? + KEY.len();
    let digits = shown[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    // Digits that run to the end of what was kept may be cut short.
    if digits == 0 || at + digits == shown.len() {
        return None;
    }
    std::str::from_utf8(&shown[at..at + digits]).ok()?.parse().ok()
}

// ---- HTTP/2 ----

/// One direction of an HTTP/2 stream, counted from its frames: always, a few integers whether watched or not.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Side {
    /// Every byte of the stream's frames this way, frame headers included.
    bytes: u64,
    /// `HEADERS` and `CONTINUATION` frames, whole: the head, HPACK-compressed.
    head: u64,
    /// `DATA` frames, whole.
    body: u64,
    /// `DATA` payloads: the body itself.
    data: u64,
    frames: u64,
}

impl Side {
    fn json(&self, head: &H2Head) -> Value {
        json!({
            "head": head.text,
            "head_bytes": self.head,
            "body_bytes": self.body,
            "data_bytes": self.data,
            "bytes": self.bytes,
            "frames": self.frames,
            "http1_head_bytes": head.http1_bytes,
        })
    }
}

/// A head of an HTTP/2 request or response as decoded, for a wire view: its lines, pseudo-headers first (at most
/// [`HEAD_MAX`] bytes of them), and the length the same head would have as HTTP/1.1 text.
#[derive(Debug)]
pub(crate) struct H2Head {
    text: String,
    http1_bytes: u64,
}

impl H2Head {
    fn new(pseudo: &[(&str, &str)], headers: &HeaderMap, added: &[(&str, &str)], http1_line: u64) -> Self {
        let mut text = String::new();
        let mut http1_bytes = http1_line + 2; // the start line, and the blank line that ends the head
        let mut line = |name: &str, value: &[u8], pseudo: bool| {
            if !pseudo {
                http1_bytes += (name.len() + 2 + value.len() + 2) as u64;
            }
            let value = String::from_utf8_lossy(value);
            if text.len() + name.len() + value.len() + 4 <= HEAD_MAX {
                text.push_str(name);
                text.push_str(": ");
                text.push_str(&value);
                text.push_str("\r\n");
            }
        };
        for (name, value) in pseudo {
            line(name, value.as_bytes(), true);
        }
        for (name, value) in headers {
            line(name.as_str(), value.as_bytes(), false);
        }
        for (name, value) in added {
            line(name, value.as_bytes(), false);
        }
        H2Head { text, http1_bytes }
    }

    /// A request's head as the handler got it. As HTTP/1.1 text: the request line, `host` (from `:authority`)
    /// unless the request has one, then its headers.
    pub(crate) fn request(method: &Method, uri: &Uri, headers: &HeaderMap) -> Self {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map_or("", |a| a.as_str());
        let pseudo = [
            (":method", method.as_str()),
            (":path", path),
            (":authority", authority),
            (":scheme", uri.scheme_str().unwrap_or("")),
        ];
        let line = method.as_str().len() + 1 + path.len() + " HTTP/1.1\r\n".len();
        let mut head = H2Head::new(&pseudo, headers, &[], line as u64);
        // `host` is not shown (the request has `:authority`), only counted for HTTP/1.1.
        if !headers.contains_key(header::HOST) && !authority.is_empty() {
            head.http1_bytes += ("host: \r\n".len() + authority.len()) as u64;
        }
        head
    }

    /// A response's head as the HTTP/2 layer sends it: the handler's headers, and the `date` and `content-length`
    /// (of a body of `body_len` bytes, when known) it adds if missing. As HTTP/1.1 text: the status line, the same
    /// headers, and `transfer-encoding: chunked` for a body of unknown length.
    pub(crate) fn response(status: StatusCode, headers: &HeaderMap, body_len: Option<u64>) -> Self {
        let code = status.as_str();
        let date = (!headers.contains_key(header::DATE)).then(|| http_date(std::time::SystemTime::now()));
        let length = body_len.filter(|_| !headers.contains_key(header::CONTENT_LENGTH)).map(|len| len.to_string());
        let mut added = Vec::with_capacity(2);
        if let Some(date) = &date {
            added.push(("date", date.as_str()));
        }
        if let Some(length) = &length {
            added.push(("content-length", length.as_str()));
        }
        let line = "HTTP/1.1 ".len() + code.len() + 1 + status.canonical_reason().unwrap_or("").len() + 2;
        let mut head = H2Head::new(&[(":status", code)], headers, &added, line as u64);
        let bodiless =
            status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        if bodiless {
            // HTTP/1.1 announces no length for a status that has no body.
            head.http1_bytes -= length.map_or(0, |l| ("content-length: \r\n".len() + l.len()) as u64);
        } else if body_len.is_none() && !headers.contains_key(header::CONTENT_LENGTH) {
            head.http1_bytes += "transfer-encoding: chunked\r\n".len() as u64;
        }
        head
    }
}

/// `at` as an HTTP date (RFC 9110 5.6.7, IMF-fixdate), as the HTTP layer writes `date`.
fn http_date(at: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::model::civil_date(days as i64);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// An HTTP/2 connection as its streams' records describe it: a few integers, counted always.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct H2Connection {
    /// The connection's number in this process (its socket's).
    pub(crate) id: u64,
    /// Streams the client has opened on it so far.
    pub(crate) streams: u64,
    /// Its own bytes (the client's preface, the frames of stream 0: `SETTINGS`, `PING`, `WINDOW_UPDATE`, `GOAWAY`)
    /// read so far.
    pub(crate) bytes_in: u64,
    /// Its own bytes written so far.
    pub(crate) bytes_out: u64,
}

/// An HTTP/2 exchange kept for a wire view: made when its response is ready, if its session is watched and the
/// request was kept (some wire view was open when it came).
#[derive(Debug)]
pub(crate) struct H2Exchange {
    technique: Option<Transport>,
    at_ms: u64,
    started: Instant,
    request: H2Head,
    response: H2Head,
    ms: f64,
}

/// An HTTP/2 request kept from its arrival while some wire view is open.
#[derive(Debug)]
pub(crate) struct H2Request {
    at_ms: u64,
    started: Instant,
    head: H2Head,
}

impl H2Request {
    /// A request arriving now.
    pub(crate) fn new(method: &Method, uri: &Uri, headers: &HeaderMap) -> Self {
        H2Request { at_ms: now_ms(), started: Instant::now(), head: H2Head::request(method, uri, headers) }
    }

    /// Its exchange, the response's head being `response`.
    pub(crate) fn answered(self, technique: Option<Transport>, response: H2Head) -> H2Exchange {
        H2Exchange { technique, at_ms: self.at_ms, started: self.started, request: self.head, response, ms: 0.0 }
    }
}

/// What an HTTP/2 stream tells a wire view: its frames counted both ways (always), its exchange (while watched),
/// and a streaming response's `DATA` read as events (while watched, from the first `DATA` frame after the watch
/// began: the server writes whole events per frame).
#[derive(Debug, Default)]
pub(crate) struct H2Log {
    up: Side,
    down: Side,
    kind: Option<Kind>,
    head_out: bool,
    exchange: Option<Box<H2Exchange>>,
    events: Option<Box<(EventScan, SseWrite)>>,
}

impl H2Log {
    /// The response is ready: a `kind` one (`Plain` unless the handler named a session), kept as `exchange` if
    /// the session is watched.
    pub(crate) fn answered(&mut self, kind: Kind, exchange: Option<Box<H2Exchange>>) {
        self.kind = Some(kind);
        self.exchange = exchange;
    }

    /// A frame of this stream starts (`reading`: from the client).
    pub(crate) fn starts(&mut self, kind: u8, reading: bool, id: u32, session: Option<&SessionWire>) {
        let side = if reading { &mut self.up } else { &mut self.down };
        side.frames += 1;
        let streaming = matches!(self.kind, Some(Kind::Sse | Kind::Ndjson | Kind::Script));
        if reading || kind != super::h2::DATA || !streaming {
            return;
        }
        if !session.is_some_and(SessionWire::watched) {
            // No longer watched: nothing more is read or kept.
            self.events = None;
            return;
        }
        let write = SseWrite { kind: self.kind.unwrap_or(Kind::Sse), stream: Some(id), ..SseWrite::default() };
        match &mut self.events {
            Some(events) => events.1 = write,
            None => self.events = Some(Box::new((EventScan::default(), write))),
        }
    }

    /// `n` bytes of a frame of type `kind` passed; `payload` holds them if they are its payload.
    pub(crate) fn bytes(&mut self, kind: u8, n: u64, payload: &[u8], reading: bool) {
        use super::h2::{CONTINUATION, DATA, HEADERS};
        let side = if reading { &mut self.up } else { &mut self.down };
        side.bytes += n;
        match kind {
            HEADERS | CONTINUATION => side.head += n,
            DATA => {
                side.body += n;
                side.data += payload.len() as u64;
                if let (false, Some(events)) = (reading, &mut self.events) {
                    let (scan, write) = &mut **events;
                    write.bytes += n;
                    if payload.is_empty() {
                        write.chunk_bytes += n;
                    } else {
                        scan.feed(payload, write.kind, write);
                    }
                }
            }
            _ => {}
        }
    }

    /// A frame of this stream ended: a response head out reports a streaming exchange; a `DATA` frame of a
    /// streaming response becomes its record.
    pub(crate) fn ends(
        &mut self,
        kind: u8,
        flags: u8,
        reading: bool,
        id: u32,
        session: Option<&SessionWire>,
        connection: &H2Connection,
    ) {
        use super::h2::{CONTINUATION, DATA, END_HEADERS, HEADERS};
        if reading {
            return;
        }
        if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 && !self.head_out {
            self.head_out = true;
            if let Some(exchange) = &mut self.exchange {
                exchange.ms = (exchange.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            }
            if self.kind.is_some_and(|k| k != Kind::Plain) {
                self.report(id, session, connection);
            }
        }
        if kind == DATA {
            if let (Some(events), Some(session)) = (&mut self.events, session) {
                let write = std::mem::take(&mut events.1);
                if session.watched() && write.bytes > 0 {
                    write.report(session);
                }
            }
        }
    }

    /// The stream ended: a plain exchange is reported.
    pub(crate) fn ended(&mut self, id: u32, session: Option<&SessionWire>, connection: &H2Connection) {
        self.report(id, session, connection);
    }

    fn report(&mut self, id: u32, session: Option<&SessionWire>, connection: &H2Connection) {
        let (Some(exchange), Some(session)) = (self.exchange.take(), session) else { return };
        let streaming = self.kind.is_some_and(|k| k != Kind::Plain);
        let record = json!({
            "type": "http",
            "version": "h2",
            "stream": id,
            "technique": exchange.technique.map(Transport::as_str),
            "at": exchange.at_ms,
            "ms": exchange.ms,
            "request": self.up.json(&exchange.request),
            "response": self.down.json(&exchange.response),
            "streaming": streaming,
            "connection": {
                "id": connection.id,
                "streams": connection.streams,
                "bytes_in": connection.bytes_in,
                "bytes_out": connection.bytes_out,
            },
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
    fn http_dates_are_imf_fixdates() {
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(http_date(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(at(1_796_361_599)), "Fri, 04 Dec 2026 05:19:59 GMT");
    }

    /// An HTTP/2 head is shown pseudo-headers first; as HTTP/1.1 text it is what hyper's HTTP/1.1 writes.
    #[test]
    fn h2_heads_are_shown_and_sized_as_http11_text() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", "*/*".parse().unwrap());
        let uri: Uri = "https://localhost:8443/api/poll?session=a".parse().unwrap();
        let head = H2Head::request(&Method::GET, &uri, &headers);
        assert_eq!(
            head.text,
            ":method: GET\r\n:path: /api/poll?session=a\r\n:authority: localhost:8443\r\n:scheme: https\r\naccept: */*\r\n"
        );
        let text = "GET /api/poll?session=a HTTP/1.1\r\nhost: localhost:8443\r\naccept: */*\r\n\r\n";
        assert_eq!(head.http1_bytes, text.len() as u64);

        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/event-stream".parse().unwrap());
        let head = H2Head::response(StatusCode::OK, &headers, None);
        assert!(head.text.starts_with(":status: 200\r\ncontent-type: text/event-stream\r\ndate: "), "{}", head.text);
        let text = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: Fri, 04 Dec 2026 05:19:59 GMT\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        assert_eq!(head.http1_bytes, text.len() as u64);
        let head = H2Head::response(StatusCode::NO_CONTENT, &HeaderMap::new(), Some(0));
        assert_eq!(head.text.lines().last(), Some("content-length: 0"));
        assert_eq!(
            head.http1_bytes,
            "HTTP/1.1 204 No Content\r\ndate: Fri, 04 Dec 2026 05:19:59 GMT\r\n\r\n".len() as u64,
            "no length for a bodiless status"
        );
    }

    #[test]
    fn head_ends_are_found_across_reads() {
        let mut matched = 0;
        assert_eq!(head_end(&mut matched, b"GET / HTTP/1.1\r\nHost: a\r\n\r"), (26, false));
        assert_eq!(head_end(&mut matched, b"\nbody"), (1, true));
        let mut matched = 0;
        assert_eq!(head_end(&mut matched, b"a\r\r\n\r\nb"), (6, true));
    }

    #[test]
    fn frames_are_cut_and_counted_whatever_the_write_boundaries() {
        let session = SessionWire::default();
        let mut bytes = Vec::new();
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            bytes.push(0x81);
            match len {
                0..=125 => bytes.push(len as u8),
                126..=0xFFFF => {
                    bytes.push(126);
                    bytes.extend_from_slice(&(len as u16).to_be_bytes());
                }
                _ => {
                    bytes.push(127);
                    bytes.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            bytes.extend(std::iter::repeat_n(b'x', len));
        }
        // A masked client frame.
        bytes.extend_from_slice(&[0x81, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        for step in [1, 3, 7, 256, 512, 1000, bytes.len()] {
            let mut cutter = FrameCutter::default();
            let before = session.frames_out.load(std::sync::atomic::Ordering::Relaxed);
            for piece in bytes.chunks(step) {
                cutter.feed(piece, Direction::Out, &session);
            }
            let after = session.frames_out.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(after - before, 7, "write size {step}");
            assert!(cutter.left.is_none() && cutter.have == 0, "ends between frames");
        }
    }

    /// NDJSON lines and the iframe's scripts are read back as events (JSON as data, the rest as fields), with
    /// their `seq`; a blank keep-alive line and the document's start are no event.
    #[test]
    fn ndjson_and_script_lines_are_read_back() {
        let json = format!("{{\"type\":\"message\",\"message\":\"{}\",\"seq\":42,\"ts\":1}}", "x".repeat(300));
        let script_open = "<script nonce=\"IeGM1h4DZz4KPNBbiMvCDB\">parent.chatlab(";
        for (kind, body, framing) in [
            (Kind::Ndjson, format!("{json}\n\n"), 1),
            (Kind::Script, format!("<!doctype html>\n{script_open}{json})</script>\n"), script_open.len() + 11),
        ] {
            let mut bytes = format!("{:X}\r\n", body.len()).into_bytes();
            bytes.extend_from_slice(body.as_bytes());
            bytes.extend_from_slice(b"\r\n");
            let mut cutter = SseCutter::new(kind);
            let mut write = SseWrite::default();
            for piece in bytes.chunks(5) {
                cutter.feed(piece, true, &mut write);
            }
            assert_eq!(write.kind, kind);
            let expected = json!({"id": 42, "field_bytes": framing, "data_bytes": json.len()});
            assert_eq!(write.events, vec![expected], "{kind:?}");
            assert!(write.comment, "{kind:?}: the keep-alive line or the document's start");
        }
    }

    #[test]
    fn sse_chunks_and_events_are_read_back() {
        let body = b"id: 12\ndata: {\"a\":1}\n\n";
        let mut bytes = format!("{:X}\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\r\n");
        let keep_alive = b": keep-alive\n\n";
        bytes.extend_from_slice(format!("{:X}\r\n", keep_alive.len()).as_bytes());
        bytes.extend_from_slice(keep_alive);
        bytes.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut cutter = SseCutter::default();
        let mut write = SseWrite::default();
        for piece in bytes.chunks(3) {
            cutter.feed(piece, true, &mut write);
        }
        assert_eq!(write.bytes, bytes.len() as u64);
        assert_eq!(write.chunk_bytes, bytes.len() as u64 - body.len() as u64 - keep_alive.len() as u64);
        assert_eq!(write.events, vec![json!({"id": 12, "field_bytes": 15, "data_bytes": 7})]);
        assert!(write.comment);
        assert!(matches!(cutter.chunk, Chunk::Done));
    }
}
