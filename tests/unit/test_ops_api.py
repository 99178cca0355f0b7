"""usage, report and user flags through the HTTP API's CLI endpoint (a key's owner)."""

from __future__ import annotations

import json
from pathlib import Path

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
    res = _cli(api, "admin", "report", "lab/p", "--html", "/tmp/hpcgear-api-report.html")
    assert res["code"] == 4 and "stdout" in str(res["stderr"])
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
