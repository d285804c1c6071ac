"""What every `alpha-streaming` command shares: exit codes, options, settings, error output."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import pydantic
import typer

from alpha_streaming._errors import AlphaStreamingError, ConfigError
from alpha_streaming._settings import RedpandaSettings

__all__ = (
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "BootstrapOption",
    "ProgressOption",
    "fail",
    "fail_usage",
    "progress_printer",
    "run",
    "settings_for",
    "settings_or_exit",
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_CODES = (
    "Exit codes: 0 success; 1 error (printed as `ErrorClass: message`); 2 usage error; "
    "3 partial (some records could not be replayed, or some but not all topics could not be created)."
)

T = TypeVar("T")

BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        help="host:port[,host:port]; default from KAFKA_BOOTSTRAP_SERVERS / ALPHA_REDPANDA_*.",
    ),
]
ProgressOption = Annotated[
    int, typer.Option("--progress-every", min=1, help="Print a progress line to stderr every N records.")
]


def settings_for(bootstrap_servers: str | None) -> RedpandaSettings:
    """`RedpandaSettings()` from the environment, with `--bootstrap-servers` taking precedence."""
    try:
        if bootstrap_servers is None:
            return RedpandaSettings()
        return RedpandaSettings(bootstrap_servers=bootstrap_servers)
    except pydantic.ValidationError as exc:
        reasons = "; ".join(str(e.get("ctx", {}).get("error", e["msg"])) for e in exc.errors())
        raise ConfigError(reasons) from exc


def settings_or_exit(bootstrap_servers: str | None) -> RedpandaSettings:
    """`settings_for`, with a `ConfigError` printed as `ConfigError: message` and exit code 1."""
    try:
        return settings_for(bootstrap_servers)
    except ConfigError as exc:
        raise fail(exc) from None


def run(work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; an `AlphaStreamingError` becomes `Class: message` on stderr and exit code 1."""
    try:
        return asyncio.run(work)
    except AlphaStreamingError as exc:
        raise fail(exc) from None


def fail(exc: AlphaStreamingError) -> typer.Exit:
    typer.echo(f"{type(exc).__name__}: {exc}", err=True)
    return typer.Exit(EXIT_ERROR)


def fail_usage(message: str) -> typer.Exit:
    typer.echo(f"Usage error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def progress_printer(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        typer.echo(f"{label}: {done}/{total} records", err=True)

    return report
