"""Moved to :mod:`hpcgear.spec`; re-exported for code written before the move."""

from hpcgear.spec import GearRef, InputSpec, JobSpec, Resources

__all__ = ["GearRef", "InputSpec", "JobSpec", "Resources"]
