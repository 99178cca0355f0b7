"""Preflight: a site config checked against the live cluster, every problem at once.

For each partition: it exists and is up; ``max_time``/``max_mem``/``max_cpus``/
``max_gpus`` do not exceed what SLURM and the real nodes allow; the QOS exists
(``sacctmgr show qos``) and the partition allows it; the account exists among the
service account's associations (``sacctmgr show assoc``) and the partition
allows it; ``sbatch --test-only`` accepts a tiny job. For the site: the runtime
executable runs, scratch is writable by the account jobs run as, and the image
cache exists (or can be made) and is writable. Checks run over the site's
transport, so an SSH site is checked on its login node.
"""

from __future__ import annotations

import posixpath
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcgear.config.settings import Settings
from hpcgear.config.site import PartitionConfig, SiteConfig
from hpcgear.controller.sites import SiteRuntime, connect_site
from hpcgear.errors import HpcgearError
from hpcgear.scheduler.base import PartitionInfo
from hpcgear.units import format_memory, format_slurm_time

__all__ = ["Check", "PreflightReport", "run_site_preflight"]


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: ``ok`` False is a problem that will make jobs fail or pend."""

    what: str
    ok: bool
    message: str


@dataclass
class PreflightReport:
    site: str
    cluster: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)  # site-wide
    partitions: dict[str, list[Check]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        every = [*self.checks, *(c for cs in self.partitions.values() for c in cs)]
        return all(c.ok for c in every)

    @property
    def problems(self) -> list[str]:
        out = [f"{c.what}: {c.message}" for c in self.checks if not c.ok]
        for name, cs in self.partitions.items():
            out.extend(f"partition {name}: {c.message}" for c in cs if not c.ok)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "ok": self.ok,
            "cluster": self.cluster,
            "checks": [asdict(c) for c in self.checks],
            "partitions": [
                {"name": n, "ok": all(c.ok for c in cs), "checks": [asdict(c) for c in cs]}
                for n, cs in self.partitions.items()
            ],
            "problems": self.problems,
        }


def run_site_preflight(site: SiteConfig, settings: Settings) -> PreflightReport:
    """Check ``site`` against the live cluster; never raises for what it finds."""
    rt = connect_site(site, settings)
    report = PreflightReport(site=site.name)
    try:
        report.checks.extend(_runtime_checks(rt))
        if site.scheduler == "slurm":
            _slurm_checks(rt, report)
    finally:
        rt.close()
    return report


# ------------------------------------------------------------------- site-wide


def _runtime_checks(rt: SiteRuntime) -> list[Check]:
    site = rt.site
    out: list[Check] = []
    exe = site.runtime.executable_path
    try:
        res = rt.transport.run([exe, "--version"], timeout=60)
        if res.ok:
            out.append(Check("runtime", True, f"{exe}: {res.stdout.strip()[:80]}"))
        else:
            out.append(Check("runtime", False, f"{exe} --version failed (exit "
                             f"{res.returncode}): {(res.stderr or res.stdout).strip()[:160]}; "
                             "set runtime.executable to the path on the compute nodes"))
    except HpcgearError as exc:
        out.append(Check("runtime", False, f"{exe} cannot run: {exc.message}"))
    user = site.service_user
    scratch = site.render_scratch_root(user)
    out.append(_writable(rt, "scratch", posixpath.join(scratch, "hpcgear"),
                         f"scratch of {user} (the account jobs run as)"))
    out.append(_writable(rt, "image cache", site.runtime.image_cache, "image cache"))
    try:
        sifs = [n for n in rt.transport.listdir(site.runtime.image_cache) if n.endswith(".sif")]
        out.append(Check("image cache", True, f"{len(sifs)} cached image(s)"))
    except (HpcgearError, OSError):
        pass
    return out


def _writable(rt: SiteRuntime, what: str, directory: str, label: str) -> Check:
    probe = posixpath.join(directory, f".hpcgear-preflight-{secrets.token_hex(4)}")
    try:
        rt.transport.mkdir(directory, mode=0o700)
        rt.transport.write_text(probe, "preflight\n")
        rt.transport.run(["rm", "-f", probe], timeout=60)
    except (HpcgearError, OSError) as exc:
        text = exc.message if isinstance(exc, HpcgearError) else str(exc)
        return Check(what, False, f"{label} {directory} is not writable: {text}")
    return Check(what, True, f"{label} {directory} is writable")


# ------------------------------------------------------------------------ SLURM


def _sacctmgr_names(rt: SiteRuntime, argv: list[str]) -> set[str] | None:
    """First column of ``sacctmgr -nP`` output; None when sacctmgr is unavailable."""
    try:
        res = rt.transport.run(["sacctmgr", "-nP", *argv], timeout=60)
    except HpcgearError:
        return None
    if not res.ok:
        return None
    return {line.split("|")[0].strip() for line in res.stdout.splitlines() if line.strip()}


def _slurm_checks(rt: SiteRuntime, report: PreflightReport) -> None:
    site = rt.site
    try:
        info = rt.backend.cluster_info()
        live = {p.name: p for p in rt.backend.partitions()}
    except HpcgearError as exc:
        report.checks.append(Check("slurm", False, f"cannot query SLURM: {exc.message}"))
        return
    report.cluster = {
        "version": info.version,
        "max_array_size": info.max_array_size,
        "accounting": info.accounting_enabled,
    }
    qos_names = _sacctmgr_names(rt, ["show", "qos", "format=Name"])
    accounts = _sacctmgr_names(
        rt, ["show", "assoc", f"user={site.service_user}", "format=Account"])
    if qos_names is None or accounts is None:
        report.checks.append(Check("accounting", True,
                                   "sacctmgr unavailable: QOS and accounts not checked"))
    for name, cfg in site.partitions.items():
        lp = live.get(name)
        if lp is None:
            report.partitions[name] = [Check("exists", False, (
                f"partition {name} does not exist on the cluster "
                f"(it has: {', '.join(sorted(live)) or 'none'})"))]
            continue
        checks = _partition_checks(cfg, lp, site, qos_names, accounts)
        checks.append(_test_only(rt, name, cfg.qos, cfg.account))
        report.partitions[name] = checks


def _partition_checks(
    cfg: PartitionConfig,
    lp: PartitionInfo,
    site: SiteConfig,
    qos_names: set[str] | None,
    accounts: set[str] | None,
) -> list[Check]:
    out: list[Check] = [Check("state", lp.up, f"partition state is {lp.state}")]
    if cfg.max_time_minutes and lp.max_time_minutes and cfg.max_time_minutes > lp.max_time_minutes:
        out.append(Check("max_time", False,
                         f"max_time {format_slurm_time(cfg.max_time_minutes)} exceeds SLURM's "
                         f"MaxTime {format_slurm_time(lp.max_time_minutes)}"))
    node_mem = lp.max_mem_per_node_mb or lp.node_mem_max_mb
    if cfg.max_mem_mb and node_mem and cfg.max_mem_mb > node_mem:
        out.append(Check("max_mem", False, f"max_mem {format_memory(cfg.max_mem_mb)} exceeds "
                         f"the partition's {format_memory(node_mem)} per node"))
    node_cpus = min(x for x in (lp.max_cpus_per_node, lp.node_cpus_max) if x) if (
        lp.max_cpus_per_node or lp.node_cpus_max) else None
    if cfg.max_cpus is not None and node_cpus is not None and cfg.max_cpus > node_cpus:
        out.append(Check("max_cpus", False, f"max_cpus {cfg.max_cpus} exceeds the largest "
                         f"node's {node_cpus} CPUs; such jobs would pend forever"))
    if cfg.max_gpus > 0:
        prefix = (cfg.gres or "gpu").split(":")[0]
        live_gpus = max((_gres_count(g) for g in lp.gres if g.split(":")[0] == prefix),
                        default=0)
        if live_gpus < cfg.max_gpus:
            out.append(Check("gpus", False, f"max_gpus {cfg.max_gpus} but the nodes offer "
                             f"{live_gpus} {prefix} GRES ({', '.join(lp.gres) or 'none'})"))
    if cfg.qos:
        if qos_names is not None and cfg.qos not in qos_names:
            out.append(Check("qos", False, f"QOS {cfg.qos} does not exist "
                             f"(sacctmgr knows: {', '.join(sorted(qos_names)) or 'none'})"))
        elif lp.allow_qos is not None and cfg.qos not in lp.allow_qos and "ALL" not in lp.allow_qos:
            out.append(Check("qos", False, f"the partition does not allow QOS {cfg.qos} "
                             f"(AllowQos={','.join(lp.allow_qos)})"))
    if cfg.account:
        if accounts is not None and cfg.account not in accounts:
            out.append(Check("account", False, (
                f"account {cfg.account} is not one of {site.service_user}'s associations "
                f"({', '.join(sorted(accounts)) or 'none'})")))
        elif cfg.account in lp.deny_accounts or (
                lp.allow_accounts is not None and cfg.account not in lp.allow_accounts
                and "ALL" not in lp.allow_accounts):
            out.append(Check("account", False,
                             f"the partition does not allow account {cfg.account}"))
    return out


def _gres_count(item: str) -> int:
    """Count in a sinfo GRES item: ``gpu:a100:3(S:0-1)`` -> 3, ``gpu`` -> 1."""
    last = item.split("(")[0].split(":")[-1]
    return int(last) if last.isdigit() else 1


def _test_only(rt: SiteRuntime, partition: str, qos: str | None, account: str | None) -> Check:
    lines = [
        "#!/bin/bash",
        f"#SBATCH --partition={partition}",
        "#SBATCH --time=00:01:00",
        "#SBATCH --mem=64M",
        "#SBATCH --job-name=hpcgear-preflight",
    ]
    if qos:
        lines.append(f"#SBATCH --qos={qos}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    lines.append("true")
    text = "\n".join(lines) + "\n"
    site = rt.site
    try:
        if rt.local_files:
            with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as fh:
                fh.write(text)
                path = fh.name
        else:
            root = posixpath.join(site.render_scratch_root(site.service_user), "hpcgear")
            rt.transport.mkdir(root)
            path = posixpath.join(root, "preflight.sbatch")
            rt.transport.write_text(path, text)
        try:
            res = rt.backend.preflight(path)
        finally:
            if rt.local_files:
                Path(path).unlink(missing_ok=True)
    except HpcgearError as exc:
        return Check("sbatch --test-only", False, f"refused: {exc.message}")
    if res.accepted:
        return Check("sbatch --test-only", True, res.message)
    return Check("sbatch --test-only", False, f"refused: {res.message}")
