//! One suite, every broker: the durable, memory and Redis brokers must behave the same behind the `Broker` trait.
//!
//! Each behaviour is an `async fn(Fixture)`; the `conformance!` macro runs it once per broker (`durable::*`,
//! `memory::*` and `redis::*`). A fixture hands out "processes": for the durable and memory brokers every process
//! is the same room (there is only one process), for Redis each is a new connection to the same room, as a second
//! chatlab process would be. Durable tests keep their store in a temporary directory of their own; Redis tests
//! start their own `redis-server` (see `redis_support`).

use crate::common;
use crate::redis_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use chatlab::broker::{DurableBroker, MemoryBroker, RedisBroker};
use chatlab::core::Broker;
use chatlab::model::{now_ms, Draft, EventKind, RoomEvent, Seq};
use chatlab::model::{Backlog, BrokerError, FeedItem, Missed, Published, SendKey, Visit};
use chatlab::model::{SessionRecord, Transport};
use common::temp::TempDir;
use redis_support::RedisServer;

/// How long any single receive may take.
const WAIT: Duration = Duration::from_secs(5);

/// A room under test, and how to reach it from several "processes".
struct Fixture {
    history: usize,
    /// Memory and durable: the one room every process shares (dropped before its directory).
    memory: Mutex<Option<Arc<dyn Broker>>>,
    /// Redis: the server, and a key prefix of this test's own.
    redis: Option<RedisServer>,
    /// Durable: the store's directory.
    dir: Option<TempDir>,
}

impl Fixture {
    fn memory(history: usize) -> Self {
        Fixture { history, memory: Mutex::new(None), redis: None, dir: None }
    }

    fn durable(test: &str, history: usize) -> Self {
        Fixture { history, memory: Mutex::new(None), redis: None, dir: Some(TempDir::new(test)) }
    }

    fn redis(test: &str, history: usize) -> Option<Self> {
        let server = RedisServer::start_or_skip(test)?;
        Some(Fixture { history, memory: Mutex::new(None), redis: Some(server), dir: None })
    }

    /// One process's view of the room.
    async fn process(&self) -> Arc<dyn Broker> {
        match &self.redis {
            Some(server) => {
                Arc::new(RedisBroker::connect_with_prefix(&server.url(), self.history, "test").await.unwrap())
            }
            None => {
                let mut memory = self.memory.lock().unwrap();
                let make = || -> Arc<dyn Broker> {
                    match &self.dir {
                        Some(dir) => Arc::new(DurableBroker::open(dir.path(), self.history).expect("a store")),
                        None => Arc::new(MemoryBroker::new(self.history)),
                    }
                };
                memory.get_or_insert_with(make).clone()
            }
        }
    }
}

/// Runs each behaviour against both brokers: `conformance!(history => name, ...)`.
macro_rules! conformance {
    ($($name:ident($history:expr)),* $(,)?) => {
        mod durable {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::durable(stringify!($name), $history)).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::memory($history)).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(fixture) = super::Fixture::redis(stringify!($name), $history) {
                        super::$name(fixture).await;
                    }
                }
            )*
        }
    };
}

conformance! {
    sequence_starts_at_one_and_reads_back(100),
    events_are_stamped_and_serialised_like_the_memory_broker(100),
    history_is_bounded_and_an_older_cursor_gets_a_gap(5),
    a_cursor_ahead_of_the_room_is_reported(100),
    every_feed_delivers_every_event_once_in_order(100),
    concurrent_publishers_get_distinct_consecutive_numbers(1000),
    publish_all_appends_in_order(100),
    publish_all_publishes_each_key_once(100),
    sequence_all_numbers_in_order_and_resolves_durable(100),
    guest_numbers_are_shared(100),
    sessions_are_shared_saved_and_removed_exactly_once(100),
    the_room_refuses_sessions_beyond_max(100),
    expired_sessions_are_returned_exactly_once(100),
    renewal_extends_only_live_sessions_and_never_shortens(100),
    a_visit_renews_records_the_technique_and_returns_the_record(100),
    a_poll_is_a_visit_and_a_read_from_the_saved_cursor(5),
    the_cursor_only_moves_forward_and_keeps_a_rename(100),
    presence_lists_everyone_oldest_first(100),
    the_oldest_are_listed_in_join_order_and_bounded(100),
    presence_pages_through_everyone_once(100),
    alive_tells_which_sessions_exist(100),
    optional_event_fields_survive_the_store_and_the_feed(100),
    clientcount_is_the_online_count(100),
    a_repeated_key_publishes_nothing_and_answers_the_first_seq(100),
    processes_racing_one_key_publish_it_once(1000),
    keys_are_forgotten_with_their_events(3),
    the_epoch_is_one_for_the_room_and_in_every_backlog(100),
}

/// A client of session `token` showing up with `transport`, its lease to `lease_until_ms`, reading at most `max`
/// events after `since`.
fn visit(token: &str, transport: Transport, lease_until_ms: u64, since: Option<Seq>, max: usize) -> Visit<'_> {
    Visit { token, transport, lease_until_ms, since, max }
}

fn draft(message: &str) -> Draft {
    Draft::new(EventKind::Message, "u1".into(), "游客1".into(), message.into())
}

fn seqs(backlog: &Backlog) -> Vec<Seq> {
    backlog.events.iter().map(|e| e.seq).collect()
}

fn session(token: &str, since_ms: u64, guest: u64) -> SessionRecord {
    common::session_record(token, since_ms, guest)
}

/// The next room event on a feed (outage notices are not expected here).
async fn next_event(feed: &mut UnboundedReceiver<FeedItem>) -> Arc<RoomEvent> {
    match tokio::time::timeout(WAIT, feed.recv()).await.expect("a feed item in time") {
        Some(FeedItem::Event(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// An empty room reads as empty; published events get 1, 2, 3 and read back from any cursor, `max` at a time.
async fn sequence_starts_at_one_and_reads_back(fixture: Fixture) {
    let broker = fixture.process().await;
    let empty = broker.since(0, 10).await.unwrap();
    assert_eq!((empty.head, empty.missed, seqs(&empty)), (0, None, vec![]));
    assert_eq!(broker.head().await.unwrap(), 0);
    for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(broker.publish(draft(text)).await.unwrap().seq, i as u64 + 1);
    }
    let all = broker.since(0, 10).await.unwrap();
    assert_eq!((all.head, all.missed, seqs(&all)), (3, None, vec![1, 2, 3]));
    assert_eq!(all.events[1].body().draft.message, "b");
    let after_one = broker.since(1, 10).await.unwrap();
    assert_eq!((after_one.after, seqs(&after_one)), (1, vec![2, 3]), "a backlog says what it follows");
    assert_eq!(seqs(&broker.since(1, 1).await.unwrap()), vec![2], "max bounds the read");
    let caught_up = broker.since(3, 10).await.unwrap();
    assert_eq!((caught_up.head, caught_up.missed, seqs(&caught_up)), (3, None, vec![]));
    assert_eq!(broker.head().await.unwrap(), 3, "the room reads its head at start");
}

/// Published events carry seq, clientcount and ts, and their JSON is exactly what the memory broker writes.
async fn events_are_stamped_and_serialised_like_the_memory_broker(fixture: Fixture) {
    let broker = fixture.process().await;
    let before = now_ms();
    let event = broker.publish(draft("héllo \"quoted\" / 中文 \n")).await.unwrap();
    let after = now_ms();
    let body = event.body();
    assert_eq!((body.seq, body.clientcount, body.draft.message.as_str()), (1, 0, "héllo \"quoted\" / 中文 \n"));
    assert!(before.saturating_sub(1000) <= body.ts && body.ts <= after + 1000, "ts is now: {}", body.ts);
    let reference = RoomEvent::new(&body);
    assert_eq!(event.json, reference.json, "same bytes as serialising the body");
    let stored = broker.since(0, 1).await.unwrap();
    assert_eq!(stored.events[0].json, event.json, "history holds the same bytes");
}

/// The history keeps the newest `--history` events; a cursor before them gets a gap naming what was lost.
async fn history_is_bounded_and_an_older_cursor_gets_a_gap(fixture: Fixture) {
    let broker = fixture.process().await;
    for i in 1..=8 {
        broker.publish(draft(&format!("m{i}"))).await.unwrap();
    }
    let from_zero = broker.since(0, 100).await.unwrap();
    assert_eq!(from_zero.missed, Some(Missed::Gap { from: 1, to: 3 }));
    assert_eq!(
        (from_zero.after, from_zero.head, seqs(&from_zero)),
        (0, 8, vec![4, 5, 6, 7, 8]),
        "after the cursor asked"
    );
    let from_two = broker.since(2, 100).await.unwrap();
    assert_eq!((from_two.missed, seqs(&from_two)), (Some(Missed::Gap { from: 3, to: 3 }), vec![4, 5, 6, 7, 8]));
    let from_three = broker.since(3, 100).await.unwrap();
    assert_eq!((from_three.missed, seqs(&from_three)), (None, vec![4, 5, 6, 7, 8]));
    let limited = broker.since(0, 2).await.unwrap();
    assert_eq!((limited.missed, seqs(&limited)), (Some(Missed::Gap { from: 1, to: 3 }), vec![4, 5]));
    assert_eq!(seqs(&broker.since(7, 100).await.unwrap()), vec![8]);
}

/// A cursor beyond the newest event (a made-up one, or a room that was reset) is reported, not served.
async fn a_cursor_ahead_of_the_room_is_reported(fixture: Fixture) {
    let broker = fixture.process().await;
    let empty = broker.since(5, 10).await.unwrap();
    assert_eq!((empty.after, empty.head, empty.missed, seqs(&empty)), (5, 0, Some(Missed::Ahead), vec![]));
    broker.publish(draft("a")).await.unwrap();
    broker.publish(draft("b")).await.unwrap();
    let ahead = broker.since(10, 10).await.unwrap();
    assert_eq!((ahead.after, ahead.head, ahead.missed, seqs(&ahead)), (10, 2, Some(Missed::Ahead), vec![]));
}

/// Every process's feed yields every event, whoever published it, in sequence order, once.
async fn every_feed_delivers_every_event_once_in_order(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let mut feed_a = a.subscribe().await.unwrap();
    let mut feed_b = b.subscribe().await.unwrap();
    for i in 1..=20u64 {
        let publisher = if i % 2 == 0 { &a } else { &b };
        assert_eq!(publisher.publish(draft(&format!("m{i}"))).await.unwrap().seq, i);
    }
    for feed in [&mut feed_a, &mut feed_b] {
        for i in 1..=20u64 {
            let event = next_event(feed).await;
            assert_eq!((event.seq, event.body().draft.message), (i, format!("m{i}")));
        }
        let extra = tokio::time::timeout(Duration::from_millis(200), feed.recv()).await;
        assert!(extra.is_err(), "nothing more: {extra:?}");
    }
}

/// Many publishers at once, on two processes: every event gets its own number, 1..=N with no hole, and history
/// and feed agree with what each publisher was told.
async fn concurrent_publishers_get_distinct_consecutive_numbers(fixture: Fixture) {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let (a, b) = (fixture.process().await, fixture.process().await);
    let mut feed = a.subscribe().await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let broker = if task % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut published = Vec::new();
            for i in 0..EACH {
                published.push(broker.publish(draft(&format!("t{task}-{i}"))).await.unwrap());
            }
            published
        }));
    }
    let mut published = Vec::new();
    for task in tasks {
        published.extend(tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap());
    }
    let total = (TASKS * EACH) as u64;
    let mut numbers: Vec<Seq> = published.iter().map(|e| e.seq).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=total).collect::<Vec<_>>());
    let history = a.since(0, usize::MAX).await.unwrap();
    assert_eq!(seqs(&history), (1..=total).collect::<Vec<_>>());
    for event in &published {
        assert_eq!(history.events[event.seq as usize - 1].json, event.json, "history holds what was returned");
    }
    for seq in 1..=total {
        let event = next_event(&mut feed).await;
        assert_eq!(event.seq, seq, "the feed is in sequence order");
        assert_eq!(event.json, history.events[seq as usize - 1].json);
    }
    // Each publisher's own texts are in the order it sent them.
    for task in 0..TASKS {
        let mine: Vec<String> = history
            .events
            .iter()
            .map(|e| e.body().draft.message)
            .filter(|m| m.starts_with(&format!("t{task}-")))
            .collect();
        assert_eq!(mine, (0..EACH).map(|i| format!("t{task}-{i}")).collect::<Vec<_>>());
    }
}

/// `publish_all` appends a sender's drafts in their order, with consecutive numbers, fed and retained like single
/// publishes; an empty list appends nothing.
async fn publish_all_appends_in_order(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let mut feed = b.subscribe().await.unwrap();
    a.publish(draft("first")).await.unwrap();
    let published = a.publish_all((1..=5).map(|i| (draft(&format!("m{i}")), None)).collect()).await.unwrap();
    let events: Vec<Arc<RoomEvent>> = published
        .into_iter()
        .map(|published| match published {
            Published::Fresh(event) => event,
            Published::Repeated(seq) => panic!("a send without a key repeated {seq}"),
        })
        .collect();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
    assert!(a.publish_all(Vec::new()).await.unwrap().is_empty());
    let history = b.since(0, 10).await.unwrap();
    let messages: Vec<String> = history.events.iter().map(|e| e.body().draft.message).collect();
    assert_eq!(messages, ["first", "m1", "m2", "m3", "m4", "m5"]);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.json, history.events[i + 1].json, "returned as retained");
    }
    for seq in 1..=6 {
        assert_eq!(next_event(&mut feed).await.seq, seq);
    }
    assert_eq!(a.publish(draft("next")).await.unwrap().seq, 7);
}

/// `publish_all` with keys: a key used before (by `publish_once` or earlier in the same batch) appends nothing and
/// answers the first `seq`; the others are numbered consecutively, in order; `published` knows every key.
async fn publish_all_publishes_each_key_once(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let key = |key| SendKey { session: "s1", key };
    let first = a.publish_once(draft("k1"), key("k1")).await.unwrap().seq();
    assert_eq!(first, 1);
    let sends = vec![
        (draft("again k1"), Some(key("k1"))),
        (draft("k2"), Some(key("k2"))),
        (draft("plain"), None),
        (draft("again k2"), Some(key("k2"))),
        (draft("k3"), Some(key("k3"))),
    ];
    let published = b.publish_all(sends).await.unwrap();
    let answers: Vec<(bool, Seq)> = published.iter().map(|p| (matches!(p, Published::Fresh(_)), p.seq())).collect();
    assert_eq!(answers, [(false, 1), (true, 2), (true, 3), (false, 2), (true, 4)]);
    let messages: Vec<String> = a.since(0, 10).await.unwrap().events.iter().map(|e| e.body().draft.message).collect();
    assert_eq!(messages, ["k1", "k2", "plain", "k3"]);
    for (name, seq) in [("k1", 1), ("k2", 2), ("k3", 4)] {
        assert_eq!(a.published(key(name)).await.unwrap(), Some(seq), "{name}");
    }
    assert_eq!(a.published(SendKey { session: "s2", key: "k1" }).await.unwrap(), None, "another session's key");
}

/// `sequence_all` numbers like `publish_all` (keys included) and answers with when the sends are durable: a
/// second batch may be numbered before the first is awaited; once the later one is durable the earlier one is
/// too; every send is retained and fed in order.
async fn sequence_all_numbers_in_order_and_resolves_durable(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let mut feed = b.subscribe().await.unwrap();
    let key = |key| SendKey { session: "s1", key };
    let first = a.sequence_all(vec![(draft("m1"), Some(key("k1"))), (draft("m2"), None)]).await.unwrap();
    let second = a.sequence_all(vec![(draft("again"), Some(key("k1"))), (draft("m3"), Some(key("k3")))]).await.unwrap();
    let answers = |batch: &chatlab::core::broker::Sequenced| -> Vec<(bool, Seq)> {
        batch.published.iter().map(|p| (matches!(p, Published::Fresh(_)), p.seq())).collect()
    };
    assert_eq!((answers(&first), answers(&second)), (vec![(true, 1), (true, 2)], vec![(false, 1), (true, 3)]));
    second.durable.wait().await.unwrap();
    let earlier = futures_util::FutureExt::now_or_never(first.durable.wait());
    assert!(matches!(earlier, Some(Ok(()))), "durable in order: {earlier:?}");
    let messages: Vec<String> = b.since(0, 10).await.unwrap().events.iter().map(|e| e.body().draft.message).collect();
    assert_eq!(messages, ["m1", "m2", "m3"]);
    for seq in 1..=3 {
        assert_eq!(next_event(&mut feed).await.seq, seq);
    }
    let empty = a.sequence_all(Vec::new()).await.unwrap();
    assert!(empty.published.is_empty());
    empty.durable.wait().await.unwrap();
    assert_eq!(a.published(key("k3")).await.unwrap(), Some(3));
}

/// Guest numbers count up across processes, never repeating.
async fn guest_numbers_are_shared(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let got = vec![
        a.next_guest().await.unwrap(),
        b.next_guest().await.unwrap(),
        a.next_guest().await.unwrap(),
        b.next_guest().await.unwrap(),
    ];
    assert_eq!(got, vec![1, 2, 3, 4]);
}

/// A session made on one process is read and changed on another; of two processes removing it at once, exactly
/// one gets it back (and announces the leave); a removed session stays removed.
async fn sessions_are_shared_saved_and_removed_exactly_once(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let record = session("tok1", 1_000, 1);
    a.create_session(&record, now_ms() + 60_000, 100).await.unwrap();
    assert_eq!(b.session("tok1").await.unwrap(), Some(record.clone()));
    assert_eq!(b.session("nope").await.unwrap(), None);
    let mut changed = record.clone();
    changed.nickname = "alice 🙂".into();
    changed.transport = Transport::LongPoll;
    changed.cursor = 42;
    changed.seed = true;
    assert!(b.save_session(&changed).await.unwrap());
    assert_eq!(a.session("tok1").await.unwrap(), Some(changed.clone()));
    assert_eq!(a.online().await.unwrap(), 1);

    let (first, second) = tokio::join!(a.remove_session("tok1"), b.remove_session("tok1"));
    let removed: Vec<SessionRecord> = [first.unwrap(), second.unwrap()].into_iter().flatten().collect();
    assert_eq!(removed, vec![changed.clone()], "exactly one remover gets the record");
    assert_eq!(a.session("tok1").await.unwrap(), None);
    assert!(!a.save_session(&changed).await.unwrap(), "saving a removed session does not bring it back");
    assert_eq!(b.session("tok1").await.unwrap(), None);
    assert_eq!(b.online().await.unwrap(), 0);
    assert_eq!(b.remove_session("tok1").await.unwrap(), None);
}

/// `max` sessions and no more; a removal makes room again.
async fn the_room_refuses_sessions_beyond_max(fixture: Fixture) {
    let broker = fixture.process().await;
    let lease = now_ms() + 60_000;
    broker.create_session(&session("s1", 1, 1), lease, 2).await.unwrap();
    broker.create_session(&session("s2", 2, 2), lease, 2).await.unwrap();
    let full = broker.create_session(&session("s3", 3, 3), lease, 2).await;
    assert!(matches!(full, Err(BrokerError::Full)), "{full:?}");
    assert_eq!(broker.session("s3").await.unwrap(), None);
    broker.remove_session("s1").await.unwrap();
    broker.create_session(&session("s3", 3, 3), lease, 2).await.unwrap();
    assert_eq!(broker.online().await.unwrap(), 2);
}

/// Sessions whose lease ended are removed and returned once, even when every process expires at the same time.
async fn expired_sessions_are_returned_exactly_once(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    for (i, lease) in [1_000u64, 2_000, 2_500, 10_000].into_iter().enumerate() {
        a.create_session(&session(&format!("e{i}"), i as u64, i as u64), lease, 100).await.unwrap();
    }
    let first: Vec<String> = a.expire(1_500).await.unwrap().into_iter().map(|r| r.token).collect();
    assert_eq!(first, vec!["e0"]);
    assert!(a.expire(1_500).await.unwrap().is_empty(), "nothing twice");
    assert!(b.expire(1_000).await.unwrap().is_empty(), "a lease ending exactly now is not over yet");
    let (x, y) = tokio::join!(a.expire(5_000), b.expire(5_000));
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<String> = x.iter().chain(y.iter()).map(|r| r.token.clone()).collect();
    all.sort();
    assert_eq!(all, vec!["e1", "e2"], "each expired session to exactly one caller");
    assert_eq!(a.session("e1").await.unwrap(), None);
    assert_eq!(a.online().await.unwrap(), 1);
    assert_eq!(b.presence().await.unwrap().into_iter().map(|r| r.token).collect::<Vec<_>>(), vec!["e3"]);
}

/// Renewal moves a live session's lease later, never earlier, and never brings back a removed session.
async fn renewal_extends_only_live_sessions_and_never_shortens(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    a.create_session(&session("r1", 1, 1), 1_000, 100).await.unwrap();
    a.create_session(&session("r2", 2, 2), 1_000, 100).await.unwrap();
    b.renew(&["r1".to_owned(), "gone".to_owned()], 5_000).await.unwrap();
    b.renew(&[], 9_000).await.unwrap();
    let expired: Vec<String> = a.expire(2_000).await.unwrap().into_iter().map(|r| r.token).collect();
    assert_eq!(expired, vec!["r2"], "r1 was renewed");
    b.renew(&["r1".to_owned()], 3_000).await.unwrap();
    assert!(a.expire(4_000).await.unwrap().is_empty(), "a renewal never shortens a lease");
    b.renew(&["r2".to_owned()], 50_000).await.unwrap();
    assert_eq!(a.session("r2").await.unwrap(), None, "renewing a removed session does not bring it back");
    assert_eq!(a.online().await.unwrap(), 1);
    let expired: Vec<String> = b.expire(6_000).await.unwrap().into_iter().map(|r| r.token).collect();
    assert_eq!(expired, vec!["r1"]);
}

/// `open` is one call for a lookup, a technique change, a renewal and a read: it returns the record as stored
/// and what follows the saved (or the given) cursor, renews without ever shortening, and does nothing for a
/// session that is gone.
async fn a_visit_renews_records_the_technique_and_returns_the_record(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    a.create_session(&session("t1", 1, 1), 1_000, 100).await.unwrap();
    a.create_session(&session("t2", 2, 2), 1_000, 100).await.unwrap();
    for i in 1..=3 {
        a.publish(draft(&format!("m{i}"))).await.unwrap();
    }
    a.save_cursor("t1", 1, 1_000).await.unwrap();
    let (opened, backlog) =
        b.open(visit("t1", Transport::LongPoll, 5_000, None, usize::MAX)).await.unwrap().expect("t1 is online");
    assert_eq!(opened, SessionRecord { transport: Transport::LongPoll, cursor: 1, ..session("t1", 1, 1) });
    assert_eq!(
        (backlog.after, seqs(&backlog), backlog.missed, backlog.head),
        (1, vec![2, 3], None, 3),
        "after the saved cursor"
    );
    assert_eq!(a.session("t1").await.unwrap(), Some(opened), "every process sees the new technique");
    let (_, backlog) = b.open(visit("t1", Transport::Poll, 3_000, Some(2), 1)).await.unwrap().unwrap();
    assert_eq!((backlog.after, seqs(&backlog)), (2, vec![3]), "after the given cursor, at most `max`");
    let expired: Vec<String> = a.expire(4_000).await.unwrap().into_iter().map(|r| r.token).collect();
    assert_eq!(expired, vec!["t2"], "t1's lease runs to 5,000: a visit never shortens it");
    assert!(
        b.open(visit("t2", Transport::Ws, 50_000, None, 10)).await.unwrap().is_none(),
        "a visit does not bring t2 back"
    );
    assert_eq!(a.session("t2").await.unwrap(), None);
    assert_eq!(a.online().await.unwrap(), 1);
}

/// `poll` is a visit (technique, lease never shortened) and a read: from the session's saved cursor when no
/// cursor is given, from the given one otherwise, with the hole or the cursor ahead reported as `since` does;
/// for a session that is gone it reads nothing and brings nothing back.
async fn a_poll_is_a_visit_and_a_read_from_the_saved_cursor(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    a.create_session(&session("p1", 1, 1), 1_000, 100).await.unwrap();
    a.create_session(&session("p2", 2, 2), 1_000, 100).await.unwrap();
    for i in 1..=7 {
        a.publish(draft(&format!("m{i}"))).await.unwrap();
    }
    a.save_cursor("p1", 4, 1_000).await.unwrap();
    let (cursor, backlog) = b.poll(visit("p1", Transport::Poll, 5_000, None, 2)).await.unwrap().expect("p1 is online");
    assert_eq!((cursor, backlog.after, seqs(&backlog), backlog.missed, backlog.head), (4, 4, vec![5, 6], None, 7));
    let stored = a.session("p1").await.unwrap().expect("p1 is still online");
    assert_eq!((stored.transport, stored.cursor), (Transport::Poll, 4), "a poll moves no cursor by itself");
    let (cursor, backlog) = b.poll(visit("p1", Transport::LongPoll, 3_000, Some(6), 10)).await.unwrap().unwrap();
    assert_eq!((cursor, backlog.after, seqs(&backlog), backlog.missed), (4, 6, vec![7], None), "a given cursor wins");
    let (_, backlog) = b.poll(visit("p1", Transport::Poll, 3_000, Some(0), 10)).await.unwrap().unwrap();
    assert_eq!((seqs(&backlog), backlog.missed), (vec![3, 4, 5, 6, 7], Some(Missed::Gap { from: 1, to: 2 })));
    let (_, backlog) = b.poll(visit("p1", Transport::Poll, 3_000, Some(9), 10)).await.unwrap().unwrap();
    assert_eq!((backlog.after, backlog.missed), (9, Some(Missed::Ahead)));
    assert_eq!(a.session("p1").await.unwrap().unwrap().transport, Transport::Poll);
    let expired: Vec<String> = a.expire(4_000).await.unwrap().into_iter().map(|r| r.token).collect();
    assert_eq!(expired, vec!["p2"], "p1's lease runs to 5,000: a poll never shortens it");
    assert!(b.poll(visit("p2", Transport::Poll, 50_000, None, 10)).await.unwrap().is_none(), "p2 is gone");
    assert_eq!(a.session("p2").await.unwrap(), None, "a poll does not bring p2 back");
}

/// `save_cursor` moves the cursor forward only, renews the lease, leaves a rename made meanwhile alone, and does
/// nothing for a session that is gone.
async fn the_cursor_only_moves_forward_and_keeps_a_rename(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    a.create_session(&session("c1", 1, 1), 1_000, 100).await.unwrap();
    let mut renamed = session("c1", 1, 1);
    renamed.nickname = "bob".into();
    assert!(a.save_session(&renamed).await.unwrap());
    b.save_cursor("c1", 40, 5_000).await.unwrap();
    b.save_cursor("c1", 30, 2_000).await.unwrap();
    assert_eq!(a.session("c1").await.unwrap(), Some(SessionRecord { cursor: 40, ..renamed }));
    assert!(a.expire(4_000).await.unwrap().is_empty(), "saving the cursor renewed the lease");
    b.save_cursor("gone", 7, 50_000).await.unwrap();
    assert_eq!(a.session("gone").await.unwrap(), None, "saving a cursor creates nothing");
    assert_eq!(a.online().await.unwrap(), 1);
}

/// Presence lists every online session, oldest first, from any process.
async fn presence_lists_everyone_oldest_first(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let lease = now_ms() + 60_000;
    a.create_session(&session("p3", 300, 3), lease, 100).await.unwrap();
    b.create_session(&session("p1", 100, 1), lease, 100).await.unwrap();
    a.create_session(&session("p2", 200, 2), lease, 100).await.unwrap();
    let tokens: Vec<String> = b.presence().await.unwrap().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens, vec!["p1", "p2", "p3"]);
    let records = a.presence().await.unwrap();
    assert_eq!(records[0], session("p1", 100, 1));
}

/// `oldest(max)` gives the online count and the first `max` sessions in join order (by guest number), from any
/// process, and forgets removed and expired sessions.
async fn the_oldest_are_listed_in_join_order_and_bounded(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let lease = now_ms() + 60_000;
    for guest in [4, 1, 3, 2, 5] {
        a.create_session(&session(&format!("o{guest}"), 1_000 - guest, guest), lease, 100).await.unwrap();
    }
    let tokens = |records: Vec<SessionRecord>| records.into_iter().map(|r| r.token).collect::<Vec<_>>();
    let (online, oldest) = b.oldest(3).await.unwrap();
    assert_eq!((online, tokens(oldest)), (5, vec!["o1".to_owned(), "o2".into(), "o3".into()]));
    b.remove_session("o2").await.unwrap();
    a.create_session(&session("short", 1, 6), 10, 100).await.unwrap();
    assert_eq!(a.expire(now_ms()).await.unwrap().len(), 1, "the short lease expired");
    let (online, oldest) = a.oldest(10).await.unwrap();
    assert_eq!(online, 4);
    assert_eq!(tokens(oldest.clone()), vec!["o1", "o3", "o4", "o5"], "removed and expired sessions are gone");
    assert_eq!(oldest[0], session("o1", 999, 1), "whole records");
    assert_eq!(b.oldest(0).await.unwrap(), (4, vec![]));
}

/// `page(after, max)` lists the sessions whose guest number is above `after`, in join order, at most `max`, from
/// any process: paging from 0 by the last guest number lists everyone once, and a session that leaves between
/// two pages is skipped without shifting the others.
async fn presence_pages_through_everyone_once(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let lease = now_ms() + 60_000;
    for guest in [7, 2, 9, 1, 4, 3, 8, 6, 5, 10] {
        a.create_session(&session(&format!("g{guest}"), 1_000 + guest, guest), lease, 100).await.unwrap();
    }
    let guests = |records: &[SessionRecord]| records.iter().map(|r| r.guest).collect::<Vec<_>>();
    let (online, first) = b.page(0, 4).await.unwrap();
    assert_eq!((online, guests(&first)), (10, vec![1, 2, 3, 4]));
    assert_eq!(first[0], session("g1", 1_001, 1), "whole records");
    // One that was already listed and one that was not leave between pages.
    a.remove_session("g2").await.unwrap();
    b.remove_session("g6").await.unwrap();
    let (online, second) = a.page(4, 4).await.unwrap();
    assert_eq!((online, guests(&second)), (8, vec![5, 7, 8, 9]), "g6 is skipped, the page is still full");
    let (_, last) = b.page(9, 4).await.unwrap();
    assert_eq!(guests(&last), vec![10]);
    assert_eq!(b.page(10, 4).await.unwrap(), (8, vec![]), "nothing after the last");
    assert_eq!(a.page(0, 0).await.unwrap(), (8, vec![]));
    assert_eq!(guests(&a.page(3, 100).await.unwrap().1), vec![4, 5, 7, 8, 9, 10]);
}

/// `alive` says, in order, which sessions exist, from any process: removed and expired ones do not.
async fn alive_tells_which_sessions_exist(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let lease = now_ms() + 60_000;
    for guest in 1..=3 {
        a.create_session(&session(&format!("a{guest}"), 1, guest), lease, 100).await.unwrap();
    }
    a.create_session(&session("short", 1, 4), 10, 100).await.unwrap();
    b.remove_session("a2").await.unwrap();
    assert_eq!(b.expire(now_ms()).await.unwrap().len(), 1);
    let tokens: Vec<String> = ["a1", "a2", "a3", "short", "never"].map(String::from).to_vec();
    assert_eq!(a.alive(&tokens).await.unwrap(), vec![true, false, true, false, false]);
    assert_eq!(b.alive(&[]).await.unwrap(), Vec::<bool>::new());
}

/// The optional fields (`notice`, `transport`, `joined`, `left`, `previous`) come back from the feed and the
/// history as published, in the same bytes as the memory broker writes, and an event without them has none.
async fn optional_event_fields_survive_the_store_and_the_feed(fixture: Fixture) {
    use chatlab::model::Notice;
    let broker = fixture.process().await;
    let mut feed = broker.subscribe().await.unwrap();
    let drafts = [
        Draft::join("u1".into(), "游客1".into(), Transport::LongPoll),
        Draft::message("u1".into(), "游客1".into(), "hi".into(), Transport::Sse),
        Draft::rename("u1".into(), "游客1".into(), "ann".into()),
        Draft::crowd(12, 3),
        Draft::leave("u1".into(), "ann".into()),
        draft("plain"),
    ];
    for draft in &drafts {
        broker.publish(draft.clone()).await.unwrap();
    }
    let stored = broker.since(0, 10).await.unwrap();
    for (i, draft) in drafts.iter().enumerate() {
        let fed = next_event(&mut feed).await;
        let body = fed.body();
        assert_eq!(fed.json, stored.events[i].json, "the feed and the history hold the same bytes");
        assert_eq!(fed.json, RoomEvent::new(&body).json, "the same bytes as the memory broker's serialisation");
        assert_eq!(&body.draft, draft, "event {i}: {}", fed.json);
    }
    let json: Vec<serde_json::Value> =
        stored.events.iter().map(|e| serde_json::from_str(e.json.as_str()).unwrap()).collect();
    assert_eq!(json[0]["notice"], "join");
    assert_eq!(json[0]["transport"], "longpoll");
    assert_eq!(json[1]["transport"], "sse");
    assert_eq!(json[2]["previous"], "游客1");
    assert_eq!(json[2]["message"], "用户 游客1 改名为: ann", "the seed's text is kept");
    assert_eq!((json[3]["joined"].as_u64(), json[3]["left"].as_u64()), (Some(12), Some(3)));
    assert_eq!(json[3]["message"], "12 人来了，3 人走了");
    assert_eq!(json[4]["notice"], serde_json::json!(Notice::Leave));
    let plain = json[5].as_object().unwrap();
    let keys: Vec<&str> = plain.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["type", "id", "nickname", "message", "clientcount", "seq", "ts"],
        "no optional field when absent"
    );
}

/// Every event carries the room-wide online count at the time it was published.
async fn clientcount_is_the_online_count(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let lease = now_ms() + 60_000;
    a.create_session(&session("c1", 1, 1), lease, 100).await.unwrap();
    b.create_session(&session("c2", 2, 2), lease, 100).await.unwrap();
    assert_eq!(a.publish(draft("two")).await.unwrap().body().clientcount, 2);
    b.remove_session("c1").await.unwrap();
    assert_eq!(a.publish(draft("one")).await.unwrap().body().clientcount, 1);
}

/// Redis only: while Redis is down, calls fail fast with `Unavailable` and the feed says `Down`; once it is
/// back the feed says `Up` by itself, and numbering continues where it was, nothing lost or repeated.
#[tokio::test]
async fn redis_outage_is_reported_and_survived() {
    let Some(fixture) = Fixture::redis("redis_outage_is_reported_and_survived", 100) else { return };
    let broker = fixture.process().await;
    let mut feed = broker.subscribe().await.unwrap();
    assert_eq!(broker.publish(draft("before")).await.unwrap().seq, 1);
    assert_eq!(next_event(&mut feed).await.seq, 1);

    let mut fixture = fixture;
    fixture.redis.as_mut().unwrap().stop();
    match tokio::time::timeout(WAIT, feed.recv()).await.expect("Down in time") {
        Some(FeedItem::Down(why)) => assert!(why.contains("redis"), "{why}"),
        other => panic!("expected Down, got {other:?}"),
    }
    let started = std::time::Instant::now();
    let refused = broker.publish(draft("during")).await;
    assert!(matches!(refused, Err(BrokerError::Unavailable(_))), "{refused:?}");
    assert!(started.elapsed() < chatlab::broker::redis::OP_TIMEOUT + Duration::from_secs(1), "fails fast");
    assert!(matches!(broker.session("x").await, Err(BrokerError::Unavailable(_))));

    fixture.redis.as_mut().unwrap().restart();
    match tokio::time::timeout(Duration::from_secs(10), feed.recv()).await.expect("Up in time") {
        Some(FeedItem::Up) => {}
        other => panic!("expected Up, got {other:?}"),
    }
    assert_eq!(broker.publish(draft("after")).await.unwrap().seq, 2, "the counter survived the restart");
    assert_eq!(next_event(&mut feed).await.seq, 2);
    let history = broker.since(0, 10).await.unwrap();
    let messages: Vec<String> = history.events.iter().map(|e| e.body().draft.message).collect();
    assert_eq!(messages, vec!["before", "after"]);
    let extra = tokio::time::timeout(Duration::from_millis(200), feed.recv()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");
}

fn key<'a>(session: &'a str, key: &'a str) -> SendKey<'a> {
    SendKey { session, key }
}

/// A key a session used is not published again, on any process: the answer is the first send's `seq`, the
/// history and every feed hold the event once; the same key from another session is another send.
async fn a_repeated_key_publishes_nothing_and_answers_the_first_seq(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let mut feed = a.subscribe().await.unwrap();
    assert_eq!(a.published(key("s1", "r1")).await.unwrap(), None, "nothing sent yet");
    let first = match a.publish_once(draft("once"), key("s1", "r1")).await.unwrap() {
        Published::Fresh(event) => event,
        other => panic!("the first send is published: {other:?}"),
    };
    assert_eq!(first.seq, 1);
    for broker in [&a, &b] {
        match broker.publish_once(draft("once again"), key("s1", "r1")).await.unwrap() {
            Published::Repeated(seq) => assert_eq!(seq, 1, "the first send's seq"),
            other => panic!("a repeat publishes nothing: {other:?}"),
        }
        assert_eq!(broker.published(key("s1", "r1")).await.unwrap(), Some(1));
    }
    let other = b.publish_once(draft("another session's"), key("s2", "r1")).await.unwrap();
    assert!(matches!(&other, Published::Fresh(event) if event.seq == 2), "{other:?}");
    assert_eq!(other.seq(), 2);
    assert_eq!(a.publish(draft("no key")).await.unwrap().seq, 3, "sends without a key are unaffected");
    let history = a.since(0, 10).await.unwrap();
    let messages: Vec<String> = history.events.iter().map(|e| e.body().draft.message).collect();
    assert_eq!(messages, ["once", "another session's", "no key"]);
    for seq in 1..=3 {
        assert_eq!(next_event(&mut feed).await.seq, seq);
    }
    let extra = tokio::time::timeout(Duration::from_millis(200), feed.recv()).await;
    assert!(extra.is_err(), "nothing more on the feed: {extra:?}");
}

/// Many senders on two processes racing with one key: exactly one publishes; every other is told its `seq`.
async fn processes_racing_one_key_publish_it_once(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let mut tasks = Vec::new();
    for task in 0..16 {
        let broker = if task % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for round in 0..10 {
                let key = format!("race-{round}");
                answers.push((round, broker.publish_once(draft(&key), SendKey { session: "s", key: &key }).await));
            }
            answers
        }));
    }
    let mut fresh = std::collections::BTreeMap::new();
    let mut repeated = Vec::new();
    for task in tasks {
        for (round, answer) in tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap() {
            match answer.unwrap() {
                Published::Fresh(event) => assert!(fresh.insert(round, event.seq).is_none(), "round {round} twice"),
                Published::Repeated(seq) => repeated.push((round, seq)),
            }
        }
    }
    assert_eq!(fresh.len(), 10, "each key published once: {fresh:?}");
    assert_eq!(repeated.len(), 16 * 10 - 10);
    for (round, seq) in repeated {
        assert_eq!(fresh[&round], seq, "a repeat of round {round} is told the first send's seq");
    }
    let history = a.since(0, 1000).await.unwrap();
    assert_eq!(seqs(&history), (1..=10).collect::<Vec<_>>(), "ten events, no more");
}

/// Keys live as long as their events are retained: once an event leaves the history its key may be used again
/// (what de-duplication remembers is bounded by `--history`).
async fn keys_are_forgotten_with_their_events(fixture: Fixture) {
    let broker = fixture.process().await;
    assert_eq!(broker.publish_once(draft("keyed"), key("s", "k")).await.unwrap().seq(), 1);
    broker.publish(draft("two")).await.unwrap();
    broker.publish(draft("three")).await.unwrap();
    assert_eq!(broker.published(key("s", "k")).await.unwrap(), Some(1), "still retained");
    assert!(matches!(broker.publish_once(draft("again"), key("s", "k")).await.unwrap(), Published::Repeated(1)));
    broker.publish(draft("four")).await.unwrap();
    assert_eq!(seqs(&broker.since(0, 10).await.unwrap()), vec![2, 3, 4], "event 1 left the history");
    assert_eq!(broker.published(key("s", "k")).await.unwrap(), None, "and its key with it");
    let again = broker.publish_once(draft("keyed, later"), key("s", "k")).await.unwrap();
    assert!(matches!(&again, Published::Fresh(event) if event.seq == 5), "{again:?}");
}

/// The room has one epoch, the same on every process, in every backlog, unchanged by publishing.
async fn the_epoch_is_one_for_the_room_and_in_every_backlog(fixture: Fixture) {
    let (a, b) = (fixture.process().await, fixture.process().await);
    let epoch = a.epoch().await.unwrap();
    assert!(!epoch.is_empty());
    assert_eq!(b.epoch().await.unwrap(), epoch, "one room, one epoch");
    a.publish(draft("one")).await.unwrap();
    b.publish_once(draft("two"), key("s", "k")).await.unwrap();
    let lease = now_ms() + 60_000;
    a.create_session(&session("e1", 1, 1), lease, 100).await.unwrap();
    assert_eq!(a.since(0, 10).await.unwrap().epoch, epoch);
    assert_eq!(b.epoch().await.unwrap(), epoch, "publishing keeps the epoch");
    let (_, opened) = b.open(visit("e1", Transport::Ws, lease, Some(0), 10)).await.unwrap().unwrap();
    assert_eq!(opened.epoch, epoch);
    let (_, polled) = a.poll(visit("e1", Transport::Poll, lease, None, 10)).await.unwrap().unwrap();
    assert_eq!(polled.epoch, epoch);
}

/// A new in-memory room is a new numbering: another epoch.
#[tokio::test]
async fn a_new_memory_room_has_another_epoch() {
    let (one, two) = (MemoryBroker::new(10), MemoryBroker::new(10));
    assert_ne!(one.epoch().await.unwrap(), two.epoch().await.unwrap());
}

/// Redis only: a wiped Redis (FLUSHALL) starts the sequence over under a new epoch, which every process sees,
/// and keys used before the wipe are forgotten with it.
#[tokio::test]
async fn a_wiped_redis_is_a_new_epoch() {
    let Some(fixture) = Fixture::redis("a_wiped_redis_is_a_new_epoch", 100) else { return };
    let (a, b) = (fixture.process().await, fixture.process().await);
    a.publish_once(draft("before"), key("s", "k")).await.unwrap();
    let before = a.epoch().await.unwrap();
    fixture.redis.as_ref().unwrap().flushall();
    // The first reader after the wipe makes the new epoch; every process reads the same one.
    let after = b.since(0, 10).await.unwrap().epoch;
    assert_ne!(after, before, "a new numbering, a new epoch");
    assert_eq!(a.epoch().await.unwrap(), after);
    let again = a.publish_once(draft("after"), key("s", "k")).await.unwrap();
    assert!(matches!(&again, Published::Fresh(event) if event.seq == 1), "{again:?}");
    assert_eq!(b.epoch().await.unwrap(), after, "publishing keeps it");
}
