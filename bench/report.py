"""Run every benchmark and rewrite BENCHMARKS.md: `python3 -m bench.report [NAME ...]`.

With names (scheduler, status, broker, nspawn), only those run; the other sections are
kept from bench/results/, where every run leaves its raw figures as JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.section import Figure, Section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = {
    "broker": "bench.broker_swarm",
    "scheduler": "bench.scheduler",
    "status": "bench.status",
    "nspawn": "bench.nspawn_launch",
}


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{memory_kib / 1024 / 1024:.0f} GiB",
        "system": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run_one(name: str) -> dict:
    module = importlib.import_module(BENCHMARKS[name])
    print(f"running {name} ...", file=sys.stderr, flush=True)
    section: Section = module.run()
    result = {"machine": machine(), **asdict(section)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def render(results: dict[str, dict]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Regenerate with `python3 -m bench.report` (as root, for the nspawn section), or",
        "`python3 -m bench.report NAME` for one section. Targets are the project's; a figure",
        "without a target is reported for understanding. Each section names the machine,",
        "commit and date it was measured on.",
        "",
    ]
    for name in BENCHMARKS:
        result = results.get(name)
        if result is None:
            lines += [f"## {name}", "", "Not measured yet.", ""]
            continue
        m = result["machine"]
        lines += [
            f"## {result['title']}",
            "",
            f"Measured {m['date']} at `{m['commit']}` on {m['cpu']}, {m['memory']}, {m['system']}.",
            "",
            result["method"],
            "",
            "| measure | value | target | met |",
            "| --- | ---: | --- | --- |",
        ]
        for raw in result["figures"]:
            figure = Figure(**raw)
            met = {True: "yes", False: "**no**", None: ""}[figure.met]
            lines.append(f"| {figure.measure} | {figure.shown()} | {figure.target} | {met} |")
        lines.append("")
        lines += [f"- {note}" for note in result["notes"]]
        if result["notes"]:
            lines.append("")
    return "\n".join(lines)


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    for name in names or list(BENCHMARKS):
        results[name] = run_one(name)
    (ROOT / "BENCHMARKS.md").write_text(render(results))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
