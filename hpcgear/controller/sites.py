"""Connect a site config to its adapters: transport, scheduler backend, image cache."""

from __future__ import annotations

import logging
import posixpath
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpcgear.config.settings import Settings
from hpcgear.config.site import SiteConfig
from hpcgear.errors import HpcgearError, ImageError
from hpcgear.gears.images import ImageCache, digest_hex
from hpcgear.scheduler.base import Accounting, PartitionInfo, SchedulerBackend, SchedulerStatus
from hpcgear.scheduler.local import LocalBackend
from hpcgear.scheduler.slurm import SlurmBackend
from hpcgear.scheduler.transport import LocalTransport, SSHTransport, Transport
from hpcgear.storage.objects import ObjectStore

logger = logging.getLogger(__name__)

#: How long the live partition limits are trusted before ``scontrol show partition`` again.
PARTITION_CACHE_SECONDS = 300.0


@dataclass
class SiteRuntime:
    """A live connection to one site."""

    site: SiteConfig
    transport: Transport
    backend: SchedulerBackend
    local_files: bool  # True when the site's file systems are this host's
    max_array_size: int | None = None  # live MaxArraySize, read once per connection
    max_job_count: int | None = None  # live MaxJobCount (array tasks count one each)
    # The accounting poll fetched this cycle (native id -> record): stage-out uses
    # it instead of asking sacct again for every job it finishes.
    recent_accounting: dict[str, Accounting] = field(default_factory=dict)
    # ...and the native ids that query asked about (answered or not): not asked again.
    recent_accounting_asked: set[str] = field(default_factory=set)
    # The queue the poll saw this cycle, and the native ids it asked about: the
    # log-keeping step reuses it instead of a second squeue.
    recent_statuses: dict[str, SchedulerStatus] = field(default_factory=dict)
    recent_polled: set[str] = field(default_factory=set)
    _images_checked: set[str] = field(default_factory=set)
    _partitions: tuple[float, list[PartitionInfo]] | None = None

    def live_partitions(self, max_age: float = PARTITION_CACHE_SECONDS) -> list[PartitionInfo]:
        """The cluster's partitions and their limits, asked at most every ``max_age`` s.

        An unanswered query gives an empty list (nothing is refused on a guess).
        """
        now = time.monotonic()
        if self._partitions is not None and now - self._partitions[0] < max_age:
            return self._partitions[1]
        try:
            parts = self.backend.partitions()
        except HpcgearError as exc:
            logger.info("site %s: partition limits unavailable: %s", self.site.name, exc.message)
            return []
        self._partitions = (now, parts)
        return parts

    def close(self) -> None:
        self.transport.close()

    def image_path(self, digest: str) -> str:
        return posixpath.join(self.site.runtime.image_cache, f"sha256-{digest_hex(digest)}.sif")

    def ensure_image(self, store: ObjectStore, digest: str) -> str:
        """The SIF for ``digest`` in the site's cache, filled once (single flight)."""
        if digest in self._images_checked:
            return self.image_path(digest)
        if self.local_files:
            cache = ImageCache(
                Path(self.site.runtime.image_cache),
                runner=self.transport,
                apptainer=self.site.runtime.executable_path,
            )
            path = str(cache.ensure_from_store(store, digest))
        else:
            path = self.image_path(digest)
            if not self.transport.exists(path):
                src = store.path_for(digest)
                if not src.is_file():
                    raise ImageError(
                        f"image {digest[:19]} is not in permanent storage",
                        "rebuild or reinstall the gear (hpcgear gear build / install --image)",
                    )
                self.transport.mkdir(self.site.runtime.image_cache, mode=0o755)
                # A unique temp name, verified on the remote side before the atomic
                # rename: two controllers filling one image at once both end with
                # the same verified bytes under the final name.
                tmp = f"{path}.tmp-{secrets.token_hex(6)}"
                self.transport.put(src, tmp, mode=0o444)
                res = self.transport.run(["sha256sum", tmp], timeout=600)
                got = res.stdout.split()[0] if res.ok and res.stdout.split() else ""
                if f"sha256:{got}" != digest:
                    self.transport.run(["rm", "-f", tmp], timeout=60)
                    raise ImageError(
                        f"image {digest[:19]} arrived corrupt at {tmp} (sha256 {got[:12]})",
                        "check the site's image_cache file system; the next cycle retries",
                    )
                res = self.transport.run(["mv", "-f", tmp, path], timeout=120)
                if res.returncode != 0:
                    raise ImageError(
                        f"could not place image at {path}: {res.stderr.strip()}",
                        "check the site's image_cache directory",
                    )
        self._images_checked.add(digest)
        return path


def connect_site(site: SiteConfig, settings: Settings) -> SiteRuntime:
    transport: Transport
    if site.transport.kind == "ssh":
        assert site.transport.host is not None
        transport = SSHTransport(
            site.transport.host,
            port=site.transport.port,
            user=site.transport.user,
            key_file=site.transport.key_file,
            known_hosts=site.transport.known_hosts,
            prefix_lines=site.modules,
            connect_timeout=site.transport.connect_timeout_seconds,
        )
        local_files = False
    else:
        transport = LocalTransport(prefix_lines=site.modules)
        local_files = True
    backend: SchedulerBackend
    if site.scheduler == "local":
        state_dir = Path(settings.scratch_root).parent / "local-scheduler" / site.name
        backend = LocalBackend(state_dir, kill_wait_seconds=10)
    else:
        backend = SlurmBackend(
            transport,
            query_timeout=float(site.transport.command_timeout_seconds),
            submit_timeout=float(site.transport.command_timeout_seconds),
        )
    return SiteRuntime(site=site, transport=transport, backend=backend, local_files=local_files)
