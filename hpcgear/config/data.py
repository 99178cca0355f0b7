"""Files shipped with hpcgear: sbatch templates and example site configs.

In a wheel they live under ``hpcgear/_data/`` (see ``pyproject.toml``
force-include); in a source checkout they are the top-level ``sbatch_templates/``
and ``site_configs/`` directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpcgear.errors import ConfigError

if TYPE_CHECKING:
    from hpcgear.config.site import SiteConfig

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_SITE_FILE = "dev.yaml"


def shipped_dir(name: str) -> Path:
    """The shipped directory ``name`` (``sbatch_templates`` or ``site_configs``)."""
    for candidate in (_PACKAGE_ROOT / "_data" / name, _PACKAGE_ROOT.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"hpcgear's shipped {name}/ directory is missing",
        "reinstall hpcgear; the wheel must contain hpcgear/_data/" + name,
    )


def embedded_site(
    *,
    scratch_root: str | None = None,
    storage_root: str | None = None,
    image_cache: str | None = None,
) -> SiteConfig:
    """The embedded local site (``site_configs/dev.yaml``), optionally with other roots.

    The controller uses it when no site config is given; the roots usually come
    from the user's settings (``Settings.scratch_root`` / ``storage_root``).
    """
    from hpcgear.config.site import load_site

    site = load_site(shipped_dir("site_configs") / EMBEDDED_SITE_FILE)
    return site.with_roots(
        scratch_root=scratch_root, storage_root=storage_root, image_cache=image_cache
    )
