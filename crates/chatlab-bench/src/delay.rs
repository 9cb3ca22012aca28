//! An emulated network path for the bench's clients (`--delay-ms`): every byte takes the same extra time each
//! way, as on a long link. On loopback a transit takes microseconds, which hides what RFC 6202 says of long
//! polling (its worst case is three transits); with a delay the transits show in the measured latencies.
//!
//! The socket is joined to an in-memory pipe by two tasks per direction: one reads and stamps each chunk with
//! its due time, one writes it out when it is due. Order is kept; nothing is reordered or dropped.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Puts `delay` on both directions of `stream`; the returned end behaves as the socket, only later.
pub(crate) fn delayed(stream: TcpStream, delay: Duration) -> DuplexStream {
    let (app, pump) = tokio::io::duplex(256 * 1024);
    let (socket_read, socket_write) = stream.into_split();
    let (pump_read, pump_write) = tokio::io::split(pump);
    tokio::spawn(carry(socket_read, pump_write, delay));
    tokio::spawn(carry(pump_read, socket_write, delay));
    app
}

/// Moves bytes from `from` to `to`, each chunk `delay` after it was read; shuts `to` down after `from` ends.
async fn carry(
    mut from: impl AsyncRead + Unpin + Send + 'static,
    mut to: impl AsyncWrite + Unpin + Send + 'static,
    delay: Duration,
) {
    // Unbounded: what is in flight is bounded by the delay times the rate, as on a real link.
    let (due, mut arriving) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = arriving.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if due.send((Instant::now() + delay, Bytes::copy_from_slice(&buffer[..n]))).is_err() {
                    break;
                }
            }
        }
    }
    drop(due);
    let _ = writer.await;
}
