"""The static DICOM tables agree with pydicom's dictionaries."""

from __future__ import annotations

import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom._uid_dict import UID_dictionary  # noqa: E402
from pydicom.datadict import dictionary_VR, tag_for_keyword  # noqa: E402
from pydicom.uid import UID  # noqa: E402

from hpcgear.ingest.dicom import DEID_INPUT_FIELDS, HEADER_FIELDS, LABEL_FIELDS  # noqa: E402
from hpcgear.ingest.dicom_tags import (  # noqa: E402
    IMPLICIT_VR_LITTLE_ENDIAN,
    KEYWORDS,
    PLAIN_SYNTAXES,
)
from hpcgear.ingest.routing import DEFAULT_FW_FIELDS, DEFAULT_ROUTE_FIELD  # noqa: E402


def test_keywords_match_pydicom() -> None:
    for kw, (tag, vr) in KEYWORDS.items():
        assert tag_for_keyword(kw) == tag, kw
        assert dictionary_VR(tag) == vr, kw


def test_every_field_a_scan_reads_by_default_is_listed() -> None:
    fields = (*DEID_INPUT_FIELDS, *HEADER_FIELDS, *LABEL_FIELDS)
    assert set(fields) | {DEFAULT_ROUTE_FIELD, *DEFAULT_FW_FIELDS} == set(KEYWORDS)


def test_plain_syntaxes_match_pydicom() -> None:
    want = {}
    for uid, entry in UID_dictionary.items():
        ts = UID(uid)
        if entry[1] != "Transfer Syntax" or not ts.is_little_endian or ts.is_deflated:
            continue
        if ts.is_implicit_VR and uid != IMPLICIT_VR_LITTLE_ENDIAN:
            continue
        want[uid] = bool(ts.is_compressed)
    assert want == PLAIN_SYNTAXES
    assert not UID(IMPLICIT_VR_LITTLE_ENDIAN).is_compressed


def test_a_plain_scan_imports_no_pydicom(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    src = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hpcgear.ingest.dicom import scan_dicom\n"
        "from hpcgear.ingest.service import check_dicom_keyword\n"
        "check_dicom_keyword('AccessionNumber', 'routing field')\n"
        f"r = scan_dicom(Path({str(src)!r}), route_fields=('AccessionNumber',), jobs=1)\n"
        "assert len(r.instances) == 1, r\n"
        "print('pydicom' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
