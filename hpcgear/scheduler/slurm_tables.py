"""SLURM vocabulary in documented tables: job states, pending reasons, sacct spellings.

Sources (Slurm 20.11 .. 24.x):

* Job state codes: squeue(1) "JOB STATE CODES", https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES
  and sacct(1) "JOB STATE CODES", https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES
* Reason codes: squeue(1) "JOB REASON CODES" and https://slurm.schedmd.com/job_reason_codes.html,
  cross-checked with ``job_state_reason_string()`` in ``src/common/slurm_protocol_defs.c``.

Each state maps to ``StateInfo(category, failure_kind, sentence)``: the category tells
the controller what hpcgear state to move to, the failure kind (for failed states)
feeds the retry policy, and the sentence is what a user reads. Each reason maps to
``ReasonInfo(sentence, outlook)``: ``Outlook.NEVER`` marks reasons that mean the job
will never start as submitted, so the controller can fail it instead of letting it
pend forever. Unknown states/reasons never raise: they map to ``UNKNOWN`` /
a generic sentence, and the controller leaves the job alone.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from hpcgear.states import FailureKind, SchedulerState


class StateCategory(enum.StrEnum):
    """What a SLURM state means for hpcgear's own job state."""

    WAITING = "waiting"  # queued: pending, held, requeued, configuring
    RUNNING = "running"  # has an allocation (incl. suspended, completing)
    SUCCEEDED = "succeeded"  # COMPLETED: batch script exited 0 (still needs exit.json)
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # unparseable: leave the job's state unchanged

    @property
    def final(self) -> bool:
        return self in (StateCategory.SUCCEEDED, StateCategory.FAILED, StateCategory.CANCELLED)


@dataclass(frozen=True, slots=True)
class StateInfo:
    code: str  # squeue %t short code
    category: StateCategory
    failure_kind: FailureKind | None
    sentence: str


S = SchedulerState
C = StateCategory
K = FailureKind

#: Every SLURM job state (base name) -> what it means. squeue(1) JOB STATE CODES.
STATE_TABLE: dict[SchedulerState, StateInfo] = {
    S.BOOT_FAIL: StateInfo(
        "BF",
        C.FAILED,
        K.BOOT_FAILURE,
        "The job could not start because its node failed to boot or launch.",
    ),
    S.CANCELLED: StateInfo(
        "CA", C.CANCELLED, K.CANCELLED, "The job was cancelled by a user or an administrator."
    ),
    S.COMPLETED: StateInfo("CD", C.SUCCEEDED, None, "The job script finished with exit code 0."),
    S.CONFIGURING: StateInfo(
        "CF", C.WAITING, None, "The job has nodes and is waiting for them to become ready."
    ),
    S.COMPLETING: StateInfo(
        "CG", C.RUNNING, None, "The job script has ended; SLURM is cleaning up its processes."
    ),
    S.DEADLINE: StateInfo(
        "DL",
        C.FAILED,
        K.TIMEOUT,
        "The job was ended because it could not finish before its deadline.",
    ),
    S.FAILED: StateInfo(
        "F", C.FAILED, K.GEAR_ERROR, "The job script exited with a non-zero exit code."
    ),
    S.NODE_FAIL: StateInfo(
        "NF", C.FAILED, K.NODE_FAILURE, "The job was ended because a node it ran on failed."
    ),
    S.OUT_OF_MEMORY: StateInfo(
        "OOM", C.FAILED, K.OOM, "The job used more memory than it asked for and was killed."
    ),
    S.PENDING: StateInfo("PD", C.WAITING, None, "The job is waiting in the queue for resources."),
    S.PREEMPTED: StateInfo(
        "PR", C.FAILED, K.PREEMPTED, "The job was stopped to make room for a higher-priority job."
    ),
    S.RUNNING: StateInfo("R", C.RUNNING, None, "The job is running."),
    S.RESV_DEL_HOLD: StateInfo(
        "RD", C.WAITING, None, "The job is held because its reservation was deleted."
    ),
    S.REQUEUE_FED: StateInfo("RF", C.WAITING, None, "The job is being requeued by the federation."),
    S.REQUEUE_HOLD: StateInfo("RH", C.WAITING, None, "The job was requeued and is held."),
    S.REQUEUED: StateInfo(
        "RQ", C.WAITING, None, "The job was requeued and will wait in the queue again."
    ),
    S.RESIZING: StateInfo("RS", C.RUNNING, None, "The job is changing size."),
    S.REVOKED: StateInfo(
        "RV",
        C.FAILED,
        K.LOST,
        "The job was removed here because another cluster of the federation started it.",
    ),
    S.SIGNALING: StateInfo("SI", C.RUNNING, None, "The job is being sent a signal."),
    S.SPECIAL_EXIT: StateInfo(
        "SE",
        C.WAITING,
        None,
        "The job was requeued in a special held state after its exit value matched a site rule.",
    ),
    S.STAGE_OUT: StateInfo("SO", C.RUNNING, None, "The job is staging out files."),
    S.STOPPED: StateInfo("ST", C.RUNNING, None, "The job is stopped (SIGSTOP) but keeps its CPUs."),
    S.SUSPENDED: StateInfo(
        "S", C.RUNNING, None, "The job is suspended and its CPUs were lent to other jobs."
    ),
    S.TIMEOUT: StateInfo("TO", C.FAILED, K.TIMEOUT, "The job ran out of wall time and was killed."),
    S.UNKNOWN: StateInfo("?", C.UNKNOWN, None, "SLURM reported a state hpcgear does not know."),
}

#: squeue ``%t`` short code -> base state name.
SHORT_CODES: dict[str, SchedulerState] = {
    info.code: state for state, info in STATE_TABLE.items() if state is not S.UNKNOWN
}

_STATE_BY_NAME: dict[str, SchedulerState] = {s.value: s for s in SchedulerState}


def parse_state(text: str) -> SchedulerState:
    """Parse a state as squeue/sacct/scontrol print it.

    Accepts base names (``RUNNING``), short codes (``R``), sacct's
    ``CANCELLED by 1000`` and state flags joined with ``+``
    (``COMPLETING+``, ``PENDING+REQUEUE``); anything else is ``UNKNOWN``.
    """
    word = text.strip().split(" ", 1)[0].upper()
    word = word.split("+", 1)[0]
    if word in _STATE_BY_NAME:
        return _STATE_BY_NAME[word]
    if word in SHORT_CODES:
        return SHORT_CODES[word]
    return S.UNKNOWN


_CANCELLED_BY_RE = re.compile(r"^\s*CANCELLED\s+by\s+(\d+)\s*$", re.IGNORECASE)


def parse_cancelled_by(text: str) -> int | None:
    """UID from sacct's ``CANCELLED by <uid>`` (``None`` otherwise)."""
    m = _CANCELLED_BY_RE.match(text)
    return int(m.group(1)) if m else None


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct/scontrol ``ExitCode`` ``"<exit>:<signal>"`` -> ``(exit_status, signal)``.

    ``"0:0"`` is success, ``"1:0"`` exit 1, ``"0:9"`` killed by SIGKILL (signal 9).
    Unparseable or empty text gives ``(None, None)``.
    """
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None, None
    return int(parts[0]), int(parts[1])


def describe_state(state: SchedulerState) -> StateInfo:
    return STATE_TABLE[state]


# --------------------------------------------------------------------------- reasons


class Outlook(enum.StrEnum):
    """What a pending reason says about the job's future."""

    WAIT = "wait"  # will start when something frees up or a time comes
    HELD = "held"  # needs a release (hpcgear's own --hold, or an admin)
    NEVER = "never"  # cannot start as submitted: fail it, tell the user what to change
    ENDED = "ended"  # a reason SLURM gives for a job that already ended


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    sentence: str
    outlook: Outlook = Outlook.WAIT

    @property
    def never_starts(self) -> bool:
        return self.outlook is Outlook.NEVER


W, H, N, E = Outlook.WAIT, Outlook.HELD, Outlook.NEVER, Outlook.ENDED

_RES = {
    "BB": "burst buffer",
    "Billing": "billing",
    "Cpu": "CPU",
    "CPU": "CPU",
    "Energy": "energy",
    "GRES": "GPU/generic resource",
    "License": "license",
    "Mem": "memory",
    "Memory": "memory",
    "Node": "node",
    "Unknown": "trackable resource",
    "Jobs": "job",
    "SubmitJobs": "queued job",
    "Wall": "wall-time",
}

_WHO = {"Assoc": "your account (association)", "QOS": "the job's QOS"}


def _grp(scope: str, res: str, suffix: str = "") -> ReasonInfo:
    who = _WHO[scope]
    what = _RES[res]
    if suffix == "Minutes":
        text = f"{who} has used up its {what}-minutes budget (past, running and future jobs)"
    elif suffix == "RunMinutes":
        text = f"{who} has reached its limit on {what}-minutes of running jobs"
    else:
        text = f"{who} has reached its total {what} limit across running jobs"
    return ReasonInfo(f"Waiting: {text}; it starts when other jobs finish.", W)


def _max(scope: str, res: str, per: str) -> ReasonInfo:
    who = _WHO[scope]
    what = _RES[res]
    if per == "User":
        return ReasonInfo(
            f"Waiting: your jobs together reach the per-user {what} limit of "
            f"{who}; it starts when some of them finish.",
            W,
        )
    if per == "Account":
        return ReasonInfo(
            f"Waiting: jobs of your account reach the per-account {what} limit "
            f"of {who}; it starts when some of them finish.",
            W,
        )
    if per == "JobMinutes":
        return ReasonInfo(
            f"Never starts: the job asks for more {what}-minutes than {who} "
            "allows one job; ask for less time or fewer resources.",
            N,
        )
    return ReasonInfo(
        f"Never starts: the job asks for more {what} per {per.lower()} than "
        f"{who} allows; ask for less.",
        N,
    )


def _min(res: str) -> ReasonInfo:
    return ReasonInfo(
        f"Never starts: the job asks for less {_RES[res]} than the job's QOS "
        "requires; ask for more or use another QOS.",
        N,
    )


def _acct(res: str) -> ReasonInfo:
    return ReasonInfo(
        f"Waiting: jobs of your account reach the per-account {_RES[res]} limit "
        "of the job's QOS; it starts when some of them finish.",
        W,
    )


#: Every SLURM reason code -> a sentence and an outlook. squeue(1) JOB REASON CODES.
REASON_TABLE: dict[str, ReasonInfo] = {
    # -- the everyday ones
    "None": ReasonInfo("Waiting: the scheduler has not looked at the job yet.", W),
    "WaitingForScheduling": ReasonInfo("Waiting: the scheduler has not looked at the job yet.", W),
    "Priority": ReasonInfo("Waiting: jobs with higher priority are ahead of it in the queue.", W),
    "Resources": ReasonInfo(
        "Waiting: the CPUs, memory or GPUs it needs are in use by other jobs.", W
    ),
    "Dependency": ReasonInfo("Waiting for the jobs it depends on to finish.", W),
    "BeginTime": ReasonInfo("Waiting: the job's earliest start time has not come yet.", W),
    "Prolog": ReasonInfo("Starting: the site's prolog program is still running.", W),
    "Cleaning": ReasonInfo(
        "Waiting: the job is being requeued and its previous run is still being cleaned up.", W
    ),
    "Licenses": ReasonInfo("Waiting for a software license to become free.", W),
    "Reservation": ReasonInfo("Waiting for its advance reservation to start.", W),
    "JobArrayTaskLimit": ReasonInfo(
        "Waiting: the array's limit on tasks running at once (%N throttle) is reached.", W
    ),
    "FedJobLock": ReasonInfo("Waiting for the federation's clusters to agree on where it runs.", W),
    "SchedDefer": ReasonInfo("Waiting: the site defers scheduling at submit time.", W),
    "PowerNotAvail": ReasonInfo("Waiting: not enough power budget to start the nodes it needs.", W),
    "PowerReserved": ReasonInfo("Waiting: power for its nodes is reserved for other jobs.", W),
    "MaxPoweredUpNodes": ReasonInfo("Waiting: the site's limit on powered-up nodes is reached.", W),
    "BurstBufferResources": ReasonInfo("Waiting for burst-buffer space.", W),
    "BurstBufferStageIn": ReasonInfo(
        "Starting: the burst buffer is staging the job's files in.", W
    ),
    "QOSUsageThreshold": ReasonInfo("Waiting: the QOS usage threshold is exceeded.", W),
    # -- holds
    "JobHeldUser": ReasonInfo(
        "Held: the job is on hold (hpcgear holds jobs until it has "
        "recorded them, or a user ran 'scontrol hold').",
        H,
    ),
    "JobHeldAdmin": ReasonInfo(
        "Held by a cluster administrator; it will not start until an administrator releases it.", H
    ),
    "JobHoldMaxRequeue": ReasonInfo(
        "Never starts: the job was requeued too many times "
        "(MAX_BATCH_REQUEUE) and is held for good.",
        N,
    ),
    # -- infrastructure that may come back
    "NodeDown": ReasonInfo("Waiting: a node the job needs is down.", W),
    "ReqNodeNotAvail": ReasonInfo(
        "Waiting: nodes it needs are unavailable (down, drained, reserved or in use).", W
    ),
    "PartitionDown": ReasonInfo(
        "Waiting: the partition is DOWN; an administrator must bring it back up.", W
    ),
    "PartitionInactive": ReasonInfo("Waiting: the partition is INACTIVE and starts no jobs.", W),
    "FrontEndDown": ReasonInfo("Waiting: no front-end node is available.", W),
    "SystemFailure": ReasonInfo("SLURM, a file system or the network failed.", W),
    "BlockMaxError": ReasonInfo("Waiting: a node block has too many errors.", W),
    "BlockFreeAction": ReasonInfo("Waiting: a node block is being freed.", W),
    # -- limits that a job can never meet as submitted
    "PartitionTimeLimit": ReasonInfo(
        "Never starts: the time limit asked for is longer than "
        "the partition allows; ask for less time or use another "
        "partition.",
        N,
    ),
    "PartitionNodeLimit": ReasonInfo(
        "Never starts: the number of nodes asked for is outside "
        "the partition's limits (or its nodes are down/drained); "
        "ask for fewer nodes or use another partition.",
        N,
    ),
    "PartitionConfig": ReasonInfo(
        "Never starts: the request breaks a limit of the partition; check partition limits.", N
    ),
    "AccountNotAllowed": ReasonInfo(
        "Never starts: your account may not use this partition; use another account or partition.",
        N,
    ),
    "QOSNotAllowed": ReasonInfo(
        "Never starts: the QOS is not allowed for this account or partition; use another QOS.", N
    ),
    "InvalidAccount": ReasonInfo(
        "Never starts: the job's account is invalid; set a valid account.", N
    ),
    "InvalidQOS": ReasonInfo("Never starts: the job's QOS is invalid; set a valid QOS.", N),
    "Constraints": ReasonInfo("Waiting: no node with the job's constraints (features) is "
                              "free right now.", W),
    "BadConstraints": ReasonInfo(
        "Never starts: no node can satisfy the job's constraints "
        "(features, memory, GPUs); change the request.",
        N,
    ),
    "DependencyNeverSatisfied": ReasonInfo(
        "Never starts: a job it depends on failed, so the dependency can never be satisfied.", N
    ),
    "ReservationDeleted": ReasonInfo("Never starts: the reservation it asked for was deleted.", N),
    "MaxMemPerLimit": ReasonInfo(
        "Never starts: the memory asked for is above the maximum "
        "per CPU or per node; ask for less memory.",
        N,
    ),
    "DeadLine": ReasonInfo("The job cannot finish before its deadline.", E),
    # -- old-style aggregate reasons
    "AccountingPolicy": ReasonInfo(
        "Waiting: an accounting policy limit of your account or QOS is reached.", W
    ),
    "AssociationJobLimit": ReasonInfo(
        "Waiting: your account has reached its maximum number of jobs.", W
    ),
    "AssociationResourceLimit": ReasonInfo(
        "Waiting: your account has reached a resource limit.", W
    ),
    "AssociationTimeLimit": ReasonInfo("Waiting: your account has reached its time limit.", W),
    "QOSJobLimit": ReasonInfo("Waiting: the QOS has reached its maximum number of jobs.", W),
    "QOSResourceLimit": ReasonInfo("Waiting: the QOS has reached a resource limit.", W),
    "QOSTimeLimit": ReasonInfo("Waiting: the QOS has reached its time limit.", W),
    # -- reasons SLURM gives for jobs that already ended
    "NonZeroExitCode": ReasonInfo("The job script exited with a non-zero exit code.", E),
    "TimeLimit": ReasonInfo("The job ran out of wall time.", E),
    "OutOfMemory": ReasonInfo("The job ran out of memory.", E),
    "JobLaunchFailure": ReasonInfo(
        "SLURM could not launch the job (file system problem, "
        "missing program, bad working directory).",
        E,
    ),
    "InactiveLimit": ReasonInfo("The job reached the system InactiveLimit.", E),
    "BurstBufferOperation": ReasonInfo("A burst-buffer operation for the job failed.", E),
    # -- association aggregate limits (AssocGrp*)
    "AssocGrpBB": _grp("Assoc", "BB"),
    "AssocGrpBBMinutes": _grp("Assoc", "BB", "Minutes"),
    "AssocGrpBBRunMinutes": _grp("Assoc", "BB", "RunMinutes"),
    "AssocGrpBilling": _grp("Assoc", "Billing"),
    "AssocGrpBillingMinutes": _grp("Assoc", "Billing", "Minutes"),
    "AssocGrpBillingRunMinutes": _grp("Assoc", "Billing", "RunMinutes"),
    "AssocGrpCpuLimit": _grp("Assoc", "CPU"),
    "AssocGrpCPUMinutesLimit": _grp("Assoc", "CPU", "Minutes"),
    "AssocGrpCPURunMinutesLimit": _grp("Assoc", "CPU", "RunMinutes"),
    "AssocGrpEnergy": _grp("Assoc", "Energy"),
    "AssocGrpEnergyMinutes": _grp("Assoc", "Energy", "Minutes"),
    "AssocGrpEnergyRunMinutes": _grp("Assoc", "Energy", "RunMinutes"),
    "AssocGrpGRES": _grp("Assoc", "GRES"),
    "AssocGrpGRESMinutes": _grp("Assoc", "GRES", "Minutes"),
    "AssocGrpGRESRunMinutes": _grp("Assoc", "GRES", "RunMinutes"),
    "AssocGrpJobsLimit": _grp("Assoc", "Jobs"),
    "AssocGrpLicense": _grp("Assoc", "License"),
    "AssocGrpLicenseMinutes": _grp("Assoc", "License", "Minutes"),
    "AssocGrpLicenseRunMinutes": _grp("Assoc", "License", "RunMinutes"),
    "AssocGrpMemLimit": _grp("Assoc", "Mem"),
    "AssocGrpMemMinutes": _grp("Assoc", "Mem", "Minutes"),
    "AssocGrpMemRunMinutes": _grp("Assoc", "Mem", "RunMinutes"),
    "AssocGrpNodeLimit": _grp("Assoc", "Node"),
    "AssocGrpNodeMinutes": _grp("Assoc", "Node", "Minutes"),
    "AssocGrpNodeRunMinutes": _grp("Assoc", "Node", "RunMinutes"),
    "AssocGrpSubmitJobsLimit": _grp("Assoc", "SubmitJobs"),
    "AssocGrpUnknown": _grp("Assoc", "Unknown"),
    "AssocGrpUnknownMinutes": _grp("Assoc", "Unknown", "Minutes"),
    "AssocGrpUnknownRunMinutes": _grp("Assoc", "Unknown", "RunMinutes"),
    "AssocGrpWallLimit": _grp("Assoc", "Wall"),
    # -- association per-job/per-node maxima (AssocMax*)
    "AssocMaxBBMinutesPerJob": _max("Assoc", "BB", "JobMinutes"),
    "AssocMaxBBPerJob": _max("Assoc", "BB", "Job"),
    "AssocMaxBBPerNode": _max("Assoc", "BB", "Node"),
    "AssocMaxBillingMinutesPerJob": _max("Assoc", "Billing", "JobMinutes"),
    "AssocMaxBillingPerJob": _max("Assoc", "Billing", "Job"),
    "AssocMaxBillingPerNode": _max("Assoc", "Billing", "Node"),
    "AssocMaxCpuMinutesPerJobLimit": _max("Assoc", "CPU", "JobMinutes"),
    "AssocMaxCpuPerJobLimit": _max("Assoc", "CPU", "Job"),
    "AssocMaxCpuPerNode": _max("Assoc", "CPU", "Node"),
    "AssocMaxEnergyMinutesPerJob": _max("Assoc", "Energy", "JobMinutes"),
    "AssocMaxEnergyPerJob": _max("Assoc", "Energy", "Job"),
    "AssocMaxEnergyPerNode": _max("Assoc", "Energy", "Node"),
    "AssocMaxGRESMinutesPerJob": _max("Assoc", "GRES", "JobMinutes"),
    "AssocMaxGRESPerJob": _max("Assoc", "GRES", "Job"),
    "AssocMaxGRESPerNode": _max("Assoc", "GRES", "Node"),
    "AssocMaxJobsLimit": ReasonInfo(
        "Waiting: you have as many running jobs as your account "
        "allows; it starts when one finishes.",
        W,
    ),
    "AssocMaxLicenseMinutesPerJob": _max("Assoc", "License", "JobMinutes"),
    "AssocMaxLicensePerJob": _max("Assoc", "License", "Job"),
    "AssocMaxMemMinutesPerJob": _max("Assoc", "Mem", "JobMinutes"),
    "AssocMaxMemPerJob": _max("Assoc", "Mem", "Job"),
    "AssocMaxMemPerNode": _max("Assoc", "Mem", "Node"),
    "AssocMaxNodeMinutesPerJob": _max("Assoc", "Node", "JobMinutes"),
    "AssocMaxNodePerJobLimit": _max("Assoc", "Node", "Job"),
    "AssocMaxSubmitJobLimit": ReasonInfo(
        "Waiting: you have as many queued and running jobs as your account allows.", W
    ),
    "AssocMaxUnknownMinutesPerJob": _max("Assoc", "Unknown", "JobMinutes"),
    "AssocMaxUnknownPerJob": _max("Assoc", "Unknown", "Job"),
    "AssocMaxUnknownPerNode": _max("Assoc", "Unknown", "Node"),
    "AssocMaxWallDurationPerJobLimit": ReasonInfo(
        "Never starts: the time limit asked for is "
        "longer than your account allows one job; "
        "ask for less time.",
        N,
    ),
    # -- QOS aggregate limits (QOSGrp*)
    "QOSGrpBB": _grp("QOS", "BB"),
    "QOSGrpBBMinutes": _grp("QOS", "BB", "Minutes"),
    "QOSGrpBBRunMinutes": _grp("QOS", "BB", "RunMinutes"),
    "QOSGrpBilling": _grp("QOS", "Billing"),
    "QOSGrpBillingMinutes": _grp("QOS", "Billing", "Minutes"),
    "QOSGrpBillingRunMinutes": _grp("QOS", "Billing", "RunMinutes"),
    "QOSGrpCpuLimit": _grp("QOS", "CPU"),
    "QOSGrpCPUMinutesLimit": _grp("QOS", "CPU", "Minutes"),
    "QOSGrpCPURunMinutesLimit": _grp("QOS", "CPU", "RunMinutes"),
    "QOSGrpEnergy": _grp("QOS", "Energy"),
    "QOSGrpEnergyMinutes": _grp("QOS", "Energy", "Minutes"),
    "QOSGrpEnergyRunMinutes": _grp("QOS", "Energy", "RunMinutes"),
    "QOSGrpGRES": _grp("QOS", "GRES"),
    "QOSGrpGRESMinutes": _grp("QOS", "GRES", "Minutes"),
    "QOSGrpGRESRunMinutes": _grp("QOS", "GRES", "RunMinutes"),
    "QOSGrpJobsLimit": _grp("QOS", "Jobs"),
    "QOSGrpLicense": _grp("QOS", "License"),
    "QOSGrpLicenseMinutes": _grp("QOS", "License", "Minutes"),
    "QOSGrpLicenseRunMinutes": _grp("QOS", "License", "RunMinutes"),
    "QOSGrpMemLimit": _grp("QOS", "Mem"),
    "QOSGrpMemoryMinutes": _grp("QOS", "Memory", "Minutes"),
    "QOSGrpMemoryRunMinutes": _grp("QOS", "Memory", "RunMinutes"),
    "QOSGrpNodeLimit": _grp("QOS", "Node"),
    "QOSGrpNodeMinutes": _grp("QOS", "Node", "Minutes"),
    "QOSGrpNodeRunMinutes": _grp("QOS", "Node", "RunMinutes"),
    "QOSGrpSubmitJobsLimit": _grp("QOS", "SubmitJobs"),
    "QOSGrpUnknown": _grp("QOS", "Unknown"),
    "QOSGrpUnknownMinutes": _grp("QOS", "Unknown", "Minutes"),
    "QOSGrpUnknownRunMinutes": _grp("QOS", "Unknown", "RunMinutes"),
    "QOSGrpWallLimit": _grp("QOS", "Wall"),
    # -- QOS per-job / per-node / per-user maxima (QOSMax*)
    "QOSMaxBBMinutesPerJob": _max("QOS", "BB", "JobMinutes"),
    "QOSMaxBBPerJob": _max("QOS", "BB", "Job"),
    "QOSMaxBBPerNode": _max("QOS", "BB", "Node"),
    "QOSMaxBBPerUser": _max("QOS", "BB", "User"),
    "QOSMaxBillingMinutesPerJob": _max("QOS", "Billing", "JobMinutes"),
    "QOSMaxBillingPerJob": _max("QOS", "Billing", "Job"),
    "QOSMaxBillingPerNode": _max("QOS", "Billing", "Node"),
    "QOSMaxBillingPerUser": _max("QOS", "Billing", "User"),
    "QOSMaxCpuMinutesPerJobLimit": _max("QOS", "CPU", "JobMinutes"),
    "QOSMaxCpuPerJobLimit": _max("QOS", "CPU", "Job"),
    "QOSMaxCpuPerNode": _max("QOS", "CPU", "Node"),
    "QOSMaxCpuPerUserLimit": _max("QOS", "CPU", "User"),
    "QOSMaxEnergyMinutesPerJob": _max("QOS", "Energy", "JobMinutes"),
    "QOSMaxEnergyPerJob": _max("QOS", "Energy", "Job"),
    "QOSMaxEnergyPerNode": _max("QOS", "Energy", "Node"),
    "QOSMaxEnergyPerUser": _max("QOS", "Energy", "User"),
    "QOSMaxGRESMinutesPerJob": _max("QOS", "GRES", "JobMinutes"),
    "QOSMaxGRESPerJob": _max("QOS", "GRES", "Job"),
    "QOSMaxGRESPerNode": _max("QOS", "GRES", "Node"),
    "QOSMaxGRESPerUser": _max("QOS", "GRES", "User"),
    "QOSMaxJobsPerUserLimit": ReasonInfo(
        "Waiting: you have as many running jobs as the QOS "
        "allows one user; it starts when one finishes.",
        W,
    ),
    "QOSMaxLicenseMinutesPerJob": _max("QOS", "License", "JobMinutes"),
    "QOSMaxLicensePerJob": _max("QOS", "License", "Job"),
    "QOSMaxLicensePerUser": _max("QOS", "License", "User"),
    "QOSMaxMemoryMinutesPerJob": _max("QOS", "Memory", "JobMinutes"),
    "QOSMaxMemoryPerJob": _max("QOS", "Memory", "Job"),
    "QOSMaxMemoryPerNode": _max("QOS", "Memory", "Node"),
    "QOSMaxMemoryPerUser": _max("QOS", "Memory", "User"),
    "QOSMaxNodeMinutesPerJob": _max("QOS", "Node", "JobMinutes"),
    "QOSMaxNodePerJobLimit": _max("QOS", "Node", "Job"),
    "QOSMaxNodePerUserLimit": _max("QOS", "Node", "User"),
    "QOSMaxSubmitJobPerUserLimit": ReasonInfo(
        "Waiting: you have as many queued and running jobs as the QOS allows one user.", W
    ),
    "QOSMaxUnknownMinutesPerJob": _max("QOS", "Unknown", "JobMinutes"),
    "QOSMaxUnknownPerJob": _max("QOS", "Unknown", "Job"),
    "QOSMaxUnknownPerNode": _max("QOS", "Unknown", "Node"),
    "QOSMaxUnknownPerUser": _max("QOS", "Unknown", "User"),
    "QOSMaxWallDurationPerJobLimit": ReasonInfo(
        "Never starts: the time limit asked for is "
        "longer than the QOS allows one job; ask for "
        "less time or use another QOS.",
        N,
    ),
    # -- QOS minima (QOSMin*)
    "QOSMinBB": _min("BB"),
    "QOSMinBilling": _min("Billing"),
    "QOSMinCpuNotSatisfied": _min("CPU"),
    "QOSMinEnergy": _min("Energy"),
    "QOSMinGRES": _min("GRES"),
    "QOSMinLicense": _min("License"),
    "QOSMinMemory": _min("Memory"),
    "QOSMinNode": _min("Node"),
    "QOSMinUnknown": _min("Unknown"),
    # -- QOS per-account limits (Max*PerAccount)
    "MaxBBPerAccount": _acct("BB"),
    "MaxBillingPerAccount": _acct("Billing"),
    "MaxCpuPerAccount": _acct("CPU"),
    "MaxEnergyPerAccount": _acct("Energy"),
    "MaxGRESPerAccount": _acct("GRES"),
    "MaxJobsPerAccount": _acct("Jobs"),
    "MaxLicensePerAccount": _acct("License"),
    "MaxMemoryPerAccount": _acct("Memory"),
    "MaxNodePerAccount": _acct("Node"),
    "MaxSubmitJobsPerAccount": _acct("SubmitJobs"),
    "MaxUnknownPerAccount": _acct("Unknown"),
}

_REASON_BY_LOWER = {k.lower(): k for k in REASON_TABLE}

# Families for codes a newer SLURM may add: checked in order, first match wins.
_REASON_FAMILIES: tuple[tuple[re.Pattern[str], ReasonInfo], ...] = (
    (
        re.compile(r"^(Assoc|QOS)Max\w*Per(Job|Node)"),
        ReasonInfo(
            "Never starts: the job asks for more than one job may use under your "
            "account/QOS limits; ask for less.",
            N,
        ),
    ),
    (
        re.compile(r"^(Assoc|QOS)Grp"),
        ReasonInfo(
            "Waiting: an aggregate limit of your account/QOS is reached; it starts when "
            "other jobs finish.",
            W,
        ),
    ),
    (
        re.compile(r"^(Assoc|QOS)Max"),
        ReasonInfo("Waiting: a per-user limit of your account/QOS is reached.", W),
    ),
    (
        re.compile(r"^QOSMin"),
        ReasonInfo("Never starts: the job asks for less than the QOS requires.", N),
    ),
    (
        re.compile(r"^Max\w*PerAccount$"),
        ReasonInfo("Waiting: a per-account limit of the QOS is reached.", W),
    ),
)


def reason_code(raw: str | None) -> str | None:
    """The bare reason code from what squeue prints.

    ``"(Priority)"`` -> ``"Priority"``, ``"ReqNodeNotAvail, UnavailableNodes:n[1-2]"`` ->
    ``"ReqNodeNotAvail"``; ``None``/empty -> ``None``.
    """
    if raw is None:
        return None
    text = raw.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    text = re.split(r"[,\s]", text, maxsplit=1)[0]
    return text or None


def describe_reason(raw: str | None) -> ReasonInfo:
    """Plain words for a SLURM reason (raw squeue text accepted); never raises."""
    code = reason_code(raw)
    if code is None:
        return REASON_TABLE["None"]
    known = _REASON_BY_LOWER.get(code.lower())
    if known is not None:
        return REASON_TABLE[known]
    for pattern, info in _REASON_FAMILIES:
        if pattern.match(code):
            return info
    return ReasonInfo(
        f"SLURM gives the reason {code!r}, which hpcgear does not know; see "
        "'man squeue' (JOB REASON CODES).",
        W,
    )
