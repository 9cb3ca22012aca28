//! What events and welcomes carry for a page: the optional notice fields, presence on the channel, and joining a
//! WebSocket under a nickname.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// The names of a presence's participants, in order.
fn names(presence: &Value) -> Vec<String> {
    presence["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| p["nickname"].as_str().unwrap().to_owned())
        .collect()
}

/// `POST /api/sessions` with a nickname; the whole `201` body.
async fn join_as(server: &Server, transport: &str, nickname: &str) -> Value {
    let response = http()
        .post(server.url("/api/sessions"))
        .json(&serde_json::json!({"transport": transport, "nickname": nickname}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// A join notice names the technique, a message its sender's technique, a rename the old nickname, a leave is a
/// `leave` notice, and the seed's texts stay as they were.
#[tokio::test]
async fn notices_carry_what_a_page_renders_in_its_own_language() {
    let server = start().await;
    let mut watcher = ws(&server.ws_url("/ws")).await;
    assert_eq!(ws_next(&mut watcher).await["type"], "welcome");
    let own = ws_next(&mut watcher).await;
    assert_eq!((own["notice"].as_str(), own["transport"].as_str()), (Some("join"), Some("ws")));
    assert_eq!(own["message"], "游客1 来了");

    for (transport, nickname) in [("sse", "s"), ("longpoll", "l"), ("poll", "p")] {
        join_as(&server, transport, nickname).await;
        let joined = ws_next(&mut watcher).await;
        assert_eq!((joined["type"].as_str(), joined["notice"].as_str()), (Some("notification"), Some("join")));
        assert_eq!(joined["transport"], transport, "{joined}");
        assert_eq!(joined["message"], format!("{nickname} 来了"));
    }

    let poller = join(&server, "poll").await;
    ws_next(&mut watcher).await;
    assert_eq!(post(&server, &poller.session, "from a poller").await.0, 202);
    let message = ws_next(&mut watcher).await;
    assert_eq!((message["message"].as_str(), message["transport"].as_str()), (Some("from a poller"), Some("poll")));
    assert!(message.get("notice").is_none(), "a message is no notice: {message}");

    ws_send(&mut watcher, "from a socket").await;
    assert_eq!(ws_next(&mut watcher).await["transport"], "ws");

    assert_eq!(post(&server, &poller.session, "/nick ann").await.0, 202);
    let renamed = ws_next(&mut watcher).await;
    assert_eq!(renamed["type"], "nick_update");
    assert_eq!(
        (renamed["previous"].as_str(), renamed["nickname"].as_str()),
        (Some(poller.nickname.as_str()), Some("ann"))
    );
    assert_eq!(renamed["message"], format!("用户 {} 改名为: ann", poller.nickname));
    assert!(renamed.get("notice").is_none() && renamed.get("transport").is_none(), "{renamed}");

    let status = http().delete(server.url(&format!("/api/sessions/{}", poller.session))).send().await.unwrap().status();
    assert_eq!(status, 204);
    let left = ws_next(&mut watcher).await;
    assert_eq!((left["notice"].as_str(), left["message"].as_str()), (Some("leave"), Some("ann 走了")));
    assert!(left.get("transport").is_none(), "{left}");
}

/// The seed protocol on `/` keeps its texts; the new fields ride along, and the shutdown notice says `shutdown`.
#[tokio::test]
async fn the_seed_keeps_its_texts_and_hears_the_shutdown_notice() {
    let mut server = start().await;
    let mut seed = ws(&server.ws_url("/")).await;
    let joined = ws_next(&mut seed).await;
    assert_eq!((joined["message"].as_str(), joined["nickname"].as_str()), (Some("游客1 来了"), Some("游客1")));
    assert_eq!((joined["notice"].as_str(), joined["transport"].as_str()), (Some("join"), Some("ws")));
    server.stop();
    let bye = ws_next(&mut seed).await;
    assert_eq!((bye["message"].as_str(), bye["notice"].as_str()), (Some("Server has disconnected"), Some("shutdown")));
}

/// Above `--coalesce-above`, the summed notice is a `crowd` notice with `joined` and `left` counts.
#[tokio::test]
async fn a_crowd_notice_counts_who_came_and_went() {
    let server = start_with(chatlab::config::Config { coalesce_above: 1, ..config() }).await;
    let mut watcher = ws(&server.ws_url("/ws")).await;
    ws_next(&mut watcher).await;
    assert_eq!(ws_next(&mut watcher).await["notice"], "join");
    let first = join(&server, "poll").await;
    join(&server, "poll").await;
    join(&server, "sse").await;
    http().delete(server.url(&format!("/api/sessions/{}", first.session))).send().await.unwrap();
    let mut counted = (0, 0);
    while counted != (3, 1) {
        let crowd = tokio::time::timeout(Duration::from_secs(4), ws_next(&mut watcher)).await.expect("a crowd notice");
        assert_eq!(crowd["notice"], "crowd", "{crowd}");
        assert_eq!((crowd["id"].as_str(), crowd["nickname"].as_str()), (Some(""), Some("")));
        let (joined, left) = (crowd["joined"].as_u64().unwrap(), crowd["left"].as_u64().unwrap());
        counted = (counted.0 + joined, counted.1 + left);
        let mut parts = vec![];
        if joined > 0 {
            parts.push(format!("{joined} 人来了"));
        }
        if left > 0 {
            parts.push(format!("{left} 人走了"));
        }
        assert_eq!(crowd["message"], parts.join("，"), "the seed-style text is kept");
    }
}

/// The `/ws` welcome, the SSE welcome and the `201` of a join say who is online, oldest first, the joiner
/// included, with each one's technique and join time, and no session token.
#[tokio::test]
async fn presence_comes_with_every_welcome_and_join() {
    let server = start().await;
    let first = join_as(&server, "poll", "first").await;
    let presence = &first["presence"];
    assert_eq!(presence["clientcount"], 1);
    assert_eq!(presence["more"], false);
    assert_eq!(names(presence), ["first"]);
    let me = &presence["participants"][0];
    assert_eq!((me["id"].as_str(), me["transport"].as_str()), (first["id"].as_str(), Some("poll")));
    assert!(me["since"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(!presence.to_string().contains(first["session"].as_str().unwrap()), "no token is shown");

    let mut socket = ws(&server.ws_url("/ws?nickname=second")).await;
    let welcome = ws_next(&mut socket).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["nickname"], "second");
    assert_eq!(welcome["presence"]["clientcount"], 2);
    assert_eq!(names(&welcome["presence"]), ["first", "second"]);
    assert_eq!(welcome["presence"]["participants"][1]["transport"], "ws");
    let second_session = welcome["session"].as_str().unwrap().to_owned();

    let third = join_as(&server, "sse", "third").await;
    assert_eq!(names(&third["presence"]), ["first", "second", "third"]);
    let mut stream = sse(&server, &format!("/api/sse?session={}", third["session"].as_str().unwrap()), None).await;
    let welcome = stream.data().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["presence"]["clientcount"], 3);
    assert_eq!(names(&welcome["presence"]), ["first", "second", "third"]);
    assert_eq!(welcome["presence"]["participants"][2]["transport"], "sse");

    // A resumed WebSocket is welcomed with who is online now: a rename and a leave meanwhile are in it.
    drop(socket);
    assert_eq!(post(&server, first["session"].as_str().unwrap(), "/nick premier").await.0, 202);
    let gone = http().delete(server.url(&format!("/api/sessions/{}", third["session"].as_str().unwrap())));
    assert_eq!(gone.send().await.unwrap().status(), 204);
    let mut again = ws(&server.ws_url(&format!("/ws?session={second_session}"))).await;
    let welcome = ws_next(&mut again).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(names(&welcome["presence"]), ["premier", "second"]);
    assert_eq!(welcome["presence"]["clientcount"], 2);
}

/// A poll or long poll asked with `presence=1` says who is online; without it the answer is as it was; any other
/// value is a `400` that changes nothing.
#[tokio::test]
async fn polls_say_who_is_online_when_asked() {
    let server = start().await;
    let poller = join(&server, "poll").await;
    let other = join_as(&server, "longpoll", "other").await;
    let other_session = other["session"].as_str().unwrap();

    let (_, plain) = get_json(&server, &format!("/api/poll?session={}&since={}", poller.session, poller.seq)).await;
    assert!(plain.get("presence").is_none(), "{plain}");
    let next = plain["next"].as_u64().unwrap();
    let (status, asked) =
        get_json(&server, &format!("/api/poll?session={}&since={next}&presence=1", poller.session)).await;
    assert_eq!(status, 200);
    assert_eq!(asked["events"], serde_json::json!([]));
    assert_eq!(asked["next"], next);
    assert_eq!(asked["presence"]["clientcount"], 2);
    assert_eq!(names(&asked["presence"]), [poller.nickname.clone(), "other".into()]);

    // A held long poll answers with who is online when it answers: here, after a join it was waiting for.
    let url = server.url(&format!("/api/longpoll?session={other_session}&since={next}&presence=1&timeout=5"));
    let held = tokio::spawn(async move { http().get(url).send().await.unwrap().json::<Value>().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    join_as(&server, "ws", "late").await;
    let answer = tokio::time::timeout(WAIT, held).await.expect("long poll answered").unwrap();
    assert_eq!(answer["events"][0]["notice"], "join");
    assert_eq!(names(&answer["presence"]), [poller.nickname.clone(), "other".into(), "late".into()]);

    for bad in ["2", "yes", ""] {
        let (status, body) =
            get_json(&server, &format!("/api/poll?session={}&since=0&presence={bad}", poller.session)).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "presence={bad}: {body}");
    }
    let (status, _) = get_json(&server, &format!("/api/poll?session={}&presence=1&presence=1", poller.session)).await;
    assert_eq!(status, 400, "given twice");
    // The refused polls moved nothing: the saved cursor still gives what came after `next`.
    let (events, _) = poll(&server, &format!("/api/poll?session={}", poller.session)).await;
    assert_eq!(events.len(), 1, "the late join, once: {events:?}");
}

/// Presence lists at most 200 participants, the oldest, and says more are online.
#[tokio::test]
async fn presence_is_bounded_at_200_oldest_first() {
    let server = start_with(chatlab::config::Config { coalesce_above: 10, ..config() }).await;
    for i in 0..205 {
        join_as(&server, "poll", &format!("p{i:03}")).await;
    }
    let mut socket = ws(&server.ws_url("/ws?nickname=newest")).await;
    let welcome = ws_next(&mut socket).await;
    let presence = &welcome["presence"];
    assert_eq!(presence["clientcount"], 206);
    assert_eq!(presence["more"], true);
    let listed = names(presence);
    assert_eq!(listed.len(), 200);
    assert_eq!(listed[0], "p000");
    assert_eq!(listed[199], "p199");
}

/// `GET /ws?nickname=NAME` joins under that name (trimmed, as `POST /api/sessions` does); a refused nickname is
/// the same `400 bad_nickname`, and both `session=` and `nickname=` is a `400`; a refusal announces nobody.
#[tokio::test]
async fn a_websocket_joins_under_a_nickname() {
    let server = start().await;
    let mut watcher = ws(&server.ws_url("/ws?nickname=%20watcher%20")).await;
    let welcome = ws_next(&mut watcher).await;
    assert_eq!(welcome["nickname"], "watcher");
    assert_eq!(ws_next(&mut watcher).await["message"], "watcher 来了");

    let mut named = ws(&server.ws_url("/ws?nickname=%E5%B0%8F%E6%98%8E")).await;
    assert_eq!(ws_next(&mut named).await["nickname"], "小明");
    let joined = ws_next(&mut watcher).await;
    assert_eq!((joined["nickname"].as_str(), joined["message"].as_str()), (Some("小明"), Some("小明 来了")));

    let too_long = "x".repeat(server.room.config().max_nickname_chars + 1);
    for bad in ["%20%20", too_long.as_str(), "a%07b"] {
        let (status, body) = upgrade_status(&server, &format!("/ws?nickname={bad}")).await;
        assert_eq!(status, 400, "{bad}");
        let (_, over_http) = {
            let response = http()
                .post(server.url("/api/sessions"))
                .json(&serde_json::json!({"transport": "ws", "nickname": form_decode(bad)}))
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        };
        assert_eq!(body, over_http, "the same refusal as POST /api/sessions");
        assert_eq!(body["code"], "bad_nickname");
    }
    let session = welcome["session"].as_str().unwrap();
    let (status, body) = upgrade_status(&server, &format!("/ws?session={session}&nickname=other")).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    ws_quiet(&mut watcher).await;
    assert_eq!(get_json(&server, "/api/presence").await.1["clientcount"], 2);
}

/// Decodes a query value as the server does.
fn form_decode(raw: &str) -> String {
    form_urlencoded::parse(format!("v={raw}").as_bytes()).next().unwrap().1.into_owned()
}

/// Sends a WebSocket upgrade for `path` by hand and returns the refusal's status and JSON body.
async fn upgrade_status(server: &Server, path: &str) -> (u16, Value) {
    let response = http()
        .get(server.url(path))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
