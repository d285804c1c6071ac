"""One way to build a FastStream `KafkaBroker` from `RedpandaSettings`, shared by both tiers."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from faststream.exceptions import IncorrectState
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from alpha_streaming._errors import ClientStateError
from alpha_streaming._settings import RedpandaSettings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

__all__ = ("broker_security", "make_broker", "raw_producer")


def broker_security(config: RedpandaSettings) -> BaseSecurity | None:
    """FastStream's security object for the configured protocol (None for PLAINTEXT)."""
    protocol = config.security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in {"SSL", "SASL_SSL"}
    context = ssl.create_default_context(cafile=config.ssl_cafile) if use_ssl else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    # The settings validator guarantees the SASL fields are present here.
    assert config.sasl_username is not None and config.sasl_password is not None
    sasl = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }[config.sasl_mechanism or "PLAIN"]
    return sasl(
        config.sasl_username,
        config.sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=use_ssl,
    )


def make_broker(
    config: RedpandaSettings,
    *,
    middlewares: Sequence[Any] = (),
    **options: Any,
) -> KafkaBroker:
    """A `KafkaBroker` whose producer is idempotent (`acks="all"`) and tuned from `config`.

    `options` are passed to `KafkaBroker` as they are (e.g. `ack_policy`, `graceful_timeout`).
    """
    return KafkaBroker(
        # A list: KafkaBroker wraps a string into a one-item list, which aiokafka never splits.
        config.bootstrap_servers,
        client_id=config.client_id,
        security=broker_security(config),
        enable_idempotence=True,
        acks="all",
        linger_ms=config.linger_ms,
        compression_type=config.compression_type,
        max_batch_size=config.max_batch_size,
        request_timeout_ms=config.request_timeout_ms,
        middlewares=tuple(middlewares),
        **options,
    )


def raw_producer(broker: KafkaBroker) -> AIOKafkaProducer:
    """The connected broker's own `AIOKafkaProducer`, for sends that bypass the middleware chain."""
    try:
        producer: AIOKafkaProducer | None = broker.config.producer._producer.producer  # type: ignore[attr-defined]
    except (IncorrectState, AttributeError):
        producer = None
    if producer is None:
        raise ClientStateError("the KafkaBroker is not connected; call `await broker.connect()` first")
    return producer
