"""Manifest parsing and validation (hpcgear.gears.manifest)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from hpcgear.errors import ManifestError, NotFoundError
from hpcgear.gears.manifest import (
    TOP_LEVEL_KEYS,
    ConfigOption,
    GearManifest,
    load_manifest,
    parse_manifest,
    parse_manifest_text,
)


def base_manifest(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "example-gear",
        "label": "Example Gear",
        "description": "A gear that performs a task.",
        "version": "1.0.0",
        "author": "Flywheel",
        "maintainer": "Someone <someone@example.org>",
        "license": "MIT",
        "source": "https://example.org/code",
        "url": "https://example.org",
        "cite": "",
        "command": "python run.py",
        "environment": {"FLYWHEEL": "/flywheel/v0"},
        "inputs": {
            "dicom": {"base": "file", "type": {"enum": ["dicom"]}, "description": "A DICOM"},
            "extra": {"base": "file", "optional": True},
            "key": {"base": "api-key", "read-only": True},
            "license_code": {"base": "context"},
        },
        "config": {
            "speed": {"type": "integer", "minimum": 0, "maximum": 3, "default": 2},
            "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
            "note": {"type": "string", "optional": True},
        },
        "custom": {
            "gear-builder": {"category": "analysis", "image": "example/gear:1.0.0"},
            "flywheel": {"suite": "Examples", "show-job": True},
        },
    }
    data.update(overrides)
    return data


def errors_of(data: dict[str, Any]) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, source="manifest.json")
    assert info.value.message.startswith("manifest.json: ")
    return info.value.message


# --------------------------------------------------------------------------- happy path


def test_parses_every_field() -> None:
    m = parse_manifest(base_manifest(), source="x/manifest.json")
    assert (m.name, m.version, m.label, m.author, m.license) == (
        "example-gear",
        "1.0.0",
        "Example Gear",
        "Flywheel",
        "MIT",
    )
    assert m.command == "python run.py"
    assert m.environment == (("FLYWHEEL", "/flywheel/v0"),)
    assert m.category == "analysis" and m.is_analysis
    assert m.image == "example/gear:1.0.0"
    assert m.suite == "Examples" and m.show_job is True
    assert m.origin == "x/manifest.json"
    assert m.input_names == ("dicom", "extra", "key", "license_code")
    assert m.config_names == ("speed", "mode", "note")
    dicom = m.input("dicom")
    assert dicom.base == "file" and dicom.type_filter == ("dicom",) and dicom.required
    assert not m.input("extra").required and m.input("extra").optional
    assert m.input("key").read_only is True and not m.input("key").required
    assert m.input("license_code").base == "context"
    speed = m.option("speed")
    assert (speed.type, speed.minimum, speed.maximum, speed.default) == ("integer", 0, 3, 2)
    assert m.option("note").required is False and m.option("note").has_default is False
    assert m.defaults() == {"speed": 2, "mode": "fast"}
    assert m.warnings == ()


def test_lookup_errors_name_valid_choices() -> None:
    m = parse_manifest(base_manifest())
    with pytest.raises(KeyError, match="dicom"):
        m.input("nope")
    with pytest.raises(KeyError, match="speed"):
        m.option("nope")


def test_value_objects_are_frozen_and_slotted() -> None:
    m = parse_manifest(base_manifest())
    for obj in (m, m.inputs[0], m.config[0]):
        assert not hasattr(obj, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.name = "changed"  # type: ignore[misc]


def test_raw_is_verbatim_and_independent() -> None:
    data = base_manifest(flywheel="0", capabilities=["networking"])
    m = parse_manifest(data)
    assert m.raw == data
    assert list(m.raw) == list(data)  # author's key order kept
    data["config"]["speed"]["default"] = 3
    assert m.raw["config"]["speed"]["default"] == 2
    m.defaults()["speed"] = 99
    assert m.defaults()["speed"] == 2
    assert m.capabilities == ("networking",)


def test_sha256_is_canonical() -> None:
    data = base_manifest()
    reordered = dict(reversed(list(copy.deepcopy(data).items())))
    a = parse_manifest(data)
    b = parse_manifest(reordered)
    c = parse_manifest_text(json.dumps(data, indent=4))
    assert a.sha256 == b.sha256 == c.sha256
    assert a.sha256.startswith("sha256:") and len(a.sha256) == len("sha256:") + 64
    changed = base_manifest(version="1.0.1")
    assert parse_manifest(changed).sha256 != a.sha256


def test_legacy_docker_image_and_default_category() -> None:
    m = parse_manifest(base_manifest(custom={"docker-image": "scitran/nifti-montage:v1"}))
    assert m.image == "scitran/nifti-montage:v1"
    assert m.category == "utility" and not m.is_analysis
    assert any("category" in w for w in m.warnings)


def test_no_custom_means_no_image() -> None:
    data = base_manifest()
    del data["custom"]
    m = parse_manifest(data)
    assert m.image is None and m.suite is None and m.show_job is False


@pytest.mark.parametrize("category", ["utility", "analysis", "converter", "classifier", "qa"])
def test_every_category_is_accepted(category: str) -> None:
    custom = {"gear-builder": {"category": category, "image": "a/b:1"}}
    assert parse_manifest(base_manifest(custom=custom)).category == category


@pytest.mark.parametrize(
    "image",
    [
        "python:2-slim-jessie",
        "automl-predict",
        "flywheel/bids-fmriprep:1.4.3_23.0.1",
        "registry.example.org:5000/group/sub/gear:1.0",
        "ghcr.io/org/gear@sha256:" + "a" * 64,
    ],
)
def test_valid_image_references(image: str) -> None:
    custom = {"gear-builder": {"image": image, "category": "qa"}}
    assert parse_manifest(base_manifest(custom=custom)).image == image


# --------------------------------------------------------------------------- top level


def test_unknown_top_level_key_names_valid_keys() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(base_manifest(comand="run"), source="m.json")
    assert "comand" in info.value.message
    assert "did you mean 'command'" in info.value.message
    for key in TOP_LEVEL_KEYS:
        assert key in info.value.hint


def test_legacy_and_newer_top_level_keys_are_kept() -> None:
    data = base_manifest(
        flywheel="0",
        capabilities=[],
        output_configuration={"enforce_file_version_match": True},
    )
    m = parse_manifest(data)
    assert m.raw["flywheel"] == "0"
    assert m.raw["output_configuration"] == {"enforce_file_version_match": True}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("Example", "must match"),
        ("my_gear", "must match"),
        ("{{cookiecutter.package_name}}", "must match"),
        ("a" * 101, "limit is 100"),
        (7, "must be a string"),
    ],
)
def test_bad_names(name: Any, fragment: str) -> None:
    message = errors_of(base_manifest(name=name))
    assert "name" in message and fragment in message


def test_missing_name_and_version_are_errors() -> None:
    data = base_manifest()
    del data["name"], data["version"]
    message = errors_of(data)
    assert "name" in message and "version" in message and "2 problems" in message


def test_version_is_lenient_but_not_empty() -> None:
    for version in ("0.4.0f", "inc0.0rc2", "1", "1.2.5_4.3.0_inc1.5.1"):
        assert parse_manifest(base_manifest(version=version)).version == version
    assert "version" in errors_of(base_manifest(version=" "))
    assert "control" in errors_of(base_manifest(version="1.0\n"))
    assert "must be a string" in errors_of(base_manifest(version=1.0))


def test_missing_descriptive_fields_are_warnings() -> None:
    data = base_manifest()
    for key in ("author", "label", "license", "source", "url", "description"):
        del data[key]
    m = parse_manifest(data)
    assert m.author == "" and m.label == ""
    assert sum("spec requires" in w for w in m.warnings) == 6


def test_wrong_type_of_descriptive_field_is_an_error() -> None:
    assert "label" in errors_of(base_manifest(label=["x"]))


def test_long_description_and_non_url_source_are_warnings() -> None:
    m = parse_manifest(base_manifest(description="x" * 5001, source="github"))
    assert any("description" in w for w in m.warnings)
    assert any("source" in w and "URL" in w for w in m.warnings)


def test_empty_command_is_a_warning_and_none() -> None:
    m = parse_manifest(base_manifest(command="  "))
    assert m.command is None and any("command" in w for w in m.warnings)
    assert "command" in errors_of(base_manifest(command=["python", "run.py"]))


def test_no_command_is_fine() -> None:
    data = base_manifest()
    del data["command"]
    assert parse_manifest(data).command is None


def test_non_object_manifest() -> None:
    with pytest.raises(ManifestError, match="must be a JSON object"):
        parse_manifest_text("[1, 2]", source="m.json")


def test_all_problems_are_reported_at_once() -> None:
    data = base_manifest(name="Bad Name", colour="red")
    data["inputs"]["../up"] = {"base": "file"}
    data["inputs"]["weird"] = {"base": "folder"}
    data["config"]["speed"]["maximum"] = "three"
    data["config"]["both"] = {"type": "integer", "default": 1, "optional": True}
    data["custom"]["gear-builder"]["category"] = "analyses"
    message = errors_of(data)
    assert "7 problems" in message
    for fragment in (
        "name",
        "colour",
        "../up",
        "folder",
        "config.speed.maximum",
        "config.both",
        "analyses",
        "did you mean 'analysis'",
    ):
        assert fragment in message, fragment


# --------------------------------------------------------------------------- environment


def test_environment_numbers_become_strings_with_warning() -> None:
    m = parse_manifest(base_manifest(environment={"PYTHONUNBUFFERED": 1, "RATIO": 0.5}))
    assert m.environment == (("PYTHONUNBUFFERED", "1"), ("RATIO", "0.5"))
    assert len(m.warnings) == 2


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"1BAD": "x"}, "not a valid environment variable name"),
        ({"BAD-NAME": "x"}, "not a valid environment variable name"),
        ({"OK": None}, "must be a string"),
        ({"OK": True}, "must be a string"),
        ({"OK": {"nested": "x"}}, "must be a string"),
        ({"OK": "a\x00b"}, "NUL"),
        ("PATH=/bin", "must be an object"),
    ],
)
def test_bad_environment(env: Any, fragment: str) -> None:
    assert fragment in errors_of(base_manifest(environment=env))


def test_empty_environment() -> None:
    assert parse_manifest(base_manifest(environment={})).environment == ()


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\x00", "tab\there"])
def test_unsafe_input_names_are_errors(name: str) -> None:
    data = base_manifest()
    data["inputs"] = {name: {"base": "file"}}
    assert "input name" in errors_of(data)


def test_unusual_but_safe_input_name_is_a_warning() -> None:
    data = base_manifest()
    data["inputs"] = {"my input.nii": {"base": "file"}}
    m = parse_manifest(data)
    assert m.input_names == ("my input.nii",)
    assert any("recommends" in w for w in m.warnings)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"base": "folder"}, "not an input base"),
        ({}, "base"),
        ({"base": "file", "optional": "yes"}, "true or false"),
        ({"base": "api-key", "read-only": "true"}, "true or false"),
        ({"base": "file", "type": "dicom"}, "must be an object"),
        ({"base": "file", "type": {"enum": []}}, "non-empty list"),
        ({"base": "file", "type": {"enum": "dicom"}}, "non-empty list"),
        ("file", "must be an object"),
    ],
)
def test_bad_inputs(spec: Any, fragment: str) -> None:
    data = base_manifest()
    data["inputs"] = {"thing": spec}
    message = errors_of(data)
    assert "inputs.thing" in message and fragment in message


def test_input_extras_are_kept_and_odd_ones_warned() -> None:
    data = base_manifest()
    data["inputs"] = {
        "text": {"base": "file", "name": {"pattern": "^.*.txt$"}, "size": {"maximum": 10}},
        "ctx": {"base": "context", "optional": True},
        "key": {"base": "api-key", "type": {"enum": ["x"]}},
        "any": {"base": "file", "type": {"pattern": "x"}},
    }
    m = parse_manifest(data)
    assert m.input("text").raw["size"] == {"maximum": 10}
    assert m.input("any").type_filter is None
    assert any("inputs.ctx" in w for w in m.warnings)
    assert any("inputs.key" in w for w in m.warnings)


def test_inputs_must_be_an_object() -> None:
    assert "inputs" in errors_of(base_manifest(inputs=[{"base": "file"}]))


def test_empty_inputs_and_config() -> None:
    m = parse_manifest(base_manifest(inputs={}, config={}))
    assert m.inputs == () and m.config == ()


# --------------------------------------------------------------------------- config options


def option_of(spec: dict[str, Any]) -> ConfigOption:
    data = base_manifest(config={"opt": spec})
    return parse_manifest(data).option("opt")


def config_errors(spec: Any) -> str:
    return errors_of(base_manifest(config={"opt": spec}))


@pytest.mark.parametrize("type_", ["string", "integer", "number", "boolean", "array"])
def test_every_config_type(type_: str) -> None:
    assert option_of({"type": type_}).type == type_


@pytest.mark.parametrize(("alias", "canonical"), [("int", "integer"), ("float", "number")])
def test_type_aliases_seen_in_real_gears(alias: str, canonical: str) -> None:
    data = base_manifest(config={"opt": {"type": alias, "default": 3}})
    m = parse_manifest(data)
    assert m.option("opt").type == canonical
    assert any(alias in w for w in m.warnings)


@pytest.mark.parametrize("type_", ["object", "null", ["string", "null"], "text"])
def test_unsupported_types_are_errors(type_: Any) -> None:
    assert "not a supported config type" in config_errors({"type": type_})


def test_missing_type_is_a_warning() -> None:
    data = base_manifest(config={"opt": {"default": 3}})
    m = parse_manifest(data)
    assert m.option("opt").type is None
    assert any("no type" in w for w in m.warnings)


def test_default_with_optional_true_is_an_error() -> None:
    message = config_errors({"type": "integer", "default": 1, "optional": True})
    assert "both default and optional" in message


def test_optional_false_with_default_is_fine() -> None:
    assert option_of({"type": "integer", "default": 1, "optional": False}).default == 1


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "integer", "default": "3"}, "must be an integer"),
        ({"type": "integer", "default": True}, "must be an integer"),
        ({"type": "string", "enum": ["a", "b"], "default": "c"}, "must be one of"),
        ({"type": "integer", "maximum": 3, "default": 4}, "at most 3"),
        ({"type": "string", "pattern": "^[0-9]+$", "default": "x"}, "pattern"),
        ({"type": "string", "maxLength": 2, "default": "abc"}, "at most 2 characters"),
        ({"type": "number", "multipleOf": 10, "default": 15}, "multiple of 10"),
        ({"type": "array", "items": {"type": "number"}, "default": ["a"]}, "item 0"),
    ],
)
def test_default_must_satisfy_its_option(spec: dict[str, Any], fragment: str) -> None:
    message = config_errors(spec)
    assert "config.opt.default" in message and fragment in message


def test_integral_float_default_is_normalised() -> None:
    option = option_of({"type": "integer", "default": 3.0})
    assert option.default == 3 and isinstance(option.default, int)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "integer", "minimum": "0"}, "minimum"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "no number satisfies"),
        ({"type": "integer", "minimum": 1, "maximum": 1, "exclusiveMaximum": True}, "no number"),
        ({"type": "integer", "exclusiveMinimum": "yes"}, "exclusiveMinimum"),
        ({"type": "string", "minLength": -1}, "minLength"),
        ({"type": "string", "maxLength": 1.5}, "maxLength"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, "above maxLength"),
        ({"type": "string", "pattern": "(unclosed"}, "not a valid regular expression"),
        ({"type": "string", "pattern": 5}, "regular expression string"),
        ({"type": "number", "multipleOf": 0}, "multipleOf"),
        ({"type": "string", "enum": []}, "non-empty list"),
        ({"type": "string", "enum": "a"}, "non-empty list"),
        ({"type": "array", "items": [{"type": "string"}]}, "one schema object"),
        ({"type": "array", "minItems": 2, "maxItems": 1}, "above maxItems"),
        ({"type": "array", "uniqueItems": "yes"}, "uniqueItems"),
        ({"type": "string", "optional": "no"}, "true or false"),
        ("string", "must be an object"),
    ],
)
def test_unusable_constraints_are_errors(spec: Any, fragment: str) -> None:
    assert fragment in config_errors(spec)


def test_exclusive_bounds_both_styles_normalise_alike() -> None:
    draft4 = option_of(
        {
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
            "maximum": 100,
            "exclusiveMaximum": True,
        }
    )
    draft6 = option_of({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100})
    for option in (draft4, draft6):
        assert (option.minimum, option.exclusive_minimum) == (0, True)
        assert (option.maximum, option.exclusive_maximum) == (100, True)


def test_number_style_exclusive_bound_keeps_the_stricter_one() -> None:
    option = option_of(
        {
            "type": "number",
            "minimum": 5,
            "exclusiveMinimum": 1,
            "maximum": 10,
            "exclusiveMaximum": 10,
        }
    )
    assert (option.minimum, option.exclusive_minimum) == (5, False)
    assert (option.maximum, option.exclusive_maximum) == (10, True)


def test_exclusive_flag_without_bound_is_a_warning() -> None:
    data = base_manifest(config={"opt": {"type": "number", "exclusiveMaximum": True}})
    m = parse_manifest(data)
    assert m.option("opt").maximum is None and not m.option("opt").exclusive_maximum
    assert any("exclusiveMaximum" in w for w in m.warnings)


def test_items_are_parsed_recursively() -> None:
    option = option_of(
        {
            "type": "array",
            "items": {"type": "string", "enum": ["a", "b"]},
            "minItems": 1,
            "maxItems": 3,
            "uniqueItems": True,
            "default": ["a"],
        }
    )
    assert option.items is not None and option.items.enum == ("a", "b")
    assert (option.min_items, option.max_items, option.unique_items) == (1, 3, True)
    assert "items: string" in option.describe()


def test_non_standard_min_max_are_kept_not_enforced() -> None:
    data = base_manifest(config={"opt": {"type": "integer", "min": 0, "max": 10, "optional": True}})
    m = parse_manifest(data)
    option = m.option("opt")
    assert option.minimum is None and option.maximum is None
    assert option.raw["max"] == 10
    assert sum("not enforced" in w for w in m.warnings) == 2


def test_extra_option_keys_are_kept() -> None:
    option = option_of({"type": "boolean", "default": False, "id": "-t", "base": "file"})
    assert option.id == "-t" and option.raw["base"] == "file"


def test_enum_values_of_the_wrong_type_are_a_warning() -> None:
    data = base_manifest(config={"opt": {"type": "integer", "enum": [6, "12"], "default": 6}})
    m = parse_manifest(data)
    assert any("never be chosen" in w for w in m.warnings)


def test_reserved_key_defaults_are_validated_as_resources() -> None:
    data = base_manifest(
        config={
            "slurm-ram": {"type": "string", "default": "lots"},
            "slurm-cpu": {"type": "string", "default": "8"},
            "slurm-partition": {"type": "string", "default": "bad name;rm"},
        }
    )
    message = errors_of(data)
    assert "slurm-ram" in message and "slurm-partition" in message
    assert "slurm-cpu" not in message


def test_reserved_key_with_valid_default_parses() -> None:
    data = base_manifest(
        config={
            "slurm-ram": {"type": "string", "default": "4G"},
            "singularity-debug": {"type": "boolean", "default": False},
        }
    )
    assert parse_manifest(data).defaults() == {"slurm-ram": "4G", "singularity-debug": False}


# --------------------------------------------------------------------------- custom


@pytest.mark.parametrize(
    ("custom", "fragment"),
    [
        ({"gear-builder": {"category": "analyses", "image": "a/b:1"}}, "not a gear category"),
        ({"gear-builder": {"category": "qa", "image": "a/{{x}}:1"}}, "not a valid image"),
        ({"gear-builder": {"category": "qa", "image": "Upper/Case:1"}}, "not a valid image"),
        ({"gear-builder": {"category": "qa", "image": "a b"}}, "not a valid image"),
        ({"gear-builder": {"category": "qa", "image": 5}}, "must be a string"),
        ({"gear-builder": "a/b:1"}, "must be an object"),
        ({"docker-image": ""}, "not a valid image"),
        ([], "must be an object"),
    ],
)
def test_bad_custom(custom: Any, fragment: str) -> None:
    assert fragment in errors_of(base_manifest(custom=custom))


def test_differing_docker_image_is_a_warning() -> None:
    custom = {"docker-image": "a/old:1", "gear-builder": {"category": "qa", "image": "a/new:2"}}
    m = parse_manifest(base_manifest(custom=custom))
    assert m.image == "a/new:2"
    assert any("docker-image" in w for w in m.warnings)


def test_capabilities_must_be_strings() -> None:
    assert "capabilities" in errors_of(base_manifest(capabilities="networking"))
    assert "capabilities" in errors_of(base_manifest(capabilities=[1]))


def test_output_configuration_shape() -> None:
    assert "enforce_file_version_match" in errors_of(
        base_manifest(output_configuration={"enforce_file_version_match": "yes"})
    )


# --------------------------------------------------------------------------- files and JSON


def write(tmp_path: Path, text: str | bytes, name: str = "manifest.json") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_load_manifest_file_and_directory(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(base_manifest(), indent=2))
    by_file = load_manifest(path)
    by_dir = load_manifest(tmp_path)
    assert isinstance(by_file, GearManifest)
    assert by_file == by_dir
    assert by_file.origin == str(path)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        load_manifest(tmp_path / "nope.json")
    assert "nope.json" in info.value.message and info.value.hint


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(base_manifest()).encode())
    assert load_manifest(path).name == "example-gear"


def test_non_utf8_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"name": "\xff"}')
    with pytest.raises(ManifestError, match="UTF-8"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("text", "where", "hint_fragment"),
    [
        ("", ":1:1:", "JSON object"),
        ('{\n  "name": "x",\n  # "label": "X",\n}', ":3:3:", "no comments"),
        ('{\n  name: "x"\n}', ":2:3:", "double quotes"),
        ('{\n  "name": "x",\n}', ":3:1:", "trailing comma"),
        ('{\n  "name": "x",\n  "version": "1"', ":3:17:", "ends too early"),
        ('{\n  "inputs": {q\n}', ":2:14:", "stray 'q'"),
    ],
)
def test_json_syntax_errors_name_file_line_and_column(
    tmp_path: Path, text: str, where: str, hint_fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.message.startswith(f"{path}{where}")
    assert hint_fragment in info.value.hint


def test_nan_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n"name": "x",\n"version": NaN}')
    with pytest.raises(ManifestError, match=r":3: NaN is not valid JSON"):
        load_manifest(path)


def test_schema_errors_carry_line_numbers(tmp_path: Path) -> None:
    data = base_manifest()
    data["config"]["speed"]["maximum"] = "three"
    path = write(tmp_path, json.dumps(data, indent=2))
    lines = path.read_text().splitlines()
    expected = next(i for i, line in enumerate(lines, 1) if '"maximum": "three"' in line)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert f"config.speed.maximum (line {expected})" in info.value.message


def test_duplicate_keys_last_wins_with_warning(tmp_path: Path) -> None:
    text = json.dumps(base_manifest(), indent=2)
    text = text.replace('"label": "Example Gear"', '"label": "First", "label": "Second"')
    m = load_manifest(write(tmp_path, text))
    assert m.label == "Second"
    assert any("'label' appears more than once" in w for w in m.warnings)
