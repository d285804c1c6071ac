"""Fault injection: a builder-made service in separate OS processes, real Kafka, real Redis.

Every scenario publishes a known set of events, breaks something mid-stream, and ends with the
same proof: every good event's effect is in the ledger exactly once (the one allowance: an
event in flight in a SIGKILLed process may repeat once, DESIGN.md's honest window), every
poison record on the topic is in the dead-letter topic exactly once with its original bytes,
and the consumer group's lag is 0. Figures are printed in pytest's terminal summary.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import random
import time
from collections.abc import Callable

import pytest

from tests.fault._harness import (
    Scenario,
    assert_exactly_once,
    make_events,
    outage,
    publish,
    run_to_completion,
    verify,
    wait_for_progress,
    wait_until,
)
from tests.fault.conftest import report

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(300)]

N = int(os.environ.get("FAULT_EVENTS", "20000"))
POISON_EVERY = 100  # 1% poison in every scenario, 5% in the poison storm
GRACEFUL_TIMEOUT_S = 15.0  # StreamServiceBuilder's default graceful_timeout
COMPLETION_TIMEOUT_S = 180.0
# A consumer that stops for longer than this is stalled: far above one transient retry's backoff
# (<= 0.05 s here), far below what a blocked partition looks like (a retry loop, a lease wait).
STALL_BOUND_S = 3.0
MAX_POLL_INTERVAL_S = 4.0
SLOW_HANDLER_S = 6.0  # > MAX_POLL_INTERVAL_S: aiokafka leaves the group mid-handler

MakeScenario = Callable[..., Scenario]
BATCH_LEDGER_APP = "tests.fault.batch_ledger_service:app"


async def test_sigkill_five_times_loses_nothing_and_repeats_at_most_the_events_in_flight(
    scenario: MakeScenario,
) -> None:
    # One handler runs at a time per process: at most one event is in flight per kill.
    await _sigkill_five_times(scenario("sigkill"), in_flight=1)


async def test_sigkill_five_times_with_concurrency_64_repeats_at_most_64_per_kill(
    scenario: MakeScenario,
) -> None:
    # 64 handlers at once (97 keys), each awaiting 2 ms of I/O: up to 64 in flight at a kill.
    s = scenario("sigkill64", FAULT_CONCURRENCY="64", FAULT_IO_S="0.002")
    await _sigkill_five_times(s, in_flight=64)


async def test_sigkill_five_times_with_a_batch_subscriber_repeats_at_most_one_batch_per_kill(
    scenario: MakeScenario,
) -> None:
    # Batches of up to 50: the next one is read and claimed while this one is confirmed, but
    # its handler waits for that, so at most one batch is unconfirmed at a kill. No poison: one
    # invalid record dead-letters its whole batch (the batch is the unit of failure).
    s = scenario("sigkill_batch", app=BATCH_LEDGER_APP, FAULT_BATCH="50")
    await _sigkill_five_times(s, in_flight=50, poison_every=0)


async def _sigkill_five_times(s: Scenario, *, in_flight: int, poison_every: int = POISON_EVERY) -> None:
    await s.create_topics()
    events = make_events(N, poison_every=poison_every)
    await publish(s.stack.kafka, s.topic, events)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    process = s.spawn()
    started = time.monotonic()
    recoveries = []
    kills = 0
    good = sum(1 for e in events if not e.poison)
    # Random points spread over the stream: the first kill may land before the first commit.
    for point in sorted(rng.sample(range(100, good * 4 // 5), 5)):
        await wait_for_progress(s, point, within=120)
        process.kill()
        kills += 1
        at_kill = s.effect_count()
        process = s.spawn()
        recoveries.append(round(await wait_for_progress(s, at_kill, within=120), 2))
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    elapsed = time.monotonic() - started
    s.stop_all()
    verdict = await verify(
        s, events, kills=kills, seed=seed, recover_s=recoveries, elapsed_s=round(elapsed, 1)
    )
    report(verdict)
    assert_exactly_once(verdict, repeated_effects_allowed=in_flight * kills)


async def test_sigterm_mid_stream_finishes_in_flight_work_commits_and_exits_0(scenario: MakeScenario) -> None:
    s = scenario("sigterm")
    await s.create_topics()
    events = make_events(N, poison_every=POISON_EVERY)
    await publish(s.stack.kafka, s.topic, events)
    process = s.spawn()
    await wait_for_progress(s, N // 3, within=120)
    code, took = process.terminate(timeout=GRACEFUL_TIMEOUT_S + 10)
    assert code == 0, f"exit code {code} after SIGTERM\n{s.logs()}"
    assert took < GRACEFUL_TIMEOUT_S, f"graceful stop took {took:.1f} s"
    # Finished and committed: the committed offsets are exactly where the ledger stops, per
    # partition (every record below them has its effect or its DLQ copy; none above has).
    committed = await s.committed()
    effects = s.effects()
    poison_values = {e.value for e in events if e.poison}
    source = await s.read_topic(s.topic)
    done_offsets = {(e.partition, e.offset) for e in effects} | {
        (r.partition, r.offset)
        for r in source
        if r.value in poison_values and r.offset < committed.get(r.partition, 0)
    }
    for partition, position in committed.items():
        below = {o for p, o in done_offsets if p == partition and o < position}
        above = {o for p, o in done_offsets if p == partition and o >= position}
        assert below == set(range(position)), f"partition {partition}: gaps below committed {position}"
        assert not above, f"partition {partition}: effects at/after committed {position}: {sorted(above)[:5]}"
    at_stop = len(effects)
    s.spawn()
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    verdict = await verify(s, events, effects_at_sigterm=at_stop, exit_code=code, stop_s=round(took, 2))
    report(verdict)
    assert_exactly_once(verdict)


async def test_kafka_stopped_for_10_s_while_producing_and_consuming(scenario: MakeScenario) -> None:
    s = scenario("kafka_restart")
    await s.create_topics()
    events = make_events(N, poison_every=POISON_EVERY)
    s.spawn()
    # Paced over ~20 s, so the outage hits the producer and the consumer alike.
    producing = asyncio.create_task(publish(s.stack.kafka, s.topic, events, rate=N / 20))
    await wait_for_progress(s, N // 5, within=120)
    figures = await outage(s, s.stack.stop_kafka, s.stack.start_kafka)
    resent = await producing
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    verdict = await verify(s, events, producer_resends=resent, **figures)
    report(verdict)
    assert_exactly_once(verdict)
    # The idempotent producer's own retries across the outage wrote no record twice; only a send
    # that failed back to us and was repeated may have.
    assert len(events) <= verdict.topic_records <= len(events) + resent, verdict.line()


async def test_redis_stopped_for_10_s_pauses_and_resumes_without_duplicates(scenario: MakeScenario) -> None:
    s = scenario("redis_restart")
    await s.create_topics()
    events = make_events(N, poison_every=POISON_EVERY)
    await publish(s.stack.kafka, s.topic, events)
    s.spawn()
    await wait_for_progress(s, N // 4, within=120)
    figures = await outage(s, s.stack.stop_redis, s.stack.start_redis)
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    paused = s.outcome_counts().get("mode:paused", 0)
    verdict = await verify(s, events, paused_messages=paused, **figures)
    report(verdict)
    assert_exactly_once(verdict)
    # Default policy: pause. At most the one message in flight when Redis went away finishes
    # (its done marker waits for Redis); nothing runs without dedup while Redis is down.
    assert figures["effects_during_outage"] <= 1, verdict.line()
    assert paused >= 1, f"no message met the outage: {verdict.line()}"


async def test_rebalance_from_one_to_three_processes_and_back(scenario: MakeScenario) -> None:
    s = scenario("rebalance")
    await s.create_topics()
    events = make_events(N, poison_every=POISON_EVERY)
    await publish(s.stack.kafka, s.topic, events)
    s.spawn()
    await wait_for_progress(s, N // 5, within=120)
    added = [s.spawn(), s.spawn()]
    joined = await wait_until(
        lambda: {p.pid for p in added} <= {e.pid for e in s.effects()},
        within=120,
        what="[rebalance] both added processes took partitions",
        scenario=s,
    )
    await wait_for_progress(s, N * 3 // 5, within=120)
    stops = [p.terminate(GRACEFUL_TIMEOUT_S + 10) for p in added]
    assert [code for code, _ in stops] == [0, 0], f"scale-down exit codes {stops}\n{s.logs()}"
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    per_process = sorted(collections.Counter(e.pid for e in s.effects()).values(), reverse=True)
    verdict = await verify(
        s,
        events,
        effects_per_process=per_process,
        join_s=round(joined, 2),
        scale_down_s=[round(t, 2) for _, t in stops],
    )
    report(verdict)
    assert_exactly_once(verdict)


async def test_poison_storm_dead_letters_every_poison_once_and_never_stalls(scenario: MakeScenario) -> None:
    s = scenario("poison_storm")
    await s.create_topics()
    # 5% poison (undecodable, not an envelope, invalid payload) and 0.5% transient first failures.
    events = make_events(N, poison_every=20, fail_first_every=200)
    await publish(s.stack.kafka, s.topic, events)
    s.spawn()
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    # One consumer processes one message at a time: any stalled message shows as a gap between
    # consecutive completions (effects and DLQ writes). A transient failure's one retry waits at
    # most its backoff (ALPHA_RETRY__BASE_DELAY_S); a permanent one is dead-lettered at once.
    completions = sorted(
        [e.at for e in s.effects()] + [r.timestamp / 1000 for r in await s.read_topic(s.dlq_topic)]
    )
    gaps = [b - a for a, b in itertools.pairwise(completions)]
    counts = s.outcome_counts()
    verdict = await verify(
        s,
        events,
        retried_ok=sum(1 for e in events if not e.poison and b'"fail_first":true' in e.value),
        max_gap_s=round(max(gaps), 3),
        dead_lettered=counts.get("outcome:dead_lettered", 0),
    )
    report(verdict)
    assert_exactly_once(verdict)
    assert verdict.poison_records == N // 20
    assert max(gaps) < STALL_BOUND_S, verdict.line()


async def test_handler_slower_than_max_poll_interval_runs_once(scenario: MakeScenario) -> None:
    s = scenario(
        "slow_handler",
        ALPHA_CONSUMER__MAX_POLL_INTERVAL_MS=str(int(MAX_POLL_INTERVAL_S * 1000)),
    )
    await s.create_topics()
    slow = [N // 4, N // 2]
    events = make_events(N, poison_every=POISON_EVERY, slow=slow, slow_s=SLOW_HANDLER_S)
    await publish(s.stack.kafka, s.topic, events)
    s.spawn()
    s.spawn()
    await run_to_completion(s, events, within=COMPLETION_TIMEOUT_S)
    s.stop_all()
    per_pid = {path.stem: json.loads(path.read_text()) for path in s.ledger_dir.glob("metrics-*.json")}
    verdict = await verify(
        s, events, slow_events=len(slow), slow_s=SLOW_HANDLER_S, outcomes_per_process=per_pid
    )
    report(verdict)
    assert_exactly_once(verdict)
    # The forced rebalance happened: records were delivered a second time and dedup skipped them.
    assert verdict.deduplicated >= 1, verdict.line()
