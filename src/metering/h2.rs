//! The frames of an HTTP/2 connection, followed as its plaintext crosses the socket, so that each byte can be given
//! to the stream (and so the request) it belongs to.
//!
//! HTTP/2 interleaves every request of a connection on one socket, so the HTTP/1.1 rule of [`super::wire`] (the
//! bytes between two request heads are one request's) does not hold. Every HTTP/2 frame starts with a 9-byte header
//! that names its stream (RFC 9113 section 4.1), so a reader that follows the frame headers in each direction knows
//! whose every byte is: a frame's header and payload belong to its stream, and stream 0 (`SETTINGS`, `PING`,
//! connection-level `WINDOW_UPDATE`, `GOAWAY`), like the client's 24-byte connection preface, to the connection.
//! [`Frames`] is that reader: it keeps at most one partial frame header, whatever the reads and writes look like.

/// The client's connection preface (RFC 9113 section 3.4), which comes before its first frame.
const PREFACE_LEN: u32 = 24;
/// The `kind` of the preface's bytes (no frame type has it).
pub(crate) const PREFACE: u8 = 0xFF;

/// `DATA`.
pub(crate) const DATA: u8 = 0x0;
/// `HEADERS`.
pub(crate) const HEADERS: u8 = 0x1;
/// `CONTINUATION`: more of a header block.
pub(crate) const CONTINUATION: u8 = 0x9;
/// The `END_HEADERS` flag of `HEADERS` and `CONTINUATION`.
pub(crate) const END_HEADERS: u8 = 0x4;
/// `RST_STREAM`.
pub(crate) const RST_STREAM: u8 = 0x3;
/// The `END_STREAM` flag of `DATA` and `HEADERS`.
pub(crate) const END_STREAM: u8 = 0x1;

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// The payload's length.
    pub(crate) len: u32,
    /// The frame's type.
    pub(crate) kind: u8,
    /// Its flags.
    pub(crate) flags: u8,
    /// Its stream (0: the connection).
    pub(crate) stream: u32,
}

/// What a run of bytes was, in the order the bytes came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// A frame's header is complete: its 9 bytes are counted with the frame's stream right after.
    Starts(Head),
    /// `n` bytes of `stream`'s frames (a header once complete, payload as it passes); stream 0 for the preface and
    /// the connection's own frames. `payload` holds them when they are a frame's payload (empty for a header and
    /// the preface), and `kind` is the type of their frame ([`PREFACE`] for the preface).
    Bytes { stream: u32, kind: u8, n: u64, payload: &'a [u8] },
    /// A frame's last byte has passed.
    Ends(Head),
}

/// One direction's frame reader.
#[derive(Debug)]
pub(crate) struct Frames {
    /// Preface bytes still to come (reads of the server only).
    preface: u32,
    /// The frame header being assembled, and how much of it has come.
    head: [u8; 9],
    have: usize,
    /// The current frame, and how many payload bytes of it are still to come.
    current: Option<(Head, u32)>,
}

impl Frames {
    /// The reader of what the client sends (it starts with the connection preface).
    pub(crate) fn from_client() -> Self {
        Frames { preface: PREFACE_LEN, head: [0; 9], have: 0, current: None }
    }

    /// The reader of what the server sends.
    pub(crate) fn from_server() -> Self {
        Frames { preface: 0, head: [0; 9], have: 0, current: None }
    }

    /// Follows `data`, telling `piece` what each run of it was.
    pub(crate) fn feed<'a>(&mut self, mut data: &'a [u8], piece: &mut impl FnMut(Piece<'a>)) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = (self.preface as usize).min(data.len());
                self.preface -= n as u32;
                piece(Piece::Bytes { stream: 0, kind: PREFACE, n: n as u64, payload: &[] });
                data = &data[n..];
                continue;
            }
            match &mut self.current {
                Some((head, left)) => {
                    let n = (*left as usize).min(data.len());
                    *left -= n as u32;
                    let head = *head;
                    piece(Piece::Bytes { stream: head.stream, kind: head.kind, n: n as u64, payload: &data[..n] });
                    data = &data[n..];
                    if *left == 0 {
                        self.current = None;
                        piece(Piece::Ends(head));
                    }
                }
                None => {
                    let n = (9 - self.have).min(data.len());
                    self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    if self.have < 9 {
                        break;
                    }
                    self.have = 0;
                    let h = &self.head;
                    let head = Head {
                        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    };
                    piece(Piece::Starts(head));
                    piece(Piece::Bytes { stream: head.stream, kind: head.kind, n: 9, payload: &[] });
                    if head.len == 0 {
                        piece(Piece::Ends(head));
                    } else {
                        self.current = Some((head, head.len));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// Bytes per stream, the frames seen ending, and the payloads of `DATA` frames as passed, for `wire` cut into
    /// pieces of `step` bytes.
    fn follow(frames: &mut Frames, wire: &[u8], step: usize) -> (Vec<(u32, u64)>, Vec<Head>, Vec<u8>) {
        let mut bytes: Vec<(u32, u64)> = Vec::new();
        let mut ended = Vec::new();
        let mut data = Vec::new();
        for chunk in wire.chunks(step) {
            frames.feed(chunk, &mut |piece| match piece {
                Piece::Bytes { stream, kind, n, payload } => {
                    assert!(payload.is_empty() || payload.len() as u64 == n);
                    if kind == DATA {
                        data.extend_from_slice(payload);
                    }
                    match bytes.iter_mut().find(|(s, _)| *s == stream) {
                        Some((_, total)) => *total += n,
                        None => bytes.push((stream, n)),
                    }
                }
                Piece::Ends(head) => ended.push(head),
                Piece::Starts(_) => {}
            });
        }
        (bytes, ended, data)
    }

    #[test]
    fn every_byte_goes_to_its_frames_stream_however_the_reads_are_cut() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 0, 0, &[0; 6]));
        wire.extend(frame(HEADERS, 0x4, 1, &[1; 40]));
        wire.extend(frame(HEADERS, 0x5, 3, &[2; 17]));
        wire.extend(frame(DATA, END_STREAM, 1, &[3; 300]));
        wire.extend(frame(RST_STREAM, 0, 3, &[0; 4]));
        for step in [1, 2, 7, 9, 10, 64, wire.len()] {
            let (bytes, ended, data) = follow(&mut Frames::from_client(), &wire, step);
            assert_eq!(data, vec![3; 300], "the DATA payload, whole and alone");
            assert_eq!(bytes, vec![(0, 24 + 15), (1, 49 + 309), (3, 26 + 13)], "cut every {step} bytes");
            let kinds: Vec<(u8, u32)> = ended.iter().map(|h| (h.kind, h.stream)).collect();
            assert_eq!(kinds, vec![(0x4, 0), (HEADERS, 1), (HEADERS, 3), (DATA, 1), (RST_STREAM, 3)]);
            assert_eq!(ended[3].flags & END_STREAM, END_STREAM);
        }
    }
}
