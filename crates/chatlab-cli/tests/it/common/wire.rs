//! Reading a wire view (`/api/wire`): its records, whatever socket (plain or TLS) carries it.

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::WAIT;

/// The next record of a wire view.
pub async fn record<S: AsyncRead + AsyncWrite + Unpin>(view: &mut WebSocketStream<S>) -> Value {
    loop {
        let message = timeout(WAIT, view.next()).await.expect("a record in time").expect("open").expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON record");
        }
    }
}

/// The next record of type `kind`, skipping others.
pub async fn next_of<S: AsyncRead + AsyncWrite + Unpin>(view: &mut WebSocketStream<S>, kind: &str) -> Value {
    loop {
        let record = record(view).await;
        if record["type"] == kind {
            return record;
        }
    }
}
