"""`corral cp` without a cluster: how paths are read, what is refused, and the two
scripts of a copy run on this machine, where the real tar moves real files between them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import click
import pytest
from served import ServedCorral, client_env, corral

from corral.cli.copy import (
    MISSING_SOURCE,
    NO_PARENT,
    NOT_A_DIRECTORY,
    Copy,
    Local,
    Meter,
    Remote,
    archived,
    parse_location,
    plain,
    plan_copy,
    receive_script,
    relay,
    send_script,
)

# -- reading paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("results", Local("results")),
        ("./a:b", Local("./a:b")),
        ("/tmp/x:y", Local("/tmp/x:y")),
        ("dir/a:b", Local("dir/a:b")),
        ("c1:data", Remote("c1", None, "data")),
        ("c-1a2b3c4d:/var/log", Remote("c-1a2b3c4d", None, "/var/log")),
        ("c1:", Remote("c1", None, "")),
        ("c1:worker-0:/var/log", Remote("c1", "worker-0", "/var/log")),
        ("c1:head-0:", Remote("c1", "head-0", "")),
        # only a node's name (group-index) before a second ':' is a node
        ("c1:notes:2024", Remote("c1", None, "notes:2024")),
        ("c1:a/b:c", Remote("c1", None, "a/b:c")),
        ("c1:worker-0:a:b", Remote("c1", "worker-0", "a:b")),
    ],
)
def test_a_location_is_local_or_on_a_cluster_and_maybe_a_node(text, location):
    assert parse_location(text) == location


@pytest.mark.parametrize("text", ["My File:2.txt", ":data", "2024:notes"])
def test_text_before_a_colon_that_is_no_cluster_is_refused_with_how_to_write_it(text):
    with pytest.raises(click.BadParameter) as refused:
        parse_location(text)
    assert f"./{text}" in refused.value.message


def test_a_copy_to_a_node_and_one_from_it():
    assert plan_copy(["a", "b c", "c1:worker-0:in"]) == Copy(
        "c1", "worker-0", "to", ("a", "b c"), "in"
    )
    assert plan_copy(["c1:x", "c1:/y", "."]) == Copy("c1", None, "from", ("x", "/y"), ".")


@pytest.mark.parametrize(
    ("texts", "said"),
    [
        (["only"], "at least one source and a destination"),
        (["a", "b"], "no path is on a cluster"),
        (["c1:a", "c2:b"], "both sides are on clusters"),
        (["c1:head-0:a", "c1:worker-0:b"], "both sides are on clusters"),
        (["c1:a", "here", "out"], "on a cluster and on this machine ('here')"),
        (["c1:a", "c1:worker-0:b", "out"], "more than one node (c1: and c1:worker-0:)"),
        (["c1:a", "c2:b", "out"], "more than one node (c1: and c2:)"),
    ],
)
def test_copies_that_are_not_one_side_on_one_node_are_refused(texts, said):
    with pytest.raises(click.UsageError) as refused:
        plan_copy(texts)
    assert said in refused.value.message


@pytest.mark.parametrize(
    ("path", "remote", "taken"),
    [
        ("", True, "."),
        ("~", True, "."),
        ("~/x/y", True, "x/y"),
        ("~/", True, "."),
        ("-x", True, "./-x"),
        ("-x", False, "./-x"),
        ("~/x", False, "~/x"),  # a local shell already expanded what it meant to
        ("/abs", True, "/abs"),
    ],
)
def test_paths_as_the_scripts_take_them(path, remote, taken):
    assert plain(path, remote) == taken


@pytest.mark.parametrize(
    ("path", "directory", "member"),
    [
        ("a/b/c", "a/b", "c"),
        ("a/b/", "a", "b"),
        ("file", ".", "file"),
        ("./-x", ".", "./-x"),
        (".", ".", "."),
        ("..", "..", "."),
        ("a/..", ".", "."),
        ("/", "/", "."),
        ("/etc", "/", "etc"),
    ],
)
def test_each_source_is_archived_under_its_own_name(path, directory, member):
    assert archived(path) == (directory, member)


# -- what the CLI refuses before it connects ----------------------------------------------


def test_the_cli_refuses_before_it_connects(tmp_path):
    env = client_env(tmp_path / "home")
    both_local = corral("cp", "a", "b", env=env)
    assert both_local.returncode == 2
    assert "no path is on a cluster" in both_local.stderr
    missing = corral("cp", str(tmp_path / "no such"), "c1:", env=env)
    assert missing.returncode == 4, missing.stderr
    assert f"no such file or directory: {tmp_path / 'no such'}" in missing.stderr
    (tmp_path / "file").write_text("")
    into_file = corral("cp", "c1:a", "c1:b", str(tmp_path / "file"), env=env)
    assert into_file.returncode == 1
    assert "not a directory (several sources go into a directory)" in into_file.stderr
    no_parent = corral("cp", "c1:a", str(tmp_path / "gone" / "a"), env=env)
    assert no_parent.returncode == 4
    assert f"no such directory: {tmp_path / 'gone'}" in no_parent.stderr
    assert not (tmp_path / "home").exists()  # no service was started or asked


def test_a_cluster_that_is_not_there_is_named_with_how_to_write_a_local_path(tmp_path):
    (tmp_path / "a").write_text("")
    with ServedCorral(tmp_path / "svc") as served:
        result = corral("cp", str(tmp_path / "a"), "notes:2024", "--json", env=served.env())
    assert result.returncode == 4, result.stderr
    assert "notes" in result.stderr
    assert "a local path with ':' in it is written with a '/', like ./notes:" in result.stderr
    assert json.loads(result.stdout)["error"] == "not-found"


# -- the scripts, both sides on this machine ----------------------------------------------


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under `root`: its mode and its bytes' hash (or a link's target)."""
    found = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISDIR(mode):
                what = "dir"
            else:
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (mode, what)
    return found


def make_tree(root: Path) -> Path:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "with space.txt").write_text("spaced out\n")
    (root / "-dash").write_bytes(os.urandom(3000))
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o750)
    (root / "link").symlink_to("nested/deeper/with space.txt")
    (root / "nested").chmod(0o705)
    return root


def copy_here(sources: list[str], destination: str, cwd: Path):
    """Copy with both scripts run by sh in `cwd`, as cp runs them on either side."""
    os.chdir(cwd)
    return relay(
        ["sh", "-c", send_script(sources)], ["sh", "-c", receive_script(destination, sources)]
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_tree_is_copied_whole_with_modes_links_and_odd_names(workdir):
    make_tree(workdir / "my data")
    moved = copy_here(["my data"], "copy of it", workdir)
    assert (moved.sender.code, moved.receiver.code) == (0, 0), moved
    assert tree(workdir / "copy of it") == tree(workdir / "my data")
    assert moved.bytes > 3000
    # into an existing directory it goes under its own name, as cp does
    (workdir / "-into").mkdir()
    moved = copy_here(["my data/-dash", "my data/nested"], "./-into", workdir)
    assert (moved.sender.code, moved.receiver.code) == (0, 0), moved
    assert sorted(os.listdir(workdir / "-into")) == ["-dash", "nested"]
    assert tree(workdir / "-into" / "nested") == tree(workdir / "my data" / "nested")


def test_one_file_becomes_the_destination_and_replaces_a_file_there(workdir):
    (workdir / "a").write_text("new")
    (workdir / "b").write_text("old")
    moved = copy_here(["a"], "b", workdir)
    assert moved.receiver.code == 0, moved
    assert (workdir / "b").read_text() == "new"
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".corral-cp")] == []


def test_the_contents_of_dot_go_into_the_destination(workdir):
    source = make_tree(workdir / "src")
    moved = copy_here(["."], str(workdir / "out"), source)
    assert moved.receiver.code == 0, moved
    assert tree(workdir / "out") == tree(source)
    assert stat.S_IMODE((workdir / "out").stat().st_mode) == stat.S_IMODE(source.stat().st_mode)


def test_a_missing_source_is_named_and_nothing_reaches_the_other_side(workdir):
    (workdir / "here").write_text("")
    moved = copy_here(["here", "not here", plain("-nor this", remote=True)], "out", workdir)
    assert moved.sender.code == MISSING_SOURCE
    assert moved.sender.stderr.splitlines() == ["missing not here", "missing ./-nor this"]
    assert moved.receiver is None  # never started
    assert not (workdir / "out").exists()


def test_the_receiving_side_refuses_a_destination_that_cannot_take_the_sources(workdir):
    (workdir / "a").write_text("")
    (workdir / "b").write_text("")
    moved = copy_here(["a", "b"], "a file", workdir)
    assert moved.receiver.code == NOT_A_DIRECTORY
    moved = copy_here(["a"], "no dir/a", workdir)
    assert moved.receiver.code == NO_PARENT
    assert sorted(os.listdir(workdir)) == ["a", "b"]


def test_a_failed_unpacking_leaves_nothing_behind(workdir):
    (workdir / "dir").mkdir()
    (workdir / "dir" / "f").write_text("x")
    (workdir / "afile").write_text("")
    moved = copy_here(["dir"], "afile", workdir)  # a directory cannot replace a file
    assert moved.receiver.code != 0
    assert (workdir / "afile").read_text() == ""
    assert sorted(os.listdir(workdir)) == ["afile", "dir"]


def test_a_copy_cut_short_here_leaves_nothing_on_the_receiving_side(workdir):
    (workdir / "big").write_bytes(os.urandom(8 * 1024 * 1024))

    def interrupted(moved: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C with the stream half sent

    receiver = ["sh", "-c", receive_script("copy", ["big"])]
    with pytest.raises(KeyboardInterrupt):
        relay(["sh", "-c", send_script(["big"])], receiver, interrupted)
    assert sorted(os.listdir(workdir)) == ["big"]


# -- the progress line --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line_waits_a_moment_then_shows_bytes_rate_and_share():
    stream, clock = io.StringIO(), Clock()
    meter = Meter(stream, total=8 * 1024 * 1024, label="to head-0: ", clock=clock)
    meter.update(1024 * 1024)
    assert stream.getvalue() == ""  # a copy that ends this soon shows nothing
    clock.now += 2
    meter.update(4 * 1024 * 1024)
    assert stream.getvalue().endswith("\r\033[Kto head-0: 4.0 MiB  2.0 MiB/s  50%")
    clock.now += 2
    meter.done(8 * 1024 * 1024)
    assert stream.getvalue().endswith("\r\033[Kto head-0: 8.0 MiB  2.0 MiB/s  in 4.0s\n")


def test_a_quick_copy_draws_no_line_at_all():
    stream, clock = io.StringIO(), Clock()
    meter = Meter(stream, total=None, clock=clock)
    meter.update(100)
    meter.done(200)
    assert stream.getvalue() == ""
