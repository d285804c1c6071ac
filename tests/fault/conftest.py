"""Fixtures of the fault-injection suite (`pytest -m fault` runs it alone).

The suite starts its own Kafka and Redis (see `_harness.FaultStack`) and prints every scenario's
figures in pytest's terminal summary, so they are in the CI log whether the tests pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.fault._harness import LEDGER_APP, FaultStack, Scenario, Verdict

FIGURES: list[str] = []


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    stack = FaultStack()
    try:
        stack.up()
    except (RuntimeError, OSError) as exc:
        unavailable(f"the fault suite's own Kafka/Redis ({stack.kafka}, {stack.redis}) ({exc})")
    yield stack
    stack.down()


@pytest.fixture
def scenario(fault_stack: FaultStack, tmp_path: Path) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []

    def make(name: str, *, app: str = LEDGER_APP, **env: str) -> Scenario:
        made.append(Scenario(name, fault_stack, tmp_path, env=env, app=app))
        return made[-1]

    yield make
    for each in made:  # a failed scenario must not leave consumers behind
        for process in each.processes:
            if process.alive():
                process.kill()


def report(verdict: Verdict) -> None:
    FIGURES.append(verdict.line())
    print(verdict.line())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("fault-injection figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
