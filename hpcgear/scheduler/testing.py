"""Test doubles at the subprocess boundary: a runner that replays recorded commands.

``RecordedRunner`` answers ``run(argv)`` from a table of argv -> ``CompletedCommand``
(exact argv match, or a callable for dynamic answers) and records every call,
so tests of the SLURM backend (and of the controller on top of it) exercise
the real builders and parsers without a cluster. Fixtures captured from a real
SLURM are JSON files ``{"argv": [...], "returncode": 0, "stdout": "...",
"stderr": "..."}`` (see ``tests/unit/fixtures/slurm/``); ``load_recording`` reads one.

This module is part of the library on purpose (no pytest import): component
tests in other packages use it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgear.errors import TransportError
from hpcgear.scheduler.runner import CompletedCommand

Responder = Callable[[tuple[str, ...], str | None], CompletedCommand]


@dataclass(frozen=True, slots=True)
class Call:
    argv: tuple[str, ...]
    timeout: float
    input: str | None


def completed(argv: Sequence[str], returncode: int = 0, stdout: str = "",
              stderr: str = "") -> CompletedCommand:
    return CompletedCommand(tuple(argv), returncode, stdout, stderr, 0.0)


def load_recording(path: str | Path) -> CompletedCommand:
    """A captured command (JSON with argv, returncode, stdout, stderr)."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return CompletedCommand(tuple(data["argv"]), int(data["returncode"]), data["stdout"],
                            data["stderr"], float(data.get("elapsed", 0.0)))


@dataclass
class RecordedRunner:
    """Replays responses by exact argv; unknown argv raises (tests should be explicit).

    ``responses`` maps an argv tuple to either a ``CompletedCommand``, a list of
    them (served in order, the last one repeats), a ``TransportError`` to raise,
    or a callable ``(argv, input) -> CompletedCommand``.
    """

    responses: dict[tuple[str, ...], Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def add(self, response: CompletedCommand | TransportError | Responder | list[Any],
            argv: Sequence[str] | None = None) -> None:
        if argv is None:
            if not isinstance(response, CompletedCommand):
                raise ValueError("argv is required unless the response is a CompletedCommand")
            argv = response.argv
        self.responses[tuple(argv)] = response

    def add_recordings(self, recordings: Mapping[str, CompletedCommand]) -> None:
        for rec in recordings.values():
            self.add(rec)

    def run(self, argv: Sequence[str], *, timeout: float,
            input: str | None = None) -> CompletedCommand:
        key = tuple(argv)
        self.calls.append(Call(key, timeout, input))
        if key not in self.responses:
            known = "\n  ".join(" ".join(k) for k in self.responses) or "(none)"
            raise AssertionError(f"unexpected command: {' '.join(key)}\nknown:\n  {known}")
        response = self.responses[key]
        if isinstance(response, list):
            response = response.pop(0) if len(response) > 1 else response[0]
        if isinstance(response, TransportError):
            raise response
        if isinstance(response, CompletedCommand):
            return response
        result: CompletedCommand = response(key, input)
        return result

    def commands(self) -> list[str]:
        """The program names called so far, in order (``["squeue", "sacct", ...]``)."""
        return [c.argv[0] for c in self.calls]
