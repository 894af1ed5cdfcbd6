"""The `corral` commands. Every read takes --json; exit codes are in exit_codes.py."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from corral import __version__, limits, names
from corral.cli import exit_codes, render
from corral.cli.connection import connect
from corral.cli.credentials import cached_credentials, ssh_command, write_credentials
from corral.document import load_document, parse_document, read_document
from corral.errors import ConflictError, CorralError, ForbiddenError, NotFoundError
from corral.logs import escape_controls
from corral.units import describe_size_mib, format_duration, parse_duration, parse_size_mib

WAIT_POLL_SECONDS = 0.5
ENDED = ("terminated",)


def fail(error: CorralError, as_json: bool) -> None:
    if as_json:
        render.emit_json(error.to_dict())
    click.echo(f"corral: error: {error.message}", err=True)
    sys.exit(exit_codes.for_error(error))


def reports_errors(fn: Callable) -> Callable:
    """Turn a CorralError into its message and exit code (and JSON body with --json)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CorralError as exc:
            fail(exc, kwargs.get("as_json", False))

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print stable JSON.")


class NameType(click.ParamType):
    """A name on the command line, checked by its rule (names.py) before any request."""

    def __init__(self, rule: names.NameRule) -> None:
        self.rule = rule
        self.name = rule.kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return self.rule.check(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Hours(click.ParamType):
    """A positive, finite number of hours within the longest duration corral takes."""

    name = "hours"
    most = limits.MAX_DURATION_SECONDS / 3600

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            hours = float(value)
        except ValueError:
            self.fail(f"not a number: {value!r}", param, ctx)
        if not 0 < hours <= self.most:  # also refuses nan
            self.fail(f"must be more than 0 and at most {self.most:g}, got {value!r}", param, ctx)
        return hours


CLUSTER_NAME = NameType(names.CLUSTER)
ACCOUNT_NAME = NameType(names.ACCOUNT)
IMAGE_NAME = NameType(names.IMAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="corral")
def cli() -> None:
    """One-click virtual clusters with leases.

    Without CORRAL_URL the commands use a local service, started in the background
    on first use.
    """


# -- the service -------------------------------------------------------------------------


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Configuration file with the service's pools (see docs/configuration.md).",
)
@click.option(
    "--backend",
    default=None,
    help="Backend for the local pool (default: $CORRAL_BACKEND, else nspawn if usable, else fake).",
)
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE")
@click.option("--db", "db_url", default=None, help="Database URL (default: SQLite in data dir).")
@click.option("--listen", default=None, metavar="HOST:PORT", help="API address.")
@click.option("--broker-listen", default=None, metavar="HOST:PORT", help="Broker (HTTPS).")
@click.option("--broker-url", default=None, help="Broker URL nodes are given.")
@click.option(
    "--metadata-listen",
    default=None,
    metavar="HOST:PORT",
    help="Metadata service (HTTP; default: the broker's host, port 8472).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDR",
    help="A proxy in front of the API whose X-Forwarded-For is believed (none by default).",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--broker-cert-lifetime",
    default=None,
    metavar="DURATION",
    help="Lifetime of the broker's TLS certificate (90d); renewed with the same key.",
)
@click.option("--default-lease", default=None, metavar="DURATION")
@click.option("--max-lease", default=None, metavar="DURATION")
@click.option("--tick", "tick_seconds", type=float, default=None, help="Engine interval (s).")
@reports_errors
def serve(
    config_file: Path | None,
    backend: str | None,
    backend_options: tuple[str, ...],
    db_url: str | None,
    listen: str | None,
    broker_listen: str | None,
    broker_url: str | None,
    metadata_listen: str | None,
    trusted_proxies: tuple[str, ...],
    data_dir: Path | None,
    broker_cert_lifetime: str | None,
    default_lease: str | None,
    max_lease: str | None,
    tick_seconds: float | None,
) -> None:
    """Run the service (API, engine, leases) in the foreground."""
    from corral.cli.serve import run_service
    from corral.logs import configure_service_logging
    from corral.service.config import (
        DEFAULT_BROKER_PORT,
        DEFAULT_METADATA_PORT,
        ServiceConfig,
    )
    from corral.service.config_file import read_config_file

    config = ServiceConfig()
    if data_dir:
        config.data_dir = data_dir
    if config_file is not None:
        if backend or backend_options:
            raise click.UsageError(
                "--backend and --backend-option describe one pool; with --config, "
                "the file describes every pool"
            )
        try:
            read_config_file(config_file, config)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from None
    if backend:
        config.backend = backend
    for item in backend_options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--backend-option")
        config.backend_options[key] = value
    config.db_url = db_url
    if listen:
        config.listen = listen
    if broker_listen:
        config.broker_listen = broker_listen
    elif config.nodes_reach_service_at_gateways():
        # containers reach the broker at their bridge's address
        config.broker_listen = f"0.0.0.0:{DEFAULT_BROKER_PORT}"
    config.broker_url = broker_url
    # beside the broker, facing the clusters (a bad address is refused with the broker's)
    broker_host = config.broker_listen.rpartition(":")[0]
    config.metadata_listen = metadata_listen or f"{broker_host}:{DEFAULT_METADATA_PORT}"
    config.trusted_proxies = trusted_proxies
    try:
        if default_lease:
            config.default_lease = parse_duration(default_lease)
        if max_lease:
            config.max_lease = parse_duration(max_lease)
        if broker_cert_lifetime:
            config.broker_cert_lifetime = parse_duration(broker_cert_lifetime)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if tick_seconds is not None:
        if tick_seconds <= 0:
            raise click.BadParameter("must be positive", param_hint="--tick")
        config.tick_seconds = tick_seconds
    configure_service_logging()
    try:
        run_service(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


# -- documents ---------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
@reports_errors
def validate(file: Path, as_json: bool) -> None:
    """Check a cluster document (YAML or Nimbus cluster.xml); creates nothing."""
    doc = load_document(file)
    if as_json:
        render.emit_json({"valid": True, "document": doc.to_dict()})
        return
    groups = ", ".join(f"{g.group} x{g.count}" for g in doc.nodes)
    lease = format_duration(doc.lease) if doc.lease else "service default"
    click.echo(f"{file}: valid: {doc.total_nodes} node(s) ({groups}); lease {lease}")


# -- clusters ----------------------------------------------------------------------------


@cli.command()
@click.option("--cluster", "cluster_file", required=True, type=click.Path(path_type=Path))
@click.option("--hours", type=Hours(), default=None, help="Lease in hours (overrides the file).")
@click.option("--lease", default=None, metavar="DURATION", help="Lease like 30m or 12h.")
@click.option(
    "--name", type=CLUSTER_NAME, default=None, help="Cluster name (the service makes it unique)."
)
@click.option("--no-wait", is_flag=True, help="Return once the request is accepted.")
@click.option("--keep-on-failure", is_flag=True, help="Keep a failed launch's nodes.")
@click.option("--timeout", default=None, metavar="DURATION", help="Stop waiting after this.")
@json_option
@reports_errors
def run(
    cluster_file: Path,
    hours: float | None,
    lease: str | None,
    name: str | None,
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
    parse_document(text, str(cluster_file))  # refuse a bad one here, with its lines
    client = connect()
    cluster = client.launch(
        text,
        str(cluster_file),
        name=name,
        lease_seconds=lease_span.total_seconds() if lease_span else None,
        keep_on_failure=keep_on_failure,
    )
    if not as_json:
        click.echo(
            f"launched {cluster['name']} ({cluster['id']}): {cluster['node_count']} node(s), "
            f"lease until {cluster['lease_end']}",
            err=True,
        )
    if no_wait:
        _print_cluster(cluster, as_json, short=True)
        return
    try:
        cluster = _wait(
            client, cluster["id"], ("ready", "failed", "terminating", *ENDED), wait_limit
        )
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped waiting; {cluster['id']} goes on launching "
            f"(`corral status {cluster['id']}`, `corral destroy {cluster['id']}`)",
            err=True,
        )
        sys.exit(130)
    if cluster["state"] == "ready":
        _print_cluster(cluster, as_json, short=True)
        known_hosts = cached_credentials(client, cluster) / "known_hosts"
        if not as_json:
            click.echo(
                f"log in with `corral ssh {cluster['id']}` (host keys are checked against "
                f"{known_hosts})",
                err=True,
            )
        return
    if cluster["state"] in ("launching",):
        _print_cluster(cluster, as_json, short=True)
        click.echo(
            f"corral: still launching after {timeout}; `corral status {cluster['id']}`", err=True
        )
        sys.exit(exit_codes.TIMEOUT)
    if cluster["state"] == "terminating" and not cluster["failure"]:
        pass  # destroyed or expired while we waited
    elif not keep_on_failure:
        click.echo("launch failed; removing its nodes", err=True)
        cluster = _wait(client, cluster["id"], ENDED, None, goal="terminated")
    _print_cluster(cluster, as_json, short=True)
    click.echo(
        f"corral: cluster {cluster['name']} ({cluster['id']}) failed: "
        f"{escape_controls(cluster['failure'] or 'it ended before it was ready')}",
        err=True,
    )
    for line in render.failing_nodes(cluster):
        click.echo(f"  {line}", err=True)
    sys.exit(exit_codes.CLUSTER_FAILED)


def _wait(
    client, ref: str, until: tuple[str, ...], limit: float | None, goal: str = "ready"
) -> dict[str, Any]:
    progress = render.Progress(goal)
    deadline = time.monotonic() + limit if limit else None
    try:
        while True:
            cluster = client.cluster(ref)
            progress.update(cluster)
            if cluster["state"] in until:
                return cluster
            if deadline and time.monotonic() > deadline:
                return cluster
            time.sleep(WAIT_POLL_SECONDS)
    finally:
        progress.done()


def _print_cluster(cluster: dict[str, Any], as_json: bool, short: bool = False) -> None:
    if as_json:
        render.emit_json(cluster)
        return
    if not short:
        click.echo(render.cluster_status(cluster))
        return
    login = [n for n in cluster["nodes"] if n["login"]] or cluster["nodes"][:1]
    where = f"; log in at {login[0]['name']} {login[0]['address']}" if login else ""
    click.echo(f"{cluster['id']} {cluster['state']}{where if cluster['state'] == 'ready' else ''}")


@cli.command("list")
@click.option("--all", "everyone", is_flag=True, help="Every user's clusters (admins).")
@json_option
@reports_errors
def list_clusters(everyone: bool, as_json: bool) -> None:
    """List your clusters."""
    clusters = connect().clusters(everyone)
    if as_json:
        render.emit_json(clusters)
    elif clusters:
        click.echo(render.cluster_table(clusters))
    else:
        click.echo("no clusters")


@cli.command()
@click.argument("cluster")
@click.option("--watch", is_flag=True, help="Follow until the cluster ends (Ctrl-C stops).")
@click.option("--events", is_flag=True, help="Also show the cluster's event log.")
@json_option
@reports_errors
def status(cluster: str, watch: bool, events: bool, as_json: bool) -> None:
    """Show a cluster and each of its nodes."""
    client = connect()
    if watch:
        _watch(client, cluster, as_json)
        return
    view = client.cluster(cluster)
    if events:
        view = {**view, "events": client.events(cluster)}
    if as_json:
        render.emit_json(view)
        return
    click.echo(render.cluster_status(view))
    if events:
        rows = [
            [
                e["at"],
                e["subject"],
                f"{e['from_state'] or '-'} -> {e['to_state']}"
                if e["kind"] == "state"
                else e["kind"],
                e["reason"],
            ]
            for e in view["events"]
        ]
        click.echo("\n" + render.table(["at", "subject", "change", "reason"], rows))


def _watch(client, ref: str, as_json: bool) -> None:
    last = None
    try:
        while True:
            view = client.cluster(ref)
            text = render.cluster_status(view) if not as_json else None
            snapshot = (view["state"], [(n["name"], n["state"]) for n in view["nodes"]])
            if snapshot != last:
                if as_json:
                    click.echo(json.dumps(view, sort_keys=True))
                else:
                    if sys.stdout.isatty():
                        click.clear()
                    click.echo(text + "\n")
                last = snapshot
            if view["state"] in ENDED:
                return
            time.sleep(WAIT_POLL_SECONDS)
    except KeyboardInterrupt:
        return


@cli.command()
@click.argument("cluster")
@click.option("--hours", type=Hours(), required=True, help="How many hours later it should end.")
@json_option
@reports_errors
def extend(cluster: str, hours: float, as_json: bool) -> None:
    """Move a cluster's lease deadline later."""
    view = connect().extend(cluster, hours * 3600)
    if as_json:
        render.emit_json(view)
    else:
        click.echo(
            f"{view['id']} lease now ends {view['lease_end']} "
            f"({render.left(view['lease_left_seconds'])} left)"
        )


@cli.command()
@click.argument("cluster")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-wait", is_flag=True, help="Return once removal has started.")
@json_option
@reports_errors
def destroy(cluster: str, yes: bool, no_wait: bool, as_json: bool) -> None:
    """End a cluster now; destroying an ended cluster succeeds and changes nothing."""
    client = connect()
    if not yes and sys.stdin.isatty():
        view = client.cluster(cluster)
        if view["state"] not in ENDED:
            click.confirm(
                f"destroy {view['name']} ({view['id']}) and its {view['node_count']} node(s)?",
                abort=True,
            )
    view = client.destroy(cluster)
    if not no_wait:
        view = _wait(client, view["id"], ENDED, None, goal="terminated")
    if as_json:
        render.emit_json(view)
    else:
        click.echo(f"{view['id']} {view['state']}")


@cli.command()
@click.argument("cluster")
@click.argument("node")
@json_option
@reports_errors
def logs(cluster: str, node: str, as_json: bool) -> None:
    """Show what a node's role scripts printed (kept after the node is gone)."""
    reports = connect().logs(cluster, node)
    if as_json:
        render.emit_json(reports)
        return
    if not reports:
        click.echo(f"{node} has reported nothing yet")
    for report in reports:
        what = f"{report['phase']} {report['role']}".strip()
        code = "" if report["exit_code"] is None else f" (exit {report['exit_code']})"
        click.echo(f"== {report['at']} {what}: {report['state']}{code}")
        if report["log_tail"]:
            click.echo(report["log_tail"].rstrip("\n"))


@cli.command()
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
@reports_errors
def credentials(cluster: str, output: Path, as_json: bool) -> None:
    """Write the cluster's CA certificate, your certificate and key, and its known_hosts line."""
    issued = connect().credentials(cluster)
    written = [str(path) for path in write_credentials(issued, output)]
    if as_json:
        render.emit_json({"cluster": issued["cluster"], "files": written})
    else:
        click.echo(f"wrote credentials for {issued['cluster']} to {output}:")
        for path in written:
            click.echo(f"  {path}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("cluster")
@click.argument("node", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@reports_errors
def ssh(cluster: str, node: str | None, command: tuple[str, ...]) -> None:
    """Log in to a node (default: the login node) as root: `corral ssh C [NODE] [-- CMD]`.

    Host keys are checked strictly against the cluster's CA, and nothing else is trusted.
    """
    if node is not None and _follows_double_dash(node):
        node, command = None, (node, *command)  # `corral ssh C -- CMD`: no node given
    client = connect()
    view = client.cluster(cluster)
    if view["state"] not in ("ready", "failed", "launching"):
        raise ConflictError(f"cluster {view['id']} is {view['state']}")
    argv = ssh_command(client, view, node, command)
    os.execvp(argv[0], argv)


def _follows_double_dash(word: str) -> bool:
    argv = sys.argv
    return "--" in argv and argv.index("--") + 1 < len(argv) and argv[argv.index("--") + 1] == word


# -- admin -------------------------------------------------------------------------------


@cli.group()
def user() -> None:
    """Users and their API tokens (admin)."""


@user.command("add")
@click.argument("name", type=ACCOUNT_NAME)
@click.option("--admin", is_flag=True)
@click.option("--max-nodes", type=int, default=None, help="Nodes held at once.")
@click.option("--max-node-hours", type=float, default=None, help="Node-hours held at once.")
@json_option
@reports_errors
def user_add(
    name: str, admin: bool, max_nodes: int | None, max_node_hours: float | None, as_json: bool
) -> None:
    """Create a user and print their token (shown this once)."""
    created = connect().add_user(name, admin, max_nodes, max_node_hours)
    if as_json:
        render.emit_json(created)
        return
    click.echo(f"created user {name}; their token, shown this once:", err=True)
    click.echo(created["token"])


@user.command("list")
@json_option
@reports_errors
def user_list(as_json: bool) -> None:
    """List users with their quotas and what they hold."""
    users = connect().users()
    if as_json:
        render.emit_json(users)
        return
    rows = [
        [
            u["name"],
            "yes" if u["admin"] else "",
            f"{u['nodes_in_use']}/{u['max_nodes']}",
            f"{u['node_hours_held']:.1f}/{u['max_node_hours']:g}",
        ]
        for u in users
    ]
    click.echo(render.table(["user", "admin", "nodes", "node-hours"], rows))


@user.command("remove")
@click.argument("name", type=ACCOUNT_NAME)
@reports_errors
def user_remove(name: str) -> None:
    """Remove a user with no live cluster; their token stops working."""
    connect().remove_user(name)
    click.echo(f"removed user {name}")


@user.command("recover-admin")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The service's data directory (default: $CORRAL_HOME).",
)
@click.option("--db", "db_url", default=None, help="The service's database URL, if not there.")
@click.option("--name", default="admin", show_default=True, help="The user to make admin.")
@json_option
@reports_errors
def user_recover_admin(data_dir: Path | None, db_url: str | None, name: str, as_json: bool) -> None:
    """Make NAME an admin with a new token, from the service's own store.

    For the service's machine, when no admin token is left: it needs no running service,
    only access to the store. The token goes to the data directory's admin.token (0600).
    """
    from corral.service.auth import write_token_file
    from corral.service.config import ServiceConfig
    from corral.service.inventory import recover_admin
    from corral.store.database import Store

    config = ServiceConfig(db_url=db_url)
    if data_dir:
        config.data_dir = data_dir
    if not db_url and not (config.data_dir / "corral.db").exists():
        raise NotFoundError(f"no corral store in {config.data_dir} (give --data-dir or --db)")
    store = Store(config.database_url)
    try:
        with store.session() as session:
            recovered, token = recover_admin(session, name)
            name = recovered.name
    finally:
        store.close()
    write_token_file(config.admin_token_file, token)
    if as_json:
        render.emit_json({"user": name, "token_file": str(config.admin_token_file)})
    else:
        click.echo(f"user {name} is an admin; its new token is in {config.admin_token_file}")


@cli.group()
def host() -> None:
    """Hosts and their capacity (admin)."""


@host.command("add")
@click.argument("name", type=ACCOUNT_NAME)
@click.option("--cores", type=int, required=True)
@click.option("--memory", required=True, help="Like 16GiB.")
@click.option("--pool", type=ACCOUNT_NAME, default="local", show_default=True)
@json_option
@reports_errors
def host_add(name: str, cores: int, memory: str, pool: str, as_json: bool) -> None:
    """Register a host's capacity in a pool."""
    try:
        memory_mib = parse_size_mib(memory)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory") from None
    view = connect().add_host(name, pool, cores, memory_mib)
    if as_json:
        render.emit_json(view)
    else:
        click.echo(f"added host {name} to pool {pool}: {cores} cores, {memory}")


@host.command("list")
@json_option
@reports_errors
def host_list(as_json: bool) -> None:
    """List hosts with their total and free capacity."""
    hosts = connect().hosts()
    if as_json:
        render.emit_json(hosts)
        return
    rows = [
        [
            h["name"],
            h["pool"],
            "yes" if h["enabled"] else "no",
            f"{h['free_cores']}/{h['cores']}",
            f"{describe_size_mib(max(h['free_memory_mib'], 0))}/"
            f"{describe_size_mib(h['memory_mib'])}",
        ]
        for h in hosts
    ]
    click.echo(render.table(["host", "pool", "enabled", "free cores", "free memory"], rows))


@host.command("remove")
@click.argument("name", type=ACCOUNT_NAME)
@reports_errors
def host_remove(name: str) -> None:
    """Remove a host that runs no live workspace (`host add` brings it back)."""
    connect().remove_host(name)
    click.echo(f"removed host {name}")


# -- images ------------------------------------------------------------------------------


@cli.group()
def image() -> None:
    """Appliance images: bake from a recipe, import, list, delete.

    `bake` and `import` write into the image store of the local service's data directory
    ($CORRAL_HOME), as root, then register the image with the service.
    """


def _local_image_store(action: str):
    """The local service's image store; raises ForbiddenError unless we are root."""
    from corral.images.store import ImageStore
    from corral.service.config import default_data_dir

    if os.geteuid() != 0:
        raise ForbiddenError(
            f"{action} needs root: image files keep their owners and modes "
            "(run it with sudo, keeping CORRAL_HOME)"
        )
    return ImageStore.of_data_dir(default_data_dir())


def _image_size(size_bytes: int) -> str:
    return describe_size_mib(-(-size_bytes // 2**20))  # rounded up: a small image is not 0


def _image_line(view: dict[str, Any]) -> str:
    return f"{view['name']} {view['digest']} ({_image_size(view['size_bytes'])})"


@image.command("bake")
@click.argument("name")
@json_option
@reports_errors
def image_bake(name: str, as_json: bool) -> None:
    """Build the image of recipe NAME (a cache hit if already built) and register it."""
    from corral.images.bake import bake
    from corral.images.recipe import RECIPES, recipe_digest

    recipe = RECIPES.get(name)
    if recipe is None:
        raise NotFoundError(
            f"no recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}",
            recipe=name,
            known=sorted(RECIPES),
        )
    store = _local_image_store("baking an image")
    client = connect()  # before the bake: an unreachable service fails fast
    started = time.monotonic()
    cached = store.has(recipe_digest(recipe))
    digest = bake(recipe, store, progress=lambda line: click.echo(line, err=True))
    # the recipe is the truth about its name: a new bake replaces what it named
    view = client.register_image(name, digest, replace=True)
    if as_json:
        seconds = round(time.monotonic() - started, 3)
        render.emit_json({**view, "cache_hit": cached, "seconds": seconds})
    else:
        click.echo(f"image {_image_line(view)}", err=True)
        click.echo(digest)


@image.command("import")
@click.argument("name", type=IMAGE_NAME)
@click.argument("tarball", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Point an existing NAME at this tarball.")
@json_option
@reports_errors
def image_import(name: str, tarball: Path, replace: bool, as_json: bool) -> None:
    """Add a root file system tarball as image NAME (its digest: the tarball's SHA-256)."""
    store = _local_image_store("importing an image")
    client = connect()
    before = {i.digest for i in store.list()}
    click.echo(f"importing {tarball} into {store.root}", err=True)
    digest = store.import_tarball(name, tarball)
    try:
        view = client.register_image(name, digest, replace=replace)
    except CorralError:
        if digest not in before:
            store.delete(digest)  # nothing names it: do not leave it behind
        raise
    if as_json:
        render.emit_json(view)
    else:
        click.echo(f"image {_image_line(view)}", err=True)
        click.echo(digest)


@image.command("list")
@json_option
@reports_errors
def image_list(as_json: bool) -> None:
    """List the images clusters can use."""
    images = connect().images()
    if as_json:
        render.emit_json(images)
    elif images:
        rows = [
            [
                i["name"],
                i["digest"][:19],
                _image_size(i["size_bytes"]),
                i["created_at"],
            ]
            for i in images
        ]
        click.echo(render.table(["name", "digest", "size", "created"], rows))
    else:
        click.echo("no images (`corral image bake debian-12-slurm` makes one)")


@image.command("delete")
@click.argument("name", type=IMAGE_NAME)
@json_option
@reports_errors
def image_delete(name: str, as_json: bool) -> None:
    """Forget image NAME, and remove its files when no other name points to them."""
    removed = connect().remove_image(name)
    files = "kept"
    if removed["other_names"]:
        note = f"its files stay: also named {', '.join(removed['other_names'])}"
    else:
        from corral.images.store import ImageStore
        from corral.service.config import default_data_dir

        store = ImageStore.of_data_dir(default_data_dir())
        if not store.has(removed["digest"]):
            note, files = f"no files of it in {store.root}", "absent"
        elif os.geteuid() != 0:
            note = f"its files in {store.root} stay: removing them needs root"
        else:
            store.delete(removed["digest"])
            note, files = f"removed its files from {store.root}", "removed"
    if as_json:
        render.emit_json({**removed, "files": files})
    else:
        click.echo(f"deleted image {name} ({removed['digest']}); {note}")


def main() -> None:
    cli(prog_name="corral")
