"""Preflight: a site config against the live cluster (scontrol + sbatch --test-only)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hpcgear.config.settings import Settings
from hpcgear.config.site import SiteConfig
from hpcgear.controller.sites import connect_site
from hpcgear.errors import HpcgearError
from hpcgear.units import format_memory, format_slurm_time


def run_preflight(site: SiteConfig, settings: Settings) -> dict[str, Any]:
    rt = connect_site(site, settings)
    try:
        info = rt.backend.cluster_info()
        live = {p.name: p for p in rt.backend.partitions()}
        out: dict[str, Any] = {
            "site": site.name,
            "cluster": {
                "version": info.version,
                "max_array_size": info.max_array_size,
                "accounting": info.accounting_enabled,
            },
            "partitions": [],
            "ok": True,
        }
        for name, cfg in site.partitions.items():
            msgs: list[str] = []
            ok = True
            lp = live.get(name)
            if lp is None:
                ok = False
                msgs.append(
                    f"partition {name} does not exist on the cluster "
                    f"(it has: {', '.join(sorted(live)) or 'none'})"
                )
            else:
                if not lp.up:
                    ok = False
                    msgs.append(f"partition state is {lp.state}")
                if (
                    cfg.max_time_minutes
                    and lp.max_time_minutes
                    and cfg.max_time_minutes > lp.max_time_minutes
                ):
                    ok = False
                    msgs.append(
                        f"max_time {format_slurm_time(cfg.max_time_minutes)} exceeds "
                        f"SLURM's MaxTime {format_slurm_time(lp.max_time_minutes)}"
                    )
                node_mem = lp.max_mem_per_node_mb or lp.node_mem_max_mb
                if cfg.max_mem_mb and node_mem and cfg.max_mem_mb > node_mem:
                    ok = False
                    msgs.append(
                        f"max_mem {format_memory(cfg.max_mem_mb)} exceeds the "
                        f"partition's {format_memory(node_mem)}"
                    )
                msgs.append(_test_only(rt, site, name, cfg.qos, cfg.account))
                if msgs[-1].startswith("REFUSED"):
                    ok = False
            out["partitions"].append({"name": name, "ok": ok, "messages": msgs})
            out["ok"] = out["ok"] and ok
        return out
    finally:
        rt.close()


def _test_only(
    rt: Any, site: SiteConfig, partition: str, qos: str | None, account: str | None
) -> str:
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
    try:
        if rt.local_files:
            with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as fh:
                fh.write(text)
                path = fh.name
        else:
            import getpass
            import posixpath

            root = posixpath.join(site.render_scratch_root(getpass.getuser()), "hpcgear")
            rt.transport.mkdir(root)
            path = posixpath.join(root, "preflight.sbatch")
            rt.transport.write_text(path, text)
        res = rt.backend.preflight(path)
        if rt.local_files:
            Path(path).unlink(missing_ok=True)
    except HpcgearError as exc:
        return f"REFUSED: {exc.message}"
    return ("sbatch --test-only: " + res.message) if res.accepted else f"REFUSED: {res.message}"
