"""`python -m bench report`: every benchmark once, written to report.md, report.json and report.png.

The header records what the figures depend on (machine, load, versions), so two reports can be
compared; every figure below it is a ratio against a baseline measured in the same run, or a
latency distribution.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from bench._common import Table
from bench._scorecard import scorecard

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "direct": "direct tier vs raw aiokafka",
    "enhanced": "enhanced stack vs plain FastStream subscriber (single and batch)",
    "latency": "end-to-end latency produce -> handler at 1k/s and 5k/s",
    "dedup": "dedup cost per message, Redis calls per message and Redis memory per event",
    "rss": "RSS of a service with 4 subscribers",
}
# The throughput targets, as ratios to the side-by-side baseline.
TARGETS = {"direct": 0.8, "single": 0.8, "batch": 0.8}  # issue 12


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown"


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    found = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', text, re.MULTILINE)
    return found.group(1) if found else platform.system()


def _kafka_version() -> str:
    try:
        pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    return found.group(1) if found else "unknown"


def _git_commit() -> str:
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


async def _redis_version(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
        return str(info.get("redis_version", "unknown"))
    finally:
        await client.aclose()


async def header(argv: list[str], redis_url: str) -> dict[str, Any]:
    """Date, command, machine and versions: what every figure of the report depends on."""
    load = os.getloadavg()
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "git": _git_commit(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": f"{_os_name()}, kernel {platform.release()}",
        "load_at_start": [round(x, 2) for x in load],
        "versions": {
            "python": platform.python_version(),
            "faststream": version("faststream"),
            "aiokafka": version("aiokafka"),
            "redis-py": version("redis"),
            "pydantic": version("pydantic"),
            "kafka broker": _kafka_version(),
            "redis server": await _redis_version(redis_url),
        },
    }


def markdown(
    head: dict[str, Any],
    sections: dict[str, list[Table]],
    seconds: dict[str, float],
    modules: dict[str, list[str]] | None = None,
) -> str:
    load = ", ".join(f"{x:.2f}" for x in head["load_at_start"])
    load_end = ", ".join(f"{x:.2f}" for x in head.get("load_at_end", []))
    versions = ", ".join(f"{name} {value}" for name, value in head["versions"].items())
    lines = [
        "# alpha-streaming benchmark report",
        "",
        f"- date: {head['date_utc']} (took {sum(seconds.values()):.0f} s; git {head['git']})",
        f"- command: `{head['command']}`",
        f"- machine: {head['cpu']}, {head['cores']} cores, {head['ram_gib']} GiB RAM, {head['os']}",
        f"- load average (1, 5, 15 min): {load} at start; {load_end} at end; 1 min after each section: "
        + ", ".join(f"{name} {value:.2f}" for name, value in head.get("load_1m_after_section", {}).items()),
        f"- versions: {versions}",
        "",
        "Every figure is a ratio against a baseline measured side by side in this run (variants "
        "interleaved), or a distribution. Targets (issue 12): direct tier >= 0.8x raw aiokafka; "
        "enhanced >= 0.8x plain (single and batch); consume -> produce >= 0.5x plain; concurrency=64 "
        ">= 3,000 msg/s; latency p99 <= 10 ms at 1k msg/s. bench/README.md describes each method.",
        "",
        scorecard(sections).markdown(),
    ]
    for name, tables in sections.items():
        sources = " + ".join(f"`bench/{module}.py`" for module in (modules or {}).get(name, [name]))
        lines += [f"## {SECTIONS.get(name, name)}", "", f"{sources}, {seconds[name]:.0f} s.", ""]
        lines += [table.markdown() for table in tables]
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """JSON has no NaN: missing figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def as_json(head: dict[str, Any], sections: dict[str, list[Table]], seconds: dict[str, float]) -> str:
    body = {
        "header": head,
        "seconds": seconds,
        "sections": {name: [t.as_json() for t in tables] for name, tables in sections.items()},
    }
    return json.dumps(_finite(body), indent=2, ensure_ascii=False)


RATIO_AXIS_MAX = 2.5


def _target(section: str, row: dict[str, Any]) -> float | None:
    if section == "direct":
        return TARGETS["direct"]
    if section == "enhanced" and str(row["variant"]).startswith("enhanced"):
        mode = str(row["case"]).split(" ", 1)[0]
        return TARGETS.get(mode) if mode in ("single", "batch") else None  # consume -> produce: none
    return None


def chart(sections: dict[str, list[Table]], path: Path) -> None:
    """Throughput ratios with their targets (left), latency p50/p99 per rate and variant (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float, float | None]] = []
    # The dedup section's first table is the stack comparison (its second, Redis alone, is a
    # batching speed-up of ~20-50x that would squash every other bar).
    tables = [("direct", t) for t in sections.get("direct", [])]
    tables += [("enhanced", t) for t in sections.get("enhanced", [])]
    tables += [("dedup", t) for t in sections.get("dedup", [])[:1]]
    for section, table in tables:
        for row in table.rows:
            if "ratio" in row and not row.get("baseline") and row.get("ratio") is not None:
                label = f"{section}: {row['case']}\n{row['variant']}"
                bars.append((label, row["ratio"], _target(section, row)))
    latency = [row for table in sections.get("latency", []) for row in table.rows]

    figure, (left, right) = plt.subplots(1, 2, figsize=(15, max(5.0, 0.55 * len(bars) + 1.5)))
    positions = range(len(bars))
    left.barh(list(positions), [min(b[1], RATIO_AXIS_MAX) for b in bars], color="#4c72b0")
    for y, (_, ratio, target) in enumerate(bars):
        left.text(min(ratio, RATIO_AXIS_MAX), y, f" {ratio:.2f}", va="center", fontsize=8)
        if target is not None:
            left.plot([target, target], [y - 0.4, y + 0.4], color="#c44e52", linewidth=2)
    left.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    left.set_xlim(0, RATIO_AXIS_MAX + 0.3)
    left.set_yticks(list(positions), [b[0] for b in bars], fontsize=7)
    left.invert_yaxis()
    left.set_xlabel(
        f"throughput ratio to the side-by-side baseline (red: target; axis cut at {RATIO_AXIS_MAX})"
    )
    left.set_title("throughput ratios")

    labels = [
        f"{row['rate'] // 1000}k/s {row['variant']}"
        + ("" if row.get("kept_up") == "yes" else "\n(did not keep up)")
        for row in latency
    ]
    for offset, key, colour in ((-0.2, "p50_ms", "#55a868"), (0.2, "p99_ms", "#dd8452")):
        values = [row[key] if row[key] is not None and math.isfinite(row[key]) else 0.0 for row in latency]
        right.barh([y + offset for y in range(len(latency))], values, height=0.4, color=colour, label=key[:3])
    right.set_yticks(list(range(len(latency))), labels, fontsize=7)
    right.invert_yaxis()
    right.set_xscale("symlog", linthresh=1.0)
    right.set_xlabel("produce -> handler latency, ms (symlog)")
    right.set_title("latency at a fixed rate (open loop)")
    right.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(
    out: Path,
    head: dict[str, Any],
    sections: dict[str, list[Table]],
    seconds: dict[str, float],
    modules: dict[str, list[str]] | None = None,
) -> None:
    """Write report.md, report.json and report.png into `out` (`modules`: section -> its modules)."""
    head["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(head, sections, seconds, modules))
    (out / "report.json").write_text(as_json(head, sections, seconds) + "\n")
    chart(sections, out / "report.png")
    print(f"\nreport written to {out}/report.md, report.json, report.png", file=sys.stderr)
