"""`python -m bench [direct|enhanced|consume_produce|latency|dedup|rss|all|report]`: run benchmarks.

Each benchmark is a module `bench/<name>.py` exposing `async def run(args)` that returns rate
rows (`list[Row]`) or finished tables (`list[Table]`); see bench/README.md. A module that does
not exist yet is reported and skipped. `report` runs all of them once and writes report.md,
report.json and report.png (bench/_report.py); a module listed in `SECTION_OF` puts its tables
into another module's report section.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import Row, Table, rate_table

BENCHMARKS = ("direct", "enhanced", "consume_produce", "concurrency", "latency", "dedup", "rss")
# Report sections are per module except these: consume -> produce is another enhanced-vs-plain
# comparison, and so is concurrency: their tables go into the `enhanced` section.
SECTION_OF = {"consume_produce": "enhanced", "concurrency": "enhanced"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# `--quick` (a smoke run, about a minute): messages per run for the modules sized by --messages;
# latency and rss shorten themselves when `args.quick` is set.
QUICK_MESSAGES = {
    "direct": 5_000,
    "enhanced": 200,
    "consume_produce": 200,
    "concurrency": 300,
    "dedup": 2_000,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all", choices=(*BENCHMARKS, "all", "report"))
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run (default 100000)")
    parser.add_argument("--size", type=int, default=200, help="value size in bytes (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per variant (min 3)")
    parser.add_argument("--quick", action="store_true", help="small runs (a smoke test, numbers are rough)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"report directory (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (the table reports medians)")
    if args.quick:
        args.runs = 3
    return args


def module_args(name: str, args: argparse.Namespace) -> argparse.Namespace:
    """`args` for one module: `--quick` shrinks the message count of the modules sized by it."""
    if not args.quick or name not in QUICK_MESSAGES:
        return args
    shrunk = copy.copy(args)
    shrunk.messages = min(args.messages, QUICK_MESSAGES[name])
    return shrunk


def as_tables(name: str, result: list[Any], seconds: float, runs: int) -> list[Table]:
    """A module's result as tables: rate rows become one rate table."""
    if result and all(isinstance(item, Row) for item in result):
        return [rate_table(f"[{name}] msg/s, medians of {runs} interleaved runs ({seconds:.0f} s)", result)]
    return list(result)


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # aiokafka logs each retried produce (e.g. while a fresh topic elects leaders) as a warning;
    # retries are part of what is measured, the log lines are noise in the table.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    names = BENCHMARKS if args.which in ("all", "report") else (args.which,)
    head: dict[str, Any] = {}
    if args.which == "report":
        from bench import _report

        head = await _report.header(argv, args.redis_url)
    print(f"bench: {args.messages:,} messages of {args.size} bytes, {args.runs} interleaved runs")
    print(f"broker: {args.bootstrap}")
    sections: dict[str, list[Table]] = {}
    seconds: dict[str, float] = {}
    loads: dict[str, float] = {}
    modules: dict[str, list[str]] = {}
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"\n[{name}] bench/{name}.py does not exist yet; skipped")
            continue
        started = time.perf_counter()
        result = await module.run(module_args(name, args))
        took = time.perf_counter() - started
        section = SECTION_OF.get(name, name)
        seconds[section] = seconds.get(section, 0.0) + took
        loads[section] = round(os.getloadavg()[0], 2)
        modules.setdefault(section, []).append(name)
        tables = as_tables(name, result, took, args.runs)
        sections.setdefault(section, []).extend(tables)
        for table in tables:
            table.print()
    if args.which == "report":
        from bench import _report

        head["load_1m_after_section"] = loads
        _report.write(args.out, head, sections, seconds, modules)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
