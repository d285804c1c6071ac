"""`RetryPolicy`: which errors are retried, how often, and how long to wait between attempts.

Each error family has its own `Budget` (the original system's defaults, seed-lessons.md), found
by walking the exception's MRO, so a subclass inherits its family's budget unless it has a rule
of its own. `max_attempts` counts handler runs, the first included: 1 means "dead-letter at once".

Retries happen in-process while the consumer keeps its partitions, so the sum of all waits of a
budget must stay well below the consumer's `max_poll_interval` (aiokafka: 300 s), or the group
would evict the consumer mid-retry and another member would start the same message over. The
policy refuses budgets whose worst-case total wait exceeds `MAX_BACKOFF_FRACTION` of it. That is
why the rate-limit family keeps the original's 8 attempts and 5 s base but caps each wait at
15 s instead of 300 s (worst case 90 s instead of 615 s).

Delay before retry n (n = 1 for the first retry): `min(base * 2**(n-1), cap) * U(1 - jitter, 1)`.
The jitter only shortens a wait, so `total_backoff_s` is a true upper bound.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import pydantic
import pydantic_core

from alpha_streaming._errors import (
    AuthenticationError,
    BusinessError,
    ConfigError,
    InfrastructureError,
    PermanentError,
    RateLimitError,
    TransientError,
)
from alpha_streaming._settings import RetrySettings

__all__ = (
    "AUTHENTICATION",
    "BUSINESS",
    "INFRASTRUCTURE",
    "MAX_BACKOFF_FRACTION",
    "PERMANENT",
    "RATE_LIMIT",
    "TRANSIENT",
    "Budget",
    "RetryPolicy",
)

# Share of max_poll_interval one message's retry waits may take; the rest is left for the
# handler runs themselves and for dedup waiting on a lease.
MAX_BACKOFF_FRACTION = 0.4
DEFAULT_MAX_POLL_INTERVAL_S = 300.0

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Budget:
    """How often one error family is tried, and the exponential backoff between tries."""

    max_attempts: int
    base_delay_s: float = 0.0
    max_delay_s: float = 0.0
    jitter: float = 0.5
    """Fraction of each wait that is random: the wait is scaled by U(1 - jitter, 1)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"Budget.max_attempts must be >= 1 (1 = no retry), got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ConfigError(
                f"Budget delays must be >= 0, got base_delay_s={self.base_delay_s}, "
                f"max_delay_s={self.max_delay_s}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"Budget.jitter must be in [0, 1], got {self.jitter}")

    @property
    def permanent(self) -> bool:
        return self.max_attempts == 1

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number `retry` (1-based)."""
        return float(min(self.base_delay_s * 2 ** (retry - 1), self.max_delay_s))

    @property
    def total_backoff_s(self) -> float:
        """Worst-case sum of all waits: how long a poison message can hold its partition."""
        return sum(self.ceiling(retry) for retry in range(1, self.max_attempts))


# The original system's budgets (seed-lessons.md), rate limit capped to fit a poll interval.
TRANSIENT = Budget(**RetrySettings().model_dump())  # 5 attempts, 1 s base, 30 s cap
INFRASTRUCTURE = Budget(max_attempts=3, base_delay_s=2.0, max_delay_s=60.0)
RATE_LIMIT = Budget(max_attempts=8, base_delay_s=5.0, max_delay_s=15.0)
BUSINESS = Budget(max_attempts=2, base_delay_s=1.0, max_delay_s=10.0)
AUTHENTICATION = Budget(max_attempts=1)
PERMANENT = Budget(max_attempts=1)

# Errors no retry can fix: bad bytes, bad JSON, a body or payload that fails validation.
_PERMANENT_BUILTINS: tuple[type[BaseException], ...] = (
    PermanentError,
    pydantic.ValidationError,
    pydantic_core.ValidationError,
    json.JSONDecodeError,
    UnicodeDecodeError,
)


def _default_rules() -> dict[type[BaseException], Budget]:
    rules: dict[type[BaseException], Budget] = dict.fromkeys(_PERMANENT_BUILTINS, PERMANENT)
    rules.update(
        {
            TransientError: TRANSIENT,
            InfrastructureError: INFRASTRUCTURE,
            RateLimitError: RATE_LIMIT,
            AuthenticationError: AUTHENTICATION,
            BusinessError: BUSINESS,
        }
    )
    return rules


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Classifies errors into budgets and computes the wait before each retry."""

    rules: Mapping[type[BaseException], Budget] = field(default_factory=_default_rules)
    """Budget per exception class; looked up through the exception's MRO."""
    default: Budget = TRANSIENT
    """Budget of an exception no rule matches (unknown errors are assumed transient)."""
    redelivery_delay_s: float = 1.0
    """Wait before seeking back to a message whose outcome could not be decided now."""
    max_poll_interval_s: float = DEFAULT_MAX_POLL_INTERVAL_S
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    sleep: Sleep = field(default=asyncio.sleep, compare=False, repr=False)
    _cache: dict[type[BaseException], Budget] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        limit = self.max_poll_interval_s * MAX_BACKOFF_FRACTION
        checks: list[tuple[type[BaseException], Budget]] = [*self.rules.items(), (Exception, self.default)]
        for exc_type, budget in checks:
            if budget.total_backoff_s > limit:
                raise ConfigError(
                    f"retry budget for {exc_type.__name__} waits up to {budget.total_backoff_s:.0f} s in "
                    f"total, more than {MAX_BACKOFF_FRACTION:.0%} of max_poll_interval "
                    f"({self.max_poll_interval_s:.0f} s = {limit:.0f} s): the consumer would be evicted "
                    "from its group mid-retry. Lower max_attempts or max_delay_s."
                )
        if self.redelivery_delay_s < 0:
            raise ConfigError(f"redelivery_delay_s must be >= 0, got {self.redelivery_delay_s}")

    @classmethod
    def from_settings(cls, settings: RetrySettings, **options: object) -> RetryPolicy:
        """The default policy with the transient/unknown budget taken from `settings`."""
        transient = Budget(
            max_attempts=settings.max_attempts,
            base_delay_s=settings.base_delay_s,
            max_delay_s=settings.max_delay_s,
        )
        rules = {**_default_rules(), TransientError: transient}
        return cls(rules=rules, default=transient, **options)  # type: ignore[arg-type]

    def with_rule(
        self, exc_type: type[BaseException], budget: Budget | None = None, *, permanent: bool = False
    ) -> RetryPolicy:
        """A copy with `exc_type` (and its subclasses) given `budget`, or dead-lettered at once."""
        if (budget is None) == (not permanent):
            raise ConfigError("with_rule needs exactly one of `budget=` or `permanent=True`")
        chosen = PERMANENT if permanent else budget
        assert chosen is not None
        return replace(self, rules={**self.rules, exc_type: chosen})

    def budget_for(self, exc: BaseException) -> Budget:
        exc_type = type(exc)
        budget = self._cache.get(exc_type)
        if budget is None:
            budget = self._cache[exc_type] = self._lookup(exc_type)
        return budget

    def _lookup(self, exc_type: type[BaseException]) -> Budget:
        for cls in exc_type.__mro__:
            budget = self.rules.get(cls)
            if budget is not None:
                return budget
        # Our ProcessingError family carries a `retriable` class flag: honour it for user
        # subclasses that have no rule of their own.
        if getattr(exc_type, "retriable", True) is False:
            return PERMANENT
        return self.default

    def delay_s(self, budget: Budget, retry: int) -> float:
        """The wait before retry number `retry` (1-based) under `budget`, jitter applied."""
        ceiling = budget.ceiling(retry)
        return ceiling * (1.0 - budget.jitter * self.rng.random())
