"""Which site a job runs on: the configured sites plus the embedded local one.

Precedence, first match wins:

1. a job tag that is a site's *name* (``--tag curc-alpine``);
2. the configured site that shares the *most* routing tags with the job
   (``--tag hpc --tag alpine`` picks the site routing both ``hpc`` and
   ``alpine`` over one routing only ``hpc``);
3. on a tie, the site listed first under ``sites:`` in the config file, with a
   note saying which other sites claim the tag (and a warning logged when the
   registry is built, for every tag two sites claim);
4. ``default_site`` if set, else the embedded ``local`` site, which runs the
   same job script on the controller host.

A job tagged ``hpc`` that no site routes is refused rather than run locally.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcgear.config.settings import Settings
from hpcgear.config.site import SiteConfig, load_site, load_site_text
from hpcgear.errors import ConfigError, InvalidInputError, NotFoundError

LOCAL_SITE = "local"
#: The tag that asks for a cluster site (Flywheel's HPC convention).
HPC_TAG = "hpc"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SiteChoice:
    """The site a job goes to and why (``notes``: warnings for the user)."""

    site: SiteConfig
    reason: str
    notes: tuple[str, ...] = ()


def embedded_site(settings: Settings) -> SiteConfig:
    """The local site built from the user's settings (scheduler: local)."""
    exe = settings.apptainer or shutil.which("apptainer") or shutil.which("singularity")
    text = (
        f"name: {LOCAL_SITE}\n"
        "scheduler: local\n"
        "scratch_root: /tmp/placeholder\n"
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

    def shared_tags(self) -> dict[str, list[str]]:
        """Routing tags claimed by more than one configured site: tag -> site names."""
        owners: dict[str, list[str]] = {}
        for site in self.sites.values():
            if site.name == LOCAL_SITE:
                continue
            for tag in dict.fromkeys(site.routing.site_tags):
                owners.setdefault(tag, []).append(site.name)
        return {t: names for t, names in owners.items() if len(names) > 1}

    def shared_tags_warnings(self) -> list[str]:
        return [
            f"tag {tag!r} routes to sites {', '.join(names)}; a job carrying only it goes "
            f"to {names[0]} (first in `sites:`); add another tag to choose"
            for tag, names in sorted(self.shared_tags().items())
        ]

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
        """The site for a job with ``tags`` (see the module docstring for precedence).

        Raises
        ------
        InvalidInputError
            The job is tagged ``hpc`` but no configured site routes that tag (it
            would otherwise run on the controller host, silently).
        """
        return self.choose(tags).site

    def choose(self, tags: Sequence[str]) -> SiteChoice:
        """Like :meth:`route`, with the reason and any ambiguity notes."""
        wanted = list(dict.fromkeys(tags))
        named = [t for t in wanted if t in self.sites and t != LOCAL_SITE]
        if len(named) > 1:
            from hpcgear.errors import ResourceError

            raise ResourceError(
                f"job tags name several sites: {', '.join(named)}", "keep one site tag"
            )
        if named:
            return SiteChoice(self.sites[named[0]], f"tag {named[0]!r} names the site")
        scored: list[tuple[int, int, SiteConfig]] = []
        for order, site in enumerate(self.sites.values()):
            if site.name == LOCAL_SITE:
                continue
            hits = sum(1 for t in wanted if t in site.routing.site_tags)
            if hits:
                scored.append((-hits, order, site))
        if scored:
            scored.sort(key=lambda x: (x[0], x[1]))
            best_hits, _, best = scored[0]
            tied = [s.name for h, _, s in scored[1:] if h == best_hits]
            matched = [t for t in wanted if t in best.routing.site_tags]
            reason = f"routing tag(s) {', '.join(matched)}"
            notes: tuple[str, ...] = ()
            if tied:
                notes = (
                    f"tag(s) {', '.join(matched)} also route to {', '.join(tied)}; using "
                    f"{best.name} (first in `sites:`); add a tag only one site routes "
                    f"(e.g. --tag {best.name}) to choose",
                )
            return SiteChoice(best, reason, notes)
        chosen = self.sites[self.default_site or LOCAL_SITE]
        if HPC_TAG in wanted and chosen.name == LOCAL_SITE:
            raise InvalidInputError(
                f"the job is tagged {HPC_TAG!r} but no configured site routes {HPC_TAG!r}",
                "add a site whose routing.site_tags lists hpc to `sites:` in the config "
                "(see `hpcgear site show`), or drop the hpc tag to run on this host",
            )
        if self.default_site:
            return SiteChoice(chosen, "default_site")
        return SiteChoice(chosen, "no routing tag (embedded local site)")
