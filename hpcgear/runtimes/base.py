"""The container-runtime contract: an invocation in, an argv list out.

A runtime never builds a shell string. :class:`ContainerInvocation` says what
to run (image, the manifest command or the image's runscript) and which host
paths go where; a :class:`ContainerRuntime` turns it into the argv the job
script runs, and knows how to ask the runtime for its version.

Inside the container the command always starts as::

    /bin/sh -c ': > /.hpcgear/started || exit 254; exec /bin/sh -c "$1"' hpcgear-gear COMMAND

The first shell proves the container booted (the *start marker*, written into a
bound host directory) and then replaces itself with ``/bin/sh -c COMMAND``,
exactly as Flywheel runs a manifest ``command``; ``COMMAND`` travels as a
positional parameter, so it is data to this outer shell. Without a manifest
command ``/flywheel/v0/run`` is exec'ed, as Flywheel does (never the image's
runscript, which may be anything: a shell, a no-op). The job script retries
the container only when the marker is missing (the runtime failed to start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hpcgear.errors import ConfigError, ImageError, InvalidInputError

#: Where the gear's files live inside the container (Flywheel's layout).
CONTAINER_FLYWHEEL = "/flywheel/v0"
#: $HOME inside the container (bound from a scratch directory, not RAM).
CONTAINER_HOME = "/home/hpcgear"
#: Directory holding the start marker inside the container.
CONTAINER_MARKER_DIR = "/.hpcgear"
#: File name of the start marker (host side: ``<marker_dir>/started``).
STARTED_MARKER_NAME = "started"
#: Exit status of the in-container prologue when the marker cannot be written.
MARKER_FAILED_RC = 254
#: ``$0`` of the in-container shells (shows up in ``ps`` and error messages).
SHELL_NAME = "hpcgear-gear"
#: What a gear whose manifest has no ``command`` runs (the Flywheel gear spec's default).
DEFAULT_GEAR_COMMAND = f"{CONTAINER_FLYWHEEL}/run"


def start_script(command: str | None) -> str:
    """The ``/bin/sh -c`` program that writes the start marker, then runs the gear."""
    marker = f"{CONTAINER_MARKER_DIR}/{STARTED_MARKER_NAME}"
    touch = f": > {marker} || exit {MARKER_FAILED_RC}; "
    if command is None:
        return touch + f"exec {DEFAULT_GEAR_COMMAND}"
    return touch + 'exec /bin/sh -c "$1"'


@dataclass(frozen=True, slots=True)
class ContainerMount:
    """One bind mount: host ``source`` at ``target`` in the container."""

    source: str
    target: str
    read_only: bool = False

    def bind_spec(self) -> str:
        for what, path in (("source", self.source), ("target", self.target)):
            if not path.startswith("/") or any(c in path for c in ":,\n\0"):
                raise ConfigError(
                    f"bind {what} {path!r} cannot be passed to the container runtime",
                    "bind paths must be absolute and free of ':', ',' and line breaks; "
                    "check scratch_root in the site config",
                )
        spec = f"{self.source}:{self.target}"
        return spec + ":ro" if self.read_only else spec


@dataclass(frozen=True, slots=True)
class ContainerInvocation:
    """Everything a runtime needs to run one gear container.

    Paths are host paths on the compute node. ``command`` is the manifest
    command (run through ``/bin/sh -c``); ``None`` runs ``/flywheel/v0/run``.
    """

    image: str
    command: str | None
    env_file: str
    workdir: str
    home: str
    marker_dir: str
    mounts: tuple[ContainerMount, ...] = ()
    pwd: str = CONTAINER_FLYWHEEL
    gpus: int = 0
    writable_tmpfs: bool = False
    debug: bool = False

    def validate(self) -> None:
        """Raise if a value cannot be passed safely to the runtime."""
        if not self.image.startswith("/") or "://" in self.image or "\0" in self.image:
            raise ImageError(
                f"image {self.image!r} is not a local SIF path",
                "jobs run cached SIF files only; install the gear so its image is cached",
            )
        if self.command is not None and "\0" in self.command:
            raise InvalidInputError("the gear command contains a NUL byte",
                                    "fix the manifest command")
        for path in (self.env_file, self.workdir, self.home, self.marker_dir):
            ContainerMount(path, "/").bind_spec()


@runtime_checkable
class ContainerRuntime(Protocol):
    """Builds argv lists for one runtime family."""

    @property
    def kind(self) -> str:
        """``apptainer`` or ``singularity``."""
        ...

    def build_argv(self, invocation: ContainerInvocation) -> list[str]:
        """The argv that runs ``invocation`` (never a shell string)."""
        ...

    def version_argv(self) -> list[str]:
        """The argv that prints the runtime's version on its first line."""
        ...


def check_flags(flags: Sequence[str]) -> tuple[str, ...]:
    """Refuse flags with NUL or line breaks (they go into argv and a bash array)."""
    for flag in flags:
        if any(c in flag for c in "\0\n\r"):
            raise ConfigError(f"runtime flag {flag!r} contains a line break or NUL",
                              "fix runtime.extra_flags in the site config")
    return tuple(flags)
