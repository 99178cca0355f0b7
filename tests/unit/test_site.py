"""Site config schema: loading, file:line errors, forbidden options, shipped examples."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hpcgear.config.data import embedded_site, shipped_dir
from hpcgear.config.schema import SchemaErrors
from hpcgear.config.site import (
    DEFAULT_RETRY,
    FORBIDDEN_SBATCH_OPTIONS,
    SiteConfig,
    check_sbatch_option,
    load_site,
    load_site_text,
    site_as_dict,
    site_schema_json,
)
from hpcgear.config.yamlload import load_yaml_with_lines
from hpcgear.errors import ConfigError, InvalidInputError, ResourceError, SchemaError
from hpcgear.states import FailureKind

REPO = Path(__file__).resolve().parents[2]
DEV_TEMPLATE = REPO / "dev" / "dev-site.yaml.template"
# What dev/cluster.sh substitutes (its defaults), so the template can be validated here.
DEV_VALUES = {
    "@ROOT@": "/var/lib/hpcgear-dev",
    "@APPTAINER@": "/var/lib/hpcgear-dev/bin/apptainer",
    "@PARTITION@": "debug",
    "@NODE@": "devnode",
    "@SSH_PORT@": "2222",
    "@SSH_KEY@": "/var/lib/hpcgear-dev/ssh/id_ed25519",
    "@SSH_KNOWN_HOSTS@": "/var/lib/hpcgear-dev/ssh/known_hosts",
    "@SSH_USER@": "root",
}

MINIMAL = """\
name: testsite
scratch_root: /scratch/{user}
storage_root: /data/hpcgear
runtime:
  image_cache: /data/images
partitions:
  debug: {max_time: 2h, default: true}
"""


def render_dev_template(values: dict[str, str] = DEV_VALUES) -> str:
    text = DEV_TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def load(text: str) -> SiteConfig:
    return load_site_text(textwrap.dedent(text), "site.yaml")


def test_minimal_site_gets_defaults() -> None:
    site = load(MINIMAL)
    assert site.name == "testsite"
    assert site.scheduler == "slurm"
    assert site.transport.kind == "local"
    assert site.runtime.kind == "apptainer"
    assert site.runtime.executable_path == "apptainer"
    assert site.partitions["debug"].max_time_minutes == 120
    assert site.default_partition == "debug"
    assert site.defaults.mem_mb == 2048
    assert site.scratch_gc_age_minutes == 7 * 1440
    assert site.retry_policy(FailureKind.OOM) == DEFAULT_RETRY[FailureKind.OOM]


def test_render_scratch_root_fills_user_and_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "svc")
    owner = load(MINIMAL.replace("/scratch/{user}", "/scratch/{site}/{user}\nscratch_user: owner"))
    assert owner.render_scratch_root("alice") == "/scratch/testsite/alice"
    service = load(MINIMAL.replace("/scratch/{user}", "/scratch/{site}/{user}"))
    assert service.scratch_user == "service"
    assert service.render_scratch_root("alice") == "/scratch/testsite/svc"


def test_ssh_service_account_never_writes_into_a_researchers_scratch() -> None:
    site = load(MINIMAL + "transport: {kind: ssh, host: login.example.edu, user: hpcgear-svc}\n")
    assert site.service_user == "hpcgear-svc"
    assert site.render_scratch_root("alice") == "/scratch/hpcgear-svc"
    owner = load(MINIMAL + "scratch_user: owner\n"
                 "transport: {kind: ssh, host: login.example.edu, user: hpcgear-svc}\n")
    assert owner.render_scratch_root("alice") == "/scratch/alice"
    assert any("scratch_user: owner" in w for w in owner.warnings())


def test_storage_root_is_ignored_with_a_warning() -> None:
    site = load(MINIMAL)
    assert any("storage_root is ignored" in w for w in site.warnings())
    assert not load(MINIMAL.replace("storage_root: /data/hpcgear\n", "")).warnings()


def test_site_defaults_are_checked_against_every_partition() -> None:
    text = MINIMAL + "  quick: {max_time: 30m, max_cpus: 2}\ndefaults: {time: 1h, cpus: 4}\n"
    with pytest.raises(SchemaErrors) as info:
        load_site_text(text, "site.yaml", all_errors=True)
    messages = [e.message for e in info.value.errors]
    assert any("defaults.time 01:00:00 exceeds partition quick's max_time" in m
               for m in messages), messages
    assert any("defaults.cpus 4 exceeds partition quick's max_cpus 2" in m for m in messages)
    assert len(messages) == 2


def test_validate_reports_every_error_at_once() -> None:
    text = (
        "name: x\nbogus: 1\nscratch_root: rel\n"
        "runtime: {image_cache: /i, boot_retries: 99}\n"
        "partitions:\n  a: {max_time: 1h, max_cpus: 0, default: true}\n"
        "  b: {qos: -bad}\n"
    )
    with pytest.raises(SchemaErrors) as info:
        load_site_text(text, "x.yaml", all_errors=True)
    got = [e.message for e in info.value.errors]
    assert [m.split(":")[1] for m in got] == ["2", "3", "4", "6", "7"], got
    assert "unknown key 'bogus'" in got[0]
    assert "boot_retries must be 0..10" in got[2]
    # without all_errors the first problem alone is raised, as before
    with pytest.raises(SchemaError, match="unknown key 'bogus'") as one:
        load_site_text(text, "x.yaml")
    assert not isinstance(one.value, SchemaErrors)


def test_site_as_dict_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    site = load_site(REPO / "site_configs" / "curc-alpine.yaml")
    data = json.loads(json.dumps(site_as_dict(site)))
    assert data["partitions"]["aa100"]["max_gpus"] == 3
    assert data["routing"]["partition_tags"]["gpu"] == "aa100"
    assert data["default_partition"] == "amilan"


@pytest.mark.parametrize("user", ["../root", "a/b", ".hidden", "-x", "", "a b", "x$(id)", "a\nb",
                                  "alice\n"])
def test_render_scratch_root_refuses_unsafe_user(user: str) -> None:
    site = load(MINIMAL)
    with pytest.raises(InvalidInputError, match="user name"):
        site.render_scratch_root(user)


def test_unknown_key_names_file_line_and_valid_keys() -> None:
    text = MINIMAL + "partitons: {}\n"
    with pytest.raises(SchemaError) as info:
        load(text)
    msg = info.value.message
    assert msg.startswith("site.yaml:8: partitons: unknown key 'partitons'")
    assert "valid keys here:" in msg and "partitions" in msg and "scratch_root" in msg
    assert info.value.hint


def test_nested_unknown_key_reports_its_own_line() -> None:
    text = MINIMAL.replace("  debug: {max_time: 2h, default: true}",
                           "  debug:\n    max_time: 2h\n    default: true\n    max_tme: 3h")
    with pytest.raises(SchemaError) as info:
        load(text)
    msg = info.value.message
    assert msg.startswith("site.yaml:10: partitions.debug.max_tme: unknown key")
    for key in ("max_time", "max_mem", "max_cpus", "max_gpus", "qos", "account", "gres"):
        assert key in msg


def test_bad_value_reports_line_and_unit_hint() -> None:
    text = MINIMAL.replace("max_time: 2h", "max_time: two hours")
    with pytest.raises(SchemaError) as info:
        load(text)
    assert info.value.message.startswith("site.yaml:7: partitions.debug.max_time:")
    assert "not a duration" in info.value.message
    assert "2h" in info.value.hint


def test_sexagesimal_time_is_a_string_not_3600() -> None:
    site = load(MINIMAL.replace("max_time: 2h", "max_time: 1:00:00"))
    assert site.partitions["debug"].max_time_minutes == 60
    assert load_yaml_with_lines("a: 1:30\nb: 10\n", "x") == {"a": "1:30", "b": 10}


def test_duplicate_key_is_an_error_with_both_lines() -> None:
    with pytest.raises(SchemaError, match=r"site.yaml:2: duplicate key 'name' .*line 1"):
        load("name: a\nname: b\n")


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(SchemaError, match=r"^site.yaml:\d+: YAML syntax error"):
        load("name: a\n  bad: [\n")


def test_missing_required_key() -> None:
    with pytest.raises(SchemaError, match=r"missing required key 'runtime'"):
        load("name: x\nscratch_root: /s\nscheduler: local\n")


def test_wrong_type_says_what_was_given() -> None:
    with pytest.raises(SchemaError, match=r"site.yaml:7: partitions.debug.max_cpus: expected a "
                                          r"whole number, got a string"):
        load(MINIMAL.replace("default: true", "default: true, max_cpus: many"))


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("/scratch/{usr}", "unknown placeholder"),
        ("scratch/{user}", "not a safe absolute path"),
        ("/scratch/../etc", "'..'"),
        ("/scratch//x", "empty"),
        ("/scratch/my dir/{user}", "not a safe absolute path"),
        ("/scratch/a:b", "not a safe absolute path"),
        ("/scratch/{user}{0}", "unknown placeholder"),
    ],
)
def test_scratch_template_is_checked(template: str, needle: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(needle)) as info:
        load(MINIMAL.replace("/scratch/{user}", template))
    assert info.value.message.startswith("site.yaml:2: scratch_root:")


@pytest.mark.parametrize("option", sorted(FORBIDDEN_SBATCH_OPTIONS))
def test_every_owned_sbatch_option_is_refused_by_name(option: str) -> None:
    text = MINIMAL + f"extra_sbatch_options:\n  - --constraint=ib\n  - --{option}=x\n"
    with pytest.raises(SchemaError) as info:
        load(text)
    assert info.value.message.startswith("site.yaml:10: extra_sbatch_options[1]:")
    assert f"--{option}" in info.value.message


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("-J", "-J (--job-name)"), ("-Jfoo", "-J (--job-name)"), ("-o", "-o (--output)"),
        ("-e", "-e (--error)"), ("-H", "-H (--hold)"), ("--out=/x", "--output"),
        ("--job=x", "--job-name"), ("--exp=ALL", "--export"), ("--parsable", "--parsable"),
        ("--hold", "--hold"), ("--comment=x", "--comment"), ("--export=ALL", "--export"),
    ],
)
def test_owned_options_and_abbreviations_are_named(option: str, named: str) -> None:
    with pytest.raises(SchemaError) as info:
        check_sbatch_option(option)
    assert named in info.value.message


@pytest.mark.parametrize(
    "option",
    ["--constraint=ib", "--mail-type=NONE", "--exclusive", "-Cib", "--licenses=matlab:1",
     "--constraint=skylake&ib", "--reservation=maint_2024"],
)
def test_harmless_extra_options_pass(option: str) -> None:
    check_sbatch_option(option)
    site = load(MINIMAL + f"extra_sbatch_options: [{json.dumps(option)}]\n")
    assert site.extra_sbatch_options == (option,)


@pytest.mark.parametrize(
    "option",
    ["--constraint=a b", "--constraint='ib'", "--mail-user=$(id)", "constraint=ib",
     "--constraint=ib\n#SBATCH --export=ALL", "--x;y=1", "--mail-type=NONE\n", "--exclusive\n"],
)
def test_unsafe_extra_options_are_refused(option: str) -> None:
    with pytest.raises(SchemaError):
        check_sbatch_option(option)


@pytest.mark.parametrize("flag", ["--containall", "--cleanenv", "-e", "--env-file=/x", "--home",
                                  "--writable", "--pwd", "--workdir", "--no-home"])
def test_runtime_flags_that_break_isolation_are_refused(flag: str) -> None:
    text = MINIMAL.replace("  image_cache: /data/images",
                           f"  image_cache: /data/images\n  extra_flags: [{json.dumps(flag)}]")
    with pytest.raises(SchemaError, match=r"site.yaml:6: runtime.extra_flags\[0\]: .*may not set"):
        load(text)


def test_runtime_bind_flag_is_allowed() -> None:
    text = MINIMAL.replace("  image_cache: /data/images",
                           "  image_cache: /data/images\n  extra_flags: [--bind, /projects]")
    assert load(text).runtime.extra_flags == ("--bind", "/projects")


def test_ssh_transport_needs_host() -> None:
    with pytest.raises(SchemaError, match=r"site.yaml:9: transport.kind: .*needs a host"):
        load(MINIMAL + "transport:\n  kind: ssh\n")


def test_local_transport_refuses_ssh_keys() -> None:
    with pytest.raises(SchemaError, match=r"transport.host: host only applies to kind: ssh"):
        load(MINIMAL + "transport:\n  kind: local\n  host: login\n")


def test_transport_kind_literal_lists_choices() -> None:
    with pytest.raises(SchemaError, match=r"transport.kind: 'rsh' is not allowed; choose one of: "
                                          r"local, ssh"):
        load(MINIMAL + "transport: {kind: rsh}\n")


def test_routing_to_unknown_partition() -> None:
    text = MINIMAL + "routing:\n  partition_tags:\n    gpu: aa100\n"
    with pytest.raises(SchemaError) as info:
        load(text)
    assert info.value.message.startswith("site.yaml:10: routing.partition_tags.gpu:")
    assert "unknown partition 'aa100'" in info.value.message
    assert "debug" in info.value.hint


def test_two_default_partitions_are_refused() -> None:
    text = MINIMAL + "  short: {max_time: 10m, default: true}\n"
    with pytest.raises(SchemaError, match="more than one default partition: debug, short"):
        load(text.replace("partitions:\n", "partitions:\n", 1))


def test_several_partitions_need_a_default() -> None:
    text = MINIMAL.replace(", default: true", "") + "  short: {max_time: 10m}\n"
    with pytest.raises(SchemaError, match="no partition is marked default"):
        load(text)


def test_slurm_site_needs_partitions_but_local_does_not() -> None:
    base = MINIMAL.split("partitions:")[0]
    with pytest.raises(SchemaError, match="needs at least one partition"):
        load(base)
    assert load(base + "scheduler: local\n").default_partition is None


def test_retry_kinds_are_checked_and_override_defaults() -> None:
    site = load(MINIMAL + "retry:\n  oom: {max_attempts: 4, mem_factor: 1.5}\n")
    assert site.retry_policy("oom").max_attempts == 4
    assert site.retry_policy("oom").mem_factor == 1.5
    assert site.retry_policy("timeout") == DEFAULT_RETRY[FailureKind.TIMEOUT]
    with pytest.raises(SchemaError, match=r"retry.ooom: unknown failure kind 'ooom'") as info:
        load(MINIMAL + "retry:\n  ooom: {max_attempts: 4}\n")
    assert "boot_failure" in info.value.hint


def test_partition_lookup_names_the_valid_ones() -> None:
    site = load(MINIMAL)
    with pytest.raises(ResourceError, match="has no partition 'gpu'") as info:
        site.partition("gpu")
    assert "debug" in info.value.hint


def test_config_is_frozen() -> None:
    site = load(MINIMAL)
    with pytest.raises(AttributeError):
        site.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        site.partitions["x"] = site.partitions["debug"]  # type: ignore[index]


def test_load_site_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read site config"):
        load_site(tmp_path / "nope.yaml")


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL + "bogus: 1\n")
    with pytest.raises(SchemaError, match=re.escape(f"{path}:8: bogus: unknown key")):
        load_site(path)


def test_json_schema_export_matches_the_dataclasses() -> None:
    schema = site_schema_json()
    json.dumps(schema)  # serialisable
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["required"]) == {"name", "scratch_root", "runtime"}
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert "poll_interval" in props and "scratch_gc_age" in props
    assert props["scheduler"]["enum"] == ["slurm", "local"]
    partition = schema["$defs"]["PartitionConfig"]
    assert set(partition["properties"]) == {"qos", "account", "max_time", "max_mem", "max_cpus",
                                            "max_gpus", "gres", "default", "description"}
    assert partition["properties"]["max_time"]["anyOf"][0]["type"] == ["string", "integer"]
    assert all(p.get("description") for p in props.values())


def _check_against_schema(doc: object, schema: dict[str, Any], root: dict[str, Any],
                          where: str) -> None:
    """A small structural check: keys, nesting and JSON types of ``doc`` fit ``schema``."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                _check_against_schema(doc, option, root, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: no alternative fits: {errors}")
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    py = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kinds:
        ok = any((k == "integer" and isinstance(doc, int) and not isinstance(doc, bool))
                 or (k == "number" and isinstance(doc, int | float) and not isinstance(doc, bool))
                 or (k in py and isinstance(doc, py[k])) for k in kinds)
        assert ok, f"{where}: {doc!r} is not {kinds}"
    if "enum" in schema:
        assert doc in schema["enum"], f"{where}: {doc!r} not in {schema['enum']}"
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in doc.items():
            if key in props:
                _check_against_schema(value, props[key], root, f"{where}.{key}")
            else:
                assert extra is not False, f"{where}: {key} not in the schema"
                if isinstance(extra, dict):
                    _check_against_schema(value, extra, root, f"{where}.{key}")
        for key in schema.get("required", []):
            assert key in doc, f"{where}: required {key} missing"
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            _check_against_schema(item, schema["items"], root, f"{where}[{i}]")


def test_json_schema_describes_the_shipped_examples() -> None:
    import yaml

    schema = site_schema_json()
    docs = [(p.name, yaml.safe_load(p.read_text()))
            for p in sorted(shipped_dir("site_configs").glob("*.yaml"))]
    docs.append(("dev-site.yaml", yaml.safe_load(render_dev_template())))
    for name, doc in docs:
        _check_against_schema(doc, schema, schema, name)
    # and the check itself can fail
    with pytest.raises(AssertionError, match="bogus not in the schema"):
        _check_against_schema({**docs[0][1], "bogus": 1}, schema, schema, "x")
    with pytest.raises(AssertionError, match="is not"):
        _check_against_schema({**docs[0][1], "poll_interval": "often"}, schema, schema, "x")


SHIPPED = sorted(p.name for p in (REPO / "site_configs").glob("*.yaml"))


def test_every_expected_example_is_shipped() -> None:
    assert {"dev.yaml", "curc-alpine.yaml", "curc-blanca.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_site_configs_validate(name: str) -> None:
    site = load_site(REPO / "site_configs" / name)
    assert site.name
    assert site.render_scratch_root("alice").startswith("/")
    if site.scheduler == "slurm":
        assert site.default_partition in site.partitions


def test_curc_examples_have_their_shape() -> None:
    alpine = load_site(REPO / "site_configs" / "curc-alpine.yaml")
    assert alpine.default_partition == "amilan"
    assert alpine.partitions["amilan"].qos is None
    assert alpine.partitions["aa100"].max_gpus > 0
    assert alpine.modules == ("module use /curc/sw/modules/slurm", "module load slurm/alpine")
    assert alpine.scratch_user == "service"
    assert alpine.defaults.time_minutes <= 60  # atesting allows 1h
    assert alpine.routing.partition_tags["gpu"] == "aa100"
    blanca = load_site(REPO / "site_configs" / "curc-blanca.yaml")
    assert blanca.default_partition == "blanca-ics"
    assert blanca.partitions["blanca-ics"].qos == "blanca-ics"
    assert blanca.transport.kind == "ssh" and blanca.transport.host
    assert blanca.render_scratch_root("bob") == "/scratch/blanca/hpcgear-svc"
    assert blanca.modules == ("module use /curc/sw/modules/slurm", "module load slurm/blanca")
    assert blanca.partitions["blanca-ics"].max_cpus == 56
    assert blanca.storage_root is None and alpine.storage_root is None


def test_dev_site_is_local_and_embedded() -> None:
    site = embedded_site()
    assert site.scheduler == "local" and site.transport.kind == "local"
    moved = embedded_site(scratch_root="/home/alice/.local/share/hpcgear/scratch",
                          storage_root="/home/alice/.local/share/hpcgear/storage")
    assert moved.render_scratch_root("alice") == "/home/alice/.local/share/hpcgear/scratch"
    assert moved.storage_root is None  # sites publish to the instance's object store
    with pytest.raises(ConfigError, match="not a safe absolute path"):
        embedded_site(scratch_root="/home/my user/scratch")


def test_dev_template_has_only_known_placeholders_and_validates() -> None:
    raw = DEV_TEMPLATE.read_text()
    assert set(re.findall(r"@[A-Z_]+@", raw)) <= set(DEV_VALUES)
    for needed in ("@ROOT@", "@APPTAINER@", "@PARTITION@"):
        assert needed in raw
    site = load_site_text(render_dev_template(), "dev-site.yaml")
    assert site.scheduler == "slurm" and site.transport.kind == "local"
    assert site.default_partition == "debug"
    assert site.partitions["short"].max_time_minutes == 10
    assert site.runtime.executable == "/var/lib/hpcgear-dev/bin/apptainer"
    assert site.runtime.image_cache == "/var/lib/hpcgear-dev/images"
    assert site.render_scratch_root("root") == "/var/lib/hpcgear-dev/scratch/root"


def test_dev_template_ssh_block_validates_when_enabled() -> None:
    text = render_dev_template()
    ssh_block = re.search(r"^# transport:\n((?:#   .*\n)+)", text, re.M)
    assert ssh_block is not None
    enabled = "transport:\n" + "".join(line[2:] + "\n" for line in
                                       ssh_block.group(1).splitlines())
    text = re.sub(r"^transport:\n  kind: local\n", enabled, text, flags=re.M)
    site = load_site_text(text, "dev-site.yaml")
    assert site.transport.kind == "ssh"
    assert site.transport.port == 2222
    assert site.transport.key_file == "/var/lib/hpcgear-dev/ssh/id_ed25519"
