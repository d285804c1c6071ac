"""
Every error alpha-streaming raises on purpose.

    AlphaStreamingError
    ├── ConfigError (ValueError)          bad settings or wiring; raised at startup, says what to change
    ├── ClientStateError (RuntimeError)   a client used before start() or after stop()
    ├── KafkaClientError                  the broker refused or could not be reached (wraps aiokafka errors)
    │   └── UnknownTopicError             the topic does not exist (auto-create is off)
    ├── RedeliveryRequested               cannot decide now (Redis down, DLQ unwritable): leave the
    │                                     offset uncommitted and see the message again; never DLQ'd
    └── ProcessingError                   raised by handlers to steer error routing
        ├── PermanentError                retrying cannot help: dead-letter at once
        │   ├── PoisonMessageError        undecodable bytes, wrong JSON
        │   └── EnvelopeError (ValueError) the body is not a valid EventEnvelope
        ├── BusinessError                 breaks a business rule; a short retry budget of its own
        └── TransientError                may succeed later: retry with backoff
            ├── OutputPublishError        Kafka did not acknowledge an output of the handler
            ├── InfrastructureError       a dependency (DB, Redis, HTTP) is down
            ├── RateLimitError            an upstream asked us to slow down
            └── AuthenticationError       credentials refused (one attempt by default: no retry)

`retriable` is a class flag, read by `middlewares.ErrorRoutingMiddleware` through the MRO;
the retry budget of each family lives in `middlewares.RetryPolicy`.
"""

from __future__ import annotations

__all__ = (
    "AlphaStreamingError",
    "AuthenticationError",
    "BusinessError",
    "ClientStateError",
    "ConfigError",
    "EnvelopeError",
    "InfrastructureError",
    "KafkaClientError",
    "OutputPublishError",
    "PermanentError",
    "PoisonMessageError",
    "ProcessingError",
    "RateLimitError",
    "RedeliveryRequested",
    "TransientError",
    "UnknownTopicError",
)


class AlphaStreamingError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(AlphaStreamingError, ValueError):
    """Settings or wiring that cannot work; the message says what to change."""


class ClientStateError(AlphaStreamingError, RuntimeError):
    """A client was used before `start()` or after `stop()`."""


class KafkaClientError(AlphaStreamingError):
    """The broker refused a request or could not be reached."""


class UnknownTopicError(KafkaClientError):
    """The topic does not exist and the broker will not create it."""


class RedeliveryRequested(AlphaStreamingError):
    """The outcome cannot be decided now; the message must stay uncommitted and come back.

    Raised when a dependency the delivery guarantee rests on (Redis for dedup, the broker for
    the DLQ write) is unavailable. Error routing seeks back instead of retrying or dead-lettering.
    """


class ProcessingError(AlphaStreamingError):
    """Base of the errors a handler raises to steer retries and dead-lettering."""

    retriable: bool = False


class PermanentError(ProcessingError):
    """Retrying cannot help; the message goes to the dead-letter topic at once."""


class PoisonMessageError(PermanentError):
    """The bytes cannot be decoded at all."""


class EnvelopeError(PermanentError, ValueError):
    """The body is not a valid `EventEnvelope`."""


class BusinessError(ProcessingError):
    """The event breaks a business rule."""

    # Business failures sometimes clear after a short wait (a reference row arriving late),
    # so the default policy gives them a small budget of their own; see RetryPolicy.
    retriable = True


class TransientError(ProcessingError):
    """May succeed if tried again later."""

    retriable = True


class OutputPublishError(TransientError):
    """An event the handler returned was not acknowledged by Kafka.

    The message is not done: its dedup lease is released and it is retried like any transient
    failure (the handler runs again and emits the same child ids), then dead-lettered.
    """


class InfrastructureError(TransientError):
    """A dependency (database, Redis, HTTP service) is unavailable."""


class RateLimitError(TransientError):
    """An upstream asked us to slow down."""


class AuthenticationError(TransientError):
    """Credentials were refused.

    A `TransientError` (refused credentials can be rotated), but the default `RetryPolicy` gives it
    one attempt: dead-lettered at once, no retry. `RetryPolicy().with_rule(AuthenticationError,
    Budget(...))` buys retries while a rotation is expected.
    """
