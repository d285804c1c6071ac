"""The `alpha-streaming` CLI against the real Kafka: bootstrap, DLQ inspect, DLQ replay.

The CLI runs in-process through typer's CliRunner on a worker thread (it calls `asyncio.run`
itself); DLQ records are written with a plain aiokafka producer and `DeadLetter(...).headers()`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner, Result

from alpha_streaming import RedpandaSettings, cli
from alpha_streaming._admin import connected_broker
from alpha_streaming._dlq import DeadLetter, DlqHeaders
from alpha_streaming._tools.dlq_reader import DlqEntry
from alpha_streaming._tools.dlq_replay import ReplayAction, replay_dlq
from tests.conftest import NewTopicFactory

runner = CliRunner()


async def run_cli(kafka_bootstrap: str, *args: str) -> Result:
    # The CLI calls asyncio.run(); a worker thread keeps it off the test's running loop.
    return await asyncio.to_thread(runner.invoke, cli.app, [*args, "--bootstrap-servers", kafka_bootstrap])


@dataclass(frozen=True)
class Sent:
    """A record as written to (or read back from) a topic."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(source: str, partition: int, offset: int, error: str = "orders.PriceError") -> DeadLetter:
    return DeadLetter(
        original_topic=source,
        original_partition=partition,
        original_offset=offset,
        original_timestamp_ms=1_700_000_000_000 + offset,
        consumer_group="risk.signals",
        exception_fqcn=error,
        exception_message=f"price must be positive (offset {offset})\nmore detail",
        stacktrace="Traceback (most recent call last): ...",
        attempts=3,
        service="risk-manager",
        failed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def original_headers(n: int) -> list[tuple[str, bytes]]:
    return [
        ("x-event-id", f"event-{n}-{uuid.uuid4().hex[:6]}".encode()),
        ("x-event-type", b"order.filled"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await client.start()
    yield client
    await client.stop()


async def write_dlq(
    producer: AIOKafkaProducer, dlq: str, records: Sequence[tuple[int, Sent, DeadLetter | None]]
) -> None:
    """`(dlq partition, original record, dead letter or None for a non-DLQ record)` in order."""
    for dlq_partition, original, letter in records:
        extra = letter.headers() if letter is not None else []
        await producer.send_and_wait(
            dlq,
            key=original.key,
            value=original.value,
            partition=dlq_partition,
            headers=[*original.headers, *extra],
        )


async def read_all(kafka_bootstrap: str, admin: AIOKafkaAdminClient, topic: str) -> list[Sent]:
    """Every record of `topic` (no group), partition by partition, in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        (described,) = await admin.describe_topics([topic])
        partitions = sorted(p["partition"] for p in described["partitions"])
        assert partitions, f"topic {topic} has no partitions in the metadata"
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[Sent]] = {p: [] for p in partitions}
        async with asyncio.timeout(30):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    out[tp.partition] += [
                        Sent(r.partition, r.key, r.value, [(k, bytes(v)) for k, v in r.headers])
                        for r in records
                    ]
        return [record for p in partitions for record in out[p]]
    finally:
        await consumer.stop()


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    }


async def dlq_pair(
    new_topic: NewTopicFactory, partitions: int, config: dict[str, str] | None = None
) -> tuple[str, str]:
    source = await new_topic(partitions=partitions, prefix="cli.src", config=config)
    dlq = await new_topic(partitions=partitions, name=f"{source}.dlq")
    return source, dlq


def replayed_headers(original: list[tuple[str, bytes]], count: int = 1) -> list[tuple[str, bytes]]:
    return [*original, (DlqHeaders.REPLAY_COUNT, str(count).encode())]


# --- topics bootstrap -----------------------------------------------------------------------


async def test_bootstrap_creates_topics_with_dlq_twins_and_is_idempotent(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = uuid.uuid4().hex[:10]
    explicit = f"cli.boot.{run}.explicit"
    from_service = f"cli.boot.{run}.service"
    (tmp_path / f"svc_{run}.py").write_text(f"class S:\n    topics = [{from_service!r}]\n\nservice = S()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [explicit, f"{explicit}.dlq", from_service, f"{from_service}.dlq"]
    args = ["topics", "bootstrap", "--topic", explicit, "--service", f"svc_{run}:service"]
    try:
        first = await run_cli(kafka_bootstrap, *args, "--partitions", "3", "--retention-ms", "3600000")
        assert first.exit_code == 0, first.output
        assert [line.split()[:2] for line in first.stdout.splitlines()[:4]] == [["created", n] for n in names]
        assert "4 topics: 4 created, 0 existed" in first.stdout

        described = {t["topic"]: len(t["partitions"]) for t in await kafka_admin.describe_topics(names)}
        assert described == dict.fromkeys(names, 3)
        configs = await kafka_admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        )
        for response in configs:
            for resource in response.to_object()["resources"]:
                entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
                assert entries["retention.ms"] == "3600000", resource["resource_name"]

        again = await run_cli(kafka_bootstrap, *args, "--partitions", "3")
        assert again.exit_code == 0, again.output
        assert [line.split()[:2] for line in again.stdout.splitlines()[:4]] == [["exists", n] for n in names]
        assert "4 topics: 0 created, 4 existed" in again.stdout

        other = await run_cli(kafka_bootstrap, *args, "--partitions", "5")
        assert other.exit_code == 0, other.output
        assert "WARNING: has 3 partitions, asked for 5 (left unchanged)" in other.stdout
        assert "0 created, 0 existed, 4 with other partition counts, 0 failed" in other.stdout
        described = {t["topic"]: len(t["partitions"]) for t in await kafka_admin.describe_topics(names)}
        assert described == dict.fromkeys(names, 3)
    finally:
        await kafka_admin.delete_topics(names)


async def test_bootstrap_exits_1_when_every_topic_is_refused_and_3_when_some_are(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    name = f"cli.boot.{uuid.uuid4().hex[:10]}"
    # A single-broker cluster cannot hold 3 replicas.
    result = await run_cli(
        kafka_bootstrap, "topics", "bootstrap", "--topic", name, "--replication-factor", "3"
    )
    assert result.exit_code == cli.EXIT_ERROR, result.output
    assert f"failed   {name}  partitions=-  ERROR:" in result.stdout
    assert "2 failed" in result.stdout
    assert name not in await kafka_admin.list_topics()

    existing = f"cli.boot.{uuid.uuid4().hex[:10]}"
    made = await run_cli(kafka_bootstrap, "topics", "bootstrap", "--topic", existing)
    assert made.exit_code == 0, made.output
    try:
        partial = await run_cli(
            kafka_bootstrap,
            "topics",
            "bootstrap",
            "--topic",
            existing,
            "--topic",
            name,
            "--replication-factor",
            "3",
        )
        assert partial.exit_code == cli.EXIT_PARTIAL, partial.output
        assert "2 existed, 0 with other partition counts, 2 failed" in partial.stdout
    finally:
        await kafka_admin.delete_topics([existing, f"{existing}.dlq"])


# --- dlq inspect ----------------------------------------------------------------------------


async def test_inspect_prints_error_headers_and_commits_nothing(
    kafka_bootstrap: str, new_topic: NewTopicFactory, producer: AIOKafkaProducer
) -> None:
    source, dlq = await dlq_pair(new_topic, partitions=2)
    first = Sent(1, b"strat:42", b'{"px": "-1"}\xff', original_headers(1))
    second = Sent(0, b"strat:7", b'{"px": "0"}', original_headers(2))
    await write_dlq(
        producer,
        dlq,
        [
            (1, first, dead_letter(source, 1, 41)),
            (0, second, dead_letter(source, 0, 7, error="builtins.KeyError")),
            (0, Sent(0, None, b"not a dead letter", []), None),
        ],
    )

    human = await run_cli(kafka_bootstrap, "dlq", "inspect", dlq, "--progress-every", "1")
    assert human.exit_code == 0, human.output
    progress = [line for line in human.stderr.splitlines() if line.startswith("dlq inspect:")]
    assert progress == ["dlq inspect: 1/3 records", "dlq inspect: 2/3 records", "dlq inspect: 3/3 records"]
    assert f"p1@0  key='strat:42'  from {source}[1]@41" in human.stdout
    assert "error:    orders.PriceError: price must be positive (offset 41)" in human.stdout
    assert "attempts: 3  failed-at: 2026-01-02T03:04:05+00:00  service: risk-manager" in human.stdout
    assert 'value:    {"px": "-1"}\\xff' in human.stdout
    assert f"p0@0  key='strat:7'  from {source}[0]@7" in human.stdout
    assert "error:    builtins.KeyError:" in human.stdout
    assert "p0@1  key=None  NOT A DLQ RECORD" in human.stdout
    assert "3 records" in human.stderr

    as_json = await run_cli(kafka_bootstrap, "dlq", "inspect", dlq, "--json")
    assert as_json.exit_code == 0, as_json.output
    rows = sorted(
        (json.loads(line) for line in as_json.stdout.splitlines()),
        key=lambda r: (r["partition"], r["offset"]),
    )
    assert [(r["partition"], r["offset"], r["is_dead_letter"]) for r in rows] == [
        (0, 0, True),
        (0, 1, False),
        (1, 0, True),
    ]
    assert rows[2]["original_topic"] == source and rows[2]["original_offset"] == 41
    assert rows[2]["error"] == "orders.PriceError" and rows[2]["attempts"] == 3
    assert rows[0]["error"] == "builtins.KeyError" and rows[0]["key"] == "strat:7"

    # Nothing was committed: every run starts from the beginning; --limit caps the output.
    limited = await run_cli(kafka_bootstrap, "dlq", "inspect", dlq, "--json", "--limit", "2")
    assert limited.exit_code == 0
    assert len(limited.stdout.splitlines()) == 2


async def test_inspect_of_a_missing_topic_exits_1(kafka_bootstrap: str) -> None:
    result = await run_cli(kafka_bootstrap, "dlq", "inspect", f"cli.none.{uuid.uuid4().hex[:8]}.dlq")
    assert result.exit_code == cli.EXIT_ERROR
    assert result.stderr.startswith("UnknownTopicError: DLQ topic")
    assert "Traceback" not in result.stderr


# --- dlq replay -----------------------------------------------------------------------------


async def test_replay_restores_bytes_key_headers_partition_and_commits_after_acks(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    new_topic: NewTopicFactory,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, dlq = await dlq_pair(new_topic, partitions=3)
    originals = [
        Sent(2, b"strat:1", b'{"n": 1}\x00\xff', original_headers(1)),
        Sent(2, b"strat:1", b'{"n": 2}', original_headers(2)),
        Sent(0, b"strat:9", b'{"n": 3}', original_headers(3)),
    ]
    await write_dlq(
        producer,
        dlq,
        [(o.partition, o, dead_letter(source, o.partition, i)) for i, o in enumerate(originals)],
    )
    group = unique("cli-replay")

    result = await run_cli(kafka_bootstrap, "dlq", "replay", dlq, "--group", group)
    assert result.exit_code == 0, result.output
    assert "3 records read: replayed 3, skipped 0, failed 0, invalid 0" in result.stdout

    back = await read_all(kafka_bootstrap, kafka_admin, source)
    expected = [
        Sent(o.partition, o.key, o.value, replayed_headers(o.headers))
        for o in sorted(originals, key=lambda o: o.partition)
    ]
    assert back == expected  # same partition, key, bytes and headers (+ replay count), per-key order kept
    assert await committed(kafka_admin, group, dlq) == {0: 1, 2: 2}

    second = await run_cli(kafka_bootstrap, "dlq", "replay", dlq, "--group", group)
    assert second.exit_code == 0, second.output
    assert "0 records read" in second.stdout
    assert len(await read_all(kafka_bootstrap, kafka_admin, source)) == 3


async def test_dry_run_lists_and_changes_nothing(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    new_topic: NewTopicFactory,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, dlq = await dlq_pair(new_topic, partitions=1)
    original = Sent(0, b"k", b"v", original_headers(1))
    await write_dlq(producer, dlq, [(0, original, dead_letter(source, 0, 5))])
    group = unique("cli-dry")

    result = await run_cli(kafka_bootstrap, "dlq", "replay", dlq, "--group", group, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"would-replay p0@0 -> {source}" in result.stdout
    assert "would replay 1" in result.stdout and "committed for group" in result.stdout
    assert await read_all(kafka_bootstrap, kafka_admin, source) == []
    assert await committed(kafka_admin, group, dlq) == {}


async def test_filters_commit_only_the_replayed_prefix_so_skipped_records_are_not_lost(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    new_topic: NewTopicFactory,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, dlq = await dlq_pair(new_topic, partitions=1)
    a0, b1, a2 = (Sent(0, f"k{i}".encode(), f"v{i}".encode(), original_headers(i)) for i in range(3))
    await write_dlq(
        producer,
        dlq,
        [
            (0, a0, dead_letter(source, 0, 0, error="app.AError")),
            (0, b1, dead_letter(source, 0, 1, error="app.BError")),
            (0, a2, dead_letter(source, 0, 2, error="app.AError")),
        ],
    )
    group = unique("cli-filter")

    only_a = await run_cli(
        kafka_bootstrap, "dlq", "replay", dlq, "--group", group, "--filter", "error=AError"
    )
    assert only_a.exit_code == 0, only_a.output
    assert "replayed 2, skipped 1" in only_a.stdout
    assert [r.value for r in await read_all(kafka_bootstrap, kafka_admin, source)] == [b"v0", b"v2"]
    assert await committed(kafka_admin, group, dlq) == {0: 1}  # stops before the skipped B record

    by_key = await run_cli(
        kafka_bootstrap, "dlq", "replay", dlq, "--group", group, "--filter", "key=k1", "--dry-run"
    )
    assert by_key.exit_code == 0
    assert "would-replay p0@1" in by_key.stdout and "skipped      p0@2" in by_key.stdout

    rest = await run_cli(kafka_bootstrap, "dlq", "replay", dlq, "--group", group)
    assert rest.exit_code == 0, rest.output
    # B is replayed now; A2 (after the skipped record) is replayed a second time, as documented.
    assert [r.value for r in await read_all(kafka_bootstrap, kafka_admin, source)] == [
        b"v0",
        b"v2",
        b"v1",
        b"v2",
    ]
    assert await committed(kafka_admin, group, dlq) == {0: 3}


async def test_records_the_broker_rejects_are_not_committed_and_exit_3(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    new_topic: NewTopicFactory,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    # The source topic refuses records over 1 kB: the replay's send is rejected at acknowledgement.
    source, dlq = await dlq_pair(new_topic, partitions=2, config={"max.message.bytes": "1024"})
    small = Sent(0, b"k0", b"small", original_headers(0))
    large = Sent(1, b"k1", b"x" * 4096, original_headers(1))
    junk = Sent(0, None, b"no headers", [])
    await write_dlq(
        producer,
        dlq,
        [(0, small, dead_letter(source, 0, 0)), (1, large, dead_letter(source, 1, 1)), (0, junk, None)],
    )
    group = unique("cli-reject")

    result = await run_cli(kafka_bootstrap, "dlq", "replay", dlq, "--group", group)
    assert result.exit_code == cli.EXIT_PARTIAL, result.output
    assert "failed       p1@0" in result.stdout and "send failed" in result.stdout
    assert "invalid      p0@1" in result.stdout
    assert [r.value for r in await read_all(kafka_bootstrap, kafka_admin, source)] == [b"small"]
    # p0: the replayed record and the never-replayable one are passed; p1 stays for the next run.
    assert await committed(kafka_admin, group, dlq) == {0: 2}

    again = await run_cli(kafka_bootstrap, "dlq", "replay", dlq, "--group", group, "--dry-run")
    assert "1 records read: would replay 1" in again.stdout


async def test_replay_as_a_plain_async_function_commits_the_replayed_prefix_across_chunks(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    new_topic: NewTopicFactory,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> None:
    source, dlq = await dlq_pair(new_topic, partitions=1)
    missing = f"{source}.gone"  # record 3's original topic does not exist: it cannot be replayed
    originals = [Sent(0, f"k{i}".encode(), f"v{i}".encode(), original_headers(i)) for i in range(5)]
    letters = [dead_letter(missing if i == 3 else source, 0, i) for i in range(5)]
    await write_dlq(producer, dlq, [(0, o, letter) for o, letter in zip(originals, letters, strict=True)])
    group = unique("fn-replay")
    seen: list[tuple[int, ReplayAction]] = []

    def on_record(entry: DlqEntry, action: ReplayAction, detail: str) -> None:
        seen.append((entry.offset, action))

    settings = RedpandaSettings(bootstrap_servers=kafka_bootstrap)
    async with connected_broker(settings) as broker:
        report = await replay_dlq(broker, dlq, group_id=group, chunk_size=2, on_record=on_record)

    assert (report.read, report.replayed, report.failed, report.partial) == (5, 4, 1, True)
    assert sorted(seen) == [
        (0, ReplayAction.REPLAYED),
        (1, ReplayAction.REPLAYED),
        (2, ReplayAction.REPLAYED),
        (3, ReplayAction.FAILED),
        (4, ReplayAction.REPLAYED),
    ]
    assert report.failures == [f"0@3: original topic {missing!r} does not exist"]
    # Chunks [0,1] [2,3] [4]: the prefix stops at the failed record 3 and stays there.
    assert report.committed == {0: 3}
    assert await committed(kafka_admin, group, dlq) == {0: 3}
    replayed = [r.value for r in await read_all(kafka_bootstrap, kafka_admin, source)]
    assert replayed == [b"v0", b"v1", b"v2", b"v4"]
