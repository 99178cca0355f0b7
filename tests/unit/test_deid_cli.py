"""``hpcgear deid`` and project-attached profiles through the real CLI (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pydicom
import pytest

from tests.conftest import CliEnv
from tests.unit.test_deid import SEEDS_PROFILE
from tests.unit.test_ingest_cli import one_clear_error
from tests.unit.test_ingest_dicom import GROUP, write_series

pytestmark = pytest.mark.filterwarnings(
    "ignore:The value length:UserWarning", "ignore::DeprecationWarning", "ignore::UserWarning"
)


@pytest.fixture
def env(cli_env: CliEnv) -> CliEnv:
    cli_env.ok("group", "create", GROUP)
    cli_env.ok("project", "create", f"{GROUP}/demo")
    cli_env.ok("user", "add", "reader")
    cli_env.ok("role", "grant", "reader", f"{GROUP}/demo", "read-write")
    return cli_env


def _stored_dicoms(env: CliEnv, path: str, tmp_path: Path) -> list[pydicom.Dataset]:
    out = tmp_path / "dl"
    env.ok("download", path, "--out", str(out))
    got = next(out.iterdir())
    if got.suffix == ".zip":
        with zipfile.ZipFile(got) as zf:
            import io

            members = [zf.read(n) for n in zf.namelist()]
            return [pydicom.dcmread(io.BytesIO(m)) for m in members if m[128:132] == b"DICM"]
    return [pydicom.dcmread(got)]


def test_deid_test_shows_changes(env: CliEnv, tmp_path: Path) -> None:
    d = tmp_path / "in"
    [f, *_] = write_series(d, study="T", series="s", number=1, description="T1w", count=1,
                           patient_name="Secret^Person", patient_id="MRN-9")
    res = env.ok("deid", "test", "ps3.15-basic", str(f))
    assert "profile ps3.15-basic:" in res.out
    assert "change PatientName: Secret^Person -> " in res.out
    out = env.ok("deid", "test", "ps3.15-basic", str(f), "--json").json()
    rows = {r["attribute"]: r for r in out["changes"]}
    assert rows["PatientID"]["before"] == "MRN-9" and rows["PatientID"]["after"] == ""
    assert rows["PatientIdentityRemoved"]["action"] == "add"
    assert pydicom.dcmread(f).PatientName == "Secret^Person"  # nothing written
    p = tmp_path / "seeds.yaml"
    p.write_text(SEEDS_PROFILE)
    out = env.ok("deid", "test", str(p), str(f), "--json").json()
    assert {r["attribute"]: r["after"] for r in out["changes"]}["PatientName"] == "SEEDS"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlog: y\n")
    one_clear_error(env.run("deid", "test", str(bad), str(f)), "unknown key 'log'")
    one_clear_error(env.run("deid", "test", str(p), str(p)), "not a readable DICOM file")


def test_project_profile_applies_to_ingest_and_upload(env: CliEnv, tmp_path: Path) -> None:
    p = tmp_path / "seeds.yaml"
    p.write_text(SEEDS_PROFILE)
    # only project admins attach; the read-write user cannot
    denied = env.run("--as", "reader", "deid", "attach", f"{GROUP}/demo", str(p))
    one_clear_error(denied, "admin")
    assert denied.code == 4  # permission denied
    out = env.ok("deid", "attach", f"{GROUP}/demo", str(p), "--json").json()
    assert out["name"] == "seeds-deid" and out["reid_map"] is True
    shown = env.ok("deid", "show", f"{GROUP}/demo", "--json").json()
    assert shown["sha256"] == out["sha256"]
    # an ingest WITHOUT any de-identification flag is de-identified by the project
    d = tmp_path / "in"
    write_series(d, study="P", series="s", number=2, description="T1w", count=1,
                 accession="demo/sub-01/ses-01", patient_name="Secret^Person",
                 patient_id="MRN-55", extra={"InstitutionName": "General Hospital"})
    res = env.ok("ingest", "dicom", str(d), "--group", GROUP, "--json").json()
    [fpath] = [f["path"] for f in res["files"]]
    [m] = _stored_dicoms(env, fpath, tmp_path / "a")
    assert m.PatientName == "SEEDS" and m.PatientID != "MRN-55"
    assert m.InstitutionName != "General Hospital" and m.PatientIdentityRemoved == "YES"
    # an upload of a DICOM file into the project is de-identified too
    up = tmp_path / "up"
    [single] = write_series(up, study="U", series="s", number=1, description="x", count=1,
                            patient_name="Other^Secret", patient_id="MRN-66")
    env.ok("upload", f"{GROUP}/demo/sub-01/ses-01/extra", str(single))
    [u] = _stored_dicoms(env, f"{GROUP}/demo/sub-01/ses-01/extra/{single.name}", tmp_path / "b")
    assert u.PatientName == "SEEDS" and u.PatientID != "MRN-66"
    # non-DICOM files pass unchanged
    note = tmp_path / "notes.txt"
    note.write_text("plain")
    env.ok("upload", f"{GROUP}/demo/sub-01/ses-01/extra", str(note))
    # the re-identification map: admins only
    one_clear_error(env.run("--as", "reader", "deid", "map", f"{GROUP}/demo"), "admin")
    rows = env.ok("deid", "map", f"{GROUP}/demo", "--json").json()
    originals = json.dumps(rows)
    assert "MRN-55" in originals and "MRN-66" in originals
    text = env.ok("deid", "map", f"{GROUP}/demo").out
    assert "PatientID: MRN-55 -> " in text
    env.ok("deid", "detach", f"{GROUP}/demo")
    assert env.ok("deid", "show", f"{GROUP}/demo", "--json").json() is None
    missing = env.run("deid", "detach", f"{GROUP}/demo")
    one_clear_error(missing, "has no de-identification")
    assert missing.code == 3  # not found


def test_route_missing_level_goes_to_unsorted_with_opaque_subject(
    env: CliEnv, tmp_path: Path
) -> None:
    d = tmp_path / "in"
    write_series(d / "m", study="M", series="s", number=1, description="T1w", count=1,
                 accession="demo/102", patient_id="MRN-777")
    write_series(d / "n", study="N", series="s", number=1, description="T1w", count=1,
                 accession="", patient_id="MRN-888")
    out = env.ok("ingest", "dicom", str(d), "--group", GROUP, "--json").json()
    assert len(out["sessions"]) == 2, out["sessions"]
    for s in out["sessions"]:
        assert s["path"].startswith(f"{GROUP}/Unsorted/")
        assert "MRN" not in s["path"]
    two_part = next(s for s in out["sessions"] if "no session" in (s["unsorted_reason"] or ""))
    assert "AccessionNumber names project/subject but no session" in two_part["unsorted_reason"]
    assert two_part["path"].split("/")[2] == "102"  # the subject the route named
    other = next(s for s in out["sessions"] if s is not two_part)
    assert other["path"].split("/")[2] == "unsorted-0001"
    # a rerun finds the same subject (not a new opaque label)
    again = env.ok("ingest", "dicom", str(d), "--group", GROUP, "--json").json()
    assert sorted(s["path"] for s in again["sessions"]) == sorted(
        s["path"] for s in out["sessions"]
    )
    # relaxed: project/subject is enough
    e = tmp_path / "in2"
    write_series(e, study="Q", series="s", number=1, description="T1w", count=1,
                 accession="demo/103")
    out = env.ok("ingest", "dicom", str(e), "--group", GROUP, "--route-require",
                 "project,subject", "--json").json()
    assert out["sessions"][0]["path"].startswith(f"{GROUP}/demo/103/")
    one_clear_error(env.run("ingest", "dicom", str(e), "--group", GROUP, "--route-require",
                            "subject"), "--route-require")


def test_plain_upload_service_refuses_identifying_dicom(env: CliEnv, tmp_path: Path) -> None:
    """Any caller of hierarchy.upload_files (not the de-identifying wrapper) is refused."""
    from hpcgear.config.settings import load_settings
    from hpcgear.db.session import Database
    from hpcgear.errors import PermissionDeniedError
    from hpcgear.hierarchy.service import upload_files
    from hpcgear.storage.objects import ObjectStore

    env.ok("deid", "attach", f"{GROUP}/demo", "ps3.15-basic")
    [dcm] = write_series(tmp_path / "x", study="R", series="s", number=1, description="x",
                         count=1)
    import getpass

    settings = load_settings(env.config)
    db = Database.open(settings.database_url)
    with db.session() as s, pytest.raises(PermissionDeniedError, match="de-identification"):
        upload_files(s, ObjectStore(settings.storage_root), getpass.getuser(),
                     f"{GROUP}/demo/a/b", [dcm])
    db.engine.dispose()


def test_upload_zip_of_dicom_is_deidentified(env: CliEnv, tmp_path: Path) -> None:
    env.ok("deid", "attach", f"{GROUP}/demo", "ps3.15-basic")
    [dcm] = write_series(tmp_path / "x", study="Z", series="s", number=1, description="x",
                         count=1, patient_name="Zip^Secret")
    z = tmp_path / "series.dicom.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(dcm, "s/a.dcm")
        zf.writestr("s/notes.txt", "hello")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("readme.txt", "no dicom here")
    env.ok("upload", f"{GROUP}/demo/a/b/c", str(z), str(plain))
    [m] = _stored_dicoms(env, f"{GROUP}/demo/a/b/c/series.dicom.zip", tmp_path / "d")
    assert m.PatientName == "" and m.PatientIdentityRemoved == "YES"
    out = tmp_path / "p"
    env.ok("download", f"{GROUP}/demo/a/b/c/plain.zip", "--out", str(out))
    assert (out / "plain.zip").read_bytes() == plain.read_bytes()


SECRETS = {"PatientName": "Hidden^Person", "PatientID": "MRN-51505", "AccessionNumber": "ACC-51505",
           "OtherPatientIDs": "OTHER-51505", "PatientAddress": "1 Hidden Lane",
           "InstitutionName": "Clinic Of Secrets", "ReferringPhysicianName": "Dr^Whistle",
           "PatientBirthDate": "19800101"}


def _every_stored_byte(root: Path) -> list[tuple[str, bytes]]:
    """Every file under ``root`` (objects, temp files), zip members opened."""
    import io

    out = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        out.append((str(p), data))
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                out += [(f"{p}!{n}", zf.read(n)) for n in zf.namelist()]
    return out


@pytest.mark.parametrize("how", ["--de-identify", "attached"])
def test_nothing_identifying_reaches_storage_logs_or_the_database(
    env: CliEnv, tmp_path: Path, how: str
) -> None:
    """The identifying values of the source DICOM appear nowhere after an ingest and an
    upload into a de-identifying project: not in any stored object or temp file (zip
    members opened), not in any database row, not in the debug log or the output."""
    from hpcgear.config.settings import load_settings
    from tests.unit.test_cli_core import db_snapshot

    d = tmp_path / "in"
    extra = {k: v for k, v in SECRETS.items() if k not in ("PatientName", "PatientID")}
    write_series(d, study="S", series="s", number=1, description="T1w", count=2,
                 patient_name=SECRETS["PatientName"], patient_id=SECRETS["PatientID"],
                 extra=extra)
    flags = ["--de-identify"] if how == "--de-identify" else []
    if how == "attached":
        env.ok("deid", "attach", f"{GROUP}/demo", "ps3.15-basic")
    ingest = env.run("-vv", "ingest", "dicom", str(d), "--group", GROUP, "--project", "demo",
                     "--subject", "s1", *flags, "--json")
    assert ingest.code == 0, ingest.err
    assert '"status": "new"' in ingest.out
    if how == "attached":  # an upload of the same files into the project, too
        up = env.run("-vv", "upload", f"{GROUP}/demo/s2/v1/raw", *map(str, sorted(d.iterdir())))
        assert up.code == 0, up.err
        logs = ingest.out + ingest.err + up.out + up.err
    else:
        logs = ingest.out + ingest.err
    assert "DEBUG" in logs or "debug" in logs.lower(), "the debug log was on"
    storage = load_settings(env.config).storage_root
    rows = repr(db_snapshot(env))
    blobs = _every_stored_byte(Path(storage))
    assert blobs, "something was stored"
    for key, secret in SECRETS.items():
        assert secret not in logs, f"{key} in the log or output"
        assert secret not in rows, f"{key} in the database"
        for where, data in blobs:
            assert secret.encode() not in data, f"{key} in {where}"
