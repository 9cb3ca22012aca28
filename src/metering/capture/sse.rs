//! A streaming response's body read back: its chunks (`Transfer-Encoding: chunked`), and while watched the events
//! in them (SSE fields, NDJSON lines, the iframe's `<script>` lines), one record per write.

use serde_json::{json, Value};

use super::Kind;
use crate::metering::now_ms;
use crate::metering::session::SessionWire;

/// Cuts an SSE response body into its chunks (`Transfer-Encoding: chunked`), and the chunks' data into events
/// while watched.
#[derive(Debug)]
pub(super) struct SseCutter {
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
pub(super) struct EventScan {
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
pub(super) struct SseWrite {
    pub(super) kind: Kind,
    pub(super) bytes: u64,
    /// The framing: chunked encoding's over HTTP/1.1, the `DATA` frame's header over HTTP/2.
    pub(super) chunk_bytes: u64,
    pub(super) events: Vec<Value>,
    pub(super) comment: bool,
    /// The HTTP/2 stream, over HTTP/2.
    pub(super) stream: Option<u32>,
}

impl Default for SseWrite {
    fn default() -> Self {
        SseWrite { kind: Kind::Sse, bytes: 0, chunk_bytes: 0, events: Vec::new(), comment: false, stream: None }
    }
}

impl SseWrite {
    pub(super) fn report(self, session: &SessionWire) {
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
    pub(super) fn new(kind: Kind) -> Self {
        SseCutter { kind, chunk: Chunk::default(), reading: false, event: EventScan::default() }
    }

    pub(super) fn feed(&mut self, mut data: &[u8], watched: bool, write: &mut SseWrite) {
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
    pub(super) fn feed(&mut self, mut data: &[u8], kind: Kind, write: &mut SseWrite) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
