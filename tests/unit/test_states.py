from __future__ import annotations

import itertools

import pytest

from hpcgear.errors import StateTransitionError
from hpcgear.states import ALLOWED_TRANSITIONS, FailureKind, JobState, check_transition


def test_final_states_have_no_exits() -> None:
    for state in JobState:
        assert state.final == (not ALLOWED_TRANSITIONS[state])


def test_every_live_state_can_fail_or_cancel() -> None:
    for state in JobState:
        if not state.final:
            assert {JobState.FAILED, JobState.CANCELLED} <= ALLOWED_TRANSITIONS[state]


def test_completed_slurm_job_goes_through_staging() -> None:
    check_transition(JobState.RUNNING, JobState.STAGING)
    with pytest.raises(StateTransitionError, match="running to complete"):
        check_transition(JobState.RUNNING, JobState.COMPLETE)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(JobState, JobState)))
def test_table_is_enforced(old: JobState, new: JobState) -> None:
    if new in ALLOWED_TRANSITIONS[old]:
        check_transition(old, new)
    else:
        with pytest.raises(StateTransitionError):
            check_transition(old, new)


def test_failure_kind_classes() -> None:
    assert FailureKind.NODE_FAILURE.infrastructure and not FailureKind.NODE_FAILURE.resource
    assert FailureKind.OOM.resource and not FailureKind.GEAR_ERROR.infrastructure
    assert not FailureKind.GEAR_ERROR.resource
