"""`alpha-streaming topics bootstrap`: create topics and their `.dlq` twins, idempotently."""

from __future__ import annotations

from typing import Annotated

import typer

from alpha_streaming._admin import (
    TopicResult,
    TopicSpec,
    TopicStatus,
    broker_admin,
    connected_broker,
    ensure_topics,
)
from alpha_streaming._errors import AlphaStreamingError
from alpha_streaming._settings import RedpandaSettings
from alpha_streaming._tools.topic_selection import bootstrap_specs, topic_names
from alpha_streaming.cli.common import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_PARTIAL,
    BootstrapOption,
    fail,
    fail_usage,
    run,
    settings_for,
)

__all__ = ("format_topic_result", "topics_app", "topics_bootstrap")

topics_app = typer.Typer(help="Create and check topics.", no_args_is_help=True)


def format_topic_result(result: TopicResult) -> str:
    partitions = "-" if result.partitions is None else str(result.partitions)
    line = f"{result.status.value:<8} {result.name}  partitions={partitions}"
    if result.replication_factor is not None:
        line += f"  replication_factor={result.replication_factor}"
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
    replication_factor: Annotated[
        int | None,
        typer.Option(
            min=1, help="Replication factor of new topics; the cluster's default.replication.factor if unset."
        ),
    ] = None,
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
        raise fail(exc) from None
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
        raise typer.Exit(EXIT_ERROR if failed == len(results) else EXIT_PARTIAL)
