//! The six doors into the room, one file each, plus what they share.
//!
//! | file | technique |
//! |---|---|
//! | [`seed`] | the seed's WebSocket protocol on `/` |
//! | [`ws`] | WebSocket on `/ws`, with sessions and resume |
//! | [`echo`] | `/echo` (`--echo`): a WebSocket echo for conformance suites |
//! | [`sse`] | Server-Sent Events on `/api/sse` |
//! | [`stream`] | HTTP streaming (NDJSON) on `/api/stream` |
//! | [`iframe`] | the forever iframe on `/api/iframe` |
//! | [`streaming`] | the delivery writer the three streaming responses share |
//! | [`long_poll`] | long polling on `/api/longpoll` |
//! | [`short_poll`] | short polling on `/api/poll` |
//! | [`post`] | `POST /api/messages`, the upstream of the five HTTP techniques |
//! | [`sessions`] | join, leave and presence over HTTP |
//! | [`assets`] | the demo page and its files |
//! | [`docs`] | the docs, rendered for the demo's readers |
//! | [`websocket`] | the WebSocket handshake and connection that [`ws`], [`seed`] and [`wire_view`] share |
//! | [`wire_view`] | a session's wire counters, and the live log of what its requests and channel put on the wire |

pub mod assets;
pub mod docs;
pub mod echo;
pub mod iframe;
pub mod long_poll;
pub mod post;
pub mod seed;
pub mod sessions;
pub mod short_poll;
pub mod sse;
pub mod stream;
pub mod streaming;
pub mod websocket;
pub mod wire_view;
pub mod ws;

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use axum::body::Body;
use bytes::Bytes;

use crate::core::{Delivery, Presence, Room, Seq};
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

/// The cross-site check, as an extractor: a handler that takes it refuses (`403 forbidden_origin`) a browser
/// request from another site. Used by WebSocket upgrades and every `POST` and `DELETE`.
#[derive(Debug)]
pub struct SameOrigin;

impl FromRequestParts<Room> for SameOrigin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, room: &Room) -> Result<Self, Self::Rejection> {
        check_origin(&parts.headers, &room.config().allowed_origins)?;
        Ok(SameOrigin)
    }
}

/// The cross-site check for WebSocket upgrades and POSTs. A request without `Origin` is not from a browser page
/// and passes; a browser's `Origin` must name the same host as `Host`, a loopback host, or an `--allow-origin`.
///
/// # Errors
/// [`AppError::ForbiddenOrigin`].
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), AppError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().map_err(|_| AppError::ForbiddenOrigin("(not text)".into()))?;
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    let origin_host = host_of(authority);
    let host = headers.get(header::HOST).and_then(|h: &HeaderValue| h.to_str().ok()).unwrap_or("");
    let same_host = !authority.is_empty() && authority.eq_ignore_ascii_case(host);
    let loopback = matches!(origin_host, "localhost" | "127.0.0.1" | "[::1]");
    if same_host || loopback {
        Ok(())
    } else {
        Err(AppError::ForbiddenOrigin(origin.to_owned()))
    }
}

/// The client a request comes from, as an extractor, for the per-client limits ([`crate::core::clients`]): the
/// peer's IP address, or the `X-Forwarded-For` client when the peer is a `--trust-proxy`
/// ([`crate::core::client_of`]). `None` when the server does not know the peer (a router served without the
/// address of each connection): no per-client limit applies then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl FromRequestParts<Room> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, room: &Room) -> Result<Self, Self::Rejection> {
        Ok(client_addr(parts, room))
    }
}

/// See [`ClientAddr`].
pub(crate) fn client_addr(parts: &Parts, room: &Room) -> ClientAddr {
    use axum::extract::ConnectInfo;
    let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>() else {
        return ClientAddr(None);
    };
    static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    let trusted = &room.config().trusted_proxies;
    let forwarded = parts.headers.get_all(&X_FORWARDED_FOR).iter().map(|v| v.to_str().unwrap_or("?"));
    ClientAddr(Some(crate::core::client_of(peer.ip(), forwarded, trusted)))
}

/// The DNS-rebinding check, for every request (a layer in [`crate::app`]): a browser request whose `Host`
/// names neither a loopback name, an IP address, an `--allow-origin`'s host nor an `--allow-host` is refused
/// with `421 forbidden_host` before any handler runs.
pub async fn host_guard(
    axum::extract::State(room): axum::extract::State<Room>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let config = room.config();
    match check_host(request.uri(), request.headers(), &config.allowed_hosts, &config.allowed_origins) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// See [`host_guard`]. The name is the URI's authority (HTTP/2's `:authority`), else the `Host` header.
///
/// # Errors
/// [`AppError::ForbiddenHost`].
pub fn check_host(
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    allowed_hosts: &[String],
    allowed_origins: &[String],
) -> Result<(), AppError> {
    static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    let browser = headers.contains_key(header::ORIGIN) || headers.contains_key(&SEC_FETCH_SITE);
    if !browser {
        return Ok(());
    }
    let authority = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
    };
    let host = host_of(authority).trim_end_matches('.');
    let lower = host.to_ascii_lowercase();
    let bare = lower.trim_start_matches('[').trim_end_matches(']');
    let allowed = bare.parse::<std::net::IpAddr>().is_ok()
        || lower == "localhost"
        || lower.ends_with(".localhost")
        || allowed_hosts.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(host))
        || allowed_origins.iter().any(|origin| {
            let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
            host_of(authority).eq_ignore_ascii_case(host)
        });
    if allowed {
        Ok(())
    } else {
        Err(AppError::ForbiddenHost(host.to_owned()))
    }
}

/// The host part of `host[:port]` (IPv6 literals keep their brackets).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

/// Most events written together by a stream that is not paced: enough to empty a burst in few writes, few
/// enough that the first of them is not held back long.
const BATCH: usize = 64;

/// Where the pacing ticks of every stream are counted from.
static TICKS: LazyLock<tokio::time::Instant> = LazyLock::new(tokio::time::Instant::now);

/// `--flush-interval-ms` for one stream (a WebSocket or an SSE response) while the server is behind
/// (`--pace-when-busy`), and for long polls ([`Pacer::tick`]): after a write, the stream sleeps for the interval and
/// then writes whatever arrived meanwhile in one go, instead of waking for every event. When nothing arrived it
/// goes back to waiting for the next event, which is written at once: a quiet room pays no delay and no timer.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    /// When the stream may write again, if it wrote less than an interval ago.
    next: Option<tokio::time::Instant>,
}

impl Pacer {
    /// The interval a stream of `room` waits after a write now: `--flush-interval-ms` while the server is behind
    /// (see [`crate::metering::busy::Busy`]), else zero.
    fn interval(room: &Room) -> std::time::Duration {
        if room.metering().busy().paced() {
            room.config().flush_interval()
        } else {
            std::time::Duration::ZERO
        }
    }

    /// Whether the stream is between a write and the end of its interval.
    pub(crate) fn pacing(&self) -> bool {
        self.next.is_some()
    }

    /// Resolves at the end of the interval (at once when not pacing), which ends the pacing.
    pub(crate) async fn ready(&mut self) {
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
            self.next = None;
        }
    }

    /// Notes that a write just went out: when the server is busy, the next may go at the next tick of the
    /// interval. Ticks are on one clock for every stream of the process, so busy streams wake together, and one
    /// worker thread woken once writes many of them, rather than each stream waking a parked thread at its own
    /// moment.
    pub(crate) fn wrote(&mut self, room: &Room) {
        self.next = Self::next_tick(room);
    }

    /// The next tick of the interval while the server is busy; `None` when it is not.
    fn next_tick(room: &Room) -> Option<tokio::time::Instant> {
        let interval = Self::interval(room).as_nanos();
        if interval == 0 {
            return None;
        }
        let now = tokio::time::Instant::now();
        let into_tick = now.duration_since(*TICKS).as_nanos() % interval;
        Some(now + std::time::Duration::from_nanos((interval - into_tick) as u64))
    }

    /// For a long poll about to answer with events (found waiting, or the one it was held for): while the server
    /// is busy, waits for the next tick, so the answer carries everything that arrived until then, as a paced
    /// stream's write does, and a poller gets at most one answer per tick. Returns at once when it is not busy.
    pub(crate) async fn tick(room: &Room) {
        if let Some(next) = Self::next_tick(room) {
            tokio::time::sleep_until(next).await;
        }
    }

    /// Most deliveries one write may carry: everything queued while the server is busy (the stream waited for
    /// them), else [`BATCH`].
    pub(crate) fn batch(room: &Room) -> usize {
        if Self::interval(room).is_zero() {
            BATCH
        } else {
            room.config().send_queue as usize
        }
    }
}

/// Builds a poll response body `{"events":[...],"next":N,"epoch":"E"}` from pre-serialised events without
/// re-encoding them; with `presence` (a poll asked with `presence=1`), `{"events":[...],"next":N,"epoch":"E",
/// "presence":{...}}`. The epoch is the room's (a few hex digits, never escaped).
pub fn poll_body(deliveries: &[Delivery], next: Seq, epoch: &str, presence: Option<&Presence>) -> Vec<u8> {
    let size: usize = deliveries.iter().map(|d| d.json().len() + 1).sum();
    let mut body = Vec::with_capacity(size + 60);
    body.extend_from_slice(b"{\"events\":[");
    for (i, delivery) in deliveries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(delivery.json());
    }
    body.extend_from_slice(b"],\"next\":");
    // itoa rather than `write!`: the formatting machinery costs more than the rest of an empty answer's body.
    body.extend_from_slice(itoa::Buffer::new().format(next).as_bytes());
    body.extend_from_slice(b",\"epoch\":");
    if epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
        body.push(b'"');
        body.extend_from_slice(epoch.as_bytes());
        body.push(b'"');
    } else {
        serde_json::to_writer(&mut body, epoch).expect("a string always serialises");
    }
    if let Some(presence) = presence {
        body.extend_from_slice(b",\"presence\":");
        serde_json::to_writer(&mut body, presence).expect("presence always serialises");
    }
    body.push(b'}');
    body
}

/// Reads a whole request body, refusing more than `limit` bytes.
///
/// # Errors
/// [`AppError::TooLarge`] over the limit; [`AppError::BadRequest`] for a body that cannot be read (a malformed
/// chunked encoding).
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, AppError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        // Only the limit is a 413; a body that could not be read (a malformed chunked encoding, a connection
        // cut mid-body) is a bad request.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(cause) = source {
            if cause.is::<http_body_util::LengthLimitError>() {
                return AppError::TooLarge(limit);
            }
            source = cause.source();
        }
        AppError::BadRequest(format!("the request body could not be read: {error}"))
    })
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
