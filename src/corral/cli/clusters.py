"""The cluster commands: validate, run, list, status, extend, destroy, logs, console,
credentials, ssh."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import click

from corral import limits
from corral.cli import exit_codes, render
from corral.cli.client import Answer, Client
from corral.cli.connection import connect
from corral.cli.credentials import (
    cached_credentials,
    check_reachable,
    ssh_command,
    write_credentials,
)
from corral.cli.params import ACCOUNT_NAME, CLUSTER_NAME, Duration, Hours, json_option
from corral.document import load_with_warnings, name_from_file, parse_with_warnings, read_document
from corral.document.problems import format_warning
from corral.errors import NotFoundError, Problem
from corral.lifecycle import IN_GROUP, IN_PROGRESS, LEAVING
from corral.logs import escape_controls
from corral.service.schemas import ClusterDetail
from corral.units import format_duration, parse_duration

WAIT_POLL_SECONDS = 0.5
ENDED = ("terminated",)


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def validate(file: Path, as_json: bool) -> None:
    """Check a cluster document (YAML or Nimbus cluster.xml); creates nothing."""
    parsed = load_with_warnings(file)
    doc = parsed.document
    _print_warnings(str(file), parsed.warnings)
    if as_json:
        warnings = [asdict(w) for w in parsed.warnings]
        render.emit_json({"valid": True, "document": doc.to_dict(), "warnings": warnings})
        return
    groups = ", ".join(f"{g.group} x{g.count}" for g in doc.nodes)
    lease = format_duration(doc.lease) if doc.lease else "service default"
    click.echo(f"{file}: valid: {doc.total_nodes} node(s) ({groups}); lease {lease}")


@click.command()
@click.option("--cluster", "cluster_file", required=True, type=click.Path(path_type=Path))
@click.option("--hours", type=Hours(), default=None, help="Lease in hours (overrides the file).")
@click.option("--lease", default=None, metavar="DURATION", help="Lease like 30m or 12h.")
@click.option(
    "--name",
    type=CLUSTER_NAME,
    default=None,
    help="Cluster name (default: the document's, else its file's; the service makes it unique).",
)
@click.option(
    "--pool",
    type=ACCOUNT_NAME,
    default=None,
    metavar="POOL",
    help="Pool to run in (overrides the file).",
)
@click.option("--no-wait", is_flag=True, help="Return once the request is accepted.")
@click.option("--keep-on-failure", is_flag=True, help="Keep a failed launch's nodes.")
@click.option("--timeout", default=None, metavar="DURATION", help="Stop waiting after this.")
@json_option
def run(
    cluster_file: Path,
    hours: float | None,
    lease: str | None,
    name: str | None,
    pool: str | None,
    no_wait: bool,
    keep_on_failure: bool,
    timeout: str | None,
    as_json: bool,
) -> None:
    """Launch a cluster and wait until it is ready (or say why not)."""
    if hours is not None and lease is not None:
        raise click.UsageError("give --hours or --lease, not both")
    try:
        lease_span = parse_duration(lease) if lease else None
        wait_limit = parse_duration(timeout).total_seconds() if timeout else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if hours is not None:
        lease_span = timedelta(hours=hours)
    text = read_document(cluster_file)  # read once, and only up to the size limit
    parsed = parse_with_warnings(text, str(cluster_file))  # refuse a bad one here, with lines
    _print_warnings(str(cluster_file), parsed.warnings)
    if name is None and parsed.document.name is None:
        name = name_from_file(cluster_file)  # a document without a name is named for its file
    client = connect()
    answer = client.launch(
        text,
        str(cluster_file),
        name=name,
        pool=pool,
        lease_seconds=lease_span.total_seconds() if lease_span else None,
        keep_on_failure=keep_on_failure,
    )
    cluster = answer.model
    if not as_json:
        click.echo(
            f"launched {cluster.name} ({cluster.id}): {cluster.node_count} node(s), "
            f"lease until {render.when(cluster.lease_end)}",
            err=True,
        )
        for line in render.launch_notes(cluster):
            click.echo(line, err=True)
    if no_wait:
        _print_launched(answer, as_json)
        return
    # what only the launch's answer says stays in the JSON printed after waiting
    launch_only = {k: answer.body.get(k) for k in ("placement", "estimated_cost")}
    try:
        until = _in_state("ready", "degraded", "failed", "terminating", *ENDED)
        answer = _wait(client, cluster.id, until, wait_limit)
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped waiting; {cluster.id} goes on launching "
            f"(`corral status {cluster.id}`, `corral destroy {cluster.id}`)",
            err=True,
        )
        sys.exit(130)
    cluster = answer.model
    if cluster.state in ("ready", "degraded"):  # degraded: it was ready, then lost nodes
        _print_launched(answer, as_json, launch_only)
        known_hosts = cached_credentials(client, cluster) / "known_hosts"
        if not as_json:
            click.echo(
                f"log in with `corral ssh {cluster.id}` (host keys are checked against "
                f"{known_hosts})",
                err=True,
            )
        return
    if cluster.state == "launching":
        _print_launched(answer, as_json, launch_only)
        click.echo(
            f"corral: still launching after {timeout}; `corral status {cluster.id}`", err=True
        )
        sys.exit(exit_codes.TIMEOUT)
    if cluster.state == "terminating" and not cluster.failure:
        pass  # destroyed or expired while we waited
    elif not keep_on_failure:
        click.echo("launch failed; removing its nodes", err=True)
        answer = _wait(client, cluster.id, _nodes_removed, None, goal="terminated")
        cluster = answer.model
    _print_launched(answer, as_json, launch_only)
    click.echo(
        f"corral: cluster {cluster.name} ({cluster.id}) failed: "
        f"{escape_controls(cluster.failure or 'it ended before it was ready')}",
        err=True,
    )
    for line in render.failing_nodes(cluster):
        click.echo(f"  {line}", err=True)
    if cluster.state == "failed":
        click.echo(
            f"its record stays until `corral destroy {cluster.id}`; "
            f"`corral console {cluster.id} NODE` shows what a node's console printed",
            err=True,
        )
    sys.exit(exit_codes.CLUSTER_FAILED)


def _print_warnings(source: str, warnings: tuple[Problem, ...]) -> None:
    for warning in warnings:
        click.echo(escape_controls(format_warning(source, warning)), err=True)


def _wait(
    client: Client,
    ref: str,
    done: Callable[[ClusterDetail], bool],
    limit: float | None,
    goal: str = "ready",
) -> Answer[ClusterDetail]:
    """The cluster once `done` says so of it, or when `limit` seconds ran out; shows its
    nodes' progress towards `goal` meanwhile."""
    progress = render.Progress(goal)
    deadline = time.monotonic() + limit if limit else None
    try:
        while True:
            answer = client.cluster(ref)
            progress.update(answer.model)
            if done(answer.model):
                return answer
            if deadline and time.monotonic() > deadline:
                return answer
            time.sleep(WAIT_POLL_SECONDS)
    finally:
        progress.done()


def _print_launched(
    answer: Answer[ClusterDetail], as_json: bool, launch_only: dict[str, object] | None = None
) -> None:
    """The cluster's last state: its JSON (with `launch_only`, what the launch's answer
    alone carried), or one line."""
    if as_json:
        render.emit_json(answer.body, **(launch_only or {}))
        return
    cluster = answer.model
    login = [n for n in cluster.nodes if n.login] or cluster.nodes[:1]
    where = f"; log in at {login[0].name} {login[0].address}" if login else ""
    click.echo(f"{cluster.id} {cluster.state}{where if cluster.state == 'ready' else ''}")


@click.command("list")
@click.option("--all", "everyone", is_flag=True, help="Every user's clusters (admins).")
@json_option
def list_clusters(everyone: bool, as_json: bool) -> None:
    """List your clusters."""
    clusters = connect().clusters(everyone)
    if as_json:
        render.emit_json(clusters.body)
    elif clusters.model:
        click.echo(render.cluster_table(clusters.model))
    else:
        click.echo("no clusters")


@click.command()
@click.argument("cluster")
@click.option("--watch", is_flag=True, help="Follow until the cluster ends (Ctrl-C stops).")
@click.option("--events", is_flag=True, help="Also show the cluster's event log.")
@json_option
def status(cluster: str, watch: bool, events: bool, as_json: bool) -> None:
    """Show a cluster and each of its nodes."""
    client = connect()
    if watch:
        _watch(client, cluster, as_json)
        return
    view = client.cluster(cluster)
    log = client.events(cluster) if events else None
    if as_json:
        added = {"events": log.body} if log is not None else {}
        render.emit_json(view.body, **added)
        return
    click.echo(render.cluster_status(view.model))
    if log is not None:
        click.echo("\n" + render.event_table(log.model))


def _watch(client: Client, ref: str, as_json: bool) -> None:
    last = None
    try:
        while True:
            answer = client.cluster(ref)
            view = answer.model
            snapshot = (view.state, [(n.name, n.state) for n in view.nodes])
            if snapshot != last:
                if as_json:
                    click.echo(json.dumps(answer.body, sort_keys=True))
                else:
                    if sys.stdout.isatty():
                        click.clear()
                    click.echo(render.cluster_status(view) + "\n")
                last = snapshot
            if view.state in ENDED:
                return
            time.sleep(WAIT_POLL_SECONDS)
    except KeyboardInterrupt:
        return


@click.command()
@click.argument("cluster")
@click.option("--hours", type=Hours(), required=True, help="How many hours later it should end.")
@json_option
def extend(cluster: str, hours: float, as_json: bool) -> None:
    """Move a cluster's lease deadline later."""
    answer = connect().extend(cluster, hours * 3600)
    if as_json:
        render.emit_json(answer.body)
        return
    view = answer.model
    click.echo(
        f"{view.id} lease now ends {render.when(view.lease_end)} "
        f"({render.left(view.lease_left_seconds)} left)"
    )


DRAIN_TIMEOUT = click.option(
    "--drain-timeout",
    type=Duration(),
    help="How long a removed node may take to let its jobs end (default: the document's "
    "policy.drain_timeout, 10m).",
)


@click.command()
@click.argument("cluster")
@click.argument("change", metavar="GROUP=N|+K|-K")
@DRAIN_TIMEOUT
@click.option("--no-wait", is_flag=True, help="Return once the change has started.")
@json_option
def resize(
    cluster: str, change: str, drain_timeout: float | None, no_wait: bool, as_json: bool
) -> None:
    """Grow or shrink a group of a running cluster: `worker=4`, `worker=+2`, `worker=-1`.

    New nodes take the group's next indexes and join like the first ones. Removed nodes
    (those not ready yet first, then the newest) are drained first: their jobs may end
    within the drain timeout; a node whose drain fails stays, drained, and the reason is
    shown. A resize the quota, the pool or the group's minimum cannot take is refused
    whole, changing nothing.
    """
    group, sep, amount = change.partition("=")
    if not sep or not re.fullmatch(r"[+-]?[0-9]{1,5}", amount):
        raise click.BadParameter(
            f"{change!r}: write GROUP=N, GROUP=+K or GROUP=-K", param_hint="CHANGE"
        )
    client = connect()
    relative = amount[0] in "+-"
    count, by = (None, int(amount)) if relative else (int(amount), None)
    answer = client.resize(cluster, group, count, by, drain_timeout)
    _settle(client, answer, no_wait, as_json, group)


@click.command("destroy")
@click.argument("cluster")
@click.argument("nodes", nargs=-1, metavar="[NODE]...")
@DRAIN_TIMEOUT
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-wait", is_flag=True, help="Return once removal has started.")
@json_option
def destroy(
    cluster: str,
    nodes: tuple[str, ...],
    drain_timeout: float | None,
    yes: bool,
    no_wait: bool,
    as_json: bool,
) -> None:
    """End a cluster now, or remove just the NODEs named.

    A whole cluster's /home goes with it: `corral cp` out what you want to keep first;
    destroying an ended cluster succeeds and changes nothing. Named nodes are drained
    first, as a resize's are, and refused whole when one is not there or their group
    would fall below its minimum.
    """
    client = connect()
    if nodes:
        answer = client.remove_nodes(cluster, list(nodes), drain_timeout)
        _settle(client, answer, no_wait, as_json, None)
        return
    if drain_timeout is not None:
        raise click.UsageError("--drain-timeout is for removing NODEs, not a whole cluster")
    if not yes and sys.stdin.isatty():
        view = client.cluster(cluster).model
        if view.state not in ENDED:
            click.confirm(
                f"destroy {view.name} ({view.id}), its {view.node_count} node(s) and "
                "everything in its /home?",
                abort=True,
            )
    answer = client.destroy(cluster)
    if not no_wait:
        answer = _wait(client, answer.model.id, _in_state(*ENDED), None, goal="terminated")
    if as_json:
        render.emit_json(answer.body)
    else:
        click.echo(f"{answer.model.id} {answer.model.state}")


def _settle(
    client: Client, answer: Answer, no_wait: bool, as_json: bool, group: str | None
) -> None:
    """Wait until a resize or removal has settled, then show the group (or every group)
    and any node whose removal failed; exits non-zero when one did."""
    draining = {n.id for n in answer.model.nodes if n.state == "draining"}
    if not no_wait:
        answer = _wait(client, answer.model.id, _settled, None)
    if as_json:
        render.emit_json(answer.body)
    view = answer.model
    kept = [n for n in view.nodes if n.id in draining and n.state == "ready"]
    if not as_json:
        groups = [group] if group else list(dict.fromkeys(n.group for n in view.nodes))
        for g in groups:
            shown = [n.name for n in view.nodes if n.group == g and n.state in IN_GROUP]
            click.echo(f"{view.id} {view.state}: {g} has {len(shown)} node(s): {', '.join(shown)}")
        for node in kept:
            click.echo(f"{node.name}: {node.failure}", err=True)
    if kept and not no_wait:
        raise SystemExit(exit_codes.REMOVAL_FAILED)


def _in_state(*states: str) -> Callable[[ClusterDetail], bool]:
    return lambda cluster: cluster.state in states


def _nodes_removed(cluster: ClusterDetail) -> bool:
    """Whether every node of the cluster is gone: a failed launch's record stays failed
    until it is destroyed."""
    return cluster.state in ENDED or all(n.state == "terminated" for n in cluster.nodes)


def _settled(cluster: ClusterDetail) -> bool:
    """Whether none of the cluster's nodes is on its way to ready, or out, any more."""
    return not any(n.state in IN_PROGRESS or n.state in LEAVING for n in cluster.nodes)


@click.command()
@click.argument("cluster")
@click.argument("node")
@json_option
def logs(cluster: str, node: str, as_json: bool) -> None:
    """Show what a node's role scripts printed (kept after the node is gone)."""
    reports = connect().logs(cluster, node)
    if as_json:
        render.emit_json(reports.body)
        return
    if not reports.model:
        click.echo(f"{node} has reported nothing yet")
    for report in reports.model:
        what = f"{report.phase} {report.role}".strip()
        code = "" if report.exit_code is None else f" (exit {report.exit_code})"
        click.echo(f"== {render.when(report.at)} {what}: {report.state}{code}")
        if report.log_tail:
            click.echo(report.log_tail.rstrip("\n"))


@click.command()
@click.argument("cluster")
@click.argument("node")
@click.option(
    "--bytes",
    "max_bytes",
    type=click.IntRange(1, limits.MAX_CONSOLE_BYTES),
    default=limits.DEFAULT_CONSOLE_BYTES,
    show_default=True,
    help="How many of its last bytes to show.",
)
@json_option
def console(cluster: str, node: str, max_bytes: int, as_json: bool) -> None:
    """Show what a node's console printed: its boot, also after a failed one (kept until
    the cluster is destroyed, where its backend keeps consoles)."""
    answer = connect().console(cluster, node, max_bytes)
    if as_json:
        render.emit_json(answer.body)
        return
    shown = answer.model
    if shown.truncated:
        click.echo(f"(last {shown.bytes} bytes; earlier output cut)")
    click.echo(render.readable_console(shown.console), nl=not shown.console.endswith("\n"))


@click.command()
@click.argument("cluster")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory to write into (created 0700).",
)
@json_option
def credentials(cluster: str, output: Path, as_json: bool) -> None:
    """Write the cluster's CA certificate, your certificate and key, and its known_hosts line."""
    issued = connect().credentials(cluster).model
    written = [str(path) for path in write_credentials(issued, output)]
    if as_json:
        render.emit_json({"cluster": issued.cluster, "files": written})
    else:
        click.echo(f"wrote credentials for {issued.cluster} to {output}:")
        for path in written:
            click.echo(f"  {path}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("cluster")
@click.argument("node", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--root", "as_root", is_flag=True, help="Log in as root instead of your account.")
def ssh(cluster: str, node: str | None, command: tuple[str, ...], as_root: bool) -> None:
    """Log in to a node (default: the login node): `corral ssh C [[USER@]NODE] [-- CMD]`.

    You log in to your account on the cluster (the one its `users` names first, or your
    own name); `--root` or `root@NODE` logs in as root. Host keys are checked strictly
    against the cluster's CA, and nothing else is trusted.
    """
    if node is not None and _follows_double_dash(node):
        node, command = None, (node, *command)  # `corral ssh C -- CMD`: no node given
    user = "root" if as_root else None
    if node is not None and "@" in node:
        user, node = node.split("@", 1)
        node = node or None
    client = connect()
    view = client.cluster(cluster).model
    check_reachable(view)
    if user is not None and user != "root" and user not in view.users:
        accounts = ", ".join(["root", *view.users])
        raise NotFoundError(f"cluster {view.id} has no account {user} (accounts: {accounts})")
    argv = ssh_command(client, view, node, command, user)
    os.execvp(argv[0], argv)


def _follows_double_dash(word: str) -> bool:
    argv = sys.argv
    return "--" in argv and argv.index("--") + 1 < len(argv) and argv[argv.index("--") + 1] == word
