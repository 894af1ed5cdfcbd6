"""API tokens: made once, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.errors import AuthError, ForbiddenError
from corral.store.models import User

TOKEN_PREFIX = "crl_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def write_token_file(path: Path, token: str) -> None:
    """Write `token` to `path`, readable by its owner alone (also if it was there before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(session: Session, token: str | None) -> User:
    """Return the user whose token this is; raises AuthError for none or an unknown one."""
    if not token:
        raise AuthError("no API token given (set CORRAL_TOKEN or log in with the local service)")
    digest = hash_token(token)
    user = session.scalars(select(User).where(User.token_hash == digest)).first()
    if user is None or not hmac.compare_digest(user.token_hash, digest):
        raise AuthError("unknown API token")
    return user


def require_admin(user: User) -> None:
    """Raise ForbiddenError unless `user` is an admin."""
    if not user.is_admin:
        raise ForbiddenError(f"user {user.name} is not an admin")
