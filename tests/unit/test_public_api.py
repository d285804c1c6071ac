"""`alpha_streaming`'s public names: exactly the ones DESIGN.md documents, each the real object.

DESIGN.md ("Public API"): `from alpha_streaming import RedpandaSettings, Settings, EventEnvelope,
TopicMap, BrokerContext, broker_from_topic, RedpandaProducer, RedpandaConsumer,
StreamServiceBuilder, ServiceOrchestrator`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import alpha_streaming

ROOT = Path(__file__).resolve().parents[2]

# Documented name -> the module that defines it.
DOCUMENTED = {
    "BrokerContext": "alpha_streaming.topics",
    "EventEnvelope": "alpha_streaming.envelope",
    "RedpandaConsumer": "alpha_streaming.clients.consumer",
    "RedpandaProducer": "alpha_streaming.clients.producer",
    "RedpandaSettings": "alpha_streaming.settings",
    "ServiceOrchestrator": "alpha_streaming.orchestrator",
    "Settings": "alpha_streaming.settings",
    "StreamServiceBuilder": "alpha_streaming.builder",
    "TopicMap": "alpha_streaming.topics",
    "broker_from_topic": "alpha_streaming.topics",
}


def test_all_is_the_documented_names_sorted() -> None:
    assert alpha_streaming.__all__ == tuple(sorted(DOCUMENTED))


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_public_name_is_the_object_its_module_defines(name: str) -> None:
    exported = getattr(alpha_streaming, name)
    home = importlib.import_module(DOCUMENTED[name])
    assert exported is getattr(home, name)
    assert exported.__module__ == DOCUMENTED[name]


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from alpha_streaming import *", namespace)
    assert set(DOCUMENTED) <= namespace.keys()


# Whichever of the two packages a program imports first, both must import: `middlewares` imports
# `alpha_streaming.*` at module level, and `alpha_streaming.builder` imports `middlewares`.
ENTRY_POINTS = [
    "import alpha_streaming, middlewares",
    "import middlewares, alpha_streaming",
    "from middlewares import RetryPolicy, enhanced_stack",
    "from alpha_streaming import StreamServiceBuilder, ServiceOrchestrator",
    *(
        f"import middlewares.{path.stem}"
        for path in sorted((ROOT / "middlewares").glob("*.py"))
        if path.stem != "__init__"
    ),
    "import alpha_streaming.builder",
    "import alpha_streaming.cli",
]


def test_no_import_order_hits_a_cycle() -> None:
    # One fresh interpreter; the project's modules are dropped from sys.modules before each entry.
    script = textwrap.dedent(
        f"""
        import sys
        failures = []
        for entry in {ENTRY_POINTS!r}:
            for name in [n for n in sys.modules if n.split(".")[0] in ("alpha_streaming", "middlewares")]:
                del sys.modules[name]
            try:
                exec(entry, {{}})
            except ImportError as exc:
                failures.append(f"{{entry}}: {{exc}}")
        print("\\n".join(failures))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import cycles:\n{result.stdout}"
