"""The two handler shapes the builder accepts, told apart once at build time.

- legacy, like the original system: `async def h(message: dict, topic: str)`; `message` is the
  consumed envelope as a JSON-ready dict and `topic` the topic it came from;
- typed: `async def h(payload: SomeModel, envelope: CurrentEnvelope, ctx: CurrentBrokerContext)`;
  the first parameter is a pydantic model (the envelope's `data`, decoded by FastStream), every
  other parameter is injected (`Annotated[..., Context(...)]` / `Depends(...)`) or has a default.
  Typed handlers go to FastStream unchanged; legacy ones get a small adapter.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fast_depends.dependencies import Dependant
from fast_depends.library import CustomField
from pydantic import BaseModel

from alpha_streaming._errors import ConfigError
from middlewares._state import handled

__all__ = ("HandlerKind", "HandlerSpec", "inspect_handler", "legacy_adapter")

HandlerFunc = Callable[..., Awaitable[Any]]
_SHAPES = (
    "use `async def h(message: dict, topic: str)` (legacy) or "
    "`async def h(payload: MyModel, envelope: CurrentEnvelope, ctx: CurrentBrokerContext)` (typed)"
)
_DICT_TYPES = (inspect.Parameter.empty, dict, Mapping, Any)


class HandlerKind(StrEnum):
    LEGACY = "legacy"
    TYPED = "typed"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    func: HandlerFunc
    kind: HandlerKind
    context_keys: frozenset[str]
    """Names the handler reads from FastStream's context (e.g. the service producer)."""


def _hints(func: HandlerFunc) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # NameError/TypeError from an annotation that cannot be evaluated
        raise ConfigError(
            f"cannot resolve the annotations of {func.__qualname__} ({exc}); "
            "define the payload model at module level so FastStream can import it"
        ) from exc


def _is_injected(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Annotated and any(
        isinstance(meta, CustomField | Dependant) for meta in hint.__metadata__
    )


def _context_keys(hints: Mapping[str, Any]) -> frozenset[str]:
    keys: set[str] = set()
    for hint in hints.values():
        if typing.get_origin(hint) is typing.Annotated:
            keys.update(
                str(getattr(meta, "name", "") or "")
                for meta in hint.__metadata__
                if isinstance(meta, CustomField)
            )
    return frozenset(keys)


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def inspect_handler(func: Any) -> HandlerSpec:
    """Classify `func` as legacy or typed; `ConfigError` says how to fix any other shape."""
    name = getattr(func, "__qualname__", repr(func))
    if not inspect.iscoroutinefunction(func):
        raise ConfigError(f"handler {name} must be an `async def` function; {_SHAPES}")
    params = list(inspect.signature(func).parameters.values())
    hints = _hints(func)
    plain = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(plain) != len(params) and not all(_is_injected(hints.get(p.name)) for p in params[len(plain) :]):
        raise ConfigError(f"handler {name} has *args/**kwargs/keyword-only parameters; {_SHAPES}")
    if plain and _is_model(hints.get(plain[0].name)):
        rest = [p for p in params[1:] if not _is_injected(hints.get(p.name)) and p.default is p.empty]
        if rest:
            names = ", ".join(p.name for p in rest)
            raise ConfigError(
                f"typed handler {name}: parameter(s) {names} are neither injected nor defaulted; "
                "annotate them with CurrentEnvelope, CurrentBrokerContext, CurrentProducer or "
                "another FastStream Context/Depends"
            )
        return HandlerSpec(func, HandlerKind.TYPED, _context_keys(hints))
    if len(params) == 2 and not any(_is_injected(hints.get(p.name)) for p in params):
        first = hints.get(params[0].name, inspect.Parameter.empty)
        second = hints.get(params[1].name, inspect.Parameter.empty)
        if typing.get_origin(first) in (dict, Mapping):
            first = typing.get_origin(first)
        if first in _DICT_TYPES and second in (inspect.Parameter.empty, str):
            return HandlerSpec(func, HandlerKind.LEGACY, frozenset())
    raise ConfigError(f"handler {name} has an unsupported signature {inspect.signature(func)}; {_SHAPES}")


def legacy_adapter(func: HandlerFunc) -> HandlerFunc:
    """A FastStream handler that calls `func(envelope_as_dict, topic)`.

    It reads the envelope the envelope middleware validated (no second parse) and ignores the
    legacy handler's return value, as the original system did.
    """

    async def legacy_handler() -> None:  # no injected parameter: nothing for fast_depends to solve
        state = handled()
        envelope, where = state.envelope, state.broker_context
        assert envelope is not None and where is not None  # a single message, checked by `handled`
        await func(envelope.model_dump(mode="json"), where.topic)

    legacy_handler.__name__ = getattr(func, "__name__", "legacy_handler")
    legacy_handler.__qualname__ = getattr(func, "__qualname__", legacy_handler.__name__)
    legacy_handler.__doc__ = func.__doc__
    return legacy_handler
