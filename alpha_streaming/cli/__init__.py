"""The `alpha-streaming` command: topic bootstrap and dead-letter inspection/replay.

The only package that imports the CLI framework. The work itself lives in plain async functions
(`alpha_streaming._admin`, `topic_selection`, `dlq_reader`, `dlq_replay`), so tests and the demo
call it without a shell. Results go to stdout, progress and errors to stderr; exit codes are
listed in `EXIT_CODES`.
"""

from __future__ import annotations

import typer

from alpha_streaming.cli.common import EXIT_CODES, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from alpha_streaming.cli.dlq_commands import dlq_app
from alpha_streaming.cli.topic_commands import topics_app

__all__ = ("EXIT_CODES", "EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "app", "main")

app = typer.Typer(
    name="alpha-streaming",
    help=f"Operate alpha-streaming topics and dead-letter queues.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")


def main() -> None:
    """Console-script entry point (`alpha-streaming = "alpha_streaming.cli:main"`)."""
    app()
