"""sbatch rendering: job paths, #SBATCH validation, template safety, arrays, exit records."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from hpcgear.config.data import shipped_dir
from hpcgear.config.site import SiteConfig, load_site_text
from hpcgear.errors import ConfigError, ImageError, InvalidInputError
from hpcgear.render import (
    TASKS_DAT_CONTRACT,
    ArrayPaths,
    JobPaths,
    build_runtime_argv,
    check_sbatch_line,
    lint_template,
    parse_exit_record,
    q,
    render_array,
    render_sbatch,
)
from hpcgear.render.environment import num, q_case, q_lines, q_rows
from hpcgear.spec import GearRef, InputSpec, JobSpec, Resources

SITE_YAML = """\
name: testsite
scratch_root: /scratch/{user}
scratch_user: owner
storage_root: /data/hpcgear
runtime:
  executable: /usr/bin/apptainer
  image_cache: /data/images
  boot_retries: 2
  boot_retry_delay_seconds: 5
  term_grace_seconds: 120
partitions:
  debug: {max_time: 2h, default: true}
  gpu: {max_time: 2h, max_gpus: 2, gres: gpu, qos: gpuq, account: lab}
array:
  throttle: 3
  max_size: 5
extra_sbatch_options: [--constraint=ib]
"""


def make_site(yaml_text: str = SITE_YAML, **changes: object) -> SiteConfig:
    site = load_site_text(yaml_text, "test-site.yaml")
    return dataclasses.replace(site, **changes) if changes else site


def make_gear(**changes: object) -> GearRef:
    gear = GearRef(
        name="dcm2niix", version="1.0.0", manifest_sha256="sha256:" + "1" * 64,
        image_ref="docker://example/dcm2niix:1.0.0", image_digest="sha256:" + "2" * 64,
        sif_path="/data/images/sha256-" + "2" * 64 + ".sif",
        command="python3 /flywheel/v0/run.py",
        environment=(("PATH", "/usr/local/bin:/usr/bin:/bin"), ("FLYWHEEL", "/flywheel/v0")),
    )
    return dataclasses.replace(gear, **changes) if changes else gear


def make_spec(job_id: str = "job0001", site: str = "testsite", **changes: object) -> JobSpec:
    spec = JobSpec(
        job_id=job_id, attempt=1, gear=make_gear(), config={"threshold": 0.5},
        inputs=(InputSpec(name="dicom", base="file", file_name="scan.dicom.zip",
                          sha256="sha256:" + "3" * 64, size=1024),
                InputSpec(name="key", base="api-key")),
        destination_type="session", destination_id="ses-01", resources=Resources(
            cpus=2, mem_mb=4096, time_minutes=90, partition="debug"),
        site=site, user="alice", tags=("hpc", "nightly"),
    )
    return dataclasses.replace(spec, **changes) if changes else spec


def sbatch_lines(text: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in text.splitlines() if line.startswith("#SBATCH")]


# -- job paths ---------------------------------------------------------------------------


def test_job_paths_layout() -> None:
    p = JobPaths.for_job("/scratch/alice", "job0001", 2)
    root = "/scratch/alice/hpcgear/job0001/a2"
    assert p.root == root
    assert p.input_dir == f"{root}/flywheel/v0/input"
    assert p.output_dir == f"{root}/flywheel/v0/output"
    assert p.work_dir == f"{root}/flywheel/v0/work"
    assert p.config_json == f"{root}/flywheel/v0/config.json"
    assert p.sbatch == f"{root}/.hpcgear/job.sbatch"
    assert p.env_file == f"{root}/.hpcgear/gear.env"
    assert p.exit_json == f"{root}/.hpcgear/exit.json"
    assert p.log_pattern == f"{root}/.hpcgear/slurm-%j.out"
    assert p.log_file("12345") == f"{root}/.hpcgear/slurm-12345.out"
    assert p.apptainer_dir == f"{root}/.apptainer"
    assert p.started_marker == f"{root}/.hpcgear/boot/started"
    assert p.input_file("dicom", "a b.zip") == f"{root}/flywheel/v0/input/dicom/a b.zip"
    assert p.directories()[0] == root and len(set(p.directories())) == len(p.directories())


def test_job_paths_for_spec_uses_the_site_scratch() -> None:
    assert JobPaths.for_spec(make_spec(), make_site()).root == "/scratch/alice/hpcgear/job0001/a1"


@pytest.mark.parametrize("job_id", ["../x", "a/b", "-x", "", "a b", "x;y", "a\nb", "é",
                                    "job1\n"])
def test_job_paths_refuse_unsafe_job_ids(job_id: str) -> None:
    with pytest.raises(InvalidInputError, match="job id"):
        JobPaths.for_job("/scratch/alice", job_id, 1)


@pytest.mark.parametrize("attempt", [0, -1, True])
def test_job_paths_refuse_bad_attempts(attempt: int) -> None:
    with pytest.raises(InvalidInputError, match="attempt"):
        JobPaths.for_job("/scratch/alice", "j", attempt)


@pytest.mark.parametrize(("name", "file_name"), [("..", "x"), ("a", "../x"), ("a", "b/c"),
                                                  ("a", ""), ("a", "x\0"), ("a", "x" * 300)])
def test_input_paths_stay_single_components(name: str, file_name: str) -> None:
    with pytest.raises(InvalidInputError, match="cannot be used as a file name"):
        JobPaths.input_relpath(name, file_name)


def test_array_paths() -> None:
    a = ArrayPaths.for_array("/scratch/alice", "batch-7")
    assert a.root == "/scratch/alice/hpcgear/arrays/batch-7"
    assert a.log_pattern.endswith("/slurm-%A_%a.out")


# -- filters ---------------------------------------------------------------------------


def test_q_quotes_and_num_checks() -> None:
    assert q("a b") == "'a b'" and q("plain") == "plain" and q(3) == "3" and q("") == "''"
    assert num(42) == "42"
    for bad in (True, None, 1.5, "3"):
        with pytest.raises(InvalidInputError):
            num(bad)
    for bad in (None, True, ["x"]):
        with pytest.raises(InvalidInputError):
            q(bad)
    with pytest.raises(InvalidInputError, match="NUL"):
        q("a\0b")


def test_q_lines_and_q_rows_quote_every_value_on_its_own_line() -> None:
    """What a {% for %} over | q prints: hostile text stays one word, numbers print as
    | num does, nothing for no values, and anything q refuses is refused."""
    import shlex

    from hpcgear.render import TaskFile

    hostile = ["a b", "$(id)", "x'; rm -rf / #", "new\nline", "plain", 7]
    text = q_lines(hostile, 4)
    assert text == "".join(f"    {q(v)}\n" for v in hostile)
    assert shlex.split(text) == [str(v) for v in hostile]  # each value one word
    assert q_lines([]) == "" and q_rows([]) == ""
    assert q_lines([3], 2) == f"  {num(3)}\n"
    rows = q_rows([TaskFile("in put/a'b.dcm", 0, 12, "f" * 64), ("x", 5)], 12)
    assert rows == f"{' ' * 12}'in put/a'\"'\"'b.dcm' 0 12 {'f' * 64}\n{' ' * 12}x 5\n"
    for bad in ([None], [True], ["a\0b"]):
        with pytest.raises(InvalidInputError):
            q_lines(bad)
    for row in (("ok", 1.5), ("ok", ["a"]), ("ok", True)):
        with pytest.raises(InvalidInputError):
            q_rows([row])


def test_q_case_prints_one_arm_per_task_as_the_loop_over_q_did() -> None:
    """Arm i assigns task i's variables: a scalar as one quoted word, a list one value
    per line, rows of words; bash reads every hostile value back as it was."""
    import subprocess

    from hpcgear.render import TaskFile

    arms = [
        {"DEST": "x'; rm -rf / #", "TAGS": ["a b", "$(id)"], "FILES": [
            TaskFile("in put/a'b.dcm", 0, 12, "f" * 64)]},
        {"DEST": "plain", "TAGS": [], "FILES": [("x", 5), ("new\nline", 6)]},
    ]
    text = q_case(arms, 4)
    assert text.startswith("    0)\n        DEST='x'\"'\"'; rm -rf / #'\n        TAGS=(\n")
    assert f"            'in put/a'\"'\"'b.dcm' 0 12 {'f' * 64}\n" in text
    assert "    1)\n        DEST=plain\n        TAGS=(\n        )\n" in text
    script = (
        f"case $1 in\n{text}esac\n"
        'printf "%s\\n" "$DEST" "${#TAGS[@]}" "${TAGS[@]}" "${FILES[@]}"\n'
    )
    got = [subprocess.run(["bash", "-c", script, "-", str(i)], capture_output=True, text=True,
                          check=True).stdout for i in (0, 1)]
    assert got[0] == "x'; rm -rf / #\n2\na b\n$(id)\nin put/a'b.dcm\n0\n12\n" + "f" * 64 + "\n"
    assert got[1] == "plain\n0\nx\n5\nnew\nline\n6\n"  # each row word one element
    assert q_case([]) == ""
    for bad in ([{"NOT A NAME": "x"}], [{"$(id)": "x"}], [{"X": None}], [{"X": ["a\0b"]}]):
        with pytest.raises(InvalidInputError):
            q_case(bad)


@pytest.mark.parametrize("option", ["--partition=debug", "--gres=gpu:a100:2", "--time=1-00:00:00",
                                    "--signal=B:TERM@120", "--comment=hpcgear:j:1",
                                    "--output=/s/x/slurm-%j.out", "--no-requeue", "-Cib",
                                    "--constraint=ib&skylake"])
def test_sbatch_lines_accept_slurm_values(option: str) -> None:
    assert check_sbatch_line(option) == option


@pytest.mark.parametrize("option", ["--partition=a b", "--qos='x'", '--account="x"',
                                    "--partition=x\n#SBATCH --export=ALL", "--comment=$(id)",
                                    "--time=`id`", "partition=x", "--x;y", "--account=a#b",
                                    "--partition=x\\y",
                                    "--partition=x\n", "--no-requeue\n"])
def test_sbatch_lines_refuse_what_sbatch_would_misread(option: str) -> None:
    with pytest.raises(InvalidInputError, match="#SBATCH"):
        check_sbatch_line(option)


# -- templates -------------------------------------------------------------------------


def test_every_expression_in_shipped_templates_is_vetted() -> None:
    """Every {{ ... }} ends with | q, | num, | q_lines(N), | q_rows(N), | q_case(N) or
    (only on #SBATCH lines) | sbatch."""
    templates = sorted(shipped_dir("sbatch_templates").glob("*.j2"))
    assert {t.name for t in templates} >= {"job.sbatch.j2", "array.sbatch.j2", "_run.bash.j2"}
    count = 0
    for template in templates:
        text = template.read_text()
        assert lint_template(text) == [], template.name
        for m in re.finditer(r"\{\{(.*?)\}\}", text, re.S):
            count += 1
            expr = m.group(1).strip()
            line = text[text.rfind("\n", 0, m.start()) + 1:].split("\n", 1)[0]
            if line.startswith("#SBATCH"):
                assert re.search(r"\|\s*sbatch$", expr), (template.name, expr)
            else:
                vetted = r"\|\s*(q|num|q_lines\(\d+\)|q_rows\(\d+\)|q_case\(\d+\))$"
                assert re.search(vetted, expr), (template.name, expr)
    assert count > 20  # the check saw the templates' expressions


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("X={{ value }}\n", "does not end with"),
        ("X={{ value | upper }}\n", "does not end with"),
        ("X={{ value | q | upper }}\n", "does not end with"),
        ("X={{ value | q_lines(x) }}\n", "does not end with"),
        ("X={{ value | q_lines(4) | upper(1) }}\n", "does not end with"),
        ("#SBATCH {{ opt | q }}\n", "use | sbatch there"),
        ("X={{ opt | sbatch }}\n", "only for #SBATCH lines"),
        ("{% raw %}{{ x }}{% endraw %}\n", "raw"),
        ("X={{ value | safe | q }}\n", "safe"),
        ('N="${#ARR[@]}"\n', "Jinja reads {# as a comment"),
    ],
)
def test_lint_finds_unvetted_expressions(source: str, needle: str) -> None:
    problems = lint_template(source)
    assert any(needle in message for _line, message in problems), problems
    assert all(line == 1 for line, _message in problems)


def write_override(tmp_path: Path, body: str) -> SiteConfig:
    (tmp_path / "job.sbatch.j2").write_text(body)
    return make_site(template_dir=str(tmp_path))


def test_site_template_override_is_used_and_can_include_the_shipped_body(tmp_path: Path) -> None:
    site = write_override(tmp_path, "#!/bin/bash\n#SBATCH {{ sbatch_options[0] | sbatch }}\n"
                                    "# site override\nJOB_DIR={{ job_dir | q }}\n"
                                    "HPCGEAR_JOB_ID={{ job_id | q }}\nHPCGEAR_ATTEMPT=1\n"
                                    "INPUT_FILES=()\n{% include '_run.bash.j2' %}\n")
    text = render_sbatch(make_spec(), site, JobPaths.for_spec(make_spec(), site)).text
    assert "# site override" in text and "RUNTIME_ARGV=(" in text
    assert sbatch_lines(text) == ["--job-name=hpcgear-job0001"]


def test_site_template_override_printing_unquoted_values_is_refused(tmp_path: Path) -> None:
    site = write_override(tmp_path, "#!/bin/bash\nJOB_DIR={{ job_dir }}\n")
    with pytest.raises(ConfigError, match=r"job.sbatch.j2:2: .*does not end with"):
        render_sbatch(make_spec(), site, JobPaths.for_spec(make_spec(), site))


def test_compile_templates_compiles_ahead_and_names_the_broken_ones(tmp_path: Path) -> None:
    """What the daemon calls at start: every template a site renders with is compiled
    into its environment's cache; a broken override is named, not raised (the render
    raises it with its hint), and the others are compiled all the same."""
    from hpcgear.render import compile_templates
    from hpcgear.render.environment import template_environment

    site = write_override(tmp_path, "#!/bin/bash\nJOB_DIR={{ job_dir }}\n")  # unquoted
    (tmp_path / "notes.txt").write_text("not a template {{")
    assert compile_templates(site) == ["job.sbatch.j2"]
    cache = template_environment(site.template_dir).cache
    assert cache is not None
    compiled = {name for (_loader, name) in cache}
    assert {"array.sbatch.j2", "_run.bash.j2"} <= compiled
    assert "job.sbatch.j2" not in compiled and "notes.txt" not in compiled
    with pytest.raises(ConfigError, match="does not end with"):
        render_sbatch(make_spec(), site, JobPaths.for_spec(make_spec(), site))
    assert compile_templates(make_site()) == []


# The shipped array template before per-array stage-in (tasks found their job
# directories staged): a site may still carry a copy of it as an override.
OLD_ARRAY_TEMPLATE = """#!/bin/bash
{% for option in sbatch_options %}
#SBATCH {{ option | sbatch }}
{% endfor %}
JOB_DIRS=(
{% for task in tasks %}
    {{ task.job_dir | q }}
{% endfor %}
)
TASK=${SLURM_ARRAY_TASK_ID:-}
JOB_DIR=${JOB_DIRS[$TASK]}
HPCGEAR_JOB_ID=x
HPCGEAR_ATTEMPT=1
INPUT_FILES=()
{% include "_run.bash.j2" %}
"""


def test_an_old_array_template_override_is_refused_with_the_fix(tmp_path: Path) -> None:
    from hpcgear.render import TaskFile

    (tmp_path / "array.sbatch.j2").write_text(OLD_ARRAY_TEMPLATE)
    site = make_site(template_dir=str(tmp_path))
    specs = [make_spec("job0001"), make_spec("job0002")]
    files = [[TaskFile("flywheel/v0/config.json", 0, 2, "a" * 64)]] * 2
    with pytest.raises(ConfigError, match="predates per-array stage-in") as err:
        render_array(specs, site, array_id="arr1", task_files=files)
    assert "sbatch_templates/array.sbatch.j2" in (err.value.hint or "")
    # without tasks.dat (job directories staged beforehand) the old template still renders
    assert "JOB_DIRS=(" in render_array(specs, site, array_id="arr1").text
    # the shipped template carries the contract
    shipped = render_array(specs, make_site(), array_id="arr1", task_files=files).text
    assert TASKS_DAT_CONTRACT in shipped.splitlines()
    assert "flywheel/v0/config.json 0 2 " + "a" * 64 in shipped


def test_argv_template_rebuilds_every_tasks_argv() -> None:
    from hpcgear.render import argv_from_template, runtime_argv_template

    site = make_site()
    spec = make_spec(gear=make_gear(command="run --dir /a/@b --x 'y z'"))
    template = runtime_argv_template(spec, site)
    for job_id in ("job0001", "job0002"):
        paths = JobPaths.for_spec(dataclasses.replace(spec, job_id=job_id), site)
        assert argv_from_template(template, paths.root) == build_runtime_argv(spec, site, paths)


def test_unvetted_values_are_refused_at_render_time_too() -> None:
    """Beyond the lint: the environment's finalize refuses any unvetted output."""
    from hpcgear.render import template_environment

    env = template_environment(None)
    with pytest.raises(ConfigError, match="without a vetted filter"):
        env.from_string("X={{ value }}").render(value="$(id)")
    with pytest.raises(ConfigError, match="without a vetted filter"):
        env.from_string("X={{ value | upper }}").render(value="a")
    assert env.from_string("X={{ value | q }}").render(value="$(id)") == "X='$(id)'"


# -- single job ------------------------------------------------------------------------


def test_sbatch_lines_of_a_job() -> None:
    site, spec = make_site(), make_spec()
    text = render_sbatch(spec, site, JobPaths.for_spec(spec, site)).text
    root = "/scratch/alice/hpcgear/job0001/a1"
    assert text.startswith("#!/bin/bash\n#SBATCH ")
    assert sbatch_lines(text) == [
        "--job-name=hpcgear-job0001", "--comment=hpcgear:job0001:1",
        f"--output={root}/.hpcgear/slurm-%j.out", "--open-mode=append", f"--chdir={root}",
        "--export=NONE", "--no-requeue", "--signal=B:TERM@120", "--partition=debug",
        "--time=01:30:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--mem=4G",
        "--constraint=ib",
    ]
    # every #SBATCH line comes before the first command (sbatch stops reading there)
    first_command = next(i for i, line in enumerate(text.splitlines())
                         if line and not line.startswith("#"))
    last_sbatch = max(i for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    assert last_sbatch < first_command


def test_gpu_job_gets_gres_qos_account_and_nv() -> None:
    site = make_site()
    spec = make_spec(resources=Resources(cpus=1, mem_mb=1000, time_minutes=30, gpus=2,
                                         gres="gpu:2", partition="gpu", qos="gpuq", account="lab"))
    text = render_sbatch(spec, site, JobPaths.for_spec(spec, site)).text
    lines = sbatch_lines(text)
    assert {"--partition=gpu", "--qos=gpuq", "--account=lab", "--gres=gpu:2",
            "--mem=1000M"} <= set(lines)
    assert "--nv" in build_runtime_argv(spec, site, JobPaths.for_spec(spec, site))


def test_short_jobs_get_the_term_warning_no_earlier_than_half_way() -> None:
    site, spec = make_site(), make_spec(resources=Resources(time_minutes=1))
    text = render_sbatch(spec, site, JobPaths.for_spec(spec, site)).text
    assert "--signal=B:TERM@30" in sbatch_lines(text)


def test_hostile_resource_values_never_reach_an_sbatch_line() -> None:
    site = make_site()
    for field, value in (("partition", "debug --export=ALL"), ("qos", "x\n#SBATCH --wrap=id"),
                         ("account", "$(id)"), ("gres", "gpu:1'")):
        spec = make_spec(resources=dataclasses.replace(make_spec().resources, **{field: value}))
        with pytest.raises(InvalidInputError, match="#SBATCH"):
            render_sbatch(spec, site, JobPaths.for_spec(spec, site))


def test_rendering_is_deterministic_and_hashed() -> None:
    site, spec = make_site(), make_spec()
    a = render_sbatch(spec, site, JobPaths.for_spec(spec, site))
    b = render_sbatch(spec, site, JobPaths.for_spec(spec, site))
    assert a == b
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", a.sha256)
    other = render_sbatch(make_spec(tags=("hpc",)), site, JobPaths.for_spec(spec, site))
    assert other.sha256 != a.sha256


def test_spec_for_another_site_is_refused() -> None:
    spec = make_spec(site="elsewhere")
    with pytest.raises(InvalidInputError, match="is for site 'elsewhere'"):
        render_sbatch(spec, make_site(), JobPaths.for_job("/scratch/alice", "job0001", 1))


def test_pulling_images_in_jobs_is_refused() -> None:
    spec = make_spec(gear=make_gear(sif_path="docker://busybox"))
    with pytest.raises(ImageError):
        render_sbatch(spec, make_site(), JobPaths.for_spec(spec, make_site()))


def test_writable_tmpfs_follows_the_spec_then_the_site() -> None:
    site = make_site()
    paths = JobPaths.for_spec(make_spec(), site)
    assert "--writable-tmpfs" not in build_runtime_argv(make_spec(), site, paths)
    assert "--writable-tmpfs" in build_runtime_argv(make_spec(writable_tmpfs=True), site, paths)
    wsite = dataclasses.replace(site, runtime=dataclasses.replace(site.runtime,
                                                                  writable_tmpfs=True))
    assert "--writable-tmpfs" in build_runtime_argv(make_spec(), wsite, paths)
    assert "--writable-tmpfs" not in build_runtime_argv(make_spec(writable_tmpfs=False), wsite,
                                                        paths)


def test_only_file_inputs_are_checked_by_the_script() -> None:
    site, spec = make_site(), make_spec()
    text = render_sbatch(spec, site, JobPaths.for_spec(spec, site)).text
    block = text.split("INPUT_FILES=(\n", 1)[1].split(")\n", 1)[0]
    assert block.split() == ["input/dicom/scan.dicom.zip"]


# -- arrays ----------------------------------------------------------------------------


def test_array_script_selects_each_task_by_index() -> None:
    site = make_site()
    specs = [make_spec(f"job{i:04d}", tags=(f"t{i}",)) for i in range(3)]
    text = render_array(specs, site, array_id="batch1").text
    lines = sbatch_lines(text)
    assert lines[:3] == ["--job-name=hpcgear-array-batch1", "--comment=hpcgear-array:batch1:3",
                         "--array=0-2%3"]
    assert "--output=/scratch/alice/hpcgear/arrays/batch1/slurm-%A_%a.out" in lines
    jobdirs = text.split("JOB_DIRS=(\n", 1)[1].split(")\n", 1)[0].split()
    assert jobdirs == [f"/scratch/alice/hpcgear/job{i:04d}/a1" for i in range(3)]
    assert text.count('"$JOB_DIR"/flywheel/v0/input:/flywheel/v0/input:ro') == 1


def test_array_limits_and_consistency() -> None:
    site = make_site()
    specs = [make_spec(f"j{i}") for i in range(6)]
    with pytest.raises(InvalidInputError, match="exceed the array size limit 5"):
        render_array(specs, site, array_id="b")
    assert "--array=0-5%2" in render_array(specs, site, array_id="b", max_array_size=10,
                                           throttle=2).text
    with pytest.raises(InvalidInputError, match="differs from job j0 in resources"):
        render_array([make_spec("j0"), make_spec("j1", resources=Resources(cpus=8))], site,
                     array_id="b")
    with pytest.raises(InvalidInputError, match="differs from job j0 in gear"):
        render_array([make_spec("j0"), make_spec("j1", gear=make_gear(version="2"))], site,
                     array_id="b")
    with pytest.raises(InvalidInputError, match="same job twice"):
        render_array([make_spec("j0"), make_spec("j0")], site, array_id="b")
    with pytest.raises(InvalidInputError, match="at least one job"):
        render_array([], site, array_id="b")
    with pytest.raises(InvalidInputError, match="array id"):
        render_array([make_spec("j0")], site, array_id="../b")


# -- exit records ----------------------------------------------------------------------


RECORD = {
    "schema": 1, "complete": True, "job_id": "j1", "attempt": 1, "slurm_job_id": "77",
    "slurm_array_task_id": None, "rc": 0, "signal": None, "timed_out": False, "started": True,
    "boot_failed": False, "boot_attempts": 1, "error": None, "host": "node1",
    "runtime_version": "apptainer version 1.3.4", "start_time": "2026-01-01T00:00:00Z",
    "end_time": "2026-01-01T00:01:00Z", "start_epoch": 1, "end_epoch": 61, "elapsed_s": 60,
}


def test_exit_record_parsing_and_success_rule() -> None:
    rec = parse_exit_record(json.dumps(RECORD))
    assert rec.succeeded and rec.host == "node1" and rec.elapsed_s == 60
    for change in ({"rc": 3}, {"complete": False, "rc": None}, {"started": False},
                   {"error": "input file missing: x"}):
        assert not parse_exit_record(json.dumps({**RECORD, **change})).succeeded


@pytest.mark.parametrize("text", ["", "{", "[]", json.dumps({**RECORD, "schema": 2}),
                                  json.dumps({**RECORD, "rc": "0"}),
                                  json.dumps({**RECORD, "complete": "yes"}),
                                  json.dumps({**RECORD, "attempt": True})])
def test_damaged_exit_records_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_exit_record(text, source="x/exit.json")


def test_site_yaml_fixture_is_valid() -> None:
    site = make_site()
    assert site.array.max_size == 5
    assert textwrap.dedent(SITE_YAML) == SITE_YAML
