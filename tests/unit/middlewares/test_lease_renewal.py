"""`LeaseRenewer`: one timer renews every live lease, one call per slot; a message records and forgets."""

from __future__ import annotations

import asyncio

import pytest

from middlewares._lease_renewal import LeaseRenewer


class _Redis:
    """Stands in for the renew script: records each call, can be slow or fail."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        self.finished = 0
        self.two_finished = asyncio.Event()
        self._delay_s = delay_s
        self._fail = fail

    async def renew(self, keys: list[str], owners: list[str]) -> None:
        self.calls.append((keys, owners))
        await asyncio.sleep(self._delay_s)
        if self._fail:
            raise ConnectionError("redis down")
        self.finished += 1
        if self.finished == 2:
            self.two_finished.set()


async def test_every_live_lease_is_renewed_by_one_timer_and_a_dropped_one_is_not() -> None:
    redis = _Redis()
    leases = LeaseRenewer(redis.renew, every_s=0.02)
    leases.hold("owner-1", ["k1"])
    leases.hold("owner-2", ["k2", "k3"])
    leases.drop("owner-2")
    await asyncio.sleep(0.05)
    assert redis.calls and {o for _, owners in redis.calls for o in owners} == {"owner-1"}
    leases.drop("owner-1")
    await asyncio.sleep(0.03)
    count = len(redis.calls)
    await asyncio.sleep(0.05)
    assert len(redis.calls) == count, "nothing live: the timer stops"
    leases.hold("owner-3", ["k4"])  # and the next lease starts it again
    await asyncio.sleep(0.05)
    assert redis.calls[-1] == (["k4"], ["owner-3"])
    await leases.close()


async def test_close_waits_for_a_renewal_under_way_instead_of_cancelling_it() -> None:
    redis = _Redis(delay_s=0.05)
    leases = LeaseRenewer(redis.renew, every_s=0.01)
    leases.hold("owner", ["k"])
    await asyncio.sleep(0.02)  # a renewal is in its Redis call now
    leases.drop("owner")
    assert redis.calls and redis.finished == 0
    await leases.close()
    assert redis.finished == len(redis.calls), "the call completed: no connection left half-used"


async def test_a_failed_renewal_is_logged_and_tried_again_next_tick(caplog: pytest.LogCaptureFixture) -> None:
    redis = _Redis(fail=True)
    leases = LeaseRenewer(redis.renew, every_s=0.01)
    leases.hold("owner", ["k"])
    await asyncio.sleep(0.05)
    assert len(redis.calls) >= 2
    assert "lease renewal failed (ConnectionError: redis down)" in caplog.text
    await leases.close()


async def test_leases_of_one_slot_are_renewed_in_one_call_each_key_with_its_owner() -> None:
    redis = _Redis()
    leases = LeaseRenewer(redis.renew, every_s=0.01)
    leases.hold("owner-1", ["{a}k1", "{a}k2"], "{a}")
    leases.hold("owner-2", ["{a}k3"], "{a}")
    leases.hold("owner-3", ["{b}k4"], "{b}")
    await asyncio.wait_for(redis.two_finished.wait(), timeout=5)
    await leases.close()
    first_tick = redis.calls[:2]
    assert sorted(first_tick) == [
        (["{a}k1", "{a}k2", "{a}k3"], ["owner-1", "owner-1", "owner-2"]),
        (["{b}k4"], ["owner-3"]),
    ]
