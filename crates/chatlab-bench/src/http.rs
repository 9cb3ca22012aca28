//! An HTTP client connection for the bench (hyper's low-level client over a [`CountingStream`](super::probe::CountingStream)): one
//! TCP connection, one request at a time, exactly as a browser tab's connection would carry them: HTTP/1.1, or
//! HTTP/2 inside TLS with `--http2` (HPACK then shrinks the headers a connection repeats).

use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::probe::{self, Probe};

/// Request headers a desktop Chrome sends with a `fetch` to the same origin (cookies aside): what a real page
/// adds to every poll and POST. `--headers browser` sends them; `minimal` sends only `Host` (and
/// `Content-Type` on POSTs).
const BROWSER_HEADERS: [(&str, &str); 11] = [
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    ),
    ("accept", "*/*"),
    ("accept-language", "en-US,en;q=0.9,zh-CN;q=0.8,zh;q=0.7"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("referer", "http://127.0.0.1:8180/"),
    ("sec-ch-ua", "\"Not/A)Brand\";v=\"8\", \"Chromium\";v=\"126\", \"Google Chrome\";v=\"126\""),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("sec-fetch-dest", "empty"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-site", "same-origin"),
];

/// A connection's request sender, by HTTP version.
enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One client connection to a server.
pub(crate) struct Http {
    sender: Sender,
    authority: String,
    probe: Arc<Probe>,
    browser_headers: bool,
}

impl Http {
    /// Opens a connection to `authority` (`host:port`) for a technique's client; its bytes count into `probe`.
    pub(crate) async fn connect(authority: &str, probe: Arc<Probe>, browser_headers: bool) -> anyhow::Result<Http> {
        let (stream, h2) = probe::connect_http(authority, probe.clone())
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        Http::over(stream, h2, authority, probe, browser_headers).await
    }

    /// Opens an HTTP/1.1 connection to `authority` for the bench's own requests (`/healthz`, `/api/stats`):
    /// with `--http2` it never opens an HTTP/2 connection, whose own frames would count in a phase's figures.
    pub(crate) async fn connect_control(authority: &str, https: Option<Arc<probe::Https>>) -> anyhow::Result<Http> {
        let probe = Probe::with_delay(std::time::Duration::ZERO, https);
        let stream =
            probe::connect(authority, probe.clone()).await.with_context(|| format!("connecting to {authority}"))?;
        Http::over(stream, false, authority, probe, false).await
    }

    async fn over(
        stream: probe::CountingStream,
        h2: bool,
        authority: &str,
        probe: Arc<Probe>,
        browser_headers: bool,
    ) -> anyhow::Result<Http> {
        let sender = if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Sender::Http2(sender)
        } else {
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Sender::Http1(sender)
        };
        Ok(Http { sender, authority: authority.to_owned(), probe, browser_headers })
    }

    /// Sends a request; the response body is left to the caller (for streams).
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut request = match self.sender {
            // HTTP/2 names the host in the `:authority` pseudo-header, from the URI.
            Sender::Http2(_) => Request::builder().method(method).uri(format!("https://{}{path}", self.authority)),
            Sender::Http1(_) => Request::builder().method(method).uri(path).header(HOST, &self.authority),
        };
        if self.browser_headers {
            for (name, value) in BROWSER_HEADERS {
                request = request.header(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        self.probe.request();
        Ok(match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.context("the connection closed")?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                sender.ready().await.context("the connection closed")?;
                sender.send_request(request).await?
            }
        })
    }

    /// Sends a request and reads its whole response.
    pub(crate) async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// `POST /api/sessions` for `transport`: returns the session token and the join cursor.
    pub(crate) async fn join(&mut self, transport: &str) -> anyhow::Result<(String, u64)> {
        let body = Bytes::from(format!("{{\"transport\":\"{transport}\"}}"));
        let (status, body) = self.call(Method::POST, "/api/sessions", Some(("application/json", body))).await?;
        if status != StatusCode::CREATED {
            bail!("join refused: {status} {}", String::from_utf8_lossy(&body));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        let session = json["session"].as_str().context("no session in the join answer")?.to_owned();
        Ok((session, json["seq"].as_u64().unwrap_or(0)))
    }

    /// `POST /api/messages`.
    pub(crate) async fn post_text(&mut self, session: &str, text: &str) -> anyhow::Result<()> {
        let path = format!("/api/messages?session={session}");
        let (status, body) =
            self.call(Method::POST, &path, Some(("text/plain;charset=UTF-8", Bytes::from(text.to_owned())))).await?;
        if status != StatusCode::ACCEPTED {
            bail!("text refused: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// `DELETE /api/sessions/{session}`: leave now, so the next phase does not hear this one leave later.
    pub(crate) async fn leave(&mut self, session: &str) -> anyhow::Result<()> {
        self.call(Method::DELETE, &format!("/api/sessions/{session}"), None).await?;
        Ok(())
    }
}

/// Counts a poll body `{"events":[...],"next":N,"epoch":"E"}` into `probe` (its deliveries, or one empty poll) and returns
/// its `next` cursor. The events are not parsed: the bench shares the CPU with the server it measures.
pub(crate) fn count_poll(probe: &Probe, body: &[u8]) -> Option<u64> {
    if body.starts_with(b"{\"events\":[]") {
        probe.empty_polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    probe.observe(body);
    let key = b"\"next\":";
    let at = body.windows(key.len()).rposition(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}
