"""The `alpha-streaming` command: topic bootstrap and dead-letter inspection/replay.

The only module that imports the CLI framework. The work itself lives in `_admin` and
`_dlq_tools` as plain async functions, so tests and the demo call it without a shell.
Results go to stdout, progress and errors to stderr; exit codes are listed in `EXIT_CODES`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar

import pydantic
import typer

from alpha_streaming._admin import (
    TopicResult,
    TopicSpec,
    TopicStatus,
    bootstrap_specs,
    broker_admin,
    connected_broker,
    ensure_topics,
    service_topics,
    topic_names,
)
from alpha_streaming._dlq_tools import (
    DlqEntry,
    RecordFilter,
    ReplayAction,
    ReplayCallback,
    ReplayReport,
    inspect_dlq,
    parse_filters,
    preview,
    replay_dlq,
)
from alpha_streaming.errors import AlphaStreamingError, ConfigError
from alpha_streaming.settings import RedpandaSettings
from alpha_streaming.topics import dlq_topic, is_dlq_topic

# `bootstrap_specs`, `service_topics` and `topic_names` live in `_admin` (no typer needed to use
# them); they stay importable from here, where the examples first found them.
__all__ = ("EXIT_CODES", "app", "bootstrap_specs", "main", "service_topics", "topic_names")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_CODES = (
    "Exit codes: 0 success; 1 error (printed as `ErrorClass: message`); 2 usage error; "
    "3 partial (some records could not be replayed, or some topics could not be created)."
)
DEFAULT_REPLAY_GROUP = "alpha-streaming.dlq-replay"
PREVIEW_BYTES = 200

T = TypeVar("T")

app = typer.Typer(
    name="alpha-streaming",
    help=f"Operate alpha-streaming topics and dead-letter queues.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
topics_app = typer.Typer(help="Create and check topics.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and replay dead-letter topics (`<topic>.dlq`).", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")

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


def run(work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; an `AlphaStreamingError` becomes `Class: message` on stderr and exit code 1."""
    try:
        return asyncio.run(work)
    except AlphaStreamingError as exc:
        typer.echo(f"{type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def fail_usage(message: str) -> typer.Exit:
    typer.echo(f"Usage error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def progress_printer(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        typer.echo(f"{label}: {done}/{total} records", err=True)

    return report


# --- topics bootstrap ------------------------------------------------------------------------


def format_topic_result(result: TopicResult) -> str:
    partitions = "-" if result.partitions is None else str(result.partitions)
    line = f"{result.status.value:<8} {result.name}  partitions={partitions}"
    if result.status is TopicStatus.MISMATCH:
        return f"{line}  WARNING: {result.detail}"
    if result.status is TopicStatus.FAILED:
        return f"{line}  ERROR: {result.detail}"
    return line


async def _bootstrap(config: RedpandaSettings, specs: list[TopicSpec]) -> list[TopicResult]:
    async with connected_broker(config) as broker:
        return await ensure_topics(broker_admin(broker), specs)


@topics_app.command("bootstrap", epilog=EXIT_CODES)
def topics_bootstrap(
    broker: Annotated[
        list[str] | None,
        typer.Option(
            "--broker", help="Broker namespace (repeatable): its TopicMap topics plus market.ticks."
        ),
    ] = None,
    topic: Annotated[list[str] | None, typer.Option("--topic", help="A topic name (repeatable).")] = None,
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="module:attribute of an object with a `topics` list (repeatable)."),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of each new topic.")] = 3,
    replication_factor: Annotated[int, typer.Option(min=1, help="Replication factor of each new topic.")] = 1,
    retention_ms: Annotated[
        int | None,
        typer.Option(min=-1, help="retention.ms of new topics (-1 = forever); broker default if unset."),
    ] = None,
    dlq_retention_ms: Annotated[
        int | None, typer.Option(min=-1, help="retention.ms of new .dlq twins; --retention-ms if unset.")
    ] = None,
    dlq: Annotated[bool, typer.Option("--dlq/--no-dlq", help="Also create each topic's .dlq twin.")] = True,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """Create topics (and their .dlq twins); existing topics are reported, never changed."""
    if not (broker or topic or service):
        raise fail_usage("name what to create: --broker NAME, --topic NAME or --service module:attribute")
    try:
        specs = bootstrap_specs(
            topic_names(broker or (), topic or (), service or ()),
            partitions=partitions,
            replication_factor=replication_factor,
            retention_ms=retention_ms,
            dlq_retention_ms=dlq_retention_ms,
            with_dlq=dlq,
        )
        config = settings_for(bootstrap_servers)
    except AlphaStreamingError as exc:
        typer.echo(f"{type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    results = run(_bootstrap(config, specs))
    for result in results:
        typer.echo(format_topic_result(result))
    counts = {status: sum(r.status is status for r in results) for status in TopicStatus}
    created, existed = counts[TopicStatus.CREATED], counts[TopicStatus.EXISTS]
    mismatched, failed = counts[TopicStatus.MISMATCH], counts[TopicStatus.FAILED]
    typer.echo(
        f"{len(results)} topics: {created} created, {existed} existed, "
        f"{mismatched} with other partition counts, {failed} failed"
    )
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


# --- dlq inspect -----------------------------------------------------------------------------


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
    config = _settings_or_exit(bootstrap_servers)
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
    config = _settings_or_exit(bootstrap_servers)
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


def _settings_or_exit(bootstrap_servers: str | None) -> RedpandaSettings:
    try:
        return settings_for(bootstrap_servers)
    except ConfigError as exc:
        typer.echo(f"{type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def main() -> None:
    """Console-script entry point (`alpha-streaming = "alpha_streaming.cli:main"`)."""
    app()
