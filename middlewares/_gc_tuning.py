"""Python's cyclic garbage collector, tuned for a streaming service once it has started.

Measured on the builder (bench/README.md, "Issue 12, part 3"):
- full passes walked the whole startup heap (modules, classes, schemas): a 50-60 ms pause every
  ~1.7 s at 1k msg/s, which every record in flight waited out (p99 57-82 ms). Frozen after
  startup (`gc.freeze()`), that heap is never walked again and a full pass takes ~4 ms;
- young collections ran every 700 net new container objects, and the records in flight (a
  message's objects live across several awaits) survived them into older generations:
  ~30-55 µs of collector time per message at `concurrency` 8-64. With the first threshold at
  10,000, what a message allocates is freed by reference counting before a collection sees it.
Objects made later are collected as before; only the first threshold and the frozen heap change.
"""

from __future__ import annotations

import functools
import gc

__all__ = ("YOUNG_THRESHOLD", "tune_garbage_collector")

YOUNG_THRESHOLD = 10_000


@functools.cache
def tune_garbage_collector() -> None:
    """Once per process: collect what startup left behind, freeze the survivors, collect less often."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
