//! WebSocket on `/ws?session=&since=`: one TCP connection carries both directions as text frames.
//!
//! Without `session=` the connection joins as a new participant; with it, it takes that participant over
//! (no join or leave notice) and resumes after `since` (default: where the session's last channel stopped).
//! The first frame is `welcome {id, nickname, session, seq, epoch}`; then room events and control events as text
//! frames. The client sends plain text frames (`hello`, `/nick NAME`); a refused text gets an `error` event and the
//! connection stays open. With `ack=1` each client frame is `{"ref": "<client id>", "text": "hello"}` instead, and
//! is answered `{"type":"ack","ref","seq"}` once the room keeps it (on disk, in the durable room), or an `error`
//! naming the `ref`: a `ref` the session used before is not published again, so a client that lost its
//! connection resends what was not acknowledged.
//!
//! Every `--keepalive` seconds the server pings; a peer that answers nothing for two pings is dropped, so a client
//! that vanished without closing is noticed (and announced as gone when its lease runs out).
//!
//! Close codes: 1001 server stopping, 1002 protocol error, 1003 binary frame, 1007 invalid UTF-8, 1009 frame or
//! message over `--max-frame-bytes` or in more than `--ws-max-fragments` frames, 4000 replaced by a newer channel of the session, 4008 slow consumer (over
//! `--send-queue` events behind; reconnect with `since=` to resume). The server waits for the client's Close
//! before closing TCP, at most `--ws-close-timeout-ms` (`Socket::close`).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use tungstenite::{Bytes, Message};

use super::websocket::{is_too_many_fragments, Socket, Upgrade, MAX_HEADER};
use super::writer::{Step, Wire, Writer};
use super::{send_key, ClientAddr, Params, SameOrigin};
use crate::core::{Channel, Item, Room, Transport};
use crate::error::AppError;
use crate::metering::session::SessionWire;
use crate::model::{control, Seq};

/// Close code: a newer channel of the same session took over.
pub const CLOSE_REPLACED: u16 = 4000;
/// Close code: the receiver fell more than `--send-queue` events behind.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Upgrades `/ws`. Joins (as `nickname=`, else as a guest) or takes over `session=` before upgrading, so a
/// refusal is a plain HTTP error: `403` cross-site origin, `404` unknown session, `400` malformed `since`, a
/// refused nickname or both `session=` and `nickname=`, `429` a client holding `--max-sessions-per-client`
/// sessions (a join), `503` too many connections.
pub async fn handler(
    State(room): State<Room>,
    _: SameOrigin,
    ClientAddr(client): ClientAddr,
    params: Params,
    upgrade: Upgrade,
) -> Result<Response, AppError> {
    let since = params.since()?;
    let sends = if params.ack()? { Sends::Acked } else { Sends::Plain };
    room.metering().request(Transport::Ws);
    let (token, since, joined) = match (params.session(), params.nickname()) {
        (Some(_), Some(_)) => {
            return Err(AppError::BadRequest(
                "give session= to take a participant over or nickname= to join as a new one, not both".into(),
            ))
        }
        (Some(token), None) => (token.to_owned(), since, false),
        (None, nickname) => {
            let (record, cursor) = room.join_from(client, Transport::Ws, nickname, false).await?;
            (record.token, Some(since.unwrap_or(cursor)), true)
        }
    };
    let opened = match room.open(&token, Transport::Ws, since, params.epoch()).await {
        Ok((channel, record)) => room.presence_now().await.map(|presence| (channel, record, presence)),
        Err(error) => Err(error),
    };
    let (channel, record, presence) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            if joined {
                // Refused after joining (say, too many connections): leave now rather than linger for a lease.
                let _ = room.leave(&token).await;
            }
            return Err(error);
        }
    };
    let welcome =
        control::welcome(&record.id, &record.nickname, &record.token, channel.cursor(), channel.epoch(), &presence);
    let wire = room.metering().session(&token);
    let channel = Box::new(channel);
    Ok(upgrade.on_upgrade(room.config(), move |socket| {
        serve(socket, channel, wire, client, Some(welcome), OnClose::Stay, sends)
    }))
}

/// What a client's text frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sends {
    /// The text itself (`hello`, `/nick NAME`); only a refusal is answered (the seed protocol, `/ws`).
    Plain,
    /// `{"ref", "text"}`, each answered with an `ack` or an `error` naming the `ref` (`/ws?ack=1`).
    Acked,
}

/// A `/ws?ack=1` client frame.
#[derive(Debug, Deserialize)]
struct AckedText {
    #[serde(rename = "ref")]
    reference: String,
    text: String,
}

/// Reads one text frame from the client: what to post, or, for a frame that cannot be posted, its refusal.
fn receive(room: &Room, frame: &str, sends: Sends) -> Entry {
    if sends == Sends::Plain {
        return Entry::Post { text: frame.to_owned(), reference: None };
    }
    let sent: AckedText = match serde_json::from_str(frame) {
        Ok(sent) => sent,
        Err(error) => {
            // Name the `ref` in the refusal when there is one to read, so the client knows which send it was.
            let value: Option<serde_json::Value> = serde_json::from_str(frame).ok();
            let reference = value.as_ref().and_then(|v| v.get("ref")).and_then(|r| r.as_str());
            let error = AppError::BadRequest(format!(
                "with ack=1 every frame is a JSON object {{\"ref\": \"<your id for it>\", \"text\": \"<a chat line or /nick NAME>\"}}: {error}"
            ));
            return Entry::Answer(control::refused(reference, error.code(), &error.to_string()));
        }
    };
    match send_key("ref", &sent.reference, room.config().max_ref_bytes) {
        Ok(_) => Entry::Post { text: sent.text, reference: Some(sent.reference) },
        Err(error) => Entry::Answer(control::refused(Some(&sent.reference), error.code(), &error.to_string())),
    }
}

/// A text frame waiting in the [`Outbox`].
enum Entry {
    /// A text to post, with the `ref` it was sent with (`/ws?ack=1`), which is also its key.
    Post { text: String, reference: Option<String> },
    /// The answer to a frame refused as it was read, sent in its turn.
    Answer(String),
}

/// What to answer for a posted text: an `ack` or a refusal naming its `ref`; without one, only a refusal.
fn answer(reference: Option<&str>, outcome: Result<Seq, AppError>) -> Option<String> {
    match (reference, outcome) {
        (Some(reference), Ok(seq)) => Some(control::ack(reference, seq)),
        (None, Ok(_)) => None,
        (reference, Err(error)) => Some(match reference {
            Some(reference) => control::refused(Some(reference), error.code(), &error.to_string()),
            None => error.to_event(),
        }),
    }
}

/// What becomes of the participant when its socket ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnClose {
    /// It stays for the lease: it may come back on any technique (`/ws`).
    Stay,
    /// It leaves at once, unless the server is stopping (the seed protocol on `/`).
    Leave,
}

/// How a socket's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client closed, vanished, or broke the protocol.
    Client,
    /// A newer channel took the session over.
    Replaced,
    /// The server is stopping.
    Shutdown,
    /// The client fell too far behind.
    Slow,
}

/// Runs one connection: room events out (coalesced), texts in, until either side ends it.
/// Errors stay inside this task: a broken connection never affects another.
///
/// An idle connection is this future parked on its `select!`, so its size is most of a connection's memory: the
/// rarer, larger steps (posting a text, a batch, the goodbye) are boxed and exist only while they run, and the
/// upgrade callback returns this future itself rather than wrapping it (a wrapper would hold the socket twice).
///
/// The channel comes boxed: the upgrade callback and this future would otherwise each reserve room for it.
#[allow(clippy::manual_async_fn, reason = "an async fn would hold the socket twice; see the comment inside")]
pub(crate) fn serve(
    mut socket: Socket,
    channel: Box<Channel>,
    wire: Arc<SessionWire>,
    client: Option<IpAddr>,
    welcome: Option<String>,
    on_close: OnClose,
    sends: Sends,
) -> impl Future<Output = ()> + Send {
    // A plain function returning an `async move` block, not an `async fn`: an `async fn` moves its arguments
    // into locals and so holds the socket twice for the connection's whole life.
    async move {
        let mut writer = Writer::new(channel, wire);
        let ended = exchange(&mut socket, &mut writer, client, welcome, sends).await;
        // On shutdown the participant is not announced as gone: in a cluster it comes back on another process,
        // and one that does not is reaped by its lease.
        if on_close == OnClose::Leave && ended != Ended::Shutdown {
            let channel = writer.channel();
            if let Err(error) = Box::pin(channel.room().leave(channel.token())).await {
                tracing::warn!(%error, "could not announce a seed participant's leave");
            }
        }
    }
}

/// Runs the loop until it ends.
async fn exchange(
    socket: &mut Socket,
    writer: &mut Writer,
    client: Option<IpAddr>,
    welcome: Option<String>,
    sends: Sends,
) -> Ended {
    if let Some(welcome) = welcome {
        if socket.send(Message::Text(welcome.into())).await.is_err() {
            return Ended::Client;
        }
    }
    // Keep-alive beats since the peer last sent anything (a frame, or the pong to our ping).
    let mut unanswered = 0u8;
    let mut outbox = Outbox::default();
    loop {
        // Biased towards delivery: a connection drains what it owes before reading more input, so a fast
        // sender cannot outrun its own echoes into a slow-consumer close.
        tokio::select! {
            biased;
            // The channel's next item, or, paced (`--flush-interval-ms`), the end of the interval.
            wake = writer.wake() => {
                let mut frames = Frames { socket: &mut *socket, unanswered: &mut unanswered };
                match writer.write(&mut frames, wake).await {
                    Step::Wrote | Step::Idle => {}
                    Step::Gone => return Ended::Client,
                    Step::Ended(Item::Shutdown) => return Ended::Shutdown,
                    Step::Ended(Item::Replaced) => return Ended::Replaced,
                    Step::Ended(_) => return Ended::Slow,
                }
            }
            progress = outbox.progress(), if outbox.busy() => {
                if let Progress::Answered(answers) = progress {
                    for answer in answers {
                        if socket.send(Message::Text(answer.into())).await.is_err() {
                            return Ended::Client;
                        }
                    }
                }
                outbox.post(writer.room(), client, writer.channel().token());
            }
            // A client whose frames wait beyond the outbox's bound is not read until some are answered.
            received = socket.recv(), if outbox.open(writer.room().config().ws_outbox_max as usize) => {
                unanswered = 0;
                let message = match received {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        Box::pin(close(socket, protocol_close_code(&error), "protocol error")).await;
                        return Ended::Client;
                    }
                    None => return Ended::Client,
                };
                match message {
                    Message::Text(text) => {
                        outbox.waiting.push(receive(writer.room(), text.as_str(), sends));
                        outbox.post(writer.room(), client, writer.channel().token());
                    }
                    Message::Binary(_) => {
                        let error = AppError::BadRequest("binary frames are not supported: send text".into());
                        let _ = socket.send(Message::Text(error.to_event().into())).await;
                        Box::pin(close(socket, 1003, "binary frames are not supported")).await;
                        return Ended::Client;
                    }
                    // `recv` has already echoed the close (RFC 6455).
                    Message::Close(_) => return Ended::Client,
                    // tungstenite answers pings by itself; it never reads a raw `Frame`.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
        }
    }
}

/// A connection's texts on their way into the room, in the order they arrived. One batch is numbered at a time
/// ([`Room::post_all`]: with the durable broker, one commit per batch); as soon as it is numbered (and its
/// texts delivered to readers) the next batch may be numbered, while the earlier ones wait to be durable. Each
/// frame's answer (an ack, a refusal) is written once its text is durable, in the order the frames came. Frames
/// read and not yet answered are bounded by `--ws-outbox-max`: past it, the connection is not read until some are
/// answered (its client's TCP window then fills), so a client sending faster than the room takes its texts is
/// held back, not dropped, and none of its texts is lost.
#[derive(Default)]
struct Outbox {
    /// The batch being numbered, with its number of frames.
    numbering: Option<(usize, Numbering)>,
    /// Batches numbered, oldest first, each with its number of frames, waiting to be durable.
    syncing: VecDeque<(usize, Syncing)>,
    /// Frames read and not yet in a batch.
    waiting: Vec<Entry>,
    /// Frames in `numbering` and `syncing`.
    in_flight: usize,
}

/// A batch being numbered; it then waits to be durable.
type Numbering = Pin<Box<dyn Future<Output = Syncing> + Send>>;

/// A batch numbered, waiting to be durable: the answers to write, in order.
type Syncing = Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

/// What [`Outbox::progress`] saw.
enum Progress {
    /// The batch being numbered is numbered: the next one may go.
    Numbered,
    /// The oldest batch is durable (or refused): its answers, to write now.
    Answered(Vec<String>),
}

impl Outbox {
    /// Whether a batch is being numbered or waits to be durable.
    fn busy(&self) -> bool {
        self.numbering.is_some() || !self.syncing.is_empty()
    }

    /// Whether more frames may be read: fewer than `max` wait or are in flight.
    fn open(&self, max: usize) -> bool {
        self.waiting.len() + self.in_flight < max
    }

    /// Starts numbering the waiting texts, unless a batch is being numbered (they go when it is).
    fn post(&mut self, room: &Room, client: Option<IpAddr>, token: &str) {
        if self.numbering.is_some() || self.waiting.is_empty() {
            return;
        }
        let (room, token, entries) = (room.clone(), token.to_owned(), std::mem::take(&mut self.waiting));
        let frames = entries.len();
        self.in_flight += frames;
        #[allow(clippy::async_yields_async, reason = "numbered, a batch yields what waits for it to be durable")]
        let numbering: Numbering = Box::pin(async move {
            let mut texts = Vec::with_capacity(entries.len());
            let mut shape = Vec::with_capacity(entries.len());
            for entry in entries {
                match entry {
                    Entry::Post { text, reference } => {
                        texts.push((text, reference));
                        shape.push(None);
                    }
                    Entry::Answer(answer) => shape.push(Some(answer)),
                }
            }
            let posted = if texts.is_empty() { None } else { Some(room.post_all(client, &token, &texts).await) };
            let syncing: Syncing = Box::pin(async move {
                let outcomes = match posted {
                    Some(posted) => posted.outcomes().await,
                    None => Vec::new(),
                };
                let mut posted = texts.iter().zip(outcomes);
                shape
                    .into_iter()
                    .filter_map(|known| match known {
                        Some(answer) => Some(answer),
                        None => {
                            posted.next().and_then(|((_, reference), outcome)| answer(reference.as_deref(), outcome))
                        }
                    })
                    .collect()
            });
            syncing
        });
        self.numbering = Some((frames, numbering));
    }

    /// The next step of the batches in flight: the batch being numbered is numbered, or the oldest one is
    /// durable (cancel-safe: a batch leaves the outbox only in the poll that answers it).
    fn progress(&mut self) -> impl Future<Output = Progress> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some((frames, numbering)) = self.numbering.as_mut() {
                if let Poll::Ready(syncing) = numbering.as_mut().poll(cx) {
                    let frames = *frames;
                    self.numbering = None;
                    self.syncing.push_back((frames, syncing));
                    return Poll::Ready(Progress::Numbered);
                }
            }
            // Only the oldest is watched: answers go out in the order the frames came.
            if let Some((frames, syncing)) = self.syncing.front_mut() {
                if let Poll::Ready(answers) = syncing.as_mut().poll(cx) {
                    self.in_flight -= *frames;
                    self.syncing.pop_front();
                    return Poll::Ready(Progress::Answered(answers));
                }
            }
            Poll::Pending
        })
    }
}

/// A WebSocket's wire for the delivery [`Writer`]: text frames queued in the socket and written with one flush,
/// pings for the beat, a notice and a Close frame for the end.
struct Frames<'a> {
    socket: &'a mut Socket,
    /// Keep-alive beats since the peer last sent anything (a frame, or the pong to our ping).
    unanswered: &'a mut u8,
}

impl Wire for Frames<'_> {
    const TRANSPORT: Transport = Transport::Ws;

    fn overhead(&self) -> usize {
        MAX_HEADER
    }

    fn reserve(&mut self, bytes: usize) {
        self.socket.reserve(bytes);
    }

    fn event(&mut self, _seq: Option<Seq>, json: &[u8]) {
        self.socket.push_event(json);
    }

    fn send(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.socket.write_out()
    }

    fn shrink(&mut self) {
        self.socket.shrink();
    }

    /// Pings; `Err` once two pings went unanswered: the peer is gone without a FIN. Dropping the socket ends the
    /// channel; the lease then announces the leave.
    async fn beat(&mut self) -> io::Result<()> {
        if *self.unanswered >= 2 {
            return Err(io::ErrorKind::TimedOut.into());
        }
        *self.unanswered += 1;
        self.socket.send(Message::Ping(Bytes::new())).await.map_err(io::Error::other)
    }

    /// Sends the notice, then closes with the code that says why ([`Socket::close`]).
    async fn end(&mut self, end: &Item, notice: String) {
        let (code, reason) = match end {
            Item::Shutdown => (1001, "server is stopping"),
            Item::Replaced => (CLOSE_REPLACED, "replaced by a newer channel"),
            Item::Lagged | Item::Deliver(_) | Item::Beat => (CLOSE_SLOW_CONSUMER, "slow consumer: resume with since="),
        };
        let _ = self.socket.send(Message::Text(notice.into())).await;
        close(self.socket, code, reason).await;
    }
}

/// Ends the connection with `code` ([`Socket::close`]: the client's Close is waited for, within a bound).
async fn close(socket: &mut Socket, code: u16, reason: &'static str) {
    socket.close(code, reason).await;
}

/// The close code for a read error: 1009 too big (or in more than `--ws-max-fragments` frames), 1007 invalid
/// UTF-8, 1002 any other protocol error.
pub(crate) fn protocol_close_code(error: &tungstenite::Error) -> u16 {
    if is_too_many_fragments(error) {
        return 1009;
    }
    match error {
        tungstenite::Error::Capacity(_) => 1009,
        tungstenite::Error::Utf8(_) => 1007,
        _ => 1002,
    }
}
