"""`RetryPolicy`: per-family budgets through the MRO, backoff with jitter, poll-interval guard."""

from __future__ import annotations

import json
import random

import pydantic
import pytest

from alpha_streaming._errors import (
    AuthenticationError,
    BusinessError,
    ConfigError,
    EnvelopeError,
    InfrastructureError,
    PermanentError,
    PoisonMessageError,
    ProcessingError,
    RateLimitError,
    TransientError,
)
from alpha_streaming._settings import RetrySettings
from middlewares._retry import (
    AUTHENTICATION,
    BUSINESS,
    INFRASTRUCTURE,
    MAX_BACKOFF_FRACTION,
    PERMANENT,
    RATE_LIMIT,
    TRANSIENT,
    Budget,
    RetryPolicy,
)


class _Model(pydantic.BaseModel):
    qty: int


def _validation_error() -> pydantic.ValidationError:
    try:
        _Model.model_validate({"qty": "many"})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


def _unicode_error() -> UnicodeDecodeError:
    try:
        b"\xff\xfe\xfa".decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("unreachable")


class DbDown(InfrastructureError):
    pass


class Unknown(RuntimeError):
    pass


class UserPermanent(ProcessingError):
    """A user's error on our base class with the default `retriable = False`."""


class UserRetriable(ProcessingError):
    retriable = True


@pytest.mark.parametrize(
    ("error", "budget"),
    [
        (TransientError("x"), TRANSIENT),
        (InfrastructureError("x"), INFRASTRUCTURE),
        (DbDown("x"), INFRASTRUCTURE),  # inherited through the MRO
        (RateLimitError("x"), RATE_LIMIT),
        (AuthenticationError("x"), AUTHENTICATION),
        (BusinessError("x"), BUSINESS),
        (PermanentError("x"), PERMANENT),
        (PoisonMessageError("x"), PERMANENT),
        (EnvelopeError("x"), PERMANENT),
        (_validation_error(), PERMANENT),
        (json.JSONDecodeError("bad", "{", 0), PERMANENT),
        (_unicode_error(), PERMANENT),
        (Unknown("x"), TRANSIENT),  # unknown errors get the transient budget
        (ValueError("x"), TRANSIENT),  # a plain ValueError is not assumed to be bad input
        (UserPermanent("x"), PERMANENT),  # `retriable = False` class flag
        (UserRetriable("x"), TRANSIENT),
    ],
)
def test_default_classification(error: BaseException, budget: Budget) -> None:
    assert RetryPolicy().budget_for(error) == budget


def test_default_budgets_are_the_originals_with_rate_limit_capped() -> None:
    assert (TRANSIENT.max_attempts, TRANSIENT.base_delay_s, TRANSIENT.max_delay_s) == (5, 1.0, 30.0)
    assert (INFRASTRUCTURE.max_attempts, INFRASTRUCTURE.base_delay_s, INFRASTRUCTURE.max_delay_s) == (
        3,
        2.0,
        60.0,
    )
    assert (RATE_LIMIT.max_attempts, RATE_LIMIT.base_delay_s) == (8, 5.0)
    assert (BUSINESS.max_attempts, BUSINESS.base_delay_s, BUSINESS.max_delay_s) == (2, 1.0, 10.0)
    assert AUTHENTICATION.max_attempts == 1
    assert PERMANENT.permanent
    # The original 300 s cap would wait 615 s in total: longer than a poll interval.
    assert Budget(max_attempts=8, base_delay_s=5.0, max_delay_s=300.0).total_backoff_s == 615.0
    assert RATE_LIMIT.total_backoff_s == 5 + 10 + 15 * 5
    assert RATE_LIMIT.total_backoff_s <= 300 * MAX_BACKOFF_FRACTION


def test_with_rule_adds_a_class_and_leaves_the_original_unchanged() -> None:
    base = RetryPolicy()
    quick = Budget(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    custom = base.with_rule(KeyError, permanent=True).with_rule(DbDown, quick)
    assert custom.budget_for(KeyError("k")) == PERMANENT
    assert custom.budget_for(DbDown("x")) == quick
    assert custom.budget_for(InfrastructureError("x")) == INFRASTRUCTURE
    assert base.budget_for(KeyError("k")) == TRANSIENT
    with pytest.raises(ConfigError):
        base.with_rule(KeyError)
    with pytest.raises(ConfigError):
        base.with_rule(KeyError, quick, permanent=True)


def test_delay_is_exponential_capped_and_jittered_downwards_only() -> None:
    budget = Budget(max_attempts=6, base_delay_s=1.0, max_delay_s=5.0, jitter=0.5)
    assert [budget.ceiling(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    policy = RetryPolicy(rng=random.Random(7))
    for retry in range(1, 6):
        for _ in range(200):
            delay = policy.delay_s(budget, retry)
            assert budget.ceiling(retry) * 0.5 <= delay <= budget.ceiling(retry)
    no_jitter = Budget(max_attempts=3, base_delay_s=0.5, max_delay_s=10.0, jitter=0.0)
    assert RetryPolicy().delay_s(no_jitter, 2) == 1.0


def test_seeded_randomness_makes_delays_reproducible() -> None:
    one = RetryPolicy(rng=random.Random(42))
    two = RetryPolicy(rng=random.Random(42))
    assert [one.delay_s(TRANSIENT, n) for n in range(1, 5)] == [
        two.delay_s(TRANSIENT, n) for n in range(1, 5)
    ]


def test_budget_longer_than_the_poll_interval_allows_is_refused() -> None:
    too_long = Budget(max_attempts=8, base_delay_s=5.0, max_delay_s=300.0)
    with pytest.raises(ConfigError, match="max_poll_interval"):
        RetryPolicy().with_rule(RateLimitError, too_long)
    with pytest.raises(ConfigError, match="max_poll_interval"):
        RetryPolicy(default=too_long)
    # The same budget fits a consumer configured with a long enough poll interval.
    assert RetryPolicy(max_poll_interval_s=2000).with_rule(RateLimitError, too_long)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"max_attempts": 2, "base_delay_s": -1}, {"max_attempts": 2, "jitter": 1.5}],
)
def test_invalid_budgets_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Budget(**kwargs)  # type: ignore[arg-type]


def test_from_settings_sets_the_transient_and_unknown_budget() -> None:
    policy = RetryPolicy.from_settings(RetrySettings(max_attempts=3, base_delay_s=0.1, max_delay_s=0.4))
    expected = Budget(max_attempts=3, base_delay_s=0.1, max_delay_s=0.4)
    assert policy.budget_for(TransientError("x")) == expected
    assert policy.budget_for(Unknown("x")) == expected
    assert policy.budget_for(InfrastructureError("x")) == INFRASTRUCTURE
    assert policy.budget_for(EnvelopeError("x")) == PERMANENT


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.default = PERMANENT  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.rules[KeyError] = PERMANENT  # type: ignore[index]
