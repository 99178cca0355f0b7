"""A user disabled after queueing work: the controller fails their pending jobs, never submits."""

from __future__ import annotations

from tests.conftest import CliEnv
from tests.unit.test_jobs_service import gear_env  # noqa: F401  (fixture)


def _run(env: CliEnv, *who: str) -> str:
    out = env.ok(*who, "run", "test-gear", "--dest", "lab/p1/s1/ses1", "--input",
                 "input_file=lab/p1/s1/ses1/s1.nii.gz", "--json").json()
    return str(out["id"])


def test_pending_jobs_of_a_disabled_user_fail_as_rejected(gear_env: CliEnv) -> None:  # noqa: F811
    env = gear_env
    env.ok("user", "add", "alice")
    env.ok("role", "grant", "alice", "lab/p1", "read-write")
    hers = _run(env, "--as", "alice")
    mine = _run(env)
    env.ok("user", "disable", "alice")
    env.ok("controller", "once")
    job = env.ok("job", "show", hers, "--json").json()
    assert job["state"] == "failed" and job["failure_kind"] == "rejected", job
    why = " ".join(str(e["message"]) for e in job["events"])
    assert "'alice' is disabled" in why and "hpcgear user enable alice" in why, why
    assert "hpcgear user enable alice" in env.ok("job", "show", hers).out
    assert job["native_id"] is None  # never reached the scheduler
    assert "claimed for submission" not in why
    # an enabled user's job is claimed as usual (the fake image may fail it later)
    assert _claimed(env, mine)
    # after `user enable` a retry of the refused job is claimed normally
    env.ok("user", "enable", "alice")
    retried = env.ok("--as", "alice", "job", "retry", hers).out.split()[1].rstrip(":")
    env.ok("controller", "once")
    assert _claimed(env, retried)


def _claimed(env: CliEnv, job_id: str) -> bool:
    events = env.ok("job", "show", job_id, "--json").json()["events"]
    text = " ".join(str(e["message"]) for e in events)
    return "claimed for submission" in text and "is disabled" not in text
