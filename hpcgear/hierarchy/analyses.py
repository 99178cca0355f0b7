"""Analyses as path segments: how a path names an analysis, unambiguously.

An analysis hangs below a project, subject, session or acquisition and holds
files only. In a path it is named by the segment after its parent:

* its **label** (``group/project/sub-01/ses-01/bids-mriqc 2026-12-03 19:58:12``),
  when exactly one analysis of that parent carries the label and no ordinary
  child (subject/session/acquisition) of the parent has the same label, or
* ``@ID`` (``group/project/sub-01/ses-01/@6650a1f2c3d4e5f6a7b8c9d0``): the
  analysis id, or a unique prefix of at least 6 characters. This always works.

An ordinary child with the same label takes precedence over an analysis, and
a file is reached only through its container, so ``PATH/ANALYSIS/FILE`` names a
file of an analysis. ``analysis_segment`` gives the form a listing or download
should print so the printed path resolves back to the same analysis.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Container
from hpcgear.errors import InvalidInputError

ID_PREFIX = "@"
MIN_ID_PREFIX = 6


def analyses_of(session: Session, parent: Container) -> list[Container]:
    return list(
        session.scalars(
            select(Container)
            .where(Container.parent_id == parent.id, Container.type == "analysis")
            .order_by(Container.created, Container.id)
        )
    )


def find_analysis(session: Session, parent: Container, segment: str) -> Container | None:
    """The analysis of ``parent`` named by ``segment`` (label or ``@ID``), or None.

    Raises InvalidInputError when a label names several analyses.
    """
    if parent.type in ("group", "analysis"):
        return None
    candidates = analyses_of(session, parent)
    if segment.startswith(ID_PREFIX) and len(segment) > MIN_ID_PREFIX:
        prefix = segment[len(ID_PREFIX) :]
        by_id = [a for a in candidates if a.id.startswith(prefix)]
        if len(by_id) == 1:
            return by_id[0]
        if len(by_id) > 1:
            raise InvalidInputError(
                f"analysis id prefix {prefix!r} matches {len(by_id)} analyses of "
                f"{parent.type} {parent.label!r}",
                "give more characters of the id (`hpcgear ls` shows the full ids)",
            )
    by_label = [a for a in candidates if a.label == segment]
    if len(by_label) > 1:
        refs = ", ".join(ID_PREFIX + a.id for a in by_label[:5])
        raise InvalidInputError(
            f"{len(by_label)} analyses of {parent.type} {parent.label!r} are labelled {segment!r}",
            f"name one by id instead of its label: {refs}",
        )
    return by_label[0] if by_label else None


def analysis_segment(session: Session, analysis: Container) -> str:
    """The path segment that names ``analysis`` unambiguously (label, else ``@ID``)."""
    if analysis.parent_id is None:
        return ID_PREFIX + analysis.id
    label = analysis.label
    clash = session.scalar(
        select(Container.id).where(
            Container.parent_id == analysis.parent_id,
            Container.id != analysis.id,
            Container.label == label,
        )
    )
    if clash is not None or label.startswith(ID_PREFIX):
        return ID_PREFIX + analysis.id
    return label
