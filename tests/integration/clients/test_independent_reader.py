"""An independent client (kcat, librdkafka) reads exactly the bytes and headers the producer wrote."""

from __future__ import annotations

import asyncio
import shutil

from alpha_streaming import EventEnvelope, RedpandaProducer, RedpandaSettings
from tests.conftest import NewTopicFactory

# Per record: a text line "offset|key length|value length|headers", then the raw key and value.
KCAT_FORMAT = "%o|%K|%S|%h\\n%k%s"


def parse_kcat(out: bytes) -> list[tuple[int, bytes | None, bytes, dict[str, str]]]:
    records = []
    pos = 0
    while pos < len(out):
        end = out.index(b"\n", pos)
        offset, key_len, value_len, headers = out[pos:end].decode().split("|", 3)
        pos = end + 1
        key = None
        if int(key_len) >= 0:
            key, pos = out[pos : pos + int(key_len)], pos + int(key_len)
        value, pos = out[pos : pos + int(value_len)], pos + int(value_len)
        pairs = [h.split("=", 1) for h in headers.split(",")] if headers else []
        records.append((int(offset), key, value, {name: v for name, v in pairs}))
    return records


async def test_kcat_sees_the_same_bytes_and_headers(
    settings: RedpandaSettings, kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is missing: `scripts/stack.sh up` installs it (apt-get install kcat)"
    topic = await new_topic(partitions=1, prefix="direct.kcat")
    envelope = EventEnvelope.create(type="tick", data={"px": "101.25", "sym": "NIFTY"}, source="tests")
    sent = [
        ("env", envelope, {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
        ("map", {"qty": 7, "name": "é"}, {"x-tenant": "paper"}),
        ("raw", b"\x00\x01binary\xff|\n", {"x-kind": "blob"}),
    ]
    async with RedpandaProducer(settings) as producer:
        for key, value, headers in sent:
            await producer.send(topic=topic, key=key, value=value, headers=headers)

    process = await asyncio.create_subprocess_exec(
        kcat,
        "-C",
        "-q",
        "-e",
        "-b",
        kafka_bootstrap,
        "-t",
        topic,
        "-o",
        "beginning",
        "-f",
        KCAT_FORMAT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    records = parse_kcat(out)

    assert [(o, k) for o, k, _, _ in records] == [(0, b"env"), (1, b"map"), (2, b"raw")]
    (_, _, env_value, env_headers), (_, _, map_value, map_headers), (_, _, raw_value, raw_headers) = records
    assert env_value == envelope.to_bytes()
    assert env_headers == {"content-type": "application/json", **sent[0][2], **envelope.headers()}
    assert map_value == '{"qty":7,"name":"é"}'.encode()
    assert map_headers == {"content-type": "application/json", "x-tenant": "paper"}
    assert raw_value == b"\x00\x01binary\xff|\n"
    assert raw_headers == {"x-kind": "blob"}
