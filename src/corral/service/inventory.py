"""Admin records: users with their tokens and quotas, pools, and hosts with their capacity.

Users and hosts are removed softly: the clusters they ran keep naming them, so their rows
stay, marked removed (a user's token stops working; a host takes no more nodes).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral import names
from corral.errors import ConflictError, NotFoundError
from corral.lifecycle import NodeState
from corral.service.auth import hash_token, new_token
from corral.service.scheduler import HostCapacity
from corral.store.models import Cluster, Host, Node, Pool, User, utcnow


def add_user(
    session: Session,
    name: str,
    is_admin: bool = False,
    max_nodes: int | None = None,
    max_node_hours: float | None = None,
) -> tuple[User, str]:
    """Create a user; returns it with its token, which is never stored in clear.

    Raises BadRequestError for a name against names.ACCOUNT, ConflictError for a taken one.
    """
    names.ACCOUNT.require(name)
    if session.scalars(select(User).where(User.name == name)).first():
        raise ConflictError(f"user {name} already exists", user=name)
    token = new_token()
    user = User(
        name=name,
        token_hash=hash_token(token),
        is_admin=is_admin,
        max_nodes=max_nodes,
        max_node_hours=max_node_hours,
    )
    session.add(user)
    session.flush()
    return user, token


def get_user(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFoundError(f"no user {name}", user=name)
    return user


def remove_user(session: Session, name: str) -> None:
    """Delete a user who holds no live cluster and is not the last admin; raises
    ConflictError otherwise."""
    user = get_user(session, name)
    if user.is_admin and _active_admins(session) == 1:
        raise ConflictError(
            f"user {name} is the last admin; make another first (`corral user add NAME --admin`)",
            user=name,
        )
    live = session.scalar(
        select(func.count(Cluster.id)).where(
            Cluster.owner_id == user.id, Cluster.state != "terminated"
        )
    )
    if live:
        raise ConflictError(
            f"user {name} still has {live} live cluster(s); destroy them first", user=name
        )
    # their cluster history stays; the user can no longer log in. The name is freed, and
    # the new one is not a valid name, so no one can take it, and fits the column.
    user.token_hash = f"removed:{user.id}"
    user.name = f"{user.name[:32]}~removed{user.id}"


def recover_admin(session: Session, name: str = "admin") -> tuple[User, str]:
    """Give user `name` admin rights and a new token, creating it if need be: the way back
    in for someone with access to the service's store when no admin token is left.

    Raises ConflictError for a name that breaks the rule for user names.
    """
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        return add_user(session, name, is_admin=True)
    token = new_token()
    user.token_hash = hash_token(token)
    user.is_admin = True
    return user, token


def _active_admins(session: Session) -> int:
    return session.scalar(
        select(func.count(User.id)).where(
            User.is_admin.is_(True), ~User.token_hash.startswith("removed:")
        )
    )


def ensure_pool(
    session: Session, name: str, backend: str, address_range: str, subnet_prefix: int
) -> Pool:
    """Return the pool `name`, creating it on first use."""
    pool = session.get(Pool, name)
    if pool is None:
        pool = Pool(
            name=name, backend=backend, address_range=address_range, subnet_prefix=subnet_prefix
        )
        session.add(pool)
        session.flush()
    return pool


def add_host(session: Session, name: str, pool: str, cores: int, memory_mib: int) -> Host:
    """Register a host's capacity in a pool, or bring back a removed host of that name.

    Raises BadRequestError for a name against names.ACCOUNT, NotFoundError for an unknown
    pool, and ConflictError when a host of that name is registered.
    """
    names.ACCOUNT.require(name)
    if cores < 1 or memory_mib < 1:
        raise ConflictError(f"host {name}: cores and memory must be positive", host=name)
    if session.get(Pool, pool) is None:
        raise NotFoundError(f"no pool {pool}", pool=pool)
    host = session.get(Host, name)
    if host is not None and host.removed_at is None:
        raise ConflictError(f"host {name} already exists", host=name)
    if host is not None:  # removed, kept for the clusters that ran on it: it comes back
        host.pool_name, host.cores, host.memory_mib = pool, cores, memory_mib
        host.enabled, host.removed_at = True, None
    else:
        host = Host(name=name, pool_name=pool, cores=cores, memory_mib=memory_mib)
        session.add(host)
    try:
        session.flush()
    except IntegrityError as exc:
        raise ConflictError(f"host {name} already exists", host=name) from exc
    return host


def remove_host(session: Session, name: str) -> None:
    """Remove a host that runs no live node: it takes no more nodes and is no longer
    listed, and the row stays for the clusters that ran there.

    Raises NotFoundError for an unknown (or removed) host, ConflictError for a busy one.
    """
    host = session.get(Host, name)
    if host is None or host.removed_at is not None:
        raise NotFoundError(f"no host {name}", host=name)
    busy = session.scalar(
        select(func.count(Node.id)).where(
            Node.host_name == name, Node.state != NodeState.TERMINATED
        )
    )
    if busy:
        raise ConflictError(f"host {name} still runs {busy} node(s)", host=name)
    host.removed_at = utcnow()


def host_capacities(session: Session, pool: str | None = None) -> list[HostCapacity]:
    """Every host (of one pool, or all) with what its live nodes leave free; removed
    hosts are not among them."""
    used = dict(
        (name, (cores or 0, mem or 0))
        for name, cores, mem in session.execute(
            select(Node.host_name, func.sum(Node.cores), func.sum(Node.memory_mib))
            .where(Node.state != NodeState.TERMINATED)
            .group_by(Node.host_name)
        ).all()
    )
    query = select(Host).where(Host.removed_at.is_(None)).order_by(Host.name)
    if pool is not None:
        query = query.where(Host.pool_name == pool)
    result = []
    for host in session.scalars(query):
        used_cores, used_mem = used.get(host.name, (0, 0))
        result.append(
            HostCapacity(
                name=host.name,
                pool=host.pool_name,
                enabled=host.enabled,
                cores=host.cores,
                memory_mib=host.memory_mib,
                free_cores=host.cores - used_cores,
                free_memory_mib=host.memory_mib - used_mem,
            )
        )
    return result
