"""Would SLURM ever start this request? Checked against the live partitions before sbatch.

SLURM accepts a job it can never run (more CPUs or memory than any node has)
and leaves it pending forever, or refuses to release it ("Requested partition
configuration not available now"). :func:`request_misfit` says why, in plain
words, from ``scontrol show partition`` + ``sinfo`` facts (:class:`PartitionInfo`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hpcgear.scheduler.base import PartitionInfo
from hpcgear.spec import Resources
from hpcgear.units import format_memory, format_slurm_time


def request_misfit(resources: Resources, partitions: Sequence[PartitionInfo]) -> str | None:
    """Why ``resources`` can never start on these partitions; None when it may."""
    if not partitions:
        return None
    by_name = {p.name: p for p in partitions}
    if resources.partition:
        part = by_name.get(resources.partition)
        if part is None:
            return (
                f"partition {resources.partition} does not exist on the cluster "
                f"(it has {', '.join(sorted(by_name))})"
            )
    else:
        part = next((p for p in partitions if p.default), None)
        if part is None:
            return None
    problems: list[str] = []
    tasks_per_node = math.ceil(max(1, resources.ntasks) / max(1, resources.nodes))
    cpus = resources.cpus * tasks_per_node
    cpu_cap = [c for c in (part.node_cpus_max, part.max_cpus_per_node) if c]
    if cpu_cap and cpus > min(cpu_cap):
        problems.append(f"{cpus} CPUs per node, its nodes have at most {min(cpu_cap)}")
    mem_cap = [m for m in (part.node_mem_max_mb, part.max_mem_per_node_mb) if m]
    if mem_cap and resources.mem_mb > min(mem_cap):
        problems.append(
            f"{format_memory(resources.mem_mb)} memory per node, "
            f"its nodes have at most {format_memory(min(mem_cap))}"
        )
    node_cap = [n for n in (part.max_nodes, part.total_nodes) if n]
    if node_cap and resources.nodes > min(node_cap):
        problems.append(f"{resources.nodes} nodes, it has at most {min(node_cap)}")
    if part.max_time_minutes and resources.time_minutes > part.max_time_minutes:
        problems.append(
            f"a time limit of {format_slurm_time(resources.time_minutes)}, "
            f"its limit is {format_slurm_time(part.max_time_minutes)}"
        )
    if not problems:
        return None
    return f"partition {part.name} can never run it: asks for " + "; ".join(problems)
