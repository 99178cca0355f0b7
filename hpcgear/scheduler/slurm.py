"""SLURM command-line backend: argv builders, pure parsers, and the backend written once.

Layout (psij style): ``build_*`` functions return argv lists, ``parse_*`` functions
turn SLURM's text into frozen values and are tested on output captured from a
real SLURM (``tests/unit/fixtures/slurm``), and ``SlurmBackend`` only glues
them to a ``CommandRunner`` (local subprocess or SSH transport).

What is queried, and why:

* poll: ONE ``squeue`` per call at any scale: ``--array --states=all --jobs=<ids>``
  (array tasks folded into their array's id) while the id list fits in one
  argument (``ARGV_BUDGET``), else ``--me`` (all of the submitting account's
  jobs, filtered here). ``--states=all`` keeps finished jobs visible for
  MinJobAge, ``--array`` gives one line per array task. A job SLURM no longer
  knows is simply absent; ``Invalid job id specified`` for such a job is an
  answer, not a failure (for a list, on SLURMs that refuse the whole list, the
  answer comes from one ``--me`` query instead). Any other failure raises: a
  failed query never changes a job's state.
* accounting: ONE ``sacct`` (allocations and steps in the same answer) for
  states/exit codes/timings and MaxRSS/TotalCPU (max over the job's rows). A row
  slurmdbd has not completed yet (a placeholder named ``allocation`` without a
  partition, seen when a step record arrives before the job's) is left out: ask
  again later. Only an id list longer than ``ARGV_BUDGET`` even with array tasks
  folded into their arrays (thousands of separate jobs ending at once) is split.
  When the cluster has no accounting storage (``sacct`` says so), fall back to
  ``scontrol --oneliner show job`` for the jobs still in the controller's
  memory (MinJobAge); jobs in neither are missing and the controller relies on
  the job's exit record. ``sacct -c`` (the job completion log) is not used: it
  needs a ``JobCompType`` other than ``jobcomp/none`` (the dev cluster and many
  sites have none), lacks step usage, and ``scontrol`` already covers the window
  (MinJobAge) in which the controller resolves a vanished job.
* lookup by name: ``squeue --name`` and, if accounting works, ``sacct --name``
  over the last week (crash recovery, ambiguous sbatch failures).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import PurePath
from typing import TypedDict, TypeVar

from hpcgear.errors import SchedulerError, TransportError
from hpcgear.scheduler.base import (
    Accounting,
    ClusterInfo,
    PartitionInfo,
    PreflightResult,
    ReleaseRefusedError,
    SchedulerStatus,
    SchedulerUnavailableError,
    SubmitRejectedError,
    base_native_id,
    split_native_id,
)
from hpcgear.scheduler.runner import CommandRunner, CompletedCommand, command_failure_message
from hpcgear.scheduler.slurm_tables import (
    parse_cancelled_by,
    parse_exit_code,
    parse_state,
)
from hpcgear.units import duration_seconds

logger = logging.getLogger(__name__)

#: Job ids per scontrol release / scancel call; keeps argv well under ARG_MAX.
ID_CHUNK = 500
#: Characters of comma-joined job ids in one ``--jobs=`` argument of squeue/sacct.
#: Linux caps one argument at 128 KiB (MAX_ARG_STRLEN), and over SSH the whole
#: command line is one argument of the remote shell; this leaves room for the rest.
ARGV_BUDGET = 96 * 1024

# --------------------------------------------------------------------------- formats

#: squeue -o fields, in output order, joined by "|". The free-text name goes last
#: so a "|" inside it cannot shift the other fields.
SQUEUE_FIELDS: tuple[tuple[str, str], ...] = (
    ("%i", "native_id"),
    ("%F", "array_job_id"),
    ("%K", "array_task_id"),
    ("%T", "state"),
    ("%r", "reason"),
    ("%N", "nodes"),
    ("%P", "partition"),
    ("%M", "elapsed"),
    ("%l", "time_limit"),
    ("%V", "submit_time"),
    ("%S", "start_time"),
    ("%q", "qos"),
    ("%a", "account"),
    ("%C", "cpus"),
    ("%k", "comment"),
    ("%j", "name"),
)
SQUEUE_FORMAT = "|".join(code for code, _ in SQUEUE_FIELDS)

#: sacct --allocations fields (one row per job / array task).
SACCT_FIELDS: tuple[str, ...] = (
    "JobID", "JobIDRaw", "JobName", "State", "ExitCode", "ElapsedRaw", "Submit", "Start",
    "End", "NodeList", "Partition", "QOS", "Account", "AllocCPUS", "ReqMem", "TimelimitRaw",
    "Reason",
)
#: sacct step fields (one row per step: 12.batch, 12.extern, 12.0 ...).
SACCT_STEP_FIELDS: tuple[str, ...] = ("JobID", "MaxRSS", "TotalCPU", "ElapsedRaw")
#: The one accounting query's fields: allocation rows and step rows in one answer.
SACCT_ALL_FIELDS: tuple[str, ...] = (*SACCT_FIELDS, "MaxRSS", "TotalCPU")

# ------------------------------------------------------------------- failure classes

#: Substrings meaning "could not reach / no answer from SLURM": transient.
TRANSIENT_PATTERNS: tuple[str, ...] = (
    "Socket timed out",
    "Unable to contact slurm controller",
    "Slurm temporarily unable to accept job",
    "Resource temporarily unavailable",
    "Zero Bytes were transmitted or received",
    "Communication connection failure",
    "Connection refused",
    "Connection timed out",
    "Connection reset",
    "Transport endpoint is not connected",
    "slurm_persist_conn_open",
    "backup controller in standby mode",
    "Slurm controller not responding",
    "Insane message length",
    "Protocol authentication error",  # munged down or clocks skewed
    "Unable to connect to database",
    "Temporary failure in name resolution",
    "Network is unreachable",
)


@dataclass(frozen=True, slots=True)
class Rejection:
    pattern: str
    sentence: str
    hint: str


#: SLURM's refusals -> plain words and the fix. Matched case-insensitively, in order.
REJECTIONS: tuple[Rejection, ...] = (
    Rejection("Invalid partition name specified", "the partition does not exist",
              "use a partition listed by 'hpcgear site partitions' (or sinfo -s)"),
    Rejection("Invalid account or account/partition combination",
              "the account does not exist or may not use this partition",
              "use an account you belong to (sacctmgr show assoc user=$USER) or another "
              "partition"),
    Rejection("Invalid qos specification", "the QOS does not exist or is not yours",
              "use a QOS of your association (sacctmgr show assoc user=$USER format=qos)"),
    Rejection("Requested time limit is invalid", "the time limit is longer than allowed",
              "ask for less time or use a partition with a longer MaxTime"),
    Rejection("Job violates accounting/QOS policy",
              "the request breaks an account or QOS limit (size, time, or number of "
              "queued jobs)",
              "ask for fewer resources/less time; if you have many queued jobs, lower the "
              "array throttle or wait for some to finish"),
    Rejection("More processors requested than permitted", "more CPUs than allowed",
              "ask for fewer CPUs"),
    Rejection("Memory required by task is not available", "more memory than any node has",
              "ask for less memory or use a partition with bigger nodes"),
    Rejection("Requested node configuration is not available",
              "no node has this combination of CPUs, memory, GPUs or features",
              "ask for less or use another partition"),
    Rejection("Node count specification invalid", "the node count is not allowed",
              "ask for fewer nodes"),
    Rejection("Invalid generic resource (gres) specification", "the GPU/gres request is "
              "invalid", "check the gres name and count against 'sinfo -o %G'"),
    Rejection("Invalid feature specification", "the node feature/constraint does not exist",
              "check the constraint against 'sinfo -o %f'"),
    Rejection("Invalid job array specification", "the array range is invalid or too large",
              "keep array indices below MaxArraySize"),
    Rejection("Requested partition configuration not available now",
              "the partition cannot run this request now", "use another partition"),
    Rejection("Access/permission denied", "you may not submit here",
              "ask the cluster admins for access"),
    Rejection("Invalid user id", "SLURM does not know this user", "ask the cluster admins"),
    Rejection("Job dependency problem", "the job's dependency is invalid",
              "check the dependency job ids"),
    Rejection("does not look like a batch script", "the script is not a batch script",
              "the script must start with #!"),
    Rejection("Unable to open file", "sbatch cannot read the script",
              "check that the job directory is on a file system the login node sees"),
    Rejection("Invalid directive", "the script has an invalid #SBATCH line",
              "fix the site's extra sbatch options"),
    Rejection("unrecognized option", "sbatch does not know an option in the script",
              "remove or fix the option (site extra sbatch options)"),
)

# --------------------------------------------------------------------------- parsing


def parse_duration(text: str | None) -> float | None:
    """SLURM durations -> seconds: ``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS(.mmm)``.

    ``UNLIMITED``, ``NOT_SET``, ``INVALID``, ``N/A``, ``Partition_Limit`` and empty
    give ``None``. A bare number is minutes (as in ``--time`` and ``MaxTime``).
    """
    if text is None or not text.strip()[:1].isdigit():
        return None
    return duration_seconds(text)


def parse_duration_int(text: str | None) -> int | None:
    value = parse_duration(text)
    return round(value) if value is not None else None


def parse_timestamp(text: str | None) -> datetime | None:
    """``2024-05-01T12:00:00`` -> datetime (naive, cluster local time); else None."""
    if not text:
        return None
    t = text.strip()
    try:
        return datetime.fromisoformat(t)
    except ValueError:
        return None  # "Unknown", "None", "N/A"


_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_size_bytes(text: str | None, *, default_unit: str = "K") -> int | None:
    """sacct sizes (``MaxRSS`` ``1528K``, ``12.50M``) -> bytes.

    Bare numbers are in ``default_unit`` (sacct keeps MaxRSS in KiB).
    """
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)\s*", text.upper())
    if not m:
        return None
    unit = m.group(2) or default_unit
    return int(float(m.group(1)) * _SIZE_FACTORS[unit])


def parse_mem_mb(text: str | None) -> int | None:
    """scontrol memory limits (MiB, ``UNLIMITED``) and sinfo ``%m`` -> MiB or None."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\+?\s*([MGT]?)\s*", text.upper())
    if not m:
        return None
    n = int(m.group(1))
    return {"": n, "M": n, "G": n * 1024, "T": n * 1024 * 1024}[m.group(2)]


def _opt_int(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.strip().rstrip("+")
    return int(t) if t.isdigit() else None


def _opt_text(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.strip()
    if t in ("", "(null)", "N/A", "None", "(None)", "Unknown"):
        return None
    return t


def _nonempty_lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip() and not line.startswith("CLUSTER: "):
            yield line


_SUBMIT_RE = re.compile(r"^(?P<id>\d+(?:_\d+)?)(?:;(?P<cluster>\S+))?$")


def parse_submit(stdout: str) -> tuple[str, str | None]:
    """``sbatch --parsable`` output -> ``(job_id, cluster)``.

    ``"12"`` -> ``("12", None)``; ``"12;alpine"`` -> ``("12", "alpine")``.

    Raises ValueError when no job id can be found (the caller treats that as
    ambiguous: the job may exist).
    """
    for line in reversed(list(_nonempty_lines(stdout))):
        m = _SUBMIT_RE.match(line.strip())
        if m:
            return m.group("id"), m.group("cluster")
    raise ValueError(f"no job id in sbatch output: {stdout.strip()[:200]!r}")


def parse_squeue(stdout: str) -> list[SchedulerStatus]:
    """Rows of ``squeue --format=SQUEUE_FORMAT --noheader`` -> statuses."""
    n = len(SQUEUE_FIELDS)
    statuses: list[SchedulerStatus] = []
    for line in _nonempty_lines(stdout):
        parts = line.split("|", n - 1)
        if len(parts) != n:
            logger.warning("skipping squeue line with %d fields, expected %d: %r",
                           len(parts), n, line)
            continue
        row = dict(zip((name for _, name in SQUEUE_FIELDS), parts, strict=True))
        native_id = row["native_id"].strip()
        task = _opt_int(row["array_task_id"])
        array_job = row["array_job_id"].strip() if task is not None else None
        if task is None and "_" in native_id:  # "%K" unknown in an old SLURM
            array_job, task = split_native_id(native_id)
        reason = _opt_text(row["reason"])
        statuses.append(SchedulerStatus(
            native_id=native_id,
            state=parse_state(row["state"]),
            name=row["name"],
            array_job_id=array_job,
            array_task_id=task,
            reason=reason,
            nodes=_opt_text(row["nodes"]),
            partition=_opt_text(row["partition"]),
            elapsed_seconds=parse_duration_int(row["elapsed"]),
            time_limit_seconds=parse_duration_int(row["time_limit"]),
            submit_time=parse_timestamp(row["submit_time"]),
            start_time=parse_timestamp(row["start_time"]),
            qos=_opt_text(row["qos"]),
            account=_opt_text(row["account"]),
            cpus=_opt_int(row["cpus"]),
            comment=_opt_text(row["comment"]),
        ))
    return statuses


def _parsable_rows(stdout: str, fields: Sequence[str]) -> Iterator[dict[str, str]]:
    n = len(fields)
    for line in _nonempty_lines(stdout):
        parts = line.split("|")
        if len(parts) != n:
            logger.warning("skipping sacct line with %d fields, expected %d: %r",
                           len(parts), n, line)
            continue
        yield dict(zip(fields, parts, strict=True))


def parse_sacct(stdout: str, fields: Sequence[str] = SACCT_FIELDS) -> list[Accounting]:
    """Rows of ``sacct --parsable2 --format=<fields>`` -> accounting, one per allocation.

    ``fields`` must include ``SACCT_FIELDS`` (``SACCT_ALL_FIELDS`` for the combined
    query). Step rows (``12.batch``) and rows of array tasks that never started
    (``123_[5-9]``) are skipped.
    """
    out: list[Accounting] = []
    for row in _parsable_rows(stdout, fields):
        job_id = row["JobID"].strip()
        if "[" in job_id or "." in job_id:
            continue
        exit_code, exit_signal = parse_exit_code(row["ExitCode"])
        limit = _opt_int(row["TimelimitRaw"])
        out.append(Accounting(
            native_id=job_id,
            state=parse_state(row["State"]),
            state_text=row["State"].strip(),
            name=row["JobName"],
            exit_code=exit_code,
            exit_signal=exit_signal,
            cancelled_by_uid=parse_cancelled_by(row["State"]),
            elapsed_seconds=_opt_int(row["ElapsedRaw"]),
            submit_time=parse_timestamp(row["Submit"]),
            start_time=parse_timestamp(row["Start"]),
            end_time=parse_timestamp(row["End"]),
            nodes=_opt_text(row["NodeList"]) if row["NodeList"] != "None assigned" else None,
            partition=_opt_text(row["Partition"]),
            qos=_opt_text(row["QOS"]),
            account=_opt_text(row["Account"]),
            alloc_cpus=_opt_int(row["AllocCPUS"]),
            req_mem=_opt_text(row["ReqMem"]),
            time_limit_seconds=limit * 60 if limit is not None else None,
            reason=_opt_text(row["Reason"]),
            source="sacct",
        ))
    return out


@dataclass(frozen=True, slots=True)
class StepUsage:
    max_rss_bytes: int | None
    total_cpu_seconds: float | None


def parse_sacct_steps(
    stdout: str, fields: Sequence[str] = SACCT_STEP_FIELDS
) -> dict[str, StepUsage]:
    """Step rows -> per job (``12`` / ``12_3``): max MaxRSS and max TotalCPU over its rows."""
    usage: dict[str, tuple[int | None, float | None]] = {}
    for row in _parsable_rows(stdout, fields):
        job = row["JobID"].strip().split(".", 1)[0]
        if "[" in job:
            continue
        rss = parse_size_bytes(row["MaxRSS"])
        cpu = parse_duration(row["TotalCPU"])
        old_rss, old_cpu = usage.get(job, (None, None))
        usage[job] = (_max_opt(old_rss, rss), _max_opt(old_cpu, cpu))
    return {job: StepUsage(rss, cpu) for job, (rss, cpu) in usage.items()}


_N = TypeVar("_N", int, float)


def _max_opt(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


_KV_RE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=")


def parse_key_values(line: str) -> dict[str, str]:
    """scontrol ``--oneliner`` line ``Key=value Key2=value two ...`` -> dict.

    A value runs until the next `` Key=``, so values with spaces survive.
    """
    matches = list(_KV_RE.finditer(line))
    result: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        result[m.group(1)] = line[m.end():end].strip()
    return result


def parse_scontrol_jobs(stdout: str) -> list[Accounting]:
    """``scontrol --oneliner show job`` -> accounting-like records (no MaxRSS/TotalCPU)."""
    out: list[Accounting] = []
    for line in _nonempty_lines(stdout):
        kv = parse_key_values(line)
        if "JobId" not in kv:
            continue
        task = _opt_int(kv.get("ArrayTaskId"))
        native = f"{kv['ArrayJobId']}_{task}" if task is not None and "ArrayJobId" in kv \
            else kv["JobId"]
        exit_code, exit_signal = parse_exit_code(kv.get("ExitCode", ""))
        limit = parse_duration_int(kv.get("TimeLimit"))
        out.append(Accounting(
            native_id=native,
            state=parse_state(kv.get("JobState", "")),
            state_text=kv.get("JobState", ""),
            name=kv.get("JobName", ""),
            exit_code=exit_code,
            exit_signal=exit_signal,
            elapsed_seconds=parse_duration_int(kv.get("RunTime")),
            submit_time=parse_timestamp(kv.get("SubmitTime")),
            start_time=parse_timestamp(kv.get("StartTime")),
            end_time=parse_timestamp(kv.get("EndTime")),
            nodes=_opt_text(kv.get("NodeList")),
            partition=_opt_text(kv.get("Partition")),
            qos=_opt_text(kv.get("QOS")),
            account=_opt_text(kv.get("Account")),
            alloc_cpus=_opt_int(kv.get("NumCPUs")),
            req_mem=_opt_text(kv.get("MinMemoryNode") or kv.get("MinMemoryCPU")),
            time_limit_seconds=limit,
            reason=_opt_text(kv.get("Reason")),
            source="scontrol",
        ))
    return out


def parse_config(stdout: str) -> ClusterInfo:
    """``scontrol show config`` (``Key = value`` lines) -> ClusterInfo."""
    cfg: dict[str, str] = {}
    for line in stdout.splitlines():
        if " = " in line:
            key, value = line.split(" = ", 1)
            cfg[key.strip()] = value.strip()
    version = cfg.get("SLURM_VERSION", "")
    if not version:
        raise ValueError("no SLURM_VERSION in scontrol show config output")
    return ClusterInfo(
        version=version,
        max_array_size=_opt_int(cfg.get("MaxArraySize")) or 1001,
        min_job_age_seconds=_leading_int(cfg.get("MinJobAge")) or 0,
        cluster_name=_opt_text(cfg.get("ClusterName")),
        max_job_count=_opt_int(cfg.get("MaxJobCount")),
        kill_wait_seconds=_leading_int(cfg.get("KillWait")),
        accounting_storage=_opt_text(cfg.get("AccountingStorageType")),
        job_comp=_opt_text(cfg.get("JobCompType")),
    )


def _leading_int(text: str | None) -> int | None:
    if not text:
        return None
    m = re.match(r"\s*(\d+)", text)
    return int(m.group(1)) if m else None


def _names(text: str | None) -> tuple[str, ...] | None:
    """``ALL`` -> None (no restriction); ``a,b`` -> ("a", "b")."""
    t = (text or "").strip()
    if not t or t.upper() == "ALL":
        return None
    return tuple(x for x in t.split(",") if x)


def parse_partitions(stdout: str, sinfo_stdout: str = "") -> list[PartitionInfo]:
    """``scontrol --oneliner show partition`` (+ ``sinfo --Node`` rows) -> partitions."""
    nodes: dict[str, tuple[int | None, int | None, list[str]]] = {}
    for line in _nonempty_lines(sinfo_stdout):
        parts = line.split("|")
        if len(parts) != 4:
            continue
        part, cpus, mem, gres_text = (p.strip() for p in parts)
        old_cpus, old_mem, old_gres = nodes.get(part, (None, None, []))
        g = [x for x in gres_text.split(",") if x and x != "(null)"]
        nodes[part] = (_max_opt(old_cpus, _opt_int(cpus)), _max_opt(old_mem, parse_mem_mb(mem)),
                       old_gres + [x for x in g if x not in old_gres])
    out: list[PartitionInfo] = []
    for line in _nonempty_lines(stdout):
        kv = parse_key_values(line)
        if "PartitionName" not in kv:
            continue
        name = kv["PartitionName"]
        node_cpus, node_mem, node_gres = nodes.get(name, (None, None, []))
        max_time = parse_duration(kv.get("MaxTime"))
        def_time = parse_duration(kv.get("DefaultTime"))
        deny = _names(kv.get("DenyAccounts")) or ()
        out.append(PartitionInfo(
            name=name,
            state=kv.get("State", "UP"),
            default=kv.get("Default", "NO").upper() == "YES",
            max_time_minutes=int(max_time // 60) if max_time is not None else None,
            default_time_minutes=int(def_time // 60) if def_time is not None else None,
            max_nodes=_opt_int(kv.get("MaxNodes")),
            max_mem_per_node_mb=parse_mem_mb(kv.get("MaxMemPerNode")),
            max_mem_per_cpu_mb=parse_mem_mb(kv.get("MaxMemPerCPU")),
            def_mem_per_cpu_mb=parse_mem_mb(kv.get("DefMemPerCPU")),
            def_mem_per_node_mb=parse_mem_mb(kv.get("DefMemPerNode")),
            max_cpus_per_node=_opt_int(kv.get("MaxCPUsPerNode")),
            total_cpus=_opt_int(kv.get("TotalCPUs")),
            total_nodes=_opt_int(kv.get("TotalNodes")),
            nodes=_opt_text(kv.get("Nodes")),
            qos=_opt_text(kv.get("QoS")),
            allow_accounts=_names(kv.get("AllowAccounts")),
            deny_accounts=deny,
            allow_qos=_names(kv.get("AllowQos")),
            node_cpus_max=node_cpus,
            node_mem_max_mb=node_mem,
            gres=tuple(node_gres),
        ))
    return out


_TEST_ONLY_RE = re.compile(
    r"Job (?P<id>\d+) to start at (?P<start>\S+) using .*? on nodes? (?P<nodes>\S+)"
    r"(?: in partition (?P<partition>\S+))?"
)


def parse_test_only(output: str) -> PreflightResult:
    """``sbatch --test-only`` (its message is on stderr) -> PreflightResult."""
    for line in output.splitlines():
        m = _TEST_ONLY_RE.search(line)
        if m:
            return PreflightResult(True, line.removeprefix("sbatch: ").strip(),
                                   parse_timestamp(m.group("start")), m.group("partition"))
    text = output.strip().splitlines()
    return PreflightResult(True, text[-1] if text else "accepted")


# ------------------------------------------------------------------- classification


def is_transient_output(text: str) -> bool:
    low = text.lower()
    return any(p.lower() in low for p in TRANSIENT_PATTERNS)


def find_rejection(text: str) -> Rejection | None:
    low = text.lower()
    for rej in REJECTIONS:
        if rej.pattern.lower() in low:
            return rej
    return None


def slurm_message(result: CompletedCommand) -> str:
    """SLURM's own error text: its ``error:`` lines without program prefixes, joined.

    ``sbatch: error: invalid partition specified: x`` + ``... submission failed: Invalid
    partition name specified`` -> ``invalid partition specified: x; Invalid partition
    name specified``.
    """
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
    picked = [ln for ln in lines if "error:" in ln or "failure:" in ln] or lines[-1:]
    cleaned: list[str] = []
    for ln in picked:
        ln = re.sub(r"^.*?\b(?:error|failure): ", "", ln, count=1)
        ln = ln.removeprefix("Batch job submission failed: ")
        if ln and ln not in cleaned:
            cleaned.append(ln)
    return "; ".join(cleaned)


class _Details(TypedDict):
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _details(result: CompletedCommand) -> _Details:
    return {"argv": result.argv, "returncode": result.returncode, "stdout": result.stdout,
            "stderr": result.stderr}


def classify_sbatch_failure(result: CompletedCommand, what: str = "sbatch") -> SchedulerError:
    """Turn a failed ``sbatch`` into the right error.

    * killed by a signal, or a "could not reach the controller" message:
      ``SchedulerUnavailableError(ambiguous=True)`` -- the job may exist; look it up.
    * a refusal SLURM explains: ``SubmitRejectedError`` with SLURM's message.
    * anything else with SLURM's ``error:`` prefix: rejected as well (SLURM answered).
    * no recognisable output: ambiguous.
    """
    message = slurm_message(result)
    if result.killed_by_signal or is_transient_output(result.output):
        return SchedulerUnavailableError(
            command_failure_message(result, what),
            "SLURM did not answer clearly; the job may have been created. hpcgear looks it "
            "up by name before submitting again",
            ambiguous=True, **_details(result))
    rejection = find_rejection(result.output)
    if rejection is not None:
        return SubmitRejectedError(
            f"SLURM refused the job: {rejection.sentence} ({message})",
            rejection.hint, slurm_message=message, **_details(result))
    if "error:" in result.output or "unrecognized option" in result.output:
        return SubmitRejectedError(
            f"SLURM refused the job: {message}",
            "fix the request; SLURM's message above names the problem",
            slurm_message=message, **_details(result))
    return SchedulerUnavailableError(
        command_failure_message(result, what),
        "sbatch failed without an explanation; hpcgear looks the job up by name before "
        "submitting again", ambiguous=True, **_details(result))


def query_error(result: CompletedCommand, what: str) -> SchedulerError:
    """A failed squeue/sacct/scontrol/scancel: transient if SLURM could not be reached."""
    if result.killed_by_signal or is_transient_output(result.output):
        return SchedulerUnavailableError(
            command_failure_message(result, what),
            "SLURM's controller did not answer; hpcgear retries on the next cycle and "
            "changes no job state meanwhile", **_details(result))
    return SchedulerError(
        command_failure_message(result, what),
        "see SLURM's message; check the site's SLURM setup (sinfo, scontrol ping)",
        **_details(result))


_INVALID_JOB_ID = "invalid job id specified"
_ACCOUNTING_DISABLED = ("accounting storage is disabled", "slurmdbd not running",
                        "no accounting storage")
_ALREADY_DONE = ("already completing or completed", "job has already finished",
                 "invalid job id specified", "job is no longer pending")


_PER_JOB_RE = re.compile(r"^(?P<msg>.+?) for job (?P<id>\d+(?:_\d+)?)\s*$")
#: An array's refusal names its tasks: ``59_0-1: Requested partition configuration ...``.
_PER_ARRAY_RE = re.compile(r"^(?P<id>\d+)_[0-9,\-\[\]%]+: (?P<msg>.+?)\s*$")


def parse_per_job_errors(output: str) -> dict[str, str]:
    """``scontrol`` per-job messages (``Job has already finished for job 98``) -> {id: msg}."""
    errors: dict[str, str] = {}
    for line in output.splitlines():
        m = _PER_JOB_RE.match(line.strip()) or _PER_ARRAY_RE.match(line.strip())
        if m:
            errors[m.group("id")] = m.group("msg")
    return errors


def _chunks(items: Sequence[str], size: int = ID_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i.strip() for i in items if i.strip()))


def _joined_len(ids: Sequence[str]) -> int:
    return sum(len(i) + 1 for i in ids)


def _fold_arrays(ids: Sequence[str]) -> list[str]:
    """Array tasks (``123_4``) -> their array (``123``): one id asks for every task."""
    out: dict[str, None] = {}
    for i in ids:
        try:
            out[base_native_id(i)] = None
        except ValueError:
            out[i] = None
    return list(out)


def _budget_chunks(ids: Sequence[str], budget: int = ARGV_BUDGET) -> Iterator[list[str]]:
    """``ids`` in as few lists as fit ``budget`` characters each (one list nearly always)."""
    chunk: list[str] = []
    size = 0
    for i in ids:
        if chunk and size + len(i) + 1 > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += len(i) + 1
    if chunk:
        yield chunk


# -------------------------------------------------------------------------- builders


class SlurmCommands:
    """argv builders for every SLURM command hpcgear runs (pure; no I/O)."""

    def __init__(self, *, cluster: str | None = None) -> None:
        self.cluster = cluster

    def _m(self) -> list[str]:
        return [f"--clusters={self.cluster}"] if self.cluster else []

    def build_submit(self, script_path: str | PurePath, *, hold: bool = True) -> list[str]:
        return ["sbatch", "--parsable", *(["--hold"] if hold else []), *self._m(),
                str(script_path)]

    def build_test_only(self, script_path: str | PurePath) -> list[str]:
        return ["sbatch", "--test-only", *self._m(), str(script_path)]

    def build_release(self, native_ids: Sequence[str]) -> list[str]:
        return ["scontrol", *self._m(), "release", ",".join(native_ids)]

    def build_cancel(self, native_ids: Sequence[str]) -> list[str]:
        return ["scancel", *self._m(), *native_ids]

    def build_poll(self, native_ids: Sequence[str]) -> list[str]:
        return ["squeue", "--noheader", "--array", "--states=all", *self._m(),
                f"--jobs={','.join(native_ids)}", f"--format={SQUEUE_FORMAT}"]

    def build_poll_mine(self) -> list[str]:
        return ["squeue", "--noheader", "--array", "--states=all", "--me", *self._m(),
                f"--format={SQUEUE_FORMAT}"]

    def build_lookup_squeue(self, name: str) -> list[str]:
        return ["squeue", "--noheader", "--array", "--states=all", *self._m(),
                f"--name={name}", f"--format={SQUEUE_FORMAT}"]

    def build_accounting(self, native_ids: Sequence[str]) -> list[str]:
        """Allocation and step rows in one answer (``SACCT_ALL_FIELDS``)."""
        return ["sacct", "--noheader", "--parsable2", *self._m(),
                f"--jobs={','.join(native_ids)}", f"--format={','.join(SACCT_ALL_FIELDS)}"]

    def build_accounting_allocations(self, native_ids: Sequence[str]) -> list[str]:
        return ["sacct", "--noheader", "--parsable2", "--allocations", *self._m(),
                f"--jobs={','.join(native_ids)}", f"--format={','.join(SACCT_FIELDS)}"]

    def build_accounting_steps(self, native_ids: Sequence[str]) -> list[str]:
        return ["sacct", "--noheader", "--parsable2", *self._m(),
                f"--jobs={','.join(native_ids)}", f"--format={','.join(SACCT_STEP_FIELDS)}"]

    def build_lookup_sacct(self, name: str, *, since: str = "now-7days") -> list[str]:
        return ["sacct", "--noheader", "--parsable2", "--allocations", *self._m(),
                f"--name={name}", f"--starttime={since}", "--format=JobID"]

    def build_show_jobs(self) -> list[str]:
        return ["scontrol", *self._m(), "--oneliner", "show", "job"]

    def build_show_config(self) -> list[str]:
        return ["scontrol", *self._m(), "show", "config"]

    def build_show_partitions(self) -> list[str]:
        return ["scontrol", *self._m(), "--oneliner", "show", "partition"]

    def build_sinfo_nodes(self) -> list[str]:
        return ["sinfo", "--noheader", "--Node", *self._m(), "--format=%R|%c|%m|%G"]


# --------------------------------------------------------------------------- backend


class SlurmBackend:
    """The SLURM CLI backend over any ``CommandRunner`` (local or SSH).

    Parameters
    ----------
    runner:
        Runs argv lists (``SubprocessRunner``, ``LocalTransport``, ``SSHTransport``).
    cluster:
        Pass ``--clusters`` to every command (multi-cluster sites).
    query_timeout, submit_timeout:
        Seconds before a command is given up (raises a transient error).
    """

    def __init__(self, runner: CommandRunner, *, cluster: str | None = None,
                 query_timeout: float = 60.0, submit_timeout: float = 120.0) -> None:
        self.runner = runner
        self.commands = SlurmCommands(cluster=cluster)
        self.query_timeout = query_timeout
        self.submit_timeout = submit_timeout

    # -- plumbing

    def _run(self, argv: Sequence[str], what: str, *, timeout: float | None = None,
             ambiguous: bool = False) -> CompletedCommand:
        try:
            return self.runner.run(argv, timeout=timeout or self.query_timeout)
        except TransportError as exc:
            if not exc.transient:
                raise
            raise SchedulerUnavailableError(
                f"{what}: {exc.message}",
                "the job may have been created; hpcgear looks it up by name before "
                "submitting again" if ambiguous else
                "hpcgear retries on the next cycle and changes no job state meanwhile",
                ambiguous=ambiguous, argv=exc.argv, returncode=exc.returncode,
                stdout=exc.stdout, stderr=exc.stderr) from exc

    # -- submit / release / cancel

    def submit(self, script_path: str | PurePath, *, hold: bool = True) -> str:
        argv = self.commands.build_submit(script_path, hold=hold)
        result = self._run(argv, "sbatch", timeout=self.submit_timeout, ambiguous=True)
        if not result.ok:
            raise classify_sbatch_failure(result)
        try:
            job_id, cluster = parse_submit(result.stdout)
        except ValueError:
            raise SchedulerUnavailableError(
                f"sbatch succeeded but printed no job id: {result.output[:200]!r}",
                "hpcgear looks the job up by name before submitting again",
                ambiguous=True, argv=result.argv, returncode=result.returncode,
                stdout=result.stdout, stderr=result.stderr) from None
        if result.stderr.strip():
            logger.info("sbatch %s said: %s", job_id, result.stderr.strip())
        logger.debug("submitted %s -> slurm=%s cluster=%s hold=%s", script_path, job_id,
                     cluster, hold)
        return job_id

    def preflight(self, script_path: str | PurePath) -> PreflightResult:
        result = self._run(self.commands.build_test_only(script_path), "sbatch --test-only",
                           timeout=self.submit_timeout)
        if not result.ok:
            error = classify_sbatch_failure(result, "sbatch --test-only")
            raise error
        return parse_test_only(result.output)

    def release(self, native_ids: Sequence[str]) -> None:
        """Release held jobs; idempotent.

        A job that already finished has nothing to release, and one SLURM no longer
        knows (purged after MinJobAge, e.g. found again after a long controller
        outage) is logged: ``poll``/``accounting`` tell what happened to it. Any
        other refusal (e.g. permission denied) raises, naming the jobs.
        """
        ids = _unique(native_ids)
        for chunk in _chunks(ids):
            result = self._run(self.commands.build_release(chunk), "scontrol release")
            if result.ok:
                continue
            per_job = parse_per_job_errors(result.output)
            if not per_job:
                raise query_error(result, "scontrol release")
            bad: dict[str, str] = {}
            for job, msg in sorted(per_job.items()):
                low = msg.lower()
                if "already finished" in low:
                    continue
                if _INVALID_JOB_ID in low:
                    logger.warning("release: SLURM no longer knows job %s (%s)", job, msg)
                    continue
                bad[job] = msg
            if bad:
                listed = ", ".join(f"{job} ({msg})" for job, msg in bad.items())
                raise ReleaseRefusedError(
                    f"scontrol release failed for {listed}",
                    "see SLURM's message; the other jobs were released",
                    refused=bad, argv=result.argv, returncode=result.returncode,
                    stdout=result.stdout, stderr=result.stderr)

    def cancel(self, native_ids: Sequence[str]) -> None:
        ids = _unique(native_ids)
        for chunk in _chunks(ids):
            result = self._run(self.commands.build_cancel(chunk), "scancel")
            problems = [ln for ln in result.output.splitlines()
                        if "error" in ln.lower()
                        and not any(p in ln.lower() for p in _ALREADY_DONE)]
            if problems or (not result.ok and not result.output.strip()):
                raise query_error(result, "scancel")
            if result.output.strip():
                logger.debug("scancel %s: %s", ",".join(chunk), result.output.strip())

    # -- queries

    def poll(self, native_ids: Sequence[str]) -> dict[str, SchedulerStatus]:
        """The queue's view of ``native_ids``: ONE squeue, however many ids.

        A job (or array task) SLURM no longer knows is absent from the answer.
        """
        ids = _unique(native_ids)
        if not ids:
            return {}
        wanted = set(ids)
        query = _fold_arrays(ids)
        big = _joined_len(query) > ARGV_BUDGET
        rows = self._squeue_mine() if big else self._squeue(query)
        return {s.native_id: s for s in rows
                if s.native_id in wanted or (s.array_job_id or "") in wanted}

    def _squeue(self, ids: list[str]) -> list[SchedulerStatus]:
        result = self._run(self.commands.build_poll(ids), "squeue")
        if result.ok:
            return parse_squeue(result.stdout)
        if _INVALID_JOB_ID in result.output.lower():
            # SLURM no longer knows (one of) these jobs: a definite answer. A single
            # id is simply gone; a SLURM that refuses a whole list for one purged id
            # is asked once for all of the account's jobs instead.
            if len(ids) == 1:
                return []
            return self._squeue_mine()
        raise query_error(result, "squeue")

    def _squeue_mine(self) -> list[SchedulerStatus]:
        result = self._run(self.commands.build_poll_mine(), "squeue")
        if not result.ok:
            raise query_error(result, "squeue")
        return parse_squeue(result.stdout)

    def poll_by_name_prefix(self, prefix: str = "hpcgear-") -> dict[str, SchedulerStatus]:
        """All of this user's jobs whose name starts with ``prefix`` (one squeue)."""
        result = self._run(self.commands.build_poll_mine(), "squeue")
        if not result.ok:
            raise query_error(result, "squeue")
        return {s.native_id: s for s in parse_squeue(result.stdout) if s.name.startswith(prefix)}

    def accounting(self, native_ids: Sequence[str]) -> dict[str, Accounting]:
        """Accounting of ``native_ids``: ONE sacct (allocations and steps together).

        Only a list longer than ``ARGV_BUDGET`` even with array tasks folded into
        their arrays is split into several calls.
        """
        ids = _unique(native_ids)
        if not ids:
            return {}
        wanted = set(ids)
        query = ids if _joined_len(ids) <= ARGV_BUDGET else _fold_arrays(ids)
        records: dict[str, Accounting] = {}
        for chunk in _budget_chunks(query):
            result = self._run(self.commands.build_accounting(chunk), "sacct")
            if not result.ok:
                if any(p in result.output.lower() for p in _ACCOUNTING_DISABLED):
                    logger.debug("sacct unavailable (%s); using scontrol show job",
                                 slurm_message(result))
                    return self._accounting_from_scontrol(ids)
                raise query_error(result, "sacct")
            found = []
            for a in parse_sacct(result.stdout, SACCT_ALL_FIELDS):
                if a.native_id not in wanted and base_native_id(a.native_id) not in wanted:
                    continue
                if a.partition is None:
                    # slurmdbd got a step before the job record and holds a placeholder
                    # (JobName "allocation", no partition): not an answer yet, ask again.
                    logger.debug("sacct record of %s incomplete (%s), skipped", a.native_id,
                                 a.name)
                    continue
                found.append(a)
            if not found:
                continue
            usage = parse_sacct_steps(result.stdout, SACCT_ALL_FIELDS)
            for acc in found:
                records[acc.native_id] = _with_usage(acc, usage.get(acc.native_id))
        return records

    def _accounting_from_scontrol(self, ids: list[str]) -> dict[str, Accounting]:
        result = self._run(self.commands.build_show_jobs(), "scontrol show job")
        if not result.ok:
            if "no jobs in the system" in result.output.lower():
                return {}
            raise query_error(result, "scontrol show job")
        wanted = set(ids)
        return {a.native_id: a for a in parse_scontrol_jobs(result.stdout)
                if a.native_id in wanted or base_native_id(a.native_id) in wanted}

    def lookup_by_name(self, name: str) -> list[str]:
        found: list[str] = []
        result = self._run(self.commands.build_lookup_squeue(name), "squeue")
        if not result.ok:
            raise query_error(result, "squeue")
        found += [s.array_job_id or s.native_id for s in parse_squeue(result.stdout)
                  if s.name == name]
        acct = self._run(self.commands.build_lookup_sacct(name), "sacct")
        if acct.ok:
            for line in _nonempty_lines(acct.stdout):
                job = line.strip().split(".", 1)[0].split("_", 1)[0]
                if job.isdigit():
                    found.append(job)
        elif any(p in acct.output.lower() for p in _ACCOUNTING_DISABLED):
            logger.debug("sacct unavailable; lookup of %s used squeue only", name)
        else:
            raise query_error(acct, "sacct")
        return sorted(set(found), key=lambda j: (len(j), j))

    def cluster_info(self) -> ClusterInfo:
        result = self._run(self.commands.build_show_config(), "scontrol show config")
        if not result.ok:
            raise query_error(result, "scontrol show config")
        try:
            return parse_config(result.stdout)
        except ValueError as exc:
            raise SchedulerError(f"cannot read scontrol show config: {exc}",
                                 "check that scontrol talks to the right cluster",
                                 argv=result.argv, stdout=result.stdout) from None

    def partitions(self) -> list[PartitionInfo]:
        result = self._run(self.commands.build_show_partitions(), "scontrol show partition")
        if not result.ok:
            raise query_error(result, "scontrol show partition")
        nodes = self._run(self.commands.build_sinfo_nodes(), "sinfo")
        if not nodes.ok:
            logger.warning("sinfo failed, node sizes unknown: %s", slurm_message(nodes))
        return parse_partitions(result.stdout, nodes.stdout if nodes.ok else "")


def _with_usage(acc: Accounting, usage: StepUsage | None) -> Accounting:
    if usage is None:
        return acc
    return replace(acc, max_rss_bytes=usage.max_rss_bytes,
                   total_cpu_seconds=usage.total_cpu_seconds)
