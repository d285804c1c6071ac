"""The dedup local cache: bounded, least-recently-used eviction, entries expire (seed-lessons #8)."""

from __future__ import annotations

import pytest

from middlewares._lru import LruTtlSet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_evicts_the_least_recently_used_entry_not_an_arbitrary_one() -> None:
    cache = LruTtlSet(3, 60, clock=Clock())
    for key in ("a", "b", "c"):
        cache.add(key)
    assert "a" in cache  # touching "a" makes "b" the least recently used
    cache.add("d")
    assert "b" not in cache
    assert all(key in cache for key in ("a", "c", "d"))
    assert len(cache) == 3


def test_re_adding_refreshes_recency() -> None:
    cache = LruTtlSet(2, 60, clock=Clock())
    cache.add("a")
    cache.add("b")
    cache.add("a")
    cache.add("c")
    assert "a" in cache
    assert "b" not in cache


def test_never_grows_beyond_maxsize() -> None:
    cache = LruTtlSet(50, 60, clock=Clock())
    for i in range(1_000):
        cache.add(str(i))
    assert len(cache) == 50
    assert all(str(i) in cache for i in range(950, 1_000))
    assert "949" not in cache


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = LruTtlSet(10, 5.0, clock=clock)
    cache.add("a")
    clock.now += 4.9
    assert "a" in cache
    clock.now += 0.2
    assert "a" not in cache
    assert len(cache) == 0  # an expired entry found on lookup is dropped


def test_size_zero_disables_the_cache() -> None:
    cache = LruTtlSet(0, 5.0)
    cache.add("a")
    assert "a" not in cache
    assert len(cache) == 0


def test_discard() -> None:
    cache = LruTtlSet(10, 5.0)
    cache.add("a")
    cache.discard("a")
    cache.discard("never-added")
    assert "a" not in cache


@pytest.mark.parametrize(("maxsize", "ttl"), [(-1, 1.0), (1, 0.0), (1, -3.0)])
def test_rejects_nonsense_bounds(maxsize: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        LruTtlSet(maxsize, ttl)
