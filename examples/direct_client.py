"""Direct tier: an idempotent producer and a manual-commit consumer, no middlewares.

Run it against the local stack (`make stack-up`):

    python -m examples.direct_client --count 5

It sends `count` order events as `EventEnvelope`s (Decimal prices travel as strings), then
reads them back in a consumer group, committing each record's own offset after handling it.
"""

from __future__ import annotations

import argparse
import asyncio
from decimal import Decimal

from pydantic import BaseModel

from alpha_streaming import (
    ConsumedRecord,
    EventEnvelope,
    RedpandaConsumer,
    RedpandaProducer,
    RedpandaSettings,
    TopicSpec,
    broker_admin,
    connected_broker,
    ensure_topics,
)

__all__ = ("OrderPlaced", "consume", "main", "produce", "run")

SOURCE = "direct-example"


class OrderPlaced(BaseModel):
    order_id: str
    token: str
    quantity: int
    price: Decimal


async def produce(config: RedpandaSettings, topic: str, count: int) -> list[EventEnvelope]:
    """Send `count` orders; each is acknowledged by all in-sync replicas before `send` returns."""
    sent: list[EventEnvelope] = []
    async with RedpandaProducer(config) as producer:
        for n in range(count):
            order = OrderPlaced(order_id=f"ord-{n}", token="INFY", quantity=10 + n, price=Decimal("1523.05"))
            # Partition key `strategy:token`: one strategy's orders on one instrument stay in order.
            envelope = EventEnvelope.create(
                type="order.placed", data=order, source=SOURCE, key="momentum:INFY", broker="paper"
            )
            await producer.send(topic=topic, key=envelope.key, value=envelope)
            sent.append(envelope)
    return sent


async def consume(
    config: RedpandaSettings, topic: str, group_id: str, wanted: set[str], *, timeout_s: float = 30.0
) -> list[ConsumedRecord]:
    """Read until every envelope id in `wanted` was seen; commit each record after handling it."""
    received: list[ConsumedRecord] = []
    async with RedpandaConsumer(config, topics=[topic], group_id=group_id) as consumer:
        async with asyncio.timeout(timeout_s):
            async for record in consumer:
                envelope = EventEnvelope.from_bytes(record.raw_value or b"")
                order = OrderPlaced.model_validate(envelope.data)
                print(f"{record.topic}[{record.partition}]@{record.offset} {order.order_id} {order.price}")
                received.append(record)
                # Exactly this record's next offset, committed in the background (and by stop()):
                # a crash repeats at most the ~100 handled records since the last commit.
                await consumer.commit(record)
                wanted.discard(envelope.id)
                if not wanted:
                    break
    return received


async def run(config: RedpandaSettings, *, topic: str, group_id: str, count: int) -> list[ConsumedRecord]:
    # Through the library's admin client: the same servers, client id and security as the clients.
    async with connected_broker(config) as admin:
        await ensure_topics(broker_admin(admin), [TopicSpec(topic)])
    sent = await produce(config, topic, count)
    return await consume(config, topic, group_id, {envelope.id for envelope in sent})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--topic", default="paper.orders.placed")
    parser.add_argument("--group-id", default="direct-example")
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(run(RedpandaSettings(), topic=args.topic, group_id=args.group_id, count=args.count))


if __name__ == "__main__":
    main()
