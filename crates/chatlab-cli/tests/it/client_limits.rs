//! Per-client limits over real sockets: one client (one address) can neither fill the room with joins nor send
//! faster than its budget by opening fresh sessions; `X-Forwarded-For` counts only from a trusted proxy; and
//! `GET /api/presence` pages through a big room.
//!
//! Other clients are other loopback addresses (127.0.0.2, 127.0.0.3, ...): Linux routes all of 127.0.0.0/8 to
//! the loopback interface, so a socket bound to one of them reaches the server from there.

use crate::common;
use crate::redis_support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::*;

const ONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const TWO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const THREE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// `POST /api/sessions` from `source` with extra headers: the status and JSON body.
async fn join_from(server: &Server, source: IpAddr, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = http_from(source).post(server.url("/api/sessions")).json(&json!({"transport": "poll"}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/messages` from `source`: the status, the `Retry-After` header and the JSON body.
async fn post_from(server: &Server, source: IpAddr, session: &str, text: &str) -> (u16, Option<String>, Value) {
    let response = post_with(&http_from(source), server, session, text).await;
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

async fn stat(server: &Server, name: &str) -> u64 {
    get_json(server, "/api/stats").await.1["other"][name].as_u64().unwrap_or_else(|| panic!("other.{name}"))
}

async fn metrics(server: &Server) -> String {
    http().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// One address holding `--max-sessions-per-client` sessions, however it joined (`POST /api/sessions`, `/ws`, the
/// seed protocol on `/`), is refused `429 too_many_sessions` on every door, while another address still joins;
/// a leave gives the seat back, and the refusals are counted in `/api/stats` and `/metrics`.
#[tokio::test]
async fn one_client_cannot_fill_the_room() {
    let server = start_with(chatlab::config::Config { max_sessions_per_client: 4, ..config() }).await;
    let (status, first) = join_from(&server, ONE, &[]).await;
    assert_eq!(status, 201);
    assert_eq!(join_from(&server, ONE, &[]).await.0, 201);
    let mut ws = ws_from(ONE, server.addr, &server.ws_url("/ws")).await.expect("a /ws join");
    assert_eq!(ws_next(&mut ws).await["type"], "welcome");
    let mut seed = ws_from(ONE, server.addr, &server.ws_url("/")).await.expect("a seed join");
    assert!(ws_next(&mut seed).await["message"].as_str().unwrap().ends_with("来了"));

    let (status, body) = join_from(&server, ONE, &[]).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("too_many_sessions")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("4 sessions"), "{body}");
    for path in ["/ws", "/"] {
        let (status, body) = ws_from(ONE, server.addr, &server.ws_url(path)).await.expect_err("refused");
        assert_eq!((status, body["code"].as_str()), (429, Some("too_many_sessions")), "{path}: {body}");
    }
    // Another address is another client.
    assert_eq!(join_from(&server, TWO, &[]).await.0, 201);
    assert_eq!(get_json(&server, "/api/presence").await.1["clientcount"], 5, "refused joins joined nobody");

    // A leave gives its seat back, and so does a seed connection that closes.
    let token = first["session"].as_str().unwrap();
    let left = http_from(ONE).delete(server.url(&format!("/api/sessions/{token}"))).send().await.unwrap();
    assert_eq!(left.status(), 204);
    assert_eq!(join_from(&server, ONE, &[]).await.0, 201);
    assert_eq!(join_from(&server, ONE, &[]).await.0, 429);
    assert_eq!(stat(&server, "client_sessions_refused").await, 4);
    assert!(metrics(&server).await.contains("chatlab_client_sessions_refused_total 4"), "/metrics");
    seed.send(Message::Close(None)).await.unwrap();
    drop(seed);
    let rejoined = async {
        loop {
            if join_from(&server, ONE, &[]).await.0 == 201 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, rejoined).await.expect("a closed seed connection frees its seat");
    ws.close(None).await.unwrap();
}

/// The table of clients is bounded (`--max-clients`): when every tracked client holds a session, a join from a new
/// address is refused `503 room_full`; once one of them has no session left, it is forgotten and the newcomer
/// takes its place.
#[tokio::test]
async fn the_client_table_is_bounded() {
    let server = start_with(chatlab::config::Config { max_clients: 2, ..config() }).await;
    let mut ones = Vec::new();
    for source in [ONE, TWO, ONE] {
        let (status, body) = join_from(&server, source, &[]).await;
        assert_eq!(status, 201, "a tracked client joins again");
        if source == ONE {
            ones.push(body["session"].as_str().unwrap().to_owned());
        }
    }
    let (status, body) = join_from(&server, THREE, &[]).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("room_full")), "{body}");
    assert_eq!(stat(&server, "clients_tracked").await, 2);
    let token = ones.pop().unwrap();
    assert_eq!(http().delete(server.url(&format!("/api/sessions/{token}"))).send().await.unwrap().status(), 204);
    assert_eq!(join_from(&server, THREE, &[]).await.0, 503, "127.0.0.1 still holds a session");
    let token = ones.pop().unwrap();
    assert_eq!(http().delete(server.url(&format!("/api/sessions/{token}"))).send().await.unwrap().status(), 204);
    assert_eq!(join_from(&server, THREE, &[]).await.0, 201, "127.0.0.1 was forgotten");
    assert_eq!(stat(&server, "clients_tracked").await, 2);
    assert_eq!(stat(&server, "client_sessions_refused").await, 2);
}

/// A session whose lease runs out gives its client's seat back.
#[tokio::test]
async fn an_expired_session_frees_its_seat() {
    let server = start_with(chatlab::config::Config { max_sessions_per_client: 1, session_lease: 1, ..config() }).await;
    assert_eq!(join_from(&server, ONE, &[]).await.0, 201);
    assert_eq!(join_from(&server, ONE, &[]).await.0, 429);
    let freed = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if join_from(&server, ONE, &[]).await.0 == 201 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(6), freed).await.expect("the seat is free once the lease ran out");
}

/// In a cluster, a session that leaves through another process gives its seat back on the process that counted
/// it (which hears of it when its reaper asks the broker which seated sessions still exist).
#[tokio::test]
async fn a_seat_freed_through_another_process_is_given_back() {
    let Some(redis) = redis_support::RedisServer::start_or_skip("a_seat_freed_through_another_process_is_given_back")
    else {
        return;
    };
    let config =
        chatlab::config::Config { broker: redis.url(), max_sessions_per_client: 1, session_lease: 1, ..config() };
    let (a, b) = (start_with(config.clone()).await, start_with(config).await);
    let (status, joined) = join_from(&a, ONE, &[]).await;
    assert_eq!(status, 201);
    assert_eq!(join_from(&a, ONE, &[]).await.0, 429);
    // Left through B: A is not told, and finds out from the broker.
    let token = joined["session"].as_str().unwrap().to_owned();
    let left = http().delete(b.url(&format!("/api/sessions/{token}"))).send().await.unwrap();
    assert_eq!(left.status(), 204);
    let freed = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if join_from(&a, ONE, &[]).await.0 == 201 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), freed).await.expect("A gives the seat back");
}

/// Texts from one address across 50 fresh sessions are held to the client's rate (`--client-rate-limit`,
/// `--client-rate-burst`), each refusal a `429 client_rate_limited` with `Retry-After`; another address has a
/// budget of its own, and a WebSocket text over the budget gets an `error` event and stays open.
#[tokio::test]
async fn fresh_sessions_do_not_buy_a_flooder_more() {
    let (rate, burst) = (20.0, 30.0);
    let config =
        chatlab::config::Config { rate_limit: 20.0, client_rate_limit: rate, client_rate_burst: burst, ..config() };
    let server = start_with(config).await;
    let mut sessions = Vec::new();
    for _ in 0..50 {
        let (status, body) = join_from(&server, ONE, &[]).await;
        assert_eq!(status, 201);
        sessions.push(body["session"].as_str().unwrap().to_owned());
    }
    let started = Instant::now();
    let (mut accepted, mut refused) = (0u64, 0u64);
    for round in 0..3 {
        for session in &sessions {
            let (status, retry, body) = post_from(&server, ONE, session, &format!("flood {round}")).await;
            match status {
                202 => accepted += 1,
                429 => {
                    refused += 1;
                    assert_eq!(body["code"], "client_rate_limited", "{body}");
                    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1, "Retry-After in whole seconds");
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(accepted + refused, 150);
    // Each session sent 3 texts, well within its own rate: only the client's budget refused anything.
    let allowed = burst + rate * elapsed;
    assert!(accepted as f64 <= allowed + 1.0, "{accepted} accepted in {elapsed:.2} s, at most {allowed:.0} allowed");
    assert!(accepted >= burst as u64, "the burst passes: {accepted}");
    assert!(refused > 0, "150 texts faster than {rate}/s are not all accepted ({elapsed:.2} s)");
    assert_eq!(stat(&server, "client_texts_refused").await, refused);

    // Another address has its own budget.
    let (_, other) = join_from(&server, TWO, &[]).await;
    let (status, _, body) = post_from(&server, TWO, other["session"].as_str().unwrap(), "hello").await;
    assert_eq!(status, 202, "{body}");

    // A WebSocket of the flooding address: once its budget is gone, a text gets an `error` event, and the
    // connection stays open.
    let session = &sessions[0];
    let mut ws = ws_from(ONE, server.addr, &server.ws_url(&format!("/ws?session={session}"))).await.unwrap();
    assert_eq!(ws_next(&mut ws).await["type"], "welcome");
    while post_from(&server, ONE, &sessions[1], "drain").await.0 == 202 {}
    ws_send(&mut ws, "over budget").await;
    let error = loop {
        let frame = ws_next(&mut ws).await;
        if frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(error["code"], "client_rate_limited", "{error}");
    ws_send(&mut ws, "still open?").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws_send(&mut ws, "after a pause").await;
    let echoed = loop {
        let frame = ws_next(&mut ws).await;
        if frame["message"] == "after a pause" {
            break frame;
        }
    };
    assert_eq!(echoed["type"], "message");
}

/// `X-Forwarded-For` names the client only when the peer is a `--trust-proxy`: from any other address the header
/// is ignored (the peer is the client), and from a trusted proxy its right-most untrusted entry is the client
/// (what a client wrote to the left of it is not believed).
#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let config = chatlab::config::Config { max_sessions_per_client: 1, trusted_proxies: vec![TWO], ..config() };
    let server = start_with(config).await;
    let xff = |value| [("x-forwarded-for", value)];

    // An untrusted peer cannot pose as many clients.
    assert_eq!(join_from(&server, ONE, &xff("198.51.100.1")).await.0, 201);
    let (status, body) = join_from(&server, ONE, &xff("198.51.100.2")).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("too_many_sessions")), "the header is ignored");

    // Behind the trusted proxy, each forwarded address is a client of its own.
    assert_eq!(join_from(&server, TWO, &xff("198.51.100.1")).await.0, 201, "not the untrusted peer's seat");
    assert_eq!(join_from(&server, TWO, &xff("198.51.100.1")).await.0, 429, "the same forwarded client");
    assert_eq!(join_from(&server, TWO, &xff("198.51.100.2")).await.0, 201, "another forwarded client");
    assert_eq!(
        join_from(&server, TWO, &xff("203.0.113.9, 198.51.100.2")).await.0,
        429,
        "a forged entry left of the proxy's is not the client"
    );
    assert_eq!(join_from(&server, TWO, &xff("not-an-address")).await.0, 201, "unreadable: the proxy itself");
    assert_eq!(join_from(&server, TWO, &[]).await.0, 429, "no header: the proxy itself, whose seat is taken");

    // A third, untrusted address with a header that names a forwarded client: ignored, its own seat.
    assert_eq!(join_from(&server, THREE, &xff("198.51.100.3")).await.0, 201);
    assert_eq!(join_from(&server, THREE, &xff("198.51.100.3")).await.0, 429);
}

/// `GET /api/presence` pages through a room of hundreds: following `next` while `more` lists everyone online
/// exactly once, each page at most `limit` (default and most 200), and a participant that leaves between pages
/// shifts no one else.
#[tokio::test]
async fn presence_pages_through_the_room() {
    const N: usize = 450;
    let server = start_with(chatlab::config::Config { coalesce_above: 10, ..config() }).await;
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..N {
        let joined = join(&server, "poll").await;
        ids.push(joined.id);
        tokens.push(joined.session);
    }

    let (status, whole) = get_json(&server, "/api/presence").await;
    assert_eq!(status, 200);
    assert_eq!(whole["clientcount"], N as u64);
    assert_eq!(whole["participants"].as_array().unwrap().len(), 200, "the default page");
    assert_eq!(whole["more"], true);
    let (_, capped) = get_json(&server, "/api/presence?limit=100000").await;
    assert_eq!(capped["participants"].as_array().unwrap().len(), 200, "a larger limit gets the most");

    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    let mut left = None;
    loop {
        let (status, page) = get_json(&server, &format!("/api/presence?limit=64&after={after}")).await;
        assert_eq!(status, 200, "{page}");
        let listed = page["participants"].as_array().unwrap();
        assert!(listed.len() <= 64, "a page is bounded");
        seen.extend(listed.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        pages += 1;
        if pages == 2 {
            // One not listed yet leaves: it is not listed later, and nobody else is skipped or repeated.
            let token = &tokens[300];
            let response = http().delete(server.url(&format!("/api/sessions/{token}"))).send().await.unwrap();
            assert_eq!(response.status(), 204);
            left = Some(ids[300].clone());
        }
        if page["more"] == false {
            break;
        }
        let next = page["next"].as_u64().unwrap();
        assert!(next > after, "next moves on");
        after = next;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no participant listed twice");
    let left = left.unwrap();
    let expected: Vec<String> = ids.iter().filter(|id| **id != left).cloned().collect();
    assert_eq!(seen, expected, "everyone who stayed, in join order, none omitted");
    assert_eq!(pages, expected.len().div_ceil(64), "no empty page at the end");

    for bad in ["limit=0", "limit=x", "after=-1", "after=1&after=2"] {
        let (status, body) = get_json(&server, &format!("/api/presence?{bad}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{bad}: {body}");
    }
}
