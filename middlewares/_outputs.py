"""`OutputsMiddleware`: a handler's returned event is acknowledged by Kafka before the message is done.

FastStream publishes a handler's return value (to its `@publisher`s and to a `reply_to`) only
after every middleware's `consume_scope` has returned, i.e. after dedup wrote its done marker:
a crash or a failed publish in between left an event marked done whose output never existed,
and its redelivery was skipped as a duplicate. This middleware, the innermost of the enhanced
stack, publishes the return value itself, inside `consume_scope`, to every target at once (one
linger for all, not one each), and waits for every acknowledgement. Then it raises `AckMessage`,
so FastStream publishes nothing a second time; dedup marks the event done and error routing
commits it, in that order. Events the handler published itself (`broker.publish`, a publisher,
`CurrentProducer`) were awaited inside the handler already.

A publish that fails raises `OutputPublishError` (transient): dedup releases the lease and error
routing retries the whole message with backoff, then dead-letters it; the re-run emits the same
child ids (`alpha_streaming._ids.child_id`), so a partial first attempt is absorbed downstream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage
from faststream.kafka.publisher.usecase import DefaultPublisher
from faststream.kafka.response import KafkaPublishCommand
from faststream.message import SourceType
from faststream.response import ensure_response

from alpha_streaming._errors import OutputPublishError

if TYPE_CHECKING:
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from faststream.response import Response

__all__ = ("OutputsMiddleware",)

log = logging.getLogger(__name__)


class Unconfirmed(Protocol):
    """Exactly-once (`_transactions.Transactions`): where unacknowledged sends are awaited."""

    def track(self, send: asyncio.Future[Any]) -> None: ...


class OutputsMiddleware:
    """Factory of the per-message runtime; one instance serves every subscriber."""

    __slots__ = ("unconfirmed",)

    def __init__(self, *, unconfirmed: Unconfirmed | None = None) -> None:
        """`unconfirmed` (exactly-once): the result is sent without awaiting its acknowledgement
        and the send's future handed over; the transaction's commit
        awaits them all (one linger per batch, not per message) and aborts the batch if one
        failed."""
        self.unconfirmed = unconfirmed

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return _PublishOutputs(msg, context=context, config=self)

    def __repr__(self) -> str:
        return "OutputsMiddleware()"


class _PublishOutputs(BaseMiddleware[Any, Any]):
    __slots__ = ("_unconfirmed",)

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: OutputsMiddleware) -> None:
        super().__init__(msg, context=context)
        self._unconfirmed = config.unconfirmed

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        if msg.source_type is SourceType.RESPONSE:
            return await call_next(msg)
        subscriber = self.context.get_local("handler_")
        publishers = _handler_publishers(call_next, subscriber)
        result = await call_next(msg)
        if publishers is None:
            return result
        targets = [*publishers, *_reply_publishers(subscriber, msg)]
        if not targets:
            return result
        response = ensure_response(result)
        if not response.correlation_id:
            response.correlation_id = msg.correlation_id
        unconfirmed = self._unconfirmed
        if unconfirmed is not None and all(isinstance(t, DefaultPublisher) for t in targets):
            for publisher in targets:
                unconfirmed.track(await _send_unconfirmed(response, publisher))
        else:
            await _publish_all(response, targets)
        # Published (and acknowledged, or in the transaction): FastStream must not publish it again.
        raise AckMessage()


async def _publish_all(response: Response, targets: list[Any]) -> None:
    if len(targets) == 1:
        await _publish_one(response, targets[0])
        return
    outcomes = await asyncio.gather(*(_publish_one(response, t) for t in targets), return_exceptions=True)
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        raise failures[0]


async def _publish_one(response: Response, publisher: Any) -> None:
    # A fresh command per target: `_publish` writes the destination into it. No extra
    # middlewares: the broker's own run as for any publish made inside the handler.
    try:
        await publisher._publish(response.as_publish_command(), _extra_middlewares=())
    except Exception as exc:
        topic = getattr(publisher, "topic", None) or "the reply topic"
        raise OutputPublishError(
            f"the handler's result was not acknowledged on {topic} ({type(exc).__name__}: {exc})"
        ) from exc


async def _send_unconfirmed(response: Response, publisher: DefaultPublisher) -> asyncio.Future[Any]:
    """What the publisher's `_publish` does, with `no_confirm`: the send is queued in handler order
    and its future returned (FastStream's `_publish` drops it)."""
    cmd = KafkaPublishCommand.from_cmd(response.as_publish_command())
    cmd.destination = publisher.topic
    cmd.add_headers(publisher.headers, override=False)
    cmd.reply_to = cmd.reply_to or publisher.reply_to
    cmd.partition = cmd.partition if cmd.partition is not None else publisher.partition
    cmd.key = cmd.key or publisher.key
    cmd.no_confirm = True
    future: asyncio.Future[Any] = await publisher._basic_publish(
        cmd, producer=publisher._outer_config.producer, _extra_middlewares=()
    )
    return future


def _handler_publishers(call_next: Any, subscriber: Any) -> list[Any] | None:
    """The `@publisher`s of the handler about to run, or None when they cannot be told.

    As the innermost middleware, `call_next` is the handler wrapper's bound `call_wrapped`;
    otherwise a subscriber with a single handler still tells.
    """
    wrapper = getattr(call_next, "__self__", None)
    if wrapper is None:
        calls: list[Any] = list(getattr(subscriber, "calls", ()))
        wrapper = calls[0].handler if len(calls) == 1 else None
    publishers = getattr(wrapper, "_publishers", None)
    if publishers is None:
        log.warning(
            "OutputsMiddleware cannot find the handler's publishers (is it the innermost middleware?); "
            "its result is published by FastStream after the message is done"
        )
        return None
    return list(publishers)


def _reply_publishers(subscriber: Any, msg: StreamMessage[Any]) -> list[Any]:
    if not msg.reply_to or getattr(subscriber, "_no_reply", False):
        return []
    return list(subscriber._make_response_publisher(msg))
