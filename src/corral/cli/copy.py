"""`corral cp`: files and directories to and from a node, as one tar stream over ssh.

One side of a copy is this machine, the other one node of a cluster. The sending side
runs `tar -c` on its sources, the receiving side `tar -x` into the destination, and this
process relays the stream between them, counting bytes for the progress line and the
summary. Both sides are the same two small shell scripts (`send_script`,
`receive_script`): run here with `sh -c`, on the node through `corral ssh`'s command
(the user's certificate, the cluster's known_hosts, strict host checking). tar keeps
modes, symlinks and whole trees; the receiving tar gives the files to the account that
copies, not to the owner they had on the other side.

Paths are parsed like scp's: `CLUSTER:PATH` is on the cluster's login node,
`CLUSTER:NODE:PATH` on NODE; a path whose text before its first ':' holds a '/' is local.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Literal

import click

from corral import names
from corral.cli import render
from corral.cli.connection import connect
from corral.cli.credentials import check_reachable, node_of, ssh_command
from corral.cli.params import json_option
from corral.errors import CorralError, NotFoundError
from corral.logs import escape_controls

CHUNK = 1024 * 1024
PROGRESS_FROM_BYTES = 4 * 1024 * 1024  # smaller copies end before a progress line helps
PROGRESS_DELAY_SECONDS = 0.5  # nor is one drawn for a copy that ends this soon
PROGRESS_EVERY_SECONDS = 0.2
CUT_SHORT_SECONDS = 10  # for a receiver to clean up after a stream cut short

# what the scripts exit with when they refuse, out of the way of tar's 1 and 2, the
# shell's 126 and up, and ssh's 255
MISSING_SOURCE = 90
NOT_A_DIRECTORY = 91
NO_PARENT = 92

LOCAL_PATH_HINT = "a local path with ':' in it is written with a '/', like ./{text}"


@dataclass(frozen=True)
class Local:
    """A path on this machine."""

    path: str


@dataclass(frozen=True)
class Remote:
    """A path on a node of a cluster (`node` None: the login node)."""

    cluster: str
    node: str | None
    path: str


@dataclass(frozen=True)
class Copy:
    """What one `corral cp` moves: `sources` to `destination`, `to` or `from` one node."""

    cluster: str
    node: str | None
    direction: Literal["to", "from"]
    sources: tuple[str, ...]
    destination: str


def parse_location(text: str) -> Local | Remote:
    """`text` as a local path, `CLUSTER:PATH` or `CLUSTER:NODE:PATH`.

    The part after CLUSTER: starts with NODE: only when it is a node's name (`worker-0`),
    so `c1:notes:2024` is the file `notes:2024` on c1's login node. Raises
    click.BadParameter when the text before ':' can be neither a cluster nor a directory.
    """
    head, colon, rest = text.partition(":")
    if not colon or "/" in head:
        return Local(text)
    if not names.CLUSTER.matches(head):
        raise click.BadParameter(
            f"{text!r}: {head!r} is not a cluster id or name; " + LOCAL_PATH_HINT.format(text=text)
        )
    node, colon, path = rest.partition(":")
    if colon and names.NODE.matches(node):
        return Remote(head, node, path)
    return Remote(head, None, rest)


def plan_copy(texts: Sequence[str]) -> Copy:
    """The copy that `corral cp TEXTS...` asks for (the last text is the destination).

    Raises click.UsageError when fewer than two paths are given or when not exactly one
    side is on a cluster, or the sources are on more than one node.
    """
    if len(texts) < 2:
        raise click.UsageError("give at least one source and a destination")
    *sources, destination = (parse_location(text) for text in texts)
    remote_sources = [s for s in sources if isinstance(s, Remote)]
    if isinstance(destination, Remote):
        if remote_sources:
            raise click.UsageError(
                "both sides are on clusters; corral cp copies between this machine and one "
                "node (copy through a local directory)"
            )
        return Copy(
            destination.cluster,
            destination.node,
            "to",
            tuple(s.path for s in sources),
            destination.path,
        )
    if not remote_sources:
        raise click.UsageError(
            "no path is on a cluster: write one side as CLUSTER:PATH or CLUSTER:NODE:PATH"
        )
    if len(remote_sources) < len(sources):
        local = next(s for s in sources if isinstance(s, Local))
        raise click.UsageError(
            f"the sources are on a cluster and on this machine ({local.path!r}); copy "
            "from one side at a time"
        )
    places = sorted({(s.cluster, s.node or "") for s in remote_sources})
    if len(places) > 1:
        shown = " and ".join(f"{c}:{n}:" if n else f"{c}:" for c, n in places)
        raise click.UsageError(f"the sources are on more than one node ({shown}); give one")
    first = remote_sources[0]
    return Copy(first.cluster, first.node, "from", tuple(s.path for s in sources), destination.path)


def plain(path: str, remote: bool) -> str:
    """`path` as the scripts take it: a remote '' or '~' is the home directory and
    `~/x` is `x` in it (ssh starts there); a path starting with '-' gets './'."""
    if remote:
        if path in ("", "~"):
            return "."
        if path.startswith("~/"):
            path = path[2:].lstrip("/") or "."
    return "./" + path if path.startswith("-") else path


def archived(path: str) -> tuple[str, str]:
    """(directory, member): `tar -C directory member` archives `path` under its own name.

    A path naming no entry of its own (`.`, `..`, `/`) is archived as `.`, its
    contents, as `cp -r . DEST` copies the contents of `.`.
    """
    normal = posixpath.normpath(path)
    name = posixpath.basename(normal)
    if name in ("", ".", ".."):
        return normal, "."
    member = "./" + name if name.startswith("-") else name
    return posixpath.dirname(normal) or ".", member


def _absolute(directory: str) -> str:
    # tar takes each -C relative to the one before; from the shell's start they are not
    quoted = shlex.quote(directory)
    return quoted if directory.startswith("/") else f'"$PWD"/{quoted}'


def send_script(sources: Sequence[str]) -> str:
    """sh that writes a tar stream of `sources` (plain paths) to stdout, or exits
    MISSING_SOURCE naming each missing one on stderr (`missing PATH`) and sends nothing."""
    members = []
    for source in sources:
        directory, member = archived(source)
        members += ["-C", _absolute(directory), shlex.quote(member)]
    return (
        f"m=0; for p in {' '.join(shlex.quote(s) for s in sources)}; do "
        'if [ ! -e "$p" ] && [ ! -h "$p" ]; then printf "missing %s\\n" "$p" >&2; m=1; fi; '
        f"done; [ $m = 0 ] || exit {MISSING_SOURCE}; "
        f"exec tar -c -f - {' '.join(members)}"
    )


def receive_script(destination: str, sources: Sequence[str]) -> str:
    """sh that unpacks the tar stream of `sources` (sent by `send_script`) from stdin as cp
    would: into `destination` when it is a directory; else, for one source, as
    `destination` itself (unpacked beside it first, then renamed, so a failed copy leaves
    nothing). Exits NOT_A_DIRECTORY (several sources, no directory) or NO_PARENT
    (`destination`'s directory is missing)."""
    target = shlex.quote(destination)
    extract = "tar -x -p --no-same-owner -f -"
    into = f"if [ -d {target} ]; then exec {extract} -C {target}; fi; "
    if len(sources) > 1:
        return into + f"exit {NOT_A_DIRECTORY}"
    parent = shlex.quote(posixpath.dirname(destination.rstrip("/")) or ".")
    _, member = archived(sources[0])
    moved = '"$t"' if member == "." else f'"$t"/{shlex.quote(member)}'
    return into + (
        f"[ -d {parent} ] || exit {NO_PARENT}; "
        f"t=$(mktemp -d {parent}/.corral-cp.XXXXXX) || exit 1; "
        "trap 'rm -rf \"$t\"; exit 130' HUP INT TERM; "
        f'if {extract} -C "$t" && mv -f -T -- {moved} {target}; then '
        'rmdir "$t" 2>/dev/null; exit 0; fi; rm -rf "$t"; exit 1'
    )


@dataclass(frozen=True)
class Ended:
    """How one side of a copy ended: its exit code and what it wrote on stderr."""

    code: int
    stderr: str


@dataclass(frozen=True)
class Moved:
    """A relayed copy: both sides' ends (`receiver` None when the sender sent nothing),
    the bytes of tar stream between them, and whether the receiver stopped reading
    before the stream ended."""

    sender: Ended
    receiver: Ended | None
    bytes: int
    cut_short: bool = False


def relay(
    sender: Sequence[str],
    receiver: Sequence[str],
    counted: Callable[[int], None] = lambda moved: None,
) -> Moved:
    """Run `sender` and pipe its stdout through this process into `receiver`, calling
    `counted` with the bytes moved so far after each chunk.

    The receiver starts only once the sender has sent something: a sender that refuses
    (a missing source) leaves the receiving side untouched. Ending early (Ctrl-C) ends
    both sides.
    """
    with tempfile.TemporaryFile() as send_err, tempfile.TemporaryFile() as receive_err:
        sending = subprocess.Popen(
            sender, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=send_err
        )
        receiving = None
        moved = 0
        cut_short = False
        try:
            assert sending.stdout is not None
            source = sending.stdout.fileno()
            chunk = os.read(source, CHUNK)
            if chunk:
                receiving = subprocess.Popen(
                    receiver,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=receive_err,
                    bufsize=0,
                )
                assert receiving.stdin is not None
                sink = receiving.stdin.fileno()
                while chunk:
                    if not _write_all(sink, chunk):
                        cut_short = True  # the receiver ended early; how it ended says why
                        break
                    moved += len(chunk)
                    counted(moved)
                    chunk = os.read(source, CHUNK)
                receiving.stdin.close()
            sending.stdout.close()  # a sender still writing ends (SIGPIPE)
            receiver_code = receiving.wait() if receiving else None
            sender_code = sending.wait()
        except BaseException:
            _cut_short(sending, receiving)
            raise
        return Moved(
            Ended(sender_code, _read(send_err)),
            None if receiver_code is None else Ended(receiver_code, _read(receive_err)),
            moved,
            cut_short,
        )


def _cut_short(sending: subprocess.Popen, receiving: subprocess.Popen | None) -> None:
    """End a copy stopped here (Ctrl-C): the sender at once, the receiver by the end of
    its input, so that it removes what it had unpacked (killed if it takes too long)."""
    if sending.poll() is None:
        sending.kill()
    sending.wait()
    if receiving is not None:
        with contextlib.suppress(OSError):
            receiving.stdin.close()  # type: ignore[union-attr]
        try:
            receiving.wait(timeout=CUT_SHORT_SECONDS)
        except subprocess.TimeoutExpired:
            receiving.kill()
            receiving.wait()


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of `data`; False when the reading end is gone."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        return False
    return True


def _read(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")


def tar_size(paths: Sequence[str]) -> int:
    """About how many bytes of tar stream `paths` (local) make: a 512-byte header per
    entry and each regular file's data in 512-byte blocks."""
    total = 1024  # the two zero blocks that end an archive
    for path in paths:
        total += _tar_entry(path)
        for top, dirs, files in os.walk(path):  # nothing for a file; links not followed
            total += sum(_tar_entry(os.path.join(top, name)) for name in dirs + files)
    return total


def _tar_entry(path: str) -> int:
    try:
        status = os.lstat(path)
    except OSError:
        return 0  # gone meanwhile; tar will say so
    data = status.st_size if stat.S_ISREG(status.st_mode) else 0
    return 512 + -(-data // 512) * 512


def size(count: float) -> str:
    """Bytes for people: `512 B`, `1.5 KiB`, `12.3 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Meter:
    """The progress line of a copy on a terminal: bytes moved, the rate, and how far
    when the size is known; drawn only once the copy has run for a moment."""

    def __init__(
        self,
        stream: IO[str],
        total: int | None,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.clock = clock
        self.start = clock()
        self.drawn_at: float | None = None

    def update(self, moved: int) -> None:
        now = self.clock()
        if now - self.start < PROGRESS_DELAY_SECONDS:
            return
        if self.drawn_at is not None and now - self.drawn_at < PROGRESS_EVERY_SECONDS:
            return
        self._draw(moved, now)

    def done(self, moved: int) -> None:
        if self.drawn_at is not None:
            self._draw(moved, self.clock(), final=True)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, moved: int, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-6)
        line = f"{self.label}{size(moved)}  {size(moved / elapsed)}/s"
        if self.total and not final:
            line += f"  {min(100, moved * 100 // self.total)}%"
        if final:
            line += f"  in {elapsed:.1f}s"
        self.stream.write("\r\033[K" + line)
        self.stream.flush()
        self.drawn_at = now


@click.command("cp")
@click.argument("paths", nargs=-1, required=True, metavar="[CLUSTER:[NODE:]]PATH... DEST")
@click.option(
    "-r", "-R", "recursive", is_flag=True, help="Accepted for familiarity; cp always recurses."
)
@click.option("--root", "as_root", is_flag=True, help="Copy as root instead of your account.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
@json_option
def cp(paths: tuple[str, ...], recursive: bool, as_root: bool, quiet: bool, as_json: bool) -> None:
    """Copy files and directories between this machine and a node, always recursively.

    Exactly one side is on a cluster: CLUSTER:PATH is on its login node, CLUSTER:NODE:PATH
    on NODE; a local path with ':' in it is written with a '/' (./a:b). Several sources
    go into the directory DEST; one source goes into DEST when it is a directory, else
    becomes DEST. A relative remote path is in the home directory of the account you copy
    as: yours (files land owned by you), or root's with --root. Modes, symlinks and whole
    trees are kept; -r is not needed. Put `--` before paths that start with '-'.

    On a terminal a progress line shows bytes moved and the rate (not with --quiet or
    --json); --json prints a summary.

    \b
    corral cp results c1:                   results into your home on c1's login node
    corral cp c1:worker-0:/var/log/slurm .  a directory of worker-0, here
    corral cp a.txt b.txt c1:inputs/        both into ~/inputs on c1
    """
    plan = plan_copy(paths)
    outward = plan.direction == "to"
    sources = [plain(s, remote=not outward) for s in plan.sources]
    destination = plain(plan.destination, remote=outward)
    # what is wrong here is said before connecting
    if outward:
        _check_local_sources(sources)
    else:
        _check_local_destination(destination, len(sources))

    client = connect()
    try:
        try:
            view = client.cluster(plan.cluster).model
        except NotFoundError as exc:
            hint = LOCAL_PATH_HINT.format(text=f"{plan.cluster}:...")
            raise NotFoundError(f"{exc.message}; {hint}", **exc.details) from None
        check_reachable(view)
        node = node_of(view, plan.node).name
        user = "root" if as_root else view.login_user

        def there(script: str) -> list[str]:
            return ssh_command(client, view, node, (f"sh -c {shlex.quote(script)}",), user)

        send, receive = send_script(sources), receive_script(destination, sources)
        if outward:
            sender, receiver = ["sh", "-c", send], there(receive)
        else:
            sender, receiver = there(send), ["sh", "-c", receive]
    finally:
        client.close()

    meter = None
    if not (quiet or as_json) and sys.stderr.isatty():
        total = tar_size(sources) if outward else None  # unknown until it is here
        if total is None or total >= PROGRESS_FROM_BYTES:
            meter = Meter(sys.stderr, total, f"{plan.direction} {node}: ")
    try:
        moved = relay(sender, receiver, meter.update if meter else _ignore)
    except KeyboardInterrupt:
        click.echo("\ncorral: copy interrupted", err=True)
        sys.exit(130)
    if meter:
        meter.done(moved.bytes)
    _raise_for(moved, node, outward, destination)
    if as_json:
        render.emit_json(
            {
                "cluster": view.id,
                "node": node,
                "user": user,
                "direction": plan.direction,
                "sources": list(plan.sources),
                "destination": plan.destination,
                "bytes": moved.bytes,
            }
        )


def _ignore(moved: int) -> None:
    pass


def _check_local_sources(sources: Sequence[str]) -> None:
    missing = [s for s in sources if not os.path.lexists(s)]
    if missing:
        raise NotFoundError(f"no such file or directory: {', '.join(missing)}", paths=missing)


def _check_local_destination(destination: str, count: int) -> None:
    if os.path.isdir(destination):
        return
    if count > 1:
        _refuse_destination(destination, "", os.path.lexists(destination))
    parent = posixpath.dirname(destination.rstrip("/")) or "."
    if not os.path.isdir(parent):
        raise NotFoundError(f"no such directory: {parent}", path=parent)


def _refuse_destination(destination: str, where: str, exists: bool) -> None:
    if exists:
        raise CorralError(
            f"{where}{destination}: not a directory (several sources go into a directory)",
            path=destination,
        )
    raise NotFoundError(
        f"{where}no such directory: {destination} (several sources go into a directory)",
        path=destination,
    )


def _raise_for(moved: Moved, node: str, outward: bool, destination: str) -> None:
    """Raise the error that ended a copy that did not succeed, from the side that caused it."""
    sender, receiver = moved.sender, moved.receiver
    sender_at, receiver_at = ("", f"{node}: ") if outward else (f"{node}: ", "")
    if sender.code == MISSING_SOURCE:
        said = sender.stderr.splitlines()
        missing = [line.removeprefix("missing ") for line in said if line.startswith("missing ")]
        shown = ", ".join(escape_controls(path) for path in missing)
        raise NotFoundError(f"{sender_at}no such file or directory: {shown}", node=node)
    if receiver is not None and receiver.code == NOT_A_DIRECTORY:
        _refuse_destination(destination, receiver_at, exists=True)
    if receiver is not None and receiver.code == NO_PARENT:
        parent = posixpath.dirname(destination.rstrip("/")) or "."
        raise NotFoundError(f"{receiver_at}no such directory: {parent}", node=node)
    # a receiver that stopped reading is why its sender failed; else the sender is why
    # its receiver failed (a stream cut short)
    if receiver is not None and receiver.code != 0 and moved.cut_short:
        _failed(receiver, receiver_at, node)
    if sender.code != 0:
        _failed(sender, sender_at, node)
    if receiver is None:
        raise CorralError(f"{sender_at}nothing was sent", node=node)
    if receiver.code != 0:
        _failed(receiver, receiver_at, node)


def _failed(side: Ended, where: str, node: str) -> None:
    said = "; ".join(escape_controls(line) for line in side.stderr.splitlines()[-5:] if line)
    if where and side.code == 255:
        raise CorralError(f"{where}ssh failed: {said or 'no reason given'}", node=node)
    how = f"exit {side.code}" if side.code > 0 else f"signal {-side.code}"
    raise CorralError(f"{where}copy failed ({how}){': ' + said if said else ''}", node=node)
