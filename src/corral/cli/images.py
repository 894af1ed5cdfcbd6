"""`corral image bake|import|list|delete`: appliance images in the local image store,
registered with the service."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from corral.cli import render
from corral.cli.connection import connect
from corral.cli.params import IMAGE_NAME, json_option
from corral.errors import CorralError, ForbiddenError, NotFoundError
from corral.images.store import ImageStore
from corral.service.config import default_data_dir
from corral.service.schemas import ImageView
from corral.units import describe_size_mib


@click.group()
def image() -> None:
    """Appliance images: bake from a recipe, import, list, delete.

    `bake` and `import` write into the image store of the local service's data directory
    ($CORRAL_HOME), as root, then register the image with the service.
    """


def _local_image_store(action: str) -> ImageStore:
    """The local service's image store; raises ForbiddenError unless we are root."""
    if os.geteuid() != 0:
        raise ForbiddenError(
            f"{action} needs root: image files keep their owners and modes "
            "(run it with sudo, keeping CORRAL_HOME)"
        )
    return ImageStore.of_data_dir(default_data_dir())


def _image_size(size_bytes: int) -> str:
    return describe_size_mib(-(-size_bytes // 2**20))  # rounded up: a small image is not 0


def _image_line(view: ImageView) -> str:
    return f"{view.name} {view.digest} ({_image_size(view.size_bytes)})"


@image.command("bake")
@click.argument("name")
@json_option
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
    registered = client.register_image(name, digest, replace=True)
    if as_json:
        seconds = round(time.monotonic() - started, 3)
        render.emit_json(registered.body, cache_hit=cached, seconds=seconds)
    else:
        click.echo(f"image {_image_line(registered.model)}", err=True)
        click.echo(digest)


@image.command("import")
@click.argument("name", type=IMAGE_NAME)
@click.argument("tarball", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Point an existing NAME at this tarball.")
@json_option
def image_import(name: str, tarball: Path, replace: bool, as_json: bool) -> None:
    """Add a root file system tarball as image NAME (its digest: the tarball's SHA-256)."""
    store = _local_image_store("importing an image")
    client = connect()
    before = {i.digest for i in store.list()}
    click.echo(f"importing {tarball} into {store.root}", err=True)
    digest = store.import_tarball(name, tarball)
    try:
        registered = client.register_image(name, digest, replace=replace)
    except CorralError:
        if digest not in before:
            store.delete(digest)  # nothing names it: do not leave it behind
        raise
    if as_json:
        render.emit_json(registered.body)
    else:
        click.echo(f"image {_image_line(registered.model)}", err=True)
        click.echo(digest)


@image.command("list")
@json_option
def image_list(as_json: bool) -> None:
    """List the images clusters can use."""
    images = connect().images()
    if as_json:
        render.emit_json(images.body)
    elif images.model:
        rows = [
            [i.name, i.digest[:19], _image_size(i.size_bytes), render.when(i.created_at)]
            for i in images.model
        ]
        click.echo(render.table(["name", "digest", "size", "created"], rows))
    else:
        click.echo("no images (`corral image bake debian-12-slurm` makes one)")


@image.command("delete")
@click.argument("name", type=IMAGE_NAME)
@json_option
def image_delete(name: str, as_json: bool) -> None:
    """Forget image NAME, and remove its files when no other name points to them."""
    answer = connect().remove_image(name)
    removed = answer.model
    files = "kept"
    if removed.other_names:
        note = f"its files stay: also named {', '.join(removed.other_names)}"
    else:
        store = ImageStore.of_data_dir(default_data_dir())
        if not store.has(removed.digest):
            note, files = f"no files of it in {store.root}", "absent"
        elif os.geteuid() != 0:
            note = f"its files in {store.root} stay: removing them needs root"
        else:
            store.delete(removed.digest)
            note, files = f"removed its files from {store.root}", "removed"
    if as_json:
        render.emit_json(answer.body, files=files)
    else:
        click.echo(f"deleted image {name} ({removed.digest}); {note}")
