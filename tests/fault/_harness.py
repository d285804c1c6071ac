"""The fault suite's harness: its own Kafka and Redis, service processes, events and the ledger.

The suite owns a second Kafka (127.0.0.1:19092) and Redis (127.0.0.1:16379, append-only file)
started by `scripts/stack.sh`, because it stops and restarts them; the main stack the other tests
use is never touched. Every scenario gets fresh topics, a fresh group and a fresh ledger.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from alpha_streaming import DeadLetter, EventEnvelope, RedpandaProducer, RedpandaSettings, read_bounded
from tests.fault._service_kit import TASK_DUMP

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "scripts" / "stack.sh"
# Tasks every Kafka client runs whatever the service does: left out of a task dump.
CLIENT_TASK = re.compile(r": (conn|client|sender|fetcher|group_coordinator)\.py:")
FAULT_KAFKA = os.environ.get("FAULT_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
FAULT_REDIS = os.environ.get("FAULT_REDIS_URL", "redis://127.0.0.1:16379/0")
FAULTSTREAM = Path(sys.executable).parent / "faststream"
PARTITIONS = 6
LEDGER_APP = "tests.fault.ledger_service:app"

# What every service process of the suite runs with, on top of the defaults (which coalesce
# commits with dedup; the suite proves that safe) and the scenario's own settings: short leases
# so a killed process's in-flight event is picked up in seconds, small transient backoff.
SERVICE_ENV = {
    # Kafka's smallest allowed session: a SIGKILLed member's partitions move after 6 s, not 10 s.
    "ALPHA_CONSUMER__SESSION_TIMEOUT_MS": "6000",
    "ALPHA_CONSUMER__HEARTBEAT_INTERVAL_MS": "2000",
    "ALPHA_DEDUP__LEASE_TTL_S": "3",
    "ALPHA_RETRY__BASE_DELAY_S": "0.05",
    "ALPHA_RETRY__MAX_DELAY_S": "0.5",
}


class Stack(Protocol):
    """Where a scenario's services connect: the single-node fault stack or the cluster."""

    kafka: str
    redis: str
    replication_factor: int
    env: Mapping[str, str]
    """Settings every service process gets on top of `SERVICE_ENV` (e.g. a cluster Redis client)."""


class FaultStack:
    """Starts and stops the suite's own Kafka and Redis through `scripts/stack.sh`."""

    replication_factor = 1
    env: Mapping[str, str] = {}

    def __init__(self, kafka: str = FAULT_KAFKA, redis: str = FAULT_REDIS) -> None:
        self.kafka = kafka
        self.redis = redis

    def _stack(self, *args: str) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.kafka, "REDIS_URL": self.redis}
        env["ALPHA_REDIS_PERSIST"] = "1"
        done = subprocess.run(
            [str(STACK_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=240, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/stack.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def up(self) -> None:
        self._stack("up", "kafka")
        self._stack("up", "redis")

    def down(self) -> None:
        self._stack("down")

    def stop_kafka(self) -> None:
        self._stack("down", "kafka")

    def start_kafka(self) -> None:
        self._stack("up", "kafka")

    def stop_redis(self) -> None:
        self._stack("down", "redis")

    def start_redis(self) -> None:
        self._stack("up", "redis")


@dataclass(frozen=True, slots=True)
class Event:
    """One record the scenario publishes; `event_id` is None for undecodable poison."""

    key: bytes
    value: bytes
    headers: dict[str, str]
    event_id: str | None
    poison: bool


def make_events(
    count: int,
    *,
    poison_every: int = 0,
    fail_first_every: int = 0,
    slow: Iterable[int] = (),
    slow_s: float = 0.0,
) -> list[Event]:
    """`count` records: good orders, every `poison_every`-th one poison (three kinds in turn)."""
    slow_seqs = set(slow)
    events = []
    for seq in range(count):
        key = f"k{seq % 97}".encode()
        if poison_every and seq % poison_every == poison_every - 1:
            events.append(_poison(seq, key))
            continue
        order: dict[str, Any] = {"seq": seq}
        if seq in slow_seqs:
            order["slow_s"] = slow_s
        if fail_first_every and seq % fail_first_every == 0:
            order["fail_first"] = True
        envelope = EventEnvelope.create(type="FaultOrder", data=order, source="fault-suite", key=key.decode())
        events.append(Event(key, envelope.to_bytes(), envelope.headers(), envelope.id, poison=False))
    return events


def _poison(seq: int, key: bytes) -> Event:
    kind = (seq // 2) % 3
    if kind == 0:  # not JSON at all
        return Event(key, b"\xff\xfe poison %d" % seq, {}, None, poison=True)
    if kind == 1:  # JSON, but not an envelope
        return Event(key, json.dumps({"poison": seq}).encode(), {}, None, poison=True)
    # A valid envelope whose payload the handler's model rejects.
    envelope = EventEnvelope.create(type="FaultOrder", data={"seq": f"bad-{seq}"}, source="fault-suite")
    return Event(key, envelope.to_bytes(), envelope.headers(), envelope.id, poison=True)


async def publish(
    bootstrap: str,
    topic: str,
    events: Sequence[Event],
    *,
    rate: float | None = None,
    chunk: int = 1000,
) -> int:
    """Publish `events` (paced to `rate`/s if given); a record whose send failed is sent again.

    Returns how many sends were repeated (each may have written a second copy of its record).
    """
    repeated = 0
    started = time.monotonic()
    async with RedpandaProducer(
        RedpandaSettings(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    ) as out:
        for first in range(0, len(events), chunk):
            todo = list(events[first : first + chunk])
            while todo:
                results = await asyncio.gather(
                    *(out.send(topic=topic, key=e.key, value=e.value, headers=e.headers) for e in todo),
                    return_exceptions=True,
                )
                failed = [e for e, r in zip(todo, results, strict=True) if isinstance(r, BaseException)]
                repeated += len(failed)
                todo = failed
                if failed:
                    await asyncio.sleep(0.5)
            if rate:
                ahead = (first + chunk) / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    return repeated


@dataclass
class ServiceProcess:
    """One OS process running the service with `faststream run`."""

    scenario: Scenario
    index: int
    env: dict[str, str] = field(default_factory=dict)
    """On top of the scenario's environment (e.g. this process's own instance id)."""
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.scenario.ledger_dir / f"service-{self.index}.log").open("ab")
        self.popen = subprocess.Popen(
            [str(FAULTSTREAM), "run", self.scenario.app, "--log-level", "warning"],
            cwd=REPO,
            env={**self.scenario.service_env(), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; the exit code (None if it had to be killed after `timeout`) and seconds taken."""
        assert self.popen is not None
        started = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=30)
            code = None
        return code, time.monotonic() - started

    def freeze(self) -> None:
        """SIGSTOP: the process stops mid-whatever, as a paused VM or a long GC pause would."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGCONT)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Effect:
    event_id: str
    partition: int
    offset: int
    pid: int
    at: float
    extra: tuple[str, ...] = ()
    """Fields a service appends after the five every ledger line has (e.g. a causation id)."""


@dataclass
class Scenario:
    """One scenario's topic, group, ledger and processes, and the checks every scenario ends with."""

    name: str
    stack: Stack
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    app: str = LEDGER_APP
    """What `faststream run` starts: `module:app` (default: the builder-made ledger service)."""
    processes: list[ServiceProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.topic = f"fault.{self.name}.{suffix}"
        self.group = f"fault-{self.name}-{suffix}"
        self.service = f"fault-{self.name}"
        self.ledger_dir = self.root / f"{self.name}-{suffix}"
        self.ledger_dir.mkdir(parents=True)
        self.started = time.monotonic()

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    def service_env(self) -> dict[str, str]:
        return {
            **os.environ,
            **SERVICE_ENV,
            **self.stack.env,
            **self.env,
            "KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka,
            "REDIS_URL": self.stack.redis,
            "FAULT_SERVICE": self.service,
            "FAULT_TOPIC": self.topic,
            "FAULT_GROUP": self.group,
            "FAULT_LEDGER_DIR": str(self.ledger_dir),
            "PYTHONUNBUFFERED": "1",
        }

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.stack.kafka, request_timeout_ms=15_000)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(t, num_partitions=PARTITIONS, replication_factor=self.stack.replication_factor)
                    for t in (self.topic, self.dlq_topic)
                ]
            )
        finally:
            await admin.close()

    def spawn(self, **env: str) -> ServiceProcess:
        process = ServiceProcess(self, len(self.processes), env)
        process.start()
        self.processes.append(process)
        return process

    def effects(self) -> list[Effect]:
        found = []
        for path in self.ledger_dir.glob("ledger-*.txt"):
            for line in path.read_text().splitlines():
                event_id, partition, offset, pid, at, *extra = line.split()
                found.append(Effect(event_id, int(partition), int(offset), int(pid), float(at), tuple(extra)))
        return found

    def effect_count(self) -> int:
        return sum(path.read_bytes().count(b"\n") for path in self.ledger_dir.glob("ledger-*.txt"))

    def outcome_counts(self) -> collections.Counter[str]:
        """Outcomes summed over every process (a SIGKILLed one lost its last 100 ms)."""
        total: collections.Counter[str] = collections.Counter()
        for path in self.ledger_dir.glob("metrics-*.json"):
            total.update(json.loads(path.read_text() or "{}"))
        return total

    def stop_all(self, timeout: float = 30.0) -> list[tuple[int | None, float]]:
        return [p.terminate(timeout) for p in self.processes if p.alive()]

    def logs(self) -> str:
        """The last lines of each service's log, after the task dump of each live one (SIGUSR1)."""
        live = [p for p in self.processes if p.alive()]
        for process in live:
            process.popen.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while live and time.monotonic() < deadline and self._dumps() < len(live):
            time.sleep(0.1)  # a diagnostic on the way to a failure: bounded, nothing waits on it
        tails = []
        for path in sorted(self.ledger_dir.glob("service-*.log")):
            lines = path.read_text(errors="replace").splitlines()
            dump = [line for line in lines if line.startswith(TASK_DUMP) and not CLIENT_TASK.search(line)]
            tails.append(
                f"--- {path.name} (tasks, then the last 30 lines) ---\n" + "\n".join(dump + lines[-30:])
            )
        return "\n".join(tails)

    def _dumps(self) -> int:
        logs = self.ledger_dir.glob("service-*.log")
        return sum(1 for path in logs if TASK_DUMP in path.read_text(errors="replace"))

    async def read_topic(
        self, topic: str, *, isolation_level: str = "read_uncommitted"
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Every record of `topic`, read without a group (nothing committed); `read_committed`
        skips aborted transactions."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.stack.kafka, enable_auto_commit=False, isolation_level=isolation_level
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            return [record async for record in read_bounded(consumer)]
        finally:
            await consumer.stop()

    async def open_transactions(self, topic: str) -> int:
        """Partitions of `topic` whose last stable offset is behind the high watermark: a
        transaction that wrote there is neither committed nor aborted yet."""
        ends = []
        for isolation_level in ("read_uncommitted", "read_committed"):
            consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka, isolation_level=isolation_level)
            await consumer.start()
            try:
                ends.append(await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)]))
            finally:
                await consumer.stop()
        high, stable = ends
        return sum(1 for tp, end in high.items() if stable[tp] < end)

    async def committed(self) -> dict[int, int]:
        """The group's committed offset per partition of the topic (partitions never committed: 0)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.stack.kafka, request_timeout_ms=15_000)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        offsets = {p: 0 for p in range(PARTITIONS)}
        offsets.update({tp.partition: m.offset for tp, m in found.items() if tp.topic == self.topic})
        return offsets

    async def lag(self) -> int:
        """Records of the topic not yet covered by the group's committed offsets."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(self.topic, p) for p in range(PARTITIONS)])
        finally:
            await consumer.stop()
        committed = await self.committed()
        return sum(end - max(committed[tp.partition], 0) for tp, end in ends.items())


def delete_topics(bootstrap: str, *, names: Iterable[str] = (), prefix: str | None = None) -> None:
    """Delete a stack's test topics (by name, or every one starting with `prefix`). A stack's
    state otherwise grows run after run: on the cluster, ~1,400 leftover partitions made a
    controller failover stall the brokers long enough to fail `controller_kill`."""
    wanted = set(names)

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
        await admin.start()
        try:
            doomed = [
                t for t in await admin.list_topics() if t in wanted or (prefix and t.startswith(prefix))
            ]
            if doomed:
                await admin.delete_topics(doomed)
            for _ in range(120):  # gone from the metadata before a scenario creates its own
                if not set(doomed) & set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.5)
        finally:
            await admin.close()

    with ThreadPoolExecutor(1) as pool:  # fixtures may run while the test's event loop is set
        pool.submit(asyncio.run, delete()).result()


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float,
    what: str,
    scenario: Scenario | None = None,
    every: float = 0.1,
) -> float:
    """Poll `condition` until true; seconds waited. On timeout fail, with the services' logs."""
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            logs = scenario.logs() if scenario else ""
            raise AssertionError(f"{what}: not reached within {within:.0f} s\n{logs}")
        await asyncio.sleep(every)


async def outage(scenario: Scenario, stop: Callable[[], None], start: Callable[[], None]) -> dict[str, float]:
    """Stop a dependency for 10 s (the stack script's calls run in a thread, so producing and
    consuming go on meanwhile), start it again; effects during the outage and time to recover."""
    await asyncio.to_thread(stop)
    at_stop = scenario.effect_count()
    await asyncio.sleep(10)
    at_restart = scenario.effect_count()
    await asyncio.to_thread(start)
    recovered = await wait_for_progress(scenario, at_restart, within=120)
    return {"effects_during_outage": at_restart - at_stop, "recover_s": round(recovered, 2)}


async def wait_for_progress(scenario: Scenario, beyond: int, *, within: float) -> float:
    """Seconds until the ledger holds more than `beyond` effects (the service is making progress)."""
    return await wait_until(
        lambda: scenario.effect_count() > beyond,
        within=within,
        what=f"[{scenario.name}] progress beyond {beyond} effects",
        scenario=scenario,
        every=0.05,
    )


async def kill_at(
    scenario: Scenario, process: ServiceProcess, points: Iterable[int], *, within: float = 120.0
) -> tuple[ServiceProcess, list[float]]:
    """SIGKILL the scenario's service once its ledger holds more than each of `points` effects,
    restarting it each time; the process running at the end, and for each kill the seconds until
    the new process made progress."""
    recoveries = []
    for point in points:
        await wait_for_progress(scenario, point, within=within)
        process.kill()
        at_kill = scenario.effect_count()
        process = scenario.spawn()
        recoveries.append(round(await wait_for_progress(scenario, at_kill, within=within), 2))
    return process, recoveries


@dataclass
class Verdict:
    """What a scenario proves at its end, and the figures it prints."""

    name: str
    events: int
    topic_records: int
    good: int
    poison_records: int
    effects: int
    duplicate_effects: int
    lost: int
    dlq_records: int
    dlq_duplicates: int
    dlq_missing: int
    dlq_bytes_changed: int
    lag: int
    deduplicated: int
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.figures.items())
        return (
            f"[fault {self.name}] events={self.events} topic_records={self.topic_records} good={self.good} "
            f"effects={self.effects} "
            f"duplicate_effects={self.duplicate_effects} lost={self.lost} "
            f"poison_records={self.poison_records} dlq={self.dlq_records} "
            f"dlq_duplicates={self.dlq_duplicates} dlq_missing={self.dlq_missing} "
            f"lag={self.lag} duplicates_prevented={self.deduplicated} {extra}"
        ).rstrip()


def assert_exactly_once(verdict: Verdict, *, repeated_effects_allowed: int = 0) -> None:
    v = verdict
    assert v.lost == 0, f"{v.lost} good events have no effect: {v.line()}"
    assert v.duplicate_effects <= repeated_effects_allowed, v.line()
    assert v.dlq_missing == 0, f"poison records missing from the DLQ: {v.line()}"
    assert v.dlq_duplicates <= repeated_effects_allowed - v.duplicate_effects, v.line()
    assert v.dlq_bytes_changed == 0, f"DLQ records differ from their originals: {v.line()}"
    assert v.lag == 0, v.line()


async def verify(scenario: Scenario, events: Sequence[Event], **figures: Any) -> Verdict:
    """Compare the ledger and the DLQ with what is on the topic; call after the services stopped."""
    good_ids = {e.event_id for e in events if not e.poison}
    poison_values = {e.value for e in events if e.poison}
    counts = collections.Counter(effect.event_id for effect in scenario.effects())
    source = await scenario.read_topic(scenario.topic)
    poison_at = {(r.partition, r.offset): r for r in source if r.value in poison_values}
    dlq = await scenario.read_topic(scenario.dlq_topic)
    dlq_origins: collections.Counter[tuple[int, int]] = collections.Counter()
    changed = 0
    for record in dlq:
        letter = DeadLetter.from_headers(record.headers)
        origin = (letter.original_partition, letter.original_offset)
        dlq_origins[origin] += 1
        original = poison_at.get(origin)
        if original is None or original.value != record.value or original.key != record.key:
            changed += 1
    return Verdict(
        name=scenario.name,
        events=len(events),
        topic_records=len(source),
        good=len(good_ids),
        poison_records=len(poison_at),
        effects=sum(counts.values()),
        duplicate_effects=sum(n - 1 for n in counts.values() if n > 1),
        lost=len(good_ids - counts.keys()),
        dlq_records=len(dlq),
        dlq_duplicates=sum(n - 1 for n in dlq_origins.values() if n > 1),
        dlq_missing=len(poison_at.keys() - dlq_origins.keys()),
        dlq_bytes_changed=changed,
        lag=await scenario.lag(),
        deduplicated=scenario.outcome_counts().get("outcome:deduplicated", 0),
        figures={**figures, "scenario_s": round(time.monotonic() - scenario.started, 1)},
    )


async def run_to_completion(scenario: Scenario, events: Sequence[Event], *, within: float) -> float:
    """Seconds until every good event has an effect and the group's committed offsets reached the
    end of the topic (an offset is committed only after its record's outcome: effect or DLQ ack)."""
    good = {e.event_id for e in events if not e.poison}

    async def complete() -> bool:
        # The cheap count first: the ledger is parsed and Kafka asked only near the end.
        if scenario.effect_count() < len(good):
            return False
        if not good <= {effect.event_id for effect in scenario.effects()}:
            return False
        return await scenario.lag() == 0

    return await wait_until(
        complete, within=within, what=f"[{scenario.name}] completion", scenario=scenario, every=0.5
    )
