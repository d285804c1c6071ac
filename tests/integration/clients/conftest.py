"""Fixtures for the direct-tier tests: settings for the real broker and an independent reader."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from alpha_streaming import RedpandaSettings

ReadAll = Callable[[str], Awaitable[list[ConsumerRecord]]]


@pytest.fixture
def settings(kafka_bootstrap: str) -> RedpandaSettings:
    return RedpandaSettings(bootstrap_servers=kafka_bootstrap, client_id="direct-tier-tests")


@pytest.fixture
def read_all(kafka_bootstrap: str) -> ReadAll:
    """Every record of a topic, read with a plain aiokafka consumer (no group, no commits)."""

    async def read(topic: str) -> list[ConsumerRecord]:
        # Without a group id, aiokafka assigns itself every partition of the topic.
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            records: list[ConsumerRecord] = []
            async with asyncio.timeout(30):
                for _ in range(600):
                    if consumer.assignment():
                        break
                    await asyncio.sleep(0.05)
                partitions = sorted(consumer.assignment())
                ends = await consumer.end_offsets(partitions)
                while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                    batch = await consumer.getmany(timeout_ms=500)
                    for recs in batch.values():
                        records.extend(recs)
            return records
        finally:
            await consumer.stop()

    return read
