"""Container runtime command builders and the env file."""

from __future__ import annotations

import shlex
from dataclasses import replace

import pytest

from hpcgear.config.site import RuntimeConfig
from hpcgear.errors import ConfigError, ImageError, InvalidInputError
from hpcgear.runtimes import (
    ApptainerRuntime,
    ContainerInvocation,
    ContainerMount,
    ContainerRuntime,
    SingularityRuntime,
    gear_environment,
    render_env_file,
    render_gear_env,
    runtime_for,
    start_script,
)
from hpcgear.spec import GearRef, JobSpec, Resources
from hpcgear.units import gpus_in_gres

JD = "/scratch/u/hpcgear/j1/a1"


def invocation(**changes: object) -> ContainerInvocation:
    base: dict[str, object] = {
        "image": "/images/sha256-abc.sif",
        "command": "python run.py",
        "env_file": f"{JD}/.hpcgear/gear.env",
        "workdir": f"{JD}/.apptainer",
        "home": f"{JD}/.hpcgear/home",
        "marker_dir": f"{JD}/.hpcgear/boot",
        "mounts": (
            ContainerMount(f"{JD}/flywheel/v0/input", "/flywheel/v0/input", read_only=True),
            ContainerMount(f"{JD}/flywheel/v0/output", "/flywheel/v0/output"),
        ),
    }
    base.update(changes)
    return ContainerInvocation(**base)  # type: ignore[arg-type]


def test_apptainer_argv_is_the_documented_list() -> None:
    argv = ApptainerRuntime(executable="/usr/bin/apptainer").build_argv(invocation())
    assert argv == [
        "/usr/bin/apptainer", "exec", "--containall", "--cleanenv", "--no-eval",
        "--workdir", f"{JD}/.apptainer",
        "--pwd", "/flywheel/v0",
        "--env-file", f"{JD}/.hpcgear/gear.env",
        "--home", f"{JD}/.hpcgear/home:/home/hpcgear",
        "--bind", f"{JD}/flywheel/v0/input:/flywheel/v0/input:ro",
        "--bind", f"{JD}/flywheel/v0/output:/flywheel/v0/output",
        "--bind", f"{JD}/.hpcgear/boot:/.hpcgear",
        "/images/sha256-abc.sif",
        "/bin/sh", "-c", ': > /.hpcgear/started || exit 254; exec /bin/sh -c "$1"',
        "hpcgear-gear", "python run.py",
    ]


def test_command_travels_as_data_not_code() -> None:
    hostile = "echo '$(id)'; `id` \"x\"\nrm -rf /"
    argv = ApptainerRuntime().build_argv(invocation(command=hostile))
    assert argv[-1] == hostile
    assert hostile not in argv[-3]  # the outer sh program never contains the command


def test_no_command_runs_flywheel_v0_run_behind_the_marker() -> None:
    """Flywheel runs /flywheel/v0/run when a manifest has no command (issue 11): the
    image's runscript (a busybox shell, say) must never stand in for the gear."""
    argv = ApptainerRuntime().build_argv(invocation(command=None))
    assert argv[-4:] == ["/bin/sh", "-c", start_script(None), "hpcgear-gear"]
    assert start_script(None).endswith("exec /flywheel/v0/run")
    assert "runscript" not in start_script(None)
    assert start_script(None).startswith(": > /.hpcgear/started")


def test_gpu_writable_debug_and_extra_flags() -> None:
    rt = ApptainerRuntime(extra_flags=("--bind", "/projects"), no_eval=False)
    argv = rt.build_argv(invocation(gpus=2, writable_tmpfs=True, debug=True))
    assert argv[:3] == ["apptainer", "--debug", "exec"]
    assert "--nv" in argv and "--writable-tmpfs" in argv and "--no-eval" not in argv
    image = argv.index("/images/sha256-abc.sif")
    assert argv[image - 2: image] == ["--bind", "/projects"]
    plain = ApptainerRuntime().build_argv(invocation())
    assert "--nv" not in plain and "--writable-tmpfs" not in plain and "--debug" not in plain


def test_singularity_builder() -> None:
    rt = SingularityRuntime()
    assert rt.kind == "singularity"
    assert rt.version_argv() == ["singularity", "--version"]
    argv = rt.build_argv(invocation())
    assert argv[:4] == ["singularity", "exec", "--containall", "--cleanenv"]


def test_runtime_for_site_config() -> None:
    app = runtime_for(RuntimeConfig(image_cache="/i", executable="/opt/bin/apptainer"))
    assert isinstance(app, ContainerRuntime)
    assert app.kind == "apptainer" and app.version_argv() == ["/opt/bin/apptainer", "--version"]
    sing = runtime_for(RuntimeConfig(image_cache="/i", kind="singularity", no_eval=False))
    assert sing.kind == "singularity" and sing.version_argv() == ["singularity", "--version"]
    assert "--no-eval" not in sing.build_argv(invocation())


@pytest.mark.parametrize("image", ["docker://busybox", "relative.sif", "/x\0.sif",
                                   "oras://reg/x:1"])
def test_only_local_sif_images_run(image: str) -> None:
    with pytest.raises(ImageError, match="not a local SIF path"):
        ApptainerRuntime().build_argv(invocation(image=image))


@pytest.mark.parametrize("path", [f"{JD}/a:b", f"{JD}/a,b", "relative/x", f"{JD}/a\nb"])
def test_bind_paths_that_apptainer_would_misparse_are_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="cannot be passed to the container runtime"):
        ApptainerRuntime().build_argv(invocation(mounts=(ContainerMount(path, "/x"),)))
    with pytest.raises(ConfigError):
        ApptainerRuntime().build_argv(invocation(home=path))


def test_nul_in_command_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        ApptainerRuntime().build_argv(invocation(command="a\0b"))


@pytest.mark.parametrize(("gres", "n"), [(None, 0), ("", 0), ("gpu", 1), ("gpu:2", 2),
                                         ("gpu:a100:3", 3), ("gpu:a100", 1),
                                         ("gpu:1,gpu:a100:2", 3), ("mps:100", 0)])
def test_gpus_in_gres(gres: str | None, n: int) -> None:
    assert gpus_in_gres(gres) == n


HOSTILE_VALUES = [
    "plain",
    "",
    "it's",
    'say "hi"',
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a;b && c || d | e > f < g",
    "multi\nline\nvalue",
    "${HOME} $HOME \\n \\",
    "x" * 10_000,
    "ünïcödé ✓",
]


def test_env_file_values_are_single_words_that_round_trip() -> None:
    pairs = [(f"V{i}", v) for i, v in enumerate(HOSTILE_VALUES)]
    text = render_env_file(pairs)
    lines = text.split("\n")
    assert lines[0].startswith("#")
    # shlex in POSIX mode parses like the runtime's POSIX shell interpreter
    parsed = dict(tok.split("=", 1) for tok in shlex.split(text, comments=True))
    assert parsed == dict(pairs)


def test_env_file_later_value_wins_and_runtime_names_are_skipped() -> None:
    text = render_env_file([("A", "1"), ("HOME", "/root"), ("A", "2"), ("PWD", "/")])
    assert text.splitlines()[1:] == ["A=2"]


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "", "A=B", "$(x)", "A\n"])
def test_env_file_refuses_bad_names(name: str) -> None:
    with pytest.raises(InvalidInputError, match="name"):
        render_env_file([(name, "v")])


def test_env_file_refuses_nul() -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        render_env_file([("A", "x\0y")])


def spec(environment: tuple[tuple[str, str], ...] = ()) -> JobSpec:
    gear = GearRef("g", "1.0", "sha256:m", "ref", "sha256:d", "/images/d.sif", "run",
                   environment)
    return JobSpec("job1", 2, gear, {}, (), "session", "s-1", Resources(), "site", "alice")


def test_gear_environment_appends_hpcgear_values() -> None:
    pairs = gear_environment(spec((("PATH", "/opt/bin:/bin"), ("HPCGEAR_JOB_ID", "fake"))))
    names = [n for n, _ in pairs]
    assert names == ["PATH", "HPCGEAR_JOB_ID", "HPCGEAR_ATTEMPT", "HPCGEAR_SITE", "HPCGEAR_GEAR",
                     "HPCGEAR_DESTINATION"]
    assert dict(pairs)["HPCGEAR_JOB_ID"] == "job1"
    assert dict(pairs)["HPCGEAR_ATTEMPT"] == "2"
    assert "HPCGEAR_GEAR=g@1.0" in render_gear_env(spec())


@pytest.mark.parametrize(
    "environment",
    [
        (),
        (("PATH", "/opt/bin:/bin"), ("HOME", "/root"), ("A", "it's $(x)"), ("PATH", "/usr/bin")),
        (("HPCGEAR_SITE", "fake"), ("FSLOUTPUTTYPE", "NIFTI_GZ")),
    ],
)
def test_gear_env_text_is_the_env_file_of_gear_environment(
    environment: tuple[tuple[str, str], ...],
) -> None:
    # render_gear_env renders the manifest's part once per gear: the text must stay
    # exactly the env file of the full list, for every job of that gear.
    for s in (spec(environment), replace(spec(environment), job_id="job2", attempt=3)):
        assert render_gear_env(s) == render_env_file(gear_environment(s))
    assert "HPCGEAR_JOB_ID=job2\n" in render_gear_env(replace(spec(environment), job_id="job2"))
