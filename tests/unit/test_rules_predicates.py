"""Rule conditions: every field and operator passes and fails, nesting, parsing, errors."""

from __future__ import annotations

from typing import Any

import pytest

from hpcgear.config.schema import Where
from hpcgear.config.yamlload import load_yaml_with_lines
from hpcgear.errors import RuleError, SchemaError
from hpcgear.rules import predicates as P
from hpcgear.rules.schema import parse_cli_when, parse_condition

FACTS = P.Facts(
    container=P.ContainerFacts(
        type="acquisition", label="T1w_MPRAGE", tags=("good",), info={"scan": {"n": 3}}
    ),
    levels={
        "project": P.ContainerFacts(type="project", label="study1", tags=("pilot",)),
        "subject": P.ContainerFacts(type="subject", label="sub-01", info={"sex": "F"}),
        "session": P.ContainerFacts(
            type="session", label="ses-01", tags=("qc-pass",), info={"site": {"scanner": "prisma"}}
        ),
        "acquisition": P.ContainerFacts(
            type="acquisition", label="T1w_MPRAGE", tags=("good",), info={"scan": {"n": 3}}
        ),
    },
    file=P.FileFacts(
        name="T1w_MPRAGE.dicom.zip",
        version=2,
        type="dicom",
        modality="MR",
        origin="ingest",
        classification={"Intent": ("Structural",), "Measurement": ("T1",)},
        tags=("hpc", "raw"),
        info={
            "header": {"dicom": {"EchoTime": 0.00298, "SeriesNumber": 3, "Coil": "HEA"}},
            "flags": ["a", "b"],
            "ok": True,
        },
    ),
)


def holds(field: str, value: Any) -> bool:
    return P.evaluate(P.leaf(field, value), FACTS).passed


# (field, value that passes, value that fails)
CASES: list[tuple[str, Any, Any]] = [
    ("file.type", "dicom", "nifti"),
    ("file.type", ["nifti", "dicom"], ["nifti", "bval"]),
    ("file.type", {"regex": "^dic"}, {"regex": "^nif"}),
    ("file.type", {"exists": True}, {"exists": False}),
    ("file.name", "*.dicom.zip", "*.nii.gz"),
    ("file.name", "T1w_*", "t1w_*"),  # globs are case-sensitive
    ("file.name", "regex:MPRAGE", "regex:^MPRAGE"),
    ("file.name", {"glob": "T1w?MPRAGE*"}, {"glob": "T2*"}),
    ("file.modality", "MR", "CT"),
    ("file.origin", "ingest", "job"),
    ("file.classification.Intent", "Structural", "Functional"),
    ("file.classification.Measurement", ["T2", "T1"], ["T2", "FLAIR"]),
    ("file.classification.Measurement", {"all_of": ["T1"]}, {"all_of": ["T1", "T2"]}),
    ("file.classification.Features", {"exists": False}, {"exists": True}),
    ("file.classification", "T1", "Diffusion"),
    ("file.tags", "hpc", "skip"),
    ("file.tags", {"any_of": ["x", "raw"]}, {"any_of": ["x", "y"]}),
    ("file.tags", {"exists": True}, {"exists": False}),
    ("file.info.header.dicom.SeriesNumber", 3, 4),
    ("file.info.header.dicom.SeriesNumber", {"in": [1, 3]}, {"in": [1, 2]}),
    ("file.info.header.dicom.EchoTime", {"lt": 0.01}, {"gt": 0.01}),
    ("file.info.header.dicom.EchoTime", {"ge": 0.00298}, {"le": 0.001}),
    ("file.info.header.dicom.Coil", {"glob": "HE*"}, {"regex": "^Body"}),
    ("file.info.header.dicom.Coil", {"exists": True}, {"exists": False}),
    ("file.info.header.dicom.Missing", {"exists": False}, {"exists": True}),
    ("file.info.header.dicom.Missing", {"exists": False}, "anything"),
    ("file.info.flags", {"contains": "b"}, {"contains": "c"}),
    ("file.info.ok", True, False),
    ("container.type", "acquisition", "session"),
    ("container.label", "T1w*", "T2w*"),
    ("container.tags", "good", "bad"),
    ("container.info.scan.n", 3, "3"),  # no silent text/number equality
    ("acquisition.label", "regex:MPRAGE$", "regex:^MPRAGE"),
    ("session.tags", "qc-pass", "qc-fail"),
    ("session.label", "ses-*", "ses-02"),
    ("session.info.site.scanner", "prisma", "skyra"),
    ("subject.info.sex", "F", "M"),
    ("subject.label", "sub-01", "sub-02"),
    ("project.tags", "pilot", "final"),
    ("project.label", "study1", "study2"),
]


@pytest.mark.parametrize(("field", "good", "bad"), CASES)
def test_every_field_passes_and_fails(field: str, good: Any, bad: Any) -> None:
    assert holds(field, good), P.evaluate(P.leaf(field, good), FACTS).why
    assert not holds(field, bad), P.evaluate(P.leaf(field, bad), FACTS).why


def test_true_is_not_one() -> None:
    facts = P.Facts(
        container=FACTS.container,
        levels={},
        file=P.FileFacts(name="x", version=1, info={"flag": True, "n": 1}),
    )
    assert not P.evaluate(P.leaf("file.info.flag", 1), facts).passed
    assert not P.evaluate(P.leaf("file.info.n", True), facts).passed
    assert P.evaluate(P.leaf("file.info.n", 1.0), facts).passed


def test_missing_values_and_missing_levels_explain_themselves() -> None:
    no_meta = P.Facts(
        container=P.ContainerFacts(type="session", label="s"),
        levels={},
        file=P.FileFacts(name="x.bin", version=1),
    )
    e = P.evaluate(P.leaf("file.modality", "MR"), no_meta)
    assert not e.passed and "file.modality is not set" in e.why
    e = P.evaluate(P.leaf("acquisition.tags", "x"), no_meta)
    assert not e.passed and "no acquisition above it" in e.why
    session_only = P.Facts(container=FACTS.container, levels=FACTS.levels)
    e = P.evaluate(P.leaf("file.type", "dicom"), session_only)
    assert not e.passed and "no file" in e.why


def test_nesting_all_any_not() -> None:
    cond = P.All(
        (
            P.leaf("file.type", "dicom"),
            P.AnyOf((P.leaf("file.modality", "CT"), P.leaf("session.tags", "qc-pass"))),
            P.Not(P.leaf("file.tags", "skip")),
        )
    )
    e = P.evaluate(cond, FACTS)
    assert e.passed and e.condition == "all of" and len(e.children) == 3
    assert e.children[1].why == "1 of 2 hold"
    assert e.children[2].children[0].passed is False
    flipped = P.All((*cond.items[:2], P.Not(P.leaf("file.tags", "hpc"))))
    e = P.evaluate(flipped, FACTS)
    assert not e.passed and e.why == "1 of 3 fail"
    assert not P.evaluate(
        P.AnyOf((P.leaf("file.type", "x"), P.leaf("file.type", "y"))), FACTS
    ).passed
    text = "\n".join(e.lines())
    assert "[FAIL] all of: 1 of 3 fail" in text
    assert "    [PASS] file.tags contains 'hpc': file.tags is ['hpc', 'raw']" in text


def test_json_round_trip_and_render() -> None:
    cond = P.All(
        (
            P.leaf("file.name", "regex:^T1"),
            P.Not(P.AnyOf((P.leaf("file.tags", ["a", "b"]), P.leaf("file.info.x", {"gt": 2})))),
        )
    )
    back = P.from_json(P.to_json(cond))
    assert back == cond
    assert P.render(cond) == (
        "all(file.name regex '^T1', not(any(file.tags any of ['a', 'b'], file.info.x gt 2)))"
    )
    assert P.referenced(cond) == {"file"}


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("file.typo", "x", "unknown field 'file.typo'"),
        ("files.type", "x", "unknown field"),
        ("file.info", "x", "needs a key below info"),
        ("container.modality", "x", "unknown field"),
        ("session.type", "x", "unknown field"),
        ("file.type", {"near": "x"}, "unknown operator 'near'"),
        ("file.type", {"gt": 3}, "does not apply"),
        ("file.tags", {"regex": "x"}, "does not apply"),
        ("file.type", {"regex": "("}, "is not a valid regular expression"),
        ("file.name", {"regex": "^(a+)+$"}, "nested quantifiers"),
        ("file.type", {"exists": "yes"}, "exists takes true or false"),
        ("file.type", {"in": []}, "non-empty list"),
        ("file.type", 3, "takes a string"),
        ("file.info.x", {"gt": "3"}, "takes a number"),
        ("file.info.x", {"a": 1, "b": 2}, "exactly one key"),
        ("file.info.x", {"equals": {"a": 1}}, "plain value"),
    ],
)
def test_bad_conditions_are_refused(field: str, value: Any, needle: str) -> None:
    with pytest.raises(RuleError) as info:
        P.leaf(field, value)
    assert needle in info.value.message
    assert info.value.hint


def test_yaml_conditions_with_lines() -> None:
    text = (
        "when:\n"
        "  all:\n"
        "    - file.type: dicom\n"
        "    - any:\n"
        "        - session.tags: qc-pass\n"
        "        - file.info.header.dicom.EchoTime: {lt: 0.01}\n"
        "    - not: {file.tags: skip}\n"
    )
    raw = load_yaml_with_lines(text, "r.yaml")
    cond = parse_condition(raw["when"], Where("r.yaml", "when", 1))
    assert P.evaluate(cond, FACTS).passed
    bad = text.replace("session.tags", "sesion.tags")
    raw = load_yaml_with_lines(bad, "r.yaml")
    with pytest.raises(SchemaError) as info:
        parse_condition(raw["when"], Where("r.yaml", "when", 1))
    assert info.value.message.startswith("r.yaml:5: when.all[1].any[0].sesion.tags:")
    assert "unknown field 'sesion.tags'" in info.value.message


def test_several_keys_and_lists_mean_all() -> None:
    raw = load_yaml_with_lines("- file.type: dicom\n  file.modality: CT\n", "x")
    cond = parse_condition(raw, Where("x", "when", 1))
    assert isinstance(cond, P.All) and not P.evaluate(cond, FACTS).passed


def test_cli_when_syntax() -> None:
    cond = parse_cli_when(
        [
            "file.type=dicom",
            "file.tags!=skip",
            "file.name~MPRAGE",
            "file.info.header.dicom.SeriesNumber=3",
            "session.info.site?",
            "{any: [{file.modality: CT}, {file.modality: MR}]}",
        ]
    )
    assert cond is not None and P.evaluate(cond, FACTS).passed
    assert P.render(cond).startswith(
        "all(file.type equals 'dicom', not(file.tags contains 'skip'), file.name regex 'MPRAGE', "
        "file.info.header.dicom.SeriesNumber equals 3"
    )
    assert parse_cli_when([]) is None
    for bad, needle in (
        ("file.type", "is not FIELD=VALUE"),
        ("file.type=", "has no value"),
        ("file.nope=x", "unknown field"),
    ):
        with pytest.raises(RuleError) as info:
            parse_cli_when([bad])
        assert needle in info.value.message and "--when" in info.value.message
