"""Bundled gear recipes (build.yaml): validation, content hashing, definitions, caching.

The builder's commands (debootstrap, apptainer, chroot dpkg, busybox) are faked at
the subprocess boundary; tests/integration/test_bundled_gears.py builds and runs
the real images.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcgear.errors import ImageError, NotFoundError, SchemaError
from hpcgear.gears.build import (
    BASES,
    DEFINITION_FILE,
    GearBuilder,
    dpkg_orphans,
    load_recipe,
    recipe_hash,
    registry_definition,
    rootfs_key,
    stdlib_only_problem,
)
from hpcgear.scheduler.runner import CompletedCommand

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
BUNDLED = ("dcm2niix", "dicom-header", "nifti-header", "test-gear", "test-analysis", "api-gear",
           "test-bids-app")
SHARED_IMAGE = ("test-analysis", "test-bids-app")
MIRROR = "http://deb.example.org/debian"


# ----------------------------------------------------------------- bundled recipes


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_recipe_is_valid(name: str) -> None:
    recipe = load_recipe(CONTAINERS / name)
    assert recipe.manifest.name == name
    assert not [w for w in recipe.manifest.warnings], recipe.manifest.warnings
    dests = {f.dest for f in recipe.files}
    assert "/flywheel/v0/manifest.json" in dests
    command = recipe.image_manifest.command or ""
    script = command.split()[-1]
    assert script in dests, f"the manifest command runs {script}, which the image lacks"
    run = next(f for f in recipe.files if f.dest == script)
    if command.startswith("/"):
        assert run.mode == 0o755, f"{run.source} must be executable (chmod 755)"
    assert (recipe.gear_dir / "README.md").is_file()


@pytest.mark.parametrize("name", SHARED_IMAGE)
def test_test_analysis_reuses_the_test_gear_image(name: str) -> None:
    analysis = load_recipe(CONTAINERS / name)
    gear = load_recipe(CONTAINERS / "test-gear")
    assert analysis.manifest.category == "analysis" and gear.manifest.category == "utility"
    assert analysis.shares_image and analysis.recipe_dir == gear.gear_dir
    assert recipe_hash(analysis, MIRROR) == recipe_hash(gear, MIRROR)
    assert analysis.manifest.config_names == gear.manifest.config_names


@pytest.mark.parametrize("name", [n for n in BUNDLED if n not in SHARED_IMAGE])
def test_checked_in_definition_matches_the_recipe(name: str) -> None:
    recipe = load_recipe(CONTAINERS / name)
    checked_in = (CONTAINERS / name / DEFINITION_FILE).read_text()
    assert checked_in == registry_definition(recipe), (
        f"containers/{name}/{DEFINITION_FILE} is stale; regenerate it with "
        f"`hpcgear gear build containers/{name} --write-def`"
    )


@pytest.mark.parametrize("name", [n for n in BUNDLED if n not in SHARED_IMAGE])
def test_definition_parses_with_spython(name: str) -> None:
    from spython.main.parse.parsers import SingularityParser

    recipe = load_recipe(CONTAINERS / name)
    parsed = SingularityParser(str(CONTAINERS / name / DEFINITION_FILE)).recipe
    assert len(parsed) == 1
    stage = next(iter(parsed.values()))
    assert stage.fromHeader == recipe.base.registry_image
    assert sorted(stage.files) == sorted(f"{f.def_source} {f.dest}" for f in recipe.files)
    assert stage.environ == [f"{k}={v}" for k, v in recipe.environment]
    for package in recipe.packages:
        assert any(package in line for line in stage.install if "apt-get install" in line)
    # every %files source exists relative to the gear directory (where apptainer build runs)
    for f in recipe.files:
        assert (CONTAINERS / name / f.def_source).resolve() == f.source


def test_dicom_header_vendors_the_stdlib_only_classifier() -> None:
    recipe = load_recipe(CONTAINERS / "dicom-header")
    vendored = [f for f in recipe.files if f.origin == "hpcgear.ingest.classifier"]
    assert len(vendored) == 1
    assert vendored[0].source == REPO / "hpcgear" / "ingest" / "classifier.py"
    assert vendored[0].dest == "/flywheel/v0/classifier.py"
    assert vendored[0].def_source == "../../hpcgear/ingest/classifier.py"
    assert stdlib_only_problem(vendored[0].source.read_text()) is None


def test_stdlib_only_problem_names_the_offending_import() -> None:
    assert stdlib_only_problem("import json\nfrom pathlib import Path\n") is None
    assert stdlib_only_problem("import json\nimport numpy as np\n") == "numpy"
    assert stdlib_only_problem("from hpcgear.errors import X\n") == "hpcgear.errors"
    assert stdlib_only_problem("from . import x\n") == "a relative module"


# ----------------------------------------------------------------- hashing


def copy_gear(tmp_path: Path, name: str = "test-gear") -> Path:
    dest = tmp_path / name
    shutil.copytree(CONTAINERS / name, dest)
    return dest


def test_recipe_hash_follows_content_not_formatting(tmp_path: Path) -> None:
    gear = copy_gear(tmp_path)
    before = recipe_hash(load_recipe(gear), MIRROR)
    assert before == recipe_hash(load_recipe(CONTAINERS / "test-gear"), MIRROR)
    # comments, top-level key order, file order and flow/block style do not matter
    (gear / "build.yaml").write_text(
        "# rewritten\nenvironment: {FLYWHEEL: /flywheel/v0}\n"
        "files:\n  manifest.json: /flywheel/v0/manifest.json\n"
        "  run.sh: /flywheel/v0/run.sh\n  json_flat.awk: /flywheel/v0/json_flat.awk\n"
        "labels: {org.opencontainers.image.title: hpcgear test gear,\n"
        "         org.opencontainers.image.licenses: Apache-2.0}\n"
        "base: busybox-static   # trailing comment\n"
    )
    assert recipe_hash(load_recipe(gear), MIRROR) == before
    # one byte of the run script changes it
    run = gear / "run.sh"
    run.write_text(run.read_text() + "\n")
    changed = recipe_hash(load_recipe(gear), MIRROR)
    assert changed != before
    # and so does its mode
    run.write_text((CONTAINERS / "test-gear" / "run.sh").read_text())
    run.chmod(0o644)
    assert recipe_hash(load_recipe(gear), MIRROR) not in (before, changed)
    run.chmod(0o755)
    assert recipe_hash(load_recipe(gear), MIRROR) == before


def test_recipe_hash_covers_packages_environment_and_vendored_code(tmp_path: Path) -> None:
    gear = copy_gear(tmp_path, "dicom-header")
    text = (gear / "build.yaml").read_text()
    base = recipe_hash(load_recipe(gear), MIRROR)
    assert recipe_hash(load_recipe(gear), MIRROR + "2") != base  # another mirror
    (gear / "build.yaml").write_text(text.replace("[python3, python3-pydicom]",
                                                  "[python3-pydicom, python3]"))
    assert recipe_hash(load_recipe(gear), MIRROR) == base  # package order is irrelevant
    (gear / "build.yaml").write_text(text.replace("[python3, python3-pydicom]",
                                                  "[python3, python3-pydicom, pigz]"))
    assert recipe_hash(load_recipe(gear), MIRROR) != base
    (gear / "build.yaml").write_text(text.replace("LANG: C.UTF-8", "LANG: C"))
    assert recipe_hash(load_recipe(gear), MIRROR) != base


def test_rootfs_key_is_the_package_set() -> None:
    deb = BASES["debian-bookworm-minbase"]
    key = rootfs_key(deb, ("a", "b"), MIRROR)
    assert key == rootfs_key(deb, ("b", "a"), MIRROR + "/")
    assert key != rootfs_key(deb, ("a",), MIRROR)
    assert key != rootfs_key(deb, ("a", "b"), MIRROR, ("c",))
    assert key != rootfs_key(deb, ("a", "b"), "http://other/debian")
    assert len(key) == 64


# ----------------------------------------------------------------- recipe errors


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("base: busybox-static\nfiles: {run.sh: /flywheel/v0/run.sh}\nrunscrpt: x\n",
         r"build.yaml:3: unknown key 'runscrpt' \(did you mean 'runscript'\?\)"),
        ("base: alpine\nfiles: {run.sh: /flywheel/v0/run.sh}\n", "base 'alpine' is not known"),
        ("base: busybox-static\nfiles: {../x: /flywheel/v0/x}\n", "is not a file inside"),
        ("base: busybox-static\nfiles: {run.sh: flywheel/run.sh}\n", "not a usable path"),
        ("base: busybox-static\nfiles: {run.sh: /flywheel/v0/../run.sh}\n", "not a usable path"),
        ("base: busybox-static\nfiles: {run.sh: /.singularity.d/runscript}\n",
         "not a usable path"),
        ("base: busybox-static\npackages: [curl]\nfiles: {run.sh: /flywheel/v0/run.sh}\n",
         "busybox-static base takes no packages"),
        ("base: debian-bookworm-minbase\npackages: [Bad_Name]\n"
         "files: {run.sh: /flywheel/v0/run.sh}\n", "not a Debian package name"),
        ("base: debian-bookworm-minbase\npackages: [ab]\nremove: [ab]\n"
         "files: {run.sh: /flywheel/v0/run.sh}\n", "both installed and removed"),
        ("base: busybox-static\nfiles: {}\n", "at least the run script"),
        ("base: busybox-static\nfiles: {run.sh: /flywheel/v0/run.sh}\n"
         "vendor: {hpcgear.gears.build: /flywheel/v0/b.py}\n", "imports .*image does not have"),
        ("base: busybox-static\nfiles: {run.sh: /flywheel/v0/run.sh}\n"
         "vendor: {json: /flywheel/v0/j.py}\n", "not an hpcgear module"),
        ("image: ../test-gear\nbase: busybox-static\n", "'image' cannot be combined with base"),
        ("base: busybox-static\nfiles: {run.sh: /flywheel/v0/run.sh}\n"
         "environment: {BAD-NAME: x}\n", "cannot be set"),
        ("base: busybox-static\nfiles: {run.sh: /flywheel/v0/run.sh}\nbase: busybox-static\n",
         "duplicate key 'base'"),
    ],
)
def test_bad_recipes_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    gear = copy_gear(tmp_path)
    (gear / "build.yaml").write_text(text)
    with pytest.raises(SchemaError, match=match) as info:
        load_recipe(gear)
    assert str(gear / "build.yaml") in info.value.message
    assert info.value.hint


def test_missing_pieces_are_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_recipe(tmp_path / "nope")
    gear = copy_gear(tmp_path)
    (gear / "build.yaml").unlink()
    with pytest.raises(NotFoundError, match=r"build\.yaml does not exist"):
        load_recipe(gear)
    (gear / "build.yaml").write_text("image: ../elsewhere\n")
    with pytest.raises(NotFoundError, match=r"has no build\.yaml"):
        load_recipe(gear)


# ----------------------------------------------------------------- dpkg orphans


def test_dpkg_orphans_follow_dependencies_alternatives_and_provides() -> None:
    installed = {
        "base-files": {"Priority": "required"},
        "python3": {"Priority": "optional", "Depends": "python3.11 (>= 3.11)"},
        "python3.11": {"Priority": "optional"},
        "python3-nibabel": {"Depends": "python3-numpy, python3-scipy, python3:any"},
        "python3-numpy": {"Depends": "libblas3 | libblas.so.3, python3"},
        "libblas3": {"Provides": "libblas.so.3"},
        "libopenblas0": {"Provides": "libblas.so.3"},
        "python3-scipy": {"Depends": "python3-pythran, libopenblas0"},
        "python3-pythran": {"Depends": "g++ | c++-compiler"},
        "g++": {"Depends": "gcc"},
        "gcc": {},
        "shared-lib": {"Depends": "gcc"},
        "apt": {"Priority": "important", "Depends": "shared-lib"},
    }
    orphans = dpkg_orphans(installed, ("python3", "python3-nibabel"), ("python3-scipy",))
    # scipy, what only it pulled (pythran, g++, openblas); gcc stays: apt needs it via shared-lib
    assert orphans == ["g++", "libopenblas0", "python3-pythran", "python3-scipy"]


# ----------------------------------------------------------------- the builder


def make_deb(path: Path, files: dict[str, bytes]) -> None:
    """A minimal Debian package: an ar archive with debian-binary and data.tar.xz."""
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(content))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""),
               ("data.tar.xz", data.getvalue())]
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(bytes(out))


class FakeBuildRunner:
    """Plays debootstrap, chroot dpkg, busybox --list and apptainer build/inspect."""

    def __init__(self, log: Path | None = None, fail: str | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.log = log
        self.fail = fail
        self.definitions: list[str] = []

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        argv = tuple(argv)
        self.calls.append(argv)
        if self.log is not None:
            with self.log.open("a") as fh:
                fh.write(" ".join(argv[:2]) + "\n")
        tool = Path(argv[0]).name
        if self.fail and self.fail in argv:
            return CompletedCommand(argv, 1, "", f"E: {self.fail} failed badly", 0.1)
        if tool == "debootstrap" and "--download-only" in argv:
            archives = Path(argv[-2]) / "var" / "cache" / "apt" / "archives"
            archives.mkdir(parents=True)
            make_deb(archives / "busybox-static_1.35_amd64.deb",
                     {"./bin/busybox": b"\x7fELF static busybox"})
        elif tool == "debootstrap":
            target = Path(argv[-2])
            (target / "usr" / "bin").mkdir(parents=True)
            (target / "usr" / "share" / "doc" / "pkg").mkdir(parents=True)
            (target / "usr" / "share" / "doc" / "pkg" / "copyright").write_text("GPL")
            (target / "usr" / "share" / "doc" / "pkg" / "changelog.gz").write_text("long")
            (target / "usr" / "share" / "man" / "man1").mkdir(parents=True)
            (target / "etc").mkdir()
            (target / "etc" / "resolv.conf").write_text("nameserver 10.0.0.1\n")
            (target / "usr" / "bin" / "busybox").write_text("#!/bin/sh\n")
            include = next((a for a in argv if a.startswith("--include=")), "--include=")
            packages = [p for p in include.split("=", 1)[1].split(",") if p]
            if "python3-nibabel" in packages:  # Debian's nibabel pulls scipy
                packages.append("python3-scipy")
            status = "".join(
                f"Package: {p}\nStatus: install ok installed\nPriority: optional\n"
                + ("Depends: python3-scipy\n" if p == "python3-nibabel" else "") + "\n"
                for p in packages
            )
            (target / "var" / "lib" / "dpkg").mkdir(parents=True)
            (target / "var" / "lib" / "dpkg" / "status").write_text(status)
        elif tool == "busybox":
            return CompletedCommand(argv, 0, "sh\nawk\ncat\n[\n", "", 0.1)
        elif tool == "apptainer" and argv[1] == "build":
            self.definitions.append(Path(argv[-1]).read_text())
            Path(argv[-2]).write_bytes(b"SIF " + argv[-1].encode())
        return CompletedCommand(argv, 0, "", "", 0.1)

    def tools(self) -> list[str]:
        return [Path(c[0]).name + ("" if len(c) < 2 else f" {c[1]}") for c in self.calls]


def builder(cache: Path, runner: FakeBuildRunner) -> GearBuilder:
    return GearBuilder(cache, apptainer="/usr/bin/apptainer", runner=runner, mirror=MIRROR,
                       check_root=False)


def test_build_then_cache_then_rebuild_only_what_changed(tmp_path: Path) -> None:
    gear = copy_gear(tmp_path, "nifti-header")
    cache = tmp_path / "cache"
    runner = FakeBuildRunner()
    lines: list[str] = []
    b = GearBuilder(cache, apptainer="/usr/bin/apptainer", runner=runner, mirror=MIRROR,
                    progress=lines.append, check_root=False)
    recipe = load_recipe(gear)
    plan = b.plan(recipe)
    assert not plan.sif_cached and not plan.rootfs_cached
    assert not cache.exists()  # planning changes nothing

    first = b.build(recipe)
    assert not first.cached and first.sif.is_file()
    tools = runner.tools()
    assert tools[0] == "debootstrap --variant=minbase"
    debootstrap = runner.calls[0]
    assert f"--cache-dir={cache / 'debs'}" in debootstrap
    assert "--include=python3,python3-nibabel" in debootstrap
    assert debootstrap[-3:] == ("bookworm", str(plan.rootfs) + ".partial", MIRROR)
    purge = next(c for c in runner.calls if c[0] == "chroot")
    assert purge[2:5] == ("dpkg", "--purge", "--force-depends") and "python3-scipy" in purge
    assert tools[-2:] == ["apptainer build", "apptainer inspect"]
    assert any("debootstrap" in line for line in lines)
    # the root filesystem was trimmed but kept copyright files; the host resolver is gone
    doc = plan.rootfs / "usr" / "share" / "doc" / "pkg"
    assert [p.name for p in doc.iterdir()] == ["copyright"]
    assert (plan.rootfs / "etc" / "resolv.conf").read_text() == ""
    assert not list((plan.rootfs / "usr" / "share" / "man").iterdir())
    # the local definition starts from the cached root filesystem and copies staged files
    definition = runner.definitions[0]
    assert definition.startswith(f"Bootstrap: localimage\nFrom: {plan.rootfs}\n")
    assert f"org.hpcgear.recipe-sha256 {first.recipe_hash}" in definition
    assert "export FLYWHEEL=/flywheel/v0" in definition
    assert "exec /bin/sh -c 'python3 /flywheel/v0/run.py'" in definition
    meta = json.loads(first.sif.with_suffix(".json").read_text())
    assert meta["recipe_sha256"] == first.recipe_hash
    assert not list((cache / "work").iterdir())  # staging removed

    runner.calls.clear()
    again = b.build(load_recipe(gear))
    assert again.cached and again.sif == first.sif and runner.calls == []
    assert b.plan(load_recipe(gear)).sif_cached

    (gear / "run.py").write_text((gear / "run.py").read_text() + "# changed\n")
    third = b.build(load_recipe(gear))
    assert not third.cached and third.sif != first.sif
    assert runner.tools() == ["apptainer build", "apptainer inspect"]  # rootfs reused
    assert third.rootfs_cached

    runner.calls.clear()
    forced = b.build(load_recipe(gear), force=True)
    assert not forced.cached and runner.tools() == ["apptainer build", "apptainer inspect"]


def test_busybox_base_keeps_only_busybox(tmp_path: Path) -> None:
    runner = FakeBuildRunner()
    b = builder(tmp_path / "cache", runner)
    recipe = load_recipe(CONTAINERS / "test-gear")
    result = b.build(recipe)
    rootfs = b.rootfs_path(recipe.base, ())
    assert runner.calls[0][:4] == ("debootstrap", "--variant=minbase",
                                   f"--cache-dir={tmp_path / 'cache' / 'debs'}",
                                   "--download-only")
    assert "--include=busybox-static" in runner.calls[0]
    assert runner.calls[1] == (str(rootfs) + ".partial/bin/busybox", "--list")
    assert sorted(p.name for p in (rootfs / "bin").iterdir()) == ["[", "awk", "busybox", "cat",
                                                                   "sh"]
    assert (rootfs / "bin" / "busybox").read_bytes() == b"\x7fELF static busybox"
    assert (rootfs / "bin" / "busybox").stat().st_mode & 0o777 == 0o755
    # only the root filesystem stays; the download area is gone
    assert sorted(p.name for p in (tmp_path / "cache" / "rootfs").iterdir()) == [rootfs.name]
    assert (rootfs / "bin" / "sh").readlink() == Path("busybox")
    assert (rootfs / "usr" / "bin").readlink() == Path("../bin")
    assert oct((rootfs / "tmp").stat().st_mode & 0o7777) == "0o1777"
    assert "root:x:0:0" in (rootfs / "etc" / "passwd").read_text()
    assert result.sif.name.startswith("test-gear-")


def test_failed_build_names_the_log_and_leaves_no_image(tmp_path: Path) -> None:
    runner = FakeBuildRunner(fail="build")
    b = builder(tmp_path / "cache", runner)
    with pytest.raises(ImageError, match="apptainer build of test-gear failed") as info:
        b.build(load_recipe(CONTAINERS / "test-gear"))
    log = Path(info.value.hint.split("see ", 1)[1])
    assert "E: build failed badly" in log.read_text()
    assert not list((tmp_path / "cache" / "sif").glob("*.sif"))
    assert not list((tmp_path / "cache" / "work").iterdir())


def test_failed_debootstrap_leaves_no_root_filesystem(tmp_path: Path) -> None:
    runner = FakeBuildRunner(fail="bookworm")
    b = builder(tmp_path / "cache", runner)
    with pytest.raises(ImageError, match="debootstrap of debian-bookworm-minbase failed") as info:
        b.build(load_recipe(CONTAINERS / "dcm2niix"))
    assert info.value.transient
    assert not [p for p in (tmp_path / "cache" / "rootfs").iterdir()
                if not p.name.endswith(".partial")]
    # the next build starts over cleanly
    b2 = builder(tmp_path / "cache", FakeBuildRunner())
    assert b2.build(load_recipe(CONTAINERS / "dcm2niix")).sif.is_file()


def test_old_images_of_a_gear_are_pruned(tmp_path: Path) -> None:
    gear = copy_gear(tmp_path)
    b = builder(tmp_path / "cache", FakeBuildRunner())
    sifs = []
    for i in range(5):
        (gear / "run.sh").write_text(f"#!/bin/sh\necho {i}\n")
        sifs.append(b.build(load_recipe(gear)).sif)
    remaining = sorted((tmp_path / "cache" / "sif").glob("test-gear-*.sif"))
    assert sorted(remaining) == sorted(sifs[-3:])


def _build_in_process(gear: str, cache: str, log: str,
                      barrier: multiprocessing.synchronize.Barrier) -> None:
    b = GearBuilder(Path(cache), apptainer="/usr/bin/apptainer",
                    runner=FakeBuildRunner(Path(log)), mirror=MIRROR, check_root=False)
    recipe = load_recipe(gear)
    barrier.wait()
    b.build(recipe)


def test_concurrent_builds_of_one_recipe_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier = ctx.Barrier(n)
    log = tmp_path / "commands.log"
    run = functools.partial(_build_in_process, str(CONTAINERS / "dcm2niix"),
                            str(tmp_path / "cache"), str(log))
    procs = [ctx.Process(target=run, args=(barrier,)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    commands = log.read_text().splitlines()
    assert commands.count("/usr/bin/apptainer build") == 1
    assert sum(c.startswith("debootstrap") for c in commands) == 1


def test_cli_dry_run_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import io

    from hpcgear.cli.main import main

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("HPCGEAR_DEBIAN_MIRROR", MIRROR)
    cache = tmp_path / "cache"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["gear", "build", str(CONTAINERS / "test-gear"),
                     str(CONTAINERS / "dcm2niix"), "--dry-run", "--json", "--cache", str(cache),
                     "--apptainer", "/opt/apptainer/bin/apptainer"], standalone=False)
    assert code == 0, err.getvalue()
    plans = json.loads(out.getvalue())
    assert [p["gear"] for p in plans] == ["test-gear@1.0.0", "dcm2niix@1.0.0_1.0.20220720"]
    recipe = load_recipe(CONTAINERS / "dcm2niix")
    assert plans[1]["recipe_sha256"] == recipe_hash(recipe, MIRROR)
    assert not plans[1]["sif_cached"] and plans[1]["install"]
    assert any("--include=dcm2niix,pigz,python3" in step for step in plans[1]["steps"])
    assert any("/opt/apptainer/bin/apptainer inspect" in s for s in plans[0]["steps"])
    assert not cache.exists()


def test_extract_from_deb(tmp_path: Path) -> None:
    from hpcgear.gears.build import extract_from_deb

    deb = tmp_path / "x.deb"
    make_deb(deb, {"./usr/bin/tool": b"tool", "./usr/share/doc/x/copyright": b"GPL"})
    assert extract_from_deb(deb, ("bin/tool", "usr/bin/tool"), tmp_path / "tool") == "usr/bin/tool"
    assert (tmp_path / "tool").read_bytes() == b"tool"
    with pytest.raises(ImageError, match="has none of bin/other"):
        extract_from_deb(deb, ("bin/other",), tmp_path / "other")
    (tmp_path / "not.deb").write_bytes(b"PK\x03\x04")
    with pytest.raises(ImageError, match="is not a Debian package"):
        extract_from_deb(tmp_path / "not.deb", ("x",), tmp_path / "y")


def test_unused_root_filesystems_are_pruned_after_a_day(tmp_path: Path) -> None:
    import os
    import time

    cache = tmp_path / "cache"
    b = builder(cache, FakeBuildRunner())
    gear = copy_gear(tmp_path, "dcm2niix")
    first = b.build(load_recipe(gear))
    old_rootfs = b.rootfs_path(first.recipe.base, first.recipe.packages)
    # the image is superseded three times with another package set: nothing refers to
    # the old root filesystem any more
    text = (gear / "build.yaml").read_text()
    (gear / "build.yaml").write_text(text.replace("[dcm2niix, pigz, python3]",
                                                  "[dcm2niix, python3]"))
    for i in range(3):
        (gear / "run.py").write_text(f"# {i}\n")
        b.build(load_recipe(gear))
    assert old_rootfs.is_dir()  # used less than a day ago: kept
    stamp = old_rootfs / ".hpcgear-complete"
    day_ago = time.time() - 25 * 3600
    os.utime(stamp, (day_ago, day_ago))
    (gear / "run.py").write_text("# last\n")
    latest = b.build(load_recipe(gear))
    assert not old_rootfs.exists()
    assert b.rootfs_path(latest.recipe.base, latest.recipe.packages).is_dir()


def test_pip_packages_are_pinned_and_hashed(tmp_path: Path) -> None:
    """`pip:` installs pinned PyPI packages (api-gear: fw-gear + flywheel-sdk) and is part
    of the recipe hash; unpinned requirements are refused."""
    recipe = load_recipe(CONTAINERS / "api-gear")
    assert recipe.pip and all("==" in p for p in recipe.pip)
    assert ("PYTHONPATH", "/opt/hpcgear-pip") in recipe.environment
    gear = tmp_path / "api-gear"
    shutil.copytree(CONTAINERS / "api-gear", gear)
    text = (gear / "build.yaml").read_text()
    (gear / "build.yaml").write_text(text.replace("fw-gear==0.3.7", "fw-gear==0.3.6"))
    assert recipe_hash(load_recipe(gear), MIRROR) != recipe_hash(recipe, MIRROR)
    (gear / "build.yaml").write_text(text.replace("fw-gear==0.3.7", "fw-gear"))
    with pytest.raises(SchemaError, match="pinned"):
        load_recipe(gear)
