"""Static checks run as part of the test command: ruff, mypy --strict, layering."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    res = _run([_tool("ruff"), "check", "hpcgear", "tests", "bench", "containers"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict() -> None:
    res = _run([_tool("mypy")])
    assert res.returncode == 0, res.stdout + res.stderr


def test_layering_contracts() -> None:
    """Adapters never import the DB; only the CLI imports click (import-linter)."""
    res = _run([_tool("lint-imports")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "broken" not in res.stdout.lower().replace("0 broken", "")


def test_click_contract_covers_every_module() -> None:
    """New top-level modules must be added to the 'only the CLI imports click' contract."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    contract = next(
        c for c in cfg["tool"]["importlinter"]["contracts"] if c["name"].startswith("Only the CLI")
    )
    listed = set(contract["source_modules"])
    pkg = REPO / "hpcgear"
    present = {
        f"hpcgear.{p.stem if p.is_file() else p.name}"
        for p in pkg.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem != "__init__")
    } - {"hpcgear.cli", "hpcgear.__main__"}
    assert present - listed == set(), f"add to the click contract: {sorted(present - listed)}"
