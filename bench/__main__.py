"""`python -m bench [direct|enhanced|all]`: run benchmark modules and print their tables.

Each benchmark is a module `bench/<name>.py` exposing `async def run(args) -> list[Row]`
(see bench/README.md). A module that does not exist yet is reported and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time

from bench._common import Row, print_table

BENCHMARKS = ("direct", "enhanced")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all", choices=(*BENCHMARKS, "all"))
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run (default 100000)")
    parser.add_argument("--size", type=int, default=200, help="value size in bytes (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per variant (min 3)")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (the table reports medians)")
    return args


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # aiokafka logs each retried produce (e.g. while a fresh topic elects leaders) as a warning;
    # retries are part of what is measured, the log lines are noise in the table.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    names = BENCHMARKS if args.which == "all" else (args.which,)
    print(f"bench: {args.messages:,} messages of {args.size} bytes, {args.runs} interleaved runs")
    print(f"broker: {args.bootstrap}")
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"\n[{name}] bench/{name}.py does not exist yet; skipped")
            continue
        started = time.perf_counter()
        rows: list[Row] = await module.run(args)
        print_table(f"[{name}] ({time.perf_counter() - started:.0f} s)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
