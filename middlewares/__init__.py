"""The enhanced tier: one FastStream middleware per concern, wired and run by `EnhancedTier`."""

from __future__ import annotations

from middlewares._dedup import DeduplicationMiddleware
from middlewares._envelope import CurrentBrokerContext, CurrentEnvelope, CurrentEnvelopes, EnvelopeMiddleware
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._metrics import MetricsMiddleware
from middlewares._outputs import OutputsMiddleware
from middlewares._prometheus import MetricSample
from middlewares._retry import Budget, RetryPolicy
from middlewares._state import Outcome
from middlewares._tier import EnhancedTier, enhanced_stack

__all__ = (
    "Budget",
    "CurrentBrokerContext",
    "CurrentEnvelope",
    "CurrentEnvelopes",
    "DeduplicationMiddleware",
    "EnhancedTier",
    "EnvelopeMiddleware",
    "ErrorRoutingMiddleware",
    "MetricSample",
    "MetricsMiddleware",
    "Outcome",
    "OutputsMiddleware",
    "RetryPolicy",
    "enhanced_stack",
)
