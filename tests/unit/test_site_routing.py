"""Which site a job goes to: site-name tags, most routing tags, first listed, default."""

from __future__ import annotations

import pytest

from hpcgear.config.site import SiteConfig, load_site_text
from hpcgear.errors import ResourceError
from hpcgear.jobs.sites import SiteRegistry

pytestmark = pytest.mark.unit


def site(name: str, tags: str) -> SiteConfig:
    return load_site_text(
        f"name: {name}\nscratch_root: /scratch/{{user}}\nruntime: {{image_cache: /i}}\n"
        f"partitions:\n  p: {{default: true}}\nrouting: {{site_tags: [{tags}]}}\n",
        f"{name}.yaml",
    )


@pytest.fixture
def reg() -> SiteRegistry:
    local = load_site_text(
        "name: local\nscheduler: local\nscratch_root: /s\nruntime: {image_cache: /i}\n", "l")
    return SiteRegistry([local, site("curc-blanca", "hpc, blanca"),
                         site("curc-alpine", "hpc, alpine")])


def test_more_matching_tags_win_over_the_first_listed(reg: SiteRegistry) -> None:
    choice = reg.choose(["hpc", "alpine"])
    assert choice.site.name == "curc-alpine" and choice.notes == ()


def test_a_shared_tag_alone_goes_to_the_first_listed_with_a_note(reg: SiteRegistry) -> None:
    choice = reg.choose(["hpc"])
    assert choice.site.name == "curc-blanca"
    assert "also route to curc-alpine" in choice.notes[0]
    assert reg.shared_tags() == {"hpc": ["curc-blanca", "curc-alpine"]}
    assert "tag 'hpc' routes to sites curc-blanca, curc-alpine" in reg.shared_tags_warnings()[0]


def test_a_site_name_tag_wins(reg: SiteRegistry) -> None:
    assert reg.route(["hpc", "blanca", "curc-alpine"]).name == "curc-alpine"
    with pytest.raises(ResourceError, match="name several sites"):
        reg.route(["curc-alpine", "curc-blanca"])


def test_no_routing_tag_goes_to_the_local_site(reg: SiteRegistry) -> None:
    assert reg.route(["cpu=4"]).name == "local"
