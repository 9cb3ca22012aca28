//! An HTTP/2 connection's bytes, given to its streams by their frame headers (see "HTTP/2" in the module docs
//! of `wire`): the streams a [`Connection`] follows, and its methods that give each frame's bytes to its stream.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::connection::{Attribution, Connection, Owner};
use crate::metering::capture::{H2Connection, H2Exchange, H2Log, Kind};
use crate::metering::h2::{Frames, Piece, DATA, END_STREAM, HEADERS, RST_STREAM};
use crate::metering::session::SessionWire;

/// An HTTP/2 connection's streams, followed from its frames (see "HTTP/2" in the module docs of `wire`).
#[derive(Debug)]
pub(super) struct Streams {
    reads: Frames,
    writes: Frames,
    /// The open streams (bounded by `--h2-max-streams`, which the HTTP server enforces with resets).
    pub(super) open: HashMap<u32, Stream>,
    /// The last few ended streams, for frames of theirs that cross the ended ones (a late `WINDOW_UPDATE`).
    ended: std::collections::VecDeque<(u32, Owner, Option<Arc<SessionWire>>)>,
    /// Streams whose requests have not reached the service yet, oldest first.
    unclaimed: std::collections::VecDeque<u32>,
    /// The highest stream id the client has opened.
    last: u32,
    /// What a wire view's records say of the connection: its streams so far and its own bytes.
    summary: H2Connection,
}

/// How many ended streams keep their owner for late frames.
const ENDED_KEPT: usize = 16;

/// One HTTP/2 stream's owner, its bytes while the owner is not known, and what a wire view is told of it.
#[derive(Debug)]
pub(super) struct Stream {
    owner: Owner,
    session: Option<Arc<SessionWire>>,
    pub(super) pending_in: u64,
    pub(super) pending_out: u64,
    log: H2Log,
}

impl Streams {
    fn new(connection: u64) -> Self {
        Streams {
            reads: Frames::from_client(),
            writes: Frames::from_server(),
            open: HashMap::new(),
            ended: std::collections::VecDeque::new(),
            unclaimed: std::collections::VecDeque::new(),
            last: 0,
            summary: H2Connection { id: connection, ..H2Connection::default() },
        }
    }

    /// Whose the bytes of `stream` are: `None` for the connection, `Undecided` while pending.
    fn owner(&mut self, stream: u32) -> Option<(Owner, Option<Arc<SessionWire>>)> {
        if stream == 0 {
            return None;
        }
        if let Some(open) = self.open.get(&stream) {
            return Some((open.owner, open.session.clone()));
        }
        self.ended.iter().find(|(id, ..)| *id == stream).map(|(_, owner, session)| (*owner, session.clone()))
    }
}

impl Connection {
    /// The connection speaks HTTP/2 (ALPN chose `h2`): its bytes are given to streams from now on.
    pub fn speak_http2(&self) {
        self.metering.others().http2_connections_total.fetch_add(1, Ordering::Relaxed);
        self.state().h2 = Some(Box::new(Streams::new(self.id)));
    }

    /// The stream of the HTTP/2 request reaching the service now (the oldest unclaimed one); `None` on HTTP/1.1.
    pub(super) fn claim_stream(&self) -> Option<u32> {
        let mut state = self.state();
        let streams = state.h2.as_mut()?;
        // Always `Some` on HTTP/2 (the request's HEADERS was read before it was dispatched); 0 if it was not seen.
        Some(streams.unclaimed.pop_front().unwrap_or(0))
    }

    /// An HTTP/2 stream's response head is ready: its bytes are `owner`'s (and `session`'s, for a technique); a
    /// `kind` response, kept as `exchange` for a watching wire view.
    pub(super) fn answer_stream(
        &self,
        id: u32,
        owner: Owner,
        session: Option<Arc<SessionWire>>,
        kind: Kind,
        exchange: Option<Box<H2Exchange>>,
    ) {
        let mut state = self.state();
        let Some(streams) = state.h2.as_mut() else { return };
        let Some(stream) = streams.open.get_mut(&id) else { return };
        stream.owner = owner;
        stream.session = session.filter(|_| matches!(owner, Owner::Technique(_)));
        let watched = stream.session.as_ref().is_some_and(|s| s.watched());
        stream.log.answered(kind, exchange.filter(|_| watched));
        let (read, written) = (std::mem::take(&mut stream.pending_in), std::mem::take(&mut stream.pending_out));
        let session = stream.session.clone();
        self.count(owner, session.as_deref(), read, written, true);
    }

    /// `data` crossed an HTTP/2 connection (`reading`: from the client): each frame's bytes to its stream.
    pub(super) fn h2_bytes(&self, state: &mut Attribution, data: &[u8], reading: bool) {
        let Some(mut streams) = state.h2.take() else { return };
        let mut opened = false;
        let mut closed = false;
        let Streams { reads, writes, .. } = &mut *streams;
        let frames = if reading { reads } else { writes };
        let mut frames = std::mem::replace(frames, Frames::from_server());
        frames.feed(data, &mut |piece| match piece {
            Piece::Starts(head) => {
                if reading && head.kind == HEADERS && head.stream % 2 == 1 && head.stream > streams.last {
                    streams.last = head.stream;
                    let stream = Stream {
                        owner: Owner::Undecided,
                        session: None,
                        pending_in: 0,
                        pending_out: 0,
                        log: H2Log::default(),
                    };
                    streams.open.insert(head.stream, stream);
                    streams.unclaimed.push_back(head.stream);
                    streams.summary.streams += 1;
                    opened = true;
                }
                if let Some(open) = streams.open.get_mut(&head.stream) {
                    open.log.starts(head.kind, reading, head.stream, open.session.as_deref());
                }
            }
            Piece::Bytes { stream, kind, n, payload } => {
                if let Some(open) = streams.open.get_mut(&stream) {
                    open.log.bytes(kind, n, payload, reading);
                }
                let (read, written) = if reading { (n, 0) } else { (0, n) };
                match streams.owner(stream) {
                    Some((Owner::Undecided, _)) => {
                        if let Some(open) = streams.open.get_mut(&stream) {
                            open.pending_in += read;
                            open.pending_out += written;
                        }
                    }
                    Some((owner, session)) => self.count(owner, session.as_deref(), read, written, true),
                    None => {
                        if reading {
                            streams.summary.bytes_in += n;
                        } else {
                            streams.summary.bytes_out += n;
                        }
                        let others = self.metering.others();
                        let (total, own) = if reading {
                            (&others.wire_bytes_in, &others.http2_connection_bytes_in)
                        } else {
                            (&others.wire_bytes_out, &others.http2_connection_bytes_out)
                        };
                        total.fetch_add(n, Ordering::Relaxed);
                        own.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Piece::Ends(head) => {
                let summary = streams.summary;
                if let Some(open) = streams.open.get_mut(&head.stream) {
                    open.log.ends(head.kind, head.flags, reading, head.stream, open.session.as_deref(), &summary);
                }
                let ends = head.kind == RST_STREAM
                    || (!reading && (head.kind == DATA || head.kind == HEADERS) && head.flags & END_STREAM != 0);
                if ends {
                    if let Some(mut stream) = streams.open.remove(&head.stream) {
                        closed = true;
                        stream.log.ended(head.stream, stream.session.as_deref(), &summary);
                        if stream.owner == Owner::Undecided {
                            // Reset before its request was answered: nobody's.
                            streams.unclaimed.retain(|id| *id != head.stream);
                            self.count(Owner::Nobody, None, stream.pending_in, stream.pending_out, true);
                        } else {
                            if streams.ended.len() == ENDED_KEPT {
                                streams.ended.pop_front();
                            }
                            streams.ended.push_back((head.stream, stream.owner, stream.session));
                        }
                    }
                }
            }
        });
        *(if reading { &mut streams.reads } else { &mut streams.writes }) = frames;
        let idle = streams.open.is_empty();
        state.h2 = Some(streams);
        if opened && !idle {
            state.head_deadline = None;
            state.awaiting_head = false;
        } else if closed && idle {
            state.head_deadline = self.deadlines.header.map(|limit| Instant::now() + limit);
            state.wrote_while_awaiting = false;
            state.awaiting_head = true;
        }
    }
}
