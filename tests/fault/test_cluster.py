"""Fault injection on production shapes: a 3-broker KRaft cluster and a 3-master Redis Cluster.

`pytest -m cluster` (the `cluster_stack` fixture runs `scripts/cluster.sh up`; under CI=true an
unreachable cluster fails). Each scenario: topics with RF 3, two `ledger_service` processes in one
group (Redis Cluster client), 1% poison produced once both are in the group, one fault, then the
fault suite's proof: every good event has exactly one effect, every poison record is in the DLQ
exactly once with its original bytes, the group's lag is 0. No repeat is allowed: the service
processes are never killed here, only the cluster's nodes. Figures, besides the usual ones:
- `resumed_s`: seconds from the fault until every partition that paused made progress again
  (per-partition effect times from the ledger; a gap > `PAUSE_BOUND_S` is a pause);
- `longest_pause_s`: the longest time one partition made no progress after the fault (a gap
  that began before the fault counts from the fault on);
- `paused_partitions`: how many of the 6 partitions paused after the fault;
- `rf`: the replication factor the topic and its DLQ really have.
Events are produced over `PRODUCE_OVER_S` while the processes consume, so the faults meet the
producer too (the topic may hold a record twice only for a send that failed back to us).

FAULT_CLUSTER_EVENTS (default 20,000, the single-node suite's N) sets the events per scenario;
on a 2-core box a scenario takes 45-80 s (most of it the 40 s of production) and all six about
5.5 min, so both suites fit a 45-minute CI job without lowering it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.fault._cluster import (
    OFFSETS_TOPIC,
    ClusterStack,
    longest_pause,
    partition_times,
    paused_partitions,
    resumed_after,
    wait_in_sync,
)
from tests.fault._harness import (
    Event,
    Scenario,
    Verdict,
    assert_exactly_once,
    make_events,
    publish,
    run_to_completion,
    verify,
    wait_for_progress,
    wait_until,
)
from tests.fault.conftest import report

pytestmark = [pytest.mark.fault, pytest.mark.cluster, pytest.mark.integration, pytest.mark.timeout(300)]

N = int(os.environ.get("FAULT_CLUSTER_EVENTS", "20000"))
POISON_EVERY = 100
COMPLETION_TIMEOUT_S = 180.0
# Every scenario produces its events over this long (500/s at the default N), about what the two
# processes consume on a loaded 2-core box, so at the fault no partition waits behind a long
# backlog and its gaps are stalls, not its turn coming late.
PRODUCE_OVER_S = 40.0
OUTAGE_S = 10.0

MakeScenario = Callable[..., Scenario]


def stack_of(s: Scenario) -> ClusterStack:
    assert isinstance(s.stack, ClusterStack)
    return s.stack


async def start(s: Scenario, events: list[Event]) -> asyncio.Task[int]:
    """Topics (RF 3), two consumer processes, then the events, produced in the background over
    `PRODUCE_OVER_S` (the task returns how many sends were repeated); returns after a quarter of
    them had their effect. Production starts once both processes are in the group, so the only
    rebalances a scenario sees are the ones its fault causes."""
    await s.create_topics()
    s.spawn()
    s.spawn()

    async def both_members() -> bool:
        return await stack_of(s).group_state(s.group) == ("Stable", 2)

    await wait_until(
        both_members, within=120, what=f"[{s.name}] both processes in a stable group", scenario=s, every=0.5
    )
    producing = asyncio.create_task(publish(s.stack.kafka, s.topic, events, rate=N / PRODUCE_OVER_S))
    await wait_for_progress(s, N // 4, within=120)
    return producing


async def replication_factor(s: Scenario) -> int:
    described = await stack_of(s).describe([s.topic, s.dlq_topic])
    return min(len(p["replicas"]) for parts in described.values() for p in parts)  # type: ignore[arg-type]


async def busiest_leaders(s: Scenario, count: int) -> list[int]:
    """The `count` brokers leading the most partitions of the topic."""
    leaders = collections.Counter((await stack_of(s).leaders(s.topic)).values())
    return [broker for broker, _ in leaders.most_common(count)]


async def down_for_10_s(s: Scenario, stop: Callable[[], None], start: Callable[[], None]) -> dict[str, float]:
    """Stop nodes for 10 s (the script runs in a thread: consuming goes on), start them again;
    effects while they were down, and how long starting them took (`resumed_s` says the rest)."""
    await asyncio.to_thread(stop)
    at_stop = s.effect_count()
    await asyncio.sleep(OUTAGE_S)
    at_restart = s.effect_count()
    began = time.monotonic()
    await asyncio.to_thread(start)
    return {"effects_during_outage": at_restart - at_stop, "restart_s": round(time.monotonic() - began, 1)}


async def new_controller(stack: ClusterStack, old: int, *, within: float = 60.0) -> tuple[int, float]:
    """The quorum's new leader once it is another node than `old`, and the seconds until then."""
    started = time.monotonic()
    while True:
        try:
            leader = await asyncio.to_thread(stack.active_controller)
        except subprocess.CalledProcessError:  # no leader to describe the quorum yet
            leader = old
        if leader != old:
            return leader, round(time.monotonic() - started, 1)
        assert time.monotonic() - started < within, f"no controller but {old} within {within:.0f} s"


async def finish(
    s: Scenario, events: list[Event], producing: asyncio.Task[int], faults: list[float], **figures: object
) -> Verdict:
    """Run to completion, stop the processes, report the figures, assert exactly-once.

    `faults`: when each fault began (wall clock, like the ledger); `resumed_s` is given per fault,
    each one's pauses counted until the next fault began.
    """
    resent = await producing
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    times = partition_times(s.effects())
    bounds = [*faults[1:], float("inf")]
    resumed = [resumed_after(times, at, until) for at, until in zip(faults, bounds, strict=True)]
    verdict = await verify(
        s,
        events,
        rf=await replication_factor(s),
        **figures,
        resumed_s=resumed if len(resumed) > 1 else resumed[0],
        longest_pause_s=longest_pause(times, since=faults[0]),
        paused_partitions=paused_partitions(times, since=faults[0]),
        paused_messages=s.outcome_counts().get("mode:paused", 0),
        producer_resends=resent,
    )
    report(verdict)
    assert_exactly_once(verdict)
    assert verdict.figures["rf"] == 3, verdict.line()
    # The idempotent producer's own retries wrote no record twice; only a repeated send may have.
    assert len(events) <= verdict.topic_records <= len(events) + resent, verdict.line()
    return verdict


async def test_partition_leader_sigkill(cluster_scenario: MakeScenario) -> None:
    s = cluster_scenario("leader_kill")
    stack = stack_of(s)
    events = make_events(N, poison_every=POISON_EVERY)
    producing = await start(s, events)
    (victim,) = await busiest_leaders(s, 1)
    led = sum(1 for leader in (await stack.leaders(s.topic)).values() if leader == victim)
    fault_at = time.time()
    await asyncio.to_thread(stack.kill, f"kafka-{victim}")
    # The broker stays down: its partitions must move to another replica to go on.
    await finish(s, events, producing, [fault_at], killed=f"kafka-{victim}", partitions_led=led)


async def test_active_controller_sigkill(cluster_scenario: MakeScenario) -> None:
    s = cluster_scenario("controller_kill")
    stack = stack_of(s)
    events = make_events(N, poison_every=POISON_EVERY)
    producing = await start(s, events)
    victim = await asyncio.to_thread(stack.active_controller)
    led = sum(1 for leader in (await stack.leaders(s.topic)).values() if leader == victim)
    fault_at = time.time()
    await asyncio.to_thread(stack.kill, f"kafka-{victim}")
    successor, elected = await new_controller(stack, victim)
    await finish(
        s,
        events,
        producing,
        [fault_at],
        killed=f"kafka-{victim}",
        partitions_led=led,
        new_controller=successor,
        controller_elected_s=elected,
    )


async def test_rolling_restart_of_every_broker(cluster_scenario: MakeScenario) -> None:
    s = cluster_scenario("rolling_restart")
    stack = stack_of(s)
    events = make_events(N, poison_every=POISON_EVERY)
    producing = await start(s, events)
    controller = await asyncio.to_thread(stack.active_controller)
    # As operators do it: the active controller last, so the quorum moves once.
    order = [b for b in stack.brokers if b != controller] + [controller]
    starts: list[float] = []
    steps = []
    for broker in order:
        starts.append(time.time())
        began = time.monotonic()
        await asyncio.to_thread(stack.stop, f"kafka-{broker}")
        await asyncio.to_thread(stack.start_kafka)
        # Rejoined: back in every ISR, before the next broker goes (min.insync.replicas 2).
        await wait_in_sync(stack, [s.topic, s.dlq_topic, OFFSETS_TOPIC], within=120)
        steps.append(round(time.monotonic() - began, 1))
    await finish(s, events, producing, starts, restarted=[f"kafka-{b}" for b in order], restart_s=steps)


async def test_two_brokers_down_for_10_s(cluster_scenario: MakeScenario) -> None:
    s = cluster_scenario("two_brokers_down")
    stack = stack_of(s)
    events = make_events(N, poison_every=POISON_EVERY)
    producing = await start(s, events)
    victims = await busiest_leaders(s, 2)
    fault_at = time.time()

    def kill_both() -> None:
        for broker in victims:
            stack.kill(f"kafka-{broker}")

    # Two of three voters gone: no controller quorum, no leader election, no ISR change, and
    # min.insync.replicas 2 refuses every acks=all write (records, DLQ copies, offset commits).
    figures = await down_for_10_s(s, kill_both, stack.start_kafka)
    await finish(s, events, producing, [fault_at], killed=[f"kafka-{b}" for b in victims], **figures)


async def test_redis_cluster_master_sigkill_pauses_without_duplicates(cluster_scenario: MakeScenario) -> None:
    s = cluster_scenario("redis_master_kill")
    stack = stack_of(s)
    events = make_events(N, poison_every=POISON_EVERY)
    producing = await start(s, events)
    # The group's dedup keys share one hash slot ({<namespace>:<group>}): one master holds them.
    victim = await stack.dedup_master(f"alpha:dedup:{{*:{s.group}}}:*")
    fault_at = time.time()
    figures = await down_for_10_s(s, lambda: stack.kill(victim), stack.start_redis)
    verdict = await finish(s, events, producing, [fault_at], killed=victim, **figures)
    logs = "\n".join(path.read_text(errors="replace") for path in s.ledger_dir.glob("service-*.log"))
    print(
        f"[{s.name}] service logs: {logs.count('dedup: Redis unavailable')} pause warnings, "
        f"{logs.count('cluster is down')} mentions of CLUSTERDOWN"
    )
    # Pause: at most the message in flight in each of the two processes finishes (its done marker
    # waits for Redis); nothing runs without dedup while the master is down.
    assert figures["effects_during_outage"] <= 2, verdict.line()
    assert verdict.figures["paused_messages"] >= 1, f"no message met the outage: {verdict.line()}"
    assert s.outcome_counts().get("mode:failed_open", 0) == 0, verdict.line()


async def test_redis_cluster_other_master_sigkill_pauses_without_duplicates(
    cluster_scenario: MakeScenario,
) -> None:
    s = cluster_scenario("redis_other_master_kill")
    stack = stack_of(s)
    events = make_events(N, poison_every=POISON_EVERY)
    producing = await start(s, events)
    holder = await stack.dedup_master(f"alpha:dedup:{{*:{s.group}}}:*")
    # Never redis-1, the node REDIS_URL names: the client rediscovers the cluster through it, so
    # what reaches the service is the masters' CLUSTERDOWN, not a refused connection.
    victim = next(f"redis-{n}" for n in (2, 3) if f"redis-{n}" != holder)
    fault_at = time.time()
    # The group's keys stay up, but once the others mark the victim FAIL (cluster-node-timeout
    # 3 s), cluster_state is fail on every master (full coverage is required by default) and each
    # answers CLUSTERDOWN, for the group's keys too: the service must pause all the same.
    figures = await down_for_10_s(s, lambda: stack.kill(victim), stack.start_redis)
    verdict = await finish(s, events, producing, [fault_at], killed=victim, dedup_keys_on=holder, **figures)
    # The outage policy, not the handler's retry budget, must meet CLUSTERDOWN: a retry budget
    # spent while the cluster is down dead-letters good events that never ran.
    assert verdict.figures["paused_messages"] >= 1, f"no message met the outage as one: {verdict.line()}"
    assert s.outcome_counts().get("mode:failed_open", 0) == 0, verdict.line()
