"""Exactly-once consume → produce under faults, as separate OS processes on the suite's own Kafka.

The proof in every scenario is the committed output: a `read_committed` reader of the output
topic sees exactly one record per good input and the DLQ one record per poison input, and the
group's lag is 0. Handler runs may repeat (an aborted batch is redone); the ledger is not the
proof here. Stage 1 of the pipeline scenario is the service (`tests.fault.pipeline_stage1`).
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Sequence

import pytest

from alpha_streaming import EventEnvelope
from alpha_streaming._dlq import DeadLetter
from tests.fault._harness import (
    Event,
    Scenario,
    ServiceProcess,
    kill_at,
    make_events,
    outage,
    publish,
    run_to_completion,
    wait_for_progress,
    wait_until,
)
from tests.fault.conftest import report

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(300)]

MakeScenario = Callable[..., Scenario]
N = 20_000
SMALL_N = 6_000
POISON_EVERY = 100
KILLS = 5
COMPLETION_TIMEOUT_S = 180.0


def eos_pair(scenario: MakeScenario, name: str, **env: str) -> tuple[Scenario, Scenario]:
    """The input scenario running stage 1 with `exactly_once`, and its output topic's scenario."""
    out = scenario(f"{name}_out")
    s = scenario(
        f"{name}_in",
        app="tests.fault.pipeline_stage1:app",
        FAULT_OUTPUT_TOPIC=out.topic,
        FAULT_GUARANTEE="exactly_once",
        ALPHA_REDPANDA_LINGER_MS="0",
        **env,
    )
    return s, out


async def committed_once(
    s: Scenario, out: Scenario, events: Sequence[Event], name: str, **figures: object
) -> str:
    """Assert the committed output holds one record per good input, the DLQ one per poison record,
    and the lag is 0; the scenario's figures line."""
    good = [e for e in events if not e.poison]
    outputs = await out.read_topic(out.topic, isolation_level="read_committed")
    per_input = collections.Counter(EventEnvelope.from_bytes(r.value or b"").causation_id for r in outputs)
    letters = await s.read_topic(s.dlq_topic, isolation_level="read_committed")
    origins = collections.Counter(
        (d.original_partition, d.original_offset)
        for d in (DeadLetter.from_headers(r.headers) for r in letters)
    )
    runs = collections.Counter(effect.event_id for effect in s.effects())
    lag = await s.lag()
    line = (
        f"[{name}] events={len(events)} good={len(good)} outputs={len(outputs)} "
        f"distinct_parents={len(per_input)} dlq={len(letters)} "
        f"handler_reruns={sum(n - 1 for n in runs.values() if n > 1)} lag={lag} "
        + " ".join(f"{k}={v}" for k, v in figures.items())
    ).rstrip()
    report(line)
    assert {e.event_id for e in good} == set(per_input), line
    assert all(n == 1 for n in per_input.values()), f"an input with several committed outputs: {line}"
    assert len(outputs) == len(good), line
    assert len(letters) == len(events) - len(good) == len(origins), line
    assert lag == 0, line
    return line


async def test_exactly_once_consume_produce_under_sigkill_commits_one_output_per_input(
    scenario: MakeScenario,
) -> None:
    """SIGKILLed five times at random points: each kill leaves an open transaction that the
    restarted instance (same instance id, so the same transactional id) fences and aborts."""
    s, out = eos_pair(scenario, "eos", ALPHA_INSTANCE_ID="fault-eos-1")
    await asyncio.gather(s.create_topics(), out.create_topics())
    events = make_events(N + N // (POISON_EVERY - 1), poison_every=POISON_EVERY)
    await publish(s.stack.kafka, s.topic, events)
    seed = random.randrange(1 << 30)
    good = sum(1 for e in events if not e.poison)
    points = sorted(random.Random(seed).sample(range(100, good * 4 // 5), KILLS))
    _, recover = await kill_at(s, s.spawn(), points)
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    await committed_once(s, out, events, "exactly_once", seed=seed, recover_s=recover)


async def freeze_mid_transaction(s: Scenario, out: Scenario, process: ServiceProcess) -> None:
    """SIGSTOP `process` at a moment when its transaction has written outputs it has not committed."""
    for _ in range(50):
        process.freeze()
        if await out.open_transactions(out.topic):
            return
        process.thaw()
        await wait_for_progress(s, s.effect_count() + 20, within=60)
    raise AssertionError(f"[{s.name}] never caught the service with an open transaction")


async def test_a_frozen_instance_is_fenced_by_its_replacement_and_its_writes_never_appear(
    scenario: MakeScenario,
) -> None:
    """The old instance is SIGSTOPped mid-transaction; its replacement with the same instance id
    (hence transactional id) starts, takes the partitions once the old one's session expired, and
    finishes the topic. Resumed, the old one finds its producer fenced and exits: nothing it wrote
    becomes visible, and it commits no offset."""
    s, out = eos_pair(scenario, "eos_fence", ALPHA_INSTANCE_ID="fault-eos-same")
    await asyncio.gather(s.create_topics(), out.create_topics())
    events = make_events(SMALL_N, poison_every=POISON_EVERY)
    await publish(s.stack.kafka, s.topic, events)
    old = s.spawn()
    await wait_for_progress(s, SMALL_N // 5, within=120)
    await freeze_mid_transaction(s, out, old)
    s.spawn()  # the replacement: its producer's init aborts the old transaction and fences it
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    old.thaw()
    exited = await wait_until(
        lambda: not old.alive(), within=60, what="the fenced instance exits", scenario=s
    )
    s.stop_all()
    await committed_once(s, out, events, "eos_fence", fenced_exit_s=round(exited, 2))


async def test_a_frozen_instance_whose_partitions_moved_commits_nothing_when_resumed(
    scenario: MakeScenario,
) -> None:
    """Two instances with their own ids (no fencing between them): the first is SIGSTOPped
    mid-transaction, the second takes its partitions when its session expires and redoes them.
    Resumed, the first must not commit its open transaction (its outputs would double the
    second's). Two guards, as the README recommends them together: the membership check before
    every commit (a freeze before it), and a transaction timeout (3 s) below the session timeout
    (6 s; the broker aborts expired transactions within 1 s), which covers a freeze between that
    check and the EndTxn: the broker has aborted the transaction before the partitions move."""
    s, out = eos_pair(scenario, "eos_moved", FAULT_TXN_TIMEOUT_MS="3000")
    await asyncio.gather(s.create_topics(), out.create_topics())
    events = make_events(SMALL_N, poison_every=POISON_EVERY)
    await publish(s.stack.kafka, s.topic, events)
    first = s.spawn(ALPHA_INSTANCE_ID="fault-eos-a")
    await wait_for_progress(s, SMALL_N // 5, within=120)
    await freeze_mid_transaction(s, out, first)
    s.spawn(ALPHA_INSTANCE_ID="fault-eos-b")
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    first.thaw()
    # The resumed instance's transaction ends one way or the other (committed, or aborted).
    settled = await wait_until(
        lambda: _no_open_transactions(out), within=60, what="the resumed transaction ends", scenario=s
    )
    s.stop_all()
    await committed_once(s, out, events, "eos_moved", settled_s=round(settled, 2))


async def test_exactly_once_across_a_kafka_restart_commits_one_output_per_input(
    scenario: MakeScenario,
) -> None:
    """Kafka stopped for 10 s while transactions are open and being committed; started again."""
    s, out = eos_pair(scenario, "eos_restart", ALPHA_INSTANCE_ID="fault-eos-restart")
    await asyncio.gather(s.create_topics(), out.create_topics())
    events = make_events(N, poison_every=POISON_EVERY)
    await publish(s.stack.kafka, s.topic, events)
    s.spawn()
    await wait_for_progress(s, N // 4, within=120)
    figures = await outage(s, s.stack.stop_kafka, s.stack.start_kafka)
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    await committed_once(s, out, events, "eos_restart", **figures)


async def _no_open_transactions(out: Scenario) -> bool:
    return await out.open_transactions(out.topic) == 0
