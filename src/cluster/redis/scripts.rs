//! The Lua scripts that keep each change atomic. Times come from Redis's
//! own clock (`TIME`), so the nodes' clocks need not agree.

use std::sync::LazyLock;

use redis::Script;

/// Milliseconds now, by Redis's clock (Lua prelude).
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Whether node `f` counts: it is not among the dead nodes ARGV[from..]
/// (Lua prelude). A node not heard of yet counts: it just started.
const ALIVE: &str = "local function alive(f, from)
  for i = from, #ARGV do if ARGV[i] == f then return false end end
  return true
end
";

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

/// Renews (or takes back, if it lapsed) this process's lease on its node
/// id, records the heartbeat, and reads the nodes.
/// KEYS: nodes, lease. ARGV: node, token, lease ms.
/// Returns {1 held | 2 taken again | 0 someone else holds it, now,
/// {node, heartbeat, ...}}.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        NOW,
        "local holder = redis.call('GET', KEYS[2])
local lease = 1
if holder == false then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  lease = 2
elseif holder == ARGV[2] then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  return {0, now, {}}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {lease, now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}",
    ])
});

/// Counts a device of a user on a node, unless the user has `max` on the
/// nodes alive already. KEYS: devices:<user>, users:<node>.
/// ARGV: node, max, user, dead nodes... Returns 1 if counted, else 0.
pub static CONNECT: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        ALIVE,
        "local counts = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #counts, 2 do
  if alive(counts[i], 4) then total = total + tonumber(counts[i + 1]) end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[2], ARGV[3])
return 1",
    ])
});

/// Uncounts a device; the user's last device on the nodes alive leaving
/// sets `seen`. KEYS: devices:<user>, users:<node>, seen:<user>.
/// ARGV: node, user, dead nodes...
pub static DISCONNECT: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        NOW,
        ALIVE,
        "local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n > 0 then return n end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if alive(f, 3) then return 0 end
end
redis.call('SET', KEYS[3], now)
return 0",
    ])
});

/// Forgets (a batch of) the devices of a node that stopped beating, and
/// the node once none is left; users left with no device alive get the
/// node's last heartbeat as `seen`. Unless `force`, a node that beat
/// again meanwhile is left alone. KEYS: users:<node>, nodes.
/// ARGV: node, key prefix, ttl ms, force (0/1), dead nodes (this one too)...
/// Returns 1 when the node is gone, 0 if more is left, -1 if it is alive.
pub static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        NOW,
        ALIVE,
        "local beat = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if ARGV[4] == '0' and beat >= now - tonumber(ARGV[3]) then return -1 end
for _, u in ipairs(redis.call('SPOP', KEYS[1], 500)) do
  local devices = ARGV[2] .. 'devices:' .. u
  redis.call('HDEL', devices, ARGV[1])
  local online = false
  for _, f in ipairs(redis.call('HKEYS', devices)) do
    if alive(f, 5) then online = true end
  end
  if not online and beat > 0 then
    local seen = ARGV[2] .. 'seen:' .. u
    if tonumber(redis.call('GET', seen) or '0') < beat then redis.call('SET', seen, beat) end
  end
end
if redis.call('SCARD', KEYS[1]) > 0 then return 0 end
if ARGV[4] == '0' then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1",
    ])
});

/// Takes one send from a GCRA bucket. KEYS: quota:send:<user>.
/// ARGV: ms per send, ms of burst tolerance. Returns 1 if allowed.
pub static TAKE_SEND: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        NOW,
        "local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - tonumber(ARGV[2]) > now then return 0 end
tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1000)
return 1",
    ])
});

/// Counts one event in a window that starts with its first event.
/// KEYS: tally:<...>. ARGV: window ms. Returns {count, ms left}.
pub static WINDOW_COUNT: LazyLock<Script> = LazyLock::new(|| {
    script(&["local n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if n == 1 or left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {n, left}"])
});

/// A window's count and the ms left in it ({0, 0} if none is open).
/// KEYS: tally:<...>.
pub static WINDOW_PEEK: LazyLock<Script> = LazyLock::new(|| {
    script(&["local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = redis.call('PTTL', KEYS[1])
if left < 0 then return {0, 0} end
return {n, left}"])
});

/// Takes back one event of a window still open (an ended window is not
/// made again, and a count never goes below 0). KEYS: tally:<...>.
pub static WINDOW_UNCOUNT: LazyLock<Script> = LazyLock::new(|| {
    script(&["local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0"])
});

/// Claims an idempotency key: sets it if it is free, else returns what it
/// holds. KEYS: send:<key>. ARGV: value, ttl ms.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(&["local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false"])
});

/// Replaces a key's value if it still is `expected` (empty: deletes it).
/// KEYS: the key. ARGV: expected, new value or '', ttl ms.
pub static SWAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        &["if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1"],
    )
});
