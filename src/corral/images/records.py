"""The service's image records: names that point to digests in its image store.

A launch resolves each group's image name to a digest and pins it (service/clusters.py),
so pointing a name at a new digest never changes a running cluster.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from corral.errors import ConflictError, NotFoundError
from corral.images.store import ImageStore
from corral.lifecycle import NodeState
from corral.store.models import Image, Node, utcnow


def register(
    session: Session,
    store: ImageStore,
    name: str,
    digest: str,
    size_bytes: int | None = None,
    replace: bool = False,
) -> tuple[Image, bool]:
    """Point `name` at `digest`; returns the record and whether it changed.

    Raises NotFoundError when the store lacks the digest, and ConflictError when the
    name points to another digest and `replace` is false.
    """
    if not store.has(digest):
        raise NotFoundError(
            f"no image {digest} in the service's image store {store.root}; "
            "bake or import it on the service's machine first",
            digest=digest,
        )
    size = size_bytes if size_bytes is not None else store.get(digest).size_bytes
    image = session.get(Image, name)
    if image is not None and image.digest == digest:
        return image, False
    if image is not None and not replace:
        raise ConflictError(
            f"image {name} already names {image.digest}; replace it to point it at {digest}",
            image=name,
            digest=image.digest,
        )
    if image is None:
        image = Image(name=name, digest=digest, size_bytes=size, created_at=utcnow())
        session.add(image)
    else:
        image.digest, image.size_bytes, image.created_at = digest, size, utcnow()
    session.flush()
    return image, True


def remove(session: Session, name: str) -> tuple[Image, list[str]]:
    """Delete the record `name`; returns it with the other names of its digest.

    Raises NotFoundError for an unknown name, and ConflictError while a live node was
    launched from this name or runs this digest.
    """
    image = session.get(Image, name)
    if image is None:
        raise NotFoundError(f"no image {name}", image=name)
    users = session.execute(
        select(Node.cluster_id, Node.name).where(
            Node.state != NodeState.TERMINATED,
            or_(Node.image == name, Node.image_digest == image.digest),
        )
    ).all()
    if users:
        clusters = sorted({cluster for cluster, _ in users})
        raise ConflictError(
            f"image {name} is in use by {len(users)} live node(s) of cluster(s) "
            f"{', '.join(clusters)}; destroy them first",
            image=name,
            clusters=clusters,
        )
    others = list(
        session.scalars(select(Image.name).where(Image.digest == image.digest, Image.name != name))
    )
    session.delete(image)
    session.flush()
    return image, sorted(others)


def list_images(session: Session) -> list[Image]:
    return list(session.scalars(select(Image).order_by(Image.name)))
