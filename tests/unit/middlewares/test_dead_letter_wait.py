"""A dead-letter write the broker has not acknowledged yet is waited for, not abandoned and redone.

Abandoning it is ambiguous: the producer keeps the write and stores it once enough replicas are
back, and the redelivered message would then be dead-lettered twice (seen on the 3-broker cluster
with two brokers down).
"""

from __future__ import annotations

import asyncio

import pytest

from middlewares._dead_letter import DeadLetterWriter


async def test_a_slow_acknowledgement_is_waited_for_past_the_send_timeout() -> None:
    writer = DeadLetterWriter(service="svc", send_timeout_s=0.05, max_wait_s=5.0)
    loop = asyncio.get_running_loop()
    ack: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.2, ack.set_result, None)  # four send timeouts later
    await writer._acknowledged(ack, [object()])
    assert ack.done() and not ack.cancelled()


async def test_an_acknowledgement_that_never_comes_fails_after_max_wait() -> None:
    writer = DeadLetterWriter(service="svc", send_timeout_s=0.05, max_wait_s=0.15)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await writer._acknowledged(never, [object()])
    assert never.cancelled()
