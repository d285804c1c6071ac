"""The Redis side of dedup: one Lua script runs the claims, done markers and releases of many events.

Per consumer group (all keys share the group's hash tag `{<namespace>:<group>}`, one Cluster slot):
- `<prefix><event id>`: the lease of an event in flight (its owner token; short TTL). Before the
  compact layout this key also held `done` for a week; claim still reads that as done.
- `<prefix>#<bucket>:<epoch>:<shard>`: done markers, 16-byte ids as fields of small hashes.
  Time is cut into buckets of `span` ms (half the window); a bucket's hashes expire as a
  whole one window after the bucket ends. A bucket starts with enough shards for the previous
  bucket's count at ~64 ids per hash (under Redis's default `hash-max-listpack-entries` 128, so
  each hash stays a compact listpack); once one of its hashes holds 96, a new epoch with 4x the
  shards takes the next ids. An id's shard is its last 4 bytes modulo the epoch's shard count.
- `<prefix>#m`: per bucket the epochs' shard counts (`s<bucket>` = "64,256"); it expires two
  buckets after the window once writes stop.
Bucket keys are built inside the script from the prefix: they share the declared keys' slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.commands.core import AsyncScript

RedisClient: TypeAlias = "Redis | RedisCluster"
"""One Redis server or a Redis Cluster: dedup keys are hash-tagged per group, one slot per call."""

__all__ = (
    "CLAIM",
    "CLAIMED",
    "DONE",
    "HELD",
    "MARK_DONE",
    "PEEK",
    "RELEASE",
    "RedisClient",
    "register_lease_scripts",
)

# What a claim answers per event: held by another owner, now ours, already done.
HELD, CLAIMED, DONE = 0, 1, 2
# Operation codes of the batched script; a peek answers like a claim that takes nothing.
CLAIM, MARK_DONE, RELEASE, PEEK = "c", "d", "r", "p"

# KEYS[1]: the group's meta hash (the lease keys are built here: `_dedup_store.lease_key`).
# ARGV: now ms, lease ms, window ms, bucket span ms, bucket key prefix, the 16-byte ids of all
# operations end to end, their event ids end to end and those ids' lengths ("36,36,..."), then per
# request (code, owner token, number of operations): packing costs the client per argument, so a
# 500-event call has 11 arguments, not 2,000. Answers one integer per operation (claims:
# HELD/CLAIMED/DONE).
_DEDUP = """
local unpack = unpack or table.unpack
local now, lease, window, span = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local base, meta = ARGV[5], KEYS[1]
local FILL, FULL, GROWTH, FIRST = 64, 96, 4, 4
local current = math.floor(now / span)
local oldest = math.floor((now - window) / span)

local function parse(spec)
  local counts = {}
  for c in string.gmatch(spec, '%d+') do counts[#counts + 1] = tonumber(c) end
  return counts
end
local heads = {}  -- 'base<bucket>:<epoch>:' per bucket and epoch, built once per call
local function head(b, epoch)
  local k = b * 64 + epoch
  local h = heads[k]
  if not h then h = base .. b .. ':' .. epoch .. ':'; heads[k] = h end
  return h
end
local function shard(id, count)
  local a, b, c, d = string.byte(id, 13, 16)
  return ((a * 16777216 + b * 65536 + c * 256 + d) % count)
end
local function bucket_key(b, epoch, count, id)
  return head(b, epoch) .. shard(id, count)
end

local specs = nil  -- bucket -> epochs' shard counts, over the window (+1 for a writer's clock ahead)
local function is_done(id)
  if not specs then
    specs = {}
    local fields = {}
    for b = oldest, current + 1 do fields[#fields + 1] = 's' .. b end
    for i, spec in ipairs(redis.call('HMGET', meta, unpack(fields))) do
      if spec then specs[oldest + i - 1] = parse(spec) end
    end
  end
  for b = current + 1, oldest, -1 do
    local epochs = specs[b]
    if epochs then
      for e = #epochs, 1, -1 do
        if redis.call('HEXISTS', bucket_key(b, e, epochs[e], id), id) == 1 then return true end
      end
    end
  end
  return false
end

local w = nil  -- the current bucket, as written by this call
local sizes = {}  -- hash key -> its number of ids, once this call read or wrote it
local function write(id)
  local cur = current
  if not w then
    local spec = redis.call('HGET', meta, 's' .. cur)
    if not spec then
      -- A new bucket: as many shards as the previous bucket's ids need (estimated from its last
      -- epoch's first hash; the epochs before it were full), and buckets that left the window go.
      local previous = 0
      local last = redis.call('HGET', meta, 's' .. (current - 1))
      if last then
        local counts = parse(last)
        for e = 1, #counts - 1 do previous = previous + counts[e] * FILL end
        local sample = base .. (current - 1) .. ':' .. #counts .. ':0'
        previous = previous + redis.call('HLEN', sample) * counts[#counts]
      end
      local count = FIRST
      while count * FILL < previous do count = count * GROWTH end
      spec = tostring(count)
      for _, field in ipairs(redis.call('HKEYS', meta)) do
        local b = tonumber(string.sub(field, 2))
        if b and b < oldest then redis.call('HDEL', meta, field) end
      end
      redis.call('HSET', meta, 's' .. cur, spec)
      redis.call('PEXPIRE', meta, string.format('%d', window + 2 * span))
      specs = nil
    end
    local epochs = parse(spec)
    w = {spec = spec, epoch = #epochs, count = epochs[#epochs]}
  end
  local key = bucket_key(current, w.epoch, w.count, id)
  local size = sizes[key] or redis.call('HLEN', key)
  if size >= FULL then
    -- This hash nears the listpack limit: the bucket's next ids go to 4x as many hashes.
    w.count, w.epoch = w.count * GROWTH, w.epoch + 1
    w.spec = w.spec .. ',' .. w.count
    redis.call('HSET', meta, 's' .. cur, w.spec)
    specs = nil
    key = bucket_key(current, w.epoch, w.count, id)
    size = sizes[key] or redis.call('HLEN', key)
  end
  local added = redis.call('HSET', key, id, '')
  if added == 1 and size == 0 then
    redis.call('PEXPIRE', key, string.format('%d', (current + 1) * span + window - now))
  end
  sizes[key] = size + added
end

local prefix = string.sub(base, 1, -2)  -- without the marker sign
local lengths = string.gmatch(ARGV[8], '%d+')
local out, ids, events, i, at = {}, ARGV[6], ARGV[7], 0, 1
for r = 9, #ARGV, 3 do
 local op, owner = ARGV[r], ARGV[r + 1]
 for _ = 1, tonumber(ARGV[r + 2]) do
  i = i + 1
  local id, length = string.sub(ids, 16 * i - 15, 16 * i), tonumber(lengths())
  local event = string.sub(events, at, at + length - 1)
  at = at + length
  local key = prefix .. (string.byte(event, 1) == 35 and '#' or '') .. event  -- 35: '#'
  local value = redis.call('GET', key)
  if op == 'c' then
    if not value then
      if is_done(id) then out[i] = 2 else
        redis.call('SET', key, owner, 'PX', lease)
        out[i] = 1
      end
    elseif value == owner then
      redis.call('PEXPIRE', key, lease)
      out[i] = 1
    elseif value == 'done' then
      out[i] = 2
    else
      out[i] = 0
    end
  elseif op == 'p' then
    if value == 'done' or (not value and is_done(id)) then out[i] = 2
    elseif value then out[i] = 0 else out[i] = 1 end
  else
    if value == owner then redis.call('DEL', key) end
    -- Done: also when the lease expired and nobody took it; never over another owner's lease.
    if op == 'd' and (value == owner or not value) then write(id) end
    out[i] = 1
  end
 end
end
return out
"""
# KEYS: lease keys. ARGV: lease ms, then one owner token per key.
_RENEW = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then redis.call('PEXPIRE', key, ARGV[1]) end
end
return 1
"""


def register_lease_scripts(redis: RedisClient) -> tuple[AsyncScript, AsyncScript]:
    """(dedup, renew), each called as `script(keys, args)`."""
    return redis.register_script(_DEDUP), redis.register_script(_RENEW)
