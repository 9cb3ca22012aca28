//! Sessions: a participant's identity, which outlives any one connection.
//!
//! A session is created by a join (a `/ws` or seed WebSocket without `session=`, or `POST /api/sessions`) and
//! identified by a secret `token` (the `session` of the wire); its public `id` and nickname appear in events.
//! It ends with an explicit leave, when a seed connection closes, or when its lease runs out: a session with no
//! live channel and no recent poll is announced as gone after `--session-lease` seconds.

use serde::{Deserialize, Serialize};

use crate::core::event::Seq;
use crate::error::AppError;

/// The six techniques, as named on the wire (`/api/presence`, `/api/stats`, `POST /api/sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket, on `/ws` or the seed protocol on `/`.
    Ws,
    /// Server-Sent Events plus `POST /api/messages`.
    Sse,
    /// Long polling plus `POST /api/messages`.
    #[serde(rename = "longpoll")]
    LongPoll,
    /// Short (interval) polling plus `POST /api/messages`.
    Poll,
    /// HTTP streaming: one chunked NDJSON response plus `POST /api/messages`.
    Stream,
    /// The forever iframe: one chunked HTML response of `<script>` chunks plus `POST /api/messages`.
    Iframe,
}

impl Transport {
    /// Every technique, in the order tables show them.
    pub const ALL: [Transport; 6] =
        [Transport::Ws, Transport::Sse, Transport::Stream, Transport::Iframe, Transport::LongPoll, Transport::Poll];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
            Transport::Poll => "poll",
            Transport::Stream => "stream",
            Transport::Iframe => "iframe",
        }
    }
}

/// What the broker stores about a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The secret that lets a client act as this participant (the wire's `session`).
    pub token: String,
    /// The public participant id (a UUID), as in events.
    pub id: String,
    /// The current nickname.
    pub nickname: String,
    /// The guest number given at join (the `N` of `游客N`).
    pub guest: u64,
    /// The technique the participant uses now.
    pub transport: Transport,
    /// When the participant joined, ms since the epoch.
    pub since_ms: u64,
    /// The last sequence number delivered when its last channel ended: where a resume without `since=` starts.
    pub cursor: Seq,
    /// A seed-protocol connection on `/`: it leaves as soon as it closes.
    pub seed: bool,
}

/// Most participants a [`Presence`] lists: enough for any list a page shows, and what bounds the cost of a
/// welcome in a big room (reading 200 records, whatever the number online).
pub const PRESENCE_MAX: usize = 200;

/// Who is online, as a page first learns it (the `presence` of a welcome, of a join's `201`, of a poll asked
/// with `presence=1`); it then keeps its list from join, leave, nick_update and message events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// How many participants are online (all of them, listed or not).
    pub clientcount: u64,
    /// The oldest participants, in join order, at most [`PRESENCE_MAX`].
    pub participants: Vec<Participant>,
    /// Whether some participants were left out of `participants`.
    pub more: bool,
}

/// One participant as others see it: never its session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The public id, as in events.
    pub id: String,
    /// The current nickname.
    pub nickname: String,
    /// The technique it uses now.
    pub transport: Transport,
    /// When it joined, ms since the epoch.
    pub since: u64,
}

impl From<&SessionRecord> for Participant {
    fn from(record: &SessionRecord) -> Self {
        Participant {
            id: record.id.clone(),
            nickname: record.nickname.clone(),
            transport: record.transport,
            since: record.since_ms,
        }
    }
}

/// Checks and trims a requested nickname.
///
/// # Errors
/// [`AppError::BadNickname`] when it is empty after trimming, longer than `max_chars` characters, or holds a
/// control character or an invisible one (see `invisible`).
pub fn clean_nickname(raw: &str, max_chars: usize) -> Result<String, AppError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AppError::BadNickname("a nickname cannot be empty".into()));
    }
    if name.chars().count() > max_chars {
        return Err(AppError::BadNickname(format!("a nickname has at most {max_chars} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::BadNickname("a nickname cannot hold control characters".into()));
    }
    if let Some(c) = name.chars().find(|&c| invisible(c)) {
        return Err(AppError::BadNickname(format!(
            "a nickname cannot hold invisible or direction-changing characters (U+{:04X})",
            c as u32
        )));
    }
    Ok(name.to_owned())
}

/// The number of a guest name `游客N` (`N` decimal digits), which only the guest given it may use.
pub fn guest_number(name: &str) -> Option<&str> {
    name.strip_prefix("游客").filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Characters that print nothing or reorder what follows: Unicode's format characters (general category `Cf`:
/// zero-width spaces and joiners, the bidi embeddings, overrides and isolates, the byte-order mark, tags) and
/// the blank fillers that are letters by category. Two nicknames that differ only by these look the same, and a
/// bidi override turns the rest of a line around.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x206F | 0x2800 | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB
        | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x08E2 | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{clean_nickname, invisible};

    /// Nickname-ish text: mostly letters and spaces, with the characters the rules are about (controls, zero-width
    /// and bidi characters, fillers, surrogates' neighbours, astral tags) mixed in, and any character at all.
    fn raw_name() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            ' ',
            '\t',
            '\n',
            '\u{0}',
            '\u{7f}',
            '\u{85}',
            '\u{a0}',
            '\u{ad}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{3000}',
            '\u{3164}',
            '\u{feff}',
            '\u{fe0f}',
            '\u{e0041}',
            '游',
            '客',
            '7',
            'é',
            'ß',
            '\u{1f600}',
        ]);
        let piece = prop_oneof![4 => prop::char::range('a', 'z'), 3 => special, 1 => any::<char>()];
        prop::collection::vec(piece, 0..48).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever is asked for, cleaning never panics, and what it accepts is the trimmed request, not empty, at
        /// most `max` characters, with no control, invisible or direction-changing character; cleaning it again
        /// gives it back unchanged.
        #[test]
        fn a_clean_nickname_is_trimmed_bounded_visible_and_stable(raw in raw_name(), max in 0usize..40) {
            match clean_nickname(&raw, max) {
                Ok(name) => {
                    prop_assert_eq!(name.as_str(), raw.trim());
                    prop_assert!(!name.is_empty());
                    prop_assert!(name.chars().count() <= max);
                    prop_assert!(!name.chars().any(|c| c.is_control() || invisible(c)), "{:?}", name);
                    prop_assert_eq!(clean_nickname(&name, max).ok(), Some(name.clone()), "idempotent");
                }
                Err(error) => prop_assert_eq!(error.code(), "bad_nickname"),
            }
        }

        /// A name made only of visible characters within the bound is accepted as it is (trimmed).
        #[test]
        fn a_visible_name_within_the_bound_is_kept(name in "[a-zA-Z0-9游客é ]{1,32}") {
            prop_assume!(!name.trim().is_empty());
            prop_assert_eq!(clean_nickname(&format!("  {name} "), 32).ok(), Some(name.trim().to_owned()));
        }
    }
}
