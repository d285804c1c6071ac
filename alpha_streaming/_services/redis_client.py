"""The Redis client dedup and health use, made from `Settings` (one server or a Redis Cluster)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from alpha_streaming._settings import Settings

__all__ = ("redis_client",)


def redis_client(settings: Settings) -> Redis | RedisCluster:
    """`settings.redis_url` as a client; a cluster client when `settings.redis_cluster` is set.

    Dedup keys carry a hash tag per consumer group, so its scripts run on a cluster too.
    """
    if settings.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(settings.redis_url)
    from redis.asyncio import Redis

    return Redis.from_url(settings.redis_url)
