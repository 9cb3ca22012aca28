//! Where a request comes from: the cross-site check ([`SameOrigin`]), the DNS-rebinding check ([`host_guard`])
//! and the client's address for the per-client limits ([`ClientAddr`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::core::Room;
use crate::error::AppError;

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
