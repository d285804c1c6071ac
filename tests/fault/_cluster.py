"""The cluster scenarios' stack: a 3-broker KRaft cluster and a 3-master Redis Cluster.

`scripts/cluster.sh` runs both (brokers 127.0.0.1:29092-29094, RF 3, min.insync.replicas 2;
Redis Cluster masters 127.0.0.1:27001-27003, append-only files, no replicas); the single-node
fault stack is never touched. Also here: which node to break (a partition's leader, the active
controller, the Redis master holding a group's dedup keys) and the per-partition pause figures,
read from the ledger's effect timestamps.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorError,
)
from redis.asyncio import Redis

from tests.fault._harness import REPO, Effect

COORDINATOR_NOT_READY = (
    GroupCoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotCoordinatorError,
)

CLUSTER_SCRIPT = REPO / "scripts" / "cluster.sh"
CLUSTER_KAFKA = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
CLUSTER_REDIS_PORTS = (27001, 27002, 27003)
STACK_HOME = Path(os.environ.get("ALPHA_STACK_HOME", Path.home() / ".cache" / "alpha-streaming"))
OFFSETS_TOPIC = "__consumer_offsets"
# A gap longer than this between two effects of one partition is a pause. Undisturbed, a process
# serves its three partitions in turns (a fetch's worth of records each), which left gaps of up
# to 2.3 s on this 2-core box while keeping up; losing a broker or a Redis master stops a
# partition for 10 s and more.
PAUSE_BOUND_S = 3.0


class ClusterStack:
    """Starts the cluster and breaks its nodes through `scripts/cluster.sh`."""

    kafka = CLUSTER_KAFKA
    redis = f"redis://127.0.0.1:{CLUSTER_REDIS_PORTS[0]}/0"
    replication_factor = 3
    env: Mapping[str, str] = {"ALPHA_REDIS_CLUSTER": "true"}
    brokers = (1, 2, 3)

    def _script(self, *args: str) -> None:
        done = subprocess.run(
            [str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=240, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/cluster.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def answers(self) -> bool:
        """Every node answers (`cluster.sh status` prints `down` for one that does not)."""
        done = subprocess.run(
            [str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True, timeout=30, check=False
        )
        return done.returncode == 0 and ": down" not in done.stdout

    def up(self) -> None:
        self._script("up")

    def down(self) -> None:
        self._script("down")

    def wait_ready(self, within: float = 120.0) -> None:
        """Until every broker is registered and unfenced: a cluster that was just formatted answers
        on its ports before it can create a topic with replication factor 3."""

        async def brokers() -> int:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka, request_timeout_ms=10_000)
            await admin.start()
            try:
                return len((await admin.describe_cluster())["brokers"])
            finally:
                await admin.close()

        deadline = time.monotonic() + within
        while True:
            with ThreadPoolExecutor(1) as pool:  # fixtures may run while a test's loop is set
                try:
                    ready = pool.submit(asyncio.run, brokers()).result() == len(self.brokers)
                except Exception:  # not answering yet
                    ready = False
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster's {len(self.brokers)} brokers not all up within {within:.0f} s"
                )
            time.sleep(1)

    def kill(self, node: str) -> None:
        """SIGKILL `node` (kafka-N, redis-N)."""
        self._script("kill", node)

    def stop(self, node: str) -> None:
        """SIGTERM `node` and wait until it exited."""
        self._script("stop", node)

    def start_kafka(self) -> None:
        """Start every broker that is down; returns once each answers on its client port."""
        self._script("up", "kafka")

    def start_redis(self) -> None:
        """Start every Redis node that is down; returns once the cluster state is ok again."""
        self._script("up", "redis")

    def active_controller(self) -> int:
        """The KRaft quorum's leader (every node is broker and controller: its broker id too)."""
        lib = next(STACK_HOME.glob("kafka-*/lib"))
        done = subprocess.run(
            [
                "java",
                "-Xmx128M",
                f"-Dlog4j2.configurationFile={REPO / 'scripts' / 'kafka' / 'tools-log4j2.properties'}",
                "-cp",
                f"{lib}/*",
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-server",
                self.kafka,
                "describe",
                "--status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        found = re.search(r"^LeaderId:\s+(\d+)", done.stdout, re.MULTILINE)
        assert found, f"no LeaderId in MetadataQuorumCommand's output:\n{done.stdout}{done.stderr}"
        return int(found.group(1))

    async def describe(self, topics: Iterable[str]) -> dict[str, list[dict[str, object]]]:
        """Each topic's partitions as the admin client describes them (leader, isr, replicas, ...)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka, request_timeout_ms=15_000)
        await admin.start()
        try:
            found = await admin.describe_topics(list(topics))
        finally:
            await admin.close()
        return {t["topic"]: t["partitions"] for t in found if t["error_code"] == 0}

    async def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> leader broker id."""
        partitions = (await self.describe([topic]))[topic]
        return {int(p["partition"]): int(p["leader"]) for p in partitions}  # type: ignore[call-overload]

    async def in_sync(self, topics: Iterable[str]) -> bool:
        """Every partition of `topics` has a leader and all three replicas in its ISR."""
        wanted = list(topics)
        described = await self.describe(wanted)
        return set(described) == set(wanted) and all(
            int(p["leader"]) >= 0 and len(p["isr"]) == self.replication_factor  # type: ignore[arg-type,call-overload]
            for partitions in described.values()
            for p in partitions
        )

    async def group_state(self, group: str) -> tuple[str, int]:
        """The consumer group's state (Stable, PreparingRebalance, ...) and how many members it has.

        On a cluster that just started, the group's coordinator may not be elected yet (the
        first group request creates `__consumer_offsets`, RF 3): that is "no coordinator yet",
        not an error; the caller's wait decides how long that may last.
        """
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka, request_timeout_ms=15_000)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([group])
        except COORDINATOR_NOT_READY:
            return "no coordinator yet", 0
        finally:
            await admin.close()
        _error, _group, state, _protocol_type, _protocol, members, *_ = response.groups[0]
        return state, len(members)

    async def dedup_master(self, key_pattern: str) -> str:
        """The Redis node (redis-N) holding the keys matching `key_pattern` (one hash slot's keys)."""
        for port in CLUSTER_REDIS_PORTS:
            node = Redis(host="127.0.0.1", port=port)
            try:
                async for _ in node.scan_iter(match=key_pattern, count=1000):
                    return f"redis-{port - 27000}"
            finally:
                await node.aclose()
        raise AssertionError(f"no Redis Cluster node holds a key matching {key_pattern!r}")


def partition_times(effects: Iterable[Effect]) -> dict[int, list[float]]:
    """Each partition's effect times (wall clock, as the ledger wrote them), in order."""
    times: defaultdict[int, list[float]] = defaultdict(list)
    for effect in effects:
        times[effect.partition].append(effect.at)
    return {partition: sorted(seq) for partition, seq in times.items()}


def _since(seq: list[float], fault_at: float) -> list[float]:
    """A partition's effect times after the fault, behind the fault's own time: its first gap is
    how long after the fault it next made progress (a gap that began earlier counts from it)."""
    return [fault_at, *(t for t in seq if t > fault_at)]


def resumed_after(times: Mapping[int, list[float]], fault_at: float, until: float = float("inf")) -> float:
    """Seconds from `fault_at` until every partition that paused after it made progress again.

    A partition's pause is its first gap longer than `PAUSE_BOUND_S` that ends after `fault_at`
    and began before `until` (the next fault, if any); one without such a gap never stopped: 0.
    """
    worst = 0.0
    for seq in times.values():
        for before, after in itertools.pairwise(_since(seq, fault_at)):
            if before < until and after - before > PAUSE_BOUND_S:
                worst = max(worst, after - fault_at)
                break
    return round(worst, 2)


def longest_pause(times: Mapping[int, list[float]], since: float) -> float:
    """The longest time one partition made no progress after `since` (counted from `since` on)."""
    gaps = [b - a for seq in times.values() for a, b in itertools.pairwise(_since(seq, since))]
    return round(max(gaps, default=0.0), 2)


def paused_partitions(times: Mapping[int, list[float]], since: float) -> int:
    """How many partitions made no progress for longer than `PAUSE_BOUND_S` after `since`."""
    return sum(
        1
        for seq in times.values()
        if any(b - a > PAUSE_BOUND_S for a, b in itertools.pairwise(_since(seq, since)))
    )


async def wait_in_sync(stack: ClusterStack, topics: Iterable[str], *, within: float) -> float:
    """Seconds until every partition of `topics` is fully replicated again (a rejoined broker)."""
    wanted = list(topics)
    started = time.monotonic()
    while not await stack.in_sync(wanted):
        if time.monotonic() - started > within:
            raise AssertionError(
                f"{wanted}: not fully in sync within {within:.0f} s: {await stack.describe(wanted)}"
            )
        await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 2)
