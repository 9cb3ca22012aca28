//! `deploy/nginx.conf`, run for real: nginx in front of two chatlab processes sharing a room through Redis.
//!
//! The config is the shipped file with its listen port, upstream addresses and file paths rewritten for this
//! machine; everything stays on the loopback. Skipped with a message when `nginx` or `redis-server` is missing,
//! unless `CHATLAB_REQUIRE_NGINX` is set (then it fails).

use crate::redis_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use redis_support::{free_port, Chatlab, RedisServer};

const WAIT: Duration = Duration::from_secs(10);

/// The `nginx` binary: `$NGINX`, else `nginx` on `PATH` or in `/usr/sbin`.
fn nginx_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// nginx in the foreground, as one process, with its own prefix directory; killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
    prefix: PathBuf,
}

impl Nginx {
    /// Renders `deploy/nginx.conf` for `upstreams` and starts it on a free port.
    fn start(binary: &Path, upstreams: &[std::net::SocketAddr]) -> Nginx {
        let prefix = std::env::temp_dir().join(format!("chatlab-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&prefix);
        for dir in ["", "tmp"] {
            std::fs::create_dir_all(prefix.join(dir)).unwrap();
        }
        // Workers may run as an unprivileged user: let them use the temp directory.
        let _ = Command::new("chmod").args(["-R", "a+rwx"]).arg(&prefix).status();
        let shipped =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx.conf")).unwrap();
        let port = free_port();
        let conf = render(&shipped, port, upstreams, &prefix);
        std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .arg("-g")
            // One process, no workers: nothing is left behind when the test kills it.
            .arg(format!("daemon off; master_process off; pid {};", prefix.join("nginx.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, port, prefix };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(nginx.prefix.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "nginx listens in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

/// The shipped config with this machine's port, upstreams and paths: only those lines change.
fn render(shipped: &str, port: u16, upstreams: &[std::net::SocketAddr], prefix: &Path) -> String {
    let mut out = String::new();
    let mut servers_written = false;
    for line in shipped.lines() {
        let trimmed = line.trim();
        if trimmed == "listen 8180;" {
            out.push_str(&format!("        listen 127.0.0.1:{port};\n"));
        } else if trimmed.starts_with("server 127.0.0.1:818") {
            if !servers_written {
                for upstream in upstreams {
                    out.push_str(&format!("        server {upstream};\n"));
                }
                servers_written = true;
            }
        } else if trimmed == "worker_processes auto;" {
            out.push_str("worker_processes 1;\n");
        } else if trimmed == "http {" {
            out.push_str(line);
            out.push('\n');
            let tmp = prefix.join("tmp");
            out.push_str(&format!("    access_log {};\n", prefix.join("access.log").display()));
            for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                out.push_str(&format!("    {kind}_temp_path {};\n", tmp.join(kind).display()));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(servers_written, "the shipped config lists its upstreams as `server 127.0.0.1:818N;`");
    out
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn join(nginx: &Nginx, transport: &str) -> (String, u64) {
    let response =
        http().post(nginx.url("/api/sessions")).json(&json!({ "transport": transport })).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["session"].as_str().unwrap().to_owned(), body["seq"].as_u64().unwrap())
}

async fn post(nginx: &Nginx, session: &str, text: &str) -> u16 {
    let response = http()
        .post(nginx.url(&format!("/api/messages?session={session}")))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

async fn poll_requests(process: &Chatlab) -> u64 {
    let stats: Value = http().get(process.url("/api/stats")).send().await.unwrap().json().await.unwrap();
    stats["transports"]["poll"]["requests"].as_u64().unwrap()
}

/// Through the shipped nginx config: the page, WebSocket upgrades on `/ws` and on `/` (seed protocol) with the
/// Origin check still working, SSE, NDJSON and iframe events arriving while the stream is open, a long poll held
/// to its timeout, requests spread over both processes with no stickiness, and service going on when one process
/// is killed.
#[tokio::test]
async fn the_shipped_nginx_config_fronts_a_cluster() {
    let Some(nginx_binary) = nginx_binary() else {
        if std::env::var_os("CHATLAB_REQUIRE_NGINX").is_some() {
            panic!("nginx is not installed, and CHATLAB_REQUIRE_NGINX is set");
        }
        eprintln!("SKIPPED the_shipped_nginx_config_fronts_a_cluster: nginx is not installed");
        return;
    };
    let Some(redis) = RedisServer::start_or_skip("the_shipped_nginx_config_fronts_a_cluster") else { return };
    let binary = Path::new(env!("CARGO_BIN_EXE_chatlab"));
    let url = redis.url();
    // The site's public name is allowed (`--allow-host`): a browser page under any other name is refused 421.
    // nginx is the trusted proxy: its `X-Forwarded-For` names each client.
    let args = [
        "--broker",
        url.as_str(),
        "--rate-limit",
        "0",
        "--allow-host",
        "chat.example",
        "--trust-proxy",
        "127.0.0.1",
        "--max-sessions-per-client",
        &PER_CLIENT.to_string(),
    ];
    let mut first = Chatlab::spawn(binary, &args);
    let second = Chatlab::spawn(binary, &args);
    let nginx = Nginx::start(&nginx_binary, &[first.addr, second.addr]);

    // The demo page.
    let page = http().get(nginx.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"), "the page");

    // WebSocket on /ws, from a page served under another host name: nginx passes Host, so the Origin matches.
    let mut request = nginx.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("host", HeaderValue::from_static("chat.example"));
    request.headers_mut().insert("origin", HeaderValue::from_static("http://chat.example"));
    let (mut socket, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.unwrap().expect("ws upgrade");
    let welcome = next_text(&mut socket).await;
    assert_eq!(welcome["type"], "welcome");
    socket.send(Message::Text("through nginx".into())).await.unwrap();
    let mut echoed = false;
    while !echoed {
        echoed = next_text(&mut socket).await["message"] == "through nginx";
    }
    // A cross-site page is still refused.
    let mut request = nginx.ws_url("/ws").into_client_request().unwrap();
    request.headers_mut().insert("host", HeaderValue::from_static("chat.example"));
    request.headers_mut().insert("origin", HeaderValue::from_static("http://evil.example"));
    let refused = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.unwrap();
    assert!(refused.is_err(), "a cross-site upgrade is refused");

    // The seed protocol upgrades on / itself.
    let (mut seed, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(nginx.ws_url("/")))
        .await
        .unwrap()
        .expect("seed upgrade on /");
    let notice = next_text(&mut seed).await;
    assert!(notice["message"].as_str().unwrap().ends_with("来了"), "{notice}");

    // SSE, HTTP streaming and the forever iframe: an event arrives while the stream stays open (nothing buffers it).
    let mut streams = vec![];
    for technique in ["sse", "stream", "iframe"] {
        let (session, seq) = join(&nginx, technique).await;
        let client = reqwest::Client::builder().connect_timeout(WAIT).build().unwrap();
        let url = nginx.url(&format!("/api/{technique}?session={session}&since={seq}"));
        let mut stream = client.get(url).send().await.unwrap();
        assert_eq!(stream.status(), 200);
        let text = format!("{technique} through nginx");
        let mut received = String::new();
        let mut posted = false;
        while !received.contains(&text) {
            let chunk = tokio::time::timeout(Duration::from_secs(3), stream.chunk())
                .await
                .expect("a chunk in time: the stream is not buffered")
                .unwrap()
                .expect("the stream stays open");
            received.push_str(&String::from_utf8_lossy(&chunk));
            if !posted && received.contains("welcome") {
                assert_eq!(post(&nginx, &session, &text).await, 202);
                posted = true;
            }
        }
        streams.push(stream);
    }

    // Long poll: held until its own timeout (nginx does not cut it), then answered at once when a text comes.
    let (poller, _) = join(&nginx, "longpoll").await;
    let head = serde_json::from_str::<Value>(
        &http().get(nginx.url(&format!("/api/poll?session={poller}"))).send().await.unwrap().text().await.unwrap(),
    )
    .unwrap()["next"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    let held: Value = http()
        .get(nginx.url(&format!("/api/longpoll?session={poller}&since={head}&timeout=3")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(held["events"].as_array().unwrap().is_empty(), "{held}");
    assert!(started.elapsed() >= Duration::from_millis(2500), "held for its timeout: {:?}", started.elapsed());
    let waiting = tokio::spawn({
        let url = nginx.url(&format!("/api/longpoll?session={poller}&since={head}&timeout=20"));
        async move { http().get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_eq!(post(&nginx, &poller, "long poll through nginx").await, 202);
    let answered = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(answered["events"][0]["message"], "long poll through nginx");
    assert!(started.elapsed() < Duration::from_secs(2), "answered at once: {:?}", started.elapsed());

    // No stickiness: with no long-lived connection left to weigh `least_conn`, short polls of one session land on
    // both processes.
    drop((socket, seed, streams));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (polling, _) = join(&nginx, "poll").await;
    let before = (poll_requests(&first).await, poll_requests(&second).await);
    for _ in 0..10 {
        let response = http().get(nginx.url(&format!("/api/poll?session={polling}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let after = (poll_requests(&first).await, poll_requests(&second).await);
    assert!(after.0 > before.0 && after.1 > before.1, "both processes served: {before:?} -> {after:?}");

    // One process dies: nginx sends everything to the other, sessions and all.
    first.kill();
    for i in 0..6 {
        assert_eq!(post(&nginx, &polling, &format!("after the kill {i}")).await, 202, "POST {i}");
    }
    let response = http().get(nginx.url(&format!("/api/poll?session={polling}&since=0"))).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    let texts: Vec<&str> = body["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(texts.contains(&"after the kill 5"), "{texts:?}");

    // Per-client limits behind the proxy (one process left, so one count): every request reaches chatlab from
    // nginx (127.0.0.1), and the client is the address nginx appended to `X-Forwarded-For`, whatever the client
    // wrote there itself. 127.0.0.2 gets its own `PER_CLIENT` seats, forged headers or not, then is refused;
    // 127.0.0.3 is another client.
    let from = |source: [u8; 4]| {
        reqwest::Client::builder().timeout(WAIT).local_address(std::net::IpAddr::from(source)).build().unwrap()
    };
    let join_from = |source, forged: String| {
        let request = from(source).post(nginx.url("/api/sessions")).header("x-forwarded-for", forged);
        async move { request.json(&json!({"transport": "poll"})).send().await.unwrap() }
    };
    for i in 0..PER_CLIENT {
        assert_eq!(join_from([127, 0, 0, 2], format!("203.0.113.{i}")).await.status(), 201, "join {i}");
    }
    let refused = join_from([127, 0, 0, 2], "203.0.113.200".into()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "too_many_sessions");
    assert_eq!(join_from([127, 0, 0, 3], "203.0.113.1".into()).await.status(), 201, "another client");
}

/// `--max-sessions-per-client` of the processes behind nginx: above the joins the test makes from 127.0.0.1.
const PER_CLIENT: usize = 8;

async fn next_text<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}
