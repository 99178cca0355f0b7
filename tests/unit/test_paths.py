from __future__ import annotations

import pytest

from hpcgear.errors import InvalidInputError
from hpcgear.hierarchy.paths import (
    HierarchyPath,
    check_file_name,
    check_group_id,
    check_label,
    check_tag,
)


@pytest.mark.parametrize("label", ["sub-01", "ses 1", "T1w MPRAGE", "Ünïcode", "a" * 256])
def test_good_labels(label: str) -> None:
    assert check_label(label) == label


@pytest.mark.parametrize(
    ("label", "needle"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("a\nb", "control"),
        ("tab\there", "control"),
        ("nul\x00", "control"),
        ("esc\x1b[31m", "control"),
        ("x" * 10_000, "characters long"),
        ("..", "may not be"),
        (" padded", "whitespace"),
    ],
)
def test_bad_labels(label: str, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle) as info:
        check_label(label)
    assert info.value.hint


@pytest.mark.parametrize("gid", ["Upper", "-lead", "", "a b", "x" * 65, "a/b"])
def test_bad_group_ids(gid: str) -> None:
    with pytest.raises(InvalidInputError):
        check_group_id(gid)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x\n", "é" * 200])
def test_bad_file_names(name: str) -> None:
    with pytest.raises(InvalidInputError):
        check_file_name(name)


@pytest.mark.parametrize("tag", ["", "a,b", "x" * 65, "new\nline"])
def test_bad_tags(tag: str) -> None:
    with pytest.raises(InvalidInputError):
        check_tag(tag)


def test_path_parsing() -> None:
    hp = HierarchyPath.parse("/g/p/s/")
    assert hp.parts == ("g", "p", "s") and hp.level == "subject" and str(hp) == "g/p/s"
    with pytest.raises(InvalidInputError, match="empty level"):
        HierarchyPath.parse("g//p")
    with pytest.raises(InvalidInputError, match="at most 5"):
        HierarchyPath.parse("a/b/c/d/e/f")
    with pytest.raises(InvalidInputError, match="too short"):
        HierarchyPath.parse("g", min_depth=2)
