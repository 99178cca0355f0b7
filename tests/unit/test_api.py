"""The HTTP API in-process (FastAPI's TestClient), on SQLite and PostgreSQL.

Errors as JSON with the right status, body limits, OpenAPI docs, the role matrix
over HTTP (read-only / read-write / admin / no role / revoked key / expired job key)
where every denial changes nothing, job-scoped keys, and the api_url refusals.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx", reason="httpx (test extra) drives FastAPI's TestClient")
from fastapi.testclient import TestClient

from hpcgear.api.app import ApiLimits, create_app
from hpcgear.auth import keys
from hpcgear.config.settings import default_settings
from hpcgear.db.models import ApiKey, Job
from hpcgear.db.session import Database
from hpcgear.hierarchy import service as svc
from hpcgear.storage.objects import ObjectStore

REPO = Path(__file__).resolve().parents[2]
USERS = ("ro", "rw", "pa", "nobody")


@dataclass
class Api:
    client: TestClient
    db: Database
    store: ObjectStore
    keys: dict[str, str]
    ids: dict[str, str]
    db_url: str

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"scitran-user {self.keys[who]}"}


def _rows(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    from sqlalchemy import MetaData, select

    md = MetaData()
    md.reflect(db.engine)
    out = {}
    with db.engine.connect() as conn:
        for name, table in sorted(md.tables.items()):
            if name == "api_keys":  # last_used moves on every authenticated call
                continue
            out[name] = sorted(tuple(map(repr, r)) for r in conn.execute(select(table)).all())
    return out


def _gear_manifest(tmp: Path, name: str, *, api_key: bool, category: str = "utility") -> Path:
    m = json.loads((REPO / "containers" / "test-gear" / "manifest.json").read_text())
    m["name"] = name
    m["custom"]["gear-builder"]["category"] = category
    if api_key:
        m["inputs"]["key"] = {"base": "api-key", "read-only": False}
    d = tmp / name
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.fixture
def api(db: Database, db_url: str, tmp_path: Path) -> Iterator[Api]:
    store = ObjectStore(tmp_path / "store")
    store.ensure()
    settings = replace(
        default_settings(tmp_path / "cfg.yaml"),
        database_url=db_url,
        storage_root=tmp_path / "store",
        scratch_root=tmp_path / "scratch",
        api_url="http://127.0.0.1:9",
    )
    from hpcgear.gears.service import install_gear

    f = tmp_path / "in.txt"
    f.write_text("input\n")
    with db.session() as s:
        svc.add_user(s, None, "admin", site_admin=True)
        for u in USERS:
            svc.add_user(s, "admin", u)
        svc.create_group(s, "admin", "lab")
        svc.create_project(s, "admin", "lab/p")
        svc.create_project(s, "admin", "lab/other")
        svc.grant_role(s, "admin", "ro", "lab/p", "read-only")
        svc.grant_role(s, "admin", "rw", "lab/p", "read-write")
        svc.grant_role(s, "admin", "pa", "lab/p", "admin")
        svc.upload_files(s, store, "admin", "lab/p/s1/ses1/acq1", [f])
        svc.upload_files(s, store, "admin", "lab/other/x/y/z", [f])
        install_gear(s, store, "admin", _gear_manifest(tmp_path, "plain", api_key=False))
        install_gear(s, store, "admin", _gear_manifest(tmp_path, "keyed", api_key=True))
        install_gear(s, store, "admin",
                     _gear_manifest(tmp_path, "ana", api_key=False, category="analysis"))
        ids = {
            c: svc.resolve_container(s, p).id
            for c, p in (("acq", "lab/p/s1/ses1/acq1"), ("ses", "lab/p/s1/ses1"),
                         ("proj", "lab/p"), ("other", "lab/other/x/y/z"))
        }
        made = {u: keys.create_key(s, u)[1] for u in ("admin", *USERS)}
        revoked_row, made["revoked"] = keys.create_key(s, "rw")
        keys.revoke_key(s, "rw", revoked_row.id)
        made["expired-job"] = _finished_job_key(s, settings, ids)
        svc.change_tags(s, "admin", "lab/p/s1/ses1/acq1", add=["keep"])
    from hpcgear.cli.remote import run_cli

    app = create_app(settings, db=db, store=store, limits=ApiLimits(max_body=4096),
                     cli_runner=run_cli)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, db, store, made, ids, db_url)


def _finished_job_key(s: Any, settings: Any, ids: dict[str, str]) -> str:
    """The key of a job that has reached a final state."""
    from hpcgear.db.models import Container
    from hpcgear.gears.service import get_gear
    from hpcgear.jobs.service import run_gear_by_ids
    from hpcgear.jobs.sites import SiteRegistry

    dest = s.get(Container, ids["acq"])
    job, _ = run_gear_by_ids(s, "rw", SiteRegistry.from_settings(settings),
                             gear=get_gear(s, "keyed"), destination=dest, inputs={},
                             config={})
    secret = keys.create_job_key(s, job, "rw")
    job.state = "failed"
    return secret


def test_errors_are_json_with_status_and_no_trace(api: Api) -> None:
    c = api.client
    for headers, status in (({}, 401), ({"Authorization": "scitran-user nope"}, 401),
                            ({"Authorization": "Bearer x"}, 401), (api.h("revoked"), 401)):
        r = c.get("/api/users/self", headers=headers)
        assert r.status_code == status, r.text
        assert set(r.json()) == {"status", "message", "hint"} and "Traceback" not in r.text
    r = c.get(f"/api/acquisitions/{api.ids['other']}", headers=api.h("rw"))
    assert r.status_code == 403 and "read-only" in r.json()["message"]
    assert c.get("/api/sessions/nope", headers=api.h("rw")).status_code == 404
    assert c.get("/api/jobs/nope", headers=api.h("rw")).status_code == 404
    r = c.post("/api/lookup", headers=api.h("rw"), json={"path": 5})
    assert r.status_code == 422 and r.json()["hint"]
    r = c.patch(f"/api/acquisitions/{api.ids['acq']}/info", headers=api.h("rw"),
                json={"bogus": {}})
    assert r.status_code == 422
    r = c.get("/api/projects?limit=-1", headers=api.h("rw"))
    assert r.status_code == 422
    r = c.post("/api/lookup", headers=api.h("rw"), content=b"{" * 10_000,
               )
    assert r.status_code == 413 and r.json()["status"] == 413


def test_openapi_docs_and_flywheel_shapes(api: Api) -> None:
    c = api.client
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json").json()
    assert "/api/lookup" in spec["paths"] and "/api/jobs/add" in spec["paths"]
    # a project role shows the group and only that project in it
    groups = c.get("/api/groups", headers=api.h("ro")).json()
    assert [g["_id"] for g in groups] == ["lab"]
    assert c.get("/api/groups/lab", headers=api.h("ro")).status_code == 200
    assert c.get("/api/groups/lab", headers=api.h("nobody")).status_code == 403
    in_group = c.get("/api/groups/lab/projects", headers=api.h("ro")).json()
    assert [p["label"] for p in in_group] == ["p"]
    projects = c.get("/api/projects", headers=api.h("rw")).json()
    assert isinstance(projects, list) and [p["label"] for p in projects] == ["p"]
    assert projects[0]["container_type"] == "project"
    node = c.post("/api/lookup", headers=api.h("rw"),
                  json={"path": ["lab", "p", "s1", "ses1", "acq1"]}).json()
    assert node["_id"] == api.ids["acq"] and node["container_type"] == "acquisition"
    assert node["parents"]["session"] == api.ids["ses"] and node["files"][0]["name"] == "in.txt"
    # paging: limit + after_id walks every row once and ends
    with api.db.session() as s:
        for i in range(5):
            svc.ensure_path(s, "admin", f"lab/p/s1/ses-{i}")
    seen: list[str] = []
    after = ""
    while True:
        rows = c.get(f"/api/sessions?limit=2&after_id={after}", headers=api.h("rw")).json()
        if not rows:
            break
        seen += [r["_id"] for r in rows]
        after = rows[-1]["_id"]
    assert len(seen) == len(set(seen)) == 6
    assert [r["label"] for r in c.get("/api/sessions?filter=label=~ses-[12]$",
                                      headers=api.h("rw")).json()] in (["ses-1", "ses-2"],
                                                                       ["ses-2", "ses-1"])
    data = c.get(f"/api/acquisitions/{api.ids['acq']}/files/in.txt", headers=api.h("ro"))
    assert data.status_code == 200 and data.content == b"input\n"


def _mutations(api: Api) -> dict[str, tuple[str, str, dict[str, Any]]]:
    acq = api.ids["acq"]
    with api.db.session() as s:
        from sqlalchemy import select

        from hpcgear.db.models import Gear

        plain = s.scalar(select(Gear.id).where(Gear.name == "plain"))
        ana = s.scalar(select(Gear.id).where(Gear.name == "ana"))
        from hpcgear.db.models import File

        fid = s.scalar(select(File.id).where(File.container_id == acq))
    job = {"gear_id": str(plain), "inputs": {"input_file": {"type": "acquisition", "id": acq,
                                                            "name": "in.txt"}},
           "destination": {"type": "acquisition", "id": acq}, "config": {}, "tags": ["x"]}
    return {
        "info": ("PATCH", f"/api/acquisitions/{acq}/info", {"json": {"set": {"a": 1}}}),
        "file info": ("PATCH", f"/api/acquisitions/{acq}/files/in.txt/info",
                      {"json": {"set": {"a": 1}}}),
        "classification": ("PATCH", f"/api/acquisitions/{acq}/files/in.txt/classification",
                           {"json": {"add": {"Intent": ["Structural"]}}}),
        "tag": ("POST", f"/api/acquisitions/{acq}/tags", {"json": {"value": "t"}}),
        "upload": ("POST", f"/api/acquisitions/{acq}/files",
                   {"files": {"file": ("new.txt", b"new bytes")}}),
        "job": ("POST", "/api/jobs/add", {"json": job}),
        "tags patch": ("PATCH", f"/api/acquisitions/{acq}/tags", {"json": ["p1"]}),
        "tag delete": ("DELETE", f"/api/acquisitions/{acq}/tags/keep", {}),
        "file fields": ("PUT", f"/api/acquisitions/{acq}/files/in.txt",
                        {"json": {"modality": "MR"}}),
        "file tags": ("PATCH", f"/api/files/{fid}/tags", {"json": ["f1"]}),
        "file info by id": ("PUT", f"/api/files/{fid}/info", {"json": {"k": 1}}),
        "analysis": ("POST", f"/api/sessions/{api.ids['ses']}/analyses?job=true",
                     {"json": {"label": "a", "job": {**job, "gear_id": str(ana)}}}),
        "cli": ("POST", "/api/hpcgear/cli", {"json": {"argv": ["tag", "add", "lab/p/s1", "c"]}}),
    }


MUTATIONS = ["info", "file info", "classification", "tag", "upload", "job", "tags patch",
             "tag delete", "file fields", "file tags", "file info by id", "analysis", "cli"]


@pytest.mark.parametrize("what", MUTATIONS)
def test_role_matrix_over_http(api: Api, what: str) -> None:
    method, url, kw = _mutations(api)[what]
    for who, status in (("ro", 403), ("nobody", 403), ("revoked", 401), ("expired-job", 401)):
        before = _rows(api.db)
        r = api.client.request(method, url, headers=api.h(who), **kw)
        if what == "cli" and status == 403:  # the command ran and was denied: exit status 4
            assert r.status_code == 200 and r.json()["code"] == 4, r.text
        else:
            assert r.status_code == status, (who, r.text)
        assert _rows(api.db) == before, f"denied {what} by {who} changed the database"
    for who in ("rw", "pa", "admin"):
        r = api.client.request(method, url, headers=api.h(who), **kw)
        assert r.status_code == 200, (who, r.text)
        if what == "cli":  # the CLI endpoint answers 200 with the command's exit status
            assert r.json()["code"] == 0, r.json()
    # reads of another project are refused to every project role
    for who in ("ro", "rw", "pa", "nobody"):
        r = api.client.get(f"/api/acquisitions/{api.ids['other']}", headers=api.h(who))
        assert r.status_code == 403
        r = api.client.get(f"/api/acquisitions/{api.ids['other']}/files/in.txt",
                           headers=api.h(who))
        assert r.status_code == 403


def test_job_key_scope_and_expiry(api: Api) -> None:
    from sqlalchemy import select

    from hpcgear.controller.resolve import config_json_for, resolve_spec
    from hpcgear.db.models import Gear
    from hpcgear.states import JobState

    c = api.client
    with api.db.session() as s:
        keyed = s.scalar(select(Gear.id).where(Gear.name == "keyed"))
    body = {"gear_id": str(keyed),
            "inputs": {"input_file": {"type": "acquisition", "id": api.ids["acq"],
                                      "name": "in.txt"}},
            "destination": {"type": "session", "id": api.ids["ses"]}, "tags": []}
    r = c.post("/api/jobs/add", headers=api.h("rw"), json=body)
    assert r.status_code == 200, r.text
    job_id = r.json()["_id"]
    with api.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        spec = resolve_spec(s, job, _local_site(api), "/x.sif")
        doc = config_json_for(s, job, spec, api_url="http://127.0.0.1:9")
    key_text = doc["inputs"]["key"]["key"]
    assert key_text.startswith("127.0.0.1:9:__force_insecure:")
    assert json.dumps(doc).count(key_text) == 1
    jk = {"Authorization": f"scitran-user {key_text}"}
    # reads: destination, its parents, the input's container; nothing else
    assert c.get(f"/api/sessions/{api.ids['ses']}", headers=jk).status_code == 200
    listed = c.get("/api/acquisitions", headers=jk).json()
    assert [a["_id"] for a in listed] == [api.ids["acq"]], "only the input's acquisition"
    assert c.get(f"/api/projects/{api.ids['proj']}", headers=jk).status_code == 200
    assert c.get(f"/api/acquisitions/{api.ids['acq']}/files/in.txt", headers=jk).status_code == 200
    before = _rows(api.db)
    assert c.get(f"/api/acquisitions/{api.ids['other']}", headers=jk).status_code == 403
    # writes: only the destination (info, tags, files)
    assert c.patch(f"/api/acquisitions/{api.ids['acq']}/info", headers=jk,
                   json={"set": {"x": 1}}).status_code == 403
    assert c.post("/api/jobs/add", headers=jk, json=body).status_code == 403
    assert c.post("/api/hpcgear/cli", headers=jk, json={"argv": ["ls"]}).status_code == 403
    assert _rows(api.db) == before
    r = c.patch(f"/api/sessions/{api.ids['ses']}/info", headers=jk, json={"set": {"qc": 1}})
    assert r.status_code == 200
    # listing the job shows no key
    shown = c.get(f"/api/jobs/{job_id}", headers=api.h("rw")).text
    assert key_text.split(":")[-1] not in shown
    # a final job's key stops working
    with api.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.state = JobState.COMPLETE.value
    r = c.get(f"/api/sessions/{api.ids['ses']}", headers=jk)
    assert r.status_code == 401 and "no longer running" in r.json()["message"]
    with api.db.session() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.job_id == job_id))
        assert row is not None and row.kind == "job" and row.owner == "rw"
        assert row.secret_sha256 != key_text.split(":")[-1]


def _local_site(api: Api) -> Any:
    from hpcgear.config.settings import default_settings
    from hpcgear.jobs.sites import embedded_site

    return embedded_site(default_settings(Path("/nonexistent/cfg.yaml")))


def test_expired_user_key_is_refused(api: Api) -> None:
    with api.db.session() as s:
        row, secret = keys.create_key(s, "rw")
        row.expires = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    r = api.client.get("/api/users/self", headers={"Authorization": f"scitran-user {secret}"})
    assert r.status_code == 401 and "expired" in r.json()["message"]


def test_cli_endpoint_runs_commands_as_the_key_owner(api: Api) -> None:
    c = api.client
    r = c.post("/api/hpcgear/cli", headers=api.h("rw"), json={"argv": ["whoami", "--json"]})
    assert r.status_code == 200 and json.loads(r.json()["stdout"])["user"] == "rw"
    r = c.post("/api/hpcgear/cli", headers=api.h("rw"), json={"argv": ["find", "--json"]})
    assert r.status_code == 200, r.text
    r = c.post("/api/hpcgear/cli", headers=api.h("rw"), json={"argv": ["ls", "lab/p", "--json"]})
    assert r.json()["code"] == 0 and json.loads(r.json()["stdout"])[0]["label"] == "s1"
    r = c.post("/api/hpcgear/cli", headers=api.h("rw"),
               json={"argv": ["view", "lab/p", "--columns", "subject.label", "--json"]})
    assert r.json()["code"] == 0, r.text  # the ad-hoc view runs remotely
    assert {"subject.label": "s1"} in json.loads(r.json()["stdout"])
    # --as needs a site admin, whatever the OS account of the server is
    r = c.post("/api/hpcgear/cli", headers=api.h("rw"), json={"argv": ["--as", "admin", "ls"]})
    assert r.json()["code"] == 4 and "site-admin" in r.json()["stderr"]
    before = _rows(api.db)
    r = c.post("/api/hpcgear/cli", headers=api.h("ro"),
               json={"argv": ["tag", "add", "lab/p/s1", "x"]})
    assert r.json()["code"] == 4 and r.json()["stderr"].startswith("error: ")
    assert _rows(api.db) == before
    for argv in (["controller", "once"], ["gear", "install", "/etc"],
                 ["upload", "a", "/etc/passwd"], ["--config", "/x", "ls"],
                 ["ingest", "dicom", "/"], ["job", "debug", "x"],
                 ["view", "run", "v", "--out", "/etc/x"], ["report", "lab/p", "--html=/x"],
                 ["provenance", "export", "j", "-o", "/etc/x"]):
        r = c.post("/api/hpcgear/cli", headers=api.h("admin"), json={"argv": argv})
        assert r.status_code in (403, 422), (argv, r.text)


def test_api_key_gear_needs_a_site_with_api_url(api: Api, tmp_path: Path) -> None:
    from hpcgear.config.settings import default_settings
    from hpcgear.errors import ConfigError
    from hpcgear.gears.service import get_gear
    from hpcgear.jobs.service import run_gear
    from hpcgear.jobs.sites import SiteRegistry

    no_url = SiteRegistry.from_settings(default_settings(tmp_path / "none.yaml"))
    with api.db.session() as s, pytest.raises(ConfigError, match="api_url") as info:
        run_gear(s, "rw", no_url, gear_ref="keyed", dest_path="lab/p/s1/ses1",
                 inputs={}, config={}, dry_run=True)
    assert "site YAML" in info.value.hint
    from hpcgear.jobs.service import batch_run

    with api.db.session() as s, pytest.raises(ConfigError, match="api_url"):
        batch_run(s, "rw", no_url, gear_ref="keyed", over="lab/p/*", inputs={}, config={},
                  dry_run=True)
    with api.db.session() as s:
        assert get_gear(s, "plain") is not None
        run_gear(s, "rw", no_url, gear_ref="plain", dest_path="lab/p/s1/ses1", inputs={},
                 config={}, dry_run=True)


def test_hpcgear_endpoints_sites_rules_provenance(api: Api) -> None:
    c = api.client
    sites = c.get("/api/hpcgear/sites", headers=api.h("rw")).json()
    assert [s["name"] for s in sites] == ["local"] and sites[0]["api_url"]
    assert c.get("/api/hpcgear/rules?project=lab/p", headers=api.h("ro")).json() == []
    r = c.get("/api/hpcgear/rules?project=lab/other", headers=api.h("ro"))
    assert r.status_code == 403
    r = c.get("/api/hpcgear/provenance/nope", headers=api.h("rw"))
    assert r.status_code == 404 and r.json()["hint"]


def test_uploads_are_bounded_by_the_upload_cap_not_the_body_cap(api: Api) -> None:
    """The app's JSON body cap is 4 KiB here; a 1 MiB file still uploads (streamed)."""
    big = b"x" * (1 << 20)
    r = api.client.post(f"/api/acquisitions/{api.ids['acq']}/files", headers=api.h("rw"),
                        files={"file": ("big.bin", big)})
    assert r.status_code == 200, r.text
    assert r.json()[0]["size"] == len(big)
    r = api.client.post("/api/hpcgear/upload?path=lab/p/s2", headers=api.h("rw"),
                        files={"file": ("big.bin", big)})
    assert r.status_code == 200 and r.json()[0]["version"] == 1
    r = api.client.get(f"/api/acquisitions/{api.ids['acq']}/files/big.bin", headers=api.h("ro"))
    assert r.content == big


def test_api_uploads_into_a_profiled_project_are_deidentified(api: Api) -> None:
    """Both upload routes (Flywheel SDK and `hpcgear upload` as a client) honour a
    project's de-identification profile (issue 12 B)."""
    import io

    import pydicom
    from pydicom.data import get_testdata_file

    from hpcgear.ingest.deid import default_profile
    from hpcgear.ingest.deid_service import attach_profile

    with api.db.session() as s:
        attach_profile(s, "admin", "lab/p", default_profile())
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = "Api^Secret"
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    r = api.client.post(f"/api/acquisitions/{api.ids['acq']}/files", headers=api.h("rw"),
                        files={"file": ("a.dcm", data)})
    assert r.status_code == 200, r.text
    r = api.client.post("/api/hpcgear/upload?path=lab/p/s2/v/a", headers=api.h("rw"),
                        files={"file": ("b.dcm", data)})
    assert r.status_code == 200, r.text
    r = api.client.post("/api/hpcgear/upload?path=lab/p/s2/v/a", headers=api.h("rw"),
                        files={"file": ("c.txt", b"plain")})
    assert r.status_code == 200, r.text
    for url in (f"/api/acquisitions/{api.ids['acq']}/files/a.dcm",):
        got = api.client.get(url, headers=api.h("ro"))
        m = pydicom.dcmread(io.BytesIO(got.content))
        assert m.PatientName == "" and m.PatientIdentityRemoved == "YES"
    with api.db.session() as s:
        from hpcgear.hierarchy.permissions import RoleName
        from hpcgear.hierarchy.service import file_version, resolve_file

        _, f = resolve_file(s, "admin", "lab/p/s2/v/a/b.dcm", RoleName.READ_ONLY)
        with api.store.open(file_version(s, f).hash) as fh:
            assert b"Api^Secret" not in fh.read()
        assert f.info["hpcgear"]["deid"]["profile"] == "ps3.15-basic"


def test_job_cancel_over_http_conflict_is_409(api: Api) -> None:
    """``fw.modify_job(id, {"state": "cancelled"})``: 403 for others (nothing changes), 200
    for the requester, then 409 (already final), 422 for any other change; JSON errors."""
    c = api.client
    _m, url, kw = _mutations(api)["job"]
    job_id = c.post(url, headers=api.h("rw"), **kw).json()["_id"]
    for who, statuses in (("ro", (403,)), ("nobody", (403, 404)), ("revoked", (401,)),
                          ("expired-job", (401,))):
        before = _rows(api.db)
        r = c.put(f"/api/jobs/{job_id}", headers=api.h(who), json={"state": "cancelled"})
        assert r.status_code in statuses, (who, r.text)
        assert set(r.json()) == {"status", "message", "hint"}
        assert _rows(api.db) == before
    r = c.put(f"/api/jobs/{job_id}", headers=api.h("rw"), json={"state": "running"})
    assert r.status_code == 422 and r.json()["hint"]
    r = c.put(f"/api/jobs/{job_id}", headers=api.h("rw"), json={"state": "cancelled"})
    assert r.status_code == 200, r.text
    assert c.get(f"/api/jobs/{job_id}", headers=api.h("rw")).json()["state"] == "cancelled"
    r = c.put(f"/api/jobs/{job_id}", headers=api.h("rw"), json={"state": "cancelled"})
    assert r.status_code == 409 and "already cancelled" in r.json()["message"], r.text
    assert r.json()["hint"] and "Traceback" not in r.text
    assert c.put("/api/jobs/nope", headers=api.h("rw"),
                 json={"state": "cancelled"}).status_code == 404


def test_file_content_by_id_streams_to_readers_only(api: Api) -> None:
    from sqlalchemy import select

    from hpcgear.db.models import File

    with api.db.session() as s:
        fid = s.scalar(select(File.id).where(File.container_id == api.ids["acq"]))
        other = s.scalar(select(File.id).where(File.container_id == api.ids["other"]))
    r = api.client.get(f"/api/hpcgear/files/{fid}/content", headers=api.h("ro"))
    assert r.status_code == 200 and r.content == b"input\n"
    assert r.headers["x-hpcgear-hash"].startswith("sha256:")
    assert api.client.get(f"/api/hpcgear/files/{fid}/content?version=9",
                          headers=api.h("ro")).status_code == 404
    for who, status in (("nobody", 403), ("revoked", 401), ("expired-job", 401)):
        r = api.client.get(f"/api/hpcgear/files/{fid}/content", headers=api.h(who))
        assert r.status_code == status and set(r.json()) == {"status", "message", "hint"}
    r = api.client.get(f"/api/hpcgear/files/{other}/content", headers=api.h("rw"))
    assert r.status_code == 403


def test_each_user_has_a_bounded_number_of_staged_uploads_waiting(api: Api) -> None:
    """Unused staged inputs count against the caller (429 past the cap, JSON error with
    a hint); using one frees its slot, and another user's slots are their own."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    body = buf.getvalue()
    transfers = api.client.app.state.hpcgear.transfers
    transfers.max_waiting = 2
    tokens = []
    for _ in range(2):
        r = api.client.post("/api/hpcgear/stage", headers=api.h("rw"), content=body)
        assert r.status_code == 200, r.text
        tokens.append(r.json()["stage"])
    r = api.client.post("/api/hpcgear/stage", headers=api.h("rw"), content=body)
    assert r.status_code == 429, r.text
    err = r.json()
    assert set(err) == {"status", "message", "hint"}
    assert "2 staged uploads" in err["message"] and "expire" in err["hint"]
    staged = api.store.tmp / "api-transfers"
    assert len(list(staged.iterdir())) == 2  # the refused upload left nothing behind
    r = api.client.post("/api/hpcgear/stage", headers=api.h("ro"), content=body)
    assert r.status_code == 200, r.text  # a per-user cap, not a global one
    transfers.take_input("rw", tokens[0])
    r = api.client.post("/api/hpcgear/stage", headers=api.h("rw"), content=body)
    assert r.status_code == 200, r.text


def test_staged_uploads_are_bounded_by_the_upload_cap(api: Api) -> None:
    """POST /api/hpcgear/stage streams a tar past the 4 KiB JSON cap but not past the
    upload cap, with or without a Content-Length (chunked), as a JSON 413/422 error."""
    import io
    import tarfile

    from hpcgear.api.app import ApiLimits

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"y" * (64 << 10)
        info = tarfile.TarInfo("big.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    r = api.client.post("/api/hpcgear/stage", headers=api.h("rw"), content=body)
    assert r.status_code == 200 and r.json()["stage"], r.text
    api.client.app.state.hpcgear.limits = ApiLimits(max_body=4096, max_upload=16 << 10)
    r = api.client.post("/api/hpcgear/stage", headers=api.h("rw"), content=body)
    assert r.status_code == 413 and set(r.json()) == {"status", "message", "hint"}
    r = api.client.post("/api/hpcgear/stage", headers=api.h("rw"),
                        content=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]))
    assert r.status_code == 413 and set(r.json()) == {"status", "message", "hint"}
    staged = api.store.tmp / "api-transfers"
    assert sorted(p.name[:5] for p in staged.iterdir()) == ["stage"]  # the refused left nothing

