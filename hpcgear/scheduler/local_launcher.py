"""Detached launcher for the local backend: runs one sbatch script like SLURM would.

Started by ``LocalBackend.submit`` as ``python -I local_launcher.py <spec.json>``
(standard library only, so it runs without hpcgear on the path). It forks, the
parent prints the child's pid and exits, and the child -- a session leader --
is the "job": its pid gives the native id ``local-<pid>``.

The child writes, next to the spec (in the job's ``.hpcgear`` dir):

* ``local-<pid>.json``        pid, process start ticks, native id (written once)
* ``local-<pid>.state.json``  every task's state, rewritten atomically on each change

and watches for ``local-<pid>.release`` (release a held job) and
``local-<pid>.cancel`` / ``local-<pid>_<task>.cancel`` (cancel) written by the
backend. SIGTERM to the launcher cancels everything as well.

Each task runs ``bash <script>`` in its own process group with SLURM-like
environment variables; stdout/stderr go to the script's ``--output``/``--error``
patterns. Cancel and time limit work as in SLURM: SIGTERM to the task's process
group, SIGKILL after ``kill_wait_seconds``. When a task's script exits, whatever
it left running in its group is killed (SLURM does the same). Memory limits are
not enforced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.1

_PATTERN_RE = re.compile(r"%(\d*)([AajxuNnts%])")


def proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell reused pids apart."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # 0600: the spec holds the job's environment
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def expand_pattern(pattern: str, values: dict[str, str]) -> str:
    """SLURM filename pattern (``%j``, ``%A``, ``%a``, ``%x``, ``%u``, ``%N``, ``%5a``...)."""

    def sub(m: re.Match[str]) -> str:
        width, key = m.group(1), m.group(2)
        if key == "%":
            return "%"
        value = values.get(key, "")
        if width and value.isdigit():
            value = value.zfill(int(width))
        return value

    return _PATTERN_RE.sub(sub, pattern)


class Task:
    def __init__(self, index: int | None) -> None:
        self.index = index
        self.state = "PENDING"
        self.reason: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.max_rss_kb: int | None = None
        self.cpu_seconds: float | None = None
        self.term_sent: float | None = None
        self.early_signal_sent = False
        self.cancelled = False
        self.timed_out = False
        self.stdout: str | None = None
        self.stderr: str | None = None

    @property
    def key(self) -> str:
        return "" if self.index is None else str(self.index)

    @property
    def final(self) -> bool:
        return self.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state, "reason": self.reason, "pid": self.pid, "start": self.start,
            "end": self.end, "exit_code": self.exit_code, "signal": self.signal,
            "max_rss_kb": self.max_rss_kb, "cpu_seconds": self.cpu_seconds,
            "stdout": self.stdout, "stderr": self.stderr,
        }


class Launcher:
    def __init__(self, spec: dict[str, Any], spec_dir: Path) -> None:
        self.spec = spec
        self.dir = spec_dir
        self.pid = os.getpid()
        self.native = f"local-{self.pid}"
        self.cancel_all = False
        indices = spec.get("tasks")
        self.tasks = [Task(i) for i in indices] if indices is not None else [Task(None)]
        self.throttle = max(1, int(spec.get("throttle") or len(self.tasks)))
        self.held = bool(spec.get("hold"))
        self.dirty = True
        self.host = socket.gethostname()

    def path(self, suffix: str) -> Path:
        return self.dir / f"{self.native}{suffix}"

    # -- bookkeeping

    def write_state(self) -> None:
        if not self.dirty:
            return
        write_json_atomic(self.path(".state.json"), {
            "native_id": self.native,
            "held": self.held,
            "updated": time.time(),
            "time_limit_seconds": self.spec.get("time_limit_seconds"),
            "tasks": {t.key: t.as_dict() for t in self.tasks},
        })
        self.dirty = False

    def set_state(self, task: Task, state: str, reason: str | None = None) -> None:
        task.state = state
        task.reason = reason
        self.dirty = True

    # -- the loop

    def prepare(self) -> None:
        """Install signal handlers and write the first state (before the pid file)."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for t in self.tasks:
            self.set_state(t, "PENDING", "JobHeldUser" if self.held else "None")
        self.write_state()

    def run(self) -> int:
        while True:
            now = time.time()
            self.check_requests()
            self.enforce_limits(now)
            self.reap(now)
            if not self.held and not self.cancel_all:
                self.start_tasks(now)
            self.write_state()
            if all(t.final for t in self.tasks):
                return 0
            time.sleep(POLL_SECONDS)

    def _on_term(self, signum: int, frame: object) -> None:
        self.cancel_all = True

    def check_requests(self) -> None:
        if self.held and self.path(".release").exists():
            self.held = False
            self.dirty = True
            for t in self.tasks:
                if t.state == "PENDING":
                    self.set_state(t, "PENDING", "None")
        if self.path(".cancel").exists():
            self.cancel_all = True
        for t in self.tasks:
            if t.final or t.cancelled:
                continue
            wanted = self.cancel_all or (
                t.index is not None and self.path(f"_{t.index}.cancel").exists())
            if not wanted:
                continue
            t.cancelled = True
            if t.proc is None:
                t.end = time.time()
                self.set_state(t, "CANCELLED", "None")
            else:
                self.terminate(t)

    def terminate(self, t: Task) -> None:
        if t.term_sent is None and t.pid is not None:
            t.term_sent = time.time()
            _killpg(t.pid, signal.SIGTERM)

    def enforce_limits(self, now: float) -> None:
        limit = self.spec.get("time_limit_seconds")
        kill_wait = float(self.spec.get("kill_wait_seconds", 30))
        early = self.spec.get("signal")
        for t in self.tasks:
            if t.proc is None or t.final or t.start is None:
                continue
            if limit:
                if early and not t.early_signal_sent and \
                        now >= t.start + limit - int(early.get("seconds", 60)):
                    t.early_signal_sent = True
                    sig = int(early.get("number", signal.SIGTERM))
                    if early.get("batch_only", True):
                        _kill(t.proc.pid, sig)
                    else:
                        _killpg(t.proc.pid, sig)
                if now >= t.start + limit and not t.timed_out and not t.cancelled:
                    t.timed_out = True
                    self.terminate(t)
            if t.term_sent is not None and now >= t.term_sent + kill_wait:
                _killpg(t.proc.pid, signal.SIGKILL)

    def reap(self, now: float) -> None:
        for t in self.tasks:
            if t.proc is None or t.final or t.pid is None:
                continue
            try:
                pid, status, usage = os.wait4(t.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status, usage = t.pid, 0, None
            if pid == 0:
                continue
            _killpg(t.pid, signal.SIGKILL)  # leftovers of the script, as SLURM does
            t.end = now
            if os.WIFSIGNALED(status):
                t.exit_code, t.signal = 0, os.WTERMSIG(status)
            else:
                t.exit_code, t.signal = os.WEXITSTATUS(status), 0
            if usage is not None:
                t.max_rss_kb = usage.ru_maxrss
                t.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 3)
            if t.timed_out:
                self.set_state(t, "TIMEOUT", "TimeLimit")
            elif t.cancelled:
                self.set_state(t, "CANCELLED", "None")
            elif t.exit_code == 0 and t.signal == 0:
                self.set_state(t, "COMPLETED", "None")
            else:
                self.set_state(t, "FAILED", "NonZeroExitCode")

    def start_tasks(self, now: float) -> None:
        running = sum(1 for t in self.tasks if t.state == "RUNNING")
        for t in self.tasks:
            if running >= self.throttle:
                if t.state == "PENDING" and t.reason != "JobArrayTaskLimit":
                    self.set_state(t, "PENDING", "JobArrayTaskLimit")
                continue
            if t.state != "PENDING" or t.cancelled:
                continue
            self.start_task(t, now)
            running += 1

    def task_ids(self, t: Task) -> dict[str, str]:
        spec = self.spec
        job_id = self.native if t.index is None else f"{self.native}_{t.index}"
        return {
            "j": job_id, "A": self.native, "a": t.key, "x": spec.get("job_name", ""),
            "u": spec.get("user", ""), "N": self.host, "n": "0", "t": "0", "s": "batch",
        }

    def start_task(self, t: Task, now: float) -> None:
        spec = self.spec
        workdir = spec["workdir"]
        values = self.task_ids(t)
        default_out = "slurm-%j.out" if t.index is None else "slurm-%A_%a.out"
        out_path = os.path.join(workdir, expand_pattern(spec.get("stdout") or default_out,
                                                        values))
        err_pattern = spec.get("stderr")
        err_path = os.path.join(workdir, expand_pattern(err_pattern, values)) \
            if err_pattern else None
        env = dict(spec.get("env") or {})
        env.update({
            "SLURM_JOB_ID": values["j"], "SLURM_JOBID": values["j"],
            "SLURM_JOB_NODELIST": self.host, "SLURM_NODELIST": self.host,
            "SLURMD_NODENAME": self.host, "SLURM_SUBMIT_HOST": self.host,
            "SLURM_TOPOLOGY_ADDR": self.host,
        })
        if t.index is not None:
            indices = [x.index for x in self.tasks if x.index is not None]
            env.update({
                "SLURM_ARRAY_JOB_ID": self.native, "SLURM_ARRAY_TASK_ID": str(t.index),
                "SLURM_ARRAY_TASK_COUNT": str(len(indices)),
                "SLURM_ARRAY_TASK_MIN": str(min(indices)),
                "SLURM_ARRAY_TASK_MAX": str(max(indices)),
            })
        t.stdout, t.stderr = out_path, err_path or out_path
        try:
            out_fh = open(out_path, "ab")  # noqa: SIM115 - handed to the child
            err_fh = open(err_path, "ab") if err_path else None  # noqa: SIM115
        except OSError as exc:
            t.end = now
            t.exit_code, t.signal = 1, 0
            self.set_state(t, "FAILED", f"JobLaunchFailure: {exc}")
            return
        try:
            t.proc = subprocess.Popen(
                ["bash", spec["script"]],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out_fh,
                stderr=err_fh if err_fh is not None else subprocess.STDOUT,
                process_group=0, close_fds=True,
            )
        except OSError as exc:
            t.end = now
            t.exit_code, t.signal = 1, 0
            self.set_state(t, "FAILED", f"JobLaunchFailure: {exc}")
            return
        finally:
            out_fh.close()
            if err_fh is not None:
                err_fh.close()
        t.pid = t.proc.pid
        t.start = now
        self.set_state(t, "RUNNING", "None")


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: local_launcher.py SPEC.json", file=sys.stderr)
        return 2
    spec_path = Path(argv[1]).resolve()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    child = os.fork()
    if child:
        # Parent: report the job's pid and leave; the child is reparented to init.
        print(child, flush=True)
        return 0
    os.setsid()
    log = os.open(spec_path.with_name(spec_path.stem + ".log"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
    launcher = Launcher(spec, spec_path.parent)
    launcher.prepare()
    write_json_atomic(launcher.path(".json"), {
        "native_id": launcher.native, "pid": launcher.pid,
        "start_ticks": proc_start_ticks(launcher.pid), "spec": spec_path.name,
        "submitted": time.time(),
    })
    try:
        code = launcher.run()
    except BaseException as exc:  # leave a trace, then die like a failed node would
        print(f"local launcher crashed: {exc!r}", file=sys.stderr, flush=True)
        for t in launcher.tasks:
            if t.pid is not None and not t.final:
                _killpg(t.pid, signal.SIGKILL)
        raise
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
