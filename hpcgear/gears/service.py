"""Gear installation and lookup (the gear table).

Several versions of a gear live side by side; "latest" is the most recently
installed enabled version. Jobs always pin an exact version and image digest.
Installing the same name@version again is a no-op when the manifest is
identical and refused when it differs. SIF images given at install time go
into the content-addressed object store, so the digest *is* the storage key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpcgear.db.models import Gear
from hpcgear.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from hpcgear.gears.manifest import GearManifest, load_manifest, parse_manifest
from hpcgear.hierarchy.permissions import get_actor, require_site_admin
from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstallResult:
    gear: Gear
    created: bool
    image_stored: bool


def split_ref(ref: str) -> tuple[str, str | None]:
    """``name[@version]`` -> (name, version or None)."""
    ref = (ref or "").strip()
    if not ref:
        raise InvalidInputError("empty gear reference", "write NAME or NAME@VERSION")
    name, _, version = ref.partition("@")
    if not name:
        raise InvalidInputError(f"bad gear reference {ref!r}", "write NAME or NAME@VERSION")
    return name, (version or None)


def install_gear(
    session: Session,
    store: ObjectStore,
    actor: str,
    source: Path,
    *,
    image: str | None = None,
) -> InstallResult:
    """Install a gear from a manifest file or a directory holding ``manifest.json``."""
    require_site_admin(session, actor, "installing a gear")
    manifest = load_manifest(source)
    from hpcgear.gears.retry import gear_retry_policies

    gear_retry_policies(manifest.raw, source=str(source))  # refuse a bad retry policy now
    digest: str | None = None
    image_ref = image or manifest.image
    stored = False
    if image:
        candidate = Path(image).expanduser()
        if candidate.is_file():
            obj = store.put_file(candidate)
            digest, stored, image_ref = obj.hash, True, str(candidate.resolve())
        elif "://" not in image and ("/" in image or image.endswith((".sif", ".simg"))):
            raise NotFoundError(
                f"image file {image} does not exist",
                "build it first (hpcgear gear build) or give a registry reference",
            )
    existing = session.scalar(
        select(Gear).where(Gear.name == manifest.name, Gear.version == manifest.version)
    )
    if existing is not None:
        if existing.manifest_sha256 != manifest.sha256:
            raise AlreadyExistsError(
                f"gear {manifest.name}@{manifest.version} is already installed with a "
                "different manifest",
                "bump the manifest's version: installed versions are immutable",
            )
        if digest and existing.image_digest != digest:
            if existing.image_digest:
                raise AlreadyExistsError(
                    f"gear {manifest.name}@{manifest.version} is installed with image "
                    f"{existing.image_digest[:19]}, not {digest[:19]}",
                    "bump the manifest's version to change the image",
                )
            existing.image_digest, existing.image_ref = digest, image_ref
            session.flush()
            return InstallResult(existing, created=False, image_stored=stored)
        return InstallResult(existing, created=False, image_stored=False)
    row = Gear(
        name=manifest.name,
        version=manifest.version,
        manifest=manifest.raw,
        manifest_sha256=manifest.sha256,
        category=manifest.category,
        image_ref=image_ref,
        image_digest=digest,
        installed_by=actor,
    )
    session.add(row)
    session.flush()
    logger.info("installed gear %s@%s image=%s", row.name, row.version, digest)
    return InstallResult(row, created=True, image_stored=stored)


def get_gear(session: Session, ref: str, *, include_disabled: bool = False) -> Gear:
    """Resolve ``name[@version]``; no version means the latest installed enabled one."""
    name, version = split_ref(ref)
    q = select(Gear).where(Gear.name == name)
    if version is not None:
        row = session.scalar(q.where(Gear.version == version))
        if row is None:
            known = session.scalars(select(Gear.version).where(Gear.name == name)).all()
            raise NotFoundError(
                f"gear {name}@{version} is not installed",
                f"installed versions: {', '.join(known)}"
                if known
                else "list gears with `hpcgear gear list`",
            )
        if row.disabled and not include_disabled:
            raise InvalidInputError(
                f"gear {name}@{version} is disabled", "pick another version (hpcgear gear list)"
            )
        return row
    if not include_disabled:
        q = q.where(Gear.disabled.is_(False))
    row = session.scalar(q.order_by(Gear.id.desc()).limit(1))
    if row is None:
        raise NotFoundError(
            f"no enabled gear named {name!r} is installed",
            "list gears with `hpcgear gear list`; a site admin installs them with "
            "`hpcgear gear install`",
        )
    return row


def manifest_of(gear: Gear) -> GearManifest:
    return parse_manifest(gear.manifest, source=f"{gear.name}@{gear.version}")


def list_gears(session: Session, actor: str, *, include_disabled: bool = True) -> list[Gear]:
    get_actor(session, actor)
    q = select(Gear).order_by(Gear.name, Gear.id)
    if not include_disabled:
        q = q.where(Gear.disabled.is_(False))
    return list(session.scalars(q))


def set_disabled(session: Session, actor: str, ref: str, disabled: bool = True) -> Gear:
    require_site_admin(session, actor, "disabling a gear" if disabled else "enabling a gear")
    name, version = split_ref(ref)
    if version is None:
        raise InvalidInputError(
            f"{ref!r} names no version", f"write {name}@VERSION (see `hpcgear gear list`)"
        )
    row = get_gear(session, ref, include_disabled=True)
    row.disabled = disabled
    session.flush()
    return row


def set_image(session: Session, actor: str, ref: str, digest: str, image_ref: str) -> Gear:
    """Attach a built image to an installed gear that has none yet."""
    require_site_admin(session, actor, "setting a gear's image")
    row = get_gear(session, ref, include_disabled=True)
    if row.image_digest and row.image_digest != digest:
        raise AlreadyExistsError(
            f"gear {row.name}@{row.version} already has image {row.image_digest[:19]}",
            "bump the manifest's version to change the image",
        )
    row.image_digest, row.image_ref = digest, image_ref
    session.flush()
    return row


def gear_summary(gear: Gear) -> dict[str, Any]:
    m = gear.manifest
    return {
        "name": gear.name,
        "version": gear.version,
        "label": m.get("label", ""),
        "category": gear.category,
        "image_ref": gear.image_ref,
        "image_digest": gear.image_digest,
        "manifest_sha256": gear.manifest_sha256,
        "disabled": gear.disabled,
        "installed_by": gear.installed_by,
        "installed": gear.installed.isoformat() if gear.installed else None,
        "inputs": sorted((m.get("inputs") or {}).keys()),
        "config": sorted((m.get("config") or {}).keys()),
        "bids_view": _bids_view_summary(gear),
    }


def _bids_view_summary(gear: Gear) -> dict[str, Any] | None:
    """Where the gear's BIDS view goes and which datatypes it holds (None: no view)."""
    custom = (gear.manifest or {}).get("custom")
    if not isinstance(custom, dict) or "hpcgear" not in custom:
        return None  # no manifest parse for the common case (gear list of many gears)
    view = parse_manifest(gear.manifest, source=f"{gear.name}@{gear.version}").bids_view
    if view is None:
        return None
    return {"dir": view.dir, "data_types": list(view.data_types)}
