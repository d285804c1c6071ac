"""Test a service on the enhanced tier in memory: no Kafka, no Redis, milliseconds per event.

```python
from alpha_streaming.testing import TestStreamService

async with TestStreamService(service) as t:          # a StreamService, an app or a broker
    delivery = await t.publish("paper.signals.raw", {"qty": 1}, key="s:INFY")
    assert delivery.status == "processed" and delivery.attempts == 1
    children = t.published("paper.signals.validated")  # envelopes, lineage filled in
    letters = t.dead_letters("paper.signals.raw")      # DLQ records: key, value, headers
```
Needs the `testing` extra (`pip install 'alpha-streaming[testing]'`: fakeredis with Lua).
`import alpha_streaming` never loads this module.
"""

from __future__ import annotations

from alpha_streaming._testing.inbound import SOURCE
from alpha_streaming._testing.kit import TestStreamService
from alpha_streaming._testing.probe import Delivery
from alpha_streaming._testing.wire import Record

__all__ = ("SOURCE", "Delivery", "Record", "TestStreamService")
