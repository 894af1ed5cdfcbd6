"""The `corral` command group: every command registered, and how errors end a command.

Every read takes --json; exit codes are in exit_codes.py.
"""

from __future__ import annotations

import sys

import click

from corral import __version__
from corral.cli import admin, clusters, copy, exit_codes, images, render
from corral.cli.params import JSON_REQUESTED
from corral.cli.serve import serve
from corral.errors import CorralError


class CorralGroup(click.Group):
    """A group whose commands end a CorralError with its message and exit code (and its
    JSON body when --json was given)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CorralError as exc:
            if ctx.meta.get(JSON_REQUESTED, False):
                render.emit_json(exc.to_dict())
            click.echo(f"corral: error: {exc.message}", err=True)
            sys.exit(exit_codes.for_error(exc))


@click.group(cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="corral")
def cli() -> None:
    """One-click virtual clusters with leases.

    Without CORRAL_URL the commands use a local service, started in the background
    on first use.
    """


for command in (
    serve,
    clusters.validate,
    clusters.run,
    clusters.list_clusters,
    clusters.status,
    clusters.extend,
    clusters.resize,
    clusters.destroy,
    clusters.logs,
    clusters.console,
    clusters.credentials,
    clusters.ssh,
    copy.cp,
    admin.user,
    admin.host,
    images.image,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="corral")
