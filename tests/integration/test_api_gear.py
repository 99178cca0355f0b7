"""End to end: a gear with an api-key input calls the API from inside its SLURM job.

The bundled containers/api-gear (fw-gear + flywheel-sdk from PyPI in its image) gets a
job-scoped key in its config.json, reads its destination and writes info through
`hpcgear serve`; afterwards the info is there, the key appears nowhere else (sbatch
script, job log, provenance, --json output), and the key is refused.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CliEnv
from tests.integration.conftest import DevEnv
from tests.integration.test_controller_slurm import _site_yaml
from tests.integration.test_flywheel_sdk import Served, free_port, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.apptainer]
REPO = Path(__file__).resolve().parents[2]


def test_api_key_gear_writes_info_and_its_key_dies(
    dev_env: DevEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    cli = CliEnv(home=tmp_path, config=tmp_path / "cfg" / "config.yaml")
    cli.ok("init", "--db", f"sqlite:///{tmp_path / 'hpcgear.db'}", "--storage",
           str(tmp_path / "storage"), "--scratch", str(tmp_path / "scratch"))
    port = free_port()
    site = _site_yaml(dev_env, tmp_path)
    # no api_url yet: the gear installs with a warning and runs are refused up front
    with cli.config.open("a") as fh:
        fh.write(f"sites: [{site}]\n")
    built = cli.run("gear", "build", str(REPO / "containers" / "api-gear"))
    assert built.code == 0, built.err
    assert "api_url" in built.err and "warning:" in built.err
    cli.ok("group", "create", "lab")
    cli.ok("project", "create", "lab/p")
    f = tmp_path / "in.txt"
    f.write_text("input\n")
    cli.ok("upload", "lab/p/s1/ses1", str(f))
    refused = cli.run("run", "api-gear", "--dest", "lab/p/s1/ses1", "--tag", "hpc", "--dry-run")
    assert refused.code == 5 and "api_url" in refused.err and "hint:" in refused.err
    refused = cli.run("rule", "add", "lab/p", "--name", "r", "--gear", "api-gear",
                      "--when", "file.type=text", "--input", "input_file", "--tag", "hpc")
    assert refused.code == 5 and "api_url" in refused.err, refused.err
    # the site names the API address its compute nodes reach
    site.write_text(site.read_text() + f"\napi_url: http://127.0.0.1:{port}\n")
    served = start_server_on(cli, tmp_path, port)
    try:
        jid = cli.ok("run", "api-gear", "--dest", "lab/p/s1/ses1", "--tag", "hpc",
                     "--input", "input_file=lab/p/s1/ses1/in.txt", "--config",
                     "note=from slurm", "--json").json()["id"]
        key_text = None
        sbatch_text = ""
        deadline = time.monotonic() + 300
        while True:
            cli.ok("controller", "once")
            job = cli.ok("job", "show", jid, "--json").json()
            cfgs = list(Path(dev_env.scratch).glob(f"*/hpcgear/{jid}/a1/flywheel/v0/config.json"))
            if cfgs and key_text is None:
                key_text = json.loads(cfgs[0].read_text())["inputs"]["key"]["key"]
                sbatch = next(cfgs[0].parents[2].glob(".hpcgear/*.sbatch"), None)
                sbatch_text = sbatch.read_text() if sbatch else ""
                assert oct(cfgs[0].stat().st_mode)[-3:] in ("600", "400", "640", "644")
            if job["state"] in ("complete", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(1)
        log = cli.run("job", "logs", jid).out
        assert job["state"] == "complete", (job, log, served.log.read_text()[-2000:])
        assert key_text is not None and key_text.startswith(f"127.0.0.1:{port}:")
        secret = key_text.split(":")[-1]
        # the gear wrote info through the API, as the requester, within its scope
        ses = cli.ok("ls", "lab/p/s1", "--json").json()[0]
        assert ses["info"]["api_gear"]["note"] == "from slurm", ses
        assert ses["info"]["api_gear"]["user"] == cli.ok("whoami", "--json").json()["user"]
        files = {e["name"] for e in cli.ok("ls", "lab/p/s1/ses1", "--json").json()}
        assert "api-report.json" in files
        # the key is nowhere but config.json
        prov = cli.ok("provenance", "show", jid, "--json").out
        shown = json.dumps(cli.ok("job", "show", jid, "--json").json())
        for text in (sbatch_text, log, prov, shown):
            assert secret not in text
        assert sbatch_text, "the sbatch script was read while the job was live"
        # and it is refused now the job is final
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/users/self",
                                     headers={"Authorization": f"scitran-user {key_text}"})
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(req, timeout=10)
        assert denied.value.code == 401
    finally:
        served.proc.terminate()
        served.proc.wait(timeout=20)


def start_server_on(cli: CliEnv, tmp_path: Path, port: int) -> Served:
    return start_server(cli, tmp_path, port=port)
