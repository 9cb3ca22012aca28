//! The room core without sockets: what publishing costs, and what fanning one event out to 1,000 receivers
//! costs. `cargo bench --bench core`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tokio::runtime::Runtime;

use chatlab::config::Config;
use chatlab::core::{Channel, Delivery, Item, Room, Transport};
use chatlab::transport::poll_body;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn config() -> Config {
    Config {
        rate_limit: 0.0,
        coalesce_above: u64::MAX,
        max_connections: 10_000,
        send_queue: 65_536,
        broker: "memory".into(),
        ..Config::default()
    }
}

/// A room with `receivers` open channels (WebSocket participants, without sockets) and one sender.
async fn room_with(receivers: usize) -> (Room, String, Vec<Channel>) {
    let room = chatlab::build_room(config()).await.unwrap();
    let (sender, _) = room.join(Transport::Poll, None, false).await.unwrap();
    let mut channels = Vec::with_capacity(receivers);
    for _ in 0..receivers {
        let (record, cursor) = room.join(Transport::Ws, None, false).await.unwrap();
        channels.push(room.open(&record.token, Transport::Ws, Some(cursor), None).await.unwrap().0);
    }
    // Drain the join notices, so every channel waits for the next event.
    let head = room.head();
    for channel in &mut channels {
        while channel.cursor() < head {
            drain(channel).await;
        }
    }
    (room, sender.token, channels)
}

async fn drain(channel: &mut Channel) -> usize {
    let mut first = channel.next().await;
    while let Item::Beat = first {
        first = channel.next().await;
    }
    let batch = channel.batch_from(first, 64).await;
    assert!(batch.end.is_none() || matches!(batch.end, Some(Item::Deliver(_))));
    batch.deliveries.len()
}

fn publish(c: &mut Criterion) {
    let rt = runtime();
    let (room, sender, _) = rt.block_on(room_with(0));
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(1));
    group.bench_function("post a text, no receivers", |b| {
        b.to_async(&rt).iter(|| async { black_box(room.post(&sender, "hello, room").await.unwrap()) })
    });
    // The same with a key per text (a `/ws?ack=1` ref, an `Idempotency-Key`): the key is checked and remembered.
    let mut sent = 0u64;
    group.bench_function("post a text with a key, no receivers", |b| {
        b.to_async(&rt).iter_batched(
            || {
                sent += 1;
                format!("ref-{sent}")
            },
            |key| {
                let (room, sender) = (&room, &sender);
                async move { black_box(room.send(sender, "hello, room", Some(&key)).await.unwrap()) }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("fan-out");
    for receivers in [100usize, 1_000] {
        let (room, sender, mut channels) = rt.block_on(room_with(receivers));
        group.throughput(Throughput::Elements(receivers as u64));
        group.bench_function(format!("one text to {receivers} receivers"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        room.post(&sender, "hello, room").await.unwrap();
                        let mut delivered = 0;
                        for channel in channels.iter_mut() {
                            delivered += drain(channel).await;
                        }
                        assert_eq!(delivered, channels.len());
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn poll_bodies(c: &mut Criterion) {
    let rt = runtime();
    let (room, sender, _) = rt.block_on(room_with(0));
    let (record, _) = rt.block_on(room.join(Transport::Poll, None, false)).unwrap();
    for i in 0..100 {
        rt.block_on(room.post(&sender, &format!("text {i}"))).unwrap();
    }
    let polled = rt.block_on(room.poll(&record.token, Transport::Poll, Some(0), None)).unwrap();
    let (deliveries, next, epoch): (Vec<Delivery>, u64, _) = (polled.deliveries, polled.next, polled.epoch);
    let mut group = c.benchmark_group("poll body");
    group.throughput(Throughput::Elements(deliveries.len() as u64));
    group.bench_function("100 events into one response", |b| {
        b.iter_batched(|| deliveries.clone(), |d| black_box(poll_body(&d, next, &epoch, None)), BatchSize::SmallInput)
    });
    group.finish();
}

/// What a welcome's `presence` costs as the room grows: it lists the oldest 200, so it should not grow with the
/// number online (the memory broker reads them from its join-order index, not by sorting everyone).
fn presence(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("presence");
    for online in [200usize, 10_000, 100_000] {
        let room = rt.block_on(chatlab::build_room(Config { max_sessions: online + 1, ..config() })).unwrap();
        for _ in 0..online {
            rt.block_on(room.join(Transport::Poll, None, false)).unwrap();
        }
        group.bench_function(format!("oldest 200 of {online} online"), |b| {
            b.iter(|| black_box(rt.block_on(room.presence_now()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, publish, fan_out, poll_bodies, presence);
criterion_main!(benches);
