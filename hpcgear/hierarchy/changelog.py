"""The change-log row a metadata change writes (what gear rules and feeds read)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from hpcgear.db.models import ChangeLog, File

__all__ = ["log_meta_change"]


def log_meta_change(
    session: Session, actor: str, container_id: str, file: File | None = None
) -> None:
    """Record that ``file`` (on ``container_id``), or the container itself, changed.

    The caller flushes (one flush for a batch of changes).
    """
    session.add(
        ChangeLog(
            kind="file.meta" if file is not None else "container.meta",
            container_id=container_id,
            file_id=file.id if file is not None else None,
            file_version=file.current_version if file is not None else None,
            actor=actor,
        )
    )
