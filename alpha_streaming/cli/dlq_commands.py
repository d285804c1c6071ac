"""`alpha-streaming dlq inspect` and `dlq replay`: dead-letter topics from a terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

import typer

from alpha_streaming._admin import connected_broker
from alpha_streaming._errors import ConfigError
from alpha_streaming._settings import RedpandaSettings
from alpha_streaming._tools.dlq_filters import RecordFilter, parse_filters
from alpha_streaming._tools.dlq_reader import DlqEntry, inspect_dlq, preview
from alpha_streaming._tools.dlq_replay import ReplayAction, ReplayCallback, ReplayReport, replay_dlq
from alpha_streaming._topics import dlq_topic, is_dlq_topic
from alpha_streaming.cli.common import (
    EXIT_CODES,
    EXIT_PARTIAL,
    BootstrapOption,
    ProgressOption,
    fail_usage,
    progress_printer,
    run,
    settings_or_exit,
)

__all__ = ("DEFAULT_REPLAY_GROUP", "dlq_app", "dlq_inspect", "dlq_replay", "format_entry", "format_replay")

DEFAULT_REPLAY_GROUP = "alpha-streaming.dlq-replay"
PREVIEW_BYTES = 200

dlq_app = typer.Typer(help="Inspect and replay dead-letter topics (`<topic>.dlq`).", no_args_is_help=True)


def format_entry(entry: DlqEntry) -> str:
    """A few aligned lines per record, readable in a terminal."""
    head = f"p{entry.partition}@{entry.offset}  key={entry.key_text!r}"
    value = f"  value:    {_preview(entry.value)}"
    letter = entry.dead_letter
    if letter is None:
        return f"{head}  NOT A DLQ RECORD ({entry.problem})\n{value}"
    message = letter.exception_message.splitlines()[0] if letter.exception_message else ""
    lines = [
        f"{head}  from {letter.original_topic}[{letter.original_partition}]@{letter.original_offset}",
        f"  error:    {letter.exception_fqcn}: {message}",
        f"  attempts: {letter.attempts}  failed-at: {letter.failed_at.isoformat()}  "
        f"service: {letter.service or '-'}  group: {letter.consumer_group or '-'}",
    ]
    if entry.event_type is not None:
        lines.append(f"  type:     {entry.event_type}")
    lines.append(value)
    return "\n".join(lines)


def _preview(value: bytes | None) -> str:
    shown = preview(value, PREVIEW_BYTES)
    return "<null>" if shown is None else shown


async def _inspect(
    config: RedpandaSettings, topic: str, limit: int | None, as_json: bool, progress_every: int
) -> tuple[int, int]:
    records = letters = 0
    async with connected_broker(config) as broker:
        async for entry in inspect_dlq(
            broker,
            topic,
            limit=limit,
            on_progress=progress_printer("dlq inspect"),
            progress_every=progress_every,
        ):
            records += 1
            letters += entry.dead_letter is not None
            if as_json:
                typer.echo(json.dumps(entry.to_json(PREVIEW_BYTES), ensure_ascii=False))
            else:
                typer.echo(format_entry(entry))
    return records, letters


@dlq_app.command("inspect", epilog=EXIT_CODES)
def dlq_inspect(
    topic: Annotated[
        str, typer.Argument(metavar="DLQ_TOPIC", help="The DLQ topic, e.g. paper.orders.filled.dlq.")
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most N records.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line, for scripts.")] = False,
    progress_every: ProgressOption = 1000,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """List DLQ records with their error headers; reads without a consumer group (commits nothing)."""
    config = settings_or_exit(bootstrap_servers)
    records, letters = run(_inspect(config, topic, limit, as_json, progress_every))
    typer.echo(f"{records} records in {topic} ({letters} dead letters, {records - letters} other)", err=True)


# --- dlq replay ------------------------------------------------------------------------------


def format_replay(entry: DlqEntry, action: ReplayAction, detail: str) -> str:
    letter = entry.dead_letter
    error = letter.exception_fqcn.rpartition(".")[2] if letter is not None else "-"
    target = (
        f" -> {detail}" if action in (ReplayAction.REPLAYED, ReplayAction.WOULD_REPLAY) else f"  ({detail})"
    )
    return (
        f"{action.value:<12} p{entry.partition}@{entry.offset}{target}  key={entry.key_text!r}  error={error}"
    )


@dlq_app.command("replay", epilog=EXIT_CODES)
def dlq_replay(
    topic: Annotated[
        str, typer.Argument(metavar="DLQ_TOPIC", help="The DLQ topic, e.g. paper.orders.filled.dlq.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed; commit nothing.")
    ] = False,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="FIELD=VALUE with FIELD in error (class name or FQCN), key, type (x-event-type), "
            "topic (original topic). Same field repeated: any value; different fields: all.",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            help=f"Consumer group that remembers what was replayed (default: {DEFAULT_REPLAY_GROUP})."
        ),
    ] = None,
    progress_every: ProgressOption = 1000,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """Republish DLQ records to their original topics; commit only after the broker acknowledged them.

    Sends the original key, bytes and headers plus x-dlq-replay-count, to the original partition.

    A partition's committed position stops at its first record not replayed (filtered out, or failed).
    """
    if not is_dlq_topic(topic):
        raise fail_usage(
            f"{topic!r} is not a DLQ topic (name ends in .dlq); did you mean {dlq_topic(topic)!r}?"
        )
    config = settings_or_exit(bootstrap_servers)
    try:
        filters = parse_filters(filter_ or ())
    except ConfigError as exc:
        raise fail_usage(str(exc)) from None
    group_id = config.group_id(group or DEFAULT_REPLAY_GROUP)

    def on_record(entry: DlqEntry, action: ReplayAction, detail: str) -> None:
        typer.echo(format_replay(entry, action, detail))

    report = run(_replay(config, topic, group_id, filters, dry_run, on_record, progress_every))
    verb = "would replay" if dry_run else "replayed"
    committed = ", ".join(f"p{p}->{o}" for p, o in sorted(report.committed.items())) or "nothing"
    typer.echo(
        f"{report.read} records read: {verb} {report.replayed}, skipped {report.skipped}, "
        f"failed {report.failed}, invalid {report.invalid}; committed for group {group_id}: {committed}"
    )
    if report.partial:
        raise typer.Exit(EXIT_PARTIAL)


async def _replay(
    config: RedpandaSettings,
    topic: str,
    group_id: str,
    filters: Sequence[RecordFilter],
    dry_run: bool,
    on_record: ReplayCallback,
    progress_every: int,
) -> ReplayReport:
    async with connected_broker(config) as broker:
        return await replay_dlq(
            broker,
            topic,
            group_id=group_id,
            filters=filters,
            dry_run=dry_run,
            on_record=on_record,
            on_progress=progress_printer("dlq replay"),
            progress_every=progress_every,
        )
