"""The admin commands: users and their tokens (and recovering an admin), hosts."""

from __future__ import annotations

from pathlib import Path

import click

from corral.cli import render
from corral.cli.connection import connect
from corral.cli.params import ACCOUNT_NAME, json_option
from corral.errors import NotFoundError
from corral.units import describe_size_mib, parse_size_mib


@click.group()
def user() -> None:
    """Users and their API tokens (admin)."""


@user.command("add")
@click.argument("name", type=ACCOUNT_NAME)
@click.option("--admin", is_flag=True)
@click.option("--max-nodes", type=int, default=None, help="Nodes held at once.")
@click.option("--max-node-hours", type=float, default=None, help="Node-hours held at once.")
@json_option
def user_add(
    name: str, admin: bool, max_nodes: int | None, max_node_hours: float | None, as_json: bool
) -> None:
    """Create a user and print their token (shown this once)."""
    created = connect().add_user(name, admin, max_nodes, max_node_hours)
    if as_json:
        render.emit_json(created.body)
        return
    click.echo(f"created user {name}; their token, shown this once:", err=True)
    click.echo(created.model.token)


@user.command("list")
@json_option
def user_list(as_json: bool) -> None:
    """List users with their quotas and what they hold."""
    users = connect().users()
    if as_json:
        render.emit_json(users.body)
        return
    rows = [
        [
            u.name,
            "yes" if u.admin else "",
            f"{u.nodes_in_use}/{u.max_nodes}",
            f"{u.node_hours_held:.1f}/{u.max_node_hours:g}",
        ]
        for u in users.model
    ]
    click.echo(render.table(["user", "admin", "nodes", "node-hours"], rows))


@user.command("remove")
@click.argument("name", type=ACCOUNT_NAME)
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


@click.group()
def host() -> None:
    """Hosts and their capacity (admin)."""


@host.command("add")
@click.argument("name", type=ACCOUNT_NAME)
@click.option("--cores", type=int, required=True)
@click.option("--memory", required=True, help="Like 16GiB.")
@click.option("--pool", type=ACCOUNT_NAME, default="local", show_default=True)
@json_option
def host_add(name: str, cores: int, memory: str, pool: str, as_json: bool) -> None:
    """Register a host's capacity in a pool."""
    try:
        memory_mib = parse_size_mib(memory)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory") from None
    added = connect().add_host(name, pool, cores, memory_mib)
    if as_json:
        render.emit_json(added.body)
    else:
        click.echo(f"added host {name} to pool {pool}: {cores} cores, {memory}")


@host.command("list")
@json_option
def host_list(as_json: bool) -> None:
    """List hosts with their total and free capacity."""
    hosts = connect().hosts()
    if as_json:
        render.emit_json(hosts.body)
        return
    rows = [
        [
            h.name,
            h.pool,
            "yes" if h.enabled else "no",
            f"{h.free_cores}/{h.cores}",
            f"{describe_size_mib(max(h.free_memory_mib, 0))}/{describe_size_mib(h.memory_mib)}",
        ]
        for h in hosts.model
    ]
    click.echo(render.table(["host", "pool", "enabled", "free cores", "free memory"], rows))


@host.command("remove")
@click.argument("name", type=ACCOUNT_NAME)
def host_remove(name: str) -> None:
    """Remove a host that runs no live node (`host add` brings it back)."""
    connect().remove_host(name)
    click.echo(f"removed host {name}")
