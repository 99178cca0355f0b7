"""The exit record a job script writes to ``<jobdir>/.hpcgear/exit.json``.

The script writes it once, atomically (temp file + ``mv``), after the container
exited. An EXIT trap writes ``"complete": false`` (and ``"rc": null``) only when
the script ended before it could write the real record, so a record never
claims success it did not see. Success needs ``complete``, ``started``,
``rc == 0`` and no ``error`` - and, separately, SLURM's COMPLETED.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hpcgear.errors import InvalidInputError

EXIT_RECORD_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class ExitRecord:
    """What the job script saw. ``rc`` is the container's exit status."""

    complete: bool
    job_id: str
    attempt: int
    rc: int | None
    signal: str | None  # signal the script received and forwarded (TERM, INT, HUP)
    timed_out: bool  # TERM arrived near the time limit (SLURM's --signal warning)
    started: bool  # the start marker was written: the gear command began
    boot_failed: bool  # the runtime never started the container, retries used up
    boot_attempts: int
    error: str | None  # e.g. "input file missing: dicom/x.dcm"
    host: str | None
    runtime_version: str | None
    slurm_job_id: str | None
    slurm_array_task_id: int | None
    start_time: str | None
    end_time: str | None
    elapsed_s: int | None

    @property
    def succeeded(self) -> bool:
        """True only for a complete record of a started gear that exited 0."""
        return self.complete and self.started and self.rc == 0 and self.error is None


def _get(data: dict[str, Any], key: str, types: tuple[type, ...], source: str) -> Any:
    value = data.get(key)
    if value is None and type(None) in types:
        return None
    if isinstance(value, bool) and bool not in types:
        value = object()  # bool is an int subclass; never accept it for a number
    if not isinstance(value, types):
        raise InvalidInputError(f"{source}: field {key!r} is {value!r}",
                                "the exit record is damaged; the job counts as lost")
    return value


def parse_exit_record(text: str, *, source: str = "exit.json") -> ExitRecord:
    """Parse an exit record; InvalidInputError if it is not one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{source} is not JSON: {exc}",
                                "the exit record is damaged; the job counts as lost") from None
    if not isinstance(data, dict) or data.get("schema") != EXIT_RECORD_SCHEMA:
        raise InvalidInputError(f"{source} is not an hpcgear exit record (schema 1)",
                                "the job script that wrote it is from another version")
    nn = type(None)
    return ExitRecord(
        complete=_get(data, "complete", (bool,), source),
        job_id=_get(data, "job_id", (str,), source),
        attempt=_get(data, "attempt", (int,), source),
        rc=_get(data, "rc", (int, nn), source),
        signal=_get(data, "signal", (str, nn), source),
        timed_out=_get(data, "timed_out", (bool,), source),
        started=_get(data, "started", (bool,), source),
        boot_failed=_get(data, "boot_failed", (bool,), source),
        boot_attempts=_get(data, "boot_attempts", (int,), source),
        error=_get(data, "error", (str, nn), source),
        host=_get(data, "host", (str, nn), source),
        runtime_version=_get(data, "runtime_version", (str, nn), source),
        slurm_job_id=_get(data, "slurm_job_id", (str, nn), source),
        slurm_array_task_id=_get(data, "slurm_array_task_id", (int, nn), source),
        start_time=_get(data, "start_time", (str, nn), source),
        end_time=_get(data, "end_time", (str, nn), source),
        elapsed_s=_get(data, "elapsed_s", (int, nn), source),
    )
