"""Resource resolution: layer precedence, tags, partition choice and limit checks."""

from __future__ import annotations

import textwrap

import pytest

from hpcgear.config.site import SiteConfig, load_site_text
from hpcgear.errors import GearConfigError, ResourceError
from hpcgear.gears.reserved import ResourceOverrides
from hpcgear.jobs.resources import parse_resource_tags, resolve_resources

SITE = textwrap.dedent("""\
    name: cluster
    scratch_root: /scratch/{user}
    storage_root: /data
    runtime: {image_cache: /images}
    partitions:
      cpu:
        max_time: 1-00:00:00
        max_mem: 128G
        max_cpus: 32
        default: true
      gpu:
        qos: gpuqos
        account: gpuacct
        max_time: 12h
        max_mem: 256G
        max_cpus: 64
        max_gpus: 4
        gres: gpu:a100
      long:
        qos: long
        max_time: 7-00:00:00
        max_mem: 64G
        max_cpus: 16
    routing:
      site_tags: [hpc]
      partition_tags: {gpu: gpu, long: long}
    defaults: {cpus: 1, mem: 2G, time: 1h}
    """)


@pytest.fixture
def site() -> SiteConfig:
    return load_site_text(SITE, "cluster.yaml")


def sources(result: object) -> dict[str, str]:
    return {c.field: c.source for c in result.explanation}  # type: ignore[attr-defined]


def test_site_defaults_on_default_partition(site: SiteConfig) -> None:
    res = resolve_resources(site)
    r = res.resources
    assert (r.cpus, r.mem_mb, r.time_minutes, r.gpus, r.gres) == (1, 2048, 60, 0, None)
    assert (r.partition, r.qos, r.account) == ("cpu", None, None)
    src = sources(res)
    assert src["cpus"] == "site default" and src["partition"] == "site default partition"


def test_each_layer_overrides_the_one_below(site: SiteConfig) -> None:
    res = resolve_resources(
        site,
        manifest={"slurm-cpu": "2", "slurm-time": "2h"},
        rule={"slurm-cpu": "4"},
        job={"slurm-cpu": "8", "slurm-time": "3h"},
        tags=["cpu=16"],
    )
    assert res.resources.cpus == 16
    assert res.resources.time_minutes == 180
    src = sources(res)
    assert src["cpus"] == "tag cpu=16"
    assert src["time"] == "job config"
    res = resolve_resources(site, manifest={"slurm-cpu": "2"}, rule={"slurm-cpu": "4"})
    assert res.resources.cpus == 4 and sources(res)["cpus"] == "rule"


def test_slurm_ram_is_per_cpu_times_final_cpus(site: SiteConfig) -> None:
    res = resolve_resources(site, manifest={"slurm-ram": "4G"}, tags=["cpu=6"])
    assert res.resources.mem_mb == 6 * 4096
    assert "4G per CPU x 6" in sources(res)["mem"]


def test_ram_tag_is_per_node_and_wins(site: SiteConfig) -> None:
    res = resolve_resources(site, job={"slurm-ram": "4G", "slurm-cpu": "4"}, tags=["ram=10G"])
    assert res.resources.mem_mb == 10 * 1024
    assert sources(res)["mem"] == "tag ram=10G"


def test_accepts_resource_overrides_objects(site: SiteConfig) -> None:
    res = resolve_resources(site, job=ResourceOverrides(cpus=3, time_minutes=30, writable=True))
    assert res.resources.cpus == 3 and res.resources.time_minutes == 30
    assert res.writable is True and res.debug is None


def test_bad_reserved_key_is_a_gear_config_error(site: SiteConfig) -> None:
    with pytest.raises(GearConfigError, match="slurm-cpu"):
        resolve_resources(site, job={"slurm-cpu": "lots"})


def test_gpu_tag_routes_and_builds_gres(site: SiteConfig) -> None:
    res = resolve_resources(site, tags=["hpc", "gpu=2"])
    r = res.resources
    assert (r.partition, r.gpus, r.gres, r.qos, r.account) == ("gpu", 2, "gpu:a100:2", "gpuqos",
                                                                "gpuacct")
    assert sources(res)["partition"] == "tag routing (gpu=2)"
    assert sources(res)["qos"] == "partition gpu"
    bare = resolve_resources(site, tags=["gpu"]).resources
    assert (bare.gpus, bare.gres) == (1, "gpu:a100:1")


def test_explicit_partition_beats_routing(site: SiteConfig) -> None:
    res = resolve_resources(site, job={"slurm-partition": "cpu"}, tags=["long"])
    assert res.resources.partition == "cpu"
    assert sources(res)["partition"] == "job config"
    with pytest.raises(ResourceError, match=r"gpus 1 .*exceeds the limit 0 of partition long"):
        resolve_resources(site, job={"slurm-partition": "long"}, tags=["gpu", "time=2h"])


def test_partition_tag_beats_config(site: SiteConfig) -> None:
    res = resolve_resources(site, job={"slurm-partition": "long"}, tags=["partition=cpu"])
    assert res.resources.partition == "cpu"
    assert sources(res)["partition"] == "tag partition=cpu"


def test_qos_and_account_override_the_partition(site: SiteConfig) -> None:
    res = resolve_resources(site, job={"slurm-qos": "high", "slurm-account": "lab1"},
                            tags=["gpu"])
    assert (res.resources.qos, res.resources.account) == ("high", "lab1")
    assert sources(res)["qos"] == "job config"


def test_slurm_gres_counts_gpus(site: SiteConfig) -> None:
    res = resolve_resources(site, job={"slurm-gres": "gpu:a100:3", "slurm-partition": "gpu"})
    assert (res.resources.gres, res.resources.gpus) == ("gpu:a100:3", 3)
    # a gpu tag (higher layer) replaces the config's gres
    res = resolve_resources(site, job={"slurm-gres": "gpu:3"}, tags=["gpu=1"])
    assert (res.resources.gres, res.resources.gpus) == ("gpu:a100:1", 1)


def test_two_routing_tags_to_different_partitions_are_ambiguous(site: SiteConfig) -> None:
    with pytest.raises(ResourceError, match="more than one partition") as info:
        resolve_resources(site, tags=["gpu", "long"])
    assert "partition=NAME" in info.value.hint


@pytest.mark.parametrize(
    ("kwargs", "needle", "hint_needle"),
    [
        ({"tags": ["time=2d"]}, "time 2-00:00:00 (from tag time=2d) exceeds the limit "
         "1-00:00:00 of partition cpu on site cluster", "long"),
        ({"tags": ["ram=200G"]}, "mem 200G (from tag ram=200G) exceeds the limit 128G of "
         "partition cpu", "gpu"),
        ({"job": {"slurm-cpu": "48"}}, "cpus 48 (from job config) exceeds the limit 32 of "
         "partition cpu", "gpu"),
        ({"tags": ["gpu=8"]}, "gpus 8 (from tag gpu=8) exceeds the limit 4 of partition gpu",
         "at most 4"),
        ({"tags": ["gpu", "time=13h"]}, "time 13:00:00 (from tag time=13h) exceeds the limit "
         "12:00:00 of partition gpu", "cpu, long"),
    ],
)
def test_requests_above_partition_limits_are_refused(
    site: SiteConfig, kwargs: dict[str, object], needle: str, hint_needle: str
) -> None:
    with pytest.raises(ResourceError) as info:
        resolve_resources(site, **kwargs)  # type: ignore[arg-type]
    assert needle in info.value.message
    assert hint_needle in info.value.hint


def test_unknown_partition_lists_the_site_partitions(site: SiteConfig) -> None:
    with pytest.raises(ResourceError, match="no partition 'bigmem'") as info:
        resolve_resources(site, tags=["partition=bigmem"])
    assert info.value.hint == "partitions on cluster: cpu, gpu, long"


def test_limits_at_the_edge_pass(site: SiteConfig) -> None:
    r = resolve_resources(site, tags=["time=24h", "ram=128G", "cpu=32"]).resources
    assert (r.time_minutes, r.mem_mb, r.cpus) == (1440, 128 * 1024, 32)


def test_explanation_lines_are_readable(site: SiteConfig) -> None:
    lines = resolve_resources(site, manifest={"slurm-cpu": "2"}, tags=["gpu"]).explain()
    assert lines[0].split() == ["partition", "gpu", "from", "tag", "routing", "(gpu)"]
    assert any(line.startswith("cpus") and "gear manifest" in line for line in lines)
    assert any(line.startswith("gres") for line in lines)


def test_local_site_without_partitions(site: SiteConfig) -> None:
    local = load_site_text(
        "name: here\nscheduler: local\nscratch_root: /s\nstorage_root: /d\n"
        "runtime: {image_cache: /i}\n", "local.yaml")
    res = resolve_resources(local, tags=["cpu=64", "time=30d"])
    assert res.resources.partition is None and res.resources.cpus == 64
    with pytest.raises(ResourceError, match="site here has no partition 'gpu'"):
        resolve_resources(local, tags=["partition=gpu"])


@pytest.mark.parametrize(
    ("tag", "needle"),
    [("cpu=", "needs a value"), ("cpu=0", "at least 1"), ("cpu=four", "not a whole number"),
     ("ram=lots", "not a size"), ("time=soon", "not a duration"), ("gpu=x", "not a whole"),
     ("partition=a b", "valid partition"), ("partition=-x", "valid partition"),
     ("qos=$(id)", "valid qos")],
)
def test_malformed_resource_tags_name_the_tag(tag: str, needle: str) -> None:
    with pytest.raises(ResourceError, match=needle) as info:
        parse_resource_tags(["hpc", tag])
    assert repr(tag) in info.value.message


def test_conflicting_tags_are_refused() -> None:
    with pytest.raises(ResourceError, match="different cpus"):
        parse_resource_tags(["cpu=2", "cpus=4"])
    assert parse_resource_tags(["cpu=2", "cpu=2"]).cpus == 2


def test_other_tags_are_ignored() -> None:
    req = parse_resource_tags(["hpc", "needs-review", "study=x", "CPU=3"])
    assert req.cpus == 3 and req.mem_mb is None and req.partition is None


def test_gear_defaults_this_site_lacks_give_way_with_a_warning(site: SiteConfig) -> None:
    gear = {"slurm-partition": "blanca-ics", "slurm-qos": "blanca-ics", "slurm-account": "ics"}
    res = resolve_resources(site, manifest=gear)
    r = res.resources
    assert (r.partition, r.qos, r.account) == ("cpu", None, None)
    assert len(res.notes) == 3
    assert "default partition 'blanca-ics' does not exist on site cluster" in res.notes[0]
    # a gear default the site has is kept, without a note
    kept = resolve_resources(site, manifest={"slurm-partition": "gpu", "slurm-qos": "gpuqos"})
    assert (kept.resources.partition, kept.resources.qos) == ("gpu", "gpuqos")
    assert kept.notes == ()


def test_a_users_explicit_partition_must_still_exist(site: SiteConfig) -> None:
    with pytest.raises(ResourceError, match="has no partition 'blanca-ics'"):
        resolve_resources(site, manifest={"slurm-partition": "gpu"},
                          job={"slurm-partition": "blanca-ics"})


def test_an_empty_config_value_clears_a_gear_default(site: SiteConfig) -> None:
    gear = {"slurm-partition": "gpu", "slurm-qos": "gpuqos"}
    res = resolve_resources(site, manifest=gear, job={"slurm-partition": "", "slurm-qos": ""})
    assert res.resources.partition == "cpu"  # the site default partition
    assert res.resources.qos is None
    # a rule layer clears too; a later layer may set it again
    again = resolve_resources(site, manifest=gear, rule={"slurm-partition": ""},
                              job={"slurm-partition": "long"})
    assert again.resources.partition == "long"


def test_every_exceeded_limit_is_reported_at_once(site: SiteConfig) -> None:
    with pytest.raises(ResourceError) as info:
        resolve_resources(site, tags=["cpu=99", "time=3-00:00:00", "ram=999G"])
    msg = info.value.message
    assert "time 3-00:00:00" in msg and "mem 999G" in msg and "cpus 99" in msg
