"""Which topics to create: broker namespaces, explicit names, services, and their `.dlq` twins.

Pure functions (no Kafka connection, no CLI framework): `alpha-streaming topics bootstrap` and
the examples use them to turn "these namespaces and services" into `TopicSpec`s for
`admin.ensure_topics`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import Any

from alpha_streaming._admin import TopicSpec
from alpha_streaming._errors import ConfigError
from alpha_streaming._topics import TopicMap, dlq_topic, is_dlq_topic

__all__ = ("bootstrap_specs", "service_topics", "topic_names")


def service_topics(spec: str) -> list[str]:
    """The `topics` attribute of `module:attribute` (a built service, or anything listing names)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"--service must be module:attribute (e.g. examples.builder_service:service), got {spec!r}"
        )
    # Like `faststream run`, resolve modules relative to the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--service {spec}: cannot import {module_name!r} ({exc})") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--service {spec}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    names = getattr(target, "topics", None)
    if names is None or isinstance(names, str | bytes) or not isinstance(names, Iterable):
        raise ConfigError(f"--service {spec}: the object has no `topics` attribute listing topic names")
    topics = [str(name) for name in names]
    if not topics:
        raise ConfigError(f"--service {spec}: its `topics` list is empty")
    return topics


def topic_names(brokers: Iterable[str], topics: Iterable[str], services: Iterable[str]) -> list[str]:
    """Distinct topic names, in order: each broker's `TopicMap(...).all()`, then topics, then services."""
    names = [name for broker in brokers for name in TopicMap(broker).all()]
    names += topics
    names += [name for spec in services for name in service_topics(spec)]
    return list(dict.fromkeys(names))


def bootstrap_specs(
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int | None,
    retention_ms: int | None,
    dlq_retention_ms: int | None,
    with_dlq: bool,
) -> list[TopicSpec]:
    """Each topic followed by its `.dlq` twin (same partition count, so a replay keeps partitions)."""
    specs: list[TopicSpec] = []
    for name in dict.fromkeys(topics):
        config = {"retention.ms": str(retention_ms)} if retention_ms is not None else {}
        specs.append(TopicSpec(name, partitions, replication_factor, config))
        if with_dlq and not is_dlq_topic(name):
            dlq_retention = dlq_retention_ms if dlq_retention_ms is not None else retention_ms
            dlq_config = {"retention.ms": str(dlq_retention)} if dlq_retention is not None else {}
            specs.append(TopicSpec(dlq_topic(name), partitions, replication_factor, dlq_config))
    return specs
