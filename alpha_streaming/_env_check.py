"""Warn about `ALPHA_*` variables that no setting reads: a misspelt name is otherwise ignored."""

from __future__ import annotations

import difflib
import logging
import os

from pydantic import BaseModel
from pydantic_settings import BaseSettings

__all__ = ("known_env_names", "warn_unknown_env")

log = logging.getLogger("alpha_streaming.settings")

# Variables of the project's own scripts and tests, not settings.
_OTHER_VARIABLES = frozenset({"ALPHA_STACK_HOME", "ALPHA_REDIS_PERSIST"})
_warned: set[str] = set()


def known_env_names(connection: type[BaseSettings], service: type[BaseSettings]) -> set[str]:
    """Every `ALPHA_*` name the two settings classes read, flat and nested spellings."""
    names = set(_OTHER_VARIABLES) | {"ALPHA_REDIS_URL"}
    for field in connection.model_fields:
        names |= {f"ALPHA_REDPANDA_{field.upper()}", f"ALPHA_REDPANDA__{field.upper()}"}
    for field, info in service.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel) and section is not connection:
            names |= {f"ALPHA_{field.upper()}__{sub.upper()}" for sub in section.model_fields}
        elif section is not connection:
            names.add(f"ALPHA_{field.upper()}")
    return names


def warn_unknown_env(connection: type[BaseSettings], service: type[BaseSettings]) -> None:
    """Log each unknown `ALPHA_*` variable once per process, with the closest known name."""
    unknown = [
        name
        for name in os.environ
        if name.startswith("ALPHA_") and not name.startswith("ALPHA_TEST_") and name not in _warned
    ]
    if not unknown:
        return
    known = known_env_names(connection, service)
    for name in unknown:
        if name in known:
            continue
        _warned.add(name)
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        _warn("environment variable %s is not a setting and is ignored%s", name, hint)


def _warn(message: str, *args: str) -> None:
    """Log a warning; before any logging is set up, still with time, level and logger."""
    if log.hasHandlers():
        log.warning(message, *args)
        return
    # Settings are read before `configure_logging` runs, and Python's last-resort handler would
    # print the bare message. (Imported here: `_logging` imports the settings, which import us.)
    from alpha_streaming._logging import OperatorFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(OperatorFormatter())
    log.addHandler(handler)
    try:
        log.warning(message, *args)
    finally:
        log.removeHandler(handler)
