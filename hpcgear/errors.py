"""The hpcgear error tree.

Every error carries a one-line ``message`` naming the problem and a ``hint``
naming the fix. ``transient`` says whether retrying the same call may succeed
(a timed-out ``sbatch``), as opposed to a definite refusal (a bad partition).
The CLI maps each class to an exit status in one place (``cli/exit_codes.py``).
"""

from __future__ import annotations


class HpcgearError(Exception):
    """Base class: a message, a hint for the fix, and whether it is transient."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.transient = transient

    def __str__(self) -> str:
        return self.message


class ConfigError(HpcgearError):
    """Settings, site YAML or a config file is wrong."""


class SchemaError(ConfigError):
    """A user/admin document (site YAML, manifest, rule) does not match its schema."""


class DatabaseError(HpcgearError):
    """The database cannot be reached or is not at the expected schema version."""


class WriteConflictError(HpcgearError):
    """Another writer changed a row between our read and our write (a lost
    compare-and-set); a user's write is run again as a whole (``Database.write``)."""


class NotFoundError(HpcgearError):
    """A path, file, gear, job or user does not exist."""


class AlreadyExistsError(HpcgearError):
    """Creating something whose natural key is taken."""


class InvalidInputError(HpcgearError):
    """A value given by a user is malformed (label, path, key=value, unit...)."""


class PermissionDeniedError(HpcgearError):
    """The acting user lacks the role an action needs."""


class AuthenticationError(PermissionDeniedError):
    """No valid credential: an unknown, revoked or expired API key (HTTP 401)."""


class StorageError(HpcgearError):
    """Permanent storage failed (I/O error, hash mismatch)."""


class ManifestError(SchemaError):
    """A gear manifest is invalid."""


class GearConfigError(InvalidInputError):
    """A job's gear config does not satisfy the manifest."""


class ResourceError(InvalidInputError):
    """A resource request is malformed or exceeds a partition's limits."""


class CommandError(HpcgearError):
    """An external command failed; keeps argv, exit code and output for the log."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        argv: list[str] | tuple[str, ...] = (),
        returncode: int | None = None,
        stdout: str = "",
        stderr: str = "",
        transient: bool = False,
    ) -> None:
        super().__init__(message, hint, transient=transient)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class SchedulerError(CommandError):
    """SLURM (or the local backend) refused or failed a request."""


class TransportError(CommandError):
    """The transport (local subprocess, SSH) failed to run a command or move a file."""


class LeaderConflictError(HpcgearError):
    """Another controller leads the site (or took it over from this one)."""


class StateTransitionError(HpcgearError):
    """A job state change is not allowed by the transition table."""


class ImageError(HpcgearError):
    """Building, pulling or verifying a container image failed."""


class StagingError(HpcgearError):
    """Stage-in or stage-out failed."""


class IngestError(HpcgearError):
    """Data could not be ingested."""


class RuleError(SchemaError):
    """A gear rule is invalid."""
