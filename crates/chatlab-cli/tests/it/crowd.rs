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
    // The summary goes at the announcer's next tick, which may come before or after the text; on a busy machine
    // the four joins may straddle a tick and be summed in two notices.
    let (summaries, others) = summed(&mut watcher, "joined", 4, 1).await;
    let chat = &others[0];
    assert_eq!((chat["message"].as_str(), chat["clientcount"].as_u64()), (Some("chat goes on"), Some(7)));
    for summary in &summaries {
        assert_eq!(summary["message"], format!("{} 人来了", summary["joined"]), "{summary}");
        assert_eq!(summary["left"], 0, "{summary}");
    }
    assert_eq!(summaries.last().unwrap()["clientcount"], 7);

    for user in &crowd[..2] {
        let status =
            http().delete(server.url(&format!("/api/sessions/{}", user.session))).send().await.unwrap().status();
        assert_eq!(status, 204);
    }
    let (summaries, _) = summed(&mut watcher, "left", 2, 0).await;
    for summary in &summaries {
        assert_eq!(summary["message"], format!("{} 人走了", summary["left"]), "{summary}");
    }
    assert_eq!(summaries.last().unwrap()["clientcount"], 5);
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

/// Reads the watcher's events until the bulk notices' `field` (`joined` or `left`) sums to `total` and `others`
/// other events have come, each within 3 s: the notices in order, and the other events.
async fn summed(
    watcher: &mut Ws,
    field: &str,
    total: u64,
    others: usize,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (mut summaries, mut rest, mut sum) = (vec![], vec![], 0);
    while sum < total || rest.len() < others {
        let event = tokio::time::timeout(Duration::from_secs(3), ws_next(watcher)).await.expect("within 3 s");
        if event["type"] == "notification" && event.get(field).is_some() {
            sum += event[field].as_u64().unwrap();
            summaries.push(event);
        } else {
            rest.push(event);
        }
    }
    assert_eq!(sum, total, "{summaries:?}");
    (summaries, rest)
}
