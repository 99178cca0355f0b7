"""sbatch rendering: job directory layout, templates, quoting filters, exit records."""

from __future__ import annotations

from hpcgear.render.environment import (
    check_sbatch_line,
    lint_template,
    num,
    q,
    template_environment,
)
from hpcgear.render.exit_record import ExitRecord, parse_exit_record
from hpcgear.render.paths import (
    ArrayPaths,
    JobPaths,
    TaskFile,
    check_job_id,
    check_path_component,
)
from hpcgear.render.sbatch import (
    TASKS_DAT_CONTRACT,
    RenderedScript,
    argv_from_template,
    array_slurm_comment,
    array_slurm_name,
    build_invocation,
    build_runtime_argv,
    compile_templates,
    render_array,
    render_sbatch,
    runtime_argv_template,
    sbatch_options,
)

__all__ = [
    "TASKS_DAT_CONTRACT",
    "ArrayPaths",
    "ExitRecord",
    "JobPaths",
    "RenderedScript",
    "TaskFile",
    "argv_from_template",
    "array_slurm_comment",
    "array_slurm_name",
    "build_invocation",
    "build_runtime_argv",
    "check_job_id",
    "check_path_component",
    "check_sbatch_line",
    "compile_templates",
    "lint_template",
    "num",
    "parse_exit_record",
    "q",
    "render_array",
    "render_sbatch",
    "runtime_argv_template",
    "sbatch_options",
    "template_environment",
]
