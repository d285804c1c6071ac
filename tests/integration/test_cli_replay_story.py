"""End to end: a bug dead-letters an event, the bug is fixed, `dlq replay` runs, the event is
processed exactly once, and replaying it again is suppressed by dedup's done marker.

The CLI runs as the installed console script in its own process, as an operator would run it.
Runs the enhanced tier (`EnhancedTier`: `tier.broker()`, `tier.install(app)`) on a real
KafkaBroker against the real Kafka and Redis.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream import FastStream
from faststream.kafka import Topic

from alpha_streaming import EventEnvelope, RedpandaSettings
from alpha_streaming._errors import PermanentError
from middlewares import CurrentEnvelope, EnhancedTier
from tests.conftest import NewTopicFactory
from tests.support import end_offset, eventually

DEADLINE_S = 60.0
CONSOLE_SCRIPT = Path(sys.executable).parent / "alpha-streaming"


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    meta = offsets.get(TopicPartition(topic, 0))
    return -1 if meta is None else int(meta.offset)


async def alpha_streaming(*args: str) -> str:
    """Run the installed console script (a separate process: the service keeps running here)."""
    process = await asyncio.create_subprocess_exec(
        str(CONSOLE_SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE_S)
    assert process.returncode == 0, (
        f"alpha-streaming {' '.join(args)} -> {process.returncode}\n{out!r}\n{err!r}"
    )
    return out.decode()


async def replay(kafka_bootstrap: str, dlq: str, group: str) -> str:
    return await alpha_streaming("dlq", "replay", dlq, "--group", group, "-b", kafka_bootstrap)


async def test_fix_the_bug_replay_and_the_event_is_processed_once(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopicFactory,
    unique: Callable[[str], str],
) -> None:
    source = await new_topic(partitions=1, prefix="paper.story")
    dlq = await new_topic(partitions=1, name=f"{source}.dlq")
    service, group = unique("story-svc"), unique("story-group")
    bug = {"present": True}
    calls: list[str] = []
    processed: list[str] = []

    tier = EnhancedTier(service, redis=redis_client, metrics=False)
    broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap))

    @broker.subscriber(Topic(source, declare=False), group_id=group, auto_offset_reset="earliest")
    async def handle(payload: dict[str, Any], envelope: CurrentEnvelope) -> None:
        calls.append(envelope.id)
        if bug["present"]:
            raise PermanentError(f"bug: cannot handle {payload}")
        processed.append(envelope.id)

    event = EventEnvelope.create(type="order.filled", data={"qty": "1.5"}, source="test", key="strat:7")
    app = tier.install(FastStream(broker))
    try:
        await app.start()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                source,
                key=b"strat:7",
                value=event.to_bytes(),
                headers=[(k, v.encode()) for k, v in event.headers().items()],
            )
        finally:
            await producer.stop()

        # The bug dead-letters the event (permanent: no retries) and its offset is committed.
        async def dead_lettered() -> bool:
            return await end_offset(kafka_bootstrap, dlq) == 1 and (
                await committed(kafka_admin, group, source) == 1
            )

        await eventually(
            dead_lettered, "the event was dead-lettered and its offset committed", within_s=DEADLINE_S
        )
        assert calls == [event.id] and processed == []

        # `dlq inspect` reads the error routing's headers: the class and message of the bug.
        inspected = await alpha_streaming("dlq", "inspect", dlq, "--json", "-b", kafka_bootstrap)
        (row,) = [json.loads(line) for line in inspected.splitlines()]
        assert row["error"] == "alpha_streaming._errors.PermanentError"
        assert row["message"].startswith("bug: cannot handle")
        assert (row["original_topic"], row["original_offset"], row["key"]) == (source, 0, "strat:7")

        bug["present"] = False
        out = await replay(kafka_bootstrap, dlq, unique("replay"))
        assert "replayed 1" in out

        async def handled_replay() -> bool:
            return await committed(kafka_admin, group, source) == 2

        await eventually(handled_replay, "the replayed event was consumed and committed", within_s=DEADLINE_S)
        assert processed == [event.id]

        # Replaying the same DLQ record again (a fresh replay group) is suppressed by dedup.
        again = await replay(kafka_bootstrap, dlq, unique("replay"))
        assert "replayed 1" in again

        async def handled_second_replay() -> bool:
            return await committed(kafka_admin, group, source) == 3

        await eventually(
            handled_second_replay, "the second replay was consumed and committed", within_s=DEADLINE_S
        )
        assert processed == [event.id], "the event was processed more than once"
        assert calls == [event.id, event.id], "the duplicate reached the handler"
    finally:
        await app.stop()  # drain, stop the broker, close the tier (the DLQ writer's own producer)
