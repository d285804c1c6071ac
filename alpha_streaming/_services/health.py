"""Health and readiness of running services, measured from the live Kafka/Redis clients.

Liveness asks "is the process still doing its job": every consume loop is running.
Readiness asks "should traffic and deploys count on it": the broker answers, Redis answers
(when the service uses it), every subscriber has partitions and has polled recently.
Numbers come from the clients themselves (aiokafka's assignment and last-poll timestamps,
a PING to Redis, a metadata request to Kafka), never from counters kept on the side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faststream.kafka import KafkaBroker

from alpha_streaming._admin import broker_admin, topic_partitions
from alpha_streaming._topic_check import bootstrap_hint

if TYPE_CHECKING:
    from alpha_streaming._services.activity import ActivityProbe
    from middlewares._lease_scripts import RedisClient

__all__ = (
    "DEFAULT_STALE_AFTER_S",
    "HealthReport",
    "ServiceHealth",
    "SubscriberHealth",
    "probe_broker",
)

# aiokafka's default max_poll_interval: a consumer silent for longer has left its group anyway.
DEFAULT_STALE_AFTER_S = 300.0
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class SubscriberHealth:
    """One subscriber's consumer: its partitions, its loop, and how fresh its data is."""

    topics: tuple[str, ...]
    group_id: str | None
    partitions: tuple[str, ...]
    consuming: bool
    seconds_since_poll: float | None
    seconds_since_message: float | None
    restarts: int = 0

    def problems(self, stale_after_s: float) -> list[str]:
        where = f"subscriber {','.join(self.topics)} (group {self.group_id})"
        found = []
        if not self.consuming:
            found.append(f"{where}: consume loop is not running")
        if not self.partitions:
            found.append(f"{where}: no partitions assigned (topics missing, or group still joining)")
        freshest = min(
            (s for s in (self.seconds_since_poll, self.seconds_since_message) if s is not None),
            default=None,
        )
        if self.partitions and freshest is not None and freshest > stale_after_s:
            found.append(f"{where}: no poll for {freshest:.0f}s (limit {stale_after_s:.0f}s)")
        return found


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """A snapshot of one service (a built service or a plain FastStream app)."""

    name: str
    started: bool
    broker_connected: bool
    redis_reachable: bool | None  # None: the service does not use Redis
    subscribers: tuple[SubscriberHealth, ...] = ()
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    missing_topics: tuple[str, ...] = ()
    """Topics the service consumes or publishes to that the cluster does not have."""

    @property
    def live(self) -> bool:
        return not self.started or all(s.consuming for s in self.subscribers)

    @property
    def problems(self) -> list[str]:
        if not self.started:
            return [f"{self.name}: not started"]
        found = [] if self.broker_connected else [f"{self.name}: Kafka broker not reachable"]
        if self.redis_reachable is False:
            found.append(f"{self.name}: Redis not reachable (PING failed)")
        if self.missing_topics:
            found.append(
                f"{self.name}: topic(s) {', '.join(self.missing_topics)} do not exist; "
                f"create them with: {bootstrap_hint(self.missing_topics)}"
            )
        for sub in self.subscribers:
            found.extend(f"{self.name}: {p}" for p in sub.problems(self.stale_after_s))
        return found

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "live": self.live,
            "ready": self.ready,
            "started": self.started,
            "broker_connected": self.broker_connected,
            "redis_reachable": self.redis_reachable,
            "problems": self.problems,
            "missing_topics": list(self.missing_topics),
            "subscribers": [
                {
                    "topics": list(s.topics),
                    "group_id": s.group_id,
                    "partitions": list(s.partitions),
                    "consuming": s.consuming,
                    "seconds_since_poll": s.seconds_since_poll,
                    "seconds_since_message": s.seconds_since_message,
                    "restarts": s.restarts,
                }
                for s in self.subscribers
            ],
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every service of a process; live/ready only when each one is."""

    services: tuple[ServiceHealth, ...] = field(default_factory=tuple)
    stopping: bool = False

    @property
    def live(self) -> bool:
        return all(s.live for s in self.services)

    @property
    def ready(self) -> bool:
        # A process that is shutting down must stop receiving new work at once.
        return not self.stopping and all(s.ready for s in self.services)

    def to_dict(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "ready": self.ready,
            "stopping": self.stopping,
            "services": [s.to_dict() for s in self.services],
        }


async def redis_answers(redis: RedisClient) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            return bool(await redis.ping())
    except Exception:  # any failure to answer means "not reachable"; the reason is not health's job
        return False


def subscriber_health(
    sub: Any, activity: ActivityProbe | None, restarts: Mapping[int, int]
) -> SubscriberHealth:
    """Read a FastStream Kafka subscriber's consumer(s) without touching the network."""
    consumers = [c for c in (getattr(sub, "consumer_subgroup", None) or [sub.consumer]) if c is not None]
    partitions: list[str] = []
    polls: list[int] = []
    for consumer in consumers:
        for tp in sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition)):
            partitions.append(f"{tp.topic}:{tp.partition}")
            stamp = consumer.last_poll_timestamp(tp)
            if stamp is not None:
                polls.append(stamp)
    topics = tuple(sub.topic_names)
    # A running subscriber with handlers has a consume task; "dead" means every one has ended.
    # (No task at all only happens in FastStream's in-memory test broker.)
    tasks = list(getattr(sub, "tasks", ()))
    return SubscriberHealth(
        topics=topics,
        group_id=sub.group_id,
        partitions=tuple(partitions),
        consuming=not tasks or any(not t.done() for t in tasks),
        # aiokafka stamps the wall clock (ms) on every fetch response, empty ones included.
        seconds_since_poll=round(max(0.0, time.time() - max(polls) / 1000), 3) if polls else None,
        seconds_since_message=activity.seconds_since(list(topics)) if activity else None,
        restarts=restarts.get(id(sub), 0),
    )


async def probe_broker(
    name: str,
    broker: KafkaBroker,
    *,
    started: bool,
    redis: RedisClient | None = None,
    activity: ActivityProbe | None = None,
    restarts: Mapping[int, int] | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    network: bool = True,
) -> ServiceHealth:
    """Health of one broker's subscribers, plus a Kafka metadata request and a Redis PING.

    `network=False` skips both round trips (liveness): the broker then counts as connected
    while it runs, and Redis as unknown.
    """
    if not started:
        return ServiceHealth(name, False, False, None, stale_after_s=stale_after_s)
    missing: tuple[str, ...] = ()
    if network:
        connected, reachable, missing = await asyncio.gather(
            broker.ping(PROBE_TIMEOUT_S),
            redis_answers(redis) if redis is not None else _none(),
            missing_topics(broker),
        )
    else:
        connected, reachable = broker.running, None
    subs = tuple(subscriber_health(s, activity, restarts or {}) for s in broker.subscribers)
    return ServiceHealth(name, True, connected, reachable, subs, stale_after_s, missing)


async def missing_topics(broker: KafkaBroker) -> tuple[str, ...]:
    """Subscribed and published topics absent from the cluster; () when that cannot be asked."""
    subscribed = [t for s in broker.subscribers for t in getattr(s, "topic_names", ())]
    published = [topic for p in broker.publishers if (topic := getattr(p, "topic", None))]
    names = list(dict.fromkeys([*subscribed, *published]))
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            existing = await topic_partitions(broker_admin(broker), names)
    except Exception:  # not connected, or Kafka down: `broker_connected` reports that
        return ()
    return tuple(t for t in names if t not in existing)


async def _none() -> None:
    return None
