from __future__ import annotations

import pytest

from hpcgear.errors import ResourceError
from hpcgear.units import (
    format_memory,
    format_slurm_time,
    parse_count,
    parse_memory_mb,
    parse_time_minutes,
)


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("16G", 16384),
        ("16GB", 16384),
        ("1.5 GiB", 1536),
        ("512M", 512),
        ("512", 512),
        (2048, 2048),
        ("1T", 1048576),
        ("100K", 1),
    ],
)
def test_memory(text: str | int, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize("text", ["", "abc", "16X", "-1G", "0", True, "99999T"])
def test_bad_memory(text: object) -> None:
    with pytest.raises(ResourceError):
        parse_memory_mb(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("90", 90),
        ("2h", 120),
        ("1h30m", 90),
        ("45s", 1),
        ("1-12:00:00", 2160),
        ("1-2", 1560),
        ("02:30:00", 150),
        ("10:30", 11),
        ("1d12h", 2160),
        (30, 30),
    ],
)
def test_time(text: str | int, minutes: int) -> None:
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "soon", "2x", "0", "h2", "1h junk", False])
def test_bad_time(text: object) -> None:
    with pytest.raises(ResourceError):
        parse_time_minutes(text)  # type: ignore[arg-type]


def test_format_roundtrip() -> None:
    assert format_slurm_time(2190) == "1-12:30:00"
    assert format_slurm_time(59) == "00:59:00"
    assert parse_time_minutes(format_slurm_time(4321)) == 4321
    assert format_memory(16384) == "16G" and format_memory(1500) == "1500M"
    assert parse_count("4", what="cpus") == 4
    with pytest.raises(ResourceError):
        parse_count("four", what="cpus")
