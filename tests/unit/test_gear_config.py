"""Config resolution/validation (gear_config) and reserved HPC keys (reserved)."""

from __future__ import annotations

from typing import Any

import pytest

from hpcgear.errors import GearConfigError
from hpcgear.gears.gear_config import coerce_string, resolve_config
from hpcgear.gears.manifest import GearManifest, parse_manifest
from hpcgear.gears.reserved import (
    RESERVED_KEYS,
    ResourceOverrides,
    check_reserved,
    parse_reserved,
    split_reserved,
)
from hpcgear.spec import Resources


def manifest_with(config: dict[str, Any]) -> GearManifest:
    return parse_manifest(
        {
            "name": "cfg-gear",
            "version": "1.0",
            "label": "Config gear",
            "description": "",
            "author": "",
            "license": "MIT",
            "source": "",
            "url": "",
            "inputs": {},
            "config": config,
            "custom": {"gear-builder": {"category": "utility", "image": "x/y:1"}},
        },
        source="test",
    )


def one(spec: dict[str, Any]) -> GearManifest:
    return manifest_with({"opt": spec})


def problems_for(manifest: GearManifest, *layers: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(GearConfigError) as info:
        resolve_config(manifest, *layers, **kw)
    assert info.value.message.startswith("config for gear cfg-gear 1.0")
    return info.value.message


# --------------------------------------------------------------------------- layering


def test_defaults_then_layers_in_order() -> None:
    m = manifest_with(
        {
            "a": {"type": "integer", "default": 1},
            "b": {"type": "string", "default": "x"},
            "c": {"type": "boolean", "optional": True},
            "d": {"type": "number", "default": 0.5},
        }
    )
    assert resolve_config(m) == {"a": 1, "b": "x", "d": 0.5}
    rule = {"a": 2, "b": "rule"}
    user = {"b": "user", "c": True}
    assert resolve_config(m, rule, user) == {"a": 2, "b": "user", "c": True, "d": 0.5}


def test_result_follows_manifest_order_and_does_not_alias_inputs() -> None:
    m = manifest_with(
        {"z": {"type": "array", "default": [1]}, "a": {"type": "integer", "default": 0}}
    )
    layer = {"a": 5, "z": [1, 2]}
    result = resolve_config(m, layer)
    assert list(result) == ["z", "a"]
    result["z"].append(3)
    assert layer["z"] == [1, 2]
    assert resolve_config(m)["z"] == [1]


def test_none_resets_to_default_or_unsets() -> None:
    m = manifest_with(
        {"opt": {"type": "string", "optional": True}, "req": {"type": "integer", "default": 3}}
    )
    assert resolve_config(m, {"opt": "x"}, {"opt": None}) == {"req": 3}
    assert resolve_config(m, {"req": 5}, {"req": None}) == {"req": 3}  # back to the default
    needed = manifest_with({"req": {"type": "integer"}})
    message = problems_for(needed, {"req": 5}, {"req": None})
    assert "missing required config key 'req'" in message


def test_missing_required_keys_are_listed_with_their_types() -> None:
    m = manifest_with(
        {
            "mem_gb": {"type": "integer"},
            "fd_thres": {"type": "number"},
            "ok": {"type": "string", "optional": True},
        }
    )
    message = problems_for(m)
    assert "missing required config key 'mem_gb' (integer)" in message
    assert "missing required config key 'fd_thres' (number)" in message
    assert "'ok'" not in message
    with pytest.raises(GearConfigError) as info:
        resolve_config(m)
    assert "required key" in info.value.hint
    assert resolve_config(m, {"mem_gb": 8, "fd_thres": 0.2}) == {"mem_gb": 8, "fd_thres": 0.2}


def test_unknown_keys_are_rejected_naming_valid_keys() -> None:
    m = manifest_with(
        {"speed": {"type": "integer", "default": 1}, "mode": {"type": "string", "default": "a"}}
    )
    with pytest.raises(GearConfigError) as info:
        resolve_config(m, {"spead": 2, "colour": "red"})
    assert "unknown config key 'spead' (did you mean 'speed'?)" in info.value.message
    assert "unknown config key 'colour'" in info.value.message
    assert "valid config keys: speed, mode" in info.value.hint
    assert "slurm-cpu" in info.value.hint


def test_every_bad_key_is_reported_at_once() -> None:
    m = manifest_with(
        {
            "speed": {"type": "integer", "minimum": 0, "maximum": 3, "default": 1},
            "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
            "name": {"type": "string", "pattern": "^[a-z]+$", "default": "abc"},
            "needed": {"type": "boolean"},
        }
    )
    message = problems_for(
        m, {"speed": 7, "mode": "fats", "name": "ABC", "typo": 1, "slurm-ram": "lots"}
    )
    assert "6 problems" in message
    assert "'speed' must be at most 3, got 7" in message
    assert '\'mode\' must be one of "fast", "slow", got "fats"' in message
    assert "'name' must match the pattern ^[a-z]+$" in message
    assert "unknown config key 'typo'" in message
    assert "missing required config key 'needed'" in message
    assert "slurm-ram 'lots' is not a size" in message


# --------------------------------------------------------------------------- constraint kinds


@pytest.mark.parametrize(
    ("spec", "good", "bad", "fragment"),
    [
        ({"type": "string"}, "x", 5, "must be a string"),
        ({"type": "integer"}, 3, 3.5, "must be an integer"),
        ({"type": "integer"}, -2, True, "must be an integer"),
        ({"type": "number"}, 1.5, "1.5", "must be a number"),
        ({"type": "number"}, 2, False, "must be a number"),
        ({"type": "boolean"}, False, 0, "must be true or false"),
        ({"type": "boolean"}, True, "true", "must be true or false"),
        ({"type": "array"}, [1, "a"], "a,b", "must be a list"),
        ({"type": "string", "enum": ["a", "b"]}, "b", "c", "must be one of"),
        ({"type": "integer", "enum": [6, 12]}, 12, 9, "must be one of"),
        ({"enum": [0, 1]}, 1, True, "must be one of"),
        ({"type": "integer", "minimum": 1}, 1, 0, "must be at least 1"),
        ({"type": "integer", "maximum": 5}, 5, 6, "must be at most 5"),
        (
            {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            0.1,
            0,
            "must be greater than 0",
        ),
        ({"type": "number", "exclusiveMinimum": 0}, 0.1, 0, "must be greater than 0"),
        (
            {"type": "number", "maximum": 100, "exclusiveMaximum": True},
            99.9,
            100,
            "must be less than 100",
        ),
        ({"type": "number", "exclusiveMaximum": 100}, 99.9, 100, "must be less than 100"),
        ({"type": "string", "minLength": 2}, "ab", "a", "must be at least 2 characters long"),
        ({"type": "string", "maxLength": 3}, "abc", "abcd", "must be at most 3 characters long"),
        (
            {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"},
            "555-5555",
            "5555555",
            "must match the pattern",
        ),
        ({"type": "string", "pattern": "^mid|[0-9]+$"}, "x12", "left", "must match the pattern"),
        ({"type": "number", "multipleOf": 10}, 30, 35, "must be a multiple of 10"),
        ({"type": "number", "multipleOf": 0.1}, 0.3, 0.35, "must be a multiple of 0.1"),
        (
            {"type": "array", "items": {"type": "number"}},
            [1, 2.5],
            [1, "2"],
            "item 1 must be a number",
        ),
        (
            {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
            ["a", "b"],
            ["a", "c"],
            "item 1 must be one of",
        ),
        (
            {"type": "array", "items": {"type": "integer", "maximum": 3}},
            [3],
            [4],
            "item 0 must be at most 3",
        ),
        ({"type": "array", "minItems": 2}, [1, 2], [1], "must have at least 2 items"),
        ({"type": "array", "maxItems": 1}, [1], [1, 2], "must have at most 1 item,"),
        ({"type": "array", "uniqueItems": True}, [1, 2], [1, 1.0], "must not repeat items"),
    ],
)
def test_constraint_kinds_pass_and_fail(
    spec: dict[str, Any], good: Any, bad: Any, fragment: str
) -> None:
    m = one(spec)
    assert resolve_config(m, {"opt": good})["opt"] == good
    message = problems_for(m, {"opt": bad})
    assert "'opt' " + fragment in message


def test_integral_floats_become_ints_and_tuples_lists() -> None:
    m = manifest_with({"n": {"type": "integer"}, "xs": {"type": "array"}})
    result = resolve_config(m, {"n": 4.0, "xs": (1, 2)})
    assert result == {"n": 4, "xs": [1, 2]}
    assert isinstance(result["n"], int) and isinstance(result["xs"], list)


def test_non_finite_numbers_are_rejected() -> None:
    m = one({"type": "number"})
    assert "must be a number" in problems_for(m, {"opt": float("nan")})
    assert "must be a number" in problems_for(m, {"opt": float("inf")})


def test_untyped_option_accepts_any_value() -> None:
    m = one({"default": 1})
    assert resolve_config(m, {"opt": "text"}) == {"opt": "text"}


def test_non_standard_min_max_are_not_enforced() -> None:
    m = one({"type": "integer", "min": 0, "max": 10, "optional": True})
    assert resolve_config(m, {"opt": 20000}) == {"opt": 20000}


# --------------------------------------------------------------------------- coercion


def coerced(spec: dict[str, Any], text: str) -> Any:
    return resolve_config(one(spec), {"opt": text}, coerce_strings=True)["opt"]


@pytest.mark.parametrize(
    ("spec", "text", "value"),
    [
        ({"type": "boolean"}, "true", True),
        ({"type": "boolean"}, "False", False),
        ({"type": "boolean"}, "yes", True),
        ({"type": "boolean"}, "0", False),
        ({"type": "integer"}, "3", 3),
        ({"type": "integer"}, "-12", -12),
        ({"type": "number"}, "1.5", 1.5),
        ({"type": "number"}, "3", 3),
        ({"type": "number"}, "1e-3", 0.001),
        ({"type": "array"}, "[1, 2]", [1, 2]),
        ({"type": "array", "items": {"type": "integer"}}, '["1", 2]', [1, 2]),
        ({"type": "array", "items": {"type": "string"}}, '["a", "b"]', ["a", "b"]),
        ({"type": "string"}, "3", "3"),
        ({"type": "string"}, "true", "true"),
        ({"default": "x"}, "42", "42"),
    ],
)
def test_coercion_per_declared_type(spec: dict[str, Any], text: str, value: Any) -> None:
    result = coerced(spec, text)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("spec", "text", "fragment"),
    [
        ({"type": "boolean"}, "maybe", "must be true or false"),
        ({"type": "integer"}, "3.5", "must be a whole number"),
        ({"type": "integer"}, "three", "must be a whole number"),
        ({"type": "number"}, "nan", "must be a number"),
        ({"type": "number"}, "1,5", "must be a number"),
        ({"type": "array"}, "a,b", "must be a JSON list"),
        ({"type": "array"}, '{"a": 1}', "must be a JSON list"),
        ({"type": "array", "items": {"type": "integer"}}, '["x"]', "'opt[0]' must be"),
    ],
)
def test_coercion_errors(spec: dict[str, Any], text: str, fragment: str) -> None:
    message = problems_for(one(spec), {"opt": text}, coerce_strings=True)
    assert fragment in message


def test_coercion_is_off_by_default() -> None:
    assert "must be an integer" in problems_for(one({"type": "integer"}), {"opt": "3"})


def test_coercion_errors_are_collected_with_others() -> None:
    m = manifest_with(
        {"a": {"type": "integer", "default": 1}, "b": {"type": "boolean", "default": True}}
    )
    message = problems_for(m, {"a": "x", "b": "perhaps", "c": "1"}, coerce_strings=True)
    assert "3 problems" in message


def test_coerce_string_without_option_keeps_text() -> None:
    assert coerce_string(None, "8", key="slurm-cpu") == "8"
    assert coerce_string(None, "TRUE", key="singularity-debug") is True
    assert coerce_string(None, "x", key="anything") == "x"


# --------------------------------------------------------------------------- reserved keys


def test_reserved_keys_are_accepted_undeclared_and_validated() -> None:
    m = one({"type": "integer", "default": 1})
    result = resolve_config(
        m,
        {"slurm-cpu": "4", "slurm-ram": "2G", "singularity-debug": "true"},
        coerce_strings=True,
    )
    assert result == {"opt": 1, "slurm-cpu": "4", "slurm-ram": "2G", "singularity-debug": True}


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("slurm-cpu", "four", "slurm-cpu 'four' is not a whole number"),
        ("slurm-cpu", "-2", "slurm-cpu -2 is out of range"),
        ("slurm-cpu", 2.5, "slurm-cpu 2.5 is not a whole number"),
        ("scheduler_cpu", True, "scheduler_cpu"),
        ("slurm-ram", "lots", "slurm-ram 'lots' is not a size"),
        ("slurm-ram", "-1G", "slurm-ram '-1G' is not a size"),
        ("slurm-ram", "99999T", "larger than any node"),
        ("scheduler_ram", "rusage[mem=12000]", "scheduler_ram 'rusage[mem=12000]' is not a size"),
        ("slurm-time", "forever", "slurm-time 'forever' is not a duration"),
        ("slurm-time", "400d", "longer than a year"),
        ("slurm-partition", "gpu;rm -rf /", "not a SLURM name"),
        ("slurm-partition", "-x", "not a SLURM name"),
        ("slurm-qos", "normal qos", "not a SLURM name"),
        ("slurm-account", "acct$(id)", "not a SLURM name"),
        ("slurm-account", 7, "not a SLURM name"),
        ("slurm-gres", "gpu:", "not a GRES request"),
        ("slurm-gres", "gpu:a100:0", "not a GRES request"),
        ("slurm-gres", "gpu:1;x", "not a GRES request"),
        ("slurm-nodes", "-1", "slurm-nodes"),
        ("slurm-ntasks", "many", "slurm-ntasks 'many' is not a whole number"),
        ("singularity-debug", "perhaps", "singularity-debug 'perhaps' is not a boolean"),
        ("singularity-writable", 2, "singularity-writable 2 is not a boolean"),
    ],
)
def test_each_invalid_reserved_value(key: str, value: Any, fragment: str) -> None:
    message = problems_for(one({"type": "integer", "default": 1}), {key: value})
    assert fragment in message
    with pytest.raises(GearConfigError) as info:
        parse_reserved({key: value})
    assert fragment in info.value.message
    assert "slurm-ram" in info.value.hint  # the hint names the accepted spellings


@pytest.mark.parametrize("zero", [0, "0", "", "0G", 0.0, " 0 "])
def test_zero_cpu_and_ram_mean_not_set(zero: Any) -> None:
    """Issue 11: HPC-ready gears ship slurm-cpu/slurm-ram defaults of 0 meaning "site
    default"; the manifest is accepted, the site default applies, a user may set it."""
    kind = "string" if isinstance(zero, str) else "number"
    manifest = manifest_with(
        {
            "slurm-cpu": {"type": kind, "default": zero},
            "slurm-ram": {"type": kind, "default": zero},
        }
    )
    assert {o.name for o in manifest.config} == {"slurm-cpu", "slurm-ram"}
    full = resolve_config(manifest, {}, {})
    assert parse_reserved(full).is_empty  # the site default applies
    user_value: Any = "3" if isinstance(zero, str) else 3
    assert parse_reserved(resolve_config(manifest, {}, {"slurm-cpu": user_value})).cpus == 3
    overrides = parse_reserved({"slurm-cpu": zero, "slurm-ram": zero})
    assert overrides.cpus is None and overrides.mem_mb is None
    user = parse_reserved({"slurm-cpu": zero, "slurm-ram": zero, "scheduler_cpu": 4})
    assert user.cpus == 4


def test_all_bad_reserved_keys_at_once() -> None:
    with pytest.raises(GearConfigError) as info:
        parse_reserved({"slurm-cpu": "x", "slurm-time": "y", "slurm-gres": "z:"})
    assert "3 bad reserved HPC keys" in info.value.message


def test_reserved_values_parse_and_normalise() -> None:
    overrides = parse_reserved(
        {
            "slurm-cpu": "8",
            "slurm-ram": "4G",
            "slurm-time": "1428",
            "slurm-partition": " blanca-ics ",
            "slurm-qos": "normal",
            "slurm-account": "ucb278_asc1",
            "slurm-gres": "gpu:a100:2,shard:1",
            "slurm-nodes": 2,
            "slurm-ntasks": "4",
            "singularity-debug": False,
            "singularity-writable": "yes",
            "unrelated": "kept out",
        }
    )
    assert overrides == ResourceOverrides(
        cpus=8,
        mem_per_cpu_mb=4096,
        mem_mb=8 * 4096,
        time_minutes=1428,
        partition="blanca-ics",
        qos="normal",
        account="ucb278_asc1",
        gres="gpu:a100:2,shard:1",
        nodes=2,
        ntasks=4,
        debug=False,
        writable=True,
    )


@pytest.mark.parametrize("gres", ["gpu", "gpu:1", "gpu:a100:2", "gpu:tesla_v100:4", "mps:100"])
def test_valid_gres(gres: str) -> None:
    assert parse_reserved({"slurm-gres": gres}).gres == gres


@pytest.mark.parametrize(
    ("time", "minutes"), [("90", 90), ("2h", 120), ("1-12:00:00", 2160), (30, 30)]
)
def test_time_spellings(time: Any, minutes: int) -> None:
    assert parse_reserved({"slurm-time": time}).time_minutes == minutes


def test_scheduler_aliases_and_disagreement() -> None:
    o = parse_reserved({"scheduler_cpu": "2", "scheduler_ram": "1G"})
    assert (o.cpus, o.mem_per_cpu_mb, o.mem_mb) == (2, 1024, 2048)
    same = parse_reserved({"slurm-cpu": "2", "scheduler_cpu": 2})
    assert same.cpus == 2
    with pytest.raises(GearConfigError, match="disagree"):
        parse_reserved({"slurm-ram": "4G", "scheduler_ram": "8G"})


def test_ram_without_cpu_is_per_single_cpu() -> None:
    o = parse_reserved({"slurm-ram": "3G"})
    assert (o.cpus, o.mem_per_cpu_mb, o.mem_mb) == (None, 3072, 3072)


def test_empty_strings_mean_not_set() -> None:
    o = parse_reserved({"slurm-account": "", "slurm-cpu": "  ", "singularity-debug": ""})
    assert o.is_empty
    assert not parse_reserved({"slurm-qos": "normal"}).is_empty


def test_split_reserved_keeps_declared_keys_for_the_gear() -> None:
    config = {"opt": 1, "slurm-ram": "4G", "slurm-cpu": "2", "singularity-debug": True}
    gear_config, overrides = split_reserved(config, declared=("opt", "slurm-ram"))
    assert gear_config == {"opt": 1, "slurm-ram": "4G"}
    assert (overrides.cpus, overrides.mem_mb, overrides.debug) == (2, 8192, True)
    assert config == {"opt": 1, "slurm-ram": "4G", "slurm-cpu": "2", "singularity-debug": True}


def test_split_reserved_rejects_bad_values() -> None:
    with pytest.raises(GearConfigError, match="slurm-partition"):
        split_reserved({"slurm-partition": "a b"})


def test_apply_to_resources_uses_final_cpu_count() -> None:
    base = Resources(cpus=4, mem_mb=1000, time_minutes=60, partition="short")
    only_ram = parse_reserved({"slurm-ram": "2G"}).apply_to(base)
    assert (only_ram.cpus, only_ram.mem_mb, only_ram.partition) == (4, 8192, "short")
    full = parse_reserved(
        {
            "slurm-cpu": "8",
            "slurm-ram": "1G",
            "slurm-time": "2h",
            "slurm-partition": "long",
            "slurm-nodes": "2",
        }
    ).apply_to(base)
    assert (full.cpus, full.mem_mb, full.time_minutes, full.partition, full.nodes) == (
        8,
        8192,
        120,
        "long",
        2,
    )
    assert ResourceOverrides().apply_to(base) == base


def test_declared_reserved_keys_follow_the_manifest_type() -> None:
    m = manifest_with(
        {
            "slurm-cpu": {"type": "string", "default": "8"},
            "singularity-debug": {"type": "boolean", "default": False},
        }
    )
    result = resolve_config(
        m, {"slurm-cpu": "16", "singularity-debug": "true"}, coerce_strings=True
    )
    assert result == {"slurm-cpu": "16", "singularity-debug": True}
    message = problems_for(m, {"slurm-cpu": 16})
    assert "'slurm-cpu' must be a string" in message
    gear_config, overrides = split_reserved(result, declared=m.config_names)
    assert gear_config == result and overrides.cpus == 16 and overrides.debug is True


def test_check_reserved_returns_problems_without_raising() -> None:
    overrides, problems = check_reserved({"slurm-cpu": "2", "slurm-qos": "bad qos"})
    assert overrides.cpus == 2 and overrides.qos is None
    assert len(problems) == 1 and "slurm-qos" in problems[0]


def test_reserved_key_list_is_complete() -> None:
    assert set(RESERVED_KEYS) == {
        "slurm-cpu",
        "slurm-ram",
        "slurm-time",
        "slurm-partition",
        "slurm-qos",
        "slurm-account",
        "slurm-gres",
        "slurm-nodes",
        "slurm-ntasks",
        "scheduler_cpu",
        "scheduler_ram",
        "singularity-debug",
        "singularity-writable",
    }
