"""A backend's machine records in a state file, so its machines are found again after a
restart of the service (they outlive it). Written whole and renamed into place, so a crash
leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

Record = TypeVar("Record")


def load_records(path: Path | None, record: type[Record]) -> dict[str, Record]:
    """The records in `path` by node id; none when there is no file."""
    if path is None or not path.exists():
        return {}
    records = [record(**_renamed(fields)) for fields in json.loads(path.read_text())]
    return {r.node_id: r for r in records}  # type: ignore[attr-defined]


def save_records(path: Path | None, records: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in records.values()]))
    os.replace(tmp, path)


def _renamed(fields: dict) -> dict:
    """A record as this version names its fields (0.2.0 wrote workspace_id)."""
    if "workspace_id" in fields:
        fields = dict(fields, node_id=fields["workspace_id"])
        del fields["workspace_id"]
    return fields
