"""Which site a job runs on: the configured sites plus the embedded local one.

A job goes to the first configured site one of whose routing tags it carries
(e.g. ``hpc``); otherwise to ``default_site`` if set, else to the embedded
``local`` site, which runs the same job script on the controller host.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from hpcgear.config.settings import Settings
from hpcgear.config.site import SiteConfig, load_site, load_site_text
from hpcgear.errors import ConfigError, NotFoundError

LOCAL_SITE = "local"


def embedded_site(settings: Settings) -> SiteConfig:
    """The local site built from the user's settings (scheduler: local)."""
    exe = settings.apptainer or shutil.which("apptainer") or shutil.which("singularity")
    text = (
        f"name: {LOCAL_SITE}\n"
        "scheduler: local\n"
        "scratch_root: /tmp/placeholder\n"
        "storage_root: /tmp/placeholder\n"
        "runtime:\n"
        "  image_cache: /tmp/placeholder\n"
        "  boot_retries: 1\n"
        "  boot_retry_delay_seconds: 2\n"
        "poll_interval: 2\n"
    )
    site = load_site_text(text, source="<embedded local site>")
    site = site.with_roots(
        scratch_root=str(settings.scratch_root),
        storage_root=str(settings.storage_root),
        image_cache=str(settings.image_cache),
    )
    import dataclasses

    if exe:
        site = dataclasses.replace(site, runtime=dataclasses.replace(site.runtime, executable=exe))
    if settings.api_url:  # the local site runs jobs on this host: the API is where it is
        site = dataclasses.replace(site, api_url=settings.api_url)
    return site


class SiteRegistry:
    def __init__(self, sites: Sequence[SiteConfig], *, default_site: str | None = None) -> None:
        self.sites: dict[str, SiteConfig] = {}
        for s in sites:
            if s.name in self.sites:
                raise ConfigError(
                    f"two site configs are named {s.name!r}", "give each site a unique name"
                )
            self.sites[s.name] = s
        if default_site is not None and default_site not in self.sites:
            raise ConfigError(
                f"default_site {default_site!r} is not a configured site",
                f"sites: {', '.join(sorted(self.sites))}",
            )
        self.default_site = default_site

    @classmethod
    def from_settings(cls, settings: Settings) -> SiteRegistry:
        sites = [embedded_site(settings)]
        for path in settings.sites:
            if not Path(path).exists():
                raise ConfigError(
                    f"site config {path} (from {settings.config_path}) is missing",
                    "fix the `sites:` list in the config file",
                )
            sites.append(load_site(path))
        return cls(sites, default_site=settings.default_site)

    def get(self, name: str) -> SiteConfig:
        try:
            return self.sites[name]
        except KeyError:
            raise NotFoundError(
                f"no site named {name!r}", f"sites: {', '.join(sorted(self.sites))}"
            ) from None

    def route(self, tags: Sequence[str]) -> SiteConfig:
        for site in self.sites.values():
            if site.name != LOCAL_SITE and site.routes_here(tags):
                return site
        if self.default_site:
            return self.sites[self.default_site]
        return self.sites[LOCAL_SITE]
