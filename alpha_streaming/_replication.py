"""What replication a new topic gets when nobody says: the cluster's own default, with a warning
when that default would let one broker loss take partitions offline.

aiokafka refuses `replication_factor=-1` ("broker default") client-side, so the broker's
`default.replication.factor` and `min.insync.replicas` are read from its config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

__all__ = ("ClusterReplication", "cluster_replication", "replication_warning")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterReplication:
    brokers: int
    default_replication_factor: int
    min_insync_replicas: int


async def cluster_replication(admin: AIOKafkaAdminClient) -> ClusterReplication:
    """The live broker count and the replication defaults of the cluster `admin` talks to."""
    cluster = await admin.describe_cluster()
    brokers = cluster["brokers"]
    resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]))
    described = await admin.describe_configs([resource])
    values = {
        entry["config_names"]: entry["config_value"]
        for response in described
        for item in response.to_object()["resources"]
        for entry in item["config_entries"]
    }
    return ClusterReplication(
        brokers=len(brokers),
        default_replication_factor=int(values.get("default.replication.factor") or 1),
        min_insync_replicas=int(values.get("min.insync.replicas") or 1),
    )


def replication_warning(topic: str, replication_factor: int, cluster: ClusterReplication) -> str | None:
    """Why `replication_factor` is fragile on `cluster`, or None (a single broker has no choice)."""
    if cluster.brokers < 2:
        return None
    if replication_factor == 1:
        return (
            f"topic {topic!r} has replication factor 1 on a {cluster.brokers}-broker cluster: losing its "
            "one broker makes the topic unavailable (omit --replication-factor for the cluster default)"
        )
    if replication_factor <= cluster.min_insync_replicas:
        return (
            f"topic {topic!r} has replication factor {replication_factor}, not above min.insync.replicas="
            f"{cluster.min_insync_replicas}: with acks=all, losing one broker stops its writes"
        )
    return None
