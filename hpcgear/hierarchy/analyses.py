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
from hpcgear.hierarchy.paths import ID_PREFIX as ID_PREFIX
from hpcgear.hierarchy.paths import MIN_ID_PREFIX as MIN_ID_PREFIX
from hpcgear.hierarchy.paths import pick_analysis


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
    return pick_analysis(parent, analyses_of(session, parent), segment)


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
