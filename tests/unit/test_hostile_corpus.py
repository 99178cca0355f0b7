"""The hostile-input corpus (tests/data/hostile/) through every CLI surface (issue 11).

Every string of ``strings.yaml`` goes through every surface of ``cli.yaml`` (labels,
paths, tags, info keys and values, file names, uploads, gear config, job tags, rule
conditions, listing), on SQLite and PostgreSQL. For each call:

* no traceback and no internal error; a refusal is one ``error:`` and one ``hint:``
  line and changes nothing stored;
* what is accepted reads back exactly as given (``ls``/``job show``/``download``);
* nothing written to the terminal is a raw control or bidi character;
* nothing is executed (no ``pwned-N`` canary appears) and nothing is written outside
  the instance's own directories (the download lands exactly at ``OUT/NAME``).

On PostgreSQL only the strings where the database can matter run (non-ASCII or control
characters, NUL, lone surrogates, long values, quotes, backslashes, LIKE wildcards, JSON
values); the shell and path strings are refused or stored alike before any SQL, and
SQLite covers them. That keeps the tier's runtime modest on a small CI box.

The other surfaces (DICOM headers, gear outputs, site/rule/manifest files) are in
``test_hostile_documents.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text

from tests.conftest import CliEnv, CliResult

REPO = Path(__file__).resolve().parents[2]
HOSTILE = REPO / "tests" / "data" / "hostile"
TEST_GEAR = REPO / "containers" / "test-gear"
TABLES = ("containers", "files", "file_versions", "jobs", "job_events", "gear_rules", "roles")
CANARY = re.compile(r"pwned-\d+")


def load_strings() -> list[tuple[str, str]]:
    doc = yaml.safe_load((HOSTILE / "strings.yaml").read_text(encoding="utf-8"))
    out = []
    for item in doc["strings"]:
        if "nest" in item:  # [open, close, n]: JSON nested n levels deep
            opening, closing, n = item["nest"]
            value = opening * n + closing * n
        elif "value" in item:
            value = item["value"]
        else:
            value = item["repeat"][0] * item["repeat"][1]
        out.append((item["id"], value))
    return out


STRINGS = load_strings()
SURFACES = yaml.safe_load((HOSTILE / "cli.yaml").read_text(encoding="utf-8"))["surfaces"]


def db_sensitive(value: str) -> bool:
    """Whether ``value`` can behave differently on PostgreSQL than on SQLite."""
    if not (value.isascii() and value.isprintable()) or len(value) > 64:
        return True
    if any(c in value for c in "'\"\\%_"):
        return True
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return not isinstance(parsed, str)


def _terminal_safe(text_out: str) -> bool:
    return all(ch.isprintable() or ch in "\n " for ch in text_out)


@dataclass
class Rig:
    env: CliEnv
    engine: Engine
    root: Path
    src: Path
    postgres: bool = False
    n: int = 0

    def snapshot(self) -> str:
        h = hashlib.sha256()
        with self.engine.connect() as conn:
            for table in TABLES:
                rows = conn.execute(text(f"SELECT * FROM {table}")).all()
                for r in sorted(repr(tuple(r)) for r in rows):
                    h.update(r.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def call(self, *argv: str) -> CliResult:
        res = self.env.run(*argv)
        where = f"hpcgear {argv!r} -> {res.code}\n{res.err}"
        assert res.code != 70 and "internal error" not in res.err, where
        assert "Traceback" not in res.err + res.out, where
        if res.code == 2:  # a click usage error (e.g. a value that reads as an option)
            assert "Error: " in res.err and not res.out, where
        elif res.code != 0:
            lines = res.err.strip().splitlines()
            assert len(lines) == 2, where
            assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), where
            assert res.code in (3, 4, 5, 6), where
        if "--json" not in argv:
            assert _terminal_safe(res.out) and _terminal_safe(res.err), where
        return res

    def json_of(self, *argv: str) -> Any:
        res = self.call(*argv, "--json")
        assert res.code == 0, res.err
        return res.json()


@pytest.fixture
def rig(cli_env: CliEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    from hpcgear.config.settings import load_settings
    from hpcgear.db.session import create_db_engine

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a shell run by mistake would drop its canaries here
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"fake sif")
    cli_env.ok("gear", "install", str(TEST_GEAR), "--image", str(sif))
    cli_env.ok("group", "create", "g")
    cli_env.ok("project", "create", "g/p")
    src = tmp_path / "src"
    src.mkdir()
    (src / "scan.nii.gz").write_bytes(b"scan bytes")
    cli_env.ok("upload", "g/p/s1/ses1", str(src / "scan.nii.gz"))
    engine = create_db_engine(load_settings(cli_env.config).database_url)
    yield Rig(cli_env, engine, tmp_path, src, postgres=engine.dialect.name == "postgresql")
    engine.dispose()
    names_dir = tmp_path / "hostile-names"  # files *named* after hostile strings live here
    canaries = [p for p in tmp_path.rglob("*") if CANARY.fullmatch(p.name)
                and names_dir not in p.parents]  # fmt: skip
    assert canaries == [], "a hostile string was executed"
    allowed = {"work", "src", "out", "data", "cfg", "fake.sif", "hpcgear.db", "hpcgear.db-wal",
               "hpcgear.db-shm", "hostile-names"}  # fmt: skip
    stray = sorted(p.name for p in tmp_path.iterdir() if p.name not in allowed)
    assert stray == [], f"written outside the instance: {stray}"
    assert list(work.iterdir()) == [], "written into the working directory"


def _expand(arg: str, value: str, n: int, src: Path, file: Path | None) -> str:
    out = arg.replace("{n}", str(n)).replace("{src}", str(src / "scan.nii.gz"))
    if "{file}" in out:
        assert file is not None
        out = out.replace("{file}", str(file))
    return out.replace("{value}", value)


def _hostile_file(rig: Rig, value: str) -> Path | None:
    """A real file named ``value``, or None when the OS cannot hold such a name."""
    if not value or "/" in value or "\0" in value or value in (".", ".."):
        return None
    if len(value.encode("utf-8", "surrogatepass")) > 255:
        return None
    try:
        os.fsencode(value)
    except UnicodeEncodeError:  # a lone surrogate no file name on disk can carry
        return None
    d = rig.root / "hostile-names" / str(rig.n)
    d.mkdir(parents=True)
    path = d / value
    path.write_bytes(b"hostile-name bytes " + str(rig.n).encode())
    return path


def _json_value(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value


def _readback(rig: Rig, surface: str, value: str, res: CliResult, n: int, f: Path | None) -> None:
    """What was accepted must read back exactly as given."""
    if surface == "group-label":
        groups = {g["id"]: g for g in rig.json_of("ls")}
        assert groups[f"h{n}"]["label"] == (value or f"h{n}")  # an empty label means the id
    elif surface == "project-label":
        assert value in {p["label"] for p in rig.json_of("ls", "g")}
    elif surface == "path-level":
        names = [e.get("name") for e in rig.json_of("ls", f"g/p/{value}/ses")]
        assert names == ["scan.nii.gz"]
    elif surface == "tag":
        s1 = next(c for c in rig.json_of("ls", "g/p") if c["label"] == "s1")
        assert value in s1["tags"]
        assert rig.call("tag", "rm", "g/p/s1", value).code == 0
    elif surface == "info-key":
        key, raw = f"{value}=1".split("=", 1)  # the first '=' ends the key, as in the CLI
        s1 = next(c for c in rig.json_of("ls", "g/p") if c["label"] == "s1")
        node: Any = s1["info"]
        for part in key.split("."):
            node = node[part]
        assert node == _json_value(raw)
    elif surface == "info-value":
        entry = next(e for e in rig.json_of("ls", "g/p/s1/ses1") if e.get("name") == "scan.nii.gz")
        assert entry["info"]["k"] == _json_value(value)
    elif surface == "file-name":
        assert f is not None
        names = [e.get("name") for e in rig.json_of("ls", "g/p/s1/ses1")]
        assert value in names
        out = rig.root / "out" / str(n)
        res_dl = rig.call("download", f"g/p/s1/ses1/{value}", "--out", str(out))
        assert res_dl.code == 0, res_dl.err
        assert [p.name for p in out.iterdir()] == [value]
        assert (out / value).read_bytes() == f.read_bytes()
    elif surface in ("gear-config", "job-tag"):
        job = rig.json_of("job", "show", res.json()["id"])
        if surface == "gear-config":
            assert job["config"]["fail_message"] == value
        else:
            assert value in job["tags"]
    elif surface == "rule-condition":
        shown = rig.json_of("rule", "show", f"g/p/r{n}")
        assert shown["name"] == f"r{n}"


@pytest.mark.parametrize("surface", SURFACES, ids=[s["id"] for s in SURFACES])
def test_every_hostile_string_through_a_cli_surface(rig: Rig, surface: dict[str, Any]) -> None:
    accepted = refused = 0
    for sid, value in STRINGS:
        if rig.postgres and not db_sensitive(value):
            continue
        rig.n += 1
        n = rig.n
        file = None
        if any("{file}" in a for a in surface["argv"]):
            file = _hostile_file(rig, value)
            if file is None:
                continue  # no OS file can carry this name; the name itself is tested elsewhere
        argv = [_expand(a, value, n, rig.src, file) for a in surface["argv"]]
        before = rig.snapshot()
        if surface.get("dry_run"):
            dry = rig.call(*argv, "--dry-run")
            assert rig.snapshot() == before, f"{sid}: --dry-run changed the database"
        res = rig.call(*argv)
        if surface.get("dry_run"):
            assert (dry.code == 0) == (res.code == 0), (
                f"{sid}: --dry-run and the real run disagree: {dry.err!r} vs {res.err!r}"
            )
        if res.code != 0:
            refused += 1
            assert rig.snapshot() == before, f"{sid}: a refused command changed the database"
            continue
        if res.out.startswith("Usage:"):  # "--help" as a value: click showed help, no change
            assert rig.snapshot() == before
            continue
        accepted += 1
        _readback(rig, surface["id"], value, res, n, file)
    assert accepted + refused > 0
    if surface["id"] not in ("ls-path",):
        assert refused > 0, "no hostile string was refused: the surface checks nothing?"


DOCUMENT_KINDS = ("dicom", "outputs", "metadata", "sites", "rules", "manifests")


def test_corpus_size() -> None:
    """The corpus is large and varied enough to mean something (issue 11: at least 200
    cases): the strings of ``strings.yaml`` (each through every CLI surface) plus the
    hostile documents of the other files (``test_hostile_documents.py``). Ids are unique
    per file, every surface is exercised and every document kind holds cases."""
    ids = [sid for sid, _v in STRINGS]
    assert len(ids) >= 80, len(ids)
    assert len(set(ids)) == len(ids), "string ids are unique"
    assert len({s["id"] for s in SURFACES}) == len(SURFACES) >= 10
    files = sorted(p.stem for p in HOSTILE.glob("*.yaml"))
    assert files == sorted(("cli", "strings", *DOCUMENT_KINDS)), files
    documents = 0
    for kind in DOCUMENT_KINDS:
        cases = yaml.safe_load((HOSTILE / f"{kind}.yaml").read_text(encoding="utf-8"))["cases"]
        case_ids = [c["id"] for c in cases]
        assert len(case_ids) >= 20, f"{kind}.yaml holds only {len(case_ids)} cases"
        assert len(set(case_ids)) == len(case_ids), f"{kind}.yaml: case ids are unique"
        documents += len(case_ids)
    assert len(ids) + documents >= 200, (len(ids), documents)
