"""Arrays prepared in forked helper processes while the controller sends others
(``array.prepare_processes``): the same rows, events and SLURM calls as preparing
them in the controller, failures counted where they are sent, a dead helper costs
a cycle and no job. Database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcgear.controller.context import ControllerContext, CycleReport
from hpcgear.controller.sites import SiteRuntime
from hpcgear.scheduler.runner import CompletedCommand
from tests.unit.test_controller_reliability import (
    FakeSlurm,
    _events,
    _row,
    _rt,
    _submitting,
    config_not_json,
)
from tests.unit.test_controller_steps import _project_ids, setup  # noqa: F401

#: Three arrays of two jobs each (one per memory size: arrays share resources).
SIZES = (100, 200, 300)


class NumberedSlurm(FakeSlurm):
    """Each sbatch gets its own SLURM id, as the arrays of one cycle do."""

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 600

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        if argv[0] == "sbatch":
            self.calls.append(tuple(argv))
            self.next_id += 1
            return CompletedCommand(tuple(argv), 0, f"{self.next_id}\n", "", 0.0)
        return super().run(argv, timeout=timeout, input=input)


def _with_helpers(rt: SiteRuntime, n: int) -> SiteRuntime:
    site = dataclasses.replace(rt.site, array=dataclasses.replace(rt.site.array,
                                                                  prepare_processes=n))
    fresh = SiteRuntime(site=site, transport=rt.transport, backend=rt.backend,
                        local_files=True)
    fresh._images_checked.update(rt._images_checked)  # as _rt: no apptainer here
    return fresh


def _three_arrays(ctx: ControllerContext) -> list[list[str]]:
    pid = _project_ids(ctx)["p1"]
    return [[_submitting(ctx, pid, mem_mb=mem) for _ in range(2)] for mem in SIZES]


def _who_prepares(monkeypatch: pytest.MonkeyPatch, log: Path,
                  die_in_helper: bool = False) -> None:
    """Each array's script render appends the pid that rendered it to ``log`` (a
    file: a forked helper's memory is its own); ``die_in_helper`` kills a helper
    there instead."""
    import hpcgear.render as render

    real = render.render_array
    parent = os.getpid()

    def logged(*args: Any, **kw: Any) -> Any:
        if die_in_helper and os.getpid() != parent:
            os._exit(9)
        with log.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(*args, **kw)

    monkeypatch.setattr(render, "render_array", logged)


def _cycle(ctx: ControllerContext, rt: SiteRuntime) -> CycleReport:
    from hpcgear.controller.cycle import submit_pending

    report = CycleReport(site="t")
    submit_pending(ctx, rt, report, None)
    return report


@pytest.mark.parametrize("helpers", [0, 1])
def test_arrays_prepared_by_a_helper_go_out_as_prepared_here(
        setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, helpers: int) -> None:
    ctx, rt = setup
    arrays = _three_arrays(ctx)
    runner = NumberedSlurm()
    frt = _with_helpers(_rt(rt, runner, ctx), helpers)
    log = tmp_path / "pids"
    _who_prepares(monkeypatch, log)
    report = _cycle(ctx, frt)
    assert report.submitted == 6 and not report.errors, report
    pids = [int(x) for x in log.read_text().split()]
    assert len(pids) == 3
    if helpers:
        assert any(p != os.getpid() for p in pids), "no array was prepared by a helper"
    else:
        assert set(pids) == {os.getpid()}
    sbatch = [c for c in runner.calls if c[0] == "sbatch"]
    assert len(sbatch) == 3 and all(c[-1].endswith("array.sbatch") for c in sbatch)
    natives = set()
    for jobs in arrays:
        rows = [_row(ctx, j) for j in jobs]
        assert [r.state for r in rows] == ["queued", "queued"]
        base = {r.native_id.split("_")[0] for r in rows if r.native_id}
        assert len(base) == 1 and len({r.array_id for r in rows}) == 1  # one array each
        natives |= {r.native_id for r in rows}
        kinds = [e.kind for e in _events(ctx, jobs[0]) if e.kind in ("sbatch", "state")]
        assert kinds[-2:] == ["sbatch", "state"], kinds
    assert len(natives) == 6
    # the arrays go out in the order they were batched, whoever prepared them
    firsts = [_row(ctx, jobs[0]).native_id for jobs in arrays]
    assert firsts == sorted(firsts, key=lambda n: int(n.split("_")[0]))  # type: ignore[union-attr]


def test_a_task_failed_in_a_helper_is_counted_by_the_controller(
        setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, rt = setup
    arrays = _three_arrays(ctx)
    bad = arrays[0][1]
    config_not_json(ctx, monkeypatch, bad)
    report = _cycle(ctx, _with_helpers(_rt(rt, NumberedSlurm(), ctx), 2))
    failed = _row(ctx, bad)
    assert (failed.state, failed.failure_kind) == ("failed", "input_staging")
    assert report.failed == 1 and report.submitted == 5, report


def test_a_helper_that_dies_costs_a_cycle_and_no_job(
        setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ctx, rt = setup
    arrays = _three_arrays(ctx)
    runner = NumberedSlurm()
    _who_prepares(monkeypatch, tmp_path / "pids", die_in_helper=True)
    report = _cycle(ctx, _with_helpers(_rt(rt, runner, ctx), 1))
    assert any("helper process preparing an array died" in e for e in report.errors), report
    jobs = [j for a in arrays for j in a]
    states = [_row(ctx, j).state for j in jobs]
    assert set(states) <= {"submitting", "queued"}, states
    # the next cycle (prepared here) submits what the dead helper left
    monkeypatch.undo()
    report = _cycle(ctx, _with_helpers(_rt(rt, runner, ctx), 0))
    assert [_row(ctx, j).state for j in jobs] == ["queued"] * 6, report
    sbatch = [c for c in runner.calls if c[0] == "sbatch"]
    assert len(sbatch) == 3  # each array went out once


def test_the_partitions_are_asked_once_before_the_helpers_start(
        setup: tuple[ControllerContext, SiteRuntime],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The partitions' limits every preparation checks are asked by the controller
    before it forks: a helper inherits them instead of running scontrol and sinfo."""
    ctx, rt = setup
    _three_arrays(ctx)
    frt = _with_helpers(_rt(rt, NumberedSlurm(), ctx), 1)
    log = tmp_path / "asked"
    real = frt.backend.partitions

    def asked() -> Any:
        with log.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real()

    monkeypatch.setattr(frt.backend, "partitions", asked)
    pids = tmp_path / "pids"
    _who_prepares(monkeypatch, pids)
    report = _cycle(ctx, frt)
    assert report.submitted == 6 and not report.errors, report
    assert any(int(p) != os.getpid() for p in pids.read_text().split()), "no helper ran"
    assert log.read_text().split() == [str(os.getpid())]
