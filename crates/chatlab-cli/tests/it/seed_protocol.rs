//! The seed's wire protocol on `/`, exactly as its page and server speak it.

use crate::common;

use common::*;
use serde_json::Value;

/// Checks an event carries the seed's fields with these values.
fn assert_seed_event(event: &Value, kind: &str, nickname: &str, message: &str, clientcount: u64) {
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["nickname"], nickname, "{event}");
    assert_eq!(event["message"], message, "{event}");
    assert_eq!(event["clientcount"], clientcount, "{event}");
    let id = event["id"].as_str().expect("an id");
    assert_eq!(id.len(), 36, "the id is a UUID: {id}");
}

/// Joins, chat, a rename and a leave over `/` produce the seed's events, texts and guest names.
#[tokio::test]
async fn seed_page_conversation() {
    let server = start().await;
    let mut first = ws(&server.ws_url("/")).await;
    let joined = ws_next(&mut first).await;
    assert_seed_event(&joined, "notification", "游客1", "游客1 来了", 1);
    let first_id = joined["id"].as_str().unwrap().to_owned();

    let mut second = ws(&server.ws_url("/")).await;
    for socket in [&mut first, &mut second] {
        assert_seed_event(&ws_next(socket).await, "notification", "游客2", "游客2 来了", 2);
    }

    ws_send(&mut first, "hello").await;
    for socket in [&mut first, &mut second] {
        let event = ws_next(socket).await;
        assert_seed_event(&event, "message", "游客1", "hello", 2);
        assert_eq!(event["id"], first_id.as_str());
    }

    ws_send(&mut first, "/nick 小明").await;
    for socket in [&mut first, &mut second] {
        assert_seed_event(&ws_next(socket).await, "nick_update", "小明", "用户 游客1 改名为: 小明", 2);
    }

    ws_send(&mut first, "after rename").await;
    assert_seed_event(&ws_next(&mut second).await, "message", "小明", "after rename", 2);

    first.close(None).await.unwrap();
    assert_seed_event(&ws_next(&mut second).await, "notification", "小明", "小明 走了", 1);
}

/// Events on `/` are a superset of the seed's: with a strictly increasing `seq` and a `ts`, and no welcome frame.
#[tokio::test]
async fn seed_events_carry_seq_and_ts_without_a_welcome() {
    let server = start().await;
    let mut socket = ws(&server.ws_url("/")).await;
    let joined = ws_next(&mut socket).await;
    assert_eq!(joined["type"], "notification", "the first frame on / is the join notice, not a welcome");
    ws_send(&mut socket, "one").await;
    ws_send(&mut socket, "two").await;
    let one = ws_next(&mut socket).await;
    let two = ws_next(&mut socket).await;
    assert_eq!(one["seq"].as_u64().unwrap() + 1, two["seq"].as_u64().unwrap());
    assert_eq!(joined["seq"].as_u64().unwrap() + 1, one["seq"].as_u64().unwrap());
    assert!(two["ts"].as_u64().unwrap() >= one["ts"].as_u64().unwrap());
    assert!(one["ts"].as_u64().unwrap() > 1_600_000_000_000, "ts is in ms since the epoch");
}

/// An empty text on `/` gets an `error` event and is not broadcast.
#[tokio::test]
async fn seed_empty_text_is_refused() {
    let server = start().await;
    let mut sender = ws(&server.ws_url("/")).await;
    ws_next(&mut sender).await;
    let mut other = ws(&server.ws_url("/")).await;
    ws_next(&mut other).await;
    ws_next(&mut sender).await;
    ws_send(&mut sender, "   ").await;
    let error = ws_next(&mut sender).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "empty_text");
    ws_quiet(&mut other).await;
}

/// A plain GET on `/` serves the demo page.
#[tokio::test]
async fn plain_get_serves_the_page() {
    let server = start().await;
    let response = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

/// The docs are served as pages with GitHub's heading anchors, so the demo can link a figure to its explanation;
/// a name that is not a doc (or tries to leave docs/) is a JSON 404.
#[tokio::test]
async fn docs_are_served_with_anchors() {
    let server = start().await;
    let client = http();
    let page = client.get(server.url("/docs/techniques")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<h2 id="1-short-interval-polling">"#), "no anchor for short polling");
    assert!(html.contains(r#"<h2 id="4-websocket">"#), "no anchor for WebSocket");
    let with_suffix = client.get(server.url("/docs/protocol.md")).send().await.unwrap();
    assert_eq!(with_suffix.status(), 200);
    for bad in ["/docs/nosuch", "/docs/..%2FCargo.toml", "/docs/screenshots/nosuch.png"] {
        let answer = client.get(server.url(bad)).send().await.unwrap();
        assert_eq!(answer.status(), 404, "{bad}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "not_found", "{bad}");
    }
}
