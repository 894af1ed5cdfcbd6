"""Ids of what the service creates: a prefix and random hex (`c-1a2b3c4d`, `w-...`)."""

from __future__ import annotations

import secrets


def new_id(prefix: str, nbytes: int = 4) -> str:
    return f"{prefix}-{secrets.token_hex(nbytes)}"
