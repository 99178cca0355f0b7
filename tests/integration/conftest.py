"""Fixtures for tests that need the real dev cluster (``bash dev/cluster.sh up``).

``dev/cluster.sh up`` writes ``$HPCGEAR_DEV_ROOT/env.sh``; source it before running
these tests. Without it every test that asks for ``dev_env`` is skipped (the root
conftest turns those skips into failures in CI).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

NOT_UP = "dev cluster not up: run `bash dev/cluster.sh up` and `source $HPCGEAR_DEV_ROOT/env.sh`"


@dataclass(frozen=True, slots=True)
class DevEnv:
    """The values ``dev/cluster.sh up`` exports in ``$HPCGEAR_DEV_ROOT/env.sh``."""

    root: Path
    site: Path
    apptainer: Path
    slurm_partition: str
    slurm_node: str
    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_key: Path
    ssh_known_hosts: Path
    smoke_sif: Path
    pg_url: str

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def images(self) -> Path:
        return self.root / "images"


def load_dev_env(environ: Mapping[str, str]) -> DevEnv | None:
    """Read the env.sh values from ``environ``; None if HPCGEAR_DEV_ROOT is unset."""
    root = environ.get("HPCGEAR_DEV_ROOT")
    if not root:
        return None

    def need(name: str) -> str:
        value = environ.get(name)
        if not value:
            pytest.fail(
                f"HPCGEAR_DEV_ROOT is set but {name} is not: source {root}/env.sh "
                "again (re-run `bash dev/cluster.sh up` if it is missing)",
                pytrace=False,
            )
        return value

    return DevEnv(
        root=Path(root),
        site=Path(need("HPCGEAR_DEV_SITE")),
        apptainer=Path(need("HPCGEAR_APPTAINER")),
        slurm_partition=need("HPCGEAR_SLURM_PARTITION"),
        slurm_node=need("HPCGEAR_SLURM_NODE"),
        ssh_host=need("HPCGEAR_SSH_HOST"),
        ssh_port=int(need("HPCGEAR_SSH_PORT")),
        ssh_user=need("HPCGEAR_SSH_USER"),
        ssh_key=Path(need("HPCGEAR_SSH_KEY")),
        ssh_known_hosts=Path(need("HPCGEAR_SSH_KNOWN_HOSTS")),
        smoke_sif=Path(need("HPCGEAR_SMOKE_SIF")),
        pg_url=need("HPCGEAR_PG_URL"),
    )


@pytest.fixture(scope="session")
def dev_env() -> DevEnv:
    env = load_dev_env(os.environ)
    if env is None:
        pytest.skip(NOT_UP)
    return env
