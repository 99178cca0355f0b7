"""The retry policy of one failure kind: built-in defaults < site ``retry:`` < gear manifest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcgear.config.site import RetryPolicy, SiteConfig
from hpcgear.gears.retry import gear_retry_policies
from hpcgear.states import FailureKind

__all__ = ["gear_retry_policies", "retry_policy"]


def retry_policy(
    site: SiteConfig, kind: FailureKind, manifest: Mapping[str, Any] | None = None
) -> RetryPolicy:
    if manifest is not None:
        own = gear_retry_policies(manifest)
        if kind in own:
            return own[kind]
    return site.retry_policy(kind)
