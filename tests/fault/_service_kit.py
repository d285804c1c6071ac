"""What the fault suite's service processes share: the ledger and the per-process figures.

One ledger line per effect, appended with a single
unbuffered `os.write` to `FAULT_LEDGER_DIR/ledger-<pid>.txt` (`event_id partition offset pid time`,
then any extra fields), so a SIGKILL keeps every effect that happened and invents none; every
100 ms the process's counters (`alpha.messages` by outcome, Redis outages by mode) go to
`FAULT_LEDGER_DIR/metrics-<pid>.json`. `_harness.Scenario` reads both. On SIGUSR1 a process
writes one `TASK-DUMP` line per asyncio task (its stack) to its log: what a hung service waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from faststream import FastStream
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from middlewares._low_water import CommitWindow
from middlewares._pipeline import Pipeline

METRICS_EVERY_S = 0.1
TASK_DUMP = "TASK-DUMP"
COUNTED = {"alpha.messages": "outcome", "alpha.dedup.redis_outage": "mode"}


class Ledger:
    """Appends one line per effect with a single `os.write` (atomic for short appends)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(
            directory / f"ledger-{os.getpid()}.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )

    def record(self, event_id: str, partition: int, offset: int, *extra: Any) -> None:
        fields = " ".join(str(field) for field in extra)
        line = f"{event_id} {partition} {offset} {os.getpid()} {time.time():.3f} {fields}".rstrip()
        os.write(self.fd, f"{line}\n".encode())


class ProcessFigures:
    """This process's counters, written to `metrics-<pid>.json` while the app runs and at its end."""

    def __init__(self, directory: Path) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.directory = directory
        self.path = directory / f"metrics-{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    def attach(self, app: FastStream) -> None:
        app.after_startup(self._start)
        app.after_shutdown(self._stop)

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._publish())
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
        (self.directory / f"ready-{os.getpid()}").touch()

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.write()
        self.meter_provider.shutdown()

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(METRICS_EVERY_S)
            self.write()

    def write(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.counts()))
        partial.replace(self.path)

    def counts(self) -> dict[str, int]:
        """`{"outcome:processed": n, ..., "mode:paused": n}` from this process's counters."""
        counts: dict[str, int] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    label = COUNTED.get(metric.name)
                    if label is None:
                        continue
                    for point in metric.data.data_points:
                        value = (point.attributes or {}).get(label, "?")
                        key = f"{label}:{value}"
                        counts[key] = counts.get(key, 0) + int(point.value)  # type: ignore[union-attr]
        return counts


def _dump_tasks() -> None:
    lines = []
    for task in asyncio.all_tasks():
        frames = " <- ".join(
            f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()
        )
        lines.append(f"{task.get_name()}: {frames}")
    # The pipeline's and the commit windows' state: what admission and commits wait on.
    for thing in gc.get_objects():
        if isinstance(thing, Pipeline):
            for lane in thing._lanes.values():
                consumer = lane.subscriber.consumer
                assigned = sorted(tp.partition for tp in consumer.assignment()) if consumer else None
                lines.append(
                    f"lane: assigned={assigned} gone={sorted(lane.gone)} rewound={lane.rewound} "
                    f"tickets={len(lane.tickets)} room={lane.room.free} fetched={len(lane.fetched)}"
                )
        elif isinstance(thing, CommitWindow):
            for by_number in thing._partitions.values():
                for n, part in sorted(by_number.items()):
                    lines.append(
                        f"window [{n}]: in_flight={sorted(part.in_flight)[:5]} finished={part.finished} "
                        f"committed={part.committed} hold={part.hold}"
                    )
    for line in lines:
        print(f"{TASK_DUMP} {line}", file=sys.stderr, flush=True)
