"""Idempotence on the real broker: a producer id is assigned and a resent batch is not duplicated."""

from __future__ import annotations

from collections import Counter

from aiokafka import AIOKafkaProducer

from alpha_streaming import RedpandaProducer, RedpandaSettings
from tests.conftest import NewTopicFactory, host_port
from tests.integration.clients._fault_proxy import FaultProxy
from tests.integration.clients.conftest import ReadAll

RECORDS = 50


async def test_producer_runs_an_idempotent_session(
    settings: RedpandaSettings, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.idem")
    async with RedpandaProducer(settings) as producer:
        await producer.send(topic=topic, key="k", value=b"v")
        assert producer.producer_id is not None and producer.producer_id >= 0


async def test_a_batch_resent_after_a_lost_response_is_written_once(
    kafka_bootstrap: str, new_topic: NewTopicFactory, read_all: ReadAll
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.idem")
    async with FaultProxy(*host_port(kafka_bootstrap, 9092)) as proxy:
        config = RedpandaSettings(bootstrap_servers=proxy.bootstrap, client_id="idem-test")
        async with RedpandaProducer(config) as producer:
            await producer.send(topic=topic, key="warm-up", value=b"0")  # metadata + producer id
            proxy.arm_drop_produce_response = True
            values = [f"{i}".encode() for i in range(1, RECORDS)]
            metadata = await producer.send_many(topic, [(b"k", v) for v in values])
        assert proxy.dropped_responses == 1, "the fault was not injected; the test proves nothing"

    records = await read_all(topic)
    assert Counter(r.value for r in records) == Counter([b"0", *values])
    assert [r.offset for r in records] == list(range(RECORDS))
    # The acknowledged offsets are the ones the broker stored, not those of a second copy.
    assert sorted(m.offset for m in metadata) == list(range(1, RECORDS))


async def test_the_same_fault_duplicates_without_idempotence(
    kafka_bootstrap: str, new_topic: NewTopicFactory, read_all: ReadAll
) -> None:
    """Control: the lost response really makes the client resend, so the test above can fail."""
    topic = await new_topic(partitions=1, prefix="direct.idem")
    async with FaultProxy(*host_port(kafka_bootstrap, 9092)) as proxy:
        plain = AIOKafkaProducer(bootstrap_servers=proxy.bootstrap, enable_idempotence=False, acks=1)
        await plain.start()
        try:
            await plain.send_and_wait(topic, b"0", key=b"warm-up")
            proxy.arm_drop_produce_response = True
            futures = [await plain.send(topic, f"{i}".encode(), key=b"k") for i in range(1, RECORDS)]
            for future in futures:
                await future
        finally:
            await plain.stop()
        assert proxy.dropped_responses == 1

    records = await read_all(topic)
    assert len(records) > RECORDS, "without idempotence the resent batch should be stored twice"
