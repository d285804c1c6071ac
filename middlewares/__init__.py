"""The enhanced tier: one FastStream middleware per concern, composed by `enhanced_stack`."""

from __future__ import annotations

from middlewares.dedup import DeduplicationMiddleware
from middlewares.envelope import CurrentBrokerContext, CurrentEnvelope, EnvelopeMiddleware
from middlewares.error_routing import ErrorRoutingMiddleware
from middlewares.metrics import MetricsMiddleware
from middlewares.outputs import OutputsMiddleware
from middlewares.retry import RetryPolicy
from middlewares.stack import RevokeListener, close_stack, drain_stack, enhanced_stack, revoke_listener

__all__ = (
    "CurrentBrokerContext",
    "CurrentEnvelope",
    "DeduplicationMiddleware",
    "EnvelopeMiddleware",
    "ErrorRoutingMiddleware",
    "MetricsMiddleware",
    "OutputsMiddleware",
    "RetryPolicy",
    "RevokeListener",
    "close_stack",
    "drain_stack",
    "enhanced_stack",
    "revoke_listener",
)
