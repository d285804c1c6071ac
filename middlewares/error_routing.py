"""`ErrorRoutingMiddleware`: retries, dead-lettering and the offset commit of every message.

It owns delivery for enhanced subscribers (which run with `AckPolicy.MANUAL`):
- success, or `AckMessage` (raised by the handler, by `OutputsMiddleware` once the returned event
  was acknowledged, or by dedup for a duplicate) -> PROCESSED or DEDUPLICATED, offset committed;
- an error -> classified by the `RetryPolicy`; retried in-process after a backoff, by calling
  the inner chain again (the envelope middleware re-reads the original bytes, dedup re-claims);
  when the budget is spent -> written to `<topic>.dlq`, and only once the broker acknowledged
  that write -> DEAD_LETTERED, offset committed. A handler's `NackMessage` is such an error
  (transient: retried, then dead-lettered); its `RejectMessage` is dead-lettered at once;
- `RedeliveryRequested` (Redis down too long), or a DLQ write that failed -> REDELIVER: nothing
  committed; after `policy.redelivery_delay_s` the consumer seeks back to the record, so it
  comes again (no hot loop, never dropped).

Commits carry explicit offsets (`{TopicPartition: offset + 1}`; a batch commits the highest
offset + 1 per partition). They happen in `after_processed`, after every output of the message
was acknowledged (`OutputsMiddleware`) and dedup wrote its done marker. Every
outcome is committed before the consumer moves on with `commit_every=1`: one broker round trip
per message (7-10 ms on a local Kafka 4.1, whose group coordinator lingers before appending).
`commit_every=N` coalesces them (see `CommitWindow`; `enhanced_stack` makes it the default with
dedup, which is what makes it safe): flushed after N outcomes, after `commit_interval_s`, before
any seek, right after a dead-letter write, from `drain()` (before the broker stops) and `close()`,
and for the revoked partitions on a rebalance when the subscriber has `revoke_listener(...)`.

Batch subscribers: the batch is retried as a unit; when its budget is spent every record of it
is dead-lettered with its own original bytes (the handler gave no per-record verdict, and the
records are committed together, so none may be committed without a DLQ copy).

A dead-lettered or redelivered message ends with `AckMessage`, so a handler's `@publisher` does
not publish an empty body; this middleware suppresses it again in `after_processed`.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, HandlerException, RejectMessage
from faststream.message import SourceType
from faststream.middlewares import AckPolicy

from alpha_streaming.errors import ConfigError, RedeliveryRequested
from middlewares._committer import CommitWindow, commit_records, is_fake, seek_back
from middlewares._dead_letter import DeadLetterSink, DeadLetterWriter
from middlewares._state import MessageState, Outcome, state_of
from middlewares.metrics import RAW_OUTCOME_ATTRIBUTE
from middlewares.retry import Budget, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Collection
    from types import TracebackType

    from aiokafka import ConsumerRecord, TopicPartition
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage

__all__ = ("ErrorRoutingMiddleware", "wrong_ack_policy")

log = logging.getLogger(__name__)

_DEFAULT_POLICY = RetryPolicy()
_REJECTED = Budget(max_attempts=1)
# Where a record's own header bytes wait while FastStream parses an escaped copy of them.
ORIGINAL_HEADERS_ATTRIBUTE = "_alpha_original_headers"


def wrong_ack_policy(subscriber: Any) -> str | None:
    """Why `subscriber` cannot run under error routing, or None if its ack policy is right."""
    policy = getattr(subscriber, "ack_policy", None)
    if policy is AckPolicy.MANUAL:
        return None
    topics = ", ".join(getattr(subscriber, "topic_names", None) or ()) or repr(subscriber)
    name = f"on {topics} (group {getattr(subscriber, 'group_id', None)})"
    return (
        f"subscriber {name} runs with ack_policy={policy!r}, but the enhanced stack needs "
        "AckPolicy.MANUAL (ErrorRoutingMiddleware commits after processing; any other policy "
        "commits before the outcome is known or after a failure, and loses events). Build the broker "
        "with `middlewares.stack.enhanced_broker(...)` or `KafkaBroker(ack_policy=AckPolicy.MANUAL)`, "
        "or pass `ack_policy=AckPolicy.MANUAL` (the enum, not a string) to the subscriber; a "
        "KafkaRouter subscriber must be declared after `include_router` or carry the policy itself."
    )


def _readable_headers(record: Any) -> None:
    """Make header values FastStream can decode; the DLQ still gets the original bytes.

    Kafka header values are arbitrary bytes, but FastStream's parser decodes every one as
    UTF-8 and fails the whole message otherwise: a valid event would be lost to, say, a binary
    header another tool added. Such values are passed on backslash-escaped instead.
    """
    headers = getattr(record, "headers", None)
    if not headers:
        return
    try:
        for _, value in headers:
            value.decode()
    except (UnicodeDecodeError, AttributeError):
        setattr(record, ORIGINAL_HEADERS_ATTRIBUTE, list(headers))
        record.headers = [
            (key, value.decode("utf-8", "backslashreplace").encode() if isinstance(value, bytes) else b"")
            for key, value in headers
        ]


class ErrorRoutingMiddleware:
    """Retries failed messages by policy, dead-letters the hopeless ones, commits every outcome."""

    __slots__ = (
        "_checked",
        "_draining",
        "_windows",
        "commit_every",
        "commit_interval_s",
        "dead_letter",
        "policy",
        "service",
    )

    def __init__(
        self,
        *,
        policy: RetryPolicy = _DEFAULT_POLICY,
        service: str,
        dead_letter: DeadLetterSink | None = None,
        commit_every: int = 1,
        commit_interval_s: float = 0.5,
    ) -> None:
        """`commit_every` > 1 coalesces commits (flushed after that many outcomes, after
        `commit_interval_s`, before any seek and on `close()`); only safe together with dedup."""
        if not service:
            raise ConfigError(
                "ErrorRoutingMiddleware(service=...) needs the service name, got an empty string"
            )
        self.policy = policy
        self.service = service
        if commit_every < 1 or commit_interval_s <= 0:
            raise ConfigError(
                f"commit_every must be >= 1 and commit_interval_s > 0, got commit_every={commit_every}, "
                f"commit_interval_s={commit_interval_s}"
            )
        self.dead_letter: DeadLetterSink = dead_letter or DeadLetterWriter(service=service)
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self._windows: weakref.WeakKeyDictionary[Any, CommitWindow] = weakref.WeakKeyDictionary()
        self._draining = False
        # Subscribers whose ack policy was found right; checked once each, then a set lookup.
        self._checked: set[int] = set()

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return _ErrorRouting(msg, context=context, config=self)

    async def drain(self) -> None:
        """Commit what is pending, and every outcome at once from now on; call before the broker stops.

        The consumers are still group members then, so what they finish while the broker stops
        is committed too. After `broker.stop()` a consumer has left its group, and the broker
        accepts its commit only while no other member is in the group. `close()` ends the drain.
        """
        self._draining = True
        await self._flush_all("commit before shutdown")

    async def close(self) -> None:
        """Flush coalesced commits and release the dead-letter producer; call after the broker stopped."""
        await self._flush_all("final commit")
        self._draining = False
        await self.dead_letter.close()

    async def _flush_all(self, what: str) -> None:
        for window in list(self._windows.values()):
            try:
                await window.flush()
            except Exception as exc:  # the consumer may be gone already; the records come again
                log.warning("%s failed (%s: %s)", what, type(exc).__name__, exc)

    async def commit(
        self, consumer: Any, records: tuple[ConsumerRecord[Any, Any], ...], *, flush: bool = False
    ) -> None:
        """Commit `records` now, or through the consumer's window; `flush` empties the window too."""
        if self.commit_every == 1 or is_fake(consumer):
            await commit_records(consumer, records)
            return
        window = self._windows.get(consumer)
        if window is None:
            window = self._windows[consumer] = CommitWindow(
                consumer, every=self.commit_every, interval_s=self.commit_interval_s
            )
        await window.add(records, flush=flush or self._draining)

    async def flush_partitions(self, partitions: Collection[TopicPartition]) -> None:
        """Commit the pending offsets of `partitions` (being revoked) before their new owner reads them.

        Called by `revoke_listener`'s `on_partitions_revoked`, where aiokafka still accepts commits
        from this member (the group waits for every member's callback before reassigning).
        """
        for window in list(self._windows.values()):
            try:
                await window.flush(partitions)
            except Exception as exc:  # the new owner reads them again; dedup skips what was done
                log.warning("commit on partition revoke failed (%s: %s)", type(exc).__name__, exc)

    async def seek_back(self, consumer: Any, records: tuple[ConsumerRecord[Any, Any], ...]) -> None:
        window = self._windows.get(consumer) if not is_fake(consumer) else None
        if window is not None:
            await window.flush()  # what was processed before this record stays committed
        seek_back(consumer, records)

    def check_subscriber(self, subscriber: Any, msg: StreamMessage[Any]) -> None:
        if subscriber is None or id(subscriber) in self._checked:
            return
        problem = wrong_ack_policy(subscriber)
        if problem is None:
            self._checked.add(id(subscriber))
            return
        # Stop taking messages under a policy that commits on its own: with ACK_FIRST every
        # further message would be committed unprocessed. Resumes only after a restart.
        consumer: Any = getattr(msg, "consumer", None)
        if not is_fake(consumer) and hasattr(consumer, "assignment"):
            consumer.pause(*consumer.assignment())
        log.critical("%s; its consumer is paused", problem)
        raise ConfigError(problem)

    def __repr__(self) -> str:
        return f"ErrorRoutingMiddleware(service={self.service!r}, policy={self.policy!r})"


class _ErrorRouting(BaseMiddleware[Any, Any]):
    __slots__ = ("_commit", "_config", "_consumer", "_flush", "_records", "_suppress")

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: ErrorRoutingMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config
        self._records: tuple[ConsumerRecord[Any, Any], ...] = ()
        self._consumer: Any = None
        self._commit = False
        self._suppress = False
        # A dead-lettered outcome is committed at once: nothing else is waiting for it.
        self._flush = False

    async def on_receive(self) -> None:
        raw = self.msg
        for record in raw if isinstance(raw, list | tuple) else (raw,):
            _readable_headers(record)

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        if msg.source_type is SourceType.RESPONSE:
            return await call_next(msg)
        config = self._config
        subscriber = self.context.get_local("handler_")
        config.check_subscriber(subscriber, msg)
        raw = msg.raw_message
        self._records = tuple(raw) if isinstance(raw, list | tuple) else (raw,)
        self._consumer = getattr(msg, "consumer", None)
        state = state_of(msg)
        policy = config.policy
        attempt = 0
        while True:
            attempt += 1
            state.attempts = attempt
            try:
                result = await call_next(msg)
            except AckMessage:
                # Done: the handler acknowledged (after its returned event was acknowledged by
                # Kafka, when `OutputsMiddleware` raised it), or dedup found a duplicate.
                if state.outcome is None:
                    state.outcome = Outcome.PROCESSED
                self._commit = self._suppress = True
                raise
            except RedeliveryRequested as exc:
                state.error = exc
                await self._redeliver(state, exc)
                raise AckMessage() from exc
            except Exception as exc:
                # `NackMessage` is "not now": a transient failure. `RejectMessage` is "never":
                # dead-lettered at once, whatever the policy, so it is not silently dropped.
                state.error = exc
                budget = _REJECTED if isinstance(exc, RejectMessage) else policy.budget_for(exc)
                if attempt < budget.max_attempts:
                    state.retries += 1
                    delay = policy.delay_s(budget, attempt)
                    log.warning(
                        "%s on %s (attempt %d of %d); retrying in %.3f s: %s",
                        type(exc).__name__,
                        self._where(),
                        attempt,
                        budget.max_attempts,
                        delay,
                        exc,
                    )
                    await policy.sleep(delay)
                    continue
                await self._dead_letter(state, exc, attempt)
                raise AckMessage() from exc
            if state.outcome is None:
                state.outcome = Outcome.PROCESSED
            self._commit = True
            return result

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        if not self._records:
            # consume_scope never ran: FastStream's parser failed on the raw record (e.g. a
            # header value that is not UTF-8). Left alone it would be skipped by a later commit.
            if isinstance(exc_val, Exception) and not isinstance(exc_val, HandlerException):
                return await self._unparsable(exc_val)
            return None
        ours = exc_type is not None and self._suppress and issubclass(exc_type, AckMessage)
        if self._commit and (exc_type is None or ours):
            await self._commit_quietly()
        elif self._commit:
            # The handler succeeded but publishing its result failed: do not commit past it.
            log.error("publishing the result for %s failed; the message will be redelivered", self._where())
            await self._config.seek_back(self._consumer, self._records)
        return ours or None

    async def _unparsable(self, exc: Exception) -> bool | None:
        raw = self.msg
        records = tuple(raw) if isinstance(raw, list | tuple) else (raw,)
        subscriber = self.context.get_local("handler_")
        if not records or not hasattr(records[0], "topic") or wrong_ack_policy(subscriber) is not None:
            return None
        self._records = records
        self._consumer = getattr(records[0], "consumer", None) or getattr(subscriber, "consumer", None)
        # No StreamMessage exists, so no shared state either; parsing cannot succeed on a retry.
        state = MessageState(attempts=1)
        await self._dead_letter(state, exc, 1)
        for record in records:
            # The metrics middleware counts an unparsed record from this mark.
            setattr(record, RAW_OUTCOME_ATTRIBUTE, state.outcome)
        if self._commit:
            await self._commit_quietly()
        return True

    async def _commit_quietly(self) -> None:
        try:
            await self._config.commit(self._consumer, self._records, flush=self._flush)
        except Exception as exc:
            # Typically a rebalance took the partition away: its new owner gets the message
            # again, and dedup recognises it as done.
            log.warning("commit failed for %s (%s: %s)", self._where(), type(exc).__name__, exc)

    async def _dead_letter(self, state: MessageState, exc: BaseException, attempts: int) -> None:
        config = self._config
        subscriber = self._restore_headers_and_subscriber()
        try:
            await config.dead_letter.write(
                self.context.get_local("broker"),
                self._records,
                exc,
                attempts=attempts,
                group_id=getattr(subscriber, "group_id", None) or None,
            )
        except Exception as dlq_exc:
            log.error(
                "dead-letter write for %s failed (%s: %s); not committing, the message will come again",
                self._where(),
                type(dlq_exc).__name__,
                dlq_exc,
            )
            await self._redeliver(state, dlq_exc)
            return
        log.error(
            "%s on %s after %d attempt(s): dead-lettered (%d record(s))",
            type(exc).__name__,
            self._where(),
            attempts,
            len(self._records),
        )
        state.outcome = Outcome.DEAD_LETTERED
        self._commit = self._suppress = self._flush = True

    def _restore_headers_and_subscriber(self) -> Any:
        # The DLQ record carries the header bytes as they arrived, not the escaped copy.
        for record in self._records:
            original = getattr(record, ORIGINAL_HEADERS_ATTRIBUTE, None)
            if original is not None:
                record.headers = original
        return self.context.get_local("handler_")

    async def _redeliver(self, state: MessageState, exc: BaseException) -> None:
        state.outcome = Outcome.REDELIVER
        self._suppress = True
        policy = self._config.policy
        log.warning(
            "%s for %s: redelivering in %.1f s (%s)",
            type(exc).__name__,
            self._where(),
            policy.redelivery_delay_s,
            exc,
        )
        # The wait keeps a message that cannot be decided from spinning the consumer.
        await policy.sleep(policy.redelivery_delay_s)
        await self._config.seek_back(self._consumer, self._records)

    def _where(self) -> str:
        first = self._records[0]
        where = f"{first.topic}[{first.partition}]@{first.offset}"
        return where if len(self._records) == 1 else f"{where} (+{len(self._records) - 1} in batch)"
