"""A gear's .metadata.json: Flywheel's format accepted, everything else refused by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hpcgear.errors import StagingError
from hpcgear.staging.metadata import (
    InvalidMetadataError,
    allowed_container_types,
    parse_metadata,
)


def parse(doc: Any, *, dest: str = "acquisition", analysis: bool = False,
          outputs: tuple[str, ...] = ("out.nii.gz",)):  # type: ignore[no-untyped-def]
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return parse_metadata(text, destination_type=dest, analysis=analysis, output_names=outputs)


def test_flywheel_shapes_are_accepted() -> None:
    # the shape dcm2niix / test-gear / dicom-header write
    plan = parse({
        "acquisition": {
            "info": {"qc": {"passed": True, "score": 0.9}},
            "tags": ["converted", "converted"],
            "files": [
                {"name": "out.nii.gz", "type": "nifti", "modality": "MR",
                 "classification": {"Intent": ["Structural"], "Measurement": ["T1"],
                                    "Features": ["3D", "MPRAGE", "site-specific"]},
                 "info": {"RepetitionTime": 2.3, "list": [1, {"nested": "x"}]},
                 "tags": ["bids"]},
                {"name": "scan.dicom.zip", "classification": {"Intent": ["Localizer"]}},
            ],
        },
        "session": {"info": {"note": "ok"}},
    })
    acq = plan.update_for("acquisition")
    assert acq is not None and acq.tags == ("converted",)
    assert [f.name for f in acq.files] == ["out.nii.gz", "scan.dicom.zip"]
    first = acq.files[0]
    assert first.classification == {"Intent": ("Structural",), "Measurement": ("T1",),
                                    "Features": ("3D", "MPRAGE", "site-specific")}
    assert first.as_metadata()["classification"]["Intent"] == ["Structural"]
    assert acq.files[1].type is None and acq.files[1].info is None
    assert plan.sha256.startswith("sha256:") and not plan.empty
    assert parse({}).empty and parse({"acquisition": None}).empty


def test_legacy_and_unapplied_fields_only_warn() -> None:
    plan = parse({"acquisition": {"timestamp": "2020-01-01", "label": "x",
                                  "files": [{"name": "out.nii.gz", "measurements": ["t1"],
                                             "metadata": {"a": 1}}]}})
    assert len(plan.warnings) == 4
    assert any("timestamp" in w for w in plan.warnings)


@pytest.mark.parametrize(("doc", "needle"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"acquisition": {"info": {"x": NaN}}}', "not valid JSON"),
    ({"acquisition": {"info": {"a.b": 1}}}, "contains '.' or '$'"),
    ({"acquisition": {"info": {"ok": {"deep": {"$where": 1}}}}}, "acquisition.info.ok.deep.$where"),
    ({"acquisition": {"files": [{"name": "out.nii.gz", "info": {"x": [{"k.y": 1}]}}]}},
     "info.x[0].k.y"),
    ({"acquisition": {"info": {"": 1}}}, "empty key"),
    ({"acquisition": {"info": {"nul": "a\u0000b"}}}, "NUL"),
    ({"acquisition": {"info": "text"}}, "must be an object"),
    ({"acquisition": {"files": [{"name": "out.nii.gz",
                                 "classification": {"Intent": "Structural"}}]}},
     "must be a list"),
    ({"acquisition": {"files": [{"name": "out.nii.gz",
                                 "classification": {"Contrast": ["T1"]}}]}},
     "unknown classification key 'Contrast'"),
    ({"acquisition": {"files": [{"name": "out.nii.gz",
                                 "classification": {"Intent": ["Sturctural"]}}]}},
     "'Sturctural' is not a known Intent"),
    ({"acquisition": {"files": [{"name": "out.nii.gz",
                                 "classification": {"Measurement": [3]}}]}}, "printable string"),
    ({"acquisition": {"files": [{"name": "../etc/passwd"}]}}, "path separator"),
    ({"acquisition": {"files": [{"type": "nifti"}]}}, "name: is missing"),
    ({"acquisition": {"files": [{"name": "a"}, {"name": "a"}]}}, "listed twice"),
    ({"acquisition": {"files": [{"name": "a", "colour": "red"}]}}, "unknown key 'colour'"),
    ({"acquisition": {"tags": ["a,b"]}}, "commas"),
    ({"acquisition": {"tags": "one"}}, "list of strings"),
    ({"acquisition": {"flies": []}}, "unknown key 'flies'"),
    ({"acquisiton": {}}, "unknown container type 'acquisiton'"),
    ({"analysis": {}}, "cannot set metadata on a analysis"),
    ({"acquisition": {"files": [{"name": "out.nii.gz", "type": "x" * 65}]}}, "1-64"),
])
def test_invalid_metadata_names_the_problem(doc: Any, needle: str) -> None:
    with pytest.raises(InvalidMetadataError) as err:
        parse(doc)
    assert needle in err.value.message
    assert isinstance(err.value, StagingError)
    assert err.value.hint


def test_depth_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(InvalidMetadataError, match="nested deeper"):
        parse({"acquisition": {"info": deep}})
    with pytest.raises(InvalidMetadataError, match="at most"):
        parse('{"acquisition": {"info": {"x": "' + "a" * (16 * 1024 * 1024) + '"}}}')
    with pytest.raises(InvalidMetadataError, match="at most 100"):
        parse({"acquisition": {"tags": [f"t{i}" for i in range(101)]}})


def test_many_problems_are_listed_together() -> None:
    with pytest.raises(InvalidMetadataError) as err:
        parse({"acquisition": {"info": {f"a.{i}": 1 for i in range(8)}}})
    assert "1) " in err.value.message and "(and 3 more)" in err.value.message


def test_container_keys_follow_the_destination() -> None:
    assert allowed_container_types("session", analysis=False) == ("project", "subject", "session")
    assert allowed_container_types("session", analysis=True) == ("project", "subject", "session",
                                                                 "analysis")
    # parents of the destination are fine, children are not
    parse({"project": {"info": {"a": 1}}, "subject": {"tags": ["x"]}}, dest="session")
    with pytest.raises(InvalidMetadataError, match="cannot set metadata on a acquisition"):
        parse({"acquisition": {}}, dest="session")


def test_analysis_files_must_be_outputs() -> None:
    plan = parse({"analysis": {"files": [{"name": "out.nii.gz", "tags": ["x"]}]}},
                 dest="session", analysis=True)
    assert plan.update_for("analysis") is not None
    with pytest.raises(InvalidMetadataError, match="not an output of this job"):
        parse({"analysis": {"files": [{"name": "other.txt"}]}}, dest="session", analysis=True)
