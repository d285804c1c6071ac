"""The replication-factor warnings `topics bootstrap` and `ensure_topics` give on a cluster."""

from __future__ import annotations

import pytest

from alpha_streaming._replication import ClusterReplication, replication_warning

CLUSTER = ClusterReplication(brokers=3, default_replication_factor=3, min_insync_replicas=2)


def test_the_cluster_default_needs_no_warning() -> None:
    assert replication_warning("paper.orders.filled", 3, CLUSTER) is None


@pytest.mark.parametrize(
    ("factor", "says"),
    [(1, "replication factor 1 on a 3-broker cluster"), (2, "not above min.insync.replicas=2")],
)
def test_fragile_factors_on_a_cluster_are_named(factor: int, says: str) -> None:
    warning = replication_warning("paper.orders.filled", factor, CLUSTER)
    assert warning is not None and says in warning and "paper.orders.filled" in warning


def test_a_single_broker_gets_no_warning() -> None:
    single = ClusterReplication(brokers=1, default_replication_factor=1, min_insync_replicas=1)
    assert replication_warning("t", 1, single) is None
