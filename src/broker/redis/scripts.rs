//! The Lua scripts: each runs in Redis alone, so what must happen as one step (a publish and its number, a
//! session's creation under the cap, a removal that exactly one process wins) is one script.

use std::sync::LazyLock;

use redis::Script;

/// Reads the room's epoch, making one first when there is none: a room whose keys were wiped (FLUSHALL, a Redis
/// restarted without persistence) has lost its sequence counter and its epoch together, and gets a new epoch the
/// first time any script touches it. The epoch is the Redis clock at that moment, in microseconds (hex).
const EPOCH_LUA: &str = r#"
local function new_epoch()
  local now = redis.call('TIME')
  return string.format('%08x%05x', tonumber(now[1]), tonumber(now[2]))
end
local function room_epoch(key)
  local epoch = redis.call('GET', key)
  if not epoch then
    epoch = new_epoch()
    redis.call('SET', key, epoch)
  end
  return epoch
end
"#;

/// Appends an event. KEYS: seq, history, leases, epoch, sent. ARGV: JSON prefix (up to `"clientcount":`), history
/// bound, pub/sub channel, the send's key (empty for none). Returns the event's JSON; or, when the key was used
/// before, the `seq` it got then (an integer), having appended nothing. The first event of a sequence (number 1:
/// a new room, or a wiped one) makes the epoch if no reader has yet; later ones leave it alone, so the epoch
/// costs a publish nothing.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{EPOCH_LUA}
local key = ARGV[4]
if key ~= '' then
  local first = redis.call('ZSCORE', KEYS[5], key)
  if first then return tonumber(first) end
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then redis.call('SET', KEYS[4], new_epoch(), 'NX') end
local online = redis.call('ZCARD', KEYS[3])
local now = redis.call('TIME')
local ts = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local json = ARGV[1] .. string.format('%d,"seq":%d,"ts":%d}}', online, seq, ts)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], string.format('%d-0', seq), 'e', json)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', seq - tonumber(ARGV[2]))
if key ~= '' then redis.call('ZADD', KEYS[5], seq, key) end
redis.call('PUBLISH', ARGV[3], json)
return json
"#
    ))
});

/// The room's epoch, made if there is none. KEYS: epoch.
pub(super) static EPOCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{EPOCH_LUA}\nreturn room_epoch(KEYS[1])")));

/// Creates a session unless the room is full. KEYS: leases, session hash, joined. ARGV: token, lease end, max,
/// guest number, then the hash's field/value pairs. Returns 1, or 0 when full.
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"#,
    )
});

/// Replaces a live session's fields. KEYS: leases, session hash. ARGV: token, then field/value pairs.
/// Returns 1, or 0 when the session is gone (nothing is written: a removed session stays removed).
pub(super) static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"#,
    )
});

/// A client showed up: [`Broker::open`](crate::core::Broker::open) and [`Broker::poll`](crate::core::Broker::poll)
/// in one round trip. Renews the lease (never shortening it), records the transport, and reads the history after
/// the given cursor or, when ARGV[4] is empty, after the session's saved one. KEYS: leases, session hash, seq,
/// history, epoch. ARGV: token, lease end, transport, first stream id to read (`<seq>-0`, or empty), count,
/// `record` for the record's fields (else only the saved cursor). Returns the record's fields (or the cursor), the
/// head, the oldest entry, the entries read and the epoch; nil when the session is gone.
pub(super) static VISIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{EPOCH_LUA}
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return false end
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'transport', ARGV[3])
local cursor = redis.call('HGET', KEYS[2], 'cursor') or '0'
local start = ARGV[4]
if start == '' then start = string.format('%d-0', tonumber(cursor) + 1) end
local session = cursor
if ARGV[6] == 'record' then session = redis.call('HGETALL', KEYS[2]) end
local head = redis.call('GET', KEYS[3]) or '0'
local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
local range = redis.call('XRANGE', KEYS[4], start, '+', 'COUNT', ARGV[5])
return {{session, head, oldest, range, room_epoch(KEYS[5])}}
"#
    ))
});

/// Moves a live session's cursor forward. KEYS: leases, session hash. ARGV: token, cursor, lease end.
pub(super) static SAVE_CURSOR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[1])
if tonumber(redis.call('HGET', KEYS[2], 'cursor') or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'cursor', ARGV[2])
end
return 1
"#,
    )
});

/// Removes a session. KEYS: leases, session hash, joined. ARGV: token. Returns the record's fields if this call
/// removed it, nil if it was already gone.
pub(super) static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return false end
local record = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
return record
"#,
    )
});

/// Removes sessions whose lease ended before now. KEYS: leases, joined. ARGV: now (ms), batch size, session key
/// prefix.
/// Returns `{token, fields}` pairs, each removed session exactly once.
pub(super) static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, token in ipairs(gone) do
  redis.call('ZREM', KEYS[1], token)
  redis.call('ZREM', KEYS[2], token)
  local key = ARGV[3] .. token
  out[#out + 1] = {token, redis.call('HGETALL', key)}
  redis.call('DEL', key)
end
return out
"#,
    )
});

/// How many are online and the oldest sessions in join order. KEYS: leases, joined. ARGV: how many, session key
/// prefix. Returns the count and `{token, fields}` pairs; a token whose record is gone is dropped from the order.
pub(super) static OLDEST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for _, token in ipairs(redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  local fields = redis.call('HGETALL', ARGV[2] .. token)
  if #fields == 0 then redis.call('ZREM', KEYS[2], token) else out[#out + 1] = {token, fields} end
end
return {redis.call('ZCARD', KEYS[1]), out}
"#,
    )
});

/// How many are online and a page of the sessions in join order after a guest number. KEYS: leases, joined.
/// ARGV: the guest number to start after, how many, session key prefix. Returns the count and `{token, fields}`
/// pairs; a token whose record is gone is dropped from the order, and the page is filled from further on.
pub(super) static PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
local after = ARGV[1]
local want = tonumber(ARGV[2])
while #out < want do
  local batch = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. after, '+inf', 'WITHSCORES', 'LIMIT', 0, want - #out)
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    local token = batch[i]
    after = batch[i + 1]
    local fields = redis.call('HGETALL', ARGV[3] .. token)
    if #fields == 0 then redis.call('ZREM', KEYS[2], token) else out[#out + 1] = {token, fields} end
  end
end
return {redis.call('ZCARD', KEYS[1]), out}
"#,
    )
});
