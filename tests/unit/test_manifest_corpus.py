"""Every manifest in the shared corpus of real published gears.

The corpus (``/work/shared/corpus/gear-manifests``, next to the repository) holds
manifests copied from public gear repositories plus ``SOURCES.tsv`` saying where
each came from and whether it is valid JSON. Valid ones must install unchanged;
broken ones must fail with a ManifestError naming the file and the problem.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest

from hpcgear.errors import GearConfigError, ManifestError
from hpcgear.gears.configjson import build_config_json, dump_config_json
from hpcgear.gears.gear_config import resolve_config
from hpcgear.gears.manifest import ConfigOption, GearManifest, load_manifest
from hpcgear.gears.reserved import RESERVED_KEYS, split_reserved
from hpcgear.spec import InputSpec

CORPUS = Path(__file__).parents[2].parent / "shared" / "corpus" / "gear-manifests"
SOURCES = CORPUS / "SOURCES.tsv"

# Valid JSON that is still not an installable gear. Each entry names the
# problems the error must mention.
NOT_A_GEAR = {
    # A cookiecutter template: name and image are "{{cookiecutter...}}" placeholders.
    "naccdata__flywheel-gear-extensions.json": ("name", "custom.gear-builder.image"),
}

pytestmark = pytest.mark.skipif(
    not SOURCES.is_file(), reason=f"gear manifest corpus not found at {CORPUS}"
)


def _rows() -> dict[str, dict[str, str]]:
    if not SOURCES.is_file():
        return {}
    with SOURCES.open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}


ROWS = _rows()
FILES = sorted(p.name for p in CORPUS.glob("*.json")) if CORPUS.is_dir() else []
VALID = [f for f in FILES if ROWS.get(f, {}).get("valid_json") == "yes" and f not in NOT_A_GEAR]
BROKEN = [f for f in FILES if ROWS.get(f, {}).get("valid_json") == "no"]


def test_corpus_is_described() -> None:
    assert FILES, "no manifests in the corpus"
    assert set(FILES) == set(ROWS), "SOURCES.tsv and the directory disagree"
    assert set(NOT_A_GEAR) <= set(FILES)


@pytest.mark.parametrize("file", VALID)
def test_valid_manifest_parses(file: str) -> None:
    m = load_manifest(CORPUS / file)
    assert m.name and m.version
    assert m.raw["name"] == m.name
    assert m.sha256.startswith("sha256:")
    assert {i.name for i in m.inputs} == set(m.raw["inputs"])
    assert {o.name for o in m.config} == set(m.raw["config"])


@pytest.mark.parametrize("file", sorted(NOT_A_GEAR))
def test_valid_json_that_is_not_a_gear_is_rejected(file: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(CORPUS / file)
    assert info.value.message.startswith(str(CORPUS / file))
    for fragment in NOT_A_GEAR[file]:
        assert fragment in info.value.message
    assert info.value.hint


@pytest.mark.parametrize("file", BROKEN)
def test_broken_manifest_names_file_line_and_column(file: str) -> None:
    # SOURCES.tsv records Python's own error, e.g. "... line 50 column 1 (char 1403)".
    where = re.search(r"line (\d+) column (\d+)", ROWS[file]["notes"])
    assert where, f"SOURCES.tsv has no JSON error position for {file}"
    with pytest.raises(ManifestError) as info:
        load_manifest(CORPUS / file)
    message = info.value.message
    assert message.startswith(f"{CORPUS / file}:{where[1]}:{where[2]}: ")
    assert info.value.hint


def _sample_value(option: ConfigOption) -> Any:
    """A value satisfying simple constraints, for options without a default."""
    if option.enum:
        return option.enum[0]
    if option.type == "integer":
        return int(option.minimum) + 1 if option.minimum is not None else 1
    if option.type == "number":
        return float(option.minimum) + 0.5 if option.minimum is not None else 0.5
    if option.type == "boolean":
        return False
    if option.type == "array":
        return []
    return "x"


def _sample_inputs(m: GearManifest) -> list[InputSpec]:
    inputs = []
    for item in m.inputs:
        if item.base == "file" and item.required:
            file_type = item.type_filter[0] if item.type_filter else None
            inputs.append(
                InputSpec(
                    name=item.name,
                    base="file",
                    file_name=f"{item.name}.dat",
                    container_type="session",
                    container_id="s-1",
                    object={"type": file_type},
                )
            )
    return inputs


@pytest.mark.parametrize("file", VALID)
def test_valid_manifest_runs_through_config_and_config_json(file: str) -> None:
    m = load_manifest(CORPUS / file)
    required = sorted(o.name for o in m.config if o.required)
    if required:
        with pytest.raises(GearConfigError) as info:
            resolve_config(m)
        for name in required:
            assert f"missing required config key {name!r}" in info.value.message
    user = {o.name: _sample_value(o) for o in m.config if o.required}
    config = resolve_config(m, user)
    assert set(config) == {o.name for o in m.config if o.has_default} | set(user)
    gear_config, _ = split_reserved(config, declared=m.config_names)
    assert gear_config == config  # every reserved key in the corpus is declared
    doc = build_config_json(
        gear_config, _sample_inputs(m), "session", "s-1", manifest=m, api_key="site:key"
    )
    assert dump_config_json(doc)
    assert doc["config"] == gear_config


INC_WITH_SLURM = [
    f
    for f in VALID
    if f.startswith("intermountainneuroimaging__")
    and "slurm-cpu" in (CORPUS / f).read_text(encoding="utf-8")
]


def test_corpus_has_hpc_gears() -> None:
    assert len(INC_WITH_SLURM) >= 3


@pytest.mark.parametrize("file", INC_WITH_SLURM)
def test_inc_hpc_keys_become_resources(file: str) -> None:
    m = load_manifest(CORPUS / file)
    defaults = m.defaults()
    _, overrides = split_reserved(resolve_config(m), declared=m.config_names)
    cpus = int(defaults["slurm-cpu"])
    assert overrides.cpus == cpus
    assert overrides.time_minutes == int(defaults["slurm-time"])  # bare SLURM minutes
    assert overrides.partition == defaults["slurm-partition"]
    assert overrides.qos == defaults["slurm-qos"]
    assert overrides.account == defaults.get("slurm-account")
    unit = {"G": 1024, "M": 1}[defaults["slurm-ram"][-1]]
    per_cpu = int(defaults["slurm-ram"][:-1]) * unit
    assert overrides.mem_per_cpu_mb == per_cpu
    assert overrides.mem_mb == per_cpu * cpus  # --mem-per-cpu semantics
    # A user override is validated as a resource too.
    with pytest.raises(GearConfigError, match="slurm-ram"):
        resolve_config(m, {"slurm-ram": "plenty"})
    assert set(RESERVED_KEYS) >= {k for k in defaults if k.startswith("slurm-")}


def test_fmriprep_singularity_debug_is_a_reserved_boolean() -> None:
    file = "flywheel-apps__bids-fmriprep.json"
    if file not in VALID:
        pytest.skip(f"{file} not in corpus")
    m = load_manifest(CORPUS / file)
    config = resolve_config(m, {"singularity-debug": "true"}, coerce_strings=True)
    gear_config, overrides = split_reserved(config, declared=m.config_names)
    assert overrides.debug is True and gear_config["singularity-debug"] is True
    assert "lsf-ram" in gear_config and overrides.mem_mb is None  # LSF keys are not ours


@pytest.mark.parametrize(
    ("file", "fragment"),
    [
        ("intermountainneuroimaging__bids-mriqc__2.json", "'custom' appears more than once"),
        ("intermountainneuroimaging__bids-mriqc__2.json", "'float' is not a JSON-schema type"),
        ("flywheel-apps__me-ica.json", "'keep_int' appears more than once"),
        ("flywheel-apps__bids-fmriprep__2.json", "PYTHONUNBUFFERED"),
        ("scitran-apps__nifti-montage.json", "'int' is not a JSON-schema type"),
        ("intermountainneuroimaging__bids-hcp.json", "did you mean minimum?"),
    ],
)
def test_tolerated_oddities_are_warned(file: str, fragment: str) -> None:
    if file not in VALID:
        pytest.skip(f"{file} not in corpus")
    m = load_manifest(CORPUS / file)
    assert any(fragment in w for w in m.warnings), m.warnings
