"""The Redis client dedup and health use, made from `Settings` (one server or a Redis Cluster)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from alpha_streaming._settings import Settings

__all__ = ("redis_client",)


def _brief_retry() -> Retry:
    """One quick retry (a reset connection, a MOVED during failover). redis-py's default (10
    retries, backoff up to 1 s, a cluster re-discovery each) hides an outage inside one call for
    seconds; surfaced at once, it meets dedup's outage policy, which pauses and counts it."""
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1)


def redis_client(settings: Settings) -> Redis | RedisCluster:
    """`settings.redis_url` as a client; a cluster client when `settings.redis_cluster` is set.

    Dedup keys carry a hash tag per consumer group, so its scripts run on a cluster too.
    """
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(settings.redis_url, retry=_brief_retry())
    from redis.asyncio import Redis

    return Redis.from_url(settings.redis_url, retry=_brief_retry())
