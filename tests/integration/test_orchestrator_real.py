"""ServiceOrchestrator against the real Kafka and Redis: order, readiness over HTTP, supervision,
and SIGTERM in a subprocess while a slow handler is in flight (nothing lost, nothing doubled).

Run as a module (`python -m tests.integration.test_orchestrator_real`) it is the child process
of the SIGTERM test; the topics and timings come from the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream import FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._services.builder import StreamServiceBuilder
from alpha_streaming._services.orchestrator import ServiceOrchestrator
from alpha_streaming._services.service import CurrentProducer, StreamService
from alpha_streaming._settings import DedupSettings, RedpandaSettings, Settings
from middlewares._envelope import CurrentBrokerContext
from tests.conftest import NewTopicFactory
from tests.integration.test_builder_real import read_records, send_envelopes
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]
GRACEFUL_S = 20.0


class Work(BaseModel):
    n: int


async def http_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def built(
    name: str, topic: str, bootstrap: str, events: list[str], redis: aioredis.Redis | None
) -> StreamService:
    config = RedpandaSettings(bootstrap_servers=bootstrap)
    seen: list[int] = []

    async def handle(work: Work) -> None:
        seen.append(work.n)

    builder = StreamServiceBuilder(
        name, config, Settings(redpanda=config, dedup=DedupSettings(enabled=redis is not None))
    ).add_consumer_handler(topics=[topic], group_id=f"{name}-g", handler_func=handle)
    if redis is not None:
        builder.with_redis(redis)
    service = builder.build()
    service.app.on_startup(lambda: events.append(f"{name}:start"))
    service.app.on_shutdown(lambda: events.append(f"{name}:stop"))
    return service


async def test_order_and_readiness_over_http(
    kafka_bootstrap: str, redis_client: aioredis.Redis, new_topic: NewTopicFactory, unique: Any
) -> None:
    events: list[str] = []
    first_topic = await new_topic(prefix="orch.a", partitions=2)
    second_topic = await new_topic(prefix="orch.b")
    plain_topic = await new_topic(prefix="orch.plain")
    first = built(unique("svc-a"), first_topic, kafka_bootstrap, events, redis_client)
    second = built(unique("svc-b"), second_topic, kafka_bootstrap, events, None)
    plain_broker = KafkaBroker(kafka_bootstrap)

    @plain_broker.subscriber(plain_topic, group_id=unique("plain"), auto_offset_reset="earliest")
    async def plain_handler(body: dict[str, Any]) -> None:
        return None

    plain = FastStream(
        plain_broker,
        on_startup=[lambda: events.append("plain:start")],
        on_shutdown=[lambda: events.append("plain:stop")],
    )
    orchestrator = ServiceOrchestrator(first, second, health_port=0).add(plain, name="plain")
    await orchestrator.start()
    try:
        port = orchestrator.health_port
        status, report = await http_json(port, "/health/ready")
        async with asyncio.timeout(60):
            while status != 200:
                await asyncio.sleep(0.2)
                status, report = await http_json(port, "/health/ready")
        live_status, _ = await http_json(port, "/health/live")
    finally:
        await orchestrator.stop()

    assert live_status == 200
    services = {s["name"]: s for s in report["services"]}
    assert list(services) == [first.name, second.name, "plain"]
    assert services[first.name]["redis_reachable"] is True
    assert services[second.name]["redis_reachable"] is None
    assert sorted(services[first.name]["subscribers"][0]["partitions"]) == [
        f"{first_topic}:0",
        f"{first_topic}:1",
    ]
    assert services["plain"]["subscribers"][0]["partitions"] == [f"{plain_topic}:0"]
    assert all(s["broker_connected"] for s in services.values())
    assert events == [
        f"{first.name}:start",
        f"{second.name}:start",
        "plain:start",
        "plain:stop",
        f"{second.name}:stop",
        f"{first.name}:stop",
    ]


async def test_failing_handler_keeps_the_loop_and_a_dead_loop_is_restarted(
    kafka_bootstrap: str, new_topic: NewTopicFactory, unique: Any
) -> None:
    topic = await new_topic(prefix="orch.sup")
    broker = KafkaBroker(kafka_bootstrap)
    handled: list[int] = []

    @broker.subscriber(topic, group_id=unique("sup"), auto_offset_reset="earliest")
    async def handle(body: dict[str, int]) -> None:
        handled.append(body["n"])
        if body["n"] == 1:
            raise RuntimeError("handler bug on message 1")

    orchestrator = ServiceOrchestrator(supervise_interval_s=0.1).add(FastStream(broker), name="sup")
    await orchestrator.start()
    try:
        await broker.publish({"n": 1}, topic)
        await broker.publish({"n": 2}, topic)
        await eventually(lambda: handled == [1, 2], "the first two events handled")
        # End the consume loop the way a bug in a client library would.
        [subscriber] = broker.subscribers
        for task in list(subscriber.tasks):  # type: ignore[attr-defined]
            task.cancel()
        async with asyncio.timeout(30):
            while True:
                sub = (await orchestrator.health()).services[0].subscribers[0]
                if sub.restarts == 1 and sub.consuming and sub.partitions:
                    break
                await asyncio.sleep(0.1)
        await broker.publish({"n": 3}, topic)
        await eventually(lambda: handled == [1, 2, 3], "the third event handled")
    finally:
        await orchestrator.stop()


# --- SIGTERM in a subprocess ------------------------------------------------------------------


async def child_main() -> None:
    """The child process: one built service with a slow handler, run by the orchestrator."""
    env = os.environ
    slow_s = float(env["ALPHA_TEST_SLOW_S"])
    config = RedpandaSettings()
    service: StreamService

    async def handle(work: Work, ctx: CurrentBrokerContext, out: CurrentProducer) -> None:
        print(f"IN-FLIGHT {ctx.partition} {ctx.offset}", flush=True)
        await asyncio.sleep(slow_s)
        await out.send(
            topic=env["ALPHA_TEST_OUT"],
            value={"n": work.n, "partition": ctx.partition, "offset": ctx.offset},
        )

    service = (
        StreamServiceBuilder(
            "sigterm-child",
            config,
            Settings(redpanda=config, dedup=DedupSettings(enabled=False)),
            graceful_timeout=GRACEFUL_S - 5,
        )
        .add_consumer_handler(
            topics=[env["ALPHA_TEST_IN"]], group_id=env["ALPHA_TEST_GROUP"], handler_func=handle
        )
        .add_producer()
        .build()
    )
    await ServiceOrchestrator(service, graceful_timeout=GRACEFUL_S).run()
    print("EXITED", flush=True)


async def run_child(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.test_orchestrator_real",
        cwd=ROOT,
        env={**os.environ, "ALPHA_TEST_SUBPROCESS": "1", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def committed_positions(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """Where a new consumer of `group` would start on each partition (its committed offsets)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        return {tp.partition: await consumer.position(tp) for tp in tps}
    finally:
        await consumer.stop()


async def test_sigterm_with_a_slow_handler_in_flight_finishes_commits_and_exits_0(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopicFactory, unique: Any
) -> None:
    topic_in = await new_topic(prefix="sigterm.in", partitions=2)
    topic_out = await new_topic(prefix="sigterm.out")
    group = unique("sigterm")
    events = [EventEnvelope.create(type="Work", data={"n": n}, source="test", key=str(n)) for n in range(8)]
    await send_envelopes(kafka_bootstrap, *((topic_in, e) for e in events))
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "ALPHA_TEST_IN": topic_in, "ALPHA_TEST_OUT": topic_out}
    env["ALPHA_TEST_GROUP"] = group

    # Run 1: SIGTERM while the first (3 s) message is in flight.
    child = await run_child({**env, "ALPHA_TEST_SLOW_S": "3"})
    assert child.stdout is not None
    lines = []
    async with asyncio.timeout(60):
        line = await child.stdout.readline()
        while not line.startswith(b"IN-FLIGHT") and line:
            lines.append(line)
            line = await child.stdout.readline()
    assert line.startswith(b"IN-FLIGHT"), b"".join(lines).decode(errors="replace")
    in_flight = tuple(int(x) for x in line.split()[1:3])
    signalled = time.monotonic()
    child.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(child.communicate(), GRACEFUL_S + 10)
    took = time.monotonic() - signalled
    assert child.returncode == 0, output.decode(errors="replace")
    assert b"EXITED" in output
    assert took < GRACEFUL_S, f"exit took {took:.1f}s, graceful timeout is {GRACEFUL_S}s"

    first_run = [
        EventEnvelope.from_bytes(r.value).data for r in await read_records(kafka_bootstrap, topic_out, 1)
    ]
    assert (first_run[0]["partition"], first_run[0]["offset"]) == in_flight
    positions = await committed_positions(kafka_bootstrap, group, topic_in, 2)
    # The in-flight message was finished and committed: a new member starts after it.
    assert positions[in_flight[0]] >= in_flight[1] + 1

    # Run 2: the rest is processed; across both runs every event produced exactly one child.
    child = await run_child({**env, "ALPHA_TEST_SLOW_S": "0"})
    try:
        records = await read_records(kafka_bootstrap, topic_out, len(events), within_s=60)
    finally:
        child.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(child.communicate(), GRACEFUL_S + 10)
    assert child.returncode == 0, output.decode(errors="replace")
    records = await read_records(kafka_bootstrap, topic_out, len(events))
    produced = sorted(EventEnvelope.from_bytes(r.value).data["n"] for r in records)
    assert produced == list(range(len(events))), "an event was lost or processed twice"
    by_source = {(EventEnvelope.from_bytes(r.value).causation_id) for r in records}
    assert by_source == {e.id for e in events}


if __name__ == "__main__":
    asyncio.run(child_main())
