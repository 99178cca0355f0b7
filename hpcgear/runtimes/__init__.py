"""Container runtimes: Apptainer / Singularity command builders (argv lists only)."""

from __future__ import annotations

from hpcgear.config.site import RuntimeConfig
from hpcgear.runtimes.apptainer import ApptainerRuntime, SingularityRuntime
from hpcgear.runtimes.base import (
    CONTAINER_FLYWHEEL,
    CONTAINER_HOME,
    CONTAINER_MARKER_DIR,
    MARKER_FAILED_RC,
    STARTED_MARKER_NAME,
    ContainerInvocation,
    ContainerMount,
    ContainerRuntime,
    start_script,
)
from hpcgear.runtimes.envfile import gear_environment, render_env_file, render_gear_env

__all__ = [
    "CONTAINER_FLYWHEEL",
    "CONTAINER_HOME",
    "CONTAINER_MARKER_DIR",
    "MARKER_FAILED_RC",
    "STARTED_MARKER_NAME",
    "ApptainerRuntime",
    "ContainerInvocation",
    "ContainerMount",
    "ContainerRuntime",
    "SingularityRuntime",
    "gear_environment",
    "render_env_file",
    "render_gear_env",
    "runtime_for",
    "start_script",
]


def runtime_for(config: RuntimeConfig) -> ContainerRuntime:
    """The command builder for a site's ``runtime:`` section."""
    if config.kind == "singularity":
        return SingularityRuntime(executable=config.executable_path,
                                  extra_flags=config.extra_flags, no_eval=config.no_eval)
    return ApptainerRuntime(executable=config.executable_path, extra_flags=config.extra_flags,
                            no_eval=config.no_eval)
