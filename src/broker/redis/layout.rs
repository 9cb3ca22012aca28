//! Where the room lives in Redis (the table in the module docs of `redis`): the names of its keys, and how a
//! session record and a history entry are written and read back.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use redis::streams::StreamRangeReply;
use redis::Value;

use crate::model::{Backlog, BrokerError, Epoch, RoomEvent, Seq, SessionRecord, Transport};

/// The names of the room's keys.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) seq: String,
    pub(super) epoch: String,
    pub(super) sent: String,
    pub(super) history: String,
    pub(super) channel: String,
    pub(super) guests: String,
    pub(super) leases: String,
    pub(super) joined: String,
    /// `P:session:`, to which a token is appended.
    pub(super) session: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            seq: format!("{prefix}:seq"),
            epoch: format!("{prefix}:epoch"),
            sent: format!("{prefix}:sent"),
            history: format!("{prefix}:history"),
            channel: format!("{prefix}:events"),
            guests: format!("{prefix}:guests"),
            leases: format!("{prefix}:leases"),
            joined: format!("{prefix}:joined"),
            session: format!("{prefix}:session:"),
        }
    }

    pub(super) fn session(&self, token: &str) -> String {
        format!("{}{token}", self.session)
    }
}

/// The hash fields of a session record (the token is in the key).
pub(super) fn fields(record: &SessionRecord) -> Vec<(&'static str, String)> {
    vec![
        ("id", record.id.clone()),
        ("nickname", record.nickname.clone()),
        ("guest", record.guest.to_string()),
        ("transport", record.transport.as_str().to_owned()),
        ("since_ms", record.since_ms.to_string()),
        ("cursor", record.cursor.to_string()),
        ("seed", u8::from(record.seed).to_string()),
    ]
}

/// Rebuilds a record from its hash; `None` for a missing (empty) or damaged hash.
pub(super) fn record(token: &str, mut hash: HashMap<String, String>) -> Option<SessionRecord> {
    let transport = hash.get("transport")?;
    let transport = Transport::ALL.into_iter().find(|t| t.as_str() == transport)?;
    Some(SessionRecord {
        token: token.to_owned(),
        id: hash.remove("id")?,
        nickname: hash.remove("nickname")?,
        guest: hash.get("guest")?.parse().ok()?,
        transport,
        since_ms: hash.get("since_ms")?.parse().ok()?,
        cursor: hash.get("cursor")?.parse().ok()?,
        seed: hash.get("seed")? == "1",
    })
}

/// The sequence number of a history entry id `<seq>-0`.
fn entry_seq(id: &str) -> Option<Seq> {
    id.split_once('-').and_then(|(seq, _)| seq.parse().ok())
}

/// The stream id of the first event after `cursor`.
pub(super) fn first_id(cursor: Seq) -> String {
    format!("{}-0", cursor.saturating_add(1))
}

/// The backlog after `cursor`, from the head, the oldest retained entry and the entries read after the cursor.
pub(super) fn backlog(
    epoch: Epoch,
    cursor: Seq,
    head: Seq,
    oldest: &StreamRangeReply,
    range: &StreamRangeReply,
    max: usize,
) -> Result<Backlog, BrokerError> {
    let oldest = oldest.ids.first().and_then(|entry| entry_seq(&entry.id));
    let events = range.ids.iter().take(max).map(entry_event).collect::<Result<Vec<_>, _>>()?;
    Ok(Backlog::read(epoch, cursor, head, oldest, events))
}

/// A history entry's event.
fn entry_event(entry: &redis::streams::StreamId) -> Result<Arc<RoomEvent>, BrokerError> {
    let damaged = || BrokerError::Unavailable(format!("redis: history entry {} is damaged", entry.id));
    let json = match entry.map.get("e") {
        Some(Value::BulkString(bytes)) => Bytes::copy_from_slice(bytes),
        Some(Value::SimpleString(text)) => Bytes::copy_from_slice(text.as_bytes()),
        _ => return Err(damaged()),
    };
    RoomEvent::from_json(json).map(Arc::new).map_err(|_| damaged())
}
