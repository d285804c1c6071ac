"""Fault injection on a two-stage pipeline: consume -> produce under SIGKILL.

Stage 1 (`pipeline_stage1`, a decorator-style app) turns every input into one child event by
returning it through `@broker.publisher`; stage 2 (`pipeline_stage2`, builder-made) consumes the
children and records each one's effect. Both deduplicate, both are SIGKILLed five times at random
points and restarted. The proof, on top of every scenario's (lag 0, poison in the DLQ once with
its original bytes, a stage's repeated effects within its kills):
- no output is lost: every input has a child on the output topic (its output was acknowledged by
  Kafka before the input was marked done and committed);
- a re-run emits the same child: every input has exactly ONE distinct child id on the output
  topic, however many times stage 1 ran it and published it;
- so stage 2's dedup absorbs a re-run's output: every input's child has an effect, and repeated
  effects per input are within stage 2's kills (stage 1's re-runs add none).
The child-id check bites when a stage-1 kill lands after an output's ack and before the input's
done marker: the input runs again (stage 1's `duplicate_effects`) and its output is on the topic
twice (`output_records` > `distinct_child_ids`). The kills are random, so a run may miss that
window; the figures show whether it was hit.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from collections.abc import Callable, Sequence

import pytest

from alpha_streaming import EventEnvelope
from tests.fault._harness import (
    Event,
    Scenario,
    assert_exactly_once,
    kill_at,
    make_events,
    publish,
    run_to_completion,
    verify,
    wait_until,
)
from tests.fault.conftest import report
from tests.fault.test_faults import COMPLETION_TIMEOUT_S, POISON_EVERY

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(300)]

N = int(os.environ.get("FAULT_EVENTS", "20000"))
KILLS = 5
STAGE1_APP = "tests.fault.pipeline_stage1:app"
STAGE2_APP = "tests.fault.pipeline_stage2:app"

MakeScenario = Callable[..., Scenario]


async def test_consume_produce_under_sigkill_emits_one_child_per_input_and_one_effect_downstream(
    scenario: MakeScenario,
) -> None:
    downstream = scenario("pipeline_out", app=STAGE2_APP)
    # One message in flight at a time, each waiting for its output's ack: no linger for a batch
    # that never fills (the default 5 ms would be most of a message's time).
    upstream = scenario(
        "pipeline_in", app=STAGE1_APP, FAULT_OUTPUT_TOPIC=downstream.topic, ALPHA_REDPANDA_LINGER_MS="0"
    )
    await asyncio.gather(upstream.create_topics(), downstream.create_topics())
    # N good inputs, and 1% poison among them.
    events = make_events(N + N // (POISON_EVERY - 1), poison_every=POISON_EVERY)
    good = [e for e in events if not e.poison]
    await publish(upstream.stack.kafka, upstream.topic, events)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"[fault pipeline] seed={seed}")
    started = time.monotonic()
    stage1_points = sorted(rng.sample(range(100, len(good) * 4 // 5), KILLS))
    stage2_points = sorted(rng.sample(range(100, len(good) * 4 // 5), KILLS))
    (_, stage1_recover), (_, stage2_recover) = await asyncio.gather(
        kill_at(upstream, upstream.spawn(), stage1_points),
        kill_at(downstream, downstream.spawn(), stage2_points),
    )
    # Stage 1 done: every input ran and its group committed the whole input topic. Stopped, so the
    # output topic holds all it will ever hold; stage 2 is done when it committed all of it.
    await run_to_completion(upstream, events, within=COMPLETION_TIMEOUT_S)
    stage1_done = time.monotonic() - started
    upstream.stop_all()

    async def stage2_done() -> bool:
        return await downstream.lag() == 0

    await wait_until(
        stage2_done,
        within=COMPLETION_TIMEOUT_S,
        what="[pipeline] stage 2 committed the whole output topic",
        scenario=downstream,
    )
    elapsed = time.monotonic() - started
    downstream.stop_all()

    records = await downstream.read_topic(downstream.topic)
    outputs = [EventEnvelope.from_bytes(r.value or b"") for r in records]
    lineage = Lineage(good, outputs)
    children = [Event(b"", b"", {}, child_id, poison=False) for child_id in lineage.child_ids]
    stage1 = await verify(
        upstream,
        events,
        kills=KILLS,
        seed=seed,
        output_records=len(outputs),
        distinct_child_ids=len(lineage.child_ids),
        inputs_without_output=len(lineage.without_output),
        inputs_with_several_child_ids=len(lineage.several),
        outputs_not_matching_an_input=lineage.strays,
        recover_s=stage1_recover,
        done_s=round(stage1_done, 1),
    )
    report(stage1)
    effects = downstream.effects()
    per_input = collections.Counter(effect.extra[0] for effect in effects)
    stage2 = await verify(
        downstream,
        children,
        kills=KILLS,
        inputs=len(good),
        inputs_without_effect=len({e.event_id for e in good} - per_input.keys()),
        duplicate_effects_per_input=sum(n - 1 for n in per_input.values() if n > 1),
        effects_not_matching_an_input=sum(
            1 for e in effects if lineage.parent_seq.get(e.extra[0]) != int(e.extra[1])
        ),
        recover_s=stage2_recover,
        elapsed_s=round(elapsed, 1),
    )
    report(stage2)

    figures = stage2.figures
    lost = lineage.without_output
    assert not lost, f"{len(lost)} inputs whose output was lost, e.g. {lost[:3]}\n{stage1.line()}"
    several = list(lineage.several.items())
    assert not several, f"{len(several)} inputs with several child ids, e.g. {several[:3]}\n{stage1.line()}"
    assert lineage.strays == 0, stage1.line()
    # Stage 1: each handler run is a ledger line; a SIGKILL may repeat the one in flight.
    assert_exactly_once(stage1, repeated_effects_allowed=KILLS)
    assert stage1.poison_records == len(events) - len(good), stage1.line()
    # Stage 2: every child's effect, once (within its own kills), also counted per input.
    assert_exactly_once(stage2, repeated_effects_allowed=KILLS)
    assert stage2.dlq_records == 0, stage2.line()
    assert figures["inputs_without_effect"] == 0, stage2.line()
    assert figures["effects_not_matching_an_input"] == 0, stage2.line()
    assert figures["duplicate_effects_per_input"] <= KILLS, stage2.line()


class Lineage:
    """The output topic read back against the inputs: which child ids each input got."""

    def __init__(self, good: Sequence[Event], outputs: Sequence[EventEnvelope]) -> None:
        self.parent_seq = {e.event_id: EventEnvelope.from_bytes(e.value).data["seq"] for e in good}
        self.children: dict[str, set[str]] = collections.defaultdict(set)
        self.strays = 0  # outputs whose causation is no input, or whose seq is not its parent's
        for child in outputs:
            parent = child.causation_id
            if parent is None or self.parent_seq.get(parent) != child.data.get("seq"):
                self.strays += 1
                continue
            self.children[parent].add(child.id)
        self.child_ids = sorted({c for ids in self.children.values() for c in ids})
        self.without_output = [p for p in self.parent_seq if p not in self.children]
        self.several = {p: sorted(ids) for p, ids in self.children.items() if len(ids) > 1}
