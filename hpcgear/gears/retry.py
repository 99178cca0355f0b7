"""A gear's own retry policies, from its manifest (checked when it is installed).

Policies per failure kind: built-in defaults < site ``retry:`` < gear manifest.

A gear may carry its own policy in its manifest, which Flywheel keeps verbatim
under ``custom``::

    "custom": {"hpcgear": {"retry": {"oom": {"max_attempts": 3, "mem_factor": 2}}}}

It wins over the site's entry for the same kind (the gear's authors know its
memory habits best). Checked when the gear is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcgear.config.schema import Where, build
from hpcgear.config.site import RetryPolicy
from hpcgear.errors import ManifestError, SchemaError
from hpcgear.states import FailureKind


def gear_retry_policies(
    manifest: Mapping[str, Any], source: str = "manifest"
) -> dict[FailureKind, RetryPolicy]:
    """The gear's own retry policies (``custom.hpcgear.retry``); ManifestError if bad."""
    custom = manifest.get("custom") or {}
    hp = custom.get("hpcgear") if isinstance(custom, Mapping) else None
    raw = hp.get("retry") if isinstance(hp, Mapping) else None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ManifestError(
            f"{source}: custom.hpcgear.retry must be a mapping of failure kinds",
            'e.g. {"oom": {"max_attempts": 3, "mem_factor": 2}}',
        )
    out: dict[FailureKind, RetryPolicy] = {}
    valid = ", ".join(k.value for k in FailureKind)
    for kind, spec in raw.items():
        try:
            fk = FailureKind(kind)
        except ValueError:
            raise ManifestError(
                f"{source}: custom.hpcgear.retry: unknown failure kind {kind!r}",
                f"valid kinds: {valid}",
            ) from None
        try:
            out[fk] = build(
                RetryPolicy,
                dict(spec) if isinstance(spec, Mapping) else spec,
                Where(source, f"custom.hpcgear.retry.{kind}", 1),
            )
        except SchemaError as exc:
            raise ManifestError(exc.message, exc.hint) from None
    return out
