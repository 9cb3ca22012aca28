//! The demo's files: compressed, cacheable with a validator, and every response with its security headers; the
//! techniques' own answers never compressed.

use crate::common;

use std::io::Read;

use common::*;
use reqwest::header::HeaderMap;

/// The file as it is in `static/`.
fn on_disk(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../../static/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// `GET path` with these request headers: status, response headers and the body as it came (not decoded).
async fn fetch(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Vec<u8>) {
    let mut request = http().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(WAIT, request.send()).await.expect("answered in time").unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// Without `Accept-Encoding` a file comes as it is, with its exact `Content-Length`; with `gzip` or `br` it comes
/// compressed in that encoding (br preferred when both are accepted), smaller, decoding to the same bytes.
#[tokio::test]
async fn files_are_compressed_when_the_browser_accepts_it() {
    let server = start().await;
    let original = on_disk("js/chat.js");
    let (status, headers, body) = fetch(&server, "/js/chat.js", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, original);
    assert_eq!(header(&headers, "content-length"), Some(original.len().to_string().as_str()), "the length survives");
    assert!(headers.get("content-encoding").is_none());
    assert!(header(&headers, "content-type").unwrap().starts_with("text/javascript"), "{headers:?}");

    let (_, headers, gzipped) = fetch(&server, "/js/chat.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    assert!(header(&headers, "vary").unwrap().to_ascii_lowercase().contains("accept-encoding"), "{headers:?}");
    assert!(gzipped.len() * 2 < original.len(), "{} bytes gzipped from {}", gzipped.len(), original.len());
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..]).read_to_end(&mut decoded).unwrap();
    assert_eq!(decoded, original);

    for accept in ["br", "gzip, deflate, br, zstd"] {
        let (_, headers, brotli) = fetch(&server, "/js/chat.js", &[("accept-encoding", accept)]).await;
        assert_eq!(header(&headers, "content-encoding"), Some("br"), "accept {accept}");
        assert!(brotli.len() < gzipped.len(), "br {} < gzip {}", brotli.len(), gzipped.len());
        let mut decoded = Vec::new();
        brotli_decompressor::Decompressor::new(&brotli[..], 4096).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, original);
    }
    let (_, headers, body) = fetch(&server, "/js/chat.js", &[("accept-encoding", "identity")]).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, original);
}

/// Every file has a (weak) `ETag` and `Cache-Control: no-cache`; a revisit naming the tag gets a bodiless `304`
/// with the same tag, compressed or not; another tag, or a changed file, gets the file.
#[tokio::test]
async fn a_revisit_gets_304_not_modified() {
    let server = start().await;
    let (_, headers, _) = fetch(&server, "/css/site.css", &[("accept-encoding", "br")]).await;
    let etag = header(&headers, "etag").expect("an etag").to_owned();
    assert!(etag.starts_with("W/\"") && etag.len() == 36, "{etag}");
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    for accept in ["br", "gzip", "identity"] {
        let (status, again, body) =
            fetch(&server, "/css/site.css", &[("if-none-match", &etag), ("accept-encoding", accept)]).await;
        assert_eq!(status, 304, "accept {accept}");
        assert!(body.is_empty());
        assert_eq!(header(&again, "etag"), Some(etag.as_str()));
        assert_eq!(header(&again, "cache-control"), Some("no-cache"));
        assert!(again.get("content-encoding").is_none());
    }
    let strong = etag.trim_start_matches("W/");
    assert_eq!(fetch(&server, "/css/site.css", &[("if-none-match", strong)]).await.0, 304, "compared weakly");
    let (status, _, body) = fetch(&server, "/css/site.css", &[("if-none-match", "W/\"0000\"")]).await;
    assert_eq!((status, body), (200, on_disk("css/site.css")));
    let (_, other, _) = fetch(&server, "/js/chat.js", &[]).await;
    assert_ne!(header(&other, "etag"), Some(etag.as_str()), "each file has its own tag");
    let (status, _, _) = fetch(&server, "/js/chat.js", &[("if-none-match", &etag)]).await;
    assert_eq!(status, 200, "another file's tag is no match");
}

/// The HTML pages (`/`, `/index.html`, `/compare.html`) carry the Content Security Policy, which forbids framing;
/// every response, pages, files, JSON and errors, says `nosniff` and `no-referrer`.
#[tokio::test]
async fn security_headers_on_every_response() {
    let server = start().await;
    for page in ["/", "/index.html", "/compare.html"] {
        let (status, headers, body) = fetch(&server, page, &[("accept-encoding", "gzip")]).await;
        assert_eq!(status, 200, "{page}");
        let csp = header(&headers, "content-security-policy").expect("a CSP on a page");
        for directive in ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{page}: {csp}");
        }
        assert!(csp.contains("connect-src 'self' ws: wss:"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(header(&headers, "content-encoding"), Some("gzip"), "{page}");
        assert!(!body.is_empty());
    }
    let (_, root, root_body) = fetch(&server, "/", &[]).await;
    let (_, _, index_body) = fetch(&server, "/index.html", &[]).await;
    assert_eq!(root_body, index_body, "/ is index.html");
    assert_eq!(header(&root, "etag").map(str::len), Some(36));

    let poller = join(&server, "poll").await;
    let paths = [
        "/".to_owned(),
        "/js/chat.js".into(),
        "/api/stats".into(),
        "/api/presence".into(),
        "/healthz".into(),
        "/metrics".into(),
        "/no/such/file".into(),
        format!("/api/poll?session={}", poller.session),
        "/api/poll?session=nobody".into(),
    ];
    for path in &paths {
        let (_, headers, _) = fetch(&server, path, &[]).await;
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"), "{path}");
        if !path.starts_with("/index") && *path != "/" && !path.ends_with(".html") {
            assert!(headers.get("content-security-policy").is_none(), "{path}: only pages have a CSP");
        }
    }
    let (status, headers, _) = fetch(&server, "/js/chat.js", &[]).await;
    assert_eq!(status, 200);
    assert!(headers.get("content-security-policy").is_none());
    let (_, missing, body) = fetch(&server, "/no/such/file", &[]).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "not_found");
    assert_eq!(header(&missing, "x-content-type-options"), Some("nosniff"));

    let response = http().post(server.url("/api/sessions")).json(&serde_json::json!({"transport": "sse"})).send();
    let headers = response.await.unwrap().headers().clone();
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"), "a 201 too");
    let (_, upgrade) = raw_ws_upgrade_head_text(&server).await;
    assert!(upgrade.to_ascii_lowercase().contains("x-content-type-options: nosniff"), "{upgrade}");
}

/// Polls, long polls, SSE streams and the API are never compressed, even when the client accepts it: their wire
/// bytes are what the techniques cost, and a poll answer keeps its `Content-Length`.
#[tokio::test]
async fn technique_answers_are_never_compressed() {
    let server = start().await;
    let poller = join(&server, "poll").await;
    for _ in 0..20 {
        post(&server, &poller.session, "a line long enough to be worth compressing, again and again").await;
    }
    let accept = [("accept-encoding", "gzip, br")];
    let (status, headers, body) =
        fetch(&server, &format!("/api/poll?session={}&since=0", poller.session), &accept).await;
    assert_eq!(status, 200);
    assert!(body.len() > 1000);
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert_eq!(header(&headers, "content-length"), Some(body.len().to_string().as_str()));
    let path = format!("/api/longpoll?session={}&since=0&timeout=1", poller.session);
    let (_, headers, body) = fetch(&server, &path, &accept).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(header(&headers, "content-length"), Some(body.len().to_string().as_str()));
    let (_, headers, _) = fetch(&server, "/api/stats", &accept).await;
    assert!(headers.get("content-encoding").is_none());

    let sse_session = join(&server, "sse").await;
    let response = http()
        .get(server.url(&format!("/api/sse?session={}", sse_session.session)))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none(), "{:?}", response.headers());
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
}

/// The head of a `/ws` upgrade's `101` answer, read by hand.
async fn raw_ws_upgrade_head_text(server: &Server) -> (tokio::net::TcpStream, String) {
    let (stream, head, _) = raw_ws_upgrade_head(server).await;
    (stream, head)
}
