"""Routing rules: options > fw:// values > the AccessionNumber convention."""

from __future__ import annotations

import pytest

from hpcgear.errors import InvalidInputError
from hpcgear.ingest.dicom import series_label
from hpcgear.ingest.routing import RoutingRules, compile_pattern, parse_fw_url, route_study

RULES = RoutingRules()


def test_accession_convention() -> None:
    r = route_study({"AccessionNumber": "demo/sub-01/ses-01"}, "g", RULES)
    assert (r.project, r.subject, r.session) == ("demo", "sub-01", "ses-01")
    assert r.sources == {"project": "pattern", "subject": "pattern", "session": "pattern"}
    r = route_study({"AccessionNumber": " demo/sub-01 "}, "g", RULES)
    assert (r.project, r.subject, r.session) == ("demo", "sub-01", None)


def test_fw_value_wins_over_pattern_and_options_win_over_both() -> None:
    values = {
        "AccessionNumber": "other/sub-9/ses-9",
        "StudyComments": "fw://g/demo/sub-01/ses-02",
    }
    r = route_study(values, "g", RULES)
    assert (r.project, r.subject, r.session) == ("demo", "sub-01", "ses-02")
    r = route_study(values, "g", RoutingRules(subject="S", session="L"))
    assert (r.project, r.subject, r.session) == ("demo", "S", "L")
    assert r.sources == {"project": "fw", "subject": "option", "session": "option"}
    # a partial fw:// value leaves the rest to the pattern
    r = route_study({"AccessionNumber": "x/sub-5/ses-5", "PatientComments": "fw://g/demo"},
                    "g", RULES)
    assert (r.project, r.subject, r.session) == ("demo", "sub-5", "ses-5")


def test_fw_value_in_the_route_field_itself() -> None:
    r = route_study({"AccessionNumber": "fw://g/demo/s1"}, "g", RULES)
    assert (r.project, r.subject, r.session) == ("demo", "s1", None)


def test_problems_are_reasons_without_values() -> None:
    r = route_study({"AccessionNumber": "A1234567"}, "g", RULES)
    assert r.project is None
    assert r.problems == ("AccessionNumber does not match the routing pattern",)
    r = route_study({"AccessionNumber": None}, "g", RULES)
    assert r.problems == ("AccessionNumber is empty and no fw:// value was found",)
    r = route_study({"StudyComments": "fw://other/demo/s"}, "g", RULES)
    assert r.project is None and "names group 'other'" in r.problems[0]
    r = route_study({"StudyComments": "fw://g"}, "g", RULES)
    assert "not fw://group/project" in r.problems[0]
    r = route_study({"AccessionNumber": "demo/\x01bad/ses"}, "g", RULES)
    assert r.subject is None and "not a valid label" in r.problems[0]
    assert all("A1234567" not in p for p in r.problems)


def test_custom_field_and_pattern() -> None:
    rules = RoutingRules(field="StudyDescription",
                         pattern=r"^(?P<project>[A-Z]+)_(?P<subject>\d+)$")
    r = route_study({"StudyDescription": "ALPHA_0042"}, "g", rules)
    assert (r.project, r.subject, r.session) == ("ALPHA", "0042", None)
    assert rules.header_fields == ("StudyDescription", "PatientComments", "StudyComments")


def test_bad_patterns() -> None:
    with pytest.raises(InvalidInputError, match="not a valid regular expression"):
        compile_pattern("(")
    with pytest.raises(InvalidInputError, match="no named group"):
        compile_pattern(r"^(\w+)/(\w+)$")


def test_parse_fw_url() -> None:
    assert parse_fw_url("FW://g/p/s/l") == ("g", "p", "s", "l")
    assert parse_fw_url("demo/sub") is None


@pytest.mark.parametrize(
    ("number", "header", "label"),
    [
        (2, {"SeriesDescription": "T/S/C RF FAST PILOT"}, "2 - T_S_C RF FAST PILOT"),
        (700, {"SeriesDescription": "ANGIO Projected from   C"}, "700 - ANGIO Projected from C"),
        (None, {"ProtocolName": "t1 mprage"}, "t1 mprage"),
        (3, {"SeriesDescription": "..\\x\x07y:z"}, "3 - x_y_z"),
        (4, {}, "4 - series"),
        (5, {"Modality": "CT"}, "5 - CT"),
    ],
)
def test_series_labels_are_safe(number: int | None, header: dict[str, str], label: str) -> None:
    assert series_label(number, header) == label


def test_header_reads_of_real_oddities() -> None:
    """Big-endian ACR-NEMA-style dates, JPEG 2000, a DICOMDIR (pydicom's test files)."""
    from pathlib import Path

    import pydicom

    from hpcgear.ingest.dicom import DicomInstance, SkippedFile, read_instance

    data = Path(pydicom.__file__).parent / "data" / "test_files"
    fields = ("AccessionNumber",)
    big = read_instance(data / "ExplVR_BigEnd.dcm", "b", route_fields=fields, profile=None)
    assert isinstance(big, DicomInstance)
    assert big.fallback_session == "19970424_140438"  # from 1997.04.24 / 14:04:38
    jp2 = read_instance(data / "JPEG2000.dcm", "j", route_fields=fields, profile=None)
    assert isinstance(jp2, DicomInstance) and jp2.compressed and not big.compressed
    ddir = read_instance(data / "dicomdirtests" / "DICOMDIR", "d", route_fields=fields,
                         profile=None)
    assert isinstance(ddir, SkippedFile) and ddir.reason == "missing_uid"
    cut = read_instance(data / "rtplan_truncated.dcm", "r", route_fields=fields, profile=None)
    assert isinstance(cut, SkippedFile) and cut.reason == "unreadable"
