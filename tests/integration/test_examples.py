"""Every example runs against the real Kafka and Redis and does what its docstring claims.

- `examples.direct_client`: run as its command, and driven through `run()`;
- `examples.decorator_app`: under `faststream run` in a subprocess (and `faststream docs gen`);
- `examples.builder_service`: topics from `alpha-streaming topics bootstrap --service`, then
  the legacy `start()`/`stop()` lifecycle;
- `examples.trading_pipeline.demo`: the README's first command, with a short duration.
Each example gets its own broker namespace (`EXAMPLE_BROKER`) and group prefix, so runs never
see each other's records.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from alpha_streaming import EventEnvelope, RedpandaSettings, Settings, TopicMap
from alpha_streaming._dlq import DeadLetter
from examples.trading_pipeline.models import OrderFilled, Side, Signal

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEADLINE_S = 30.0

# The commands the README shows, each run by a test below (with test-specific options).
DIRECT_CLIENT = ("python", "-m", "examples.direct_client")
DECORATOR_RUN = ("faststream", "run", "examples.decorator_app:app")
DECORATOR_DOCS = ("faststream", "docs", "gen", "examples.decorator_app:app")
BUILDER_BOOTSTRAP = (
    "alpha-streaming",
    "topics",
    "bootstrap",
    "--service",
    "examples.builder_service:service",
)
BUILDER_RUN = ("python", "-m", "examples.builder_service")
DEMO = ("python", "-m", "examples.trading_pipeline.demo")
MAKE_DEMO = ("make", "demo")  # = install + stack-up + DEMO (see the Makefile)
TESTED_COMMANDS = (
    DIRECT_CLIENT,
    DECORATOR_RUN,
    DECORATOR_DOCS,
    BUILDER_BOOTSTRAP,
    BUILDER_RUN,
    DEMO,
    MAKE_DEMO,
)


def argv(command: tuple[str, ...], *options: str) -> list[str]:
    """The command with this venv's interpreter and scripts."""
    head = sys.executable if command[0] == "python" else str(BIN / command[0])
    return [head, *command[1:], *options]


def env_for(kafka: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka, "REDIS_URL": redis_url, **extra}
    env["PYTHONPATH"] = str(ROOT)
    return env


async def read_all(kafka: str, topic: str, *, expect: int, timeout_s: float = DEADLINE_S) -> list[Any]:
    """Poll `topic` from the beginning until at least `expect` records are there (or time out)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for items in batch.values():
                records.extend(items)
    finally:
        await consumer.stop()
    return records


async def wait_committed(
    admin: AIOKafkaAdminClient, group: str, topic: str, end: int, timeout_s: float = DEADLINE_S
) -> int:
    """Poll until `group` has committed `end` records in total on `topic`; return what it has."""
    deadline = time.monotonic() + timeout_s
    total = -1
    while time.monotonic() < deadline:
        offsets = await admin.list_consumer_group_offsets(group)
        total = sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)
        if total >= end:
            return total
        await asyncio.sleep(0.2)
    return total


async def send_raw(
    kafka: str, topic: str, *records: tuple[bytes | None, bytes, list[tuple[str, bytes]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def envelope_record(envelope: EventEnvelope) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    headers = [(name, value.encode()) for name, value in envelope.headers().items()]
    return (envelope.key.encode() if envelope.key else None, envelope.to_bytes(), headers)


@pytest.fixture
async def namespace(unique: Callable[[str], str], kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[str]:
    """A fresh broker namespace; every topic starting with it is deleted afterwards."""
    ns = unique("ex").replace("-", "")
    yield ns
    leftovers = [t for t in await kafka_admin.list_topics() if t.startswith(ns + ".")]
    if leftovers:
        await kafka_admin.delete_topics(leftovers)


# --- direct tier ---------------------------------------------------------------------------


async def test_direct_client_round_trip_commits_each_record(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, namespace: str, unique: Callable[[str], str]
) -> None:
    from examples.direct_client import OrderPlaced, run

    topic, group = f"{namespace}.orders.placed", unique("direct")
    records = await run(
        RedpandaSettings(bootstrap_servers=kafka_bootstrap), topic=topic, group_id=group, count=4
    )

    orders = [OrderPlaced.model_validate(EventEnvelope.from_bytes(r.raw_value or b"").data) for r in records]
    assert [o.order_id for o in orders] == [f"ord-{n}" for n in range(4)]
    assert {o.price for o in orders} == {Decimal("1523.05")}  # Decimal survives the wire exactly
    assert {r.key for r in records} == {b"momentum:INFY"}
    # Each record's own offset was committed: the group is at the end of the topic.
    assert await wait_committed(kafka_admin, group, topic, 4, timeout_s=5) == 4


async def test_direct_client_command(kafka_bootstrap: str, redis_url: str, namespace: str) -> None:
    topic = f"{namespace}.orders.placed"
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "examples.direct_client",
            "--topic",
            topic,
            "--group-id",
            namespace,
            "--count",
            "3",
        ],
        cwd=ROOT,
        env=env_for(kafka_bootstrap, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["ord-0", "ord-1", "ord-2"]
    assert all(line.startswith(f"{topic}[0]@") for line in lines)


# --- decorator app under `faststream run` --------------------------------------------------


def fill_envelope(ns: str, *, quantity: str = "10") -> EventEnvelope:
    fill = OrderFilled(
        order_id="ord-1",
        strategy="momentum",
        token="INFY",
        side=Side.BUY,
        quantity=Decimal(quantity),
        fill_price=Decimal("1523.45"),
        venue="paper-sim",
        filled_at="2025-01-02T09:15:00Z",  # type: ignore[arg-type]
    )
    return EventEnvelope.create(
        type="order.filled", data=fill, source="paper-engine", key="momentum:INFY", broker=ns
    )


async def test_decorator_app_under_faststream_run(
    kafka_bootstrap: str, redis_url: str, kafka_admin: AIOKafkaAdminClient, namespace: str
) -> None:
    topics = TopicMap(namespace)
    fills, positions = topics.orders_filled, topics.topic("positions", "updated")
    group_prefix = f"{namespace}."
    process = await asyncio.create_subprocess_exec(
        *argv(DECORATOR_RUN),
        cwd=ROOT,
        env=env_for(
            kafka_bootstrap,
            redis_url,
            EXAMPLE_BROKER=namespace,
            ALPHA_REDPANDA_GROUP_ID_PREFIX=group_prefix,
            ALPHA_LOG__CONFIGURE="true",
            ALPHA_LOG__LEVEL="DEBUG",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        # The app creates its topics on startup; wait for them rather than racing it.
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and fills + ".dlq" not in await kafka_admin.list_topics():
            assert process.returncode is None, "faststream run exited early"
            await asyncio.sleep(0.2)
        fill = fill_envelope(namespace)
        # The fill, the same envelope again (a duplicate), and bytes that are no envelope.
        await send_raw(
            kafka_bootstrap, fills, envelope_record(fill), envelope_record(fill), (b"k", b"\xffnot json", [])
        )
        group = group_prefix + "position-keeper.fills"
        committed = await wait_committed(kafka_admin, group, fills, 3)
        published = await read_all(kafka_bootstrap, positions, expect=1)
        dead = await read_all(kafka_bootstrap, fills + ".dlq", expect=1)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    output = stdout.decode()
    assert process.returncode == 0, output
    assert committed == 3, output

    # Exactly one position update: the duplicate fill was suppressed, not applied twice.
    assert len(published) == 1, output
    child = EventEnvelope.from_bytes(published[0].value)
    assert (child.causation_id, child.correlation_id) == (fill.id, fill.correlation_id)
    assert child.data == {"strategy": "momentum", "token": "INFY", "quantity": "10"}
    assert published[0].key == b"momentum:INFY"
    assert f"{fill.id} momentum:INFY -> 10" in output
    # The poison bytes went to the DLQ untouched, with the error headers.
    assert [r.value for r in dead] == [b"\xffnot json"]
    letter = DeadLetter.from_headers(dead[0].headers)
    assert letter.original_topic == fills and letter.consumer_group == group
    assert letter.service == "position-keeper"

    # The logs: no colour codes into a pipe; time, level, logger, and the record a line is about.
    assert "\x1b[" not in output
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"
    where = rf"{re.escape(fills)}\[\d+\]@\d+"
    routing = r"ERROR +middlewares\._error_routing"
    dead_lettered = rf"^{stamp} {routing}: EnvelopeError on {where} .*dead-lettered.* \[{where}\]$"
    assert re.search(dead_lettered, output, re.M), output
    ids = f"event={fill.id} correlation={fill.correlation_id}"
    duplicate = rf"^{stamp} DEBUG +middlewares\._dedup: duplicate suppressed.* \[{where} {re.escape(ids)}\]$"
    assert re.search(duplicate, output, re.M), output


@pytest.mark.parametrize("app", ["examples.decorator_app:app", "examples.builder_service:app"])
def test_asyncapi_docs_include_the_envelope(
    app: str, tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    out = tmp_path / "asyncapi.json"
    result = subprocess.run(
        [*argv(DECORATOR_DOCS[:-1]), app, "--out", str(out)],
        cwd=ROOT,
        env=env_for(kafka_bootstrap, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    schemas = json.loads(out.read_text())["components"]["schemas"]
    envelope = next(schema for name, schema in schemas.items() if name.startswith("EventEnvelope"))
    assert {"id", "correlation_id", "causation_id", "data"} <= set(envelope["properties"])


# --- builder service ----------------------------------------------------------------------


def signal_envelope(ns: str, quantity: int) -> EventEnvelope:
    signal_ = Signal(
        strategy="momentum",
        token="TCS",
        side=Side.BUY,
        quantity=Decimal(quantity),
        limit_price=Decimal("3511.05"),
    )
    return EventEnvelope.create(
        type="signal.raw", data=signal_, source="strategy-runner", key=signal_.key, broker=ns
    )


async def test_builder_service_legacy_lifecycle(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    namespace: str,
) -> None:
    env = env_for(kafka_bootstrap, redis_url, EXAMPLE_BROKER=namespace)
    bootstrap = await asyncio.to_thread(
        subprocess.run,
        [
            str(BIN / "alpha-streaming"),
            "topics",
            "bootstrap",
            "--service",
            "examples.builder_service:service",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bootstrap.returncode == 0, bootstrap.stdout + bootstrap.stderr
    topics = TopicMap(namespace)
    for name in (topics.signals_raw, topics.signals_validated, topics.signals_raw + ".dlq"):
        assert re.search(rf"^created\s+{re.escape(name)}\s", bootstrap.stdout, re.M), bootstrap.stdout

    from examples.builder_service import MAX_NOTIONAL, build_service

    settings = Settings(
        redpanda=RedpandaSettings(bootstrap_servers=kafka_bootstrap, group_id_prefix=f"{namespace}.")
    )
    service = build_service(settings, redis_client, namespace)
    small, large = signal_envelope(namespace, 10), signal_envelope(namespace, 100)
    assert Decimal(large.data["quantity"]) * Decimal(large.data["limit_price"]) > MAX_NOTIONAL
    await service.start()
    try:
        await send_raw(kafka_bootstrap, topics.signals_raw, envelope_record(small), envelope_record(large))
        group = f"{namespace}.legacy-risk-gate.signals"
        assert await wait_committed(kafka_admin, group, topics.signals_raw, 2) == 2
    finally:
        await service.stop()
    validated = await read_all(kafka_bootstrap, topics.signals_validated, expect=1, timeout_s=3)
    assert len(validated) == 1  # the large signal was rejected
    child = EventEnvelope.from_bytes(validated[0].value)
    assert child.causation_id == small.id and child.correlation_id == small.correlation_id
    assert child.source == "legacy-risk-gate" and child.broker == namespace
    assert child.data == small.data and validated[0].key == small.key.encode()  # type: ignore[union-attr]


async def test_builder_service_command_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, redis_url: str, namespace: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topics = TopicMap(namespace)
    for name in (topics.signals_raw, topics.signals_validated):
        await new_topic(name=name, partitions=1)
    process = await asyncio.create_subprocess_exec(
        *argv(BUILDER_RUN),
        cwd=ROOT,
        env=env_for(
            kafka_bootstrap, redis_url, EXAMPLE_BROKER=namespace, ALPHA_REDPANDA_GROUP_ID_PREFIX=namespace
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    banner = f"legacy-risk-gate consuming {topics.signals_raw}, producing to {topics.signals_validated}"
    seen = b""
    try:
        async with asyncio.timeout(DEADLINE_S):
            while banner.encode() not in seen:
                line = await process.stdout.readline()
                assert line, f"exited before starting: {seen.decode()}"
                seen += line
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), timeout=DEADLINE_S)
    line = seen
    assert process.returncode == 0, (line + rest).decode()


# --- the demo -----------------------------------------------------------------------------


async def test_demo_reports_a_clean_run(kafka_bootstrap: str, redis_url: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        argv(DEMO, "--duration", "4", "--rate", "20"),
        cwd=ROOT,
        env=env_for(kafka_bootstrap, redis_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "VERDICT: OK - nothing lost, nothing doubled" in out
    duplicates = re.search(r"Duplicates: (\d+) duplicate tick copies on the wire; (\d+) suppressed", out)
    assert duplicates and 1 <= int(duplicates[1]) <= int(duplicates[2]), out
    # The poison tick and the unlisted instrument's two signals were dead-lettered ...
    assert re.search(r"market\.ticks\.dlq@\d+: \d+ raw bytes", out), out
    assert len(re.findall(r"signals\.raw\.dlq@\d+: signal\.raw .*UnknownInstrumentError", out)) == 2, out
    # ... and the two signals were replayed once the instrument was added, each getting a verdict.
    assert "replayed to their source topics: 2 (replay tool reported 2)" in out
    assert (
        len(re.findall(r"replayed \w+\.signals\.raw@\d+ .* -> \w+\.signals\.(validated|rejected)@\d+", out))
        == 2
    )
    assert re.search(r"End-to-end latency.*p50 [\d.]+ ms, p99 [\d.]+ ms", out), out
    trace = out.split("One trace:")[1].split("\n\n")[0]
    services = re.findall(r"\d\. +\+ *[\d.]+ ms  (\S+)", trace)
    assert services == ["market-feed", "strategy-runner", "risk-manager", "zerodha-engine"], trace


# --- README: examples are executable truth ------------------------------------------------

README = ROOT / "README.md"


def readme_blocks(language: str) -> list[tuple[str, str]]:
    """(preceding line, body) of every fenced block in `language`."""
    lines = README.read_text().splitlines()
    blocks, inside, body, before = [], False, [], ""
    for index, line in enumerate(lines):
        if not inside and line.strip() == f"```{language}":
            inside, body, before = True, [], lines[index - 1] if index else ""
        elif inside and line.strip() == "```":
            blocks.append((before, "\n".join(body)))
            inside = False
        elif inside:
            body.append(line)
    return blocks


def test_readme_python_snippets_are_excerpts_of_tested_examples() -> None:
    blocks = readme_blocks("python")
    assert blocks, "the README shows no Python"
    for before, body in blocks:
        found = re.fullmatch(r"<!-- excerpt: ((?:tests/unit/)?examples/[\w/]+\.py) -->", before.strip())
        assert found, f"python block without an `<!-- excerpt: examples/... -->` marker:\n{body}"
        source = (ROOT / found[1]).read_text()
        assert body in source, f"README excerpt is not verbatim in {found[1]}:\n{body}"


def test_readme_commands_are_the_tested_ones() -> None:
    shown = [line.split("#")[0].split() for _, body in readme_blocks("bash") for line in body.splitlines()]
    mine = [words for words in shown if any("examples" in w or w == "demo" for w in words)]
    assert len(mine) >= 6
    for words in mine:
        assert any(tuple(words[: len(c)]) == c for c in TESTED_COMMANDS), f"untested README command: {words}"
