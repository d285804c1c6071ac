"""Topic creation for the examples (auto-creation is off on the local broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from alpha_streaming import RedpandaSettings

__all__ = ("ensure_topics",)


async def ensure_topics(config: RedpandaSettings, topics: Iterable[str], *, partitions: int = 1) -> None:
    """Create the topics that do not exist yet and wait until the broker serves their metadata."""
    names = sorted(set(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers, client_id=config.client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            # "Already exists" (a concurrent run won the race) comes back as an error code in
            # the response, not an exception: fine, the topic is there either way.
            await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in missing]
            )
        for _ in range(200):
            described = await admin.describe_topics(names)
            if all(d.get("partitions") and not d.get("error_code") for d in described):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"topics {names} not visible in the broker's metadata after creation")
    finally:
        await admin.close()
