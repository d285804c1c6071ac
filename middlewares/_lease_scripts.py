"""The Redis side of dedup: four small Lua scripts, each one atomic round trip for many keys.

One key per event: absent (never seen), an owner token (a lease: in flight), or `done`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.commands.core import AsyncScript

RedisClient: TypeAlias = "Redis | RedisCluster"
"""One Redis server or a Redis Cluster: dedup keys are hash-tagged per group, one slot per call."""

__all__ = ("CLAIMED", "DONE", "HELD", "RedisClient", "register_lease_scripts")

# What `claim` answers per key: held by another owner, now ours, already done.
HELD, CLAIMED, DONE = 0, 1, 2

# KEYS: event keys. ARGV: owner token, lease ms. A key we already own counts as claimed: a
# retry of the same message whose release could not reach Redis claims again.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if not value then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  elseif value == 'done' then
    out[i] = 2
  elseif value == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# KEYS: event keys. ARGV: owner token, done ms. An expired lease nobody took is marked too.
_MARK_DONE = """
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if (not value) or value == ARGV[1] then
    redis.call('SET', key, 'done', 'PX', ARGV[2])
  end
end
return 1
"""
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 1
"""
_RENEW = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 1
"""


def register_lease_scripts(redis: RedisClient) -> tuple[AsyncScript, AsyncScript, AsyncScript, AsyncScript]:
    """(claim, mark_done, release, renew), each called as `script(keys, args)`."""
    return (
        redis.register_script(_CLAIM),
        redis.register_script(_MARK_DONE),
        redis.register_script(_RELEASE),
        redis.register_script(_RENEW),
    )
