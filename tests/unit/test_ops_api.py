"""usage, report and user flags through the HTTP API's CLI endpoint (a key's owner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliEnv
from tests.unit.test_api import Api, api  # noqa: F401  (fixture)
from tests.unit.test_cli_client import server_and_client  # noqa: F401  (fixture)


def _cli(api: Api, who: str, *argv: str) -> dict[str, object]:  # noqa: F811
    r = api.client.post("/api/hpcgear/cli", headers=api.h(who), json={"argv": list(argv)})
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_usage_and_report_through_the_api(api: Api) -> None:  # noqa: F811
    res = _cli(api, "ro", "usage", "--project", "lab/p", "--format", "json")
    assert res["code"] == 0, res
    assert json.loads(str(res["stdout"]))["scope"] == {"project": "lab/p"}
    page = _cli(api, "ro", "report", "lab/p", "--html", "-")
    assert page["code"] == 0 and str(page["stdout"]).startswith("<!DOCTYPE html>")
    # the server never writes a file for a caller
    for bad in (["--html", "/tmp/hpcgear-api-report.html"], ["--html=/tmp/x.html"]):
        r = api.client.post("/api/hpcgear/cli", headers=api.h("admin"),
                            json={"argv": ["report", "lab/p", *bad]})
        assert r.status_code == 422 and "--html" in r.json()["message"], r.text
    page = _cli(api, "ro", "report", "lab/p", "--html=-")
    assert page["code"] == 0 and str(page["stdout"]).startswith("<!DOCTYPE html>")
    # job debug would run containers on the server: not allowed remotely
    r = api.client.post("/api/hpcgear/cli", headers=api.h("admin"),
                        json={"argv": ["job", "debug", "x"]})
    assert r.status_code in (403, 422)


def test_user_flags_through_the_api(api: Api) -> None:  # noqa: F811
    assert _cli(api, "rw", "user", "disable", "ro")["code"] == 4
    assert _cli(api, "admin", "user", "disable", "ro")["code"] == 0
    r = api.client.get("/api/users/self", headers=api.h("ro"))
    assert r.status_code in (401, 403), r.text
    assert _cli(api, "admin", "user", "enable", "ro")["code"] == 0
    assert api.client.get("/api/users/self", headers=api.h("ro")).status_code == 200


def test_report_through_a_real_server_lands_in_the_callers_file(
    server_and_client: tuple[CliEnv, CliEnv, str], tmp_path: Path  # noqa: F811
) -> None:
    _server, client, _key = server_and_client
    out = tmp_path / "client-report.html"
    res = client.ok("report", "lab/p", "--html", str(out))
    assert f"wrote {out}" in res.out
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="provenance"' in page
    usage = client.ok("usage", "--format", "json").json()
    assert usage["scope"] == {"user": "alice"}


def test_controller_status_and_health_through_a_key(
    server_and_client: tuple[CliEnv, CliEnv, str], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import datetime as dt

    from hpcgear.cli.client import remote_key
    from hpcgear.cli.context import AppContext
    from hpcgear.controller.status import record_cycle

    server, client, _key = server_and_client
    server.ok("controller", "once")
    # a researcher's key (alice is no site admin) reads the status the server stored
    status = {s["site"]: s for s in client.ok("controller", "status", "--json").json()}
    assert status["local"]["led"] is True and status["local"]["cycles"] == 1
    assert "site local: led" in client.ok("controller", "status").out
    assert client.ok("controller", "health").out.strip() == "ok"
    # health's exit status 1 comes through the API too
    app = AppContext(config_path=str(server.config))
    record_cycle(app.db, {"site": "local", "errors": ["squeue timed out"]}, "h:1",
                 now=dt.datetime.now(dt.UTC))
    app.close()
    res = client.run("controller", "health")
    assert res.code == 1 and "1 error(s)" in res.out, (res.out, res.err)
    # error texts name other users' jobs and paths: only site admins read them
    assert "squeue timed out" not in res.out
    listed = client.ok("controller", "status", "--json").json()
    assert "squeue timed out" not in str(listed) and listed[0]["recent_errors"]
    assert "squeue timed out" in server.ok("controller", "status", "--json").out
    # running or exporting stays with the admins on the server: refused with a key
    for sub in ("run", "once", "metrics"):
        res = client.run("controller", sub)
        assert res.code == 4 and "does not run through the API" in res.err, res.err
        assert "\nhint: " in res.err
    monkeypatch.setenv("HPCGEAR_API_KEY", "h:1:secret")
    assert remote_key(["controller", "status", "--json"]) == "h:1:secret"
    assert remote_key(["--config", "x", "controller", "health"]) == "h:1:secret"


def test_metrics_endpoint_for_site_admins_and_localhost(api: Api) -> None:  # noqa: F811
    import datetime as dt

    from starlette.testclient import TestClient

    from hpcgear.controller.status import record_cycle

    record_cycle(api.db, {"site": "local", "claimed": 2, "errors": []}, "h:1",
                 now=dt.datetime.now(dt.UTC))
    # a site admin's key, from any host
    r = api.client.get("/metrics", headers=api.h("admin"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'hpcgear_controller_up{site="local"} 1' in r.text
    assert 'hpcgear_controller_cycles_total{site="local"} 1' in r.text
    assert "# TYPE hpcgear_jobs gauge" in r.text
    # other users' keys and job keys: refused; no key from another host: refused
    assert api.client.get("/metrics", headers=api.h("rw")).status_code == 403
    assert api.client.get("/metrics", headers=api.h("revoked")).status_code == 401
    far = api.client.get("/metrics")  # the test client's host is "testclient", not loopback
    assert far.status_code == 401 and "site admin" in far.json()["message"]
    # no key from the server itself (a Prometheus on the same host): allowed
    for host in ("127.0.0.1", "::1"):
        with TestClient(api.client.app, client=(host, 40000)) as local:
            r = local.get("/metrics")
            assert r.status_code == 200 and 'hpcgear_controller_up{site="local"} 1' in r.text
            assert local.get("/metrics", headers={"Authorization": "scitran-user nope"}
                             ).status_code == 401  # a bad key is never waved through
