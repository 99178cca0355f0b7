"""`hpcgear controller status|health|metrics` from the stored cycle reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hpcgear.cli.context import AppContext
from hpcgear.controller.status import controller_status, health, metrics_text, record_cycle
from hpcgear.db.models import Gear, Job
from tests.conftest import CliEnv


def _db(env: CliEnv) -> AppContext:
    return AppContext(config_path=str(env.config))


def test_status_after_a_cycle_and_health(cli_env: CliEnv, tmp_path: Path) -> None:
    env = cli_env
    # never led and nothing waiting: healthy
    assert env.ok("controller", "health").out.strip() == "ok"
    env.ok("controller", "once")
    data = {s["site"]: s for s in env.ok("controller", "status", "--json").json()}
    local = data["local"]
    assert local["led"] is True and local["cycles"] == 1
    assert local["last_scheduler_answer"] == local["last_cycle"]
    assert local["recent_errors"] == [] and local["backlog"] == {}
    text = env.ok("controller", "status").out
    assert "site local: led" in text and "last cycle:" in text
    assert "+00:00" in text or "UTC" in text or "-" in text.split("last cycle:")[1][:40]
    # an old cycle with errors and a job waiting: unhealthy, exit 1, reasons named
    app = _db(env)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    record_cycle(app.db, {"site": "local", "claimed": 0, "errors": ["squeue timed out"]},
                 "host:1", now=old)
    with app.db.session() as s:
        gear = Gear(name="g", version="1", manifest={}, manifest_sha256="x", installed_by="me")
        s.add(gear)
        s.flush()
        s.add(Job(id="j1", gear_id=gear.id, state="pending", site="local",
                  destination_type="session", destination_id="x", origin_id="me"))
    res = env.run("controller", "health")
    assert res.code == 1
    assert "site local: no controller cycle since" in res.out and "1 job(s) waiting" in res.out
    status = env.ok("controller", "status", "--json").json()[0]
    assert status["recent_errors"][-1]["error"] == "squeue timed out"
    assert status["backlog"] == {"pending": 1}
    prom = tmp_path / "hpcgear.prom"
    env.ok("controller", "metrics", "--textfile", str(prom))
    body = prom.read_text()
    assert 'hpcgear_controller_up{site="local"} 0' in body
    assert 'hpcgear_jobs{site="local",state="pending"} 1' in body
    app.close()


def test_health_and_metrics_functions(db: object) -> None:
    from hpcgear.db.session import Database

    assert isinstance(db, Database)
    now = dt.datetime.now(dt.UTC)
    record_cycle(db, {"site": "a", "errors": []}, "h:1", now=now)
    record_cycle(db, {"site": "b", "errors": ["sbatch refused"]}, "h:1", now=now)
    with db.session() as s:
        sts = controller_status(s, {"a": 60, "b": 60, "c": 60})
    ok, reasons = health(sts, now)
    assert not ok and reasons == ["site b: the last cycle had errors: sbatch refused"]
    text = metrics_text(sts, now)
    assert 'hpcgear_controller_up{site="a"} 1' in text
    assert 'hpcgear_controller_errors_recent{site="b"} 1' in text
    assert 'hpcgear_controller_cycles_total{site="c"} 0' in text
