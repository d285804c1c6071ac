"""Exactly-once consume → produce on the real Kafka: outputs and offsets in one transaction.

Every output is counted by a `read_committed` reader (aiokafka, and kcat as an independent one);
a `read_uncommitted` reader shows that aborted data really was written, then discarded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as ak
from aiokafka.admin import AIOKafkaAdminClient
from faststream import FastStream
from faststream.kafka import KafkaBroker

from alpha_streaming._broker import raw_producer
from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._settings import ConsumerSettings, RedpandaSettings
from alpha_streaming._topics import dlq_topic
from middlewares._retry import Budget, RetryPolicy
from middlewares._tier import EnhancedTier
from tests.support import event, eventually, lag_drains, send

NewTopic = Callable[..., Awaitable[str]]
FAST = Budget(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)


def eos_tier(name: str, instance: str, *, every: int = 20, interval_s: float = 0.2) -> EnhancedTier:
    return EnhancedTier(
        name,
        metrics=False,
        policy=RetryPolicy(default=FAST, rules={}, redelivery_delay_s=0.1),
        consumer=ConsumerSettings(commit_every=every, commit_interval_s=interval_s),
        processing_guarantee="exactly_once",
        instance_id=instance,
    )


async def serve(tier: EnhancedTier, broker: KafkaBroker) -> FastStream:
    app = tier.install(FastStream(broker, logger=None))
    await app.start()
    return app


async def read_all(bootstrap: str, topic: str, *, isolation: str = "read_committed") -> list[Any]:
    """Every record of `topic` up to its end (the last stable offset for read_committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        async with asyncio.timeout(30):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


def numbers(records: list[Any]) -> Counter[Any]:
    return Counter(EventEnvelope.from_bytes(r.value).data.get("n") for r in records)


async def test_each_input_has_exactly_one_committed_output_and_a_poison_input_one_dlq_record(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    source = await new_topic(partitions=3, prefix="eos.in")
    out = await new_topic(partitions=3, prefix="eos.out")
    group, n, poison = unique("g"), 300, 137
    tier = eos_tier("eos-it", unique("i"))
    broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap), logger=None)
    runs: Counter[int] = Counter()

    @broker.subscriber(source, group_id=group, auto_offset_reset="earliest")
    @broker.publisher(out)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        runs[body["n"]] += 1
        if body["n"] == poison:
            await broker.publish({"n": -1, "partial": True}, out)  # into the transaction, then fail
            raise ValueError("poison input")
        return {"n": body["n"]}

    await send(kafka_bootstrap, source, *((event(i), i % 3) for i in range(n)))
    app = await serve(tier, broker)
    try:
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, source)
    finally:
        await app.stop()
    assert lag == 0
    committed = numbers(await read_all(kafka_bootstrap, out))
    assert committed == Counter(i for i in range(n) if i != poison), "one output per input, none for poison"
    letters = await read_all(kafka_bootstrap, dlq_topic(source))
    assert [EventEnvelope.from_bytes(r.value).data["n"] for r in letters] == [poison]
    assert tier.transactions is not None and tier.transactions.aborts >= 1
    # The aborted batch was written (read_uncommitted sees it) and redone.
    uncommitted = numbers(await read_all(kafka_bootstrap, out, isolation="read_uncommitted"))
    assert uncommitted[-1] >= 1 and sum(uncommitted.values()) > n - 1
    if shutil.which("kcat") is None and os.environ.get("CI") == "true":
        pytest.fail("kcat (Debian package `kcat`) is the independent read_committed reader; install it")
    if shutil.which("kcat"):  # an independent read_committed reader
        kcat = await asyncio.create_subprocess_exec(
            "kcat", "-b", kafka_bootstrap, "-C", "-t", out, "-e", "-q", "-f", "%s\n",
            "-X", "isolation.level=read_committed", stdout=subprocess.PIPE,
        )  # fmt: skip
        stdout, _ = await asyncio.wait_for(kcat.communicate(), 60)
        assert kcat.returncode == 0
        bodies = [json.loads(line)["data"]["n"] for line in stdout.decode().splitlines() if line]
        assert Counter(bodies) == committed


async def test_a_failed_commit_aborts_the_batch_and_redoes_it_without_doubles(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    source = await new_topic(partitions=2, prefix="eos.in")
    out = await new_topic(partitions=2, prefix="eos.out")
    group, n = unique("g"), 200
    tier = eos_tier("eos-it", unique("i"))
    broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap), logger=None)
    runs: Counter[int] = Counter()

    @broker.subscriber(source, group_id=group, auto_offset_reset="earliest")
    @broker.publisher(out)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        runs[body["n"]] += 1
        return {"n": body["n"]}

    await send(kafka_bootstrap, source, *((event(i), i % 2) for i in range(n)))
    app = await serve(tier, broker)
    try:
        producer = raw_producer(broker)
        real_commit = producer.commit_transaction
        failures: list[int] = []

        async def commit_failing_twice() -> None:
            if len(failures) < 2:
                failures.append(1)
                raise ak.KafkaConnectionError("injected: connection lost at commit")
            await real_commit()

        producer.commit_transaction = commit_failing_twice  # type: ignore[method-assign]
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, source)
    finally:
        await app.stop()
    assert lag == 0
    assert tier.transactions is not None and tier.transactions.aborts == 2
    assert sum(runs.values()) > n, "the aborted batches were processed again"
    assert numbers(await read_all(kafka_bootstrap, out)) == Counter(range(n)), "nothing lost, nothing doubled"


async def test_a_handler_outliving_the_transaction_deadline_is_redone_without_doubles(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    """transaction_timeout_ms shorter than one slow handler run: the tier aborts the transaction at
    DEADLINE_SHARE of it (before Kafka would fence the producer), the slow record and its batch are
    redone into the next transaction; the aborted partial output never becomes visible."""
    source, out = await new_topic(prefix="eos.in"), await new_topic(prefix="eos.out")
    group, n, slow = unique("g"), 40, 17
    timeout_ms = 3_000
    tier = eos_tier("eos-deadline", unique("i"))
    broker = tier.broker(
        RedpandaSettings(bootstrap_servers=kafka_bootstrap), logger=None, transaction_timeout_ms=timeout_ms
    )
    runs: Counter[int] = Counter()

    @broker.subscriber(source, group_id=group, auto_offset_reset="earliest")
    @broker.publisher(out)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        runs[body["n"]] += 1
        if body["n"] == slow and runs[slow] == 1:
            await broker.publish({"n": -1, "partial": True}, out)  # into the transaction
            await asyncio.sleep(timeout_ms / 1000)  # past the deadline (half the timeout)
        return {"n": body["n"]}

    await send(kafka_bootstrap, source, *((event(i), 0) for i in range(n)))
    app = await serve(tier, broker)
    try:
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, source)
    finally:
        await app.stop()
    assert lag == 0
    assert tier.transactions is not None and tier.transactions.aborts >= 1
    assert not tier.transactions.fenced, "aborted by the tier in time: the producer lives on"
    assert runs[slow] == 2, "the slow record was redone once"
    assert numbers(await read_all(kafka_bootstrap, out)) == Counter(range(n)), "nothing lost, nothing doubled"
    assert numbers(await read_all(kafka_bootstrap, out, isolation="read_uncommitted"))[-1] == 1


async def test_with_dedup_an_aborted_batch_is_redone_and_a_later_duplicate_is_skipped(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    """Exactly-once and Redis dedup together: a done marker is written only once the transaction
    committed, so the records that succeeded in an aborted batch are redone (a marker written at
    handler end would skip them and lose their outputs); a duplicate of a committed event (same
    id, later offset) is recognised and not run."""
    source, out = await new_topic(prefix="eos.in"), await new_topic(prefix="eos.out")
    group, n, failing = unique("g"), 60, 20
    tier = EnhancedTier(
        "eos-dedup",
        redis=redis_client,
        dedup_namespace=unique("ns"),
        metrics=False,
        policy=RetryPolicy(default=FAST, rules={}, redelivery_delay_s=0.1),
        consumer=ConsumerSettings(commit_every=n, commit_interval_s=5),  # one batch holds them all
        processing_guarantee="exactly_once",
        instance_id=unique("i"),
    )
    broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap), logger=None)
    runs: Counter[int] = Counter()

    @broker.subscriber(source, group_id=group, auto_offset_reset="earliest")
    @broker.publisher(out)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        runs[body["n"]] += 1
        if body["n"] == failing and runs[failing] == 1:
            raise ValueError("fails once: its batch is aborted")
        return {"n": body["n"]}

    events = [event(i) for i in range(n)]
    await send(kafka_bootstrap, source, *((e, 0) for e in events))
    app = await serve(tier, broker)
    try:
        assert await lag_drains(kafka_admin, kafka_bootstrap, group, source) == 0
        first_runs = sum(runs.values())
        await send(kafka_bootstrap, source, (events[7], 0))  # a duplicate of a committed event
        assert await lag_drains(kafka_admin, kafka_bootstrap, group, source) == 0
        assert tier.dedup is not None
        markers = {await tier.dedup.marker(group, e.id) for e in events}
    finally:
        await app.stop()
    assert tier.transactions is not None and tier.transactions.aborts >= 1
    assert first_runs > n + 1, "the records that succeeded in the aborted batch ran again"
    assert sum(runs.values()) == first_runs, "the duplicate did not run"
    assert markers == {"done"}
    assert numbers(await read_all(kafka_bootstrap, out)) == Counter(range(n)), "one output each"


async def test_a_restarted_instance_fences_its_zombie_whose_writes_never_appear(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    source, out = await new_topic(prefix="eos.in"), await new_topic(prefix="eos.out")
    group, instance = unique("g"), unique("same")
    config = RedpandaSettings(bootstrap_servers=kafka_bootstrap)
    # The old instance commits only when told (no count or interval reached during the test).
    old = eos_tier("eos-fence", instance, every=10_000, interval_s=600)
    old_broker = old.broker(config, logger=None)
    frozen, thaw = asyncio.Event(), asyncio.Event()

    @old_broker.subscriber(source, group_id=group, auto_offset_reset="earliest")
    @old_broker.publisher(out)
    async def old_handle(body: dict[str, Any]) -> dict[str, Any]:
        if body["n"] == 10:
            frozen.set()
            await thaw.wait()  # a paused zombie, mid-transaction
        return {"n": body["n"]}

    await send(kafka_bootstrap, source, *((event(i), 0) for i in range(11)))
    old_app = await serve(old, old_broker)
    new_app = None
    try:
        await frozen.wait()

        async def ten_outputs_in_the_open_transaction() -> bool:
            # Sent without awaiting their acknowledgements: on the broker soon after, uncommitted.
            return numbers(await read_all(kafka_bootstrap, out, isolation="read_uncommitted")) == Counter(
                range(10)
            )

        await eventually(
            ten_outputs_in_the_open_transaction, "the zombie's open transaction holds ten outputs"
        )
        # The replacement: same service and instance id, hence the same transactional id.
        new = eos_tier("eos-fence", instance)
        new_broker = new.broker(config, logger=None)
        other_in, other_group = await new_topic(prefix="eos.in"), unique("g")

        @new_broker.subscriber(other_in, group_id=other_group, auto_offset_reset="earliest")
        @new_broker.publisher(out)
        async def new_handle(body: dict[str, Any]) -> dict[str, Any]:
            return {"n": 1000 + body["n"]}

        await send(kafka_bootstrap, other_in, (event(1), 0))
        new_app = await serve(new, new_broker)
        assert await lag_drains(kafka_admin, kafka_bootstrap, other_group, other_in) == 0
        thaw.set()
        [window] = old.routing.commits.windows()
        with pytest.raises(ak.KafkaError):
            await window.flush()
        assert old.transactions is not None and old.transactions.fenced
    finally:
        thaw.set()
        if new_app is not None:
            await new_app.stop()
        await old_app.stop()
    assert numbers(await read_all(kafka_bootstrap, out)) == Counter([1001]), "only the new instance's output"
    committed = await kafka_admin.list_consumer_group_offsets(group)
    assert all(meta.offset <= 0 for meta in committed.values()), "the zombie committed no offsets"


def test_an_unknown_guarantee_is_refused_naming_the_allowed_values() -> None:
    from alpha_streaming._errors import ConfigError

    with pytest.raises(ConfigError, match="'at_least_once', 'exactly_once'"):
        EnhancedTier("x", processing_guarantee="exactly-once")
