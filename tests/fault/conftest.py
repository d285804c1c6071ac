"""Fixtures of the fault-injection suite (`pytest -m fault` runs it alone).

The suite starts its own Kafka and Redis (see `_harness.FaultStack`) and prints every scenario's
figures in pytest's terminal summary, so they are in the CI log whether the tests pass or fail.
The `cluster` scenarios (`pytest -m cluster`) run on `scripts/cluster.sh`'s cluster instead
(`_cluster.ClusterStack`); after each one every node is started again, so a scenario that failed
half-way leaves no broker or Redis master down for the next.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.fault._cluster import ClusterStack
from tests.fault._harness import LEDGER_APP, FaultStack, Scenario, Stack, Verdict, delete_topics

FIGURES: list[str] = []


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    stack = FaultStack()
    try:
        stack.up()
    except (RuntimeError, OSError) as exc:
        unavailable(f"the fault suite's own Kafka/Redis ({stack.kafka}, {stack.redis}) ({exc})")
    delete_topics(stack.kafka, prefix="fault.")  # what earlier sessions left
    yield stack
    _delete_made_topics(stack)
    stack.down()


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[ClusterStack]:
    stack = ClusterStack()
    was_up = stack.answers()
    try:
        stack.up()
        stack.wait_ready()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable(
            f"scripts/cluster.sh's Kafka cluster and Redis Cluster ({stack.kafka}, {stack.redis}) ({exc})"
        )
    # What earlier runs left (an interrupted one): topics piling up over runs once ran the
    # brokers out of heap. Swept, not wiped: runs on a just-formatted cluster failed early.
    delete_topics(stack.kafka, prefix="fault.")
    yield stack
    _delete_made_topics(stack)
    if not was_up:  # a cluster someone else started stays up
        stack.down()


MADE_TOPICS: dict[str, list[str]] = {}
"""Per stack (bootstrap address), the topics this session's scenarios created."""


def _delete_made_topics(stack: Stack) -> None:
    try:
        delete_topics(stack.kafka, names=MADE_TOPICS.pop(stack.kafka, []))
    except Exception as exc:  # the next session's sweep deletes them
        print(f"[fault] could not delete this session's topics on {stack.kafka}: {exc!r}")


def _scenarios(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []

    def make(name: str, *, app: str = LEDGER_APP, **env: str) -> Scenario:
        made.append(Scenario(name, stack, tmp_path, env=env, app=app))
        return made[-1]

    yield make
    for each in made:  # a failed scenario must not leave consumers behind
        for process in each.processes:
            if process.alive():
                process.kill()
    # Deleted when the session ends, not now: deleting big topics while the next scenario
    # creates its own delayed its metadata past the service's startup topic check.
    MADE_TOPICS.setdefault(stack.kafka, []).extend(t for each in made for t in (each.topic, each.dlq_topic))


@pytest.fixture
def scenario(fault_stack: FaultStack, tmp_path: Path) -> Iterator[Callable[..., Scenario]]:
    yield from _scenarios(fault_stack, tmp_path)


@pytest.fixture
def cluster_scenario(cluster_stack: ClusterStack, tmp_path: Path) -> Iterator[Callable[..., Scenario]]:
    yield from _scenarios(cluster_stack, tmp_path)
    cluster_stack.up()  # every node the scenario stopped or killed runs again


def report(result: Verdict | str) -> None:
    """A scenario's figures line, printed and repeated in pytest's summary."""
    line = result if isinstance(result, str) else result.line()
    FIGURES.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("fault-injection figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
