"""Build a bundled gear's SIF image from its recipe (``build.yaml``), with caching.

A bundled gear directory (``containers/<name>/``) holds ``manifest.json``, the
run script, ``build.yaml`` (the recipe this module reads), a generated
``Apptainer.def`` (the same image for sites that build from a registry) and a
README. The recipe::

    # containers/dcm2niix/build.yaml
    base: debian-bookworm-minbase        # one of BASES
    packages: [dcm2niix, pigz, python3]  # Debian packages (no recommends)
    remove: []                           # hard dependencies the gear never uses (purged)
    files:                               # gear-dir relative source: path in the image
      run.py: /flywheel/v0/run.py
      manifest.json: /flywheel/v0/manifest.json
    vendor:                              # an hpcgear module copied in verbatim (stdlib only)
      hpcgear.ingest.classifier: /flywheel/v0/classifier.py
    environment: {FLYWHEEL: /flywheel/v0}
    runscript: python3 /flywheel/v0/run.py   # optional; default: the manifest command
    labels: {org.opencontainers.image.title: dcm2niix}

or, for a gear that reuses another bundled gear's image, only
``image: ../test-gear``.

How an image is made, and what is cached (under ``cache_dir``, see
:func:`default_cache_dir`):

1. **Root filesystem**, keyed by the sha256 of (base, suite, variant, sorted
   package list, removals, mirror, builder version): ``debootstrap
   --variant=minbase --include=<packages>`` into ``rootfs/<base>-<key>/``; then
   ``remove:`` packages and every package only they needed are purged (``dpkg
   --purge`` in a chroot; see :func:`dpkg_orphans`), and the tree is trimmed
   (docs, man pages, locales, apt lists; copyright files stay). Gears with the same
   package list share one root filesystem; downloaded .debs are kept in
   ``debs/`` for the next debootstrap. The ``busybox-static`` base is a root
   filesystem holding only Debian's static busybox and its applet links: the
   package comes from ``debootstrap --download-only`` (signature-checked like
   every other package, and it fills ``debs/`` for the Debian gears) and the
   binary is read straight out of the .deb.
2. **SIF**, keyed by the *recipe hash*: the root filesystem key plus the bytes,
   modes and destinations of every file, the environment, runscript and
   labels. ``apptainer build`` runs on a generated definition
   (``Bootstrap: localimage`` from the root filesystem, then ``%files``,
   ``%environment``, ``%runscript``, ``%labels``), so Apptainer writes its own
   metadata. The result lands in ``sif/<name>-<hash16>.sif`` with a JSON
   sidecar. An unchanged recipe is never rebuilt; a changed run script
   rebuilds only the SIF.

Each step holds an exclusive lock (``.locks/``) for its key, so concurrent
builds of the same recipe wait for one another and then reuse the result. The
cache prunes itself: three SIFs per gear are kept, and root filesystems no
cached SIF was built from go after a day without use.
Building needs root (debootstrap) unless everything is cached; sites without
root build from ``Apptainer.def`` instead.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcgear.config.yamlload import LineMap, load_yaml_with_lines
from hpcgear.errors import ImageError, NotFoundError, SchemaError
from hpcgear.gears.images import exclusive_lock
from hpcgear.gears.manifest import GearManifest, did_you_mean, load_manifest
from hpcgear.scheduler.runner import (
    CommandRunner,
    CompletedCommand,
    SubprocessRunner,
    command_failure_message,
)

logger = logging.getLogger(__name__)

RECIPE_FILE = "build.yaml"
DEFINITION_FILE = "Apptainer.def"
#: Bump when the builder's output changes for the same recipe (invalidates every cache key).
BUILDER_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT = 1800.0
APPTAINER_BUILD_TIMEOUT = 3600.0
INSPECT_TIMEOUT = 300.0
LOCK_TIMEOUT = 7200.0
#: Images kept per gear in the build cache (the current recipe's and the previous ones).
KEEP_SIFS = 3
#: Root filesystems no cached image uses are removed after this long without use.
ROOTFS_IDLE_SECONDS = 24 * 3600

#: Where ``pip:`` packages go in the image (on PYTHONPATH; never the system site-packages).
PIP_TARGET = "/opt/hpcgear-pip"
_PIP_PIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")

RECIPE_KEYS = {
    "base": "root filesystem to start from: " + ", ".join(
        ("debian-bookworm-minbase", "busybox-static")),
    "packages": "Debian packages installed into the root filesystem (debootstrap bases only)",
    "remove": "packages a listed package depends on that the gear never uses: purged after "
              "installation with every package only they needed",
    "files": "mapping of gear-directory files to absolute paths in the image",
    "vendor": "mapping of stdlib-only hpcgear modules (e.g. hpcgear.ingest.classifier) "
              "to absolute paths in the image",
    "environment": "environment variables set in the image",
    "runscript": "command `apptainer run` starts (default: the manifest command)",
    "labels": "extra image labels",
    "pip": "Python packages from PyPI, pinned as name==version, installed into "
           f"{PIP_TARGET} (on PYTHONPATH); needs python3 in packages",
    "image": "reuse the image of another bundled gear directory (e.g. ../test-gear); "
             "no other key may be given",
}

ProgressFn = Callable[[str], None]


# --------------------------------------------------------------------------- bases


@dataclass(frozen=True, slots=True)
class Base:
    """A root filesystem the recipes can start from.

    ``registry_image`` is the equivalent public image that ``Apptainer.def``
    bootstraps from on sites with registry access.
    """

    name: str
    kind: Literal["debootstrap", "busybox"]
    suite: str
    variant: str
    registry_image: str
    description: str


BASES: Mapping[str, Base] = {
    "debian-bookworm-minbase": Base(
        name="debian-bookworm-minbase",
        kind="debootstrap",
        suite="bookworm",
        variant="minbase",
        registry_image="debian:bookworm-slim",
        description="Debian 12 (bookworm), debootstrap minbase: essential packages + apt",
    ),
    "busybox-static": Base(
        name="busybox-static",
        kind="busybox",
        suite="bookworm",
        variant="minbase",
        registry_image="busybox:1.36-musl",
        description="only a static busybox (Debian's busybox-static) and its applet links",
    ),
}

#: Paths removed from debootstrap root filesystems (relative, glob patterns).
TRIM_GLOBS = (
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "usr/share/locale/*",
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "var/log/*",
    "var/cache/debconf/*-old",
)
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._+@/=-]+$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9._/-]+$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_RE = re.compile(r"^hpcgear(?:\.[a-z_][a-z0-9_]*)+$")


# --------------------------------------------------------------------------- recipe


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One file copied into the image: host ``source`` -> ``dest``, with its mode.

    ``origin`` is how the recipe named it (a gear-relative path or a module),
    ``def_source`` the path ``Apptainer.def`` uses (relative to the gear dir).
    """

    source: Path
    dest: str
    mode: int
    origin: str
    def_source: str


@dataclass(frozen=True, slots=True)
class BuildRecipe:
    """A validated ``build.yaml`` together with the manifest it builds for.

    For a gear whose recipe says ``image: ../other``, ``recipe_dir`` is the
    other gear's directory and every image field comes from there, while
    ``manifest`` stays this gear's (that is what gets installed).
    """

    gear_dir: Path
    recipe_dir: Path
    manifest: GearManifest
    image_manifest: GearManifest
    base: Base
    packages: tuple[str, ...]
    remove: tuple[str, ...]
    files: tuple[ImageFile, ...]
    environment: tuple[tuple[str, str], ...]
    runscript: str
    labels: tuple[tuple[str, str], ...]
    pip: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def shares_image(self) -> bool:
        return self.recipe_dir != self.gear_dir


def load_recipe(gear_dir: str | os.PathLike[str]) -> BuildRecipe:
    """Read ``<gear_dir>/build.yaml`` (following ``image:``) and validate it.

    Raises
    ------
    NotFoundError
        No such directory, manifest or recipe.
    SchemaError
        The recipe is invalid; the message names ``build.yaml:line`` and the key.
    ManifestError
        The gear's manifest is invalid.
    """
    gear = Path(gear_dir).resolve()
    if not gear.is_dir():
        raise NotFoundError(
            f"gear directory {gear_dir} does not exist (relative to {Path.cwd()})",
            "give a directory holding manifest.json and build.yaml; the bundled gears "
            "(containers/<name>) are in hpcgear's source checkout: run it from there, or "
            "give the full path",
        )
    manifest = load_manifest(gear)
    raw, source = _read_recipe(gear)
    if "image" in raw:
        other_keys = sorted(k for k in raw if k != "image")
        if other_keys:
            raise SchemaError(
                f"{source}:{raw.key_lines['image']}: 'image' cannot be combined with "
                f"{', '.join(other_keys)}",
                "either reuse another gear's image (only 'image:') or give a full recipe",
            )
        ref = raw["image"]
        if not isinstance(ref, str) or not ref:
            raise SchemaError(f"{source}:{raw.key_lines['image']}: image must be a directory path",
                              "e.g. image: ../test-gear")
        other = (gear / ref).resolve()
        if not (other / RECIPE_FILE).is_file():
            raise NotFoundError(f"{source}:{raw.key_lines['image']}: {other} has no {RECIPE_FILE}",
                                "point 'image' at another bundled gear directory")
        other_raw, other_source = _read_recipe(other)
        if "image" in other_raw:
            raise SchemaError(f"{source}: {other_source} reuses an image itself",
                              "point 'image' at the gear that holds the full recipe")
        image_manifest = load_manifest(other)
        return _parse_recipe(other_raw, other_source, other, gear, manifest, image_manifest)
    return _parse_recipe(raw, source, gear, gear, manifest, manifest)


def _read_recipe(gear: Path) -> tuple[LineMap, str]:
    path = gear / RECIPE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist",
                            f"write a {RECIPE_FILE} (see hpcgear/gears/build.py)") from None
    raw = load_yaml_with_lines(text, str(path))
    if not isinstance(raw, LineMap):
        raise SchemaError(f"{path}: the recipe must be a mapping of keys to values",
                          f"valid keys: {', '.join(RECIPE_KEYS)}")
    unknown = [k for k in raw if k not in RECIPE_KEYS]
    if unknown:
        key = unknown[0]
        raise SchemaError(
            f"{path}:{raw.key_lines[key]}: unknown key {key!r}"
            + (did_you_mean(key, RECIPE_KEYS) if isinstance(key, str) else ""),
            f"valid keys: {', '.join(RECIPE_KEYS)}",
        )
    return raw, str(path)


def _parse_recipe(
    raw: LineMap,
    source: str,
    recipe_dir: Path,
    gear_dir: Path,
    manifest: GearManifest,
    image_manifest: GearManifest,
) -> BuildRecipe:
    def where(key: str) -> str:
        return f"{source}:{raw.key_lines.get(key, raw.line)}"

    base_name = raw.get("base")
    if not isinstance(base_name, str) or base_name not in BASES:
        raise SchemaError(
            f"{where('base')}: base {base_name!r} is not known"
            + (did_you_mean(base_name, BASES) if isinstance(base_name, str) else ""),
            f"base must be one of {', '.join(BASES)}",
        )
    base = BASES[base_name]

    packages_raw = raw.get("packages", [])
    if not isinstance(packages_raw, list) or not all(isinstance(p, str) for p in packages_raw):
        raise SchemaError(f"{where('packages')}: packages must be a list of package names",
                          "e.g. packages: [dcm2niix, pigz]")
    bad = [p for p in packages_raw if not _PACKAGE_RE.fullmatch(p)]
    if bad:
        raise SchemaError(f"{where('packages')}: {bad[0]!r} is not a Debian package name",
                          "package names are lower-case letters, digits and + . -")
    if base.kind == "busybox" and packages_raw:
        raise SchemaError(f"{where('packages')}: the busybox-static base takes no packages",
                          "use base: debian-bookworm-minbase to install packages")
    packages = tuple(sorted(set(packages_raw)))
    remove_raw = raw.get("remove", [])
    if (not isinstance(remove_raw, list)
            or not all(isinstance(p, str) and _PACKAGE_RE.fullmatch(p) for p in remove_raw)):
        raise SchemaError(f"{where('remove')}: remove must be a list of package names",
                          "e.g. remove: [python3-scipy]")
    if remove_raw and (base.kind != "debootstrap" or not packages):
        raise SchemaError(f"{where('remove')}: remove needs packages on a debootstrap base",
                          "drop 'remove' or list the packages that pull these in")
    overlap = sorted(set(remove_raw) & set(packages))
    if overlap:
        raise SchemaError(f"{where('remove')}: {overlap[0]} is both installed and removed",
                          "list it under packages or under remove, not both")
    remove = tuple(sorted(set(remove_raw)))

    files: list[ImageFile] = []
    files_raw = _mapping(raw, "files", where)
    if not files_raw:
        raise SchemaError(f"{where('files')}: a recipe must copy at least the run script "
                          "and manifest.json into the image",
                          "files: {run.sh: /flywheel/v0/run.sh, "
                          "manifest.json: /flywheel/v0/manifest.json}")
    for rel, dest in files_raw.items():
        src = (recipe_dir / rel).resolve()
        if not src.is_relative_to(recipe_dir) or not src.is_file():
            raise SchemaError(f"{where('files')}: {rel!r} is not a file inside {recipe_dir}",
                              "list files of the gear directory (no '..', no directories)")
        files.append(ImageFile(src, _check_dest(dest, where("files")), _mode_of(src), rel, rel))
    for module, dest in _mapping(raw, "vendor", where).items():
        src = _vendored_module(module, recipe_dir, where("vendor"))
        def_source = os.path.relpath(src, recipe_dir)
        files.append(ImageFile(src, _check_dest(dest, where("vendor")), 0o644, module,
                               def_source))
    dests = [f.dest for f in files]
    dupes = sorted({d for d in dests if dests.count(d) > 1})
    if dupes:
        raise SchemaError(f"{where('files')}: {dupes[0]} is the destination of two files",
                          "give every file its own destination")
    for f in files:
        if not _SAFE_PATH_RE.fullmatch(str(f.source)):
            raise SchemaError(f"{where('files')}: the path {f.source} has characters a "
                              "definition file cannot carry", "rename it (letters, digits, ._-)")

    environment = tuple(
        (k, v) for k, v in _mapping(raw, "environment", where, values="scalar").items()
    )
    for key, value in environment:
        if not _ENV_RE.fullmatch(key) or "\n" in value or "\0" in value:
            raise SchemaError(f"{where('environment')}: {key}={value!r} cannot be set",
                              "names are shell identifiers; values are one line")

    runscript_raw = raw.get("runscript", image_manifest.command)
    if not isinstance(runscript_raw, str) or not runscript_raw.strip() or "\0" in runscript_raw:
        raise SchemaError(f"{where('runscript')}: no runscript and the manifest has no command",
                          "set runscript: or the manifest's command")
    labels = [
        ("org.hpcgear.gear", f"{image_manifest.name}@{image_manifest.version}"),
        ("org.hpcgear.base", base.name),
    ]
    if packages:
        labels.append(("org.hpcgear.packages", " ".join(packages)))
    for key, value in _mapping(raw, "labels", where, values="scalar").items():
        if not _LABEL_KEY_RE.fullmatch(key) or "\n" in value:
            raise SchemaError(f"{where('labels')}: label {key!r} cannot be written",
                              "label keys are letters, digits and ._/-; values are one line")
        labels.append((key, value))
    pip_raw = raw.get("pip", [])
    if (not isinstance(pip_raw, list)
            or not all(isinstance(p, str) and _PIP_PIN_RE.match(p) for p in pip_raw)):
        raise SchemaError(f"{where('pip')}: pip must be a list of pinned requirements",
                          "e.g. pip: [fw-gear==0.3.7] (name==version, so the image is "
                          "reproducible and cached by its recipe)")
    if pip_raw and "python3" not in packages:
        raise SchemaError(f"{where('pip')}: pip packages need python3 in the image",
                          "add python3 to packages")
    pip = tuple(sorted(set(pip_raw)))
    if pip:
        environment = (*environment, ("PYTHONPATH", PIP_TARGET))
        labels.append(("org.hpcgear.pip", " ".join(pip)))
    return BuildRecipe(
        gear_dir=gear_dir,
        recipe_dir=recipe_dir,
        manifest=manifest,
        image_manifest=image_manifest,
        base=base,
        packages=packages,
        remove=remove,
        files=tuple(sorted(files, key=lambda f: f.dest)),
        environment=environment,
        runscript=runscript_raw.strip(),
        labels=tuple(labels),
        pip=pip,
    )


def _mapping(raw: LineMap, key: str, where: Callable[[str], str], *,
             values: str = "path") -> dict[str, str]:
    value = raw.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SchemaError(f"{where(key)}: {key} must be a mapping", f"{key}: {{NAME: VALUE}}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise SchemaError(f"{where(key)}: {key}.{k} must be a single value",
                              "quote the value")
        out[k] = str(v)
    return out


def _check_dest(dest: str, where: str) -> str:
    parts = dest.split("/")
    if (
        not dest.startswith("/")
        or not _SAFE_PATH_RE.fullmatch(dest)
        or any(p in ("", ".", "..") for p in parts[1:])
        or dest.startswith(("/.singularity.d", "/proc", "/sys", "/dev"))
    ):
        raise SchemaError(f"{where}: {dest!r} is not a usable path in the image",
                          "give an absolute, normalised path such as /flywheel/v0/run.sh")
    return dest


def _mode_of(path: Path) -> int:
    return 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644


def _vendored_module(module: str, recipe_dir: Path, where: str) -> Path:
    """The source file of a stdlib-only hpcgear module, preferring the source checkout."""
    if not _MODULE_RE.fullmatch(module):
        raise SchemaError(f"{where}: {module!r} is not an hpcgear module name",
                          "e.g. hpcgear.ingest.classifier")
    rel = Path(*module.split(".")).with_suffix(".py")
    path: Path | None = None
    for parent in (recipe_dir, *recipe_dir.parents):
        if (parent / "pyproject.toml").is_file() and (parent / rel).is_file():
            path = parent / rel
            break
    if path is None:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            path = Path(spec.origin)
    if path is None:
        raise NotFoundError(f"{where}: module {module} does not exist",
                            "vendor only modules that exist in this hpcgear")
    outside = stdlib_only_problem(path.read_text(encoding="utf-8"))
    if outside:
        raise SchemaError(
            f"{where}: {module} imports {outside}, which the image does not have",
            "vendored modules must use the Python standard library only",
        )
    return path.resolve()


def stdlib_only_problem(source: str) -> str | None:
    """The first non-stdlib module ``source`` imports, or None if it imports stdlib only."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                return "a relative module"
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top != "__future__" and top not in sys.stdlib_module_names:
                return name
    return None


# --------------------------------------------------------------------------- hashing


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def rootfs_key(base: Base, packages: tuple[str, ...], mirror: str,
               remove: tuple[str, ...] = ()) -> str:
    """The cache key (hex) of a root filesystem: base, suite, variant, packages, removals,
    mirror."""
    busybox = base.kind == "busybox"
    return _sha256_text(_canonical({
        "builder": BUILDER_VERSION,
        "base": base.name,
        "kind": base.kind,
        "suite": base.suite,
        "variant": base.variant,
        "packages": ["busybox-static"] if busybox else sorted(packages),
        "remove": sorted(remove),
        "mirror": mirror.rstrip("/"),
        "trim": list(TRIM_GLOBS),
    }))


def recipe_hash(recipe: BuildRecipe, mirror: str) -> str:
    """``sha256:<hex>`` over everything that ends up in the image.

    The root filesystem key, then each file's destination, mode and content
    hash, the environment, the runscript and the labels. Comments, key order
    and formatting of ``build.yaml`` do not matter; a byte changed in a copied
    file does.
    """
    files = []
    for f in recipe.files:
        digest = hashlib.sha256(f.source.read_bytes()).hexdigest()
        files.append([f.dest, f"{f.mode:o}", digest])
    doc = {
        "builder": BUILDER_VERSION,
        "rootfs": rootfs_key(recipe.base, recipe.packages, mirror, recipe.remove),
        "files": files,
        "environment": [list(p) for p in recipe.environment],
        "runscript": recipe.runscript,
        "labels": [list(p) for p in recipe.labels],
    }
    if recipe.pip:  # only when used, so every existing image keeps its hash
        doc["pip"] = list(recipe.pip)
    return "sha256:" + _sha256_text(_canonical(doc))


# --------------------------------------------------------------------------- definitions


def _def_header(bootstrap: str, source: str) -> list[str]:
    return [f"Bootstrap: {bootstrap}", f"From: {source}", ""]


def _def_body(recipe: BuildRecipe, file_lines: list[str], post: list[str],
              extra_labels: tuple[tuple[str, str], ...] = ()) -> list[str]:
    lines = ["%files", *(f"    {line}" for line in file_lines), ""]
    if post:
        lines += ["%post", *(f"    {line}" for line in post), ""]
    if recipe.environment:
        lines += ["%environment"]
        lines += [f"    export {k}={shlex.quote(v)}" for k, v in recipe.environment]
        lines.append("")
    lines += [
        "%runscript",
        "    cd /flywheel/v0",
        f"    exec /bin/sh -c {shlex.quote(recipe.runscript)}",
        "",
        "%labels",
        *(f"    {k} {v}" for k, v in (*recipe.labels, *extra_labels)),
        "",
    ]
    label = recipe.image_manifest.label or recipe.image_manifest.name
    lines += ["%help", f"    {label} (hpcgear bundled gear {recipe.image_manifest.name}@"
              f"{recipe.image_manifest.version}); run by hpcgear with the Flywheel "
              "/flywheel/v0 layout.", ""]
    return lines


def _chmod_lines(recipe: BuildRecipe) -> list[str]:
    by_mode: dict[int, list[str]] = {}
    for f in recipe.files:
        by_mode.setdefault(f.mode, []).append(f.dest)
    return [f"chmod {mode:o} {' '.join(dests)}" for mode, dests in sorted(by_mode.items())]


def registry_definition(recipe: BuildRecipe) -> str:
    """The ``Apptainer.def`` for sites that build from a registry (same image, other base).

    Relative ``%files`` sources resolve against the directory ``apptainer
    build`` runs in, so build from the gear directory.
    """
    base = recipe.base
    name = recipe.image_manifest.name
    # (The comment avoids the words spython's parser takes for headers: b-ootstrap, from:.)
    head = [
        f"# Generated from {RECIPE_FILE} by `hpcgear gear build containers/{name} --write-def`;",
        "# edit the recipe, not this file. It makes the image hpcgear's builder makes, but",
        f"# starts with the registry image {base.registry_image} instead of a local Debian root",
        f"# filesystem. Build it in this directory: apptainer build {name}.sif {DEFINITION_FILE}",
    ]
    post = ["set -eu"]
    if base.kind == "debootstrap" and recipe.packages:
        post.append("export DEBIAN_FRONTEND=noninteractive")
        for package in recipe.remove:
            # An empty stub satisfies the dependency, so apt never installs the package
            # (nor what only it needs): the same set the builder's purge leaves.
            stub = f"/tmp/hpcgear-stub/{package}"  # noqa: S108 - /tmp of the image build
            post += [
                f"mkdir -p {stub}/DEBIAN",
                f"printf 'Package: {package}\\nVersion: 99:0\\nArchitecture: all\\n"
                f"Maintainer: hpcgear\\nDescription: empty stub (recipe remove)\\n' "
                f"> {stub}/DEBIAN/control",
                f"dpkg-deb --build {stub} {stub}.deb",
                f"dpkg -i {stub}.deb",
            ]
        if recipe.remove:
            post.append("rm -rf /tmp/hpcgear-stub")
        post += [
            "apt-get update",
            "apt-get install -y --no-install-recommends " + " ".join(recipe.packages),
            "apt-get clean",
            "rm -rf /var/lib/apt/lists/*",
        ]
    if recipe.pip:
        post += [
            "apt-get update",
            "apt-get install -y --no-install-recommends python3-pip",
            f"python3 -m pip install --no-cache-dir --break-system-packages --target {PIP_TARGET} "
            + " ".join(shlex.quote(p) for p in recipe.pip),
            "apt-get purge -y python3-pip && apt-get autoremove -y && apt-get clean",
            "rm -rf /var/lib/apt/lists/*",
        ]
    post += _chmod_lines(recipe)
    files = [f"{f.def_source} {f.dest}" for f in recipe.files]
    lines = [*head, *_def_header("docker", base.registry_image),
             *_def_body(recipe, files, post)]
    return "\n".join(lines).rstrip("\n") + "\n"


def local_definition(recipe: BuildRecipe, rootfs: Path, staged: list[tuple[Path, str]],
                     digest: str) -> str:
    """The definition ``apptainer build`` gets locally: the cached root filesystem + files."""
    files = [f"{src} {dest}" for src, dest in staged]
    lines = [*_def_header("localimage", str(rootfs)),
             *_def_body(recipe, files, [], (("org.hpcgear.recipe-sha256", digest),))]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_registry_definition(recipe: BuildRecipe) -> tuple[Path, bool]:
    """(Re)write ``<recipe dir>/Apptainer.def``; returns the path and whether it changed."""
    path = recipe.recipe_dir / DEFINITION_FILE
    text = registry_definition(recipe)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path, False
    tmp = path.with_name(f".{DEFINITION_FILE}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path, True


# --------------------------------------------------------------------------- builder


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$HPCGEAR_BUILD_CACHE``; else ``<dev root>/cache/gears`` on the dev cluster; else
    ``$XDG_CACHE_HOME/hpcgear/build`` (``~/.cache/hpcgear/build``)."""
    env = os.environ if environ is None else environ
    if env.get("HPCGEAR_BUILD_CACHE"):
        return Path(env["HPCGEAR_BUILD_CACHE"]).expanduser()
    dev_cache = Path(env.get("HPCGEAR_DEV_ROOT") or "/var/lib/hpcgear-dev") / "cache"
    if dev_cache.is_dir():
        return dev_cache / "gears"
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hpcgear" / "build"


def default_mirror(environ: Mapping[str, str] | None = None,
                   apt_dir: Path = Path("/etc/apt")) -> str:
    """``$HPCGEAR_DEBIAN_MIRROR``, else the Debian mirror apt uses here, else deb.debian.org."""
    env = os.environ if environ is None else environ
    if env.get("HPCGEAR_DEBIAN_MIRROR"):
        return env["HPCGEAR_DEBIAN_MIRROR"].rstrip("/")
    candidates: list[str] = []
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for line in _read_lines(path):
            if line.strip().startswith("URIs:"):
                candidates += line.split()[1:]
    for path in [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]:
        for line in _read_lines(path):
            m = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if m:
                candidates.append(m.group(1))
    for url in candidates:
        if re.match(r"^https?://", url) and "-security" not in url and re.search(
            r"/debian/?$", url
        ):
            return url.rstrip("/")
    return DEFAULT_MIRROR


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """What :meth:`GearBuilder.build` would do (``--dry-run``)."""

    recipe: BuildRecipe
    recipe_hash: str
    rootfs_key: str
    rootfs: Path
    rootfs_cached: bool
    sif: Path
    sif_cached: bool
    steps: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A built (or cached) image for one gear."""

    recipe: BuildRecipe
    recipe_hash: str
    sif: Path
    size: int
    cached: bool
    rootfs_cached: bool
    seconds: float
    timings: tuple[tuple[str, float], ...] = field(default=())


class GearBuilder:
    """Builds bundled gears' SIFs into a persistent cache.

    Parameters
    ----------
    cache_dir
        Persistent cache (root filesystems, SIFs, .deb files, locks, logs).
    apptainer
        The apptainer executable used for ``build`` and ``inspect``.
    runner
        Runs debootstrap, apptainer and busybox; tests inject a fake.
    mirror
        Debian mirror for debootstrap (default: :func:`default_mirror`).
    progress
        Called with one line per long step (the CLI prints them on stderr).
    debootstrap
        The debootstrap executable.
    check_root
        Refuse early, with a hint, when debootstrap would run without root
        (tests with a fake runner turn this off).
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        apptainer: str = "apptainer",
        runner: CommandRunner | None = None,
        mirror: str | None = None,
        progress: ProgressFn | None = None,
        debootstrap: str = "debootstrap",
        check_root: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir).absolute()
        self.apptainer = apptainer
        self.runner: CommandRunner = runner if runner is not None else SubprocessRunner()
        self.mirror = (mirror or default_mirror()).rstrip("/")
        self._progress = progress
        self.debootstrap = debootstrap
        self.check_root = check_root

    # ----------------------------------------------------------------- paths

    def rootfs_path(self, base: Base, packages: tuple[str, ...],
                    remove: tuple[str, ...] = ()) -> Path:
        key = rootfs_key(base, packages, self.mirror, remove)
        return self.cache_dir / "rootfs" / f"{base.name}-{key[:16]}"

    def sif_path(self, recipe: BuildRecipe, digest: str) -> Path:
        name = recipe.image_manifest.name
        return self.cache_dir / "sif" / f"{name}-{digest.split(':', 1)[1][:16]}.sif"

    # ----------------------------------------------------------------- planning

    def plan(self, recipe: BuildRecipe) -> BuildPlan:
        """Describe the build without changing anything."""
        digest = recipe_hash(recipe, self.mirror)
        key = rootfs_key(recipe.base, recipe.packages, self.mirror, recipe.remove)
        rootfs = self.rootfs_path(recipe.base, recipe.packages, recipe.remove)
        sif = self.sif_path(recipe, digest)
        sif_cached = self._sif_cached(sif, digest)
        rootfs_cached = _complete(rootfs)
        steps: list[str] = []
        if sif_cached:
            steps.append(f"reuse cached image {sif}")
        else:
            if rootfs_cached:
                steps.append(f"reuse cached root filesystem {rootfs}")
            elif recipe.base.kind == "busybox":
                steps.append(f"debootstrap --download-only {recipe.base.suite} busybox-static "
                             f"from {self.mirror}, then a root filesystem of only its busybox "
                             f"in {rootfs}")
            else:
                steps.append(f"debootstrap --variant={recipe.base.variant} --include="
                             f"{','.join(recipe.packages) or '-'} {recipe.base.suite} {rootfs} "
                             f"{self.mirror}"
                             + (f", purge {', '.join(recipe.remove)} and what only they need"
                                if recipe.remove else "")
                             + ", then trim docs/man/locales")
            steps.append(f"copy {len(recipe.files)} files, apptainer build {sif}")
            steps.append(f"{self.apptainer} inspect {sif}")
        return BuildPlan(recipe, digest, key, rootfs, rootfs_cached, sif, sif_cached,
                         tuple(steps))

    # ----------------------------------------------------------------- building

    def build(self, recipe: BuildRecipe, *, force: bool = False) -> BuildResult:
        """Return the recipe's SIF, building whatever is not cached.

        ``force`` rebuilds the SIF (not the root filesystem) even when cached.

        Raises
        ------
        ImageError
            A step failed; the message names it and the hint names its log.
        """
        started = time.monotonic()
        digest = recipe_hash(recipe, self.mirror)
        sif = self.sif_path(recipe, digest)
        name = recipe.image_manifest.name
        timings: list[tuple[str, float]] = []
        if not force and self._sif_cached(sif, digest):
            self._say(f"{name}: cached image {sif.name} (recipe {digest[7:19]})")
            return BuildResult(recipe, digest, sif, sif.stat().st_size, True, True,
                               time.monotonic() - started)
        self._make_dirs()
        with exclusive_lock(self._lock_path(f"sif-{digest[7:]}"), LOCK_TIMEOUT,
                            f"image build of {name}"):
            if not force and self._sif_cached(sif, digest):
                self._say(f"{name}: cached image {sif.name} (built by another process)")
                return BuildResult(recipe, digest, sif, sif.stat().st_size, True, True,
                                   time.monotonic() - started)
            t0 = time.monotonic()
            rootfs, rootfs_cached = self.ensure_rootfs(recipe.base, recipe.packages,
                                                       recipe.remove)
            timings.append(("rootfs", time.monotonic() - t0))
            t0 = time.monotonic()
            self._build_sif(recipe, rootfs, digest, sif)
            timings.append(("apptainer build", time.monotonic() - t0))
        size = sif.stat().st_size
        seconds = time.monotonic() - started
        self._say(f"{name}: built {sif.name} ({size / 1e6:.0f} MB) in {seconds:.0f}s")
        return BuildResult(recipe, digest, sif, size, False, rootfs_cached, seconds,
                           tuple(timings))

    def ensure_rootfs(self, base: Base, packages: tuple[str, ...],
                      remove: tuple[str, ...] = ()) -> tuple[Path, bool]:
        """The cached root filesystem for ``base`` + ``packages`` - ``remove``;
        (path, whether it was cached)."""
        path = self.rootfs_path(base, packages, remove)
        if _complete(path):
            self._say(f"root filesystem {path.name}: cached")
            _touch(path / ".hpcgear-complete")  # last use, for pruning
            return path, True
        self._make_dirs()
        with exclusive_lock(self._lock_path(f"rootfs-{path.name}"), LOCK_TIMEOUT,
                            f"root filesystem {path.name}"):
            if _complete(path):
                return path, True
            partial = path.with_name(path.name + ".partial")
            self._remove_tree(partial)
            started = time.monotonic()
            if base.kind == "busybox":
                self._say(f"root filesystem {path.name}: Debian's static busybox only")
                self._make_busybox_rootfs(base, partial)
            else:
                self._say(f"root filesystem {path.name}: debootstrap {base.suite} "
                          f"{base.variant} + {len(packages)} packages (1-3 minutes)")
                self._debootstrap(base, packages, partial)
                if remove:
                    self._purge(partial, packages, remove)
                _trim_rootfs(partial)
            recipe_text = _canonical({"base": base.name, "packages": list(packages),
                                      "remove": list(remove), "mirror": self.mirror,
                                      "builder": BUILDER_VERSION})
            (partial / ".hpcgear-recipe").write_text(recipe_text + "\n", encoding="utf-8")
            (partial / ".hpcgear-complete").write_text(
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n", encoding="utf-8")
            self._remove_tree(path)
            os.replace(partial, path)
            self._say(f"root filesystem {path.name}: ready in "
                      f"{time.monotonic() - started:.0f}s")
            return path, False

    # ----------------------------------------------------------------- steps

    def _debootstrap(self, base: Base, packages: tuple[str, ...], target: Path, *,
                     download_only: bool = False) -> None:
        if self.check_root and os.geteuid() != 0:
            raise ImageError(
                f"building the {base.name} root filesystem needs root (debootstrap)",
                "run `hpcgear gear build` as root once to fill the cache, or build from "
                f"the gear's {DEFINITION_FILE} with `apptainer build`",
            )
        debs = self.cache_dir / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        argv = [self.debootstrap, f"--variant={base.variant}", f"--cache-dir={debs}"]
        if download_only:
            argv.append("--download-only")
        if packages:
            argv.append(f"--include={','.join(packages)}")
        argv += [base.suite, str(target), self.mirror]
        result = self.runner.run(argv, timeout=DEBOOTSTRAP_TIMEOUT)
        if not result.ok:
            log = self._write_log(f"debootstrap-{target.name}", result)
            extra = target / "debootstrap" / "debootstrap.log"
            raise ImageError(
                command_failure_message(result, f"debootstrap of {base.name}"),
                f"see {log}" + (f" and {extra}" if extra.exists() else "")
                + "; check the mirror and package names",
                transient=True,
            )

    def _purge(self, root: Path, packages: tuple[str, ...], remove: tuple[str, ...]) -> None:
        installed = dpkg_installed(root)
        missing = [p for p in remove if p not in installed]
        if missing:
            raise ImageError(f"remove: {', '.join(missing)} did not get installed, so there is "
                             "nothing to remove", "drop it from the recipe's remove list")
        doomed = dpkg_orphans(installed, packages, remove)
        self._say(f"root filesystem {root.name.removesuffix('.partial')}: purging "
                  f"{len(doomed)} packages "
                  f"({', '.join(remove)} and what only they need)")
        result = self.runner.run(["chroot", str(root), "dpkg", "--purge", "--force-depends",
                                  *doomed], timeout=600)
        if not result.ok:
            log = self._write_log(f"purge-{root.name}", result)
            raise ImageError(command_failure_message(result, "dpkg --purge"), f"see {log}")

    def _make_busybox_rootfs(self, base: Base, target: Path) -> None:
        download = target.with_name(target.name + ".download")
        self._remove_tree(download)
        try:
            self._debootstrap(base, ("busybox-static",), download, download_only=True)
            debs = sorted((download / "var" / "cache" / "apt" / "archives").glob(
                "busybox-static_*.deb"))
            if not debs:
                raise ImageError("debootstrap --download-only fetched no busybox-static package",
                                 "check that the mirror carries busybox-static")
            target.mkdir(parents=True)
            (target / "bin").mkdir()
            busybox = target / "bin" / "busybox"
            extract_from_deb(debs[-1], ("usr/bin/busybox", "bin/busybox"), busybox)
        finally:
            self._remove_tree(download)
        result = self.runner.run([str(busybox), "--list"], timeout=60)
        applets = sorted({a.strip() for a in result.stdout.split() if a.strip()})
        if not result.ok or "sh" not in applets:
            raise ImageError(command_failure_message(result, f"{busybox} --list"),
                             "the busybox-static binary does not run on this host")
        for sub in ("etc", "root", "home", "proc", "sys", "dev", "usr", "var"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        # /tmp inside the image is world-writable and sticky, as on any system.
        (target / "tmp").mkdir(exist_ok=True)
        os.chmod(target / "tmp", 0o1777)  # noqa: S103
        for applet in applets:
            if applet != "busybox" and re.fullmatch(r"[A-Za-z0-9_.\[\]-]+", applet):
                (target / "bin" / applet).symlink_to("busybox")
        (target / "sbin").symlink_to("bin")
        (target / "usr" / "bin").symlink_to("../bin")
        (target / "usr" / "sbin").symlink_to("../bin")
        (target / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                               "nobody:x:65534:65534:nobody:/:/bin/false\n")
        (target / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")

    def _build_sif(self, recipe: BuildRecipe, rootfs: Path, digest: str, sif: Path) -> None:
        name = recipe.image_manifest.name
        work = Path(tempfile.mkdtemp(prefix=f"{name}-{digest[7:19]}-", dir=self.cache_dir / "work"))
        try:
            staged: list[tuple[Path, str]] = []
            for index, f in enumerate(recipe.files):
                copy = work / "files" / f"{index:02d}-{Path(f.dest).name}"
                copy.parent.mkdir(exist_ok=True)
                shutil.copyfile(f.source, copy)
                os.chmod(copy, f.mode)
                staged.append((copy, f.dest))
            if recipe.pip:
                staged.append((self._pip_install(recipe, work / "pip"), PIP_TARGET))
            if not _SAFE_PATH_RE.fullmatch(str(work)) or not _SAFE_PATH_RE.fullmatch(str(rootfs)):
                raise ImageError(f"the build cache path {self.cache_dir} has characters a "
                                 "definition file cannot carry",
                                 "use a cache directory of letters, digits and ._-/")
            definition = work / "image.def"
            definition.write_text(local_definition(recipe, rootfs, staged, digest),
                                  encoding="utf-8")
            tmp_sif = sif.with_name(f".{sif.name}.{os.getpid()}.tmp")
            tmp_dir = self.cache_dir / "tmp"
            tmp_dir.mkdir(exist_ok=True)
            self._say(f"{name}: apptainer build from {rootfs.name} (about a minute per GB)")
            result = self.runner.run(
                [self.apptainer, "build", "--force", "--tmpdir", str(tmp_dir), str(tmp_sif),
                 str(definition)],
                timeout=APPTAINER_BUILD_TIMEOUT,
            )
            try:
                if not result.ok:
                    log = self._write_log(f"build-{name}-{digest[7:19]}", result)
                    raise ImageError(command_failure_message(result, f"apptainer build of {name}"),
                                     f"see {log}")
                check = self.runner.run([self.apptainer, "inspect", str(tmp_sif)],
                                        timeout=INSPECT_TIMEOUT)
                if not check.ok:
                    log = self._write_log(f"inspect-{name}-{digest[7:19]}", check)
                    raise ImageError(command_failure_message(check, "apptainer inspect"),
                                     f"the new image is unreadable; see {log}")
                os.chmod(tmp_sif, 0o444)
                os.replace(tmp_sif, sif)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp_sif.unlink()
            meta = {
                "gear": f"{recipe.image_manifest.name}@{recipe.image_manifest.version}",
                "recipe_sha256": digest,
                "rootfs": rootfs.name,
                "size": sif.stat().st_size,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "apptainer": self.apptainer,
            }
            _write_json(sif.with_suffix(".json"), meta)
            self._prune_sifs(name, sif)
            self._prune_rootfs(keep=rootfs)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _pip_install(self, recipe: BuildRecipe, target: Path) -> Path:
        """The recipe's pinned PyPI packages (and their dependencies) as wheels installed
        into ``target`` for the image's Python (bookworm: 3.11, the host's architecture)."""
        name = recipe.image_manifest.name
        self._say(f"{name}: pip install {' '.join(recipe.pip)}")
        result = self.runner.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-compile", "--only-binary=:all:", "--python-version", "3.11",
             "--implementation", "cp", "--target", str(target), *recipe.pip],
            timeout=APPTAINER_BUILD_TIMEOUT,
        )
        if not result.ok:
            log = self._write_log(f"pip-{name}", result)
            raise ImageError(command_failure_message(result, f"pip install for {name}"),
                             f"check the pins in {RECIPE_FILE}; see {log}")
        for bin_dir in (target / "bin",):  # console scripts name the host's interpreter
            shutil.rmtree(bin_dir, ignore_errors=True)
        return target

    def _prune_rootfs(self, keep: Path) -> None:
        """Drop root filesystems no cached image was built from and unused for a day.

        Every use touches ``.hpcgear-complete``, so a root filesystem a build is
        about to use (or a half-finished one younger than a day) is never taken.
        """
        referenced = {keep.name}
        for meta in (self.cache_dir / "sif").glob("*.json"):
            try:
                referenced.add(str(json.loads(meta.read_text(encoding="utf-8"))["rootfs"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        cutoff = time.time() - ROOTFS_IDLE_SECONDS
        for path in (self.cache_dir / "rootfs").iterdir():
            if path.name in referenced or not path.is_dir():
                continue
            stamp = path / ".hpcgear-complete"
            try:
                used = (stamp if stamp.exists() else path).stat().st_mtime
            except OSError:
                continue
            if used < cutoff:
                logger.info("build cache: removing unused root filesystem %s", path)
                try:
                    self._remove_tree(path)
                except (ImageError, OSError) as exc:
                    logger.warning("build cache: cannot remove %s: %s", path, exc)

    def _prune_sifs(self, name: str, current: Path) -> None:
        """Keep the newest KEEP_SIFS images of a gear; older recipes' SIFs go.

        Installed gears do not need them: installing copies the SIF into the
        object store.
        """
        pattern = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{16}}\.sif$")
        siblings = [p for p in (self.cache_dir / "sif").iterdir()
                    if pattern.match(p.name) and p != current]
        siblings.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in siblings[KEEP_SIFS - 1:]:
            logger.info("build cache: removing superseded %s", old)
            for path in (old, old.with_suffix(".json")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # ----------------------------------------------------------------- helpers

    def _sif_cached(self, sif: Path, digest: str) -> bool:
        meta = sif.with_suffix(".json")
        if not sif.is_file() or not meta.is_file():
            return False
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8")).get("recipe_sha256")
        except (OSError, ValueError, AttributeError):
            return False
        return bool(recorded == digest and sif.stat().st_size > 0)

    def _make_dirs(self) -> None:
        try:
            for sub in ("rootfs", "sif", "work", "logs", ".locks"):
                (self.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageError(f"cannot create the build cache {self.cache_dir}: "
                             f"{exc.strerror or exc}",
                             "pass --cache DIR or set HPCGEAR_BUILD_CACHE to a writable "
                             "directory") from exc

    def _lock_path(self, name: str) -> Path:
        return self.cache_dir / ".locks" / f"{name}.lock"

    def _write_log(self, name: str, result: CompletedCommand) -> Path:
        path = self.cache_dir / "logs" / f"{name}.log"
        path.write_text(
            f"$ {shlex.join(result.argv)}\n# exit {result.returncode} after "
            f"{result.elapsed:.1f}s\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n",
            encoding="utf-8",
        )
        return path

    def _remove_tree(self, path: Path) -> None:
        """Remove a (partial) root filesystem, refusing to descend into mounts."""
        if not path.exists() and not path.is_symlink():
            return
        mounted = _mounts_under(path)
        for mount in sorted(mounted, reverse=True):
            self.runner.run(["umount", "-l", mount], timeout=60)
        if _mounts_under(path):
            raise ImageError(f"{path} still has file systems mounted inside",
                             f"unmount them (grep {path} /proc/mounts), then retry")
        shutil.rmtree(path)

    def _say(self, text: str) -> None:
        logger.info("%s", text)
        if self._progress is not None:
            self._progress(text)


def dpkg_installed(root: Path) -> dict[str, dict[str, str]]:
    """Installed packages of a root filesystem, from ``var/lib/dpkg/status``."""
    text = (root / "var" / "lib" / "dpkg" / "status").read_text(encoding="utf-8",
                                                                 errors="replace")
    out: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            out[fields["Package"]] = fields
    return out


def dpkg_orphans(installed: Mapping[str, Mapping[str, str]], wanted: tuple[str, ...],
                 remove: tuple[str, ...]) -> list[str]:
    """Packages to purge: ``remove`` and everything nothing kept depends on any more.

    Kept are the wanted packages, Essential ones and those of priority
    required/important (the minbase system), plus the closure of their
    Depends/Pre-Depends. A dependency on a removed package counts as satisfied
    (that is the point of removing it); of alternatives ``a | b`` the first one
    installed is followed; virtual packages resolve through Provides.
    """
    provides: dict[str, list[str]] = {}
    for name, fields in installed.items():
        for item in fields.get("Provides", "").split(","):
            virtual = item.strip().split(" ")[0]
            if virtual:
                provides.setdefault(virtual, []).append(name)
    removed = set(remove)
    stack = [
        name for name, fields in installed.items()
        if name not in removed and (
            name in wanted or fields.get("Essential") == "yes"
            or fields.get("Priority") in ("required", "important"))
    ]
    keep: set[str] = set()
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        for field_name in ("Pre-Depends", "Depends"):
            for dep in installed[name].get(field_name, "").split(","):
                for alternative in dep.split("|"):
                    target = alternative.strip().split(" ")[0].split(":")[0]
                    if not target:
                        continue
                    candidates = [target] if target in installed else provides.get(target, [])
                    candidates = [c for c in candidates if c not in removed]
                    if candidates:
                        stack.append(candidates[0])
                        break
    return sorted(set(installed) - keep)


def extract_from_deb(deb: Path, members: tuple[str, ...], dest: Path) -> str:
    """Write the first of ``members`` found in a .deb's data archive to ``dest`` (mode 0755).

    A .deb is an ``ar`` archive holding ``data.tar.{xz,gz,bz2}``; both are read
    with the standard library. Returns the member that was found.

    Raises
    ------
    ImageError
        The file is not a .deb, its data archive is compressed in a way the
        standard library cannot read, or none of ``members`` is in it.
    """
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ImageError(f"{deb} is not a Debian package", "delete it and build again")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
        if not name.startswith("data.tar"):
            continue
        modes: dict[str, Literal["r:", "r:xz", "r:gz", "r:bz2"]] = {
            "data.tar": "r:", "data.tar.xz": "r:xz", "data.tar.gz": "r:gz",
            "data.tar.bz2": "r:bz2"}
        mode = modes.get(name)
        if mode is None:
            raise ImageError(f"{deb}: {name} cannot be read with the standard library",
                             "use a mirror whose packages use xz or gzip")
        with tarfile.open(fileobj=io.BytesIO(body), mode=mode) as tar:
            names = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            for member in members:
                if member in names:
                    source = tar.extractfile(names[member])
                    assert source is not None
                    tmp = dest.with_name(dest.name + ".tmp")
                    tmp.write_bytes(source.read())
                    os.chmod(tmp, 0o755)  # noqa: S103 - an executable
                    os.replace(tmp, dest)
                    return member
        raise ImageError(f"{deb} has none of {', '.join(members)}",
                         "is this the right package?")
    raise ImageError(f"{deb} has no data archive", "delete it and build again")


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _complete(rootfs: Path) -> bool:
    return (rootfs / ".hpcgear-complete").is_file()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    out = []
    for line in _read_lines(Path("/proc/mounts")):
        parts = line.split()
        if len(parts) > 1:
            mount = parts[1].replace("\\040", " ")
            if mount == prefix or mount.startswith(prefix + "/"):
                out.append(mount)
    return out


def _trim_rootfs(root: Path) -> None:
    """Drop what a gear never reads (docs but their copyright files, man pages, locales...)."""
    doc = root / "usr" / "share" / "doc"
    if doc.is_dir():
        for entry in doc.rglob("*"):
            if entry.is_file() and not entry.is_symlink() and entry.name != "copyright":
                entry.unlink()
    for pattern in TRIM_GLOBS:
        for entry in root.glob(pattern):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    # The host's resolver configuration must not travel in the image (Apptainer binds its own).
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_file() or resolv.is_symlink():
        resolv.unlink()
        resolv.write_text("")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
