"""Parse and format resource units: memory, wall time, CPU counts.

Memory is normalised to MiB per node, time to whole minutes. SLURM's own
spellings are accepted (``16G``, ``512M``, ``1-12:00:00``, ``90``) plus the
friendlier ``2h``, ``30m``, ``1d12h``, ``16GB``, ``1.5 GiB``.
"""

from __future__ import annotations

import datetime as dt
import math
import re

from hpcgear.errors import InvalidInputError, ResourceError

_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_MEM_FACTOR_MB = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024**2, "p": 1024**3}

_SLURM_TIME_RE = re.compile(
    r"(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+(?:\.\d+)?))?(?::(?P<c>\d+(?:\.\d+)?))?"
)
_HUMAN_TIME_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])", re.IGNORECASE)
_HUMAN_FACTOR_S = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}

MAX_MEM_MB = 64 * 1024**2  # 64 TiB: anything above is a typo, not a request
MAX_TIME_MINUTES = 365 * 1440


def parse_memory_mb(value: str | int | float, *, what: str = "memory") -> int:
    """Return MiB for ``value``; bare numbers are MiB, as in SLURM's ``--mem``."""
    if isinstance(value, bool):
        raise ResourceError(
            f"{what} must be a size like 16G, got {value!r}",
            "write sizes as <number><unit>, unit one of K, M, G, T",
        )
    if isinstance(value, int | float):
        mb = float(value)
    else:
        m = _MEM_RE.fullmatch(str(value))
        if not m:
            raise ResourceError(
                f"{what} {value!r} is not a size",
                "write sizes as <number><unit>, e.g. 512M, 16G or 1T (bare numbers are MiB)",
            )
        mb = float(m.group(1)) * _MEM_FACTOR_MB[m.group(2).lower()]
    mb_int = math.ceil(mb)
    if mb_int <= 0:
        raise ResourceError(f"{what} must be positive, got {value!r}", "ask for at least 1M")
    if mb_int > MAX_MEM_MB:
        raise ResourceError(f"{what} {value!r} is larger than any node", "check the unit (M/G/T)")
    return mb_int


def duration_seconds(text: str) -> float | None:
    """Seconds for a SLURM or human duration spelling; None when it is neither.

    The one duration parser of hpcgear (resource requests, SLURM's own output,
    ``--since`` and ``--older-than`` all go through it).

    SLURM forms: ``M``, ``M:S(.mmm)``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``
    (a bare number is minutes, as in ``--time`` and ``MaxTime``).
    Human forms: ``90m``, ``2h``, ``1d12h``, ``1h30m``, ``45s``, ``1w``.
    """
    t = text.strip()
    m = _SLURM_TIME_RE.fullmatch(t)
    if m:
        return _slurm_seconds(m)
    parts = _HUMAN_TIME_RE.findall(t)
    if not parts or _HUMAN_TIME_RE.sub("", t).strip():
        return None
    return sum(float(n) * _HUMAN_FACTOR_S[u.lower()] for n, u in parts)


def parse_time_minutes(value: str | int | float, *, what: str = "time") -> int:
    """Return whole minutes (rounded up) for a SLURM or human time spelling.

    See :func:`duration_seconds` for the spellings; numbers are minutes.
    """
    if isinstance(value, bool):
        raise ResourceError(
            f"{what} must be a duration, got {value!r}",
            "write durations like 2h, 90m or 1-12:00:00",
        )
    if isinstance(value, int | float):
        minutes = float(value)
    else:
        seconds = duration_seconds(str(value))
        if seconds is None:
            raise ResourceError(
                f"{what} {value!r} is not a duration",
                "write durations like 2h, 90m, 1d12h or SLURM's 1-12:00:00",
            )
        minutes = seconds / 60
    result = math.ceil(minutes)
    if result <= 0:
        raise ResourceError(f"{what} must be positive, got {value!r}", "ask for at least 1m")
    if result > MAX_TIME_MINUTES:
        raise ResourceError(f"{what} {value!r} is longer than a year", "check the unit")
    return result


def _slurm_seconds(m: re.Match[str]) -> float:
    days = int(m.group("days") or 0)
    a, b, c = m.group("a"), m.group("b"), m.group("c")
    if m.group("days") is not None:
        # D-H, D-H:M, D-H:M:S
        hours, mins, secs = int(a), float(b or 0), float(c or 0)
    elif c is not None:
        hours, mins, secs = int(a), float(b or 0), float(c)  # H:M:S
    elif b is not None:
        hours, mins, secs = 0, float(a), float(b)  # M:S
    else:
        hours, mins, secs = 0, float(a), 0.0  # M
    return days * 86400 + hours * 3600 + mins * 60 + secs


def parse_count(value: str | int, *, what: str, maximum: int = 100_000) -> int:
    """A positive integer count (CPUs, GPUs, nodes, tasks)."""
    if isinstance(value, bool):
        raise ResourceError(f"{what} must be a whole number, got {value!r}", "e.g. 4")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ResourceError(f"{what} {value!r} is not a whole number", "e.g. 4") from None
    if n < 0 or n > maximum:
        raise ResourceError(f"{what} {n} is out of range", f"use 0..{maximum}")
    return n


def format_slurm_time(minutes: int) -> str:
    """SLURM ``--time`` spelling: ``D-HH:MM:SS`` (or ``HH:MM:SS`` under a day)."""
    days, rem = divmod(minutes, 1440)
    hours, mins = divmod(rem, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    return f"{hours:02d}:{mins:02d}:00"


def format_memory(mb: int) -> str:
    """SLURM ``--mem`` spelling: whole G when exact, else M."""
    if mb % 1024 == 0:
        return f"{mb // 1024}G"
    return f"{mb}M"


_GRES_GPU_RE = re.compile(r"^gpu(?::[A-Za-z0-9_.\-]*[A-Za-z_.\-][A-Za-z0-9_.\-]*)?(?::(\d+))?$")


def gpus_in_gres(gres: str | None) -> int:
    """How many GPUs a GRES string asks for (``gpu`` items; a missing count is 1)."""
    if not gres:
        return 0
    total = 0
    for item in gres.split(","):
        m = _GRES_GPU_RE.fullmatch(item.strip())
        if m:
            total += int(m.group(1) or 1)
    return total


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO date/time (UTC unless it says) or a duration ago (30m, 2h, 7d, 1w)."""
    now = now or dt.datetime.now(dt.UTC)
    t = (text or "").strip()
    ago = duration_seconds(t) if t[-1:].isalpha() else None
    if ago is not None:
        return now - dt.timedelta(seconds=ago)
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise InvalidInputError(
            f"--since {text!r} is neither a time nor a duration",
            "write e.g. --since 2h, --since 7d or --since 2026-01-31T08:00",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
