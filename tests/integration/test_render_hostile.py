"""Rendered job scripts run under bash with hostile values, and record exits correctly.

Labels, file names, config strings, tags, the gear command and environment values
carry quotes, ``$()``, backticks, newlines, ``;`` and 10 kB strings. The scripts run
for real under bash with a fake container runtime (a small bash script written to
tmp) that records its argv NUL-separated and plays a plan: boot failure, gear exit
code, or a long run that waits for TERM. Nothing from the values may execute (canary
files stay absent) and the argv must arrive byte for byte.

Needs only bash; marked ``integration`` because it runs real processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hpcgear.config.site import SiteConfig, load_site_text
from hpcgear.errors import InvalidInputError
from hpcgear.render import (
    ArrayPaths,
    JobPaths,
    build_runtime_argv,
    parse_exit_record,
    render_array,
    render_sbatch,
)
from hpcgear.runtimes import render_gear_env
from hpcgear.spec import GearRef, InputSpec, JobSpec, Resources

pytestmark = pytest.mark.integration

BASH = shutil.which("bash") or "/bin/bash"

FAKE_RUNTIME = r"""#!/bin/bash
# Fake apptainer: records its argv ($0 too, NUL-separated); follows the plan, a line a call.
state=__STATE__
if [ "${1:-}" = --version ]; then
    echo "apptainer version 0.0.0-fake"
    exit 0
fi
n=$(( $(cat "$state/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$state/count"
printf '%s\0' "$0" "$@" >"$state/argv.$n"
echo $$ >"$state/pid.$n"
marker=
prev=
for arg in "$@"; do
    # the real container writes /.hpcgear/started, bound from the host directory
    if [ "$prev" = --bind ] && [ "${arg%:/.hpcgear}" != "$arg" ]; then
        marker=${arg%:/.hpcgear}/started
    fi
    prev=$arg
done
action=$(sed -n "${n}p" "$state/plan")
case $action in
    boot-fail)
        echo "FATAL: could not start container" >&2
        exit 255 ;;
    run:*)
        : >"$marker"
        exit "${action#run:}" ;;
    sleep)
        : >"$marker"
        trap 'echo TERM >"$state/got-term"; exit 143' TERM
        sleep 30 &
        wait $!
        exit 0 ;;
    *)
        echo "fake runtime: no plan for call $n" >&2
        exit 99 ;;
esac
"""


@dataclasses.dataclass
class Rig:
    root: Path
    state: Path
    canary: Path
    site: SiteConfig

    def plan(self, *actions: str) -> None:
        (self.state / "plan").write_text("".join(a + "\n" for a in actions))

    def argv(self, n: int) -> list[bytes]:
        data = (self.state / f"argv.{n}").read_bytes()
        assert data.endswith(b"\0")
        return data[:-1].split(b"\0")

    def calls(self) -> int:
        path = self.state / "count"
        return int(path.read_text()) if path.exists() else 0

    def canaries(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.name.startswith("canary") and p.is_file()]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    state = tmp_path / "fake"
    state.mkdir()
    fake = state / "apptainer"
    fake.write_text(FAKE_RUNTIME.replace("__STATE__", shlex.quote(str(state))))
    fake.chmod(0o755)
    canary = tmp_path / "canaries"
    canary.mkdir()
    site = load_site_text(
        f"name: hostile\n"
        f"scheduler: local\n"
        f"scratch_root: {tmp_path}/scratch/{{user}}\n"
        f"storage_root: {tmp_path}/storage\n"
        f"runtime:\n"
        f"  executable: {fake}\n"
        f"  image_cache: {tmp_path}/images\n"
        f"  boot_retries: 2\n"
        f"  boot_retry_delay_seconds: 0\n"
        f"  term_grace_seconds: 60\n",
        "hostile-site.yaml",
    )
    return Rig(tmp_path, state, canary, site)


def evil(rig: Rig, tag: str) -> list[str]:
    """Strings that create canary files if anything ever evaluates them."""
    c = f"{rig.canary}/{tag}"
    return [
        f"$(touch {c}-dollar)",
        f"`touch {c}-backtick`",
        f"'; touch {c}-squote; '",
        f'"; touch {c}-dquote; "',
        f"x\ntouch {c}-newline\n",
        f"a; touch {c}-semi & touch {c}-amp | cat",
        f"$(touch {c}-nested)'\"`touch {c}-nested2`\"'",
        "${IFS}*?[!a]~ \\ \t $HOME end\\",
        "A" * 10_000 + f"$(touch {c}-long)",
    ]


# File names cannot hold '/', so their canaries are relative (the script runs in JOB_DIR).
EVIL_FILE_NAMES = [
    "$(touch canary-f1)",
    "`touch canary-f2`.nii.gz",
    "it's a \"scan\"; touch canary-f3.dcm",
    "new\nline; touch canary-f4",
    "-rf --no-preserve-root",
    "B" * 200 + "$(touch canary-f5)",
]


def hostile_spec(rig: Rig, job_id: str = "job-hostile-1", **changes: object) -> JobSpec:
    words = evil(rig, job_id)
    gear = GearRef(
        name="evil-gear", version=words[0], manifest_sha256="sha256:" + "1" * 64,
        image_ref="docker://example/evil", image_digest="sha256:" + "2" * 64,
        sif_path=f"{rig.root}/images/evil.sif",
        command="python run.py --label " + " ".join(words),
        environment=tuple((f"EVIL_{i}", w) for i, w in enumerate(words)),
    )
    inputs = (
        *(InputSpec(name=f"in{i}", base="file", file_name=name)
          for i, name in enumerate(EVIL_FILE_NAMES)),
        InputSpec(name="$(touch canary-in)", base="file", file_name="plain.txt"),
    )
    spec = JobSpec(
        job_id=job_id, attempt=1, gear=gear,
        config={"label": words[2], "threshold": words[4], "list": words},
        inputs=inputs, destination_type="session", destination_id=words[1],
        resources=Resources(cpus=1, mem_mb=512, time_minutes=10), site="hostile",
        user="alice", tags=tuple(words),
    )
    return dataclasses.replace(spec, **changes) if changes else spec


def stage_in(spec: JobSpec, site: SiteConfig, *, with_inputs: bool = True) -> JobPaths:
    """What stage-in does: directories, config.json, gear.env and the input files."""
    paths = JobPaths.for_spec(spec, site)
    for d in paths.directories():
        Path(d).mkdir(parents=True, exist_ok=True, mode=0o700)
    Path(paths.config_json).write_text(json.dumps(spec.config))
    Path(paths.env_file).write_text(render_gear_env(spec))
    if with_inputs:
        for i in spec.inputs:
            assert i.file_name is not None
            path = Path(paths.input_file(i.name, i.file_name))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"data")
    return paths


def run_script(rig: Rig, text: str, *, env: dict[str, str] | None = None,
               name: str = "job.sbatch") -> subprocess.CompletedProcess[bytes]:
    script = rig.root / name
    script.write_text(text)
    cwd = rig.root / "cwd"
    cwd.mkdir(exist_ok=True)
    # sbatch --export=NONE: only SLURM's own variables reach the script
    environment = {"SLURM_JOB_ID": "4242", **(env or {})}
    return subprocess.run([BASH, str(script)], cwd=cwd, env=environment, capture_output=True,
                          timeout=60, check=False)


def exit_record(paths: JobPaths) -> dict[str, object]:
    text = Path(paths.exit_json).read_text()
    parse_exit_record(text)  # the schema parser accepts what the script wrote
    return json.loads(text)  # type: ignore[no-any-return]


def assert_no_canaries(rig: Rig) -> None:
    assert rig.canaries() == []
    assert list(rig.canary.iterdir()) == []


def test_hostile_values_do_not_execute_and_argv_is_byte_exact(rig: Rig) -> None:
    spec = hostile_spec(rig)
    paths = stage_in(spec, rig.site)
    rendered = render_sbatch(spec, rig.site, paths)
    Path(paths.sbatch).write_text(rendered.text)
    rig.plan("run:0")
    res = run_script(rig, rendered.text)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert_no_canaries(rig)
    expected = [a.encode() for a in build_runtime_argv(spec, rig.site, paths)]
    assert rig.argv(1) == expected
    assert rig.argv(1)[-1] == spec.gear.command.encode()  # type: ignore[union-attr]
    record = exit_record(paths)
    assert record["complete"] is True and record["rc"] == 0 and record["started"] is True
    assert record["boot_attempts"] == 1 and record["boot_failed"] is False
    assert record["signal"] is None and record["error"] is None
    assert record["job_id"] == spec.job_id and record["attempt"] == 1
    assert record["slurm_job_id"] == "4242" and record["slurm_array_task_id"] is None
    assert record["runtime_version"] == "apptainer version 0.0.0-fake"
    assert record["host"] and isinstance(record["elapsed_s"], int)
    assert parse_exit_record(Path(paths.exit_json).read_text()).succeeded
    # the job's files are private
    assert Path(paths.exit_json).stat().st_mode & 0o077 == 0
    assert Path(paths.tmp_dir).stat().st_mode & 0o077 == 0
    assert not list(Path(paths.meta_dir).glob("exit.json.tmp*"))


def test_env_file_values_arrive_byte_exact_through_a_posix_shell(rig: Rig) -> None:
    """Apptainer evaluates --env-file with a POSIX shell interpreter; so does bash here."""
    spec = hostile_spec(rig)
    env_file = rig.root / "gear.env"
    env_file.write_text(render_gear_env(spec))
    names = [n for n, _ in spec.gear.environment] + ["HPCGEAR_JOB_ID", "HPCGEAR_DESTINATION"]
    out = subprocess.run(
        ["env", "-i", BASH, "-c", 'set -a; . "$1"; shift; for v; do printf "%s\\0" "${!v}"; done',
         "_", str(env_file), *names],
        cwd=rig.root, capture_output=True, timeout=30, check=True,
    ).stdout
    values = out[:-1].split(b"\0")
    expected = [v for _, v in spec.gear.environment] + [spec.job_id,
                                                        f"session/{spec.destination_id}"]
    assert values == [v.encode() for v in expected]
    assert_no_canaries(rig)


def test_cuda_visible_devices_reaches_the_env_file(rig: Rig) -> None:
    """SLURM's GPU allocation survives --cleanenv; injected text is stripped, not run."""
    spec = hostile_spec(rig)
    paths = stage_in(spec, rig.site)
    rig.plan("run:0")
    res = run_script(rig, render_sbatch(spec, rig.site, paths).text,
                     env={"CUDA_VISIBLE_DEVICES": "0,GPU-1a2b;$(touch x)'"})
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    lines = Path(paths.env_file).read_text().splitlines()
    assert lines[-1] == "CUDA_VISIBLE_DEVICES='0,GPU-1a2btouchx'"
    assert_no_canaries(rig)


def test_gear_exit_code_is_recorded(rig: Rig) -> None:
    spec = hostile_spec(rig)
    paths = stage_in(spec, rig.site)
    rig.plan("run:3")
    res = run_script(rig, render_sbatch(spec, rig.site, paths).text)
    assert res.returncode == 3
    record = exit_record(paths)
    assert (record["complete"], record["rc"], record["started"], record["boot_attempts"]) == (
        True, 3, True, 1)
    assert record["boot_failed"] is False
    assert not parse_exit_record(Path(paths.exit_json).read_text()).succeeded
    assert rig.calls() == 1  # a gear error is never retried in the job
    assert_no_canaries(rig)


def test_boot_failure_is_retried_with_the_same_argv(rig: Rig) -> None:
    spec = hostile_spec(rig)
    paths = stage_in(spec, rig.site)
    rig.plan("boot-fail", "run:0")
    res = run_script(rig, render_sbatch(spec, rig.site, paths).text)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert b"did not start" in res.stderr
    record = exit_record(paths)
    assert (record["rc"], record["started"], record["boot_attempts"]) == (0, True, 2)
    assert rig.argv(1) == rig.argv(2)
    assert_no_canaries(rig)


def test_boot_failure_after_all_retries_is_recorded(rig: Rig) -> None:
    spec = hostile_spec(rig)
    paths = stage_in(spec, rig.site)
    rig.plan("boot-fail", "boot-fail", "boot-fail", "run:0")
    res = run_script(rig, render_sbatch(spec, rig.site, paths).text)
    assert res.returncode == 255
    record = exit_record(paths)
    assert record["complete"] is True and record["rc"] == 255
    assert record["started"] is False and record["boot_failed"] is True
    assert record["boot_attempts"] == 3  # 1 + boot_retries
    assert rig.calls() == 3


def test_missing_input_stops_before_the_container(rig: Rig) -> None:
    spec = hostile_spec(rig)
    paths = stage_in(spec, rig.site, with_inputs=False)
    rig.plan("run:0")
    res = run_script(rig, render_sbatch(spec, rig.site, paths).text)
    assert res.returncode == 66
    record = exit_record(paths)
    assert record["complete"] is True and record["rc"] is None and record["started"] is False
    assert str(record["error"]).startswith("input file missing: input/in0/$(touch canary-f1)")
    assert rig.calls() == 0
    assert_no_canaries(rig)


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def start_script(rig: Rig, text: str) -> subprocess.Popen[bytes]:
    script = rig.root / "job.sbatch"
    script.write_text(text)
    return subprocess.Popen([BASH, str(script)], cwd=rig.root, env={"SLURM_JOB_ID": "4343"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("minutes", "timed_out"), [(10, False), (1, True)])
def test_term_is_forwarded_to_the_container_and_recorded(
    rig: Rig, minutes: int, timed_out: bool
) -> None:
    spec = hostile_spec(rig, resources=Resources(cpus=1, mem_mb=512, time_minutes=minutes))
    paths = stage_in(spec, rig.site)
    rig.plan("sleep")
    proc = start_script(rig, render_sbatch(spec, rig.site, paths).text)
    try:
        wait_for(lambda: Path(paths.started_marker).exists())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (rig.state / "got-term").read_text() == "TERM\n"
    assert proc.returncode == 143
    record = exit_record(paths)
    assert record["complete"] is True and record["signal"] == "TERM"
    assert record["rc"] == 143 and record["started"] is True and record["boot_attempts"] == 1
    # 10 min limit, 60 s grace: a TERM after a few seconds is a cancel, not the time limit;
    # with a 1 min limit the TERM comes when SLURM's --signal warning would
    assert record["timed_out"] is timed_out


def test_exit_trap_never_claims_success(rig: Rig) -> None:
    """Killed by a signal it does not trap, the script leaves only "complete": false."""
    spec = hostile_spec(rig)
    paths = stage_in(spec, rig.site)
    rig.plan("sleep")
    proc = start_script(rig, render_sbatch(spec, rig.site, paths).text)
    try:
        wait_for(lambda: Path(paths.started_marker).exists())
        proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        fake_pid = rig.state / "pid.1"
        if fake_pid.exists():  # the fake runtime outlives the killed script: stop it
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(fake_pid.read_text()), signal.SIGTERM)
    assert proc.returncode != 0
    record = exit_record(paths)
    assert record["complete"] is False and record["rc"] is None
    assert not parse_exit_record(Path(paths.exit_json).read_text()).succeeded


def test_array_task_runs_its_own_job(rig: Rig) -> None:
    specs = [hostile_spec(rig, f"job-arr-{i}") for i in range(3)]
    # array tasks share gear and resources; make the gear identical
    specs = [dataclasses.replace(s, gear=specs[0].gear) for s in specs]
    paths = [stage_in(s, rig.site) for s in specs]
    text = render_array(specs, rig.site, array_id="arr-1").text
    rig.plan("run:0")
    res = run_script(rig, text, env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "5001"},
                     name="array.sbatch")
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert rig.argv(1) == [a.encode() for a in build_runtime_argv(specs[1], rig.site, paths[1])]
    record = exit_record(paths[1])
    assert record["job_id"] == "job-arr-1" and record["rc"] == 0
    assert record["slurm_array_task_id"] == 1 and record["slurm_job_id"] == "5001"
    assert not Path(paths[0].exit_json).exists() and not Path(paths[2].exit_json).exists()
    assert (Path(paths[1].meta_dir) / "slurm-5001.out").read_text().startswith("hpcgear: job")
    assert_no_canaries(rig)
    for bad in ("3", "x", ""):
        res = run_script(rig, text, env={"SLURM_ARRAY_TASK_ID": bad}, name="array.sbatch")
        assert res.returncode == 64, bad
    assert rig.calls() == 1


def test_array_task_creates_its_job_directory_from_tasks_dat(rig: Rig) -> None:
    """Per-array stage-in: ONE tasks.dat, each task builds its own job directory from it
    (hostile file names and config stay data), and a damaged record fails the task as
    input staging instead of running the gear."""
    from hpcgear.scheduler.transport import LocalTransport
    from hpcgear.staging.stagein import ArrayTask, stage_array
    from hpcgear.storage.objects import ObjectStore

    store = ObjectStore(rig.root / "storage")
    stored = [store.put_bytes(f"bytes of input {i}\n".encode()) for i in range(2)]
    specs = []
    for i in range(3):
        spec = hostile_spec(rig, f"job-dat-{i}")
        inputs = tuple(
            dataclasses.replace(inp, sha256=stored[n % 2].hash, size=stored[n % 2].size)
            for n, inp in enumerate(spec.inputs)
        )
        specs.append(dataclasses.replace(spec, inputs=inputs))
    specs = [dataclasses.replace(s, gear=specs[0].gear) for s in specs]
    paths = [JobPaths.for_spec(s, rig.site) for s in specs]
    apaths = ArrayPaths.for_array(rig.site.render_scratch_root("alice"), "arr-dat")
    Path(apaths.root).mkdir(parents=True)
    configs = [{"config": {"label": s.config["label"], "i": n}} for n, s in enumerate(specs)]
    result = stage_array(LocalTransport(), store, apaths.tasks_dat, [
        ArrayTask(s, p, c, render_gear_env(s)) for s, p, c in zip(specs, paths, configs,
                                                                   strict=True)])
    assert not result.errors and all(f is not None for f in result.files)
    # identical contents once: 21 input files of 3 tasks, two distinct objects
    inputs = [f for fs in result.files if fs for f in fs if "/input/" in f.relpath]
    assert len(inputs) == 21 and len({f.offset for f in inputs}) == 2
    assert not any(Path(p.root).exists() for p in paths)  # nothing per task before sbatch
    text = render_array(specs, rig.site, array_id="arr-dat", paths=paths, array_paths=apaths,
                        task_files=[f or () for f in result.files]).text
    rig.plan("run:0", "run:0")
    res = run_script(rig, text, env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "5002"},
                     name="array.sbatch")
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    job = paths[1]
    assert json.loads(Path(job.config_json).read_text()) == configs[1]
    assert Path(job.env_file).read_text() == render_gear_env(specs[1])
    for n, inp in enumerate(specs[1].inputs):
        assert inp.file_name is not None
        got = Path(job.input_file(inp.name, inp.file_name)).read_bytes()
        assert got == f"bytes of input {n % 2}\n".encode()
    assert Path(job.sbatch_ref).read_text() == f"array_script={apaths.sbatch}\ntask=1\n"
    assert Path(job.root).stat().st_mode & 0o077 == 0
    assert Path(job.config_json).stat().st_mode & 0o077 == 0
    assert rig.argv(1) == [a.encode() for a in build_runtime_argv(specs[1], rig.site, job)]
    assert exit_record(job)["rc"] == 0
    assert not Path(paths[0].root).exists() and not Path(paths[2].root).exists()
    assert_no_canaries(rig)
    # a damaged byte in task 2's config: the task refuses to run the gear
    files = result.files[2]
    assert files is not None
    cfg = next(f for f in files if f.relpath == "flywheel/v0/config.json")
    data = bytearray(Path(apaths.tasks_dat).read_bytes())
    data[cfg.offset] ^= 0x20
    Path(apaths.tasks_dat).write_bytes(bytes(data))
    res = run_script(rig, text, env={"SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "5003"},
                     name="array.sbatch")
    assert res.returncode == 66
    record = exit_record(paths[2])
    assert record["started"] is False and "not as staged" in str(record["error"])
    assert not Path(paths[2].config_json).exists()
    assert rig.calls() == 1


def test_unsafe_ids_and_users_never_render(rig: Rig) -> None:
    with pytest.raises(InvalidInputError, match="user name"):
        JobPaths.for_spec(hostile_spec(rig, user="$(touch canary-user)"), rig.site)
    with pytest.raises(InvalidInputError, match="job id"):
        JobPaths.for_job(f"{rig.root}/scratch", "x;touch canary-id", 1)
    spec = hostile_spec(rig)
    with pytest.raises(InvalidInputError, match="cannot be used as a file name"):
        render_sbatch(
            dataclasses.replace(spec, inputs=(InputSpec("in", "file", file_name="../../x"),)),
            rig.site, JobPaths.for_spec(spec, rig.site))
    assert_no_canaries(rig)
