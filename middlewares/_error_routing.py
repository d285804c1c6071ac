"""`ErrorRoutingMiddleware`: retries, dead-lettering and the offset commit of every message.

It owns delivery for enhanced subscribers (which run with `AckPolicy.MANUAL`):
- success, or `AckMessage` (raised by the handler, by `OutputsMiddleware` once the returned event
  was acknowledged, or by dedup for a duplicate) -> PROCESSED or DEDUPLICATED, offset committed;
- an error -> classified by the `RetryPolicy`; retried in-process after a backoff, by calling
  the inner chain again (the envelope middleware re-reads the original bytes, dedup re-claims);
  when the budget is spent -> written to `<topic>.dlq`, and only once the broker acknowledged
  that write -> DEAD_LETTERED, offset committed. A handler's `NackMessage` is such an error
  (transient: retried, then dead-lettered); its `RejectMessage` is dead-lettered at once;
- `RedeliveryRequested` (Redis down too long) or a failed DLQ write -> REDELIVER: not committed;
  after `policy.redelivery_delay_s` the consumer seeks back to it (no hot loop, never dropped).

Commits carry explicit offsets: per partition the low-water mark (`_low_water.CommitWindow`),
never past a record in flight or sought back to. A record is finished in `after_processed`, after
its outputs were acknowledged and dedup wrote its done marker; the commit goes out in the
background (`commit_every` / `commit_interval_s`), and is awaited before a seek, after a DLQ write,
on `drain()`/`close()` and for the partitions a rebalance revokes.

A batch is retried as a unit; when its budget is spent every record is dead-lettered with its own
bytes. Dead-lettered or redelivered messages end with `AckMessage` (no empty publish). Being in
every tier, this middleware also binds the record to the log lines written meanwhile.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, HandlerException, RejectMessage
from faststream.message import SourceType
from faststream.middlewares import AckPolicy

from alpha_streaming._errors import ConfigError, RedeliveryRequested
from alpha_streaming._logging import bind_record, unbind_record
from middlewares._committer import Claim, Commits
from middlewares._dead_letter import DeadLetterSink, DeadLetterWriter
from middlewares._gate import Superseded, supersede_after, take_claim, wait_turn
from middlewares._header_escape import escape_unreadable_headers, restore_original_headers
from middlewares._metrics import RAW_OUTCOME_ATTRIBUTE
from middlewares._retry import Budget, RetryPolicy
from middlewares._state import MessageState, Outcome, state_of

if TYPE_CHECKING:
    from collections.abc import Collection
    from contextvars import Token
    from types import TracebackType

    from aiokafka import ConsumerRecord, TopicPartition
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage

__all__ = ("ErrorRoutingMiddleware",)

log = logging.getLogger(__name__)

_DEFAULT_POLICY = RetryPolicy()
_REJECTED = Budget(max_attempts=1)


class ErrorRoutingMiddleware:
    """Retries failed messages by policy, dead-letters the hopeless ones, commits every outcome."""

    __slots__ = ("commit_every", "commit_interval_s", "commits", "dead_letter", "policy", "service")

    def __init__(
        self,
        *,
        policy: RetryPolicy = _DEFAULT_POLICY,
        service: str,
        dead_letter: DeadLetterSink | None = None,
        commit_every: int = 1,
        commit_interval_s: float = 0.5,
    ) -> None:
        """`commit_every` > 1 commits in the background after that many outcomes or `commit_interval_s`
        (`EnhancedTier`'s default: a crash repeats what finished since); 1 awaits each commit."""
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
        self.commits = Commits(every=commit_every, interval_s=commit_interval_s)

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return _ErrorRouting(msg, context=context, config=self)

    async def drain(self) -> None:
        """Commit what is pending, and every outcome at once from now on; call before the broker stops."""
        await self.commits.drain()

    async def close(self) -> None:
        """Commit the finished work and release the dead-letter producer; call after the broker stopped."""
        await self.commits.close()
        await self.dead_letter.close()

    async def flush_partitions(self, partitions: Collection[TopicPartition]) -> None:
        """Commit the pending offsets of `partitions` (being revoked) before their new owner reads them."""
        await self.commits.flush_partitions(partitions)

    def __repr__(self) -> str:
        return f"ErrorRoutingMiddleware(service={self.service!r}, policy={self.policy!r})"


class _ErrorRouting(BaseMiddleware[Any, Any]):
    __slots__ = ("_claim", "_commit", "_config", "_consumer", "_flush", "_log_token", "_records", "_suppress")

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: ErrorRoutingMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config
        self._records: tuple[ConsumerRecord[Any, Any], ...] = ()
        self._consumer: Any = None
        self._claim: Claim | None = None
        self._commit = False
        self._suppress = False
        # A dead-lettered outcome is committed at once: nothing else is waiting for it.
        self._flush = False
        self._log_token: Token[Any] | None = None

    async def on_receive(self) -> None:
        self._log_token = bind_record(self.msg)
        raw = self.msg
        for record in raw if isinstance(raw, list | tuple) else (raw,):
            escape_unreadable_headers(record)

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        if msg.source_type is SourceType.RESPONSE:
            return await call_next(msg)
        config = self._config
        raw = msg.raw_message
        self._records = tuple(raw) if isinstance(raw, list | tuple) else (raw,)
        self._consumer = getattr(msg, "consumer", None)
        self._claim = self._begin(self._records)
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
            except Superseded as exc:
                await self._superseded(state, seek=exc.seek)
                raise AckMessage() from None
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
                try:
                    await wait_turn(self._records)
                except Superseded as superseded:
                    await self._superseded(state, seek=superseded.seek)
                    raise AckMessage() from None
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
        try:
            return await self._settle(exc_type, exc_val)
        finally:
            unbind_record(self._log_token)

    async def _settle(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None
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
            await self._rewind()
        elif self._claim is not None:
            await self._rewind()  # ended without an outcome (e.g. cancelled): it is read again
        return ours or None

    async def _unparsable(self, exc: Exception) -> bool | None:
        raw = self.msg
        records = tuple(raw) if isinstance(raw, list | tuple) else (raw,)
        subscriber = self.context.get_local("handler_")
        manual = getattr(subscriber, "ack_policy", None) is AckPolicy.MANUAL
        if not records or not hasattr(records[0], "topic") or not manual:
            return None
        self._records = records
        self._consumer = getattr(records[0], "consumer", None) or getattr(subscriber, "consumer", None)
        self._claim = self._begin(records)
        # No StreamMessage exists, so no shared state either; parsing cannot succeed on a retry.
        state = MessageState(attempts=1)
        try:
            await wait_turn(records)
        except Superseded as superseded:
            await self._superseded(state, seek=superseded.seek)
            return True
        await self._dead_letter(state, exc, 1)
        for record in records:
            # The metrics middleware counts an unparsed record from this mark.
            setattr(record, RAW_OUTCOME_ATTRIBUTE, state.outcome)
        if self._commit:
            await self._commit_quietly()
        return True

    async def _superseded(self, state: MessageState, *, seek: bool = False) -> None:
        """An earlier record of the partition was sought back to (this one is read again after
        it), or a revoke or shutdown left it unstarted (held: nothing commits past it). With
        `seek`, its own partitions are sought back to it too (those not read again already)."""
        state.outcome = Outcome.REDELIVER
        self._suppress = True
        if seek:
            await self._rewind()
            return
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.window.unfinished(claim)

    async def _commit_quietly(self) -> None:
        try:
            await self._config.commits.finish(self._claim, flush=self._flush)
        except Exception as exc:
            # Typically a rebalance took the partition away: its new owner gets the message
            # again, and dedup recognises it as done.
            log.warning("commit failed for %s (%s: %s)", self._where(), type(exc).__name__, exc)

    async def _dead_letter(self, state: MessageState, exc: BaseException, attempts: int) -> None:
        config = self._config
        restore_original_headers(self._records)
        subscriber = self.context.get_local("handler_")
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
        await self._rewind()

    async def _rewind(self) -> None:  # at most once per message: the claim is given up here
        claim, self._claim = self._claim, None
        supersede_after(self._records)
        await self._config.commits.rewind(self._consumer, claim, self._records)

    def _begin(self, records: tuple[ConsumerRecord[Any, Any], ...]) -> Claim | None:
        """The pipeline took the record or batch into the commit window at admission, in fetch order."""
        if (claim := take_claim(records)) is not None:
            return claim
        return self._config.commits.begin(self._consumer, records)

    def _where(self) -> str:
        first = self._records[0]
        where = f"{first.topic}[{first.partition}]@{first.offset}"
        return where if len(self._records) == 1 else f"{where} (+{len(self._records) - 1} in batch)"
