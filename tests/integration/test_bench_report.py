"""`python -m bench report --quick` against the real Kafka and Redis writes a complete report.

It asserts the report's shape (sections, numeric cells, header lines, JSON keys, a real PNG),
never the figures: performance goes to bench/, not to tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from bench._scorecard import TARGETS
from tests.conftest import Endpoints

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "direct": "## direct tier vs raw aiokafka",
    "enhanced": "## enhanced stack vs plain FastStream subscriber (single and batch)",
    "latency": "## end-to-end latency produce -> handler at 1k/s and 5k/s",
    "dedup": "## dedup cost per message, Redis calls per message and Redis memory per event",
    "rss": "## RSS of a service with 4 subscribers",
}
HEADER_LINES = (
    "- date: ",
    "- command: `python -m bench report --quick",
    "- machine: ",
    "- load average ",
    "- versions: ",
)
VERSIONS = ("python", "faststream", "aiokafka", "redis-py", "pydantic", "kafka broker", "redis server")
NUMBER = re.compile(r"^[+-]?[\d,]+(\.\d+)?$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(section: str) -> list[list[str]]:
    """The body cells of every Markdown table in `section` (each table's header and rule dropped)."""
    rows: list[list[str]] = []
    block: list[str] = []
    for line in [*section.splitlines(), ""]:
        if line.startswith("| "):
            block.append(line)
            continue
        rows += [[cell.strip() for cell in row.strip("|").split(" | ")] for row in block[2:]]
        block = []
    return rows


def sections_of(report: str) -> dict[str, str]:
    """`## heading` -> the text up to the next heading of that level."""
    parts = report.split("\n## ")[1:]
    return {f"## {part.splitlines()[0]}": part for part in parts}


def test_quick_report_writes_every_section_with_numbers_a_json_and_a_png(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka, "REDIS_URL": endpoints.redis}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "report", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"bench report failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    report = (tmp_path / "report.md").read_text()
    for line in HEADER_LINES:
        assert f"\n{line}" in report, f"header line {line!r} missing"
    for name in VERSIONS:
        assert re.search(rf"{re.escape(name)} \d", report), f"version of {name} missing"
    sections = sections_of(report)
    for name, heading in SECTIONS.items():
        assert heading in sections, f"section {name} missing"
        rows = table_rows(sections[heading])
        assert rows, f"section {name} has no table rows"
        for row in rows:
            assert any(NUMBER.match(cell) for cell in row[1:]), f"{name}: no numeric cell in {row}"

    # The issue 12 scorecard comes first: every target found in this run, met or missed.
    card = report.split("### issue 12 targets, this run", 1)[1].split("\n## ", 1)[0]
    verdicts = [row[3] for row in table_rows(card)]  # figure, target, measured, verdict, bound
    assert len(verdicts) == len(TARGETS)
    assert set(verdicts) <= {"met", "MISSED"}, f"a target's row was not found in its section: {verdicts}"

    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data) >= {"header", "sections", "seconds"}
    assert set(data["header"]["versions"]) == set(VERSIONS)
    assert set(data["sections"]) == set(SECTIONS)
    for name, tables in data["sections"].items():
        assert tables and all(table["rows"] for table in tables), f"{name}: empty table in report.json"

    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 20_000, f"report.png is only {len(png)} bytes"
