"""Two revisions' benchmark figures from paired runs: `python3 -m bench.paired`.

    PYTHONPATH=$PWD/src python3 -m bench.paired OLD NEW SECTION [SECTION ...] [--rounds K]
    PYTHONPATH=$PWD/src python3 -m bench.paired --render

OLD and NEW are git revisions; NEW may be `WORKTREE`, this tree as it is. Every other
revision is checked out with `git worktree add --detach` under /tmp, removed at the end
(also when a run fails). Each round runs every section once per revision, OLD first in
odd rounds and NEW first in even ones, each run a process of its own whose cwd and
PYTHONPATH are that revision's tree: its own code under its own benchmark module. The
figures of all runs go to bench/results/paired-SECTION.json, and a table per section
(medians, every run's value, the change, and whether it is within the noise) is printed.
`--render` puts those tables into BENCHMARKS.md as "Paired with the previous main",
leaving its other sections as they are.

Sections are cut to what a comparison of two commits needs (see CUTS), through knobs
both revisions' benchmark modules already have: `run()`'s sizes and module constants.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import BENCHMARKS, RESULTS, ROOT, machine
from bench.section import Figure

WORKTREE = "WORKTREE"
HEADING = "## Paired with the previous main"
FINDINGS_HEADING = "## What the numbers show"


@dataclass(frozen=True)
class Cut:
    """How a section runs in a paired run: `run(*args)` after setting module constants."""

    args: tuple = ()
    constants: dict[str, object] = field(default_factory=dict)
    what: str = "the whole section"


def cuts(broker_nodes: int) -> dict[str, Cut]:
    return {
        "scheduler": Cut(),
        "status": Cut(),
        "broker": Cut(
            args=((broker_nodes,),),
            what=f"N={broker_nodes} only (`run(({broker_nodes},))`), with its HTTPS floor",
        ),
        "nspawn": Cut(
            constants={"WORKER_COUNTS": (2,)},
            what="bare boots and 1+2 clusters only (`WORKER_COUNTS = (2,)`), no 1+8",
        ),
    }


# Run in the revision's tree: checks that its own corral and bench modules are the ones
# imported (an editable install elsewhere must not win), applies the cut, writes figures;
# with no output file, stops before running (--check).
RUNNER = """\
import dataclasses, importlib, json, os, sys
tree, name, constants, args, out = sys.argv[1:]
def tupled(v):
    return tuple(tupled(x) for x in v) if isinstance(v, list) else v
import corral
module = importlib.import_module(name)
for path in (corral.__file__, module.__file__):
    if not os.path.realpath(path).startswith(tree + os.sep):
        sys.exit(f"{path} is not from {tree}")
for constant, value in json.loads(constants).items():
    if not hasattr(module, constant):
        sys.exit(f"{name} has no {constant} to set")
    setattr(module, constant, tupled(value))
if not out:
    sys.exit()
section = module.run(*tupled(json.loads(args)))
with open(out, "w") as f:
    json.dump(dataclasses.asdict(section), f)
"""


@dataclass
class Side:
    """One of the two revisions compared, and the tree it runs from."""

    key: str  # "old" or "new"
    revision: str  # as given on the command line
    commit: str  # full hash; for WORKTREE the hash of HEAD
    label: str  # for tables: the revision and its short hash
    tree: Path


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def checked_out(revisions: dict[str, str]) -> Iterator[list[Side]]:
    """A tree per revision: this one for WORKTREE, else a detached worktree under /tmp."""
    scratch = Path(tempfile.mkdtemp(prefix="corral-paired-")).resolve()
    added: list[Path] = []
    try:
        sides = []
        for key, revision in revisions.items():
            if revision == WORKTREE:
                commit = git("rev-parse", "HEAD")
                # code only: the results this run writes do not make it dirty
                code = ["src", "bench", ":(exclude)bench/results"]
                dirty = git("status", "--porcelain", "--", *code) != ""
                label = f"{WORKTREE} ({commit[:7]}{'-dirty' if dirty else ''})"
                tree = ROOT.resolve()
            else:
                commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
                label = revision if commit.startswith(revision) else f"{revision} ({commit[:7]})"
                tree = scratch / key
                git("worktree", "add", "--detach", str(tree), commit)
                added.append(tree)
            sides.append(Side(key, revision, commit, label, tree))
        yield sides
    finally:
        for tree in added:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
        shutil.rmtree(scratch, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"])


def run_once(side: Side, module: str, cut: Cut, out: Path | None) -> dict:
    """The section's figures from one run in `side`'s tree, in a process of its own;
    with no `out`, only whether the section imports there and its cut applies."""
    env = {**os.environ, "PYTHONPATH": f"{side.tree / 'src'}{os.pathsep}{side.tree}"}
    argv = [
        sys.executable,
        "-c",
        RUNNER,
        str(side.tree),
        module,
        json.dumps(cut.constants),
        json.dumps(cut.args),
        str(out or ""),
    ]
    child = subprocess.Popen(argv, cwd=side.tree, env=env, stdin=subprocess.DEVNULL)
    try:
        code = child.wait()
    finally:
        if child.poll() is None:  # we were interrupted: the child goes too
            child.terminate()
            child.wait()
    if code:
        raise SystemExit(f"{module} failed in {side.label} (exit {code})")
    return json.loads(out.read_text()) if out else {}


def check(sides: list[Side], names: list[str], cut_of: dict[str, Cut]) -> None:
    for name in names:
        for side in sides:
            run_once(side, BENCHMARKS[name], cut_of[name], None)
            print(f"{name} in {side.label}: imports, cut applies ({cut_of[name].what})")


def paired_runs(sides: list[Side], names: list[str], rounds: int, cut_of: dict[str, Cut]) -> None:
    """Run every section `rounds` times per side, alternating the order; write as it goes."""
    results = {
        name: {
            "section": name,
            "module": BENCHMARKS[name],
            "cut": cut_of[name].what,
            "machine": {k: v for k, v in machine().items() if k != "commit"},
            "rounds": rounds,
            "sides": {
                s.key: {"revision": s.revision, "commit": s.commit, "label": s.label} for s in sides
            },
            "runs": [],
        }
        for name in names
    }
    out = Path(tempfile.mkdtemp(prefix="corral-paired-out-"))
    try:
        for round_ in range(1, rounds + 1):
            order = sides if round_ % 2 else sides[::-1]
            for name in names:
                for position, side in enumerate(order, 1):
                    print(f"round {round_}/{rounds}: {name} in {side.label} ...", file=sys.stderr)
                    load = os.getloadavg()[0]
                    started = time.monotonic()
                    section = run_once(side, BENCHMARKS[name], cut_of[name], out / "section.json")
                    seconds = time.monotonic() - started
                    print(f"  {seconds:.1f} s", file=sys.stderr)
                    results[name]["runs"].append(
                        {
                            "round": round_,
                            "side": side.key,
                            "position": position,
                            "seconds": seconds,
                            "load_average_before": load,
                            "section": section,
                        }
                    )
                    write(results[name])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    for name in names:
        print(f"\n{table(results[name])}\nraw: {result_path(name)}")


def result_path(name: str) -> Path:
    return RESULTS / f"paired-{name}.json"


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_path(result["section"]).write_text(json.dumps(result, indent=2) + "\n")


# -- tables ----------------------------------------------------------------------------


def number(value: float) -> str:
    return Figure("", value, "").shown()


def judged(old: list[float], new: list[float]) -> tuple[str, str]:
    """(change in %, within noise): noise is the larger spread (max - min) of either side."""
    before, after = statistics.median(old), statistics.median(new)
    change = f"{(after - before) / before * 100:+.1f}%" if before else ""
    if len(old) < 2 or len(new) < 2:
        return change, "(one run)"
    spread = max(max(old) - min(old), max(new) - min(new))
    within = after == before or abs(after - before) < spread
    return change, "yes" if within else "**no**"


def table(result: dict) -> str:
    """The section's figures as a markdown table: OLD against NEW, over all rounds."""
    values: dict[str, dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    for run in result["runs"]:
        for raw in run["section"]["figures"]:
            values.setdefault(raw["measure"], {"old": [], "new": []})[run["side"]].append(
                raw["value"]
            )
            units[raw["measure"]] = raw["unit"]
    old, new = (result["sides"][k]["label"] for k in ("old", "new"))
    lines = [
        f"| measure | `{old}` | `{new}` | change | within noise |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for measure, sides in values.items():
        cells = [
            f"{Figure('', statistics.median(v), units[measure]).shown()} "
            f"({', '.join(number(x) for x in v)})"
            if v
            else ""
            for v in (sides["old"], sides["new"])
        ]
        change, within = judged(sides["old"], sides["new"]) if all(sides.values()) else ("", "")
        lines.append(f"| {measure} | {cells[0]} | {cells[1]} | {change} | {within} |")
    return "\n".join(lines)


def render(results_dir: Path = RESULTS) -> list[str]:
    """The "Paired with the previous main" section's lines, empty without paired results."""
    found = [
        json.loads(path.read_text())
        for name in BENCHMARKS
        if (path := results_dir / f"paired-{name}.json").exists()
    ]
    if not found:
        return []
    lines = [
        HEADING,
        "",
        "`python3 -m bench.paired OLD NEW SECTION ... --rounds K`: each section run K times "
        "for each of two commits, each run a process of its own started in that commit's "
        "tree (its own code measured by its own benchmark module), the two alternating "
        "from round to round (old first, then new first, ...) so that both see the same "
        "minutes of the machine. A cell is the median of the runs, every run's value in "
        "brackets; a change is *within noise* when the two medians differ by less than "
        "the larger spread (max - min) of either commit's runs.",
        "",
    ]
    for result in found:
        runs = result["runs"]
        title = runs[0]["section"]["title"] if runs else result["section"]
        m = result["machine"]
        seconds = statistics.median(r["seconds"] for r in runs) if runs else 0
        done = max((r["round"] for r in runs), default=0)
        lines += [
            f"### {title}",
            "",
            f"Measured {m['date']} on {m['cpu']}, {m['memory']}, {m['system']}: "
            f"{done} round(s) of {result['cut']}; a run took {seconds:.0f} s (median).",
            "",
            table(result),
            "",
        ]
    return lines


def write_benchmarks() -> None:
    """Put the paired tables into BENCHMARKS.md, replacing their earlier ones only."""
    path = ROOT / "BENCHMARKS.md"
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line == HEADING), None)
    if start is not None:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
    else:
        start = end = next(
            (i for i, line in enumerate(lines) if line.startswith(FINDINGS_HEADING)), len(lines)
        )
    path.write_text("\n".join([*lines[:start], *render(), *lines[end:]]) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", nargs="?", help="a git revision")
    parser.add_argument("new", nargs="?", help=f"a git revision, or {WORKTREE}")
    parser.add_argument("sections", nargs="*", metavar="section", help=", ".join(BENCHMARKS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--broker-nodes", type=int, default=1000, help="N of the broker section (default 1000)"
    )
    parser.add_argument("--render", action="store_true", help="only write BENCHMARKS.md")
    parser.add_argument(
        "--check", action="store_true", help="import each section in each tree, run nothing"
    )
    args = parser.parse_args()
    if args.render:
        write_benchmarks()
        return
    unknown = [s for s in args.sections if s not in BENCHMARKS]
    if not args.sections or unknown or args.rounds < 1:
        parser.error(f"name one or more sections of {', '.join(BENCHMARKS)}, and rounds >= 1")
    if args.old == WORKTREE:
        parser.error(f"only NEW may be {WORKTREE}")
    # a plain `kill` unwinds like Ctrl-C, so the worktrees are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with checked_out({"old": args.old, "new": args.new}) as sides:
        if args.check:
            check(sides, args.sections, cuts(args.broker_nodes))
        else:
            paired_runs(sides, args.sections, args.rounds, cuts(args.broker_nodes))


if __name__ == "__main__":
    main()
