"""Property-based fuzz (hypothesis) of every document parser and the sbatch renderer.

Property for the parsers (gear manifest, gear config, site YAML, rule YAML): any
input either parses or raises ``HpcgearError`` (with a message and a hint), never
anything else. Inputs are both arbitrary text and real documents with one part
replaced by a random JSON/YAML value, so the fuzz reaches deep into each schema.

Property for the renderer: whatever a user controls (gear command and environment,
input names and file names, destination, tags, config) either is refused with an
``HpcgearError`` or ends up quoted: the script passes ``bash -n``, running it with a
fake container runtime executes none of the injected ``$(...)`` / backticks, and the
runtime receives the command byte for byte.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcgear.config.site import load_site_text
from hpcgear.errors import HpcgearError
from hpcgear.gears.gear_config import resolve_config
from hpcgear.gears.manifest import GearManifest, load_manifest, parse_manifest, parse_manifest_text
from hpcgear.rules.schema import parse_rules_text

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "containers").glob("*/manifest.json"))
SITES = sorted((REPO / "site_configs").glob("*.yaml"))
RULES = sorted((REPO / "tests" / "data" / "rules").glob("*.yaml"))
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

# --------------------------------------------------------------- strategies

NASTY = ["", " ", "\x00", "\x1b[2J", "\u202e", "..", "../../etc/passwd", "$(id)", "`id`",
         "a\nb", "-rf", "--x", "1e999", "NaN", "0", "-1", "99999999999999999999", "0x10",
         "1:00:00", "yes", "null", "~", "*", "!", "&anchor", "{", "[", "'", '"']  # fmt: skip
hostile_text = st.one_of(st.text(max_size=40), st.sampled_from(NASTY))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with 1-3 random edits: replace a node, delete a key, add a key."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(json_values)
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace" or isinstance(parent, list):
            parent[path[-1]] = draw(json_values)
        elif op == "delete":
            del parent[path[-1]]
        else:
            parent[draw(hostile_text)] = draw(json_values)
    return doc


def _parses_or_clear_error(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except HpcgearError as exc:
        assert exc.message.strip(), "an error without a message"
        return None


# ------------------------------------------------------------------ manifests

MANIFEST_DOCS = [json.loads(p.read_text()) for p in MANIFESTS]


@FUZZ
@given(st.text(max_size=300))
def test_manifest_text_parses_or_raises_hpcgear_error(text: str) -> None:
    _parses_or_clear_error(parse_manifest_text, text, source="fuzz.json")


@FUZZ
@given(st.sampled_from(MANIFEST_DOCS).flatmap(mutated))
def test_mutated_manifest_parses_or_raises_hpcgear_error(doc: Any) -> None:
    _parses_or_clear_error(parse_manifest, doc, source="fuzz.json")
    try:
        text = json.dumps(doc)
    except (ValueError, TypeError):
        return
    _parses_or_clear_error(parse_manifest_text, text, source="fuzz.json")


# ---------------------------------------------------------------- gear config

MANIFEST_OBJS: list[GearManifest] = [load_manifest(p) for p in MANIFESTS]


@FUZZ
@given(st.data())
def test_gear_config_resolves_or_raises_hpcgear_error(data: st.DataObject) -> None:
    manifest = data.draw(st.sampled_from(MANIFEST_OBJS))
    names = [o.name for o in manifest.config] + ["slurm-cpu", "slurm-ram", "slurm-time"]
    keys = st.one_of(st.sampled_from(names), hostile_text)
    coerce = data.draw(st.booleans())
    values = hostile_text if coerce else json_values
    layers = data.draw(st.lists(st.dictionaries(keys, values, max_size=5), max_size=3))
    result = _parses_or_clear_error(resolve_config, manifest, *layers, coerce_strings=coerce)
    if result is not None:
        json.dumps(result, allow_nan=False)  # what the job row and config.json store


# ---------------------------------------------------------------------- sites

SITE_DOCS = [yaml.safe_load(p.read_text()) for p in SITES]


@FUZZ
@given(st.text(max_size=300))
def test_site_text_parses_or_raises_hpcgear_error(text: str) -> None:
    _parses_or_clear_error(load_site_text, text, "fuzz-site.yaml")


@FUZZ
@given(st.sampled_from(SITE_DOCS).flatmap(mutated))
def test_mutated_site_parses_or_raises_hpcgear_error(doc: Any) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    _parses_or_clear_error(load_site_text, text, "fuzz-site.yaml")


# ---------------------------------------------------------------------- rules

RULE_DOCS = [d for d in (yaml.safe_load(p.read_text()) for p in RULES) if d is not None]


@FUZZ
@given(st.text(max_size=300))
def test_rule_text_parses_or_raises_hpcgear_error(text: str) -> None:
    _parses_or_clear_error(parse_rules_text, text, source="fuzz-rules.yaml")


@FUZZ
@given(st.sampled_from(RULE_DOCS).flatmap(mutated))
def test_mutated_rules_parse_or_raise_hpcgear_error(doc: Any) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    _parses_or_clear_error(parse_rules_text, text, source="fuzz-rules.yaml")


# -------------------------------------------------------------------- renderer

PAYLOADS = [
    "$(touch pwned-{n})",
    "`touch pwned-{n}`",
    "'; touch pwned-{n}; '",
    '"; touch pwned-{n}; "',
    "\ntouch pwned-{n}\n",
    "${{IFS}}$(touch${{IFS}}pwned-{n})",
    "'\"`touch pwned-{n}`\"'",
    "&& touch pwned-{n} ||",
]
PWNED = re.compile(r"pwned-\d+")


@st.composite
def injected(draw: st.DrawFn, n: int) -> str:
    payload = draw(st.sampled_from(PAYLOADS)).format(n=n)
    return draw(st.text(max_size=8)) + payload + draw(st.text(max_size=8))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.data())
def test_rendered_scripts_keep_every_value_quoted(data: st.DataObject) -> None:
    from tests.integration import test_render_hostile as hostile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "fake"
        state.mkdir()
        fake = state / "apptainer"
        fake.write_text(hostile.FAKE_RUNTIME.replace("__STATE__", shlex.quote(str(state))))
        fake.chmod(0o755)
        (root / "canaries").mkdir()
        site = load_site_text(
            f"name: hostile\nscheduler: local\nscratch_root: {root}/scratch\n"
            f"storage_root: {root}/storage\nruntime:\n  executable: {fake}\n"
            f"  image_cache: {root}/images\n  boot_retries: 1\n"
            f"  boot_retry_delay_seconds: 0\n",
            "fuzz-site.yaml",
        )
        rig = hostile.Rig(root, state, root / "canaries", site)
        words = [data.draw(injected(i)) for i in range(8)]
        base = hostile.hostile_spec(rig, job_id="job-fuzz-1")
        gear = dataclasses.replace(
            base.gear,
            command=words[0],
            environment=(("FUZZ_A", words[1]), ("FUZZ_B", words[2])),
        )
        inputs = (
            dataclasses.replace(base.inputs[0], name="in0", file_name=words[3].replace("/", "_")),
        )
        spec = dataclasses.replace(
            base,
            gear=gear,
            inputs=inputs,
            destination_id=words[4],
            tags=(words[5],),
            config={"a": words[6], "b": [words[7]]},
        )
        try:
            paths = hostile.stage_in(spec, site)
            rendered = hostile.render_sbatch(spec, site, paths)
        except HpcgearError as exc:
            # Only a NUL may be refused (no argv or file can carry one); all else renders.
            assert any("\x00" in w for w in words), exc.message
            return
        except ValueError:
            assert any("\x00" in w for w in words)  # the test's own stage-in: embedded NUL
            return
        script = root / "job.sbatch"
        script.write_text(rendered.text)
        syntax = subprocess.run(
            ["bash", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert syntax.returncode == 0, syntax.stderr
        rig.plan("run:0")
        res = hostile.run_script(rig, rendered.text)
        pwned = [p for p in root.rglob("*") if PWNED.fullmatch(p.name)]
        assert not pwned, pwned
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        assert rig.argv(1)[-1] == words[0].encode()  # the command arrives byte for byte


# ------------------------------------------------------------- gear metadata

METADATA_DOC = {
    "acquisition": {
        "info": {"header": {"Modality": "MR"}, "qc": {"passed": True, "score": 0.9}},
        "tags": ["classified"],
        "files": [{"name": "out.txt", "type": "text", "modality": "MR",
                   "classification": {"Intent": ["Structural"]}, "info": {"n": 1}}],
    },
    "session": {"info": {"reviewed": False}},
}


@FUZZ
@given(st.one_of(st.text(max_size=300), mutated(METADATA_DOC).map(json.dumps)))
def test_gear_metadata_parses_or_raises_hpcgear_error(text: str) -> None:
    """A gear's .metadata.json: parsed into a plan whose every string is storable, or
    refused with a message that is safe to print."""
    from hpcgear.staging.metadata import InvalidMetadataError, parse_metadata
    from hpcgear.text import check_storable

    try:
        plan = parse_metadata(text, destination_type="acquisition", analysis=False,
                              output_names=["out.txt"])
    except InvalidMetadataError as exc:
        assert exc.message.strip() and "\x00" not in exc.message
        return
    for update in plan.updates:
        check_storable(update.info, "info")  # what is accepted can be stored on PostgreSQL
        for f in update.files:
            check_storable(f.info, "file info")


# -------------------------------------------------------- regular expressions

REGEX_PIECES = ["a", "b", ".", "\\w", "\\s", "[ab]", "(", ")", "(?:", "|", "+", "*", "?",
                "{1,9}", "{2}", "^", "$", "\\d", "x"]  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(REGEX_PIECES), min_size=1, max_size=12).map("".join))
def test_every_regex_accepted_for_user_data_runs_in_bounded_time(pattern: str) -> None:
    """Rule conditions, manifest config patterns and routing patterns are matched against
    user data; whatever ``regex_problem`` accepts must not backtrack catastrophically."""
    import time

    from hpcgear.text import regex_problem

    if regex_problem(pattern) is not None:
        return
    rx = re.compile(pattern)
    for hostile in ("a" * 28 + "!", "ab" * 14 + "!", "a " * 14 + "!", "x" * 28 + "!"):
        start = time.monotonic()
        rx.search(hostile)
        assert time.monotonic() - start < 0.5, (pattern, hostile)
