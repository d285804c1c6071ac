"""Rebalance listeners of the direct consumer: the user's own, then commit and forget what moves away."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition

__all__ = ("ForgettingListener", "RebalanceListener")


class _Releases(Protocol):
    async def _release(self, revoked: Iterable[TopicPartition]) -> None: ...


class RebalanceListener(Protocol):
    """Called when the group moves partitions; both methods get sets of `TopicPartition`."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


class ForgettingListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """Calls the user's listener first (it may still commit revoked partitions), then the owner
    commits what `commit(record)` recorded for them (they still belong to this member) and forgets them."""

    def __init__(self, owner: _Releases, user: RebalanceListener | None) -> None:
        self._owner = owner
        self._user = user

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            if self._user is not None:
                result = self._user.on_partitions_revoked(revoked)
                if inspect.isawaitable(result):
                    await result
        finally:
            await self._owner._release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._user is not None:
            result = self._user.on_partitions_assigned(assigned)
            if inspect.isawaitable(result):
                await result
