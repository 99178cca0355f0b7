"""Apptainer and Singularity command builders.

Both families accept the same action flags for what hpcgear needs:

* ``--containall`` (``--contain --cleanenv --ipc --pid``): no host home, /tmp or
  environment leaks in; ``--cleanenv`` is repeated for readers of the argv.
* ``--workdir <jobdir>/.apptainer``: the runtime's own scratch on scratch.
* ``--home <jobdir>/.hpcgear/home:/home/hpcgear`` and ``--bind <jobdir>/.hpcgear/tmp:/tmp``
  so a gear writing hundreds of MB to ``$HOME`` or ``/tmp`` lands on scratch,
  not in the runtime's RAM-backed session directory.
* ``--env-file``: Apptainer evaluates it with its embedded POSIX shell
  interpreter (mvdan.cc/sh), so values are written single-quoted (see
  :mod:`hpcgear.runtimes.envfile`). ``--no-eval`` (Apptainer >= 1.1,
  SingularityCE >= 3.10) additionally stops values being re-evaluated when the
  environment is injected inside the container; sites with older runtimes turn
  it off with ``runtime.no_eval: false``.
* ``--nv`` only when GPUs are requested; ``--writable-tmpfs`` when asked.

The gear is always started with ``exec`` (see :mod:`hpcgear.runtimes.base`);
a manifest without a command runs ``/flywheel/v0/run`` as Flywheel does, not the
image's runscript.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcgear.runtimes.base import (
    CONTAINER_HOME,
    CONTAINER_MARKER_DIR,
    SHELL_NAME,
    ContainerInvocation,
    ContainerMount,
    check_flags,
    start_script,
)


@dataclass(frozen=True, slots=True)
class ApptainerRuntime:
    """Command builder for Apptainer (and, via ``family``, Singularity)."""

    executable: str = "apptainer"
    extra_flags: tuple[str, ...] = ()
    no_eval: bool = True
    family: str = "apptainer"

    @property
    def kind(self) -> str:
        return self.family

    def version_argv(self) -> list[str]:
        return [self.executable, "--version"]

    def build_argv(self, invocation: ContainerInvocation) -> list[str]:
        invocation.validate()
        argv = [self.executable]
        if invocation.debug:
            argv.append("--debug")
        argv += ["exec", "--containall", "--cleanenv"]
        if self.no_eval:
            argv.append("--no-eval")
        argv += [
            "--workdir", invocation.workdir,
            "--pwd", invocation.pwd,
            "--env-file", invocation.env_file,
            "--home", ContainerMount(invocation.home, CONTAINER_HOME).bind_spec(),
        ]
        for mount in invocation.mounts:
            argv += ["--bind", mount.bind_spec()]
        argv += ["--bind", ContainerMount(invocation.marker_dir, CONTAINER_MARKER_DIR).bind_spec()]
        if invocation.gpus > 0:
            argv.append("--nv")
        if invocation.writable_tmpfs:
            argv.append("--writable-tmpfs")
        argv += check_flags(self.extra_flags)
        argv += [invocation.image, "/bin/sh", "-c", start_script(invocation.command), SHELL_NAME]
        if invocation.command is not None:
            argv.append(invocation.command)
        return argv


@dataclass(frozen=True, slots=True)
class SingularityRuntime(ApptainerRuntime):
    """Command builder for Singularity (SingularityCE 3.6+): same flags, other executable."""

    executable: str = "singularity"
    family: str = "singularity"
