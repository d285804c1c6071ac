"""The `alpha-streaming` CLI without a broker: parsing, exit codes, output formats, pure helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alpha_streaming import cli
from alpha_streaming._dlq import DeadLetter, DlqHeaders
from alpha_streaming._errors import ConfigError
from alpha_streaming._tools.dlq_filters import matches_all, parse_filters
from alpha_streaming._tools.dlq_reader import DlqEntry, preview
from alpha_streaming._tools.dlq_replay import replay_headers
from alpha_streaming._tools.topic_selection import bootstrap_specs, service_topics, topic_names
from alpha_streaming._topics import TopicMap
from alpha_streaming.cli.dlq_commands import format_entry

runner = CliRunner()
CLOSED_PORT = "127.0.0.1:1"  # nothing listens on port 1: a connection error, fast


def dead_letter(*, fqcn: str = "orders.errors.PriceError", topic: str = "paper.orders.filled") -> DeadLetter:
    return DeadLetter(
        original_topic=topic,
        original_partition=2,
        original_offset=41,
        original_timestamp_ms=1_700_000_000_000,
        consumer_group="risk.signals",
        exception_fqcn=fqcn,
        exception_message="price must be positive\nsecond line of detail",
        stacktrace="Traceback ...",
        attempts=3,
        service="risk-manager",
        failed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def entry(
    *,
    letter: DeadLetter | None = None,
    key: bytes | None = b"strat:42",
    headers: list[tuple[str, bytes]] | None = None,
    value: bytes | None = b'{"px": "1.5"}',
) -> DlqEntry:
    original = headers if headers is not None else [("x-event-type", b"order.filled")]
    all_headers = original + (letter.headers() if letter else [])
    return DlqEntry(
        topic="paper.orders.filled.dlq",
        partition=1,
        offset=7,
        timestamp_ms=1,
        key=key,
        value=value,
        headers=tuple(all_headers),
        dead_letter=letter,
        problem=None if letter else "not a dead-letter record: missing header",
    )


# --- help and exit codes ---------------------------------------------------------------------


def test_help_documents_the_exit_codes() -> None:
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in ("topics", "dlq"):
        assert command in result.output
    assert "3 partial" in result.output


@pytest.mark.parametrize("command", [["topics", "bootstrap"], ["dlq", "inspect"], ["dlq", "replay"]])
def test_each_command_help_lists_exit_codes(command: list[str]) -> None:
    result = runner.invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Exit codes" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], ""),
        (["topics", "bootstrap"], "name what to create"),
        (["dlq", "replay", "paper.orders.filled"], "did you mean 'paper.orders.filled.dlq'"),
        (["dlq", "replay", "x.dlq", "--filter", "colour=red"], "bad filter 'colour=red'"),
        (["dlq", "replay", "x.dlq", "--filter", "error"], "bad filter 'error'"),
        (["dlq", "inspect", "x.dlq", "--limit", "0"], ""),
        (["dlq", "inspect"], ""),
        (["dlq", "inspect", "x.dlq", "--no-such-option"], ""),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == cli.EXIT_USAGE, result.output
    assert message in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "inspect", "x.dlq", "--bootstrap-servers", "no-port"],
        ["dlq", "replay", "x.dlq", "-b", "no-port"],
        ["topics", "bootstrap", "--topic", "t", "-b", "no-port"],
    ],
)
def test_bad_settings_exit_1_with_class_and_message(args: list[str]) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == cli.EXIT_ERROR
    assert result.stderr.startswith("ConfigError: ")
    assert "bootstrap_servers must be host:port" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_invalid_broker_namespace_is_a_config_error() -> None:
    result = runner.invoke(cli.app, ["topics", "bootstrap", "--broker", "market"])
    assert result.exit_code == cli.EXIT_ERROR
    assert result.stderr.startswith("ConfigError: 'market' is the shared namespace")


def test_unreachable_broker_exits_1_from_the_console_script() -> None:
    script = Path(sys.executable).parent / "alpha-streaming"
    result = subprocess.run(
        [str(script), "dlq", "inspect", "x.dlq", "--bootstrap-servers", CLOSED_PORT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == cli.EXIT_ERROR
    assert f"KafkaClientError: cannot connect to Kafka at {CLOSED_PORT}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Unclosed AIOKafkaProducer" not in result.stderr
    assert result.stdout == ""


# --- topics bootstrap: which topics, which specs -----------------------------------------------


def test_topic_names_from_brokers_topics_and_services_in_order_without_repeats(tmp_path: Path) -> None:
    module = tmp_path / "svc_mod_for_cli.py"
    module.write_text(
        textwrap.dedent(
            """
            class Service:
                topics = ["paper.signals.raw", "svc.extra"]

            service = Service()
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        names = topic_names(["paper", "zerodha"], ["own.topic"], ["svc_mod_for_cli:service"])
    finally:
        sys.path.remove(str(tmp_path))
    expected = [*TopicMap("paper").all(), *TopicMap("zerodha").all()[1:], "own.topic", "svc.extra"]
    assert names == expected
    assert names.count("market.ticks") == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must be module:attribute"),
        ("no_such_module_xyz:svc", "cannot import 'no_such_module_xyz'"),
        ("json:nothing_here", "has no attribute 'nothing_here'"),
        ("json:dumps", "no `topics` attribute"),
    ],
)
def test_service_spec_errors_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        service_topics(spec)


def test_service_with_bad_spec_exits_1() -> None:
    result = runner.invoke(cli.app, ["topics", "bootstrap", "--service", "json:dumps"])
    assert result.exit_code == cli.EXIT_ERROR
    assert result.stderr.startswith("ConfigError: --service json:dumps")


def test_every_topic_gets_a_dlq_twin_with_the_same_partitions() -> None:
    specs = bootstrap_specs(
        ["a.b.c", "x.y.dlq"],
        partitions=4,
        replication_factor=1,
        retention_ms=60_000,
        dlq_retention_ms=None,
        with_dlq=True,
    )
    assert [(s.name, s.partitions, dict(s.config)) for s in specs] == [
        ("a.b.c", 4, {"retention.ms": "60000"}),
        ("a.b.c.dlq", 4, {"retention.ms": "60000"}),
        ("x.y.dlq", 4, {"retention.ms": "60000"}),  # already a DLQ topic: no .dlq.dlq
    ]


def test_dlq_retention_and_no_dlq_options() -> None:
    specs = bootstrap_specs(
        ["a.b.c"], partitions=1, replication_factor=1, retention_ms=None, dlq_retention_ms=-1, with_dlq=True
    )
    assert [(s.name, dict(s.config)) for s in specs] == [("a.b.c", {}), ("a.b.c.dlq", {"retention.ms": "-1"})]
    only = bootstrap_specs(
        ["a.b.c"],
        partitions=1,
        replication_factor=1,
        retention_ms=None,
        dlq_retention_ms=None,
        with_dlq=False,
    )
    assert [s.name for s in only] == ["a.b.c"]


def test_partitions_below_one_is_a_usage_error() -> None:
    result = runner.invoke(cli.app, ["topics", "bootstrap", "--topic", "t", "--partitions", "0"])
    assert result.exit_code == cli.EXIT_USAGE


# --- dlq helpers ----------------------------------------------------------------------------


def test_filters_same_field_any_value_different_fields_all() -> None:
    price = entry(letter=dead_letter(fqcn="orders.errors.PriceError"))
    other = entry(letter=dead_letter(fqcn="builtins.KeyError"), key=b"strat:7")
    either_error = parse_filters(["error=PriceError", "error=builtins.KeyError"])
    assert matches_all(either_error, price) and matches_all(either_error, other)
    both = parse_filters(["error=KeyError", "key=strat:42"])
    assert not matches_all(both, price)  # right key, wrong error
    assert not matches_all(both, other)  # right error, wrong key
    assert matches_all(parse_filters(["type=order.filled", "topic=paper.orders.filled"]), price)
    assert not matches_all(parse_filters(["topic=zerodha.orders.filled"]), price)
    assert matches_all(parse_filters(["error=orders.errors.PriceError"]), price)  # FQCN
    assert not matches_all(parse_filters(["error=Error"]), price)  # no substring matching


def test_a_record_that_is_not_a_dead_letter_matches_no_filter() -> None:
    assert not matches_all(parse_filters(["key=strat:42"]), entry(letter=None))


def test_replay_headers_keep_originals_in_order_and_count_replays() -> None:
    original = [("x-event-id", b"e1"), ("traceparent", b"00-abc"), ("x-event-type", b"order.filled")]
    first = entry(letter=dead_letter(), headers=original)
    once = replay_headers(first)
    assert once == [*original, (DlqHeaders.REPLAY_COUNT, b"1")]
    # Replayed, failed again, dead-lettered again: the count goes on from the original headers.
    again = entry(letter=dead_letter(), headers=once)
    assert replay_headers(again) == [*original, (DlqHeaders.REPLAY_COUNT, b"2")]


def test_preview_escapes_and_truncates() -> None:
    assert preview(b"ok\x00\xff\n") == "ok\\x00\\xff\\n"
    assert preview(b"a" * 300, 200) == "a" * 200 + "..."
    assert preview(None) is None


def test_human_format_shows_the_error_headers() -> None:
    text = format_entry(entry(letter=dead_letter()))
    assert "p1@7  key='strat:42'  from paper.orders.filled[2]@41" in text
    assert "error:    orders.errors.PriceError: price must be positive" in text
    assert "second line" not in text  # first line of the message only
    assert (
        "attempts: 3  failed-at: 2026-01-02T03:04:05+00:00  service: risk-manager  group: risk.signals"
        in text
    )
    assert 'value:    {"px": "1.5"}' in text


def test_human_format_of_a_record_that_is_not_a_dead_letter() -> None:
    text = format_entry(entry(letter=None, key=None, value=b"\xff junk"))
    assert "p1@7  key=None  NOT A DLQ RECORD (not a dead-letter record: missing header)" in text
    assert "value:    \\xff junk" in text


def test_json_view_has_every_field_scripts_need() -> None:
    view = entry(letter=dead_letter()).to_json()
    assert json.loads(json.dumps(view)) == {
        "partition": 1,
        "offset": 7,
        "key": "strat:42",
        "event_type": "order.filled",
        "is_dead_letter": True,
        "value_preview": '{"px": "1.5"}',
        "value_bytes": 13,
        "original_topic": "paper.orders.filled",
        "original_partition": 2,
        "original_offset": 41,
        "consumer_group": "risk.signals",
        "error": "orders.errors.PriceError",
        "message": "price must be positive\nsecond line of detail",
        "attempts": 3,
        "failed_at": "2026-01-02T03:04:05+00:00",
        "service": "risk-manager",
    }
    other = entry(letter=None).to_json()
    assert other["is_dead_letter"] is False
    assert other["problem"] == "not a dead-letter record: missing header"
