//! Stopping: every participant hears `Server has disconnected`, every channel ends, the server returns quickly.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::redis_support::Chatlab;
use common::*;

/// With an open WebSocket, seed socket, SSE stream and held long poll, a shutdown tells each of them, closes
/// the WebSockets with 1001, ends the stream, answers the long poll, and `run` returns well within 5 seconds.
#[tokio::test]
async fn shutdown_with_open_channels() {
    let mut server = start().await;
    let mut socket = ws(&server.ws_url("/ws")).await;
    ws_next(&mut socket).await;
    ws_next(&mut socket).await;
    let mut seed = ws(&server.ws_url("/")).await;
    ws_next(&mut seed).await;
    let streamer = join(&server, "sse").await;
    let mut stream = sse(&server, &format!("/api/sse?session={}", streamer.session), None).await;
    stream.data().await;
    let poller = join(&server, "longpoll").await;
    let held_url = server.url(&format!("/api/longpoll?session={}&since={}&timeout=30", poller.session, poller.seq + 1));
    let held =
        tokio::spawn(async move { http().get(held_url).send().await.unwrap().json::<serde_json::Value>().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished());

    let started = Instant::now();
    server.stop();

    for socket in [&mut socket, &mut seed] {
        loop {
            let frame = ws_next(socket).await;
            if frame["message"] == "Server has disconnected" {
                assert_eq!(frame["type"], "notification");
                break;
            }
        }
        assert_eq!(ws_close_code(socket).await.map(u16::from), Some(1001));
    }
    loop {
        match stream.next().await {
            Some(frame) if frame.data["message"] == "Server has disconnected" => break,
            Some(_) => continue,
            None => panic!("the stream ended without the notice"),
        }
    }
    assert!(stream.next().await.is_none(), "the SSE stream ends");
    let body = tokio::time::timeout(WAIT, held).await.expect("the long poll returns").unwrap().unwrap();
    assert!(body["events"].as_array().unwrap().iter().any(|e| e["message"] == "Server has disconnected"));
    tokio::time::timeout(Duration::from_secs(5), server.task).await.expect("run returns in time").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The binary exits within 5 seconds of SIGTERM even with an SSE stream open.
#[tokio::test]
async fn binary_exits_on_sigterm() {
    let (child, _stream) = serve_binary_with_a_stream(&[]).await;
    exits_on_sigterm(child);
}

/// `--threads 1` serves the whole process on one thread (an SSE stream open, a text posted and delivered), and
/// still exits cleanly on SIGTERM.
#[tokio::test]
async fn binary_on_one_thread() {
    let (child, _stream) = serve_binary_with_a_stream(&["--threads", "1"]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    let threads = status.lines().find_map(|line| line.strip_prefix("Threads:")).unwrap().trim().to_owned();
    assert_eq!(threads, "1", "one thread serves everything");
    exits_on_sigterm(child);
}

/// Starts the binary with `args`, joins over SSE, and posts a text the stream delivers; returns the process and
/// the open stream.
async fn serve_binary_with_a_stream(args: &[&str]) -> (Chatlab, reqwest::Response) {
    let child = Chatlab::spawn(Path::new(env!("CARGO_BIN_EXE_chatlab")), &[&["--broker", "memory"], args].concat());
    let base = child.url("");
    let joined: serde_json::Value = http()
        .post(format!("{base}/api/sessions"))
        .body(r#"{"transport":"sse"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut stream =
        http().get(format!("{base}/api/sse?session={}", joined["session"].as_str().unwrap())).send().await.unwrap();
    tokio::time::timeout(WAIT, stream.chunk()).await.unwrap().unwrap();
    let posted = http()
        .post(format!("{base}/api/messages?session={}", joined["session"].as_str().unwrap()))
        .header("content-type", "text/plain")
        .body("on the stream")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    loop {
        let chunk = tokio::time::timeout(WAIT, stream.chunk()).await.unwrap().unwrap().unwrap();
        if String::from_utf8_lossy(&chunk).contains("on the stream") {
            break;
        }
    }
    (child, stream)
}

/// SIGTERM, then a clean exit within 5 seconds.
fn exits_on_sigterm(mut child: Chatlab) {
    let started = Instant::now();
    let status = child.terminate();
    assert!(status.success(), "a clean exit: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
