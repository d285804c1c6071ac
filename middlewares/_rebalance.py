"""Rebalance listeners of the enhanced tier: finish and commit the work of revoked partitions."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

if TYPE_CHECKING:
    from middlewares._error_routing import ErrorRoutingMiddleware
    from middlewares._pipeline import Pipeline

__all__ = ("Chained", "RevokeListener", "has_listener")

# How long a revoke waits for the records of the revoked partitions still in flight: well inside
# the rebalance timeout (aiokafka's default is the 10 s session timeout), past which the member
# would be dropped from the group and could commit nothing.
SETTLE_TIMEOUT_S = 3.0


class RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits the finished work of the partitions a rebalance takes from a consumer.

    aiokafka awaits `on_partitions_revoked` before the group reassigns anything and still accepts
    this member's commits there. The records of those partitions still in flight finish first
    (up to `SETTLE_TIMEOUT_S`); one still running after that is not committed: the new owner reads
    it again, and dedup skips it if it was done. A failed commit is logged: the new owner reads
    from the last commit (records repeated, none lost).
    """

    def __init__(self, routing: ErrorRoutingMiddleware, pipeline: Pipeline) -> None:
        self._routing = routing
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self._pipeline.settle(revoked, SETTLE_TIMEOUT_S)
            await self._routing.flush_partitions(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._pipeline.assigned(assigned)


def has_listener(listener: Any, wanted: Any) -> bool:
    """`listener` is `wanted` or chains it (a restarted app must not chain it again)."""
    return listener is wanted or (isinstance(listener, Chained) and wanted in listener.listeners)


class Chained(ConsumerRebalanceListener):  # type: ignore[misc]
    """The tier's listener first (commit what was done), then the user's own."""

    def __init__(self, *listeners: Any) -> None:
        self.listeners: tuple[Any, ...] = listeners

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for listener in self.listeners:
            if inspect.isawaitable(result := listener.on_partitions_revoked(revoked)):
                await result

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for listener in self.listeners:
            if inspect.isawaitable(result := listener.on_partitions_assigned(assigned)):
                await result
