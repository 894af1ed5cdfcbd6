"""Human output: tables, times, and the live progress line of a launch."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import click
from pydantic import TypeAdapter

from corral.cli.client import JSON
from corral.logs import escape_controls
from corral.service.schemas import (
    ClusterDetail,
    ClusterSummary,
    EventView,
    LaunchedCluster,
    NodeView,
)
from corral.units import describe_size_mib, format_duration

_MOMENT = TypeAdapter(datetime)
# an ANSI control sequence (CSI), as a serial console colours its lines: `\x1b[0;32m`
_ANSI_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_LINE = re.compile(r"([^\n\t]*)([\n\t]?)")


def emit_json(value: JSON, **added: JSON) -> None:
    """Print `value` as stable JSON; `added` fields join the object the service sent."""
    if added:
        if not isinstance(value, dict):
            raise TypeError(f"cannot add fields to {type(value).__name__}")
        value = {**value, **added}
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def readable_console(text: str) -> str:
    """A console's text to print: its colours (ANSI CSI sequences) dropped, line ends as
    newlines, and every other control character escaped, so it cannot move the cursor or
    rewrite lines of the terminal that shows it."""
    text = _ANSI_CSI.sub("", text).replace("\r\n", "\n")
    return "".join(escape_controls(part) + end for part, end in _LINE.findall(text))


def when(moment: datetime) -> str:
    """A time as the API writes it in JSON (ISO 8601, `Z` for UTC), so both outputs agree."""
    return _MOMENT.dump_python(moment, mode="json")


def table(headers: list[str], rows: list[list[object]]) -> str:
    """Rows under headers, in columns; text from outside cannot break out of its cell."""
    cells = [[escape_controls(str(c)) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def left(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds)) if seconds > 0 else "expired"


def ago(then: datetime) -> str:
    return format_duration(datetime.now(UTC) - then) + " ago"


def money(amount: float, per_hour: bool = False) -> str:
    """An amount in the pool's prices: cents, or a hundredth of a cent for an hourly rate
    (a small node costs fractions of a cent an hour)."""
    return f"${amount:.4f}/h" if per_hour else f"${amount:.2f}"


def launch_notes(cluster: LaunchedCluster) -> list[str]:
    """What `run` says of a launch before it waits: where the cluster went when pools were
    passed over, and what it is estimated to cost."""
    notes = []
    placement = cluster.placement
    if placement is not None and placement.skipped:
        reasons = "; ".join(s.reason for s in placement.skipped)
        notes.append(f"cluster {cluster.name} goes to pool {placement.pool}: {reasons}")
    if cluster.estimated_cost is not None:
        lease = format_duration(cluster.lease_end - cluster.lease_start)
        notes.append(
            f"estimated cost: {money(cluster.estimated_cost.per_hour, per_hour=True)}, "
            f"{money(cluster.estimated_cost.lease)} for the {lease} lease"
        )
    return [escape_controls(note) for note in notes]


def cluster_table(clusters: list[ClusterSummary]) -> str:
    rows = [
        [
            c.id,
            c.name,
            c.owner,
            c.state,
            c.pool,
            f"{c.ready_count}/{c.node_count}",
            left(c.lease_left_seconds) if c.state != "terminated" else "-",
            money(c.cost_so_far) if c.cost_so_far is not None else None,
        ]
        for c in clusters
    ]
    headers = ["id", "name", "owner", "state", "pool", "ready", "lease left", "cost"]
    return table(headers, rows)


def cluster_status(cluster: ClusterDetail) -> str:
    head = [
        f"cluster {cluster.name} ({cluster.id}): {cluster.state}",
        f"  owner {cluster.owner}, policy {cluster.policy}, pool {cluster.pool}, "
        f"subnet {cluster.subnet or '-'}",
        f"  lease ends {when(cluster.lease_end)} ({left(cluster.lease_left_seconds)} left)",
    ]
    if cluster.cost_so_far is not None:
        now = money(cluster.hourly_cost or 0.0, per_hour=True)
        head.append(f"  cost so far {money(cluster.cost_so_far)} (now {now})")
    if cluster.failure:
        head.append(f"  failure: {escape_controls(cluster.failure)}")
    # a cloud names its machines itself (instance ids): shown where any node has one
    machines = any(n.machine_id for n in cluster.nodes)
    rows = [
        [
            n.name,
            n.state,
            n.host,
            *([n.machine_id] if machines else []),
            n.address,
            f"{n.cores}c/{describe_size_mib(n.memory_mib)}",
            ago(n.state_since),
            _note(n),
        ]
        for n in cluster.nodes
    ]
    columns = ["node", "state", "host", *(["machine"] if machines else []), "address"]
    nodes = table([*columns, "size", "since", "note"], rows)
    return "\n".join(head) + "\n\n" + nodes


def _note(node: NodeView) -> str:
    if node.failure and node.failure_phase:
        return f"{node.failure_phase}: {node.failure}"
    if node.failure:  # a ready node whose removal failed
        return node.failure
    if node.blocked_on:
        return "waiting for " + ", ".join(node.blocked_on)
    return ""


def event_table(events: list[EventView]) -> str:
    rows = [
        [
            when(e.at),
            e.subject,
            f"{e.from_state or '-'} -> {e.to_state}" if e.kind == "state" else e.kind,
            e.reason,
        ]
        for e in events
    ]
    return table(["at", "subject", "change", "reason"], rows)


def failing_nodes(cluster: ClusterDetail) -> list[str]:
    return [
        f"{n.name}: failed in phase {n.failure_phase}: {escape_controls(n.failure)}"
        for n in cluster.nodes
        if n.failure
    ]


class Progress:
    """One line that follows a cluster's node states: redrawn on a terminal, logged otherwise."""

    def __init__(self, goal: str = "ready", stream=None) -> None:
        self.goal = goal
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = ""

    def update(self, cluster: ClusterDetail) -> None:
        counts = Counter(n.state for n in cluster.nodes)
        total = len(cluster.nodes)
        ready = counts.get(self.goal, 0)
        width = 24
        filled = int(width * ready / total) if total else width
        others = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != self.goal)
        line = (
            f"{cluster.name} [{'#' * filled}{'.' * (width - filled)}] "
            f"{ready}/{total} {self.goal}"
            + (f" ({others})" if others else "")
            + f" - {cluster.state}"
        )
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
