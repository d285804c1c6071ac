"""The pipeline's services, each built with `StreamServiceBuilder` on the enhanced tier.

    market-feed      (producer only)            -> market.ticks
    strategy-runner  market.ticks               -> {broker}.signals.raw
    risk-manager     paper+zerodha signals.raw  -> {broker}.signals.validated | .rejected
    paper-engine     paper.signals.validated    -> paper.orders.filled
    zerodha-engine   zerodha.signals.validated  -> zerodha.orders.filled

Handlers are typed: the payload model first, then what they need injected (the envelope, the
`BrokerContext` of the record, the service producer). Whatever a handler sends through
`CurrentProducer` becomes a child of the event it handles (correlation and causation filled in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.metrics import MeterProvider
from redis.asyncio import Redis

from alpha_streaming import CurrentProducer, Settings, StreamService, StreamServiceBuilder, TopicMap
from examples.trading_pipeline.engine import FlakyGateway, Gateway, PaperGateway
from examples.trading_pipeline.feed import SOURCE as FEED
from examples.trading_pipeline.models import EventType, Signal, SignalRejected, Tick
from examples.trading_pipeline.risk import Instrument, check_signal
from examples.trading_pipeline.strategies import StrategyBook
from examples.trading_pipeline.topology import NAMESPACES, TICKS, Consumer, consumers
from middlewares import CurrentBrokerContext, CurrentEnvelope, RetryPolicy

__all__ = ("InstrumentMaster", "Pipeline", "build_pipeline")


@dataclass(frozen=True, slots=True)
class InstrumentMaster:
    """Reference data in a Redis hash (token -> lot size); operators add instruments there."""

    redis: Redis
    key: str

    async def get(self, token: str) -> Instrument | None:
        lot = await self.redis.hget(self.key, token)
        return None if lot is None else Instrument(token, int(lot))

    async def add(self, token: str, lot_size: int = 1) -> None:
        await self.redis.hset(self.key, token, lot_size)


@dataclass(slots=True)
class Pipeline:
    """The built services in start order (producers last: consumers are ready before data flows)."""

    feed: StreamService
    services: list[StreamService] = field(default_factory=list)

    @property
    def all(self) -> list[StreamService]:
        return [*self.services, self.feed]


def build_pipeline(
    settings: Settings,
    redis: Redis,
    *,
    session: str,
    instruments: InstrumentMaster,
    meter_provider: MeterProvider | None = None,
    policy: RetryPolicy | None = None,
    venue_failures: int = 2,
) -> Pipeline:
    """Build every service of the pipeline for one feed `session`."""
    by_service = {c.service: c for c in consumers()}

    def builder(name: str) -> StreamServiceBuilder:
        return (
            StreamServiceBuilder(name, settings.redpanda, settings)
            .with_redis(redis)
            .with_error_handling(policy)
            .with_metrics(meter_provider=meter_provider)
        )

    def consume(b: StreamServiceBuilder, consumer: Consumer, handler: object) -> StreamServiceBuilder:
        return b.add_consumer_handler(
            topics=list(consumer.topics), group_id=consumer.group, handler_func=handler
        )

    book = StrategyBook()

    async def on_tick(tick: Tick, out: CurrentProducer) -> None:
        if tick.session != session:
            return  # another demo run's feed shares market.ticks; not ours to trade
        for broker, signal in book.on_tick(tick):
            await out.send(
                topic=TopicMap(broker).signals_raw, value=signal, key=signal.key, event_type=EventType.SIGNAL
            )

    async def on_signal(signal: Signal, where: CurrentBrokerContext, out: CurrentProducer) -> None:
        # One consumer group reads both namespaces; the record's own context says which one.
        topics = TopicMap(where.broker)
        decision = check_signal(signal, broker=where.broker, instrument=await instruments.get(signal.token))
        if decision.accepted:
            await out.send(
                topic=topics.signals_validated,
                value=signal,
                key=signal.key,
                event_type=EventType.SIGNAL_VALIDATED,
            )
        else:
            await out.send(
                topic=topics.signals_rejected,
                value=SignalRejected(signal=signal, reason=decision.reason),
                key=signal.key,
                event_type=EventType.SIGNAL_REJECTED,
            )

    def engine(broker: str, gateway: Gateway) -> object:
        filled = TopicMap(broker).orders_filled

        async def on_validated(signal: Signal, envelope: CurrentEnvelope, out: CurrentProducer) -> None:
            # The order id derives from the event id: the venue sees the same id on a retry.
            fill = await gateway.execute(f"ord-{envelope.id}", signal)
            await out.send(topic=filled, value=fill, key=signal.key, event_type=EventType.ORDER_FILLED)

        return on_validated

    gateways: dict[str, Gateway] = {"paper": PaperGateway(), "zerodha": FlakyGateway(failures=venue_failures)}
    runner = by_service["strategy-runner"]
    risk = by_service["risk-manager"]
    services = [
        consume(builder(runner.service), runner, on_tick)
        .add_producer(topics=[TopicMap(ns).signals_raw for ns in NAMESPACES])
        .build(),
        consume(builder(risk.service), risk, on_signal)
        .add_producer(
            topics=[
                t
                for ns in NAMESPACES
                for t in (TopicMap(ns).signals_validated, TopicMap(ns).signals_rejected)
            ]
        )
        .build(),
    ]
    for ns in NAMESPACES:
        consumer = by_service[f"{ns}-engine"]
        services.append(
            consume(builder(consumer.service), consumer, engine(ns, gateways[ns]))
            .add_producer(topics=[TopicMap(ns).orders_filled])
            .build()
        )
    feed = builder(FEED).add_producer(topics=[TICKS]).build()
    # Downstream first: each consumer is in its group before anything upstream publishes.
    return Pipeline(feed=feed, services=services[::-1])
