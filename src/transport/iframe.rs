//! The forever iframe: `GET /api/iframe?session=&since=&epoch=` is one long chunked `text/html` document that a
//! hidden `<iframe>` of the page loads; each event arrives as `<script nonce=N>parent.chatlab(EVENT)</script>`,
//! which calls the parent page as soon as the browser has parsed it, first the `welcome`.
//!
//! The document starts with `--iframe-padding` bytes of an HTML comment: old browsers ran nothing of a document
//! until its first kilobyte or so had arrived (docs/techniques.md measures what today's need). Its scripts run
//! under a policy of their own: only scripts carrying this response's random nonce, nothing else at all, and
//! only inside a page of this origin. An event's JSON has every `<` written `\u003c`, so a message holding
//! `</script>` or `<!--` cannot end the script or change how the parser reads it. A newline every
//! `--keepalive` seconds keeps proxies from cutting an idle document. Delivery, pacing and the end of the
//! stream are the shared [`streaming`] writer's.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::streaming::{self, Framing};
use super::Params;
use crate::core::{Room, Seq, Transport};
use crate::error::AppError;
use crate::metering::wire::Streaming;

/// The function of the parent page each script calls with one event.
pub const CALLBACK: &str = "parent.chatlab";

/// Opens the document for a session made by `POST /api/sessions` (`404` if unknown; `503` if
/// `--max-connections` channels are open). Any older channel of the session ends.
pub async fn handler(State(room): State<Room>, params: Params) -> Result<Response, AppError> {
    let framing = Script::new();
    let policy = policy(&framing.nonce);
    let body = streaming::open(&room, &params, &prelude(room.config().iframe_padding as usize), framing).await?;
    // A base64url nonce is always a valid header value; were it not, the fallback runs no script at all.
    let policy = HeaderValue::try_from(policy).unwrap_or(HeaderValue::from_static("default-src 'none'"));
    Ok((
        Extension(Streaming::Script),
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::CONTENT_SECURITY_POLICY, policy),
            // Ask reverse proxies (nginx) not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
        ],
        body,
    )
        .into_response())
}

/// The document's policy: scripts with this nonce and nothing else (no other script, style, image, frame or
/// connection), framed only by a page of this origin.
fn policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    )
}

/// The document's start: the doctype, the charset again (for a copy saved without its headers), and `padding`
/// bytes in all as an HTML comment of spaces (none for 0).
fn prelude(padding: usize) -> Vec<u8> {
    let mut out = b"<!doctype html><meta charset=\"utf-8\"><title>chatlab</title>\n".to_vec();
    if padding > 0 {
        const OPEN: &[u8] = b"<!--";
        const CLOSE: &[u8] = b"-->\n";
        let spaces = padding.saturating_sub(OPEN.len() + CLOSE.len());
        out.extend_from_slice(OPEN);
        out.resize(out.len() + spaces, b' ');
        out.extend_from_slice(CLOSE);
    }
    out
}

/// The script framing of one response: its nonce, and the opening tag that carries it.
struct Script {
    nonce: String,
    open: Vec<u8>,
}

impl Script {
    fn new() -> Self {
        let nonce = nonce();
        let open = format!("<script nonce=\"{nonce}\">{CALLBACK}(").into_bytes();
        Script { nonce, open }
    }
}

impl Framing for Script {
    const TRANSPORT: Transport = Transport::Iframe;

    fn event(&self, out: &mut Vec<u8>, _seq: Option<Seq>, json: &[u8]) {
        out.extend_from_slice(&self.open);
        escape_into(out, json);
        out.extend_from_slice(b")</script>\n");
    }

    fn keep_alive(&self) -> &'static [u8] {
        b"\n"
    }

    fn overhead(&self) -> usize {
        self.open.len() + 11
    }
}

/// Appends `json` with every `<` as `\u003c`. In JSON text a `<` can only be inside a string, where the escape
/// means the same character; without a `<`, the script's text holds neither `</script` nor `<!--`, the two
/// sequences that change how an HTML parser reads a script (HTML, 13.2.5.4: script data states). U+2028 and
/// U+2029, valid in a JSON string but a syntax error in a JavaScript string before ES2019 (the browsers the
/// padding is for), are escaped too.
pub fn escape_into(out: &mut Vec<u8>, json: &[u8]) {
    let mut rest = json;
    while let Some(at) = memchr::memchr2(b'<', 0xE2, rest) {
        out.extend_from_slice(&rest[..at]);
        match rest[at..] {
            [b'<', ..] => {
                out.extend_from_slice(b"\\u003c");
                rest = &rest[at + 1..];
            }
            [0xE2, 0x80, last @ (0xA8 | 0xA9), ..] => {
                out.extend_from_slice(if last == 0xA8 { b"\\u2028" } else { b"\\u2029" });
                rest = &rest[at + 3..];
            }
            _ => {
                out.push(0xE2);
                rest = &rest[at + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
}

/// A fresh nonce: 128 random bits, base64url without padding, 22 characters. A v4 UUID has 122 random bits
/// and 6 fixed ones; a second UUID turned by 64 bits has its fixed bits where the first has random ones, so the
/// two XORed are random in every bit.
fn nonce() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let random = || u128::from_be_bytes(uuid::Uuid::new_v4().into_bytes());
    let mut bits = random() ^ random().rotate_left(64);
    (0..22)
        .map(|_| {
            let c = ALPHABET[(bits & 63) as usize] as char;
            bits >>= 6;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile text keeps its meaning as JSON and cannot end the script; the line and paragraph separators are
    /// escaped, other characters (including their UTF-8 neighbours) kept as they are.
    #[test]
    fn escaped_json_holds_no_angle_bracket_and_reads_back() {
        let text = "</script><script>alert(1)</script><!-- x --> <\u{2028}\u{2029}> 游客 \u{2027}\u{202A}";
        let json = serde_json::json!({"type": "message", "message": text}).to_string();
        let mut out = Vec::new();
        escape_into(&mut out, json.as_bytes());
        assert!(!out.contains(&b'<'));
        let written = std::str::from_utf8(&out).unwrap();
        assert!(!written.contains(['\u{2028}', '\u{2029}']) && written.contains("\\u2028\\u2029"), "{written}");
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back["message"], text);
    }

    /// The padding is exactly as long as asked, and absent for 0.
    #[test]
    fn padding_is_as_long_as_asked() {
        let bare = prelude(0).len();
        assert_eq!(prelude(1024).len(), bare + 1024);
        let nonces: std::collections::HashSet<String> = (0..100).map(|_| nonce()).collect();
        assert_eq!(nonces.len(), 100);
        assert!(nonces
            .iter()
            .all(|n| n.len() == 22 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')));
    }
}
