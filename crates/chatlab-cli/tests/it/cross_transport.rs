//! One room, four doors: participants on every technique see the same events in the same order.

use crate::common;

use common::*;
use serde_json::Value;

/// A WebSocket, an SSE, a long-poll and a short-poll participant each send a text; all four see every event
/// from the first join on, with the same seqs, in the same order, with no hole.
#[tokio::test]
async fn four_techniques_one_conversation() {
    let server = start().await;

    let mut socket = ws(&server.ws_url("/ws")).await;
    let welcome = ws_next(&mut socket).await;
    assert_eq!(welcome["type"], "welcome");
    let start_seq = welcome["seq"].as_u64().unwrap();

    let sse_user = join(&server, "sse").await;
    let mut stream = sse(&server, &format!("/api/sse?session={}&since={start_seq}", sse_user.session), None).await;
    assert_eq!(stream.data().await["type"], "welcome");
    let long_user = join(&server, "longpoll").await;
    let short_user = join(&server, "poll").await;

    ws_send(&mut socket, "from ws").await;
    // Each sender waits for its own text to be sequenced before the next one sends, so the order is known.
    let mut ws_seen = vec![];
    while ws_seen.iter().all(|e: &Value| e["message"] != "from ws") {
        ws_seen.push(ws_next(&mut socket).await);
    }
    assert_eq!(post(&server, &sse_user.session, "from sse").await.0, 202);
    assert_eq!(post(&server, &long_user.session, "from longpoll").await.0, 202);
    assert_eq!(post(&server, &short_user.session, "from poll").await.0, 202);
    let expected_last = ws_seen.last().unwrap()["seq"].as_u64().unwrap() + 3;

    while ws_seen.last().unwrap()["seq"].as_u64().unwrap() < expected_last {
        ws_seen.push(ws_next(&mut socket).await);
    }
    let mut sse_seen = vec![];
    while sse_seen.last().is_none_or(|e: &Value| e["seq"].as_u64().unwrap() < expected_last) {
        let frame = stream.next().await.unwrap();
        assert_eq!(frame.id, frame.data["seq"].as_u64(), "each room event's SSE id is its seq");
        sse_seen.push(frame.data);
    }
    let mut long_seen = vec![];
    let mut cursor = start_seq;
    while cursor < expected_last {
        let (events, next) =
            poll(&server, &format!("/api/longpoll?session={}&since={cursor}", long_user.session)).await;
        long_seen.extend(events);
        cursor = next;
    }
    let (short_seen, next) =
        poll(&server, &format!("/api/poll?session={}&since={start_seq}", short_user.session)).await;
    assert_eq!(next, expected_last);

    let reference = summary(&ws_seen);
    let seqs: Vec<u64> = reference.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, ((start_seq + 1)..=expected_last).collect::<Vec<_>>(), "consecutive seqs, no hole");
    let texts: Vec<&str> = reference.iter().filter(|(_, t, _)| t == "message").map(|(_, _, m)| m.as_str()).collect();
    assert_eq!(texts, ["from ws", "from sse", "from longpoll", "from poll"]);
    assert_eq!(summary(&sse_seen), reference, "SSE saw the same");
    assert_eq!(summary(&long_seen), reference, "long poll saw the same");
    assert_eq!(summary(&short_seen), reference, "short poll saw the same");
    assert_eq!(ws_seen.last().unwrap()["clientcount"], 4);
}

/// `GET /api/presence` lists every participant with its technique.
#[tokio::test]
async fn presence_lists_each_technique() {
    let server = start().await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    ws_next(&mut socket).await;
    join(&server, "sse").await;
    join(&server, "longpoll").await;
    join(&server, "poll").await;
    let (status, body) = get_json(&server, "/api/presence").await;
    assert_eq!(status, 200);
    assert_eq!(body["clientcount"], 4);
    let mut transports: Vec<&str> =
        body["participants"].as_array().unwrap().iter().map(|p| p["transport"].as_str().unwrap()).collect();
    transports.sort();
    assert_eq!(transports, ["longpoll", "poll", "sse", "ws"]);
    let first = &body["participants"][0];
    assert!(first["id"].is_string() && first["nickname"].is_string() && first["since"].is_u64());
    assert!(first.get("session").is_none(), "presence never reveals session secrets");
}

/// `DELETE /api/sessions/{session}` announces the leave at once; the session is then unknown.
#[tokio::test]
async fn delete_leaves_at_once() {
    let server = start().await;
    let mut watcher = ws(&server.ws_url("/ws")).await;
    ws_next(&mut watcher).await;
    ws_next(&mut watcher).await;
    let user = join(&server, "poll").await;
    assert_eq!(ws_next(&mut watcher).await["message"], format!("{} 来了", user.nickname));
    let status = http().delete(server.url(&format!("/api/sessions/{}", user.session))).send().await.unwrap().status();
    assert_eq!(status, 204);
    let left = ws_next(&mut watcher).await;
    assert_eq!(left["message"], format!("{} 走了", user.nickname));
    assert_eq!(left["clientcount"], 1);
    assert_eq!(post(&server, &user.session, "ghost").await.0, 404);
    let status = http().delete(server.url(&format!("/api/sessions/{}", user.session))).send().await.unwrap().status();
    assert_eq!(status, 404);
}

/// The session may come as the `X-Session` header instead of `session=` (an empty `session=` counts as none): a
/// text posted that way is the session's, a poll that way reads the room, and a request with neither is refused.
#[tokio::test]
async fn the_session_may_come_as_a_header() {
    let server = start().await;
    let user = join(&server, "poll").await;
    let posted = http()
        .post(server.url("/api/messages?session="))
        .header("x-session", &user.session)
        .header("content-type", "text/plain")
        .body("by header")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 202);
    let polled = http()
        .get(server.url(&format!("/api/poll?since={}", user.seq)))
        .header("x-session", &user.session)
        .send()
        .await;
    let polled = polled.unwrap();
    assert_eq!(polled.status().as_u16(), 200);
    let body: Value = polled.json().await.unwrap();
    let last = body["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["message"].as_str(), last["nickname"].as_str()), (Some("by header"), Some(&*user.nickname)));
    let refused = http().get(server.url("/api/poll?since=0")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 400, "no session= and no X-Session");
}
