"""The SLURM vocabulary tables: every state and reason code maps somewhere sensible."""

from __future__ import annotations

import pytest

from hpcgear.scheduler.slurm_tables import (
    REASON_TABLE,
    SHORT_CODES,
    STATE_TABLE,
    Outlook,
    StateCategory,
    describe_reason,
    parse_cancelled_by,
    parse_exit_code,
    parse_state,
    reason_code,
)
from hpcgear.states import FailureKind, SchedulerState

# squeue(1) "JOB STATE CODES", copied from the man page (short code, long name).
MAN_PAGE_STATES = [
    ("BF", "BOOT_FAIL"), ("CA", "CANCELLED"), ("CD", "COMPLETED"), ("CF", "CONFIGURING"),
    ("CG", "COMPLETING"), ("DL", "DEADLINE"), ("F", "FAILED"), ("NF", "NODE_FAIL"),
    ("OOM", "OUT_OF_MEMORY"), ("PD", "PENDING"), ("PR", "PREEMPTED"), ("R", "RUNNING"),
    ("RD", "RESV_DEL_HOLD"), ("RF", "REQUEUE_FED"), ("RH", "REQUEUE_HOLD"), ("RQ", "REQUEUED"),
    ("RS", "RESIZING"), ("RV", "REVOKED"), ("SI", "SIGNALING"), ("SE", "SPECIAL_EXIT"),
    ("SO", "STAGE_OUT"), ("ST", "STOPPED"), ("S", "SUSPENDED"), ("TO", "TIMEOUT"),
]

# squeue(1) "JOB REASON CODES" plus https://slurm.schedmd.com/job_reason_codes.html
# ("All Reasons") and job_reason_string() in slurm_protocol_defs.c.
_DOCUMENTED_REASON_TEXT = """
AccountingPolicy AccountNotAllowed AssocGrpBB AssocGrpBBMinutes AssocGrpBBRunMinutes
AssocGrpBilling AssocGrpBillingMinutes AssocGrpBillingRunMinutes AssocGrpCpuLimit
AssocGrpCPUMinutesLimit AssocGrpCPURunMinutesLimit AssocGrpEnergy AssocGrpEnergyMinutes
AssocGrpEnergyRunMinutes AssocGrpGRES AssocGrpGRESMinutes AssocGrpGRESRunMinutes
AssocGrpJobsLimit AssocGrpLicense AssocGrpLicenseMinutes AssocGrpLicenseRunMinutes
AssocGrpMemLimit AssocGrpMemMinutes AssocGrpMemRunMinutes AssocGrpNodeLimit
AssocGrpNodeMinutes AssocGrpNodeRunMinutes AssocGrpSubmitJobsLimit AssocGrpUnknown
AssocGrpUnknownMinutes AssocGrpUnknownRunMinutes AssocGrpWallLimit AssocMaxBBMinutesPerJob
AssocMaxBBPerJob AssocMaxBBPerNode AssocMaxBillingMinutesPerJob AssocMaxBillingPerJob
AssocMaxBillingPerNode AssocMaxCpuMinutesPerJobLimit AssocMaxCpuPerJobLimit AssocMaxCpuPerNode
AssocMaxEnergyMinutesPerJob AssocMaxEnergyPerJob AssocMaxEnergyPerNode
AssocMaxGRESMinutesPerJob AssocMaxGRESPerJob AssocMaxGRESPerNode AssocMaxJobsLimit
AssocMaxLicenseMinutesPerJob AssocMaxLicensePerJob AssocMaxMemMinutesPerJob AssocMaxMemPerJob
AssocMaxMemPerNode AssocMaxNodeMinutesPerJob AssocMaxNodePerJobLimit AssocMaxSubmitJobLimit
AssocMaxUnknownMinutesPerJob AssocMaxUnknownPerJob AssocMaxUnknownPerNode
AssocMaxWallDurationPerJobLimit AssociationJobLimit AssociationResourceLimit
AssociationTimeLimit BadConstraints BeginTime BurstBufferOperation BurstBufferResources
BurstBufferStageIn Cleaning Constraints DeadLine Dependency DependencyNeverSatisfied FedJobLock
FrontEndDown InactiveLimit InvalidAccount InvalidQOS JobArrayTaskLimit JobHeldAdmin JobHeldUser
JobHoldMaxRequeue JobLaunchFailure Licenses MaxBBPerAccount MaxBillingPerAccount
MaxCpuPerAccount MaxEnergyPerAccount MaxGRESPerAccount MaxJobsPerAccount MaxLicensePerAccount
MaxMemoryPerAccount MaxMemPerLimit MaxNodePerAccount MaxSubmitJobsPerAccount
MaxUnknownPerAccount NodeDown NonZeroExitCode None OutOfMemory PartitionConfig PartitionDown
PartitionInactive PartitionNodeLimit PartitionTimeLimit PowerNotAvail PowerReserved Priority
Prolog QOSGrpBB QOSGrpBBMinutes QOSGrpBBRunMinutes QOSGrpBilling QOSGrpBillingMinutes
QOSGrpBillingRunMinutes QOSGrpCpuLimit QOSGrpCPUMinutesLimit QOSGrpCPURunMinutesLimit
QOSGrpEnergy QOSGrpEnergyMinutes QOSGrpEnergyRunMinutes QOSGrpGRES QOSGrpGRESMinutes
QOSGrpGRESRunMinutes QOSGrpJobsLimit QOSGrpLicense QOSGrpLicenseMinutes
QOSGrpLicenseRunMinutes QOSGrpMemLimit QOSGrpMemoryMinutes QOSGrpMemoryRunMinutes
QOSGrpNodeLimit QOSGrpNodeMinutes QOSGrpNodeRunMinutes QOSGrpSubmitJobsLimit QOSGrpUnknown
QOSGrpUnknownMinutes QOSGrpUnknownRunMinutes QOSGrpWallLimit QOSJobLimit QOSMaxBBMinutesPerJob
QOSMaxBBPerJob QOSMaxBBPerNode QOSMaxBBPerUser QOSMaxBillingMinutesPerJob QOSMaxBillingPerJob
QOSMaxBillingPerNode QOSMaxBillingPerUser QOSMaxCpuMinutesPerJobLimit QOSMaxCpuPerJobLimit
QOSMaxCpuPerNode QOSMaxCpuPerUserLimit QOSMaxEnergyMinutesPerJob QOSMaxEnergyPerJob
QOSMaxEnergyPerNode QOSMaxEnergyPerUser QOSMaxGRESMinutesPerJob QOSMaxGRESPerJob
QOSMaxGRESPerNode QOSMaxGRESPerUser QOSMaxJobsPerUserLimit QOSMaxLicenseMinutesPerJob
QOSMaxLicensePerJob QOSMaxLicensePerUser QOSMaxMemoryMinutesPerJob QOSMaxMemoryPerJob
QOSMaxMemoryPerNode QOSMaxMemoryPerUser QOSMaxNodeMinutesPerJob QOSMaxNodePerJobLimit
QOSMaxNodePerUserLimit QOSMaxSubmitJobPerUserLimit QOSMaxUnknownMinutesPerJob
QOSMaxUnknownPerJob QOSMaxUnknownPerNode QOSMaxUnknownPerUser QOSMaxWallDurationPerJobLimit
QOSMinBB QOSMinBilling QOSMinCpuNotSatisfied QOSMinEnergy QOSMinGRES QOSMinLicense QOSMinMemory
QOSMinNode QOSMinUnknown QOSNotAllowed QOSResourceLimit QOSTimeLimit QOSUsageThreshold
ReqNodeNotAvail Reservation ReservationDeleted Resources SchedDefer SystemFailure TimeLimit
WaitingForScheduling BlockMaxError BlockFreeAction
"""
DOCUMENTED_REASONS = _DOCUMENTED_REASON_TEXT.split()

NEVER_START = [
    "PartitionTimeLimit", "PartitionNodeLimit", "PartitionConfig", "AccountNotAllowed",
    "QOSNotAllowed", "InvalidAccount", "InvalidQOS", "BadConstraints",
    "DependencyNeverSatisfied", "ReservationDeleted", "MaxMemPerLimit", "JobHoldMaxRequeue",
    "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit",
    "AssocMaxNodePerJobLimit", "QOSMaxMemoryPerNode", "QOSMaxGRESPerJob", "QOSMinCpuNotSatisfied",
]
WILL_START = [
    "None", "Priority", "Resources", "Dependency", "BeginTime", "QOSMaxJobsPerUserLimit",
    "AssocGrpCpuLimit", "ReqNodeNotAvail", "QOSGrpMemLimit", "AssocMaxJobsLimit",
    "JobArrayTaskLimit", "MaxJobsPerAccount", "QOSMaxCpuPerUserLimit", "Licenses", "NodeDown",
    "PartitionDown",
]


def test_every_scheduler_state_is_in_the_table() -> None:
    assert set(STATE_TABLE) == set(SchedulerState)
    for info in STATE_TABLE.values():
        assert info.sentence.endswith(".") and len(info.sentence) > 15


@pytest.mark.parametrize(("code", "name"), MAN_PAGE_STATES)
def test_man_page_state_codes_parse(code: str, name: str) -> None:
    assert SHORT_CODES[code].value == name
    assert parse_state(code) is SchedulerState(name)
    assert parse_state(name) is SchedulerState(name)
    assert STATE_TABLE[SchedulerState(name)].code == code


@pytest.mark.parametrize(("state", "category", "kind"), [
    ("PENDING", StateCategory.WAITING, None),
    ("CONFIGURING", StateCategory.WAITING, None),
    ("REQUEUED", StateCategory.WAITING, None),
    ("REQUEUE_HOLD", StateCategory.WAITING, None),
    ("RUNNING", StateCategory.RUNNING, None),
    ("COMPLETING", StateCategory.RUNNING, None),
    ("SUSPENDED", StateCategory.RUNNING, None),
    ("COMPLETED", StateCategory.SUCCEEDED, None),
    ("FAILED", StateCategory.FAILED, FailureKind.GEAR_ERROR),
    ("TIMEOUT", StateCategory.FAILED, FailureKind.TIMEOUT),
    ("OUT_OF_MEMORY", StateCategory.FAILED, FailureKind.OOM),
    ("NODE_FAIL", StateCategory.FAILED, FailureKind.NODE_FAILURE),
    ("BOOT_FAIL", StateCategory.FAILED, FailureKind.BOOT_FAILURE),
    ("PREEMPTED", StateCategory.FAILED, FailureKind.PREEMPTED),
    ("DEADLINE", StateCategory.FAILED, FailureKind.TIMEOUT),
    ("CANCELLED", StateCategory.CANCELLED, FailureKind.CANCELLED),
    ("UNKNOWN", StateCategory.UNKNOWN, None),
])
def test_state_categories(state: str, category: StateCategory, kind: FailureKind | None) -> None:
    info = STATE_TABLE[SchedulerState(state)]
    assert info.category is category
    assert info.failure_kind is kind


def test_failed_states_have_a_kind_and_others_do_not() -> None:
    for state, info in STATE_TABLE.items():
        if info.category in (StateCategory.FAILED, StateCategory.CANCELLED):
            assert info.failure_kind is not None, state
        else:
            assert info.failure_kind is None, state
    assert StateCategory.SUCCEEDED.final and StateCategory.CANCELLED.final
    assert not StateCategory.WAITING.final and not StateCategory.UNKNOWN.final


@pytest.mark.parametrize(("text", "expected"), [
    ("CANCELLED by 0", SchedulerState.CANCELLED),
    ("CANCELLED by 1000", SchedulerState.CANCELLED),
    ("COMPLETING+", SchedulerState.COMPLETING),
    ("PENDING+REQUEUE", SchedulerState.PENDING),
    (" running ", SchedulerState.RUNNING),
    ("OOM", SchedulerState.OUT_OF_MEMORY),
    ("", SchedulerState.UNKNOWN),
    ("LAUNCHING_SOON", SchedulerState.UNKNOWN),
])
def test_parse_state_spellings(text: str, expected: SchedulerState) -> None:
    assert parse_state(text) is expected


def test_cancelled_by_uid() -> None:
    assert parse_cancelled_by("CANCELLED by 0") == 0
    assert parse_cancelled_by("CANCELLED by 51234") == 51234
    assert parse_cancelled_by("CANCELLED") is None
    assert parse_cancelled_by("COMPLETED") is None


@pytest.mark.parametrize(("text", "expected"), [
    ("0:0", (0, 0)), ("3:0", (3, 0)), ("0:9", (0, 9)), ("0:125", (0, 125)),
    ("", (None, None)), ("N/A", (None, None)), ("1", (None, None)),
])
def test_exit_codes(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_exit_code(text) == expected


@pytest.mark.parametrize("code", DOCUMENTED_REASONS)
def test_every_documented_reason_has_a_sentence(code: str) -> None:
    assert code in REASON_TABLE, f"reason {code} missing from REASON_TABLE"
    info = describe_reason(code)
    assert info is REASON_TABLE[code]
    assert len(info.sentence) > 20 and info.sentence.endswith(".")


@pytest.mark.parametrize("code", NEVER_START)
def test_reasons_that_never_start(code: str) -> None:
    assert describe_reason(code).never_starts, code


@pytest.mark.parametrize("code", WILL_START)
def test_reasons_that_wait(code: str) -> None:
    info = describe_reason(code)
    assert info.outlook is Outlook.WAIT, code
    assert not info.never_starts


def test_holds() -> None:
    assert describe_reason("JobHeldUser").outlook is Outlook.HELD
    assert describe_reason("JobHeldAdmin").outlook is Outlook.HELD
    assert "administrator" in describe_reason("JobHeldAdmin").sentence


@pytest.mark.parametrize(("raw", "code"), [
    ("Priority", "Priority"),
    ("(Priority)", "Priority"),
    ("ReqNodeNotAvail, UnavailableNodes:c[1-2]", "ReqNodeNotAvail"),
    ("  Resources ", "Resources"),
    ("", None),
    (None, None),
])
def test_reason_code_from_raw_text(raw: str | None, code: str | None) -> None:
    assert reason_code(raw) == code


def test_reason_lookup_is_case_insensitive_and_handles_raw_text() -> None:
    assert describe_reason("partitiontimelimit").never_starts
    assert describe_reason("ReqNodeNotAvail, UnavailableNodes:vm") is \
        REASON_TABLE["ReqNodeNotAvail"]
    assert describe_reason(None) is REASON_TABLE["None"]


@pytest.mark.parametrize(("code", "outlook"), [
    ("QOSMaxFooPerJob", Outlook.NEVER),  # a limit a newer SLURM may add
    ("AssocMaxFooPerNode", Outlook.NEVER),
    ("AssocGrpFooLimit", Outlook.WAIT),
    ("QOSMaxFooPerUser", Outlook.WAIT),
    ("QOSMinFoo", Outlook.NEVER),
    ("MaxFooPerAccount", Outlook.WAIT),
])
def test_unknown_codes_fall_back_to_their_family(code: str, outlook: Outlook) -> None:
    assert describe_reason(code).outlook is outlook


def test_unknown_reason_is_named_not_raised() -> None:
    info = describe_reason("SomethingNew")
    assert "SomethingNew" in info.sentence
    assert info.outlook is Outlook.WAIT
