"""Local backend: runs the same sbatch script on this machine, without SLURM.

For laptops, CI and demos. ``submit`` reads the script's ``#SBATCH`` lines (job
name, output/error, time, array, cpus, mem, chdir, export, signal), starts a
detached launcher (``local_launcher.py``, one session per job) and returns
``local-<pid>``; array tasks are ``local-<pid>_<index>``. The launcher runs
``bash <script>`` per task with the environment variables SLURM would set
(``SLURM_JOB_ID=local-<pid>``, ``SLURM_ARRAY_TASK_ID``, ``SLURM_CPUS_PER_TASK``...),
enforces the time limit and handles hold/release/cancel like SLURM (SIGTERM to
the task's process group, SIGKILL after ``kill_wait_seconds``).

State comes from the launcher's state file (the script's exit status, as SLURM
reports it) plus pid liveness. If the launcher died, a task whose process group
still lives stays ``RUNNING``; one that ended is ``COMPLETED``/``FAILED`` from the
``rc`` in the script's ``exit.json`` (next to the script), and without that record
it is ``NODE_FAIL`` (reason ``LauncherDied``), which the controller treats like a
failed node. The working directory is ``--chdir`` or else the script's directory
(sbatch would use its own cwd). Jobs are remembered in
``state_dir`` (one small file per native id) so a restarted controller finds
them again; there is no MinJobAge, finished jobs stay visible until ``forget``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any

from hpcgear.errors import HpcgearError, SchedulerError
from hpcgear.scheduler import local_launcher
from hpcgear.scheduler.base import (
    Accounting,
    ClusterInfo,
    PartitionInfo,
    PreflightResult,
    SchedulerStatus,
    SubmitRejectedError,
    split_native_id,
)
from hpcgear.scheduler.runner import scrubbed_environment
from hpcgear.states import SchedulerState
from hpcgear.units import parse_memory_mb, parse_time_minutes

logger = logging.getLogger(__name__)

LOCAL_PARTITION = "local"
#: The job script's own exit record, next to the script in the job's .hpcgear dir.
EXIT_RECORD = "exit.json"
MAX_ARRAY_SIZE = 100_001
_NATIVE_RE = re.compile(r"^local-(\d+)$")

# Long options that take no value (so "--hold script" is not read as --hold=script).
_FLAGS = frozenset({
    "hold", "requeue", "no-requeue", "exclusive", "parsable", "wait", "test-only",
    "contiguous", "overcommit", "spread-job", "use-min-nodes", "oversubscribe", "quiet",
    "verbose", "ignore-pbs", "no-kill", "kill-on-invalid-dep", "reboot", "get-user-env",
})
_SHORT = {
    "J": "job-name", "o": "output", "e": "error", "t": "time", "c": "cpus-per-task",
    "n": "ntasks", "N": "nodes", "a": "array", "D": "chdir", "p": "partition", "A": "account",
    "q": "qos", "G": "gpus", "C": "constraint", "d": "dependency", "i": "input",
    "H": "hold", "Q": "quiet", "s": "oversubscribe", "k": "no-kill", "w": "nodelist",
    "x": "exclude", "b": "begin", "M": "clusters", "L": "licenses",
}
_SHORT_FLAGS = frozenset({"H", "Q", "s", "k"})


def parse_sbatch_directives(script_text: str) -> dict[str, str]:
    """``#SBATCH`` options of a batch script -> ``{long-name: value}`` (last one wins).

    Like sbatch, only ``#SBATCH`` lines before the first command are read; values
    may be quoted. Flags (``--hold``) map to ``""``.

    >>> parse_sbatch_directives("#!/bin/bash\\n#SBATCH -J x --time=5\\necho\\n#SBATCH -c 9\\n")
    {'job-name': 'x', 'time': '5'}
    """
    opts: dict[str, str] = {}
    for i, line in enumerate(script_text.splitlines()):
        stripped = line.strip()
        if i == 0 and stripped.startswith("#!"):
            continue
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break  # first command ends the directives
        if not re.match(r"^#SBATCH\s", stripped):
            continue
        try:
            tokens = shlex.split(stripped[len("#SBATCH"):], comments=True)
        except ValueError:
            raise SubmitRejectedError(f"bad #SBATCH line {i + 1}: {stripped!r}",
                                      "fix the quoting of the #SBATCH line") from None
        j = 0
        while j < len(tokens):
            tok = tokens[j]
            if tok.startswith("--"):
                name, eq, value = tok[2:].partition("=")
                if not eq and name not in _FLAGS and j + 1 < len(tokens) \
                        and not tokens[j + 1].startswith("-"):
                    j += 1
                    value = tokens[j]
                opts[name] = value
            elif tok.startswith("-") and len(tok) >= 2:
                letter, value = tok[1], tok[2:]
                name = _SHORT.get(letter, letter)
                if not value and letter not in _SHORT_FLAGS and j + 1 < len(tokens):
                    j += 1
                    value = tokens[j]
                opts[name] = value
            j += 1
    return opts


def parse_array_spec(text: str, *, max_size: int = MAX_ARRAY_SIZE) -> tuple[list[int], int | None]:
    """``--array`` value -> (sorted indices, throttle). ``"0-15:4%2"`` -> ([0,4,8,12], 2)."""
    spec, _, throttle_text = text.strip().partition("%")
    indices: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not m:
            raise SubmitRejectedError(f"invalid --array specification {text!r}",
                                      "use forms like 0-9, 1,3,5, 0-15:4 or 0-99%10")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        step = int(m.group(3)) if m.group(3) else 1
        if last < first or step < 1:
            raise SubmitRejectedError(f"invalid --array range {part!r}",
                                      "ranges go low-high with a positive step")
        indices.update(range(first, last + 1, step))
    if not indices or max(indices) >= max_size:
        raise SubmitRejectedError(f"--array {text!r} has indices outside 0..{max_size - 1}",
                                  f"keep array indices below {max_size}")
    throttle = int(throttle_text) if throttle_text.strip().isdigit() else None
    return sorted(indices), throttle


def _signal_spec(text: str) -> dict[str, Any] | None:
    """``--signal=[{R|B}:]<sig>[@<seconds>]`` -> launcher spec (R: ignored locally)."""
    m = re.fullmatch(r"(?:([RB]+):)?([A-Za-z0-9]+)(?:@(\d+))?", text.strip())
    if not m:
        raise SubmitRejectedError(f"invalid --signal {text!r}", "use e.g. B:TERM@60")
    name = m.group(2).upper()
    if name.isdigit():
        number = int(name)
    else:
        try:
            number = int(signal.Signals["SIG" + name.removeprefix("SIG")])
        except KeyError:
            raise SubmitRejectedError(f"unknown signal in --signal {text!r}",
                                      "use a name like TERM or USR1") from None
    return {"number": number, "seconds": int(m.group(3) or 60),
            "batch_only": "B" in (m.group(1) or "")}


def _export_env(value: str | None, base: Mapping[str, str]) -> dict[str, str]:
    """``--export`` semantics: ALL (default), NONE, or a list of NAME / NAME=value."""
    if value is None or not value.strip():
        return dict(base)
    items = [x for x in value.split(",") if x]
    head = items[0].upper() if items else "ALL"
    if head == "NONE" or (head != "ALL" and head != "NIL"):
        keep = {k: base[k] for k in ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR")
                if k in base}
        env = keep
    else:
        env = dict(base)
    for item in items:
        if item.upper() in ("ALL", "NONE", "NIL"):
            continue
        name, eq, val = item.partition("=")
        if eq:
            env[name] = val
        elif name in base:
            env[name] = base[name]
    return env


@dataclass(frozen=True, slots=True)
class _Entry:
    native_id: str
    pid: int
    dir: Path
    name: str
    script: str
    array: bool
    start_ticks: int | None = None
    submitted: float | None = None


class LocalBackend:
    """Runs sbatch scripts on this host; same interface as ``SlurmBackend``.

    Parameters
    ----------
    state_dir:
        Where the backend remembers its jobs (created 0700).
    kill_wait_seconds:
        Grace between SIGTERM and SIGKILL on cancel and time limit (SLURM's KillWait).
    env:
        Base environment for jobs (default ``os.environ``; scheduler variables
        are scrubbed first).
    """

    def __init__(self, state_dir: str | PurePath, *, kill_wait_seconds: int = 30,
                 env: Mapping[str, str] | None = None, python: str = sys.executable,
                 max_parallel_tasks: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.kill_wait_seconds = kill_wait_seconds
        self._env = dict(env) if env is not None else None
        self.python = python
        self.max_parallel_tasks = max_parallel_tasks or (os.cpu_count() or 1)

    # -- registry

    def _registry(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.state_dir

    def _entry(self, native_id: str) -> _Entry | None:
        base, _ = split_native_id(native_id)
        if not _NATIVE_RE.fullmatch(base):
            return None
        path = self.state_dir / f"{base}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SchedulerError(f"local backend record {path} is unreadable: {exc}",
                                 "remove the file if the job is gone") from None
        return _Entry(base, int(data["pid"]), Path(data["dir"]), data.get("name", ""),
                      data.get("script", ""), bool(data.get("array")), data.get("start_ticks"),
                      data.get("submitted"))

    def _entries(self) -> list[_Entry]:
        if not self.state_dir.is_dir():
            return []
        out = []
        for p in sorted(self.state_dir.glob("local-*.json")):
            entry = self._entry(p.stem)
            if entry is not None:
                out.append(entry)
        return out

    def forget(self, native_ids: Sequence[str]) -> None:
        """Drop finished jobs from the registry (the job directory is left alone)."""
        for nid in native_ids:
            base, _ = split_native_id(nid)
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / f"{base}.json").unlink()

    # -- submit

    def _job_plan(self, script: Path) -> dict[str, Any]:
        try:
            text = script.read_text(encoding="utf-8")
        except OSError as exc:
            raise SubmitRejectedError(f"cannot read batch script {script}: "
                                      f"{exc.strerror or exc}", "check the path") from None
        if not text.startswith("#!"):
            raise SubmitRejectedError(f"{script} does not look like a batch script",
                                      "the script must start with #!")
        opts = parse_sbatch_directives(text)
        try:
            time_limit = parse_time_minutes(opts["time"], what="--time") * 60 \
                if opts.get("time") not in (None, "", "UNLIMITED", "INFINITE") else None
            cpus = int(opts["cpus-per-task"]) if opts.get("cpus-per-task") else None
            ntasks = int(opts["ntasks"]) if opts.get("ntasks") else 1
            mem_mb = parse_memory_mb(opts["mem"], what="--mem") if opts.get("mem") else None
        except (HpcgearError, ValueError) as exc:
            raise SubmitRejectedError(f"invalid #SBATCH option in {script}: {exc}",
                                      getattr(exc, "hint", "fix the #SBATCH line")) from None
        tasks, throttle = (parse_array_spec(opts["array"]) if opts.get("array")
                           else (None, None))
        workdir = Path(opts.get("chdir") or script.parent)
        base_env = scrubbed_environment(self._env)
        base_env.pop("SLURM_TIME_FORMAT", None)
        env = _export_env(opts.get("export"), base_env)
        user = pwd.getpwuid(os.getuid()).pw_name
        env.update({
            "SLURM_JOB_NAME": opts.get("job-name") or script.name,
            "SLURM_SUBMIT_DIR": str(workdir),
            "SLURM_CLUSTER_NAME": "local",
            "SLURM_JOB_PARTITION": LOCAL_PARTITION,
            "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
            "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
            "SLURM_CPUS_ON_NODE": str(cpus or 1),
            "SLURM_JOB_CPUS_PER_NODE": str(cpus or 1),
            "SLURM_JOB_USER": user, "SLURM_JOB_UID": str(os.getuid()),
            "SLURM_RESTART_COUNT": "0", "ENVIRONMENT": "BATCH",
        })
        if cpus:
            env["SLURM_CPUS_PER_TASK"] = str(cpus)
        if mem_mb:
            env["SLURM_MEM_PER_NODE"] = str(mem_mb)
        if opts.get("account"):
            env["SLURM_JOB_ACCOUNT"] = opts["account"]
        if opts.get("qos"):
            env["SLURM_JOB_QOS"] = opts["qos"]
        return {
            "script": str(script), "workdir": str(workdir), "job_name": env["SLURM_JOB_NAME"],
            "user": user, "stdout": opts.get("output"), "stderr": opts.get("error"),
            "tasks": tasks, "throttle": min(throttle or self.max_parallel_tasks,
                                            self.max_parallel_tasks),
            "time_limit_seconds": time_limit, "kill_wait_seconds": self.kill_wait_seconds,
            "signal": _signal_spec(opts["signal"]) if opts.get("signal") else None,
            "env": env, "cpus": cpus, "mem_mb": mem_mb, "comment": opts.get("comment"),
        }

    def submit(self, script_path: str | PurePath, *, hold: bool = True) -> str:
        script = Path(script_path).resolve()
        plan = self._job_plan(script)
        plan["hold"] = hold
        spec_path = script.parent / f"local-submit-{secrets.token_hex(6)}.json"
        local_launcher.write_json_atomic(spec_path, plan)
        argv = [self.python, "-I", local_launcher.__file__, str(spec_path)]
        logger.debug("local submit %s", shlex.join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  env=scrubbed_environment(self._env), check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SchedulerError(f"cannot start the local launcher: {exc}",
                                 "check the Python interpreter and the job directory",
                                 argv=argv, transient=True) from None
        pid_text = proc.stdout.strip()
        if proc.returncode != 0 or not pid_text.isdigit():
            raise SchedulerError(
                f"local launcher failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[:300]}",
                "see the launcher's message; the job was not started",
                argv=argv, returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        pid = int(pid_text)
        native = f"local-{pid}"
        ticks = self._wait_ticks(script.parent / f"{native}.json")
        local_launcher.write_json_atomic(self._registry() / f"{native}.json", {
            "pid": pid, "dir": str(script.parent), "name": plan["job_name"],
            "script": str(script), "array": plan["tasks"] is not None, "start_ticks": ticks,
            "spec": spec_path.name, "submitted": time.time(),
        })
        logger.info("local job %s started for %s (hold=%s)", native, script, hold)
        return native

    @staticmethod
    def _wait_ticks(info_path: Path, timeout: float = 10.0) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = json.loads(info_path.read_text(encoding="utf-8"))
                ticks = data.get("start_ticks")
                return int(ticks) if ticks is not None else None
            except (OSError, ValueError):
                time.sleep(0.02)
        return None

    def preflight(self, script_path: str | PurePath) -> PreflightResult:
        plan = self._job_plan(Path(script_path).resolve())
        cpus = os.cpu_count() or 1
        if plan["cpus"] and plan["cpus"] > cpus:
            raise SubmitRejectedError(f"the job asks for {plan['cpus']} CPUs, this machine has "
                                      f"{cpus}", "ask for fewer CPUs")
        mem = _total_memory_mb()
        if plan["mem_mb"] and mem and plan["mem_mb"] > mem:
            raise SubmitRejectedError(f"the job asks for {plan['mem_mb']} MiB, this machine "
                                      f"has {mem} MiB", "ask for less memory")
        return PreflightResult(True, f"would run locally on {socket.gethostname()}",
                               datetime.now(), LOCAL_PARTITION)

    # -- control

    def release(self, native_ids: Sequence[str]) -> None:
        for nid in dict.fromkeys(native_ids):
            entry = self._entry(nid)
            if entry is None:
                logger.warning("release: the local backend does not know job %s", nid)
                continue
            (entry.dir / f"{entry.native_id}.release").touch()

    def cancel(self, native_ids: Sequence[str]) -> None:
        for nid in dict.fromkeys(native_ids):
            entry = self._entry(nid)
            if entry is None:
                continue  # unknown: nothing to cancel (as scancel on a purged id)
            _, task = split_native_id(nid)
            if task is not None:
                (entry.dir / f"{entry.native_id}_{task}.cancel").touch()
                continue
            (entry.dir / f"{entry.native_id}.cancel").touch()
            if self._alive(entry):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(entry.pid, signal.SIGTERM)
            else:
                self._kill_orphans(entry)

    def _kill_orphans(self, entry: _Entry) -> None:
        """The launcher is gone but its tasks may not be: TERM, then KILL them."""
        state = self._read_state(entry)
        pgids = [int(t["pid"]) for t in (state or {}).get("tasks", {}).values()
                 if t.get("pid") and t.get("state") in ("RUNNING", "PENDING")]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in pgids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
            if sig == signal.SIGTERM and pgids:
                time.sleep(min(self.kill_wait_seconds, 5))

    # -- state

    def _alive(self, entry: _Entry) -> bool:
        ticks = local_launcher.proc_start_ticks(entry.pid)
        if ticks is None:
            if not Path("/proc").is_dir():  # not Linux: best effort
                try:
                    os.kill(entry.pid, 0)
                except ProcessLookupError:
                    return False
                except PermissionError:
                    return True
                return True
            return False
        if entry.start_ticks is not None and ticks != entry.start_ticks:
            return False  # pid reused by another process
        try:
            stat = Path(f"/proc/{entry.pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")

    @staticmethod
    def _read_state(entry: _Entry) -> dict[str, Any] | None:
        path = entry.dir / f"{entry.native_id}.state.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SchedulerError(f"local job state {path} is unreadable: {exc}",
                                 "retry; the launcher rewrites it atomically") from None
        return data

    def _tasks(self, entry: _Entry) -> dict[str, dict[str, Any]]:
        """Per task key ("" or index) -> record, with dead-launcher tasks resolved."""
        state = self._read_state(entry)
        limit = (state or {}).get("time_limit_seconds")
        alive = self._alive(entry)
        if state is None:
            if alive:
                return {"": {"state": "PENDING", "reason": "None"}} if not entry.array else {}
            return {"": {"state": "NODE_FAIL", "reason": "LauncherDied"}}
        tasks: dict[str, dict[str, Any]] = {
            key: {**t, "time_limit_seconds": limit} for key, t in state.get("tasks", {}).items()}
        if not alive:
            cancelled = (entry.dir / f"{entry.native_id}.cancel").exists()
            for key, t in tasks.items():
                if t.get("state") in ("PENDING", "RUNNING"):
                    tasks[key] = self._orphan_state(entry, key, dict(t), cancelled)
        return tasks

    def _orphan_state(self, entry: _Entry, key: str, task: dict[str, Any],
                      cancelled: bool) -> dict[str, Any]:
        """A task whose launcher died: still running, ended per exit.json, or lost."""
        pid = task.get("pid")
        if task.get("state") == "RUNNING" and pid and _group_alive(int(pid)):
            task["reason"] = "LauncherDied"  # orphaned but alive; cancel still kills it
            return task
        rc = None if key else _exit_record_rc(entry.dir / EXIT_RECORD)
        if cancelled:
            task["state"], task["reason"] = "CANCELLED", "None"
        elif rc is not None:
            task["state"] = "COMPLETED" if rc == 0 else "FAILED"
            task["reason"] = "None" if rc == 0 else "NonZeroExitCode"
            task["exit_code"], task["signal"] = rc, 0
        else:
            task["state"], task["reason"] = "NODE_FAIL", "LauncherDied"
        return task

    def _statuses(self, entry: _Entry) -> list[SchedulerStatus]:
        now = time.time()
        out = []
        for key, t in self._tasks(entry).items():
            task = int(key) if key else None
            start, end = t.get("start"), t.get("end")
            elapsed = int((end or now) - start) if start else 0
            reason = t.get("reason")
            out.append(SchedulerStatus(
                native_id=entry.native_id if task is None else f"{entry.native_id}_{task}",
                state=_state(t.get("state")),
                name=entry.name,
                array_job_id=entry.native_id if task is not None else None,
                array_task_id=task,
                reason=None if reason in (None, "None") else reason,
                nodes=socket.gethostname() if start else None,
                partition=LOCAL_PARTITION,
                elapsed_seconds=elapsed,
                time_limit_seconds=t.get("time_limit_seconds"),
                submit_time=datetime.fromtimestamp(entry.submitted) if entry.submitted else None,
                start_time=datetime.fromtimestamp(start) if start else None,
            ))
        return out

    def poll(self, native_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        result: dict[str, SchedulerStatus] = {}
        for nid in dict.fromkeys(native_ids):
            entry = self._entry(nid)
            if entry is None:
                continue
            for status in self._statuses(entry):
                if status.native_id == nid or split_native_id(nid)[1] is None:
                    result[status.native_id] = status
        return result

    def accounting(self, native_ids: Sequence[str]) -> dict[str, Accounting]:
        result: dict[str, Accounting] = {}
        for nid in dict.fromkeys(native_ids):
            entry = self._entry(nid)
            if entry is None:
                continue
            _, wanted = split_native_id(nid)
            for key, t in self._tasks(entry).items():
                task = int(key) if key else None
                if wanted is not None and task != wanted:
                    continue
                native = entry.native_id if task is None else f"{entry.native_id}_{task}"
                start, end = t.get("start"), t.get("end")
                rss = t.get("max_rss_kb")
                result[native] = Accounting(
                    native_id=native,
                    state=_state(t.get("state")),
                    state_text=str(t.get("state", "")),
                    name=entry.name,
                    exit_code=t.get("exit_code"),
                    exit_signal=t.get("signal"),
                    elapsed_seconds=int(end - start) if start and end else None,
                    start_time=datetime.fromtimestamp(start) if start else None,
                    end_time=datetime.fromtimestamp(end) if end else None,
                    nodes=socket.gethostname() if start else None,
                    partition=LOCAL_PARTITION,
                    max_rss_bytes=int(rss) * 1024 if rss is not None else None,
                    total_cpu_seconds=t.get("cpu_seconds"),
                    reason=None if t.get("reason") in (None, "None") else t.get("reason"),
                    time_limit_seconds=t.get("time_limit_seconds"),
                    submit_time=(datetime.fromtimestamp(entry.submitted) if entry.submitted
                                 else None),
                    source="local",
                )
        return result

    def lookup_by_name(self, name: str) -> list[str]:
        return [e.native_id for e in self._entries() if e.name == name]

    def cluster_info(self) -> ClusterInfo:
        return ClusterInfo(version="local", max_array_size=MAX_ARRAY_SIZE, min_job_age_seconds=0,
                           cluster_name="local", kill_wait_seconds=self.kill_wait_seconds,
                           accounting_storage="local")

    def partitions(self) -> list[PartitionInfo]:
        cpus = os.cpu_count() or 1
        mem = _total_memory_mb()
        return [PartitionInfo(name=LOCAL_PARTITION, state="UP", default=True, total_cpus=cpus,
                              total_nodes=1, max_nodes=1, node_cpus_max=cpus,
                              node_mem_max_mb=mem, nodes=socket.gethostname())]


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in a process group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _exit_record_rc(path: Path) -> int | None:
    """``rc`` from the job script's exit record (``exit.json``), if it wrote one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rc = data.get("rc", data.get("exit_code")) if isinstance(data, dict) else None
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else None


def _state(text: Any) -> SchedulerState:
    try:
        return SchedulerState(str(text))
    except ValueError:
        return SchedulerState.UNKNOWN


def _total_memory_mb() -> int | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(pages * size // (1024 * 1024))
