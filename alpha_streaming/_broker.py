"""One way to build a FastStream `KafkaBroker` from `RedpandaSettings`, shared by both tiers.

Its `connect()` fails the same way on every path (direct clients, decorator apps, built
services, the CLI): one `KafkaClientError` naming the addresses and the setting to check, with
the clients FastStream opened before the failure closed (no "Unclosed AIOKafkaProducer").
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as ak
from faststream.exceptions import IncorrectState
from faststream.kafka import KafkaBroker

from alpha_streaming._connection_errors import describe_error, raise_connection_error
from alpha_streaming._errors import ClientStateError
from alpha_streaming._security import SecurityOverride, broker_security, with_security
from alpha_streaming._settings import RedpandaSettings

__all__ = ("broker_security", "describe_error", "make_broker", "raw_producer")


class _Broker(KafkaBroker):
    """A `KafkaBroker` whose failed connect is one clear error and leaves nothing open."""

    servers_text = ""

    async def _connect(self) -> Any:
        try:
            return await super()._connect()
        except (ak.KafkaError, OSError) as exc:
            await _stop_orphan_producers(exc)
            await self.config.disconnect()
            await raise_connection_error(self._connection_kwargs, exc)


async def _stop_orphan_producers(exc: BaseException) -> None:
    # FastStream creates the AIOKafkaProducer inside `connect()` and drops it when its start()
    # fails; unstopped, it warns "Unclosed AIOKafkaProducer" when collected. Stop it here.
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in list(frame.f_locals.values()):
            if isinstance(value, AIOKafkaProducer):
                await value.stop()


def make_broker(
    config: RedpandaSettings,
    *,
    middlewares: Sequence[Any] = (),
    security: SecurityOverride | None = None,
    **options: Any,
) -> KafkaBroker:
    """A `KafkaBroker` whose producer is idempotent (`acks="all"`) and tuned from `config`.

    `security` (an `ssl.SSLContext` or a FastStream security object) is the same as
    `RedpandaSettings(..., security=...)`, checked the same way; the settings field is what the
    other entry points (clients, builder, `EnhancedTier`, `connected_broker`) read.
    `options` are passed to `KafkaBroker` as they are (e.g. `ack_policy`, `graceful_timeout`).
    """
    if security is not None:
        config = with_security(config, security)
    broker = _Broker(
        # A list: KafkaBroker wraps a string into a one-item list, which aiokafka never splits.
        config.bootstrap_servers,
        client_id=config.client_id,
        security=broker_security(config),
        enable_idempotence=True,
        acks="all",
        linger_ms=config.linger_ms,
        compression_type=config.compression_type,
        max_batch_size=config.max_batch_size,
        max_request_size=config.max_request_size,
        request_timeout_ms=config.request_timeout_ms,
        middlewares=tuple(middlewares),
        **options,
    )
    broker.servers_text = config.bootstrap_servers_text
    return broker


def raw_producer(broker: KafkaBroker) -> AIOKafkaProducer:
    """The connected broker's own `AIOKafkaProducer`, for sends that bypass the middleware chain."""
    try:
        producer: AIOKafkaProducer | None = broker.config.producer._producer.producer  # type: ignore[attr-defined]
    except (IncorrectState, AttributeError):
        producer = None
    if producer is None:
        raise ClientStateError("the KafkaBroker is not connected; call `await broker.connect()` first")
    return producer
