"""The public surface: the flat `__all__` of `alpha_streaming` and of `middlewares`.

DESIGN.md ("Public API"): `from alpha_streaming import RedpandaSettings, Settings, EventEnvelope,
TopicMap, BrokerContext, broker_from_topic, RedpandaProducer, RedpandaConsumer,
StreamServiceBuilder, ServiceOrchestrator`, and `from middlewares import EnvelopeMiddleware,
DeduplicationMiddleware, ErrorRoutingMiddleware, MetricsMiddleware, RetryPolicy, enhanced_stack,
EnhancedTier`. Every public name is defined in an internal (underscore) module and re-exported.
The direction of the imports between the layers is `lint-imports`' job (pyproject.toml).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import alpha_streaming
import middlewares

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [alpha_streaming, middlewares]
DOCUMENTED = {
    "alpha_streaming": {
        "BrokerContext",
        "EventEnvelope",
        "RedpandaConsumer",
        "RedpandaProducer",
        "RedpandaSettings",
        "ServiceOrchestrator",
        "Settings",
        "StreamServiceBuilder",
        "TopicMap",
        "broker_from_topic",
    },
    "middlewares": {
        "DeduplicationMiddleware",
        "EnhancedTier",
        "EnvelopeMiddleware",
        "ErrorRoutingMiddleware",
        "MetricsMiddleware",
        "RetryPolicy",
        "enhanced_stack",
    },
}


def isort_style(name: str) -> tuple[int, list[Any]]:
    """Ruff's RUF022 order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest; each naturally sorted.

    (`CHILD_ID_NAMESPACE` comes first in `alpha_streaming.__all__`, so plain `sorted` does not hold.)
    """
    kind = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return kind, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def defining_module(package: ModuleType, name: str, value: Any) -> str:
    """Where `value` is defined: its `__module__` for a class or function, else the submodule
    whose own `__all__` exports the very same object (constants, `Annotated` aliases)."""
    if inspect.isclass(value) or inspect.isroutine(value):
        return str(value.__module__)
    homes = [
        module_name
        for module_name, module in sorted(sys.modules.items())
        if module_name.startswith(f"{package.__name__}.")
        and name in getattr(module, "__all__", ())
        and getattr(module, name, None) is value
    ]
    assert homes, f"{package.__name__}.{name} is exported by none of the package's modules"
    return homes[0]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_sorted_as_ruff_sorts_it_and_has_no_duplicates(package: ModuleType) -> None:
    names = list(package.__all__)
    assert names == sorted(names, key=isort_style)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_the_documented_names_are_public(package: ModuleType) -> None:
    assert DOCUMENTED[package.__name__] <= set(package.__all__)


@pytest.mark.parametrize(
    ("package", "name"),
    [(package, name) for package in PACKAGES for name in package.__all__],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_each_public_name_is_defined_in_an_internal_module_of_its_package(
    package: ModuleType, name: str
) -> None:
    value = getattr(package, name)
    home = defining_module(package, name, value)
    assert home.startswith(f"{package.__name__}."), f"{name} comes from {home}"
    assert any(part.startswith("_") for part in home.split(".")[1:]), f"{name} lives in public {home}"
    assert getattr(importlib.import_module(home), name) is value


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_star_import_gives_every_public_name(package: ModuleType) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {package.__name__} import *", namespace)
    assert set(package.__all__) <= namespace.keys()


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'enhanced_broker'"):
        _ = alpha_streaming.enhanced_broker  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from middlewares import enhanced_broker", {})


def fresh_interpreter(code: str) -> Any:
    """Run `code` in a new interpreter (nothing imported yet) and return what it prints as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_importing_the_package_loads_neither_the_enhanced_tier_nor_redis_nor_the_otel_sdk() -> None:
    loaded = fresh_interpreter(
        """
        import json, sys
        import alpha_streaming
        heavy = ("middlewares", "redis", "opentelemetry.sdk")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
        """
    )
    assert loaded == []


def test_the_service_layer_loads_on_first_use() -> None:
    found = fresh_interpreter(
        """
        import json, sys
        from alpha_streaming import ServiceOrchestrator, StreamServiceBuilder
        print(json.dumps([
            StreamServiceBuilder.__module__,
            ServiceOrchestrator.__module__,
            "middlewares" in sys.modules,
        ]))
        """
    )
    assert found == ["alpha_streaming._services.builder", "alpha_streaming._services.orchestrator", True]
