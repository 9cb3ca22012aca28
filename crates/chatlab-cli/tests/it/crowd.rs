//! Big rooms: above `--coalesce-above`, joins and leaves are announced in bulk once a second, not one by one.

use crate::common;

use std::time::Duration;

use common::*;

/// Up to the threshold every join has its own notice; above it, arrivals and departures are summed into one
/// notice a second, whose `clientcount` is exact, and chat is unaffected.
#[tokio::test]
async fn joins_and_leaves_are_coalesced_above_the_threshold() {
    let config = chatlab::config::Config { coalesce_above: 3, ..config() };
    let server = start_with(config).await;
    let mut watcher = ws(&server.ws_url("/ws")).await;
    ws_next(&mut watcher).await;
    assert_eq!(ws_next(&mut watcher).await["message"], "游客1 来了");
    let second = join(&server, "poll").await;
    let third = join(&server, "poll").await;
    assert_eq!(ws_next(&mut watcher).await["message"], "游客2 来了");
    assert_eq!(ws_next(&mut watcher).await["message"], "游客3 来了");

    let mut crowd = vec![];
    for _ in 0..4 {
        crowd.push(join(&server, "poll").await);
    }
    assert_eq!(post(&server, &second.session, "chat goes on").await.0, 202);
    // The summary goes at the announcer's next tick, which may come before or after the text.
    let next_two = [
        ws_next(&mut watcher).await,
        tokio::time::timeout(Duration::from_secs(3), ws_next(&mut watcher)).await.unwrap(),
    ];
    let chat = next_two.iter().find(|e| e["type"] == "message").expect("the text");
    assert_eq!((chat["message"].as_str(), chat["clientcount"].as_u64()), (Some("chat goes on"), Some(7)));
    let summary = next_two.iter().find(|e| e["type"] == "notification").expect("the summary");
    assert_eq!(summary["message"], "4 人来了");
    assert_eq!(summary["clientcount"], 7);

    for user in &crowd[..2] {
        let status =
            http().delete(server.url(&format!("/api/sessions/{}", user.session))).send().await.unwrap().status();
        assert_eq!(status, 204);
    }
    let summary = ws_next(&mut watcher).await;
    assert_eq!((summary["message"].as_str(), summary["clientcount"].as_u64()), (Some("2 人走了"), Some(5)));
    assert_eq!(get_json(&server, "/api/presence").await.1["clientcount"], 5);

    // Back at the threshold, leaves are announced one by one again.
    for user in [&crowd[2], &crowd[3]] {
        http().delete(server.url(&format!("/api/sessions/{}", user.session))).send().await.unwrap();
    }
    let mut messages = [ws_next(&mut watcher).await, ws_next(&mut watcher).await];
    messages.sort_by_key(|e| e["seq"].as_u64());
    let own = messages.iter().find(|e| e["id"] == crowd[3].id.as_str()).expect("its own notice");
    assert_eq!(own["message"], format!("{} 走了", crowd[3].nickname));
    assert_eq!(own["clientcount"], 3);
    assert!(messages.iter().any(|e| e["message"] == "1 人走了"), "4 remained, above 3: that leave was summed");
    let _ = third;
}
