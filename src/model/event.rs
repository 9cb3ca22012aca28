//! Room events: what the broker sequences, what every transport delivers.
//!
//! A [`RoomEvent`] is serialised to JSON exactly once, when it enters this process; every receiver on every
//! transport writes the same [`Bytes`] (a reference-counted slice, so a delivery costs no copy).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::session::Transport;

/// A room sequence number: strictly increasing, no holes between consecutive room events. `0` means "before the
/// first event", so a cursor of `0` asks for everything retained.
pub type Seq = u64;

/// The kinds of room event, named as on the seed's wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Join, leave and server notices (`游客1 来了`).
    Notification,
    /// A rename (`用户 游客1 改名为: alice`).
    NickUpdate,
    /// A chat text.
    Message,
}

/// What kind of notice a `notification` is, so a page can render it in its own language (the `message` keeps
/// the seed's Chinese text for the seed page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notice {
    /// A participant arrived (`游客1 来了`); the event also names its `transport`.
    Join,
    /// A participant left or its lease ran out (`游客1 走了`).
    Leave,
    /// Arrivals and departures summed in a big room (`12 人来了，3 人走了`), with `joined` and `left`.
    Crowd,
    /// The server is stopping (`Server has disconnected`).
    Shutdown,
}

/// What a publisher asks the broker to append; the broker adds `seq`, `ts` and `clientcount`.
///
/// The optional fields come after the seed's four and are left out when absent, so an event without them is
/// byte for byte what it was before they existed; the Redis broker appends the stamped fields to this
/// serialisation, so their place here is their place on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// The kind of event.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The participant the event is about.
    pub id: String,
    /// That participant's nickname (the new one, for a rename).
    pub nickname: String,
    /// The human-readable text.
    pub message: String,
    /// For a `notification`: what it announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Notice>,
    /// For a join notice: the technique the participant joined with; for a `message`: the one its sender used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// For a crowd notice: how many arrived since the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<u64>,
    /// For a crowd notice: how many left since the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<u64>,
    /// For a `nick_update`: the nickname before the rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl Draft {
    /// An event of `kind` with the seed's four fields only.
    pub fn new(kind: EventKind, id: String, nickname: String, message: String) -> Self {
        Draft { kind, id, nickname, message, notice: None, transport: None, joined: None, left: None, previous: None }
    }

    /// `<nickname> 来了`, with the technique the participant joined with.
    pub fn join(id: String, nickname: String, transport: Transport) -> Self {
        let message = format!("{nickname} 来了");
        Draft {
            notice: Some(Notice::Join),
            transport: Some(transport),
            ..Draft::new(EventKind::Notification, id, nickname, message)
        }
    }

    /// `<nickname> 走了`.
    pub fn leave(id: String, nickname: String) -> Self {
        let message = format!("{nickname} 走了");
        Draft { notice: Some(Notice::Leave), ..Draft::new(EventKind::Notification, id, nickname, message) }
    }

    /// `12 人来了，3 人走了`: arrivals and departures in a big room, counted (both counts are always given).
    pub fn crowd(joined: u64, left: u64) -> Self {
        let mut parts = Vec::with_capacity(2);
        if joined > 0 {
            parts.push(format!("{joined} 人来了"));
        }
        if left > 0 {
            parts.push(format!("{left} 人走了"));
        }
        Draft {
            notice: Some(Notice::Crowd),
            joined: Some(joined),
            left: Some(left),
            ..Draft::new(EventKind::Notification, String::new(), String::new(), parts.join("，"))
        }
    }

    /// `用户 <previous> 改名为: <nickname>`.
    pub fn rename(id: String, previous: String, nickname: String) -> Self {
        let message = format!("用户 {previous} 改名为: {nickname}");
        Draft { previous: Some(previous), ..Draft::new(EventKind::NickUpdate, id, nickname, message) }
    }

    /// A chat text, with the technique its sender used.
    pub fn message(id: String, nickname: String, text: String, transport: Transport) -> Self {
        Draft { transport: Some(transport), ..Draft::new(EventKind::Message, id, nickname, text) }
    }
}

/// The wire form of a room event: the [`Draft`]'s fields in their order (the seed's four, then the optional ones),
/// then the broker's stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    /// What the publisher asked for.
    #[serde(flatten)]
    pub draft: Draft,
    /// Participants online when the event was published.
    pub clientcount: u64,
    /// The room's sequence number.
    pub seq: Seq,
    /// Server time of publishing, in milliseconds since the Unix epoch.
    pub ts: u64,
}

impl EventBody {
    /// Stamps a draft with its sequence number, online count and the current time.
    pub fn stamp(draft: Draft, seq: Seq, clientcount: u64) -> Self {
        EventBody { draft, clientcount, seq, ts: now_ms() }
    }
}

/// A sequenced room event, serialised once and shared by every receiver.
#[derive(Debug)]
pub struct RoomEvent {
    /// The room's sequence number.
    pub seq: Seq,
    /// The JSON text of the event; every transport writes these same bytes.
    pub json: Json,
    /// When this process first saw the event: the start of publish-to-write latency.
    pub seen: Instant,
}

impl RoomEvent {
    /// Serialises `body` once, into a buffer of exactly its length: the event is kept for the whole history
    /// (`--history` of them), and the serialiser's doubling buffer would keep up to twice the text's bytes.
    pub fn new(body: &EventBody) -> Self {
        let json = serde_json::to_vec(body).expect("an event body always serialises");
        RoomEvent { seq: body.seq, json: Json(Bytes::copy_from_slice(&json)), seen: Instant::now() }
    }

    /// Rebuilds an event from its JSON text (as stored by a broker).
    ///
    /// # Errors
    /// When `json` is not an event body.
    pub fn from_json(json: Bytes) -> Result<Self, serde_json::Error> {
        let body: EventBody = serde_json::from_slice(&json)?;
        // `from_slice` accepted it, so it is UTF-8.
        Ok(RoomEvent { seq: body.seq, json: Json(json), seen: Instant::now() })
    }

    /// Parses the JSON text back into its fields (tests and tools; transports never need to).
    pub fn body(&self) -> EventBody {
        serde_json::from_str(&self.json).expect("a room event holds a valid body")
    }
}

/// An event's JSON text: bytes that are valid UTF-8 (checked when made), shared by reference count, so a write of
/// it costs no copy and no second check.
#[derive(Clone, PartialEq, Eq)]
pub struct Json(Bytes);

impl Json {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Every constructor checks (or is given, by serde_json) UTF-8; no unchecked conversion exists.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The bytes, as a socket writes them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty (an event never is).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Json {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Milliseconds since the Unix epoch, the unit of `ts`.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The civil date (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (Howard Hinnant's
/// civil-from-days), for the dates chatlab writes itself (HTTP `date` heads, reports) without a date crate.
pub fn civil_date(days_since_epoch: i64) -> (i64, i64, i64) {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Per-client control events. They carry no `seq` of their own.
pub mod control {
    use serde_json::json;

    use super::Seq;
    use crate::model::session::Presence;

    /// The first frame of a `/ws` connection and of an SSE stream: who you are, where your cursor is, in which
    /// epoch of the room, and who is online now.
    pub fn welcome(id: &str, nickname: &str, session: &str, seq: Seq, epoch: &str, presence: &Presence) -> String {
        json!({"type": "welcome", "id": id, "nickname": nickname, "session": session, "seq": seq, "epoch": epoch,
            "presence": presence})
        .to_string()
    }

    /// The cursor `since` is from another epoch: the room started over since, and what follows is the current
    /// room from its oldest retained event, the first after `to`.
    pub fn epoch_gap(since: Seq, to: Seq, epoch: &str) -> String {
        let message = format!(
            "cursor {since} is from another epoch of the room, which has started over (epoch {epoch}); \
             what follows is the room from its oldest retained event"
        );
        json!({"type": "gap", "reason": "epoch", "from": since + 1, "to": to, "epoch": epoch, "message": message})
            .to_string()
    }

    /// A `/ws?ack=1` text is sequenced: its event's `seq` (or, for a repeated `ref`, the first send's).
    pub fn ack(reference: &str, seq: Seq) -> String {
        json!({"type": "ack", "ref": reference, "seq": seq}).to_string()
    }

    /// A refused `/ws?ack=1` frame: as [`error`], naming the frame's `ref` when one could be read.
    pub fn refused(reference: Option<&str>, code: &str, message: &str) -> String {
        match reference {
            Some(reference) => json!({"type": "error", "ref": reference, "code": code, "message": message}).to_string(),
            None => error(code, message),
        }
    }

    /// Events `from..=to` are no longer retained (or never existed here): the client missed them.
    pub fn gap(from: Seq, to: Seq) -> String {
        let message = format!("events {from} to {to} are no longer retained; what follows resumes after them");
        json!({"type": "gap", "from": from, "to": to, "message": message}).to_string()
    }

    /// Numbers the room skipped when it recovered from a crash ([`crate::model::Missed::Skipped`]).
    pub fn skipped(from: Seq, to: Seq) -> String {
        let message = format!(
            "the server restarted after a crash and skipped numbers {from} to {to}: none of them is stored (a text \
             seen just before the crash but never saved, or a number never used); what follows resumes after them"
        );
        json!({"type": "gap", "reason": "skipped", "from": from, "to": to, "message": message}).to_string()
    }

    /// A cursor ahead of the room (the room restarted, or the client made it up).
    pub fn reset(since: Seq, head: Seq) -> String {
        let message = format!("cursor {since} is ahead of the room (newest is {head}); resuming from {head}");
        json!({"type": "gap", "from": head + 1, "to": since, "message": message}).to_string()
    }

    /// A per-client error: `code` is stable and machine-readable, `message` is for people.
    pub fn error(code: &str, message: &str) -> String {
        json!({"type": "error", "code": code, "message": message}).to_string()
    }

    /// What every participant hears when the server stops (the seed's own words).
    pub fn server_disconnected(clientcount: u64) -> String {
        json!({
            "type": "notification",
            "id": "",
            "nickname": "",
            "message": "Server has disconnected",
            "notice": super::Notice::Shutdown,
            "clientcount": clientcount,
            "ts": super::now_ms(),
        })
        .to_string()
    }
}
