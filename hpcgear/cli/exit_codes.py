"""Exit statuses, mapped from the error tree in one place."""

from __future__ import annotations

import enum

from hpcgear import errors


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1  # generic hpcgear error
    USAGE = 2  # click usage error
    NOT_FOUND = 3
    PERMISSION = 4
    INVALID = 5  # bad input, schema or config
    CONFLICT = 6  # already exists
    UNAVAILABLE = 7  # database, scheduler or transport unreachable
    INTERNAL = 70  # a bug: please report with --traceback
    INTERRUPTED = 130


_MAP: tuple[tuple[type[errors.HpcgearError], ExitStatus], ...] = (
    (errors.NotFoundError, ExitStatus.NOT_FOUND),
    (errors.PermissionDeniedError, ExitStatus.PERMISSION),
    (errors.AlreadyExistsError, ExitStatus.CONFLICT),
    (errors.LeaderConflictError, ExitStatus.CONFLICT),
    (errors.DatabaseError, ExitStatus.UNAVAILABLE),
    (errors.TransportError, ExitStatus.UNAVAILABLE),
    (errors.SchedulerError, ExitStatus.UNAVAILABLE),
    (errors.InvalidInputError, ExitStatus.INVALID),
    (errors.ConfigError, ExitStatus.INVALID),
)


def exit_status_for(exc: errors.HpcgearError) -> ExitStatus:
    for cls, status in _MAP:
        if isinstance(exc, cls):
            return status
    return ExitStatus.ERROR
