"""The enhanced tier: one FastStream middleware per concern, composed by `enhanced_stack`."""

from __future__ import annotations

import importlib
from typing import Any

# TEMPORARY while the middlewares are built in parallel: names whose modules may not exist yet.
# Replaced by explicit imports once every module has landed.
_LAZY = {
    "EnvelopeMiddleware": "middlewares.envelope",
    "CurrentEnvelope": "middlewares.envelope",
    "CurrentBrokerContext": "middlewares.envelope",
    "DeduplicationMiddleware": "middlewares.dedup",
    "ErrorRoutingMiddleware": "middlewares.error_routing",
    "RetryPolicy": "middlewares.retry",
    "MetricsMiddleware": "middlewares.metrics",
    "enhanced_stack": "middlewares.stack",
}

__all__ = (
    "CurrentBrokerContext",
    "CurrentEnvelope",
    "DeduplicationMiddleware",
    "EnvelopeMiddleware",
    "ErrorRoutingMiddleware",
    "MetricsMiddleware",
    "RetryPolicy",
    "enhanced_stack",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'middlewares' has no attribute {name!r}")
