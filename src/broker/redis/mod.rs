//! The Redis broker: several chatlab processes share one room through one Redis (`--broker redis://HOST:PORT/DB`).
//!
//! # Where the room lives
//!
//! Every key starts with a prefix (`chatlab` unless [`RedisBroker::connect_with_prefix`] says otherwise):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:seq` | string | the newest sequence number given out |
//! | `P:epoch` | string | the room's epoch, made by the first script that finds it missing (so a wiped Redis is a new epoch) |
//! | `P:sent` | sorted set | `<token> <key>` of each send published with a key, scored by its `seq`; trimmed with the history |
//! | `P:history` | stream | one entry per event, id `<seq>-0`, field `e` = the event's JSON; trimmed to `--history` |
//! | `P:events` | pub/sub channel | each event's JSON, published by the same script that appended it |
//! | `P:guests` | string | the guest counter (`游客N`) |
//! | `P:leases` | sorted set | session token, scored by the time (ms) its lease ends: who is online |
//! | `P:joined` | sorted set | the same tokens, scored by guest number: the join order a welcome's `presence` lists |
//! | `P:session:<token>` | hash | the session record (`id`, `nickname`, `guest`, `transport`, `since_ms`, `cursor`, `seed`) |
//!
//! # One global order
//!
//! `PUBLISH` is a Lua script, so Redis runs it alone: `INCR P:seq`, stamp `clientcount` (`ZCARD P:leases`) and
//! `ts` (Redis `TIME`, one clock for the whole room), `XADD P:history MAXLEN <history> <seq>-0`, the trim of
//! `P:sent` to the retained events, `PUBLISH`; a send with a key first looks the key up in `P:sent` and, if it is
//! there, appends nothing and answers the `seq` it holds (so racing processes publish a key once). No
//! other command runs between the increment and the append, so sequence numbers have no holes, the history is
//! in sequence order, and pub/sub messages leave Redis in sequence order too. The JSON is built by the script from
//! a prefix serialised here (`{"type":..,"id":..,"nickname":..,"message":..,"clientcount":`), so the bytes are
//! exactly what [`crate::model::RoomEvent::new`] makes for the memory broker.
//!
//! # Feed, outages and recovery
//!
//! Each process holds one pub/sub connection (its own task) and one multiplexed command connection behind
//! redis-rs's [`ConnectionManager`], which reconnects by itself. When the pub/sub connection drops (or stops
//! answering pings), the feed yields [`FeedItem::Down`]; the task reconnects with backoff, resubscribes, checks
//! that commands work again, then yields [`FeedItem::Up`], and the room's receivers re-read history from their
//! cursors: pub/sub messages lost in between are filled from the stream, never skipped or duplicated. While Redis
//! is away every call fails fast (within [`OP_TIMEOUT`]) with [`BrokerError::Unavailable`].
//!
//! # Sessions and leases
//!
//! A session is a hash plus a member of `P:leases`; membership of the sorted set is what "online" means. Removal
//! (`REMOVE`, `EXPIRE`) is a script that `ZREM`s first and goes on only if that removed the member, so when
//! several processes race to remove or expire the same session, exactly one of them gets the record back and
//! announces the leave. Renewal is `ZADD XX GT`: it never resurrects a removed session nor shortens a lease.
//! Lease times are each process's clock (ms since the epoch): hosts must keep their clocks in sync (NTP) well
//! within `--session-lease`.
//!
//! Requires Redis 6.2 or newer (RESP3, `ZADD GT`), standalone or a single primary: the expiry script builds the
//! session keys it touches, which Redis Cluster would refuse.
//!
//! # Files
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`RedisBroker`]: connecting, and each [`Broker`] call as the commands or script it runs |
//! | `layout.rs` | the keys' names, and how a session record and an event are written to and read from them |
//! | `scripts.rs` | the Lua scripts: everything that must happen in Redis as one step |
//! | `feed.rs` | the pub/sub feed: messages forwarded, outages reported, reconnection |

mod feed;
mod layout;
mod scripts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use redis::{Client, FromRedisValue, IntoConnectionInfo, ProtocolVersion, RedisError, Value};
use tokio::sync::mpsc;

use self::feed::{listen, Feed};
use self::layout::{backlog, fields, first_id, record, Keys};
use self::scripts::{CREATE, EPOCH, EXPIRE, OLDEST, PAGE, PUBLISH, REMOVE, SAVE, SAVE_CURSOR, VISIT};
use crate::core::Broker;
use crate::model::{
    Backlog, BrokerError, Draft, Epoch, FeedItem, Published, RoomEvent, SendKey, Seq, SessionRecord, Visit,
};

/// Longest any broker call may take before it fails with [`BrokerError::Unavailable`]: a request never hangs on
/// an unreachable Redis.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Most sessions one [`EXPIRE`] run removes (the reaper runs every lease/4, so a backlog drains quickly).
const EXPIRE_BATCH: usize = 1000;
/// Most tokens renewed by one `ZADD`.
const RENEW_BATCH: usize = 1000;

/// The room in Redis, shared by every process pointed at the same Redis and prefix.
pub struct RedisBroker {
    /// Commands: one multiplexed RESP3 connection that reconnects by itself (it notices a dropped connection
    /// even while idle).
    conn: ConnectionManager,
    /// Pub/sub connections (RESP2, one per subscriber) are made from this.
    pubsub: Client,
    keys: Keys,
    history: usize,
}

/// What [`VISIT`] answers: the session (its record's fields, or its saved cursor), the head, the oldest retained
/// entry, the entries read and the epoch.
type Visited<T> = Option<(T, Seq, StreamRangeReply, StreamRangeReply, String)>;

impl RedisBroker {
    /// Runs [`VISIT`]: with `record`, the session comes back as its record's fields (`T` a map), else as its
    /// saved cursor (`T` a [`Seq`]).
    async fn visit<T: FromRedisValue>(&self, visit: Visit<'_>, record: bool) -> Result<Visited<T>, BrokerError> {
        let mut conn = self.conn.clone();
        let mut invocation = VISIT.prepare_invoke();
        let keys = &self.keys;
        invocation.key(&keys.leases).key(keys.session(visit.token)).key(&keys.seq).key(&keys.history).key(&keys.epoch);
        invocation.arg(visit.token).arg(visit.lease_until_ms).arg(visit.transport.as_str());
        invocation.arg(visit.since.map(first_id).unwrap_or_default()).arg(self.count(visit.max));
        invocation.arg(if record { "record" } else { "cursor" });
        within(invocation.invoke_async(&mut conn)).await
    }

    /// Runs [`PUBLISH`], with the send's key if it has one.
    async fn append(&self, draft: Draft, key: Option<SendKey<'_>>) -> Result<Published, BrokerError> {
        let mut prefix = serde_json::to_string(&draft).expect("a draft always serialises");
        prefix.pop(); // the closing brace: the script appends the stamped fields
        prefix.push_str(",\"clientcount\":");
        let mut conn = self.conn.clone();
        let keys = &self.keys;
        let mut invocation = PUBLISH.prepare_invoke();
        invocation.key(&keys.seq).key(&keys.history).key(&keys.leases).key(&keys.epoch).key(&keys.sent);
        invocation
            .arg(prefix)
            .arg(self.history)
            .arg(&keys.channel)
            .arg(key.map(|key| key.stored()).unwrap_or_default());
        match within(invocation.invoke_async::<Value>(&mut conn)).await? {
            Value::Int(seq) => Ok(Published::Repeated(seq as Seq)),
            Value::BulkString(json) => RoomEvent::from_json(Bytes::from(json))
                .map(|event| Published::Fresh(Arc::new(event)))
                .map_err(|error| BrokerError::Unavailable(format!("redis: the publish script returned {error}"))),
            other => Err(BrokerError::Unavailable(format!("redis: the publish script returned {other:?}"))),
        }
    }

    /// The `COUNT` of a read of at most `max` events: at most `history` entries exist, so that bounds it (it
    /// must fit an i64).
    fn count(&self, max: usize) -> usize {
        max.min(self.history).max(1)
    }

    /// Connects to `url` (`redis://HOST:PORT[/DB]`), keeping the newest `history` events, under the key prefix
    /// `chatlab`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] for a malformed URL or a Redis that cannot be reached.
    pub async fn connect(url: &str, history: usize) -> Result<Self, BrokerError> {
        Self::connect_with_prefix(url, history, "chatlab").await
    }

    /// As [`RedisBroker::connect`], with every key under `prefix` (several rooms, or tests, in one Redis).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] for a malformed URL or a Redis that cannot be reached.
    pub async fn connect_with_prefix(url: &str, history: usize, prefix: &str) -> Result<Self, BrokerError> {
        let info = url.into_connection_info().map_err(unavailable)?;
        let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let commands = Client::open(info.clone().set_redis_settings(resp3)).map_err(unavailable)?;
        let pubsub = Client::open(info).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(OP_TIMEOUT))
            // A failed reconnection is retried by the next command, so a long retry loop here would only make
            // callers wait: fail fast and let the next request try again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = within(ConnectionManager::new_with_config(commands, config)).await?;
        Ok(RedisBroker { conn, pubsub, keys: Keys::new(prefix), history: history.max(1) })
    }
}

fn unavailable(error: RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {error}"))
}

/// Runs a Redis call under [`OP_TIMEOUT`], mapping every failure to [`BrokerError::Unavailable`].
async fn within<T>(call: impl Future<Output = Result<T, RedisError>>) -> Result<T, BrokerError> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(BrokerError::Unavailable(format!("redis: no answer within {OP_TIMEOUT:?}"))),
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, draft: Draft) -> Result<Arc<RoomEvent>, BrokerError> {
        match self.append(draft, None).await? {
            Published::Fresh(event) => Ok(event),
            Published::Repeated(_) => Err(BrokerError::Unavailable("redis: a send without a key was repeated".into())),
        }
    }

    async fn publish_once(&self, draft: Draft, key: SendKey<'_>) -> Result<Published, BrokerError> {
        self.append(draft, Some(key)).await
    }

    async fn published(&self, key: SendKey<'_>) -> Result<Option<Seq>, BrokerError> {
        let mut conn = self.conn.clone();
        let score: Option<f64> =
            within(redis::cmd("ZSCORE").arg(&self.keys.sent).arg(key.stored()).query_async(&mut conn)).await?;
        Ok(score.map(|seq| seq as Seq))
    }

    async fn epoch(&self) -> Result<Epoch, BrokerError> {
        let mut conn = self.conn.clone();
        let epoch: String = within(EPOCH.key(&self.keys.epoch).invoke_async(&mut conn)).await?;
        Ok(Epoch::from(epoch))
    }

    async fn since(&self, cursor: Seq, max: usize) -> Result<Backlog, BrokerError> {
        let count = self.count(max);
        let start = first_id(cursor);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .get(&self.keys.epoch)
            .get(&self.keys.seq)
            .cmd("XRANGE")
            .arg(&self.keys.history)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&self.keys.history)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let mut conn = self.conn.clone();
        let (epoch, head, oldest, range): (Option<String>, Option<Seq>, StreamRangeReply, StreamRangeReply) =
            within(pipe.query_async(&mut conn)).await?;
        // A room that has no epoch yet (wiped, and untouched since) gets one now.
        let epoch = match epoch {
            Some(epoch) => Epoch::from(epoch),
            None => self.epoch().await?,
        };
        backlog(epoch, cursor, head.unwrap_or(0), &oldest, &range, max)
    }

    async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<FeedItem>, BrokerError> {
        let first = within(listen(&self.pubsub, &self.keys.channel)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let feed =
            Feed { client: self.pubsub.clone(), conn: self.conn.clone(), channel: self.keys.channel.clone(), tx };
        tokio::spawn(feed.run(first));
        Ok(rx)
    }

    async fn next_guest(&self) -> Result<u64, BrokerError> {
        let mut conn = self.conn.clone();
        within(redis::cmd("INCR").arg(&self.keys.guests).query_async(&mut conn)).await
    }

    async fn create_session(&self, record: &SessionRecord, lease_until_ms: u64, max: usize) -> Result<(), BrokerError> {
        let mut invocation = CREATE.prepare_invoke();
        invocation
            .key(&self.keys.leases)
            .key(self.keys.session(&record.token))
            .key(&self.keys.joined)
            .arg(&record.token)
            .arg(lease_until_ms)
            .arg(max)
            .arg(record.guest);
        for (field, value) in fields(record) {
            invocation.arg(field).arg(value);
        }
        let mut conn = self.conn.clone();
        let created: i64 = within(invocation.invoke_async(&mut conn)).await?;
        if created == 1 {
            Ok(())
        } else {
            Err(BrokerError::Full)
        }
    }

    async fn session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError> {
        let mut conn = self.conn.clone();
        let hash: HashMap<String, String> =
            within(redis::cmd("HGETALL").arg(self.keys.session(token)).query_async(&mut conn)).await?;
        Ok(record(token, hash))
    }

    async fn save_session(&self, record: &SessionRecord) -> Result<bool, BrokerError> {
        let mut invocation = SAVE.prepare_invoke();
        invocation.key(&self.keys.leases).key(self.keys.session(&record.token)).arg(&record.token);
        for (field, value) in fields(record) {
            invocation.arg(field).arg(value);
        }
        let mut conn = self.conn.clone();
        let saved: i64 = within(invocation.invoke_async(&mut conn)).await?;
        Ok(saved == 1)
    }

    async fn open(&self, visit: Visit<'_>) -> Result<Option<(SessionRecord, Backlog)>, BrokerError> {
        let Some((fields, head, oldest, range, epoch)) = self.visit::<HashMap<String, String>>(visit, true).await?
        else {
            return Ok(None);
        };
        let Some(record) = record(visit.token, fields) else {
            return Ok(None);
        };
        let backlog = backlog(epoch.into(), visit.after(record.cursor), head, &oldest, &range, visit.max)?;
        Ok(Some((record, backlog)))
    }

    async fn poll(&self, visit: Visit<'_>) -> Result<Option<(Seq, Backlog)>, BrokerError> {
        let Some((cursor, head, oldest, range, epoch)) = self.visit::<Seq>(visit, false).await? else {
            return Ok(None);
        };
        Ok(Some((cursor, backlog(epoch.into(), visit.after(cursor), head, &oldest, &range, visit.max)?)))
    }

    async fn save_cursor(&self, token: &str, cursor: Seq, lease_until_ms: u64) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let mut invocation = SAVE_CURSOR.prepare_invoke();
        invocation.key(&self.keys.leases).key(self.keys.session(token)).arg(token).arg(cursor).arg(lease_until_ms);
        within(invocation.invoke_async::<i64>(&mut conn)).await.map(|_| ())
    }

    async fn remove_session(&self, token: &str) -> Result<Option<SessionRecord>, BrokerError> {
        let mut conn = self.conn.clone();
        let removed: Option<HashMap<String, String>> = within(
            REMOVE
                .key(&self.keys.leases)
                .key(self.keys.session(token))
                .key(&self.keys.joined)
                .arg(token)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(removed.and_then(|hash| record(token, hash)))
    }

    async fn renew(&self, tokens: &[String], until_ms: u64) -> Result<(), BrokerError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for chunk in tokens.chunks(RENEW_BATCH) {
            // XX: only sessions still present (a removed one stays removed); GT: never shorten a lease.
            let zadd = pipe.cmd("ZADD").arg(&self.keys.leases).arg("XX").arg("GT");
            for token in chunk {
                zadd.arg(until_ms).arg(token);
            }
            zadd.ignore();
        }
        let mut conn = self.conn.clone();
        within(pipe.query_async::<()>(&mut conn)).await
    }

    async fn expire(&self, now_ms: u64) -> Result<Vec<SessionRecord>, BrokerError> {
        let mut conn = self.conn.clone();
        let gone: Vec<(String, HashMap<String, String>)> = within(
            EXPIRE
                .key(&self.keys.leases)
                .key(&self.keys.joined)
                .arg(now_ms)
                .arg(EXPIRE_BATCH)
                .arg(&self.keys.session)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(gone.into_iter().filter_map(|(token, hash)| record(&token, hash)).collect())
    }

    async fn presence(&self) -> Result<Vec<SessionRecord>, BrokerError> {
        let mut conn = self.conn.clone();
        let tokens: Vec<String> =
            within(redis::cmd("ZRANGE").arg(&self.keys.leases).arg(0).arg(-1).query_async(&mut conn)).await?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for token in &tokens {
            pipe.cmd("HGETALL").arg(self.keys.session(token));
        }
        let hashes: Vec<HashMap<String, String>> = within(pipe.query_async(&mut conn)).await?;
        let mut all: Vec<SessionRecord> =
            tokens.iter().zip(hashes).filter_map(|(token, hash)| record(token, hash)).collect();
        all.sort_by(|a, b| a.since_ms.cmp(&b.since_ms).then(a.guest.cmp(&b.guest)));
        Ok(all)
    }

    async fn oldest(&self, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError> {
        if max == 0 {
            return Ok((self.online().await?, Vec::new()));
        }
        let mut conn = self.conn.clone();
        let (online, oldest): (u64, Vec<(String, HashMap<String, String>)>) = within(
            OLDEST
                .key(&self.keys.leases)
                .key(&self.keys.joined)
                .arg(max)
                .arg(&self.keys.session)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok((online, oldest.into_iter().filter_map(|(token, hash)| record(&token, hash)).collect()))
    }

    async fn alive(&self, tokens: &[String]) -> Result<Vec<bool>, BrokerError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for token in tokens {
            pipe.cmd("EXISTS").arg(self.keys.session(token));
        }
        within(pipe.query_async(&mut conn)).await
    }

    async fn page(&self, after: u64, max: usize) -> Result<(u64, Vec<SessionRecord>), BrokerError> {
        if max == 0 {
            return Ok((self.online().await?, Vec::new()));
        }
        let mut conn = self.conn.clone();
        let (online, page): (u64, Vec<(String, HashMap<String, String>)>) = within(
            PAGE.key(&self.keys.leases)
                .key(&self.keys.joined)
                .arg(after)
                .arg(max)
                .arg(&self.keys.session)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok((online, page.into_iter().filter_map(|(token, hash)| record(&token, hash)).collect()))
    }

    async fn online(&self) -> Result<u64, BrokerError> {
        let mut conn = self.conn.clone();
        within(redis::cmd("ZCARD").arg(&self.keys.leases).query_async(&mut conn)).await
    }
}
