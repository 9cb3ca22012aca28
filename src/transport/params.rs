//! What a transport reads from a request's query string and headers, read once ([`Params`]), and the check of a
//! client's key for one send ([`send_key`]).

use std::borrow::Cow;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};

use crate::core::Seq;
use crate::error::AppError;

/// What the transports take from a request: `session=` (or the `X-Session` header), the cursor (the
/// `Last-Event-ID` header, else `since=`) and the epoch it is from (`epoch=`), `timeout=`, `nickname=` (a `/ws`
/// join), `presence=` (a poll that asks who is online) and `ack=` (acknowledged `/ws` sends), read once from the
/// query string and the headers; other query parameters are ignored.
/// One of them given twice is refused (`400`): which one the client meant cannot be known, and taking either
/// would read from the wrong place without a word.
#[derive(Debug, Default)]
pub struct Params {
    session: Option<String>,
    /// Read as a number at once; the text is kept only when it is not one, for the error.
    since: Option<Result<Seq, String>>,
    timeout: Option<String>,
    nickname: Option<String>,
    presence: Option<String>,
    epoch: Option<String>,
    ack: Option<String>,
}

/// The two headers [`Params`] reads.
static X_SESSION: HeaderName = HeaderName::from_static("x-session");
static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut params = Params::default();
        for (name, value) in parts.uri.query().unwrap_or("").split('&').map(query_pair) {
            let given_before = match &*name {
                "session" => params.session.replace(value.into_owned()).is_some(),
                "since" => params.since.replace(cursor(&value)).is_some(),
                "timeout" => params.timeout.replace(value.into_owned()).is_some(),
                "nickname" => params.nickname.replace(value.into_owned()).is_some(),
                "presence" => params.presence.replace(value.into_owned()).is_some(),
                "epoch" => params.epoch.replace(value.into_owned()).is_some(),
                "ack" => params.ack.replace(value.into_owned()).is_some(),
                _ => false,
            };
            if given_before {
                return Err(AppError::BadRequest(format!("{name}= is given twice: give it once")));
            }
        }
        // Both headers in one pass over the few a request has: a lookup by name would hash the name first.
        let (mut session, mut last_event_id) = (None, None);
        for (name, value) in &parts.headers {
            let slot = match name {
                name if *name == X_SESSION => &mut session,
                name if *name == LAST_EVENT_ID => &mut last_event_id,
                _ => continue,
            };
            // The first of repeated headers, as a lookup would give.
            slot.get_or_insert(value);
        }
        fn text(value: Option<&HeaderValue>) -> Option<&str> {
            value.and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())
        }
        // An empty `session=` counts as none.
        params.session = params.session.filter(|s| !s.is_empty()).or_else(|| text(session).map(str::to_owned));
        // The header wins: `EventSource` reconnects to the same URL (with its original, older `since=`) and
        // sends the newest id it saw.
        if let Some(id) = text(last_event_id) {
            params.since = Some(cursor(id));
        }
        Ok(params)
    }
}

/// A cursor as a client gave it: a sequence number, or the text that is not one.
fn cursor(raw: &str) -> Result<Seq, String> {
    raw.trim().parse().map_err(|_| raw.to_owned())
}

/// One `name=value` pair of a query string, decoded (`%XX`, `+`) only when it has something to decode: the
/// usual pairs (`session=` a token, `since=` a number) are borrowed as they are, which makes the commonest
/// request, an empty poll, markedly cheaper than a general query parse.
fn query_pair(raw: &str) -> (Cow<'_, str>, Cow<'_, str>) {
    if memchr::memchr2(b'%', b'+', raw.as_bytes()).is_some() {
        return form_urlencoded::parse(raw.as_bytes()).next().unwrap_or_default();
    }
    let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
    (Cow::Borrowed(name), Cow::Borrowed(value))
}

impl Params {
    /// `session=`, falling back to the `X-Session` header (never empty).
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// `session=` (or `X-Session`), required.
    ///
    /// # Errors
    /// [`AppError::BadRequest`] when it is missing.
    pub fn require_session(&self) -> Result<&str, AppError> {
        self.session().ok_or_else(|| AppError::BadRequest("missing session= (join with POST /api/sessions)".into()))
    }

    /// The cursor: the `Last-Event-ID` header if present, else `since=`.
    ///
    /// # Errors
    /// [`AppError::BadRequest`] when it is not a non-negative integer.
    pub fn since(&self) -> Result<Option<Seq>, AppError> {
        match &self.since {
            None => Ok(None),
            Some(Ok(seq)) => Ok(Some(*seq)),
            Some(Err(raw)) => Err(AppError::BadRequest(format!("since must be a sequence number, got {raw:?}"))),
        }
    }

    /// `timeout=` as given.
    pub fn timeout(&self) -> Option<&str> {
        self.timeout.as_deref()
    }

    /// `nickname=` as given (checked by the join, like the `nickname` of `POST /api/sessions`).
    pub fn nickname(&self) -> Option<&str> {
        self.nickname.as_deref()
    }

    /// Whether `presence=1` asks for who is online with the answer (`presence=0` or none: not).
    ///
    /// # Errors
    /// [`AppError::BadRequest`] for any other value.
    pub fn presence(&self) -> Result<bool, AppError> {
        flag("presence", self.presence.as_deref())
    }

    /// Whether `ack=1` asks for acknowledged sends on `/ws` (`ack=0` or none: plain text frames).
    ///
    /// # Errors
    /// [`AppError::BadRequest`] for any other value.
    pub fn ack(&self) -> Result<bool, AppError> {
        flag("ack", self.ack.as_deref())
    }

    /// `epoch=`: the epoch of the room the cursor (`since=`) is from (never empty).
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref().filter(|epoch| !epoch.is_empty())
    }
}

/// Checks a client's key for one send (a `/ws?ack=1` frame's `ref`, a POST's `Idempotency-Key`): 1 to `max`
/// bytes of printable ASCII (space to `~`).
///
/// # Errors
/// [`AppError::BadRequest`], naming `what`.
pub fn send_key<'a>(what: &str, raw: &'a str, max: u64) -> Result<&'a str, AppError> {
    if raw.is_empty() || raw.len() as u64 > max {
        return Err(AppError::BadRequest(format!("{what} must be 1 to {max} bytes, got {}", raw.len())));
    }
    if !raw.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(AppError::BadRequest(format!("{what} must be printable ASCII (space to ~)")));
    }
    Ok(raw)
}

/// A `1`/`0` query flag; absent is `0`.
fn flag(name: &str, value: Option<&str>) -> Result<bool, AppError> {
    match value {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(AppError::BadRequest(format!("{name} must be 1 or 0, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::query_pair;

    /// The borrowed fast path and the general decoding agree on every shape of pair.
    #[test]
    fn query_pairs_decode_like_a_form() {
        for raw in
            ["session=abc_DEF-12", "since=42", "since=", "since", "=5", "", "session=a%20b", "name=a+b", "a%3Db=c=d"]
        {
            let general = form_urlencoded::parse(raw.as_bytes()).next().unwrap_or_default();
            assert_eq!(query_pair(raw), general, "pair {raw:?}");
        }
        assert_eq!(query_pair("session=a%20b").1, "a b");
        assert!(matches!(query_pair("session=abc").1, std::borrow::Cow::Borrowed("abc")));
    }

    mod properties {
        use axum::extract::FromRequestParts;
        use axum::http::Request;
        use proptest::prelude::*;

        use super::super::{query_pair, Params};
        use crate::error::AppError;

        /// `Params` read from a request for `/?{query}` with `headers`; `None` when the text is not a URI at all
        /// (the HTTP layer refuses those before any handler runs).
        fn params(query: &str, headers: &[(&str, &str)]) -> Option<Result<Params, AppError>> {
            let mut request = Request::builder().uri(format!("/x?{query}"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let (mut parts, ()) = request.body(()).ok()?.into_parts();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            Some(runtime.block_on(Params::from_request_parts(&mut parts, &())))
        }

        /// Query-string text: the characters a query is made of, percent signs and escapes (valid or not),
        /// separators, and the names `Params` reads.
        fn query_text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                3 => "[a-zA-Z0-9_.~-]{0,6}",
                2 => prop::sample::select(vec!["&", "=", "+", "%", "%2", "%20", "%3D", "%26", "%ZZ", "%e6%b8%b8",
                    "%ff", "%C3", "session", "since", "timeout", "nickname", "presence", "?", "/", ";", "!"])
                    .prop_map(str::to_owned),
                1 => "[!-~]{0,4}",
            ];
            prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
        }

        /// The names `Params` reads, each of which may be given at most once.
        const READ: [&str; 5] = ["session", "since", "timeout", "nickname", "presence"];

        fn encode(text: &str) -> String {
            form_urlencoded::byte_serialize(text.as_bytes()).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any query string is read without a panic: parameters, or a `400 bad_request`.
            #[test]
            fn any_query_is_read_or_refused(query in query_text()) {
                if let Some(Err(error)) = params(&query, &[]) {
                    prop_assert_eq!(error.code(), "bad_request");
                }
            }

            /// The fast path of a pair agrees with a general form decoding of it, whatever the pair.
            #[test]
            fn a_pair_decodes_like_a_form(pair in query_text()) {
                prop_assume!(!pair.contains('&'));
                let general = form_urlencoded::parse(pair.as_bytes()).next().unwrap_or_default();
                prop_assert_eq!(query_pair(&pair), general);
            }

            /// Any text, percent-encoded as a form does it, reads back as itself: session, nickname, timeout.
            #[test]
            fn encoded_values_decode_to_the_original(
                session in "\\PC{1,24}", nickname in any::<String>(), timeout in "[ -~]{0,8}", noise in "[a-z]{1,6}"
            ) {
                prop_assume!(!READ.contains(&noise.as_str()));
                let query = format!("{noise}=1&session={}&nickname={}&timeout={}", encode(&session), encode(&nickname),
                    encode(&timeout));
                let read = params(&query, &[]).expect("an encoded query is a URI").expect("read");
                prop_assert_eq!(read.session(), Some(session.as_str()));
                prop_assert_eq!(read.nickname(), Some(nickname.as_str()));
                prop_assert_eq!(read.timeout(), Some(timeout.as_str()));
            }

            /// A read name given twice, wherever the two are among other pairs, is refused; an unread name given
            /// any number of times is ignored.
            #[test]
            fn a_read_name_given_twice_is_refused(
                name in prop::sample::select(READ.to_vec()), before in 0usize..3, between in 0usize..3,
                (a, b) in ("[a-z0-9]{0,5}", "[a-z0-9]{0,5}")
            ) {
                let other = |n: usize, tag: &str| (0..n).map(|i| format!("x{tag}{i}=1&x{tag}{i}=2&")).collect::<String>();
                let query = format!("{}{name}={a}&{}{name}={b}", other(before, "a"), other(between, "b"));
                match params(&query, &[]).expect("a URI") {
                    Err(error) => prop_assert!(error.to_string().contains("given twice"), "{}", error),
                    Ok(_) => prop_assert!(false, "{} accepted", query),
                }
                let ignored = format!("{}session=s", other(before + between + 1, "c"));
                let read = params(&ignored, &[]).expect("a URI").expect("read");
                prop_assert_eq!(read.session(), Some("s"));
            }

            /// `since=` is any non-negative number; anything else is refused, and `Last-Event-ID` wins over it.
            #[test]
            fn since_is_a_number_and_last_event_id_wins(number in any::<u64>(), junk in "[a-z+-]{1,5}", header in any::<u64>()) {
                let read = params(&format!("since={number}"), &[]).unwrap().unwrap();
                prop_assert_eq!(read.since().ok(), Some(Some(number)));
                let bad = params(&format!("since={junk}"), &[]).unwrap().unwrap();
                prop_assert!(bad.since().is_err());
                let header = header.to_string();
                let both = params(&format!("since={number}"), &[("last-event-id", header.as_str())]).unwrap().unwrap();
                prop_assert_eq!(both.since().ok(), Some(Some(header.parse().unwrap())));
            }
        }
    }
}
