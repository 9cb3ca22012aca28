//! The demo page and its files, embedded in the binary so it runs from any directory and works offline.
//!
//! Served as a browser caches them best: compressed (`br` or `gzip`, whichever the browser prefers of what it
//! accepts, by `tower-http`'s compression layer), with a validator (`ETag`, from the hash rust-embed computes at
//! build time) and `Cache-Control: no-cache`, so a revisit asks `If-None-Match` and gets a bodiless `304` while
//! the file is unchanged, and a new build is seen at once. Only these files are compressed: an SSE stream, a poll
//! answer or a WebSocket upgrade never passes through here, so the wire counts of the techniques are what they
//! send, and a stream is never held in a compressor's buffer. HTML pages also get the Content Security Policy
//! ([`CONTENT_SECURITY_POLICY`]).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;
use tower::{service_fn, Layer, ServiceExt};
use tower_http::compression::{CompressionLayer, CompressionLevel};

/// Everything under `static/`.
#[derive(Embed)]
#[folder = "static/"]
struct Assets;

/// The policy of the HTML pages: everything from this origin only (scripts, styles, images, the page's `fetch`,
/// `EventSource` and WebSocket connections), no inline script, style or event handler, no plugin, no `<base>`,
/// and no framing by any site (clickjacking). `connect-src` names `ws:` and `wss:` because a browser that
/// predates CSP level 3 does not count a WebSocket to its own host as `'self'`; `img-src` allows `data:` for the
/// pages' empty icon (`<link rel="icon" href="data:,">`, which spares the browser a `/favicon.ico` request).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Compression effort: brotli's default (11) takes some tens of milliseconds on a page's script, for a file a
/// few per cent smaller than at 5; gzip at 5 is within a per cent or two of its default 6. The files are
/// compressed on every request that is not a `304`, so the cheap end is the right one.
const QUALITY: CompressionLevel = CompressionLevel::Precise(5);

/// Serves `static/<path>` (`/` is `index.html`) for any path not claimed by the API, compressed when the
/// browser accepts it; a `404` with a JSON body for a file that does not exist.
pub async fn fallback(request: Request) -> Response {
    let compressed = CompressionLayer::new().br(true).gzip(true).quality(QUALITY).layer(service_fn(respond));
    match compressed.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(infallible) => match infallible {},
    }
}

/// The uncompressed answer for one request.
async fn respond(request: Request) -> Result<Response, Infallible> {
    let path = request.uri().path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    Ok(serve_path(path, request.method(), request.headers()))
}

/// One embedded file: `200` with its bytes, or `304` when `If-None-Match` names its `ETag` (for `GET` and
/// `HEAD`); `404` when there is none.
fn serve_path(path: &str, method: &Method, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        let body = serde_json::json!({"error": format!("no such page: /{path}"), "code": "not_found"});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    // Weak: the compression layer sends other bytes under the same tag, which a strong validator forbids
    // (RFC 9110, 8.8.1); `If-None-Match` compares weakly anyway, so a weak tag still gets its `304`.
    let etag = etag(&file.metadata.sha256_hash());
    let mime = file.metadata.mimetype();
    let mut response = if matches!(*method, Method::GET | Method::HEAD) && matches(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(Body::from(file.data));
        let content_type = HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream"));
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex is a valid header value"));
    if mime.starts_with("text/html") {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    }
    response
}

/// `W/"<first 16 bytes of the SHA-256, in hex>"`: 128 bits tell the files of one build apart.
fn etag(hash: &[u8; 32]) -> String {
    let mut tag = String::with_capacity(38);
    tag.push_str("W/\"");
    for byte in &hash[..16] {
        tag.push_str(&format!("{byte:02x}"));
    }
    tag.push('"');
    tag
}

/// Whether `If-None-Match` names `etag` (or is `*`), compared weakly as RFC 9110 asks of `If-None-Match`.
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `If-None-Match` matches a list, a weak or strong form of the tag, and `*`; never another tag.
    #[test]
    fn if_none_match_compares_weakly() {
        let etag = "W/\"abc\"";
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            matches(&headers, etag)
        };
        assert!(with("W/\"abc\""));
        assert!(with("\"abc\""));
        assert!(with("\"x\", W/\"abc\""));
        assert!(with("*"));
        assert!(!with("\"abcd\""));
        assert!(!with("W/\"ab\""));
        assert!(!matches(&HeaderMap::new(), etag));
    }
}
