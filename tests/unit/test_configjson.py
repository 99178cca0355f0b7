"""config.json builder (hpcgear.gears.configjson)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hpcgear.errors import InvalidInputError
from hpcgear.gears.configjson import (
    INPUT_ROOT,
    build_config_json,
    check_path_component,
    dump_config_json,
    input_container_path,
)
from hpcgear.gears.manifest import GearManifest, parse_manifest
from hpcgear.spec import InputSpec

FILE_OBJECT = {
    "type": "dicom",
    "modality": "MR",
    "classification": {"Intent": ["Structural"], "Measurement": ["T1"]},
    "tags": ["hpc"],
    "info": {"SeriesDescription": "T1w MPRAGE"},
    "mimetype": "application/dicom",
    "zip_member_count": 176,
}


def dicom_input(**overrides: Any) -> InputSpec:
    fields: dict[str, Any] = {
        "name": "dicom",
        "base": "file",
        "file_id": "f-123",
        "version": 2,
        "file_name": "T1w MPRAGE.dicom.zip",
        "sha256": "sha256:" + "0" * 64,
        "size": 2913379,
        "container_type": "acquisition",
        "container_id": "acq-1",
        "object": dict(FILE_OBJECT),
    }
    fields.update(overrides)
    return InputSpec(**fields)


def manifest() -> GearManifest:
    return parse_manifest(
        {
            "name": "cj-gear",
            "version": "1",
            "label": "",
            "description": "",
            "author": "",
            "license": "MIT",
            "source": "",
            "url": "",
            "inputs": {
                "dicom": {"base": "file"},
                "extra": {"base": "file", "optional": True},
                "matlab_license_code": {"base": "context"},
                "key": {"base": "api-key"},
            },
            "config": {"speed": {"type": "integer", "default": 2}},
            "custom": {"gear-builder": {"category": "qa", "image": "a/b:1"}},
        }
    )


def test_file_input_shape() -> None:
    doc = build_config_json({"speed": 2}, [dicom_input()], "acquisition", "acq-1")
    assert doc == {
        "config": {"speed": 2},
        "inputs": {
            "dicom": {
                "base": "file",
                "hierarchy": {"type": "acquisition", "id": "acq-1"},
                "location": {
                    "path": "/flywheel/v0/input/dicom/T1w MPRAGE.dicom.zip",
                    "name": "T1w MPRAGE.dicom.zip",
                },
                "object": {
                    "type": "dicom",
                    "modality": "MR",
                    "classification": {"Intent": ["Structural"], "Measurement": ["T1"]},
                    "tags": ["hpc"],
                    "info": {"SeriesDescription": "T1w MPRAGE"},
                    "size": 2913379,
                    "version": 2,
                    "file_id": "f-123",
                    "mimetype": "application/dicom",
                    "zip_member_count": 176,
                },
            }
        },
        "destination": {"type": "acquisition", "id": "acq-1"},
    }


def test_file_object_defaults_when_metadata_is_sparse() -> None:
    spec = InputSpec(name="nifti", base="file", file_name="a.nii.gz")
    obj = build_config_json({}, [spec], "session", "s-1")["inputs"]["nifti"]["object"]
    assert obj == {
        "type": None,
        "modality": None,
        "classification": {},
        "tags": [],
        "info": {},
        "size": None,
        "version": None,
        "file_id": None,
    }
    assert "mimetype" not in obj


def test_context_and_api_key_shapes() -> None:
    inputs = [
        InputSpec(name="matlab_license_code", base="context", value="ABC"),
        InputSpec(name="missing_ctx", base="context"),
        InputSpec(name="key", base="api-key", value="host:secret"),
        InputSpec(name="key2", base="api-key"),
    ]
    doc = build_config_json({}, inputs, "project", "p-1", api_key="site:key")
    assert doc["inputs"] == {
        "matlab_license_code": {"base": "context", "found": True, "value": "ABC"},
        "missing_ctx": {"base": "context", "found": False, "value": None},
        "key": {"base": "api-key", "key": "host:secret"},
        "key2": {"base": "api-key", "key": "site:key"},
    }


def test_job_id_is_added_only_when_given() -> None:
    assert "job" not in build_config_json({}, [], "session", "s-1")
    assert build_config_json({}, [], "session", "s-1", job_id="j-9")["job"] == {"id": "j-9"}


def test_config_is_copied_not_aliased() -> None:
    config: dict[str, Any] = {"xs": [1, 2]}
    spec = dicom_input()
    doc = build_config_json(config, [spec], "acquisition", "acq-1")
    doc["config"]["xs"].append(3)
    doc["inputs"]["dicom"]["object"]["tags"].append("x")
    assert config == {"xs": [1, 2]}
    assert spec.object["tags"] == ["hpc"]


def test_a_shared_document_is_the_same_text_and_holds_the_callers_values() -> None:
    """share=True (an array's stage-in, which only encodes the document): the same
    document, its values the caller's own objects instead of deep copies."""
    config: dict[str, Any] = {"xs": [1, 2]}
    spec = dicom_input()
    ctx = InputSpec(name="ctx", base="context", value={"a": [1]})
    copied = build_config_json(config, [spec, ctx], "acquisition", "acq-1")
    shared = build_config_json(config, [spec, ctx], "acquisition", "acq-1", share=True)
    assert dump_config_json(shared) == dump_config_json(copied)
    assert shared["config"]["xs"] is config["xs"] and copied["config"]["xs"] is not config["xs"]
    assert shared["inputs"]["ctx"]["value"] is ctx.value
    assert copied["inputs"]["ctx"]["value"] is not ctx.value
    assert shared["inputs"]["dicom"]["object"]["info"] is spec.object["info"]


@pytest.mark.parametrize("file_name", ["", ".", "..", "a/b", "/etc/passwd", "../x", "nul\x00"])
def test_unsafe_file_names_are_rejected(file_name: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        build_config_json({}, [dicom_input(file_name=file_name)], "acquisition", "acq-1")
    assert "dicom" in info.value.message and info.value.hint


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\x00"])
def test_unsafe_input_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidInputError, match="input name"):
        build_config_json({}, [dicom_input(name=name)], "acquisition", "acq-1")


def test_path_helpers() -> None:
    assert input_container_path("dicom", "a b.dcm") == f"{INPUT_ROOT}/dicom/a b.dcm"
    assert check_path_component("ok.nii.gz", what="file") == "ok.nii.gz"
    for bad in ("", ".", "..", "a/b", "a\x00", "x" * 256):
        with pytest.raises(InvalidInputError):
            check_path_component(bad, what="file")
    with pytest.raises(InvalidInputError):
        input_container_path("dicom", "..")


def test_every_problem_is_reported_at_once() -> None:
    inputs = [
        dicom_input(file_name=".."),
        InputSpec(name="nifti", base="file"),
        InputSpec(name="key", base="api-key"),
        InputSpec(name="odd", base="folder"),
        InputSpec(name="nifti", base="file", file_name="x.nii"),
    ]
    with pytest.raises(InvalidInputError) as info:
        build_config_json({}, inputs, "bucket", "")
    message = info.value.message
    assert "7) " in message and "8) " not in message
    for fragment in (
        "dicom",
        "no file name",
        "needs a key",
        "unknown base",
        "given twice",
        "destination type 'bucket'",
        "destination id is empty",
    ):
        assert fragment in message, fragment


def test_manifest_checks_fill_context_and_api_key() -> None:
    doc = build_config_json(
        {"speed": 2},
        [dicom_input()],
        "acquisition",
        "acq-1",
        manifest=manifest(),
        api_key="site:key",
    )
    assert set(doc["inputs"]) == {"dicom", "matlab_license_code", "key"}
    assert doc["inputs"]["matlab_license_code"] == {
        "base": "context",
        "found": False,
        "value": None,
    }
    assert doc["inputs"]["key"] == {"base": "api-key", "key": "site:key"}


def test_manifest_checks_report_undeclared_missing_and_wrong_base() -> None:
    inputs = [
        InputSpec(name="t1", base="file", file_name="t1.nii"),
        InputSpec(name="extra", base="context", value=1),
    ]
    with pytest.raises(InvalidInputError) as info:
        build_config_json({}, inputs, "session", "s-1", manifest=manifest())
    message = info.value.message
    assert "input 't1' is not declared by gear cj-gear" in message
    assert "'extra' is a file input, got a context input" in message
    assert "required file input 'dicom' is missing" in message
    assert "api-key input 'key' needs a key" in message


def test_dump_is_valid_deterministic_json() -> None:
    doc = build_config_json({"speed": 2, "name": "ünï"}, [dicom_input()], "acquisition", "a")
    text = dump_config_json(doc)
    assert text.endswith("\n") and "ünï" in text
    assert json.loads(text) == doc
    assert dump_config_json(doc) == text


def test_non_json_values_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="not be valid JSON"):
        build_config_json({"x": float("nan")}, [], "session", "s-1")
    with pytest.raises(InvalidInputError, match="not be valid JSON"):
        build_config_json({"x": object()}, [], "session", "s-1")


def test_a_caller_that_encodes_the_document_itself_may_skip_the_check() -> None:
    """``check_json=False`` (the array stage-in encodes each document and fails a task
    whose config is not JSON data): the document comes back unencoded, as it is."""
    doc = build_config_json({"x": float("nan")}, [], "session", "s-1", check_json=False)
    assert doc["config"]["x"] != doc["config"]["x"]  # NaN, not refused here
    with pytest.raises(ValueError):
        dump_config_json(doc)
