"""Hostile documents (tests/data/hostile/*.yaml) through every loader that reads them (issue 11).

``test_hostile_corpus.py`` pushes hostile *strings* through the CLI's arguments; this
module pushes hostile *documents*: DICOM headers (``ingest dicom``), gear outputs and
their ``.metadata.json`` (the controller's real stage-out step), info metadata
(``.metadata.json`` and ``info set``), site YAML (``site validate`` / ``site add``),
rule files (``rule apply``) and gear manifests (``gear validate`` / ``gear install``).
Every case names its expected outcome, and for each one:

* no traceback, no internal error (exit code 70); a refusal is one ``error:`` and one
  ``hint:`` line, and changes nothing stored (database rows, the config file);
* dry runs and real runs agree;
* nothing written to the terminal is a raw control or bidi character;
* nothing is executed (no ``pwned-N`` canary appears anywhere) and nothing is written
  outside the instance's own directories; a gear output never reads outside its
  output directory (a secret's bytes never reach the store);
* every case ends within a bounded time (no catastrophic regex, no expansion bomb).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from sqlalchemy import Engine, select, text

from tests.conftest import CliEnv, CliResult
from tests.unit.test_hostile_corpus import CANARY, _terminal_safe

REPO = Path(__file__).resolve().parents[2]
HOSTILE = REPO / "tests" / "data" / "hostile"
TEST_GEAR = REPO / "containers" / "test-gear"
MR_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
TABLES = ("containers", "files", "file_versions", "jobs", "job_events", "gear_rules", "roles",
          "gears")  # fmt: skip
CASE_SECONDS = 20.0  # generous for a 2-core box; a catastrophic regex takes minutes
DOCUMENT_FILES = ("dicom", "outputs", "metadata", "sites", "rules", "manifests")


def load_cases(kind: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load((HOSTILE / f"{kind}.yaml").read_text(encoding="utf-8"))
    return list(doc["cases"])


def load_base(kind: str) -> Any:
    return yaml.safe_load((HOSTILE / f"{kind}.yaml").read_text(encoding="utf-8"))["base"]


# ------------------------------------------------------------------ markers

_REPEAT = re.compile(r"@REPEAT:(.):(\d+)")


def expand(value: Any, subs: dict[str, str] | None = None) -> Any:
    """Expand the corpus' compact markers: ``@REPEAT:c:n`` is ``c * n``; ``subs`` replaces
    words such as ``@ROOT@``. Applied to keys and values at any depth."""
    if isinstance(value, str):
        value = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), value)
        for k, v in (subs or {}).items():
            value = value.replace(k, v)
        return value
    if isinstance(value, dict):
        return {expand(k, subs): expand(v, subs) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, subs) for v in value]
    return value


def merge(base: Any, patch: Any) -> Any:
    """``patch`` over ``base``: mappings merge key by key, None deletes, anything else wins."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def deep_text(spec: list[Any]) -> str:
    """``[prefix, open, close, n, middle?, suffix?]``: prefix + open*n + middle + close*n."""
    prefix, opening, closing, n = spec[:4]
    middle = spec[4] if len(spec) > 4 else ""
    suffix = spec[5] if len(spec) > 5 else ""
    return f"{prefix}{opening * n}{middle}{closing * n}{suffix}"


def document_bytes(case: dict[str, Any], *, dump: Callable[[Any], str], base: Any,
                   subs: dict[str, str]) -> bytes:
    """The file a case describes (exactly one of bytes/text/deep/patch)."""
    if "bytes" in case:
        return bytes(case["bytes"])
    if "text" in case:
        return expand(case["text"], subs).encode("utf-8", "surrogatepass")
    if "deep" in case:
        return deep_text(case["deep"]).encode()
    assert "patch" in case, case["id"]
    return dump(merge(base, expand(case["patch"], subs))).encode("utf-8", "surrogatepass")


def dump_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def dump_json(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=True)  # \\u escapes keep surrogates and NULs as text


# ------------------------------------------------------------------ checking


def check_result(res: CliResult, where: str, *, notes_allowed: bool = False) -> None:
    """No traceback; a refusal is one error and one hint line (notes above it if allowed)."""
    msg = f"{where} -> {res.code}\n{res.err}"
    assert res.code != 70 and "internal error" not in res.err, msg
    assert "Traceback" not in res.err + res.out, msg
    assert _terminal_safe(res.out) and _terminal_safe(res.err), msg
    if res.code == 0:
        return
    assert res.code in (3, 4, 5, 6), msg
    lines = res.err.strip().splitlines()
    if not notes_allowed:
        assert len(lines) == 2, msg
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), msg
    assert sum(line.startswith("error: ") for line in lines) == 1, msg


def outcome(case: dict[str, Any], accepted: bool) -> None:
    expect = case.get("expect", "either")
    if expect == "refused":
        assert not accepted, f"accepted but should be refused ({case.get('description')})"
    elif expect == "accepted":
        assert accepted, f"refused but should be accepted ({case.get('description')})"


def each_case(cases: list[dict[str, Any]], check: Callable[[int, dict[str, Any]], None]) -> None:
    """Run ``check`` on every case and report every failing case at once."""
    failures = []
    for i, case in enumerate(cases):
        try:
            check(i, case)
        except Exception as exc:  # an escaped exception is a finding too
            failures.append(f"{case['id']}: {type(exc).__name__}: {str(exc)[:1500]}")
    assert not failures, f"{len(failures)} case(s) failed:\n" + "\n\n".join(failures)


def db_snapshot(engine: Engine, tables: tuple[str, ...] = TABLES) -> str:
    h = hashlib.sha256()
    with engine.connect() as conn:
        for table in tables:
            rows = conn.execute(text(f"SELECT * FROM {table}")).all()
            for r in sorted(repr(tuple(r)) for r in rows):
                h.update(r.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass
class Rig:
    env: CliEnv
    engine: Engine
    root: Path

    def call(self, *argv: str, notes_allowed: bool = False) -> CliResult:
        start = time.monotonic()
        res = self.env.run(*argv)
        took = time.monotonic() - start
        where = f"hpcgear {' '.join(a[:80] for a in argv)!r}"
        assert took < CASE_SECONDS, f"{where} took {took:.1f}s"
        check_result(res, where, notes_allowed=notes_allowed)
        return res

    def snapshot(self) -> str:
        return db_snapshot(self.engine) + hashlib.sha256(self.env.config.read_bytes()).hexdigest()


ALLOWED = {"work", "data", "cfg", "hpcgear.db", "hpcgear.db-wal", "hpcgear.db-shm", "docs",
           "fake.sif", "secret"}  # fmt: skip


def no_escape(root: Path) -> None:
    canaries = [p for p in root.rglob("*") if CANARY.fullmatch(p.name)]
    assert canaries == [], f"a hostile value was executed: {canaries}"
    stray = sorted(p.name for p in root.iterdir() if p.name not in ALLOWED)
    assert stray == [], f"written outside the instance: {stray}"
    assert list((root / "work").iterdir()) == [], "written into the working directory"


@pytest.fixture
def rig(cli_env: CliEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    from hpcgear.config.settings import load_settings
    from hpcgear.db.session import create_db_engine

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a shell run by mistake would drop its canaries here
    (tmp_path / "docs").mkdir()
    engine = create_db_engine(load_settings(cli_env.config).database_url)
    yield Rig(cli_env, engine, tmp_path)
    engine.dispose()
    no_escape(tmp_path)


# ------------------------------------------------------------------ site YAML


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # site files never reach the DB
def test_hostile_site_files(rig: Rig) -> None:
    base = load_base("sites")
    subs = {"@ROOT@": str(rig.root / "data")}

    def check(i: int, case: dict[str, Any]) -> None:
        cid = case["id"]
        named = merge(base, {"name": f"h{i}"})
        f = rig.root / "docs" / f"site-{cid}.yaml"
        f.write_bytes(document_bytes(case, dump=dump_yaml, base=expand(named, subs), subs=subs))
        before = rig.snapshot()
        checked = rig.call("site", "validate", str(f), notes_allowed=True)
        assert rig.snapshot() == before, "site validate changed something"
        added = rig.call("site", "add", str(f))
        assert (checked.code == 0) == (added.code == 0), (
            f"validate and add disagree: {checked.err!r} vs {added.err!r}")
        outcome(case, added.code == 0)
        if added.code != 0:
            assert rig.snapshot() == before, "a refused site changed the config"
            return
        name = added.out.split()[1]
        assert rig.call("site", "show", name).code == 0
        assert rig.call("site", "show", name, "--json").code == 0
        assert rig.call("ls").code == 0, "an attached site broke the instance"

    each_case(load_cases("sites"), check)


# ------------------------------------------------------------------ rule files


def _rule_doc(case: dict[str, Any], base: dict[str, Any], i: int) -> dict[str, Any]:
    if "many" in case:
        rules = [dict(base, name="same") for _ in range(case["many"])]
        return {"project": "g/p", "rules": rules}
    rule = merge(dict(base, name=f"hr{i}"), expand(case["rule"]))
    return {"project": "g/p", "rules": [rule]}


def test_hostile_rule_files(rig: Rig) -> None:
    sif = rig.root / "fake.sif"
    sif.write_bytes(b"fake sif")
    rig.env.ok("gear", "install", str(TEST_GEAR), "--image", str(sif))
    rig.env.ok("group", "create", "g")
    rig.env.ok("project", "create", "g/p")
    base = load_base("rules")
    accepted = []

    def check(i: int, case: dict[str, Any]) -> None:
        cid = case["id"]
        f = rig.root / "docs" / f"rules-{cid}.yaml"
        if "rule" in case or "many" in case:
            data = dump_yaml(_rule_doc(case, base, i)).encode("utf-8", "surrogatepass")
        else:
            data = document_bytes(case, dump=dump_yaml, base=None, subs={})
        f.write_bytes(data)
        before = rig.snapshot()
        dry = rig.call("rule", "apply", str(f), "--dry-run")
        assert rig.snapshot() == before, "--dry-run changed the database"
        res = rig.call("rule", "apply", str(f))
        assert (dry.code == 0) == (res.code == 0), (
            f"--dry-run and the real run disagree: {dry.err!r} vs {res.err!r}")
        outcome(case, res.code == 0)
        if res.code != 0:
            assert rig.snapshot() == before, "a refused rule file changed the database"
            return
        accepted.append(cid)
        assert rig.call("rule", "list", "g/p").code == 0
        assert rig.call("rule", "apply", str(f)).code == 0

    each_case(load_cases("rules"), check)
    assert accepted, "no rule file was accepted: the test proves nothing"
    # The accepted rules meet a hostile upload: evaluation ends and says nothing raw.
    src = rig.root / "data" / "uploads"
    src.mkdir(parents=True)
    name = "a" * 40 + "!.nii.gz"
    (src / name).write_bytes(b"not really nifti")
    assert rig.call("upload", "g/p/s/ses/acq", str(src / name)).code == 0
    assert rig.call("rules", "evaluate").code == 0
    assert rig.call("rule", "list", "g/p").code == 0


# ------------------------------------------------------------------ manifests


def test_hostile_manifests(rig: Rig) -> None:
    sif = rig.root / "fake.sif"
    sif.write_bytes(b"fake sif")
    base = json.loads((TEST_GEAR / "manifest.json").read_text())
    accepted = []

    def check(i: int, case: dict[str, Any]) -> None:
        cid = case["id"]
        d = rig.root / "docs" / f"gear-{cid}"
        d.mkdir()
        (d / "run.sh").write_bytes((TEST_GEAR / "run.sh").read_bytes())
        versioned = dict(base, version=f"1.0.{i}")
        (d / "manifest.json").write_bytes(
            document_bytes(case, dump=dump_json, base=versioned, subs={}))
        before = rig.snapshot()
        checked = rig.call("gear", "validate", str(d), notes_allowed=True)
        assert rig.snapshot() == before, "gear validate changed something"
        res = rig.call("gear", "install", str(d), "--image", str(sif))
        assert (checked.code == 0) == (res.code == 0), (
            f"validate and install disagree: {checked.err!r} vs {res.err!r}")
        outcome(case, res.code == 0)
        if res.code != 0:
            assert rig.snapshot() == before, "a refused manifest changed the database"
            return
        accepted.append(cid)
        assert rig.call("gear", "list").code == 0
        assert rig.call("gear", "list", "--json").code == 0

    each_case(load_cases("manifests"), check)
    assert accepted


# ------------------------------------------------------------------ DICOM headers


def write_hostile_series(folder: Path, cid: str, values: dict[str, Any]) -> None:
    """Two instances of MR_small.dcm carrying ``values``, written without pydicom's value
    checks (a broken scanner or a crafted file is not checked either)."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        for i in range(2):
            ds = pydicom.dcmread(MR_SMALL)
            sop = str(generate_uid(entropy_srcs=["sop", cid, str(i)]))
            base: dict[str, Any] = {
                "StudyInstanceUID": str(generate_uid(entropy_srcs=["study", cid])),
                "SeriesInstanceUID": str(generate_uid(entropy_srcs=["series", cid])),
                "SOPInstanceUID": sop, "SeriesNumber": 7, "InstanceNumber": i + 1,
                "SeriesDescription": "t1_mprage", "AccessionNumber": "demo/sub-01/ses-01",
                "PatientID": "PAT-1", "PatientName": "Doe^Jane",
            }  # fmt: skip
            for key, value in {**base, **values}.items():
                tag = tag_for_keyword(key)
                assert tag is not None, key
                vr = dictionary_VR(tag)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        setattr(ds, key, value)
                    except (ValueError, TypeError, OverflowError):
                        raw = value if isinstance(value, str) else "\\".join(value)
                        data = raw.encode("latin-1", "replace")
                        data += b" " * (len(data) % 2)  # DICOM values have even lengths
                        ds._dict[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(folder / f"{i:03d}.dcm")
    finally:
        config.settings.writing_validation_mode = old


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_dicom_headers(rig: Rig) -> None:
    rig.env.ok("group", "create", "imaging")
    rig.env.ok("project", "create", "imaging/demo")
    seen = {"routed": 0, "unsorted": 0, "skipped": 0}

    def check(_i: int, case: dict[str, Any]) -> None:
        cid = case["id"]
        d = rig.root / "docs" / f"dicom-{cid}"
        write_hostile_series(d, cid, expand(case["set"]))
        before = rig.snapshot()
        dry = rig.call("ingest", "dicom", str(d), "--group", "imaging", "--dry-run")
        assert rig.snapshot() == before, "--dry-run changed the database"
        res = rig.call("ingest", "dicom", str(d), "--group", "imaging", "--json")
        assert (dry.code == 0) == (res.code == 0), f"{dry.err!r} vs {res.err!r}"
        assert res.code == 0, f"ingest refused a whole folder: {res.err}"
        out = res.json()
        files = out["files"]
        if not files:
            got = "skipped"
            assert out["skipped"], "nothing stored and no reason given"
            assert all(s["reason"] for s in out["skipped"])
        else:
            unsorted = [s for s in out["sessions"] if s["unsorted_reason"]]
            got = "unsorted" if unsorted else "routed"
            for s in unsorted:
                assert s["path"].startswith("imaging/Unsorted/"), s
            if got == "routed":
                assert all(f["path"].startswith("imaging/demo/") for f in files), files
        expect = case.get("expect", "either")
        assert expect in ("either", got), f"{got}, expected {expect}: {res.out[:2000]}"
        seen[got] += 1
        for f in files:  # every stored file is reachable by the path the ingest reported
            acq, name = f["path"].rsplit("/", 1)
            listed = rig.call("ls", acq, "--json")
            assert listed.code == 0, f"{acq!r} unreachable: {listed.err}"
            assert name in [e.get("name") for e in listed.json()], f"{name!r} not in {acq!r}"
            assert rig.call("ls", acq).code == 0
        assert rig.call("ingest", "dicom", str(d), "--group", "imaging").code == 0  # rerun

    each_case(load_cases("dicom"), check)
    assert seen["routed"] and seen["unsorted"], seen


# ------------------------------------------------------------------ gear outputs


@dataclass
class Stage:
    ctx: Any
    rt: Any
    engine: Engine
    root: Path
    secret: Path
    dest_id: str
    gear_id: str
    n: int = 0


SECRET_BYTES = b"TOP SECRET outside the job dir\n"


@pytest.fixture
def stage(db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    from hpcgear.config.settings import default_settings
    from hpcgear.config.site import load_site_text
    from hpcgear.controller.context import ControllerContext
    from hpcgear.controller.sites import SiteRuntime
    from hpcgear.db.models import Container, Gear
    from hpcgear.gears.service import install_gear
    from hpcgear.hierarchy import service as svc
    from hpcgear.scheduler.local import LocalBackend
    from hpcgear.scheduler.transport import LocalTransport
    from hpcgear.storage.objects import ObjectStore

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    secret = secret_dir / "passwd"
    secret.write_bytes(SECRET_BYTES)
    site = load_site_text(
        f"name: local\nscheduler: local\nscratch_root: {tmp_path}/data/scratch\n"
        f"runtime:\n  image_cache: {tmp_path}/data/images\n"
    )
    store = ObjectStore(tmp_path / "data" / "store")
    store.ensure()
    sif = tmp_path / "fake.sif"
    sif.write_bytes(b"sif")
    src = tmp_path / "data" / "in.nii.gz"
    src.write_bytes(b"input bytes")
    with db.session() as s:
        svc.add_user(s, None, "admin", site_admin=True)
        svc.create_group(s, "admin", "g")
        svc.create_project(s, "admin", "g/p")
        svc.upload_files(s, store, "admin", "g/p/s1/ses1/acq", [src])
        install_gear(s, store, "admin", TEST_GEAR, image=str(sif))
        acq = s.scalars(select(Container).where(Container.type == "acquisition")).one()
        gear = s.scalars(select(Gear)).one()
        dest_id, gear_id = acq.id, gear.id
    ctx = ControllerContext(db=db, store=store, settings=default_settings(tmp_path / "c.yaml"),
                            actor="test-controller")
    rt = SiteRuntime(site=site, transport=LocalTransport(),
                     backend=LocalBackend(tmp_path / "data" / "local-state"), local_files=True)
    yield Stage(ctx, rt, db.engine, tmp_path, secret, dest_id, gear_id)
    no_escape(tmp_path)
    assert secret.read_bytes() == SECRET_BYTES
    leaked = [p for p in store.root.rglob("*") if p.is_file()
              and SECRET_BYTES in p.read_bytes()]  # fmt: skip
    assert leaked == [], "a secret outside the job dir reached the store"


def _name(raw: str) -> str | bytes:
    if raw.startswith("@BYTES:"):
        return bytes.fromhex(raw[len("@BYTES:"):])
    return raw


def _metadata_text(spec: Any) -> str:
    """A .metadata.json from the corpus (an object, a verbatim string or a generator)."""
    if not isinstance(spec, str):
        return json.dumps(spec)
    if spec.startswith("@DEEP:"):
        _tag, opening, closing, n = spec.split(":")
        return opening * int(n) + closing * int(n)
    if spec.startswith("@DEEPINFO:"):
        return json.dumps({"acquisition": {"info": _deep_info(int(spec.split(":")[1]))}})
    if spec.startswith("@HUGE:"):
        size = int(spec.split(":")[1])
        return json.dumps({"acquisition": {"info": {"a": "x" * size}}})
    if spec.startswith("@MANYFILES:"):
        n = int(spec.split(":")[1])
        return json.dumps({"acquisition": {"files": [{"name": f"f{i}"} for i in range(n)]}})
    if spec.startswith("@TAGS:"):
        raise AssertionError("only inside a mapping")
    return spec


def _deep_info(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        node = {"n": node}
    return node


def write_outputs(out: Path, files: list[dict[str, Any]], subs: dict[str, str], n: int) -> None:
    """The gear's outputs; every file's bytes name the case (``n``), so each is new."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in files:
        name = _name(expand(entry["path"], subs))
        path = Path(os.fsdecode(os.fsencode(out) + b"/" + os.fsencode(name)))
        path.parent.mkdir(parents=True, exist_ok=True)
        if "symlink" in entry:
            os.symlink(expand(entry["symlink"], subs), path)
        elif entry.get("fifo"):
            os.mkfifo(path)
        elif entry.get("dir"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.write_text(f"{entry.get('text', '')} #{n}")


def run_stage_out(st: Stage, files: list[dict[str, Any]], metadata: str | None
                  ) -> tuple[Any, list[str], list[str], str]:
    """Create a job in ``staging``, fill its output dir, run the real finish step.
    Returns (job row, published file names, refused paths, snapshot before)."""
    from hpcgear.controller.finish import finish_job
    from hpcgear.controller.resolve import attempt_paths
    from hpcgear.db.models import File, FileVersion, Job, JobEvent
    from hpcgear.hierarchy.service import new_id

    st.n += 1
    with st.ctx.db.session() as s:
        f = s.scalars(select(File).where(File.name == "in.nii.gz")).one()
        fv = s.scalars(select(FileVersion).where(FileVersion.file_id == f.id)).one()
        job = Job(id=new_id(), gear_id=st.gear_id, state="staging", site="local",
                  config={}, resources={"cpus": 1, "mem_mb": 100, "time_minutes": 10},
                  inputs=[{"name": "input_file", "base": "file", "file_id": f.id,
                           "version": fv.version, "file_name": f.name, "sha256": fv.hash,
                           "size": fv.size, "container_type": "acquisition",
                           "container_id": st.dest_id}],
                  destination_type="acquisition", destination_id=st.dest_id,
                  project_id=f.project_id, tags=[], origin_type="user", origin_id="admin")
        s.add(job)
        s.flush()
        job_id = job.id
        paths = attempt_paths(st.rt.site, job)
    subs = {"@SECRET@": str(st.secret), "@SECRETDIR@": str(st.secret.parent)}
    out = Path(paths.output_dir)
    write_outputs(out, files, subs, st.n)
    if metadata is not None:
        (out / ".metadata.json").write_text(metadata, encoding="utf-8", errors="surrogatepass")
    before = db_snapshot(st.engine, ("containers", "files", "file_versions"))
    start = time.monotonic()
    finish_job(st.ctx, st.rt, job_id)  # never raises: every outcome is the job's state
    assert time.monotonic() - start < CASE_SECONDS
    with st.ctx.db.session() as s:
        row = s.get(Job, job_id)
        assert row is not None
        s.expunge(row)
        published = sorted(s.scalars(select(File.name).join(
            FileVersion, FileVersion.file_id == File.id).where(
            FileVersion.origin_id == job_id)).all())
        refused = [e.data["path"] for e in s.scalars(select(JobEvent).where(
            JobEvent.job_id == job_id, JobEvent.kind == "output_refused")).all()]
    return row, published, refused, before


def test_hostile_gear_outputs(stage: Stage) -> None:
    def check(_i: int, case: dict[str, Any]) -> None:
        meta = case.get("metadata")
        row, published, refused, before = run_stage_out(
            stage, case["files"], None if meta is None else _metadata_text(meta))
        assert row.state in ("complete", "failed"), row.state
        expect = case.get("expect", "either")
        assert expect in ("either", row.state), f"{row.state}: {row.failure_message}"
        if row.state == "failed":
            assert row.failure_kind == case.get("kind", row.failure_kind), row.failure_kind
            assert row.failure_kind in ("output_staging", "invalid_metadata"), row.failure_kind
            assert row.failure_message and _terminal_safe(row.failure_message)
            assert published == [], f"a failed stage-out published {published}"
            after = db_snapshot(stage.engine, ("containers", "files", "file_versions"))
            assert after == before, "a failed stage-out changed the hierarchy"
            return
        if "published" in case:
            assert published == sorted(expand(case["published"])), published
        for want in expand(case.get("refused", [])):
            assert want in refused, f"{want!r} not refused: {refused}"
        for name in published:  # what is stored is addressable and safe to print
            assert "/" not in name and name not in (".", "..") and _terminal_safe(name), name

    each_case(load_cases("outputs"), check)


def test_hostile_metadata_through_stage_out(stage: Stage) -> None:
    def check(_i: int, case: dict[str, Any]) -> None:
        if "text" in case:
            meta_text = case["text"]
        else:
            part = expand(case["metadata"])
            if part.get("info") == "@DEEPINFO:30":
                part["info"] = _deep_info(30)
            if part.get("tags") == "@TAGS:1000":
                part["tags"] = [f"t{i}" for i in range(1000)]
            meta_text = json.dumps({"acquisition": part}, ensure_ascii=True)
        files = [{"path": "ok.txt", "text": "ok"}]
        row, published, _refused, before = run_stage_out(stage, files, meta_text)
        applied = row.state == "complete"
        expect = {"applied": "accepted"}.get(case["expect"], case["expect"])
        outcome({**case, "expect": expect}, applied)
        if not applied:
            assert row.failure_kind == "invalid_metadata", row.failure_message
            assert _terminal_safe(row.failure_message or "")
            assert published == []
            after = db_snapshot(stage.engine, ("containers", "files", "file_versions"))
            assert after == before, "refused metadata changed the hierarchy"
            return
        if "metadata" in case and "info" in case["metadata"]:
            from hpcgear.db.models import Container

            with stage.ctx.db.session() as s:
                acq = s.get(Container, stage.dest_id)
                assert acq is not None
                want = json.loads(meta_text)["acquisition"]["info"]
                for k, v in want.items():
                    assert acq.info[k] == v, f"{k!r} did not read back"

    each_case(load_cases("metadata"), check)


def test_hostile_metadata_through_info_set(rig: Rig) -> None:
    """The same info keys and values through ``hpcgear info set PATH KEY=JSON``."""
    rig.env.ok("group", "create", "g")
    rig.env.ok("project", "create", "g/p")
    src = rig.root / "data" / "x.txt"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("x")
    rig.env.ok("upload", "g/p/s1/ses1", str(src))
    tried = refused = 0
    for case in load_cases("metadata"):
        info = case.get("metadata", {}).get("info")
        if not isinstance(info, dict):
            continue
        for key, value in expand(info).items():
            tried += 1
            before = rig.snapshot()
            res = rig.call("info", "set", "g/p/s1", f"{key}={json.dumps(value)}")
            if res.code != 0:
                refused += 1
                assert rig.snapshot() == before, f"{case['id']}: refused info set changed data"
                continue
            listed = rig.call("ls", "g/p", "--json")
            s1 = next(c for c in listed.json() if c["label"] == "s1")
            node: Any = s1["info"]
            for part in key.split("."):
                node = node[part]
            assert node == value, f"{case['id']}: {key!r} did not read back"
    assert tried > 10 and refused > 0


# ------------------------------------------------------------------ the corpus itself


def test_document_corpus_is_well_formed() -> None:
    for kind in DOCUMENT_FILES:
        cases = load_cases(kind)
        ids = [c["id"] for c in cases]
        assert len(ids) == len(set(ids)), f"{kind}: case ids are unique"
        for c in cases:
            assert c.get("description"), f"{kind}/{c['id']}: every case says what it tries"
            assert c.get("expect", "either") in (
                "refused", "accepted", "either", "routed", "unsorted", "skipped",
                "complete", "failed", "applied"), c["id"]
