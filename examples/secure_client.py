"""A round trip on a secure cluster: settings from the environment, or a ready `ssl.SSLContext`.

    ALPHA_REDPANDA_SECURITY_PROTOCOL=SSL ALPHA_REDPANDA_SSL_CAFILE=ca.pem ... \\
        python -m examples.secure_client --topic secure.demo

`round_trip` creates the topic (through the library's admin client), sends one event and reads it
back; every connection it opens uses the one security the settings describe.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

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


def settings_with_context(cafile: str, certfile: str, keyfile: str, key_password: str) -> RedpandaSettings:
    """Client-certificate TLS through a context built by hand (e.g. a key from a vault or an HSM)."""
    context = ssl.create_default_context(cafile=cafile)
    context.load_cert_chain(certfile, keyfile, key_password)
    return RedpandaSettings(security_protocol="SSL", security=context)


async def round_trip(config: RedpandaSettings, topic: str, group_id: str) -> ConsumedRecord:
    """Create `topic`, send one event to it and read it back with a consumer group."""
    async with connected_broker(config) as admin:
        await ensure_topics(broker_admin(admin), [TopicSpec(topic)])
    sent = EventEnvelope.create(type="secure.ping", source="secure-client", key="k", data={"ok": True})
    async with RedpandaProducer(config) as producer:
        await producer.send(topic=topic, key="k", value=sent)
    async with RedpandaConsumer(config, topics=[topic], group_id=group_id) as consumer:
        async for record in consumer:
            if isinstance(record.value, dict) and record.value.get("id") == sent.id:
                await consumer.commit(record)
                return record
    raise RuntimeError("the consumer stopped before the event came back")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="secure.demo")
    parser.add_argument("--group-id", default="secure-client")
    args = parser.parse_args()
    record = asyncio.run(round_trip(RedpandaSettings(), args.topic, args.group_id))
    print(f"sent and read back {record.topic}[{record.partition}]@{record.offset}")


if __name__ == "__main__":
    main()
