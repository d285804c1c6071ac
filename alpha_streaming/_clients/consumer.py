"""`RedpandaConsumer`: manual-commit consumption with the connection config of a FastStream broker.

Commit rules (auto-commit is always off; only offsets the caller chose are ever committed):
- `await consumer.commit(record)` records exactly `record.offset + 1` on the record's partition
  (forward only) and returns at once: an awaited commit per record is a broker round trip
  (~170 records/s). A background task (`_commits.py`) commits what is recorded after
  `commit_every` records or `commit_interval_s`, before a rebalance takes the partitions, and on
  `stop()`; a crash repeats at most the ~`commit_every` records recorded since the last one.
- `await consumer.commit(record, wait=True)` / `flush_commits()`: committed when they return.
- `await consumer.commit()` commits what has been *processed*, now: a record counts as processed
  once the caller has moved past it, i.e. asked for the next record (`async for`), or asked for
  the next batch after the `getmany()` batch that held it (not the record still being held).
- Errors: a failed background commit is logged and retried by the next one; the awaited ones
  above and `stop()` raise `KafkaClientError` if their commit fails or if recorded offsets were
  dropped because their partition moved to another group member.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka import errors as ak

from alpha_streaming._broker import make_broker
from alpha_streaming._clients._commits import COMMIT_EVERY, COMMIT_INTERVAL_S, PendingCommits
from alpha_streaming._clients._errors import kafka_errors
from alpha_streaming._clients._rebalance import ForgettingListener, RebalanceListener
from alpha_streaming._clients.records import ConsumedRecord, RawRecord, RecordBatch
from alpha_streaming._connection_errors import connection_kwargs, raise_connection_error
from alpha_streaming._errors import ClientStateError, ConfigError, UnknownTopicError
from alpha_streaming._settings import RedpandaSettings

if TYPE_CHECKING:
    from types import TracebackType

    from aiokafka import AIOKafkaConsumer
    from faststream.kafka import KafkaBroker

__all__ = ("DEFAULT_POLL_TIMEOUT_MS", "RebalanceListener", "RedpandaConsumer")

DEFAULT_POLL_TIMEOUT_MS = 1000
# Options the consumer decides itself; accepting them would break the commit contract.
_FIXED_OPTIONS = frozenset({"enable_auto_commit", "group_id", "bootstrap_servers", "client_id"})


class RedpandaConsumer:
    """Consumer-group member with manual commits; built from `RedpandaSettings` or a `KafkaBroker`.

    The underlying `AIOKafkaConsumer` comes from the broker's own consumer factory, so it shares
    the broker's bootstrap servers, client id and security. Extra keyword arguments go to
    `AIOKafkaConsumer` (e.g. `session_timeout_ms`, `fetch_max_bytes`).
    """

    def __init__(
        self,
        config: RedpandaSettings | None = None,
        *,
        topics: Sequence[str],
        group_id: str,
        broker: KafkaBroker | None = None,
        on_rebalance: RebalanceListener | None = None,
        max_poll_records: int | None = None,
        poll_timeout_ms: int = DEFAULT_POLL_TIMEOUT_MS,
        commit_every: int = COMMIT_EVERY,
        commit_interval_s: float = COMMIT_INTERVAL_S,
        **consumer_options: Any,
    ) -> None:
        if config is not None and broker is not None:
            raise ConfigError("pass either config= or broker=, not both")
        if isinstance(topics, str) or not topics:
            raise ConfigError(f"topics must be a non-empty list of topic names, got {topics!r}")
        if not group_id:
            raise ConfigError("group_id is required: manual commits need a consumer group")
        fixed = _FIXED_OPTIONS.intersection(consumer_options)
        if fixed:
            raise ConfigError(f"{sorted(fixed)} cannot be set on RedpandaConsumer; they are fixed or derived")
        if config is None and broker is None:
            config = RedpandaSettings()
        self._owns_broker = broker is None
        self._broker = broker if broker is not None else make_broker(config or RedpandaSettings())
        # The deployment's group prefix applies when the settings are ours to read.
        self._group_id = config.group_id(group_id) if config is not None else group_id
        self._topics = tuple(topics)
        self._listener = ForgettingListener(self, on_rebalance)
        self._poll_timeout_ms = poll_timeout_ms
        self._options: dict[str, Any] = {
            "auto_offset_reset": "earliest",
            **consumer_options,
        }
        if max_poll_records is not None:
            self._options["max_poll_records"] = max_poll_records
        self._consumer: AIOKafkaConsumer | None = None
        self._stopped = False
        # Raw aiokafka records; each is wrapped only when handed out, so the hot path allocates
        # one short-lived view per record. Offsets are keyed by plain (topic, partition) tuples,
        # which equal and hash like `TopicPartition` but cost less to make per record.
        self._buffer: deque[RawRecord] = deque()
        self._holding: RawRecord | None = None  # yielded by __anext__, not yet moved past
        self._batch_ends: dict[tuple[str, int], int] = {}  # next offsets of the last getmany batch
        self._processed: dict[tuple[str, int], int] = {}  # processed, not yet committed
        if commit_every < 1 or commit_interval_s <= 0:
            raise ConfigError("commit_every must be >= 1 and commit_interval_s > 0")
        self._commits = PendingCommits(self._ready, every=commit_every, interval_s=commit_interval_s)

    @classmethod
    def from_broker(
        cls, broker: KafkaBroker, *, topics: Sequence[str], group_id: str, **kwargs: Any
    ) -> RedpandaConsumer:
        """A consumer with `broker`'s connection config (its bootstrap servers, client id, security)."""
        return cls(broker=broker, topics=topics, group_id=group_id, **kwargs)

    @property
    def broker(self) -> KafkaBroker:
        return self._broker

    @property
    def group_id(self) -> str:
        """The effective group id (with `RedpandaSettings.group_id_prefix` applied)."""
        return self._group_id

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    def assignment(self) -> set[TopicPartition]:
        return set(self._ready().assignment())

    async def start(self) -> None:
        """Join the group; fails with `UnknownTopicError` if a topic does not exist."""
        if self._stopped:
            raise ClientStateError("this RedpandaConsumer was stopped; create a new one")
        if self._consumer is not None:
            return
        build = self._broker.config.broker_config.builder
        consumer = build(group_id=self._group_id, enable_auto_commit=False, **self._options)
        try:
            try:
                await consumer.start()
            except (ak.KafkaError, OSError) as exc:  # the same message as every other path
                await raise_connection_error(connection_kwargs(self._broker), exc)
            # Checked before subscribing: aiokafka would otherwise wait `request_timeout_ms`
            # for a missing topic and then fail without naming it.
            with kafka_errors("list topics"):
                known = await consumer.topics()
            missing = [topic for topic in self._topics if topic not in known]
            if missing:
                raise UnknownTopicError(
                    f"cannot consume {missing}: no such topic; create it first "
                    "(topic auto-creation is off on this cluster), or check the name for typos"
                )
            consumer.subscribe(topics=list(self._topics), listener=self._listener)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        """Commit what `commit(record)` recorded, leave the group and close; raises if that commit failed."""
        failure = await self._commits.close() if self._consumer is not None else None
        consumer, self._consumer = self._consumer, None
        self._stopped = True
        self._buffer.clear()
        self._holding = None
        self._batch_ends.clear()
        self._processed.clear()
        if consumer is not None:
            with kafka_errors("stop consumer"):
                await consumer.stop()
        if failure is not None:
            raise failure

    async def __aenter__(self) -> RedpandaConsumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _ready(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            state = "was stopped" if self._stopped else "is not started; call `await consumer.start()`"
            raise ClientStateError(f"RedpandaConsumer {state} (or use `async with RedpandaConsumer(...)`)")
        return self._consumer

    def _mark_batch_processed(self) -> None:
        if self._batch_ends:
            self._processed.update(self._batch_ends)
            self._batch_ends = {}

    async def _poll(self, timeout_ms: int, max_records: int | None) -> dict[TopicPartition, list[Any]]:
        consumer = self._ready()
        with kafka_errors("poll"):
            return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)  # type: ignore[no-any-return]

    def __aiter__(self) -> RedpandaConsumer:
        return self

    async def __anext__(self) -> ConsumedRecord:
        """The next record; the previous one now counts as processed. Ends when stopped."""
        held = self._holding
        if held is not None:
            self._processed[(held.topic, held.partition)] = held.offset + 1
            self._holding = None
        if self._batch_ends:
            self._mark_batch_processed()
        buffer = self._buffer
        while not buffer:
            if self._consumer is None and self._stopped:
                raise StopAsyncIteration
            try:
                fetched = await self._poll(self._poll_timeout_ms, None)
            except ClientStateError:
                if self._stopped:
                    raise StopAsyncIteration from None
                raise
            for records in fetched.values():
                buffer.extend(records)
        raw = buffer.popleft()
        self._holding = raw
        return ConsumedRecord(raw)

    async def getmany(self, *, timeout_ms: int | None = None, max_records: int | None = None) -> RecordBatch:
        """One batch (possibly empty after `timeout_ms`); the previous batch now counts as processed.

        Records of one partition come in offset order. Don't mix with `async for` on the same
        consumer; if you do, records already buffered by the iteration are returned first.
        """
        held = self._holding
        if held is not None:
            self._processed[(held.topic, held.partition)] = held.offset + 1
            self._holding = None
        self._mark_batch_processed()
        ends = self._batch_ends
        batch: list[RawRecord] = []
        if self._buffer:
            batch.extend(self._buffer)
            self._buffer.clear()
            for raw in batch:
                ends[(raw.topic, raw.partition)] = raw.offset + 1
        else:
            fetched = await self._poll(
                self._poll_timeout_ms if timeout_ms is None else timeout_ms, max_records
            )
            for tp, records in fetched.items():
                batch.extend(records)
                ends[(tp.topic, tp.partition)] = records[-1].offset + 1
        return RecordBatch(batch)

    async def commit(
        self, record: ConsumedRecord | None = None, *, wait: bool = False
    ) -> dict[TopicPartition, int]:
        """Record `record.offset + 1` for the background commit (`wait`: commit it now); with no
        record, commit everything processed (and recorded) now. Returns what this call committed
        (`{}`: left to the background); raises `KafkaClientError` as the module docstring says."""
        if self._consumer is None:
            self._ready()
        commits = self._commits
        if record is not None:
            raw = record._raw
            commits.record((raw.topic, raw.partition), raw.offset + 1)
            return await commits.flush() if wait else {}
        commits.merge(self._processed)
        self._processed.clear()
        return await commits.flush()

    async def flush_commits(self) -> dict[TopicPartition, int]:
        """Commit every offset `commit(record)` recorded, now; see `commit` for what it raises."""
        if self._consumer is None:
            self._ready()
        return await self._commits.flush()

    async def _release(self, revoked: Iterable[TopicPartition]) -> None:
        """Before partitions go: commit what was recorded for them, then forget them."""
        revoked = list(revoked)
        await self._commits.release(revoked)
        self._forget(revoked)

    def _forget(self, revoked: Iterable[TopicPartition]) -> None:
        """Drop buffered records and uncommitted progress of partitions this member lost."""
        gone = {(tp[0], tp[1]) for tp in revoked}
        if not gone:
            return
        for key in gone:
            self._processed.pop(key, None)
            self._batch_ends.pop(key, None)
        held = self._holding
        if held is not None and (held.topic, held.partition) in gone:
            self._holding = None
        if self._buffer:
            self._buffer = deque(r for r in self._buffer if (r.topic, r.partition) not in gone)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_consumer", None) is not None:
            _warn(f"unclosed {self!r}: call `await consumer.stop()`", ResourceWarning, stacklevel=1)
