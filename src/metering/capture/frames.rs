//! WebSocket frames, cut by their headers alone (RFC 6455, 5.2) after an upgrade: counted always, described to a
//! watching wire view one `frame` record each, with a text frame's first characters.

use serde_json::Map;

use crate::metering::now_ms;
use crate::metering::session::SessionWire;

/// Most characters of a text frame's payload a record shows.
const PREVIEW_CHARS: usize = 200;
/// Bytes kept to make that preview (UTF-8 takes at most four per character).
const PREVIEW_BYTES: usize = PREVIEW_CHARS * 4;

#[derive(Debug, Clone, Copy)]
pub(super) enum Direction {
    In,
    Out,
}

/// Cuts one direction of a WebSocket into frames by their headers.
#[derive(Debug, Default)]
pub(super) struct FrameCutter {
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
    pub(super) fn feed(&mut self, mut data: &[u8], direction: Direction, session: &SessionWire) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
