"""Which service holds a store: the one service whose engine acts on the store's machines.

One row (store_holder) names it: instance id, host, pid, API URL, since when, and a
heartbeat it renews every couple of seconds from a thread of its own. A service that
opens a store another one holds refuses to start (StoreHeldError, naming the holder),
unless that holder is gone:

- its heartbeat is older than the time-to-live: it stalled, or its machine went away;
- or it ran on this machine, in this pid namespace, and its process has ended (the pid
  is free, or belongs to a process started at another time: pids are reused), so a
  service killed with kill -9 can be started again at once.

Claims and renewals are conditional writes (an insert, or an update of the row as it
was read), so of two services racing for a store exactly one wins, on SQLite and
PostgreSQL alike. A holder that finds its row taken by another, or that cannot renew it
for half the time-to-live (before any other may take it), has lost the store: its
`on_lost` is called once, and the service must stop acting on machines at once.
A heartbeat's age is read against the reader's clock: machines that share a PostgreSQL
store keep their clocks within a few seconds of each other (NTP).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from corral.errors import StoreHeldError
from corral.store.database import Store
from corral.store.models import StoreHolder, utcnow
from corral.units import format_duration

log = logging.getLogger(__name__)

HOLDER_ID = 1  # the row's key: a store has one holder


@dataclass(frozen=True)
class Process:
    """A process, told apart from every other that had or will have its pid."""

    hostname: str
    pid: int
    # this boot of the machine and the pid namespace: where they match, pids compare
    pid_space: str
    started: int | None  # clock ticks after boot (/proc/PID/stat); None if unknown

    @classmethod
    def this(cls) -> Process:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _pid_space(), _start_ticks(pid))

    def has_ended(self) -> bool:
        """True only when this process is known to have ended: it ran where pids can be
        compared with ours, and its pid is free or now names a younger process."""
        if not self.pid_space or self.pid_space != _pid_space():
            return False
        now = _start_ticks(self.pid)
        return now is None or (self.started is not None and now != self.started)


class StoreHold:
    """This service's hold on its store: `claim()` it, renewed until `release()`."""

    def __init__(
        self,
        store: Store,
        instance: str,
        api_url: str,
        ttl: timedelta,
        renew_every: timedelta,
        on_lost: Callable[[StoreHeldError], None] | None = None,
    ) -> None:
        self.store = store
        self.instance = instance
        self.api_url = api_url
        self.ttl = ttl
        self.renew_every = renew_every
        self.on_lost = on_lost
        # set once, when another service took the store over or it could not be renewed
        self.lost: StoreHeldError | None = None
        self._held = False
        self._renewed = 0.0  # monotonic time of the last renewal's start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def store_name(self) -> str:
        return self.store.engine.url.render_as_string(hide_password=True)

    def claim(self) -> None:
        """Hold the store from now on, renewing it on a thread.

        Raises StoreHeldError, naming the holder, when another live service holds it.
        """
        for _ in range(5):  # each round either wins or sees a row another just wrote
            with self.store.session() as session:
                row = session.get(StoreHolder, HOLDER_ID)
            now = utcnow()
            if row is None:
                won = self._insert(now)
            else:
                gone = self._why_gone(row, now)
                if gone is None:
                    raise self._error(
                        row,
                        f"the store {self.store_name} is held by",
                        "; stop that service first, or give this one a store of its own "
                        "(--data-dir or --db)",
                    )
                log.warning(
                    "taking over store %s from service %s (host %s, pid %s): %s",
                    self.store_name,
                    row.instance,
                    row.hostname,
                    row.pid,
                    gone,
                )
                won = self._take_over(row, now)
            if won:
                break
        else:
            raise StoreHeldError(f"could not claim store {self.store_name}: others kept at it")
        self._held = True
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._renew, name="corral-hold", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the store up; nothing if it was lost or never held."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if not self._held or self.lost is not None:
            return
        self._held = False
        try:
            with self.store.session() as session:
                session.execute(
                    delete(StoreHolder).where(
                        StoreHolder.id == HOLDER_ID, StoreHolder.instance == self.instance
                    )
                )
        except SQLAlchemyError as exc:  # it lapses by itself after the time-to-live
            log.warning("could not release store %s: %s", self.store_name, exc)

    # -- claiming ----------------------------------------------------------------------

    def _why_gone(self, row: StoreHolder, now: datetime) -> str | None:
        """Why the holder of `row` no longer holds the store; None if it may still."""
        silent = now - row.heartbeat
        if silent > self.ttl:
            return f"its last heartbeat was {format_duration(silent)} ago"
        holder = Process(row.hostname, row.pid, row.pid_space, row.process_start)
        if holder.has_ended():
            return "its process has ended"
        return None

    def _mine(self, now: datetime) -> dict[str, object]:
        me = Process.this()
        return {
            "instance": self.instance,
            "hostname": me.hostname,
            "pid": me.pid,
            "pid_space": me.pid_space,
            "process_start": me.started,
            "api_url": self.api_url,
            "since": now,
            "heartbeat": now,
        }

    def _insert(self, now: datetime) -> bool:
        try:
            with self.store.session() as session:
                session.execute(insert(StoreHolder).values(id=HOLDER_ID, **self._mine(now)))
        except IntegrityError:  # another service inserted its row first
            return False
        return True

    def _take_over(self, row: StoreHolder, now: datetime) -> bool:
        with self.store.session() as session:
            result = session.execute(
                update(StoreHolder)
                .where(
                    StoreHolder.id == HOLDER_ID,
                    StoreHolder.instance == row.instance,
                    StoreHolder.heartbeat == row.heartbeat,
                )
                .values(**self._mine(now))
            )
        return result.rowcount == 1

    # -- holding -----------------------------------------------------------------------

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every.total_seconds()):
            attempt = time.monotonic()
            try:
                with self.store.session() as session:
                    result = session.execute(
                        update(StoreHolder)
                        .where(StoreHolder.id == HOLDER_ID, StoreHolder.instance == self.instance)
                        .values(heartbeat=utcnow())
                    )
            except SQLAlchemyError as exc:
                overdue = attempt - self._renewed
                if overdue < self.ttl.total_seconds() / 2:
                    log.warning("could not renew the hold on store %s: %s", self.store_name, exc)
                    continue
                self._lose(
                    StoreHeldError(
                        f"could not renew the hold on store {self.store_name} for "
                        f"{overdue:.0f}s ({exc}); another service may take it over"
                    )
                )
                return
            if result.rowcount != 1:
                self._lose(self._taken_over())
                return
            self._renewed = attempt

    def _taken_over(self) -> StoreHeldError:
        try:
            with self.store.session() as session:
                row = session.get(StoreHolder, HOLDER_ID)
        except SQLAlchemyError:
            row = None
        if row is None:
            return StoreHeldError(f"the hold on store {self.store_name} was removed by another")
        return self._error(row, f"the store {self.store_name} was taken over by")

    def _lose(self, error: StoreHeldError) -> None:
        self.lost = error
        log.error("%s; this service stops acting on machines", error.message)
        if self.on_lost is not None:
            self.on_lost(error)

    def _error(self, row: StoreHolder, what: str, advice: str = "") -> StoreHeldError:
        since = row.since.isoformat(timespec="seconds")
        return StoreHeldError(
            f"{what} corral service {row.instance} on host {row.hostname}, pid {row.pid}, "
            f"API {row.api_url}, since {since}{advice}",
            instance=row.instance,
            hostname=row.hostname,
            pid=row.pid,
            api_url=row.api_url,
            since=since,
        )


def _pid_space() -> str:
    """This boot of this machine and this process's pid namespace ('' if unknown)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot; None if it is no more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name before it may hold anything
    if fields[0] in ("Z", "X"):  # a zombie has ended; only its exit status is left
        return None
    return int(fields[19])
