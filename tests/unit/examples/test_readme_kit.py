"""The complete test the README shows for `alpha_streaming.testing` (kept verbatim there)."""

from decimal import Decimal

from alpha_streaming import EventEnvelope, child_id
from alpha_streaming.testing import TestStreamService
from examples.decorator_app import FILLS, POSITIONS, app
from examples.trading_pipeline.models import OrderFilled, Side


async def test_position_keeper_in_memory() -> None:
    fill = OrderFilled(
        order_id="ord-9",
        strategy="readme",
        token="INFY",
        side=Side.BUY,
        quantity=Decimal(5),
        fill_price=Decimal("1523.45"),
        venue="paper-sim",
        filled_at="2025-01-02T09:15:00Z",
    )
    event = EventEnvelope.create(type="order.filled", data=fill, source="paper-engine", key="readme:INFY")

    async with TestStreamService(app) as t:  # no Kafka, no Redis: fakeredis runs the dedup scripts
        done = await t.publish(FILLS, event)  # the record RedpandaProducer would write
        again = await t.publish(FILLS, event)  # redelivered: dedup absorbs it
        poison = await t.publish(FILLS, b"\x00junk", key="readme:INFY")
        [update] = t.published(POSITIONS)  # envelopes, lineage filled in
        [letter] = t.dead_letters(FILLS)  # the DLQ record, as error routing writes it

    assert (done.status, again.status, poison.status) == ("processed", "deduplicated", "dead_lettered")
    assert done.attempts == 1
    assert update.id == str(child_id(event.id, POSITIONS, 0))  # the same on every re-run
    assert (update.causation_id, update.correlation_id) == (event.id, event.correlation_id)
    assert (letter.key, letter.value) == (b"readme:INFY", b"\x00junk")
    assert letter.dead_letter.exception_fqcn == "alpha_streaming._errors.EnvelopeError"
