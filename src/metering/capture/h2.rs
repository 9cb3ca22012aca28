//! What an HTTP/2 stream tells a wire view: its frames counted by kind both ways (always), and while watched its
//! exchange (the heads as the server decoded them, beside the same heads as HTTP/1.1 text) and its `DATA` frames
//! read as events.

use std::time::Instant;

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};

use super::sse::{EventScan, SseWrite};
use super::{Kind, HEAD_MAX};
use crate::metering::now_ms;
use crate::metering::session::SessionWire;
use crate::model::Transport;

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
        if reading || kind != crate::metering::h2::DATA || !streaming {
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
        use crate::metering::h2::{CONTINUATION, DATA, HEADERS};
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
        use crate::metering::h2::{CONTINUATION, DATA, END_HEADERS, HEADERS};
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
}
