//! A session keeps its identity and cursor across techniques: no gap, no duplicate, no leave/join notice.

use crate::common;

use common::*;
use serde_json::Value;

/// A participant moves WS -> SSE -> long poll -> short poll -> WS while another keeps talking; what it
/// receives across all five channels is every event exactly once, in order, and nobody hears it leave or rejoin.
#[tokio::test]
async fn switching_loses_and_repeats_nothing() {
    let server = start().await;
    let talker = join(&server, "poll").await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    let welcome = ws_next(&mut socket).await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let id = welcome["id"].as_str().unwrap().to_owned();
    let welcome_nickname = welcome["nickname"].as_str().unwrap().to_owned();
    let mut seen: Vec<Value> = vec![];
    let mut said = 0;
    let mut say = async |n: usize| {
        for _ in 0..n {
            said += 1;
            assert_eq!(post(&server, &talker.session, &format!("text {said}")).await.0, 202);
        }
    };

    // 1. WebSocket.
    say(3).await;
    while seen.iter().filter(|e| e["type"] == "message").count() < 3 {
        seen.push(ws_next(&mut socket).await);
    }
    let cursor = seen.last().unwrap()["seq"].as_u64().unwrap();
    say(2).await; // published while switching: must arrive on the next channel, not be lost

    // 2. SSE takes over; the WebSocket is told and closed with 4000.
    let mut stream = sse(&server, &format!("/api/sse?session={session}&since={cursor}"), None).await;
    let welcome = stream.data().await;
    assert_eq!((welcome["id"].as_str(), welcome["seq"].as_u64()), (Some(id.as_str()), Some(cursor)));
    let mut old_frames = vec![];
    let close = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut socket)).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => old_frames.push(t.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close, Some(4000), "the old WebSocket closes as replaced");
    assert!(old_frames.iter().any(|f| f.contains("\"replaced\"")), "and is told why: {old_frames:?}");
    while seen.iter().filter(|e| e["type"] == "message").count() < 5 {
        seen.push(stream.data().await);
    }
    say(1).await;
    seen.push(stream.data().await);

    // 3. Long poll takes over; the SSE stream gets `replaced` and ends.
    let cursor = seen.last().unwrap()["seq"].as_u64().unwrap();
    say(2).await;
    let (events, mut cursor) = poll(&server, &format!("/api/longpoll?session={session}&since={cursor}")).await;
    seen.extend(events);
    // The old stream may still have carried those texts before it was replaced; the client has moved on.
    let end = loop {
        let frame = stream.next().await.expect("a last frame");
        if frame.id.is_none() {
            break frame;
        }
    };
    assert_eq!((end.data["type"].as_str(), end.data["code"].as_str()), (Some("error"), Some("replaced")));
    assert!(stream.next().await.is_none(), "the old stream ended");
    while seen.iter().filter(|e| e["type"] == "message").count() < 8 {
        let (events, next) = poll(&server, &format!("/api/longpoll?session={session}&since={cursor}")).await;
        seen.extend(events);
        cursor = next;
    }

    // 4. Short poll.
    say(2).await;
    let (events, cursor) = poll(&server, &format!("/api/poll?session={session}&since={cursor}")).await;
    seen.extend(events);

    // 5. Back to a WebSocket.
    say(1).await;
    let mut socket = ws(&server.ws_url(&format!("/ws?session={session}&since={cursor}"))).await;
    assert_eq!(ws_next(&mut socket).await["type"], "welcome");
    seen.push(ws_next(&mut socket).await);
    ws_quiet(&mut socket).await;

    let messages: Vec<&str> =
        seen.iter().filter(|e| e["type"] == "message").map(|e| e["message"].as_str().unwrap()).collect();
    let expected: Vec<String> = (1..=said).map(|i| format!("text {i}")).collect();
    assert_eq!(messages, expected, "every text exactly once, in order");
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().expect("only room events")).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive seqs: {seqs:?}");
    assert_eq!(seen[0]["message"], format!("{} 来了", welcome_nickname), "its own join, once, at the start");
    assert!(
        seen[1..].iter().all(|e| e["type"] == "message"),
        "no join or leave notice while switching: {:?}",
        seen.iter().filter(|e| e["type"] != "message").collect::<Vec<_>>()
    );
    let (_, presence) = get_json(&server, "/api/presence").await;
    let me = presence["participants"].as_array().unwrap().iter().find(|p| p["id"] == id.as_str()).unwrap().clone();
    assert_eq!(me["transport"], "ws", "presence follows the switch");
    assert_eq!(presence["clientcount"], 2);
}

/// A second WebSocket on the same session replaces the first, which is closed with 4000.
#[tokio::test]
async fn one_live_channel_per_session() {
    let server = start().await;
    let mut first = ws(&server.ws_url("/ws")).await;
    let welcome = ws_next(&mut first).await;
    let session = welcome["session"].as_str().unwrap();
    let seq = welcome["seq"].as_u64().unwrap();
    ws_next(&mut first).await; // own join
    let mut second = ws(&server.ws_url(&format!("/ws?session={session}&since={}", seq + 1))).await;
    assert_eq!(ws_next(&mut second).await["type"], "welcome");
    assert_eq!(ws_next(&mut first).await["code"], "replaced");
    assert_eq!(ws_close_code(&mut first).await.map(u16::from), Some(4000));
    ws_send(&mut second, "still here").await;
    assert_eq!(ws_next(&mut second).await["message"], "still here");
}
