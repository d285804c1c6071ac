"""What the default retry policy does with each error family, as the hierarchy promises."""

from __future__ import annotations

from alpha_streaming._errors import AuthenticationError, TransientError
from middlewares._retry import RetryPolicy


def test_authentication_error_gets_one_attempt_by_default() -> None:
    budget = RetryPolicy().budget_for(AuthenticationError("token refused"))
    assert budget.max_attempts == 1  # no retry: dead-lettered at once
    assert budget.permanent


def test_authentication_error_stays_in_the_transient_family() -> None:
    # A rule of the user's own can still give it retries (e.g. while credentials rotate).
    assert issubclass(AuthenticationError, TransientError)
    assert AuthenticationError.retriable
