"""DICOM on disk: header scans, study/series grouping, deterministic series zips.

Nothing here touches the database. :func:`scan_dicom` reads headers only
(``stop_before_pixels``, ``defer_size``) in a thread pool and returns one
:class:`DicomInstance` per usable file and one :class:`SkippedFile` (with a
reason code) per file that is not ingested. :func:`build_series_zip` writes one
byte-for-byte reproducible zip per series.

Reason codes: ``not_dicom`` (no DICOM preamble/meta), ``missing_uid`` (no
Study/Series/SOP Instance UID), ``unreadable`` (truncated or corrupt),
``duplicate`` (the same SOP Instance UID in two files; the first by path wins),
``deid_failed`` (the profile could not be applied; the series is not stored).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hpcgear.errors import IngestError
from hpcgear.ingest.dicom_tags import KEYWORDS
from hpcgear.ingest.routing import clean_label
from hpcgear.procs import process_pool

if TYPE_CHECKING:
    # Imported where used: an ingest without de-identification never loads the
    # profile machinery, and one with --jobs 1 no process pool (multiprocessing).
    from concurrent.futures import ProcessPoolExecutor

    from hpcgear.ingest.deid import DeidLog, DeidProfile

logger = logging.getLogger(__name__)

NOT_DICOM = "not_dicom"
MISSING_UID = "missing_uid"
UNREADABLE = "unreadable"
DUPLICATE = "duplicate"
DEID_FAILED = "deid_failed"

DEFER_SIZE = 1024
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o100644 << 16  # regular file, rw-r--r--
ZIP_SUFFIX = ".dicom.zip"
#: zlib level of DEFLATED members. Level 1 against 6, measured (CPU, one core):
#: the bench's 2,000 MR_small copies 0.17 s vs 0.20 s, 71.4% vs 71.1% of the
#: input; pydicom's CT_small 2.1x faster, 63.5% vs 62.6%. Pixel data is mostly
#: noise to deflate, so the higher levels buy almost nothing for their time.
ZIP_LEVEL = 1

try:
    # ISA-L's deflate (python-isal), the same format at its level 1: the bench's
    # 2,000 MR_small copies (20 MB) in 0.105 s against zlib's 0.48 s on one core,
    # 73.1% of the input against 71.4%. A zip is identified by its members'
    # sha256 (``members_sha256``), so another deflater never makes a new version.
    from isal import isal_zlib as _deflater
except ImportError:  # pragma: no cover - a platform without an isal wheel
    _deflater = zlib  # type: ignore[misc,assignment,unused-ignore]


def raw_deflate(data: bytes) -> bytes:
    """``data`` as one raw deflate stream (a zip member's body), level :data:`ZIP_LEVEL`."""
    return _deflater.compress(data, ZIP_LEVEL, wbits=-15)


def zlib_raw_deflate(data: bytes) -> bytes:
    """:func:`raw_deflate` with zlib, as ``zipfile`` writes it (compress, then flush)."""
    compressor = zlib.compressobj(ZIP_LEVEL, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


#: Header fields copied (after de-identification) into acquisition and file info,
#: and the classifier's input. Nothing here names or dates a person except the
#: study/series dates, which a profile can shift or remove.
HEADER_FIELDS: tuple[str, ...] = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "MagneticFieldStrength",
    "ReceiveCoilName",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "ImageType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "EchoTrainLength",
    "EchoNumbers",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelSpacing",
    "PixelBandwidth",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "AcquisitionMatrix",
    "InPlanePhaseEncodingDirection",
    "NumberOfTemporalPositions",
    "DiffusionBValue",
    "ContrastBolusAgent",
    "BodyPartExamined",
    "PatientPosition",
    "ImageOrientationPatient",
    "SeriesNumber",
    "AcquisitionNumber",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "SOPClassUID",
)
#: Read for labels and natural keys (after de-identification), not stored as info.
LABEL_FIELDS: tuple[str, ...] = (
    "PatientID",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "PatientBirthDate",
)
UID_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file that was not ingested, with a reason code and a human detail."""

    path: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class DicomInstance:
    """One readable DICOM file: its original UIDs (for grouping), the stored UIDs
    (after de-identification; natural keys), routing values read before
    de-identification and curated header fields read after it."""

    path: Path
    rel: str
    size: int
    study_uid: str
    series_uid: str
    sop_uid: str
    study_key: str
    series_key: str
    sop_key: str
    instance_number: int | None
    series_number: int | None
    compressed: bool
    routing: dict[str, str | None] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    fallback_subject: str | None = None
    fallback_session: str | None = None
    #: classified from the header before de-identification (the result is a fixed
    #: vocabulary, never a header value), so a profile that removes
    #: SeriesDescription does not blind the classifier
    classification: dict[str, list[str]] | None = None

    @property
    def sort_key(self) -> tuple[bool, int, str]:
        n = self.instance_number
        return (n is None, n if n is not None else 0, self.sop_uid)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``done`` of ``total`` units (files when scanning, instances when storing)."""

    phase: str  # "scan" | "store"
    done: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


# --------------------------------------------------------------- file listing


def list_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (symlinked directories are not followed), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise IngestError(f"{root} is not a directory", "give the folder that holds the data")
    out: list[Path] = []
    _list_into(root, out)
    return out


def _list_into(folder: Path, out: list[Path]) -> None:
    # os.walk's order (a folder's files, then its subfolders, each sorted by
    # name), but the entries' types come from the directory listing itself:
    # no stat per file (DirEntry.is_file follows symlinks, as Path.is_file
    # does), only one per symbolic link. A folder that cannot be listed is
    # skipped, as os.walk skips it.
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    subfolders: list[str] = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.name)
            elif entry.is_file():
                out.append(folder / entry.name)
        except OSError:
            continue
    for name in subfolders:
        _list_into(folder / name, out)


def relative(path: Path, root: Path, root_is_dir: bool | None = None) -> str:
    """``path`` as named in reports: relative to ``root`` (``root_is_dir``, when the
    caller knows it, saves a stat per file)."""
    if root_is_dir is None:
        root_is_dir = root.is_dir()
    if not root_is_dir:
        return path.name
    # A file list_files found under ``root`` starts with it: cut the prefix
    # (what relative_to gives, without parsing both paths again).
    text, prefix = str(path), str(root)
    if prefix != os.sep and text.startswith(prefix + os.sep):
        return text[len(prefix) + 1 :]
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------- headers


def json_value(value: Any) -> Any:
    """A pydicom value as JSON-safe data (None for binary and sequences)."""
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.valuerep import PersonName

    if value is None or isinstance(value, (bytes, bytearray, DicomSequence)):
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        items = [json_value(v) for v in value]
        return [v for v in items if v is not None]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, PersonName):
        return str(value)
    text = str(value).replace("\x00", "").strip()
    return text or None


def _get(ds: Any, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value: treat as absent, never crash a scan
        logger.debug("cannot decode %s", keyword, exc_info=True)
        return None


def _text(ds: Any, keyword: str) -> str | None:
    value = json_value(_get(ds, keyword))
    if isinstance(value, list):
        value = "\\".join(str(v) for v in value)
    return str(value) if value not in (None, "") else None


def _int(ds: Any, keyword: str) -> int | None:
    value = json_value(_get(ds, keyword))
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _truncated(fh: Any, ds: Any, size: int) -> str | None:
    """Why a header-only read shows the file is cut short, or None if it looks whole.

    After ``stop_before_pixels`` the file position is at the pixel data element
    (pydicom rewinds to it); a defined length that runs past the end of the file
    is a truncated file. Deferred values past the end show as a position beyond
    the file size; short values as a raw element shorter than its length.
    """
    pos = fh.tell()
    if pos > size:
        return "the file ends inside a data element"
    for elem in ds._dict.values():  # raw elements keep their declared length
        value = getattr(elem, "value", None)
        length = getattr(elem, "length", None)
        if (
            isinstance(value, bytes)
            and isinstance(length, int)
            and length != 0xFFFFFFFF
            and len(value) < length
        ):
            return "the file ends inside a data element"
    if pos >= size:
        return None
    head = fh.read(12)
    if len(head) < 8:
        return "the file ends inside the pixel data element header"
    encoding = getattr(ds, "original_encoding", None) or (
        getattr(ds, "is_implicit_VR", False),
        getattr(ds, "is_little_endian", True),
    )
    implicit, little = bool(encoding[0]), bool(encoding[1])
    end = "<" if little else ">"
    group = struct.unpack(f"{end}H", head[:2])[0]
    if group != 0x7FE0:
        return None
    if implicit:
        length = struct.unpack(f"{end}L", head[4:8])[0]
        header_len = 8
    else:
        if len(head) < 12:
            return "the file ends inside the pixel data element header"
        length = struct.unpack(f"{end}L", head[8:12])[0]
        header_len = 12
    if length == 0xFFFFFFFF:
        # Encapsulated: the sequence delimiter (FFFE,E0DD) must be near the end.
        fh.seek(max(pos, size - 4096))
        tail = fh.read()
        delim = b"\xfe\xff\xdd\xe0" if little else b"\xff\xfe\xe0\xdd"
        return None if delim in tail else "the encapsulated pixel data has no end"
    if pos + header_len + length > size:
        return f"pixel data is cut short ({size - pos - header_len} of {length} bytes)"
    return None


#: Read for de-identification of the fields above (patient age from birth date).
DEID_INPUT_FIELDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "PatientAge",
    "AcquisitionDate",
    "ContentDate",
)


def header_tags(route_fields: Sequence[str], profile: DeidProfile | None) -> list[int]:
    """The tags a header scan parses; every other element is skipped unread.

    Skipping (pydicom's ``specific_tags``) makes scans several times faster, and
    the de-identification of the kept fields only ever needs these.
    """
    keywords = (*DEID_INPUT_FIELDS, *HEADER_FIELDS, *LABEL_FIELDS, *route_fields)
    tags = {tag for _kw, tag, _vr in _keyword_tags(tuple(dict.fromkeys(keywords)))}
    if profile is not None:
        from hpcgear.ingest.deid import profile_tags

        tags.update(profile_tags(profile))
    return sorted(tags)


def read_instance(
    path: Path,
    rel: str,
    *,
    route_fields: Sequence[str],
    profile: DeidProfile | None,
    tags: Sequence[int] | None = None,
    plain_reader: bool = True,
) -> DicomInstance | SkippedFile:
    """Read one file's header (no pixels) into a :class:`DicomInstance`, or say why not.

    Without a profile, a plain file is read by :mod:`hpcgear.ingest.dicom_reader`
    (several times faster than building a pydicom dataset) and anything else by
    pydicom; ``plain_reader=False`` always uses pydicom (the tests compare both).
    """
    wanted = list(tags) if tags is not None else header_tags(route_fields, profile)
    if profile is None and plain_reader:
        plain = _read_plain(path, rel, route_fields, wanted)
        if plain is not None:
            return plain
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True, defer_size=DEFER_SIZE, specific_tags=wanted)
            problem = _truncated(fh, ds, size)
    except InvalidDicomError:
        return SkippedFile(rel, NOT_DICOM, "no DICOM preamble or file meta information")
    except OSError as exc:
        return SkippedFile(rel, UNREADABLE, f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # pydicom raises many types on corrupt input
        return SkippedFile(rel, UNREADABLE, f"corrupt DICOM: {type(exc).__name__}")
    if problem is not None:
        return SkippedFile(rel, UNREADABLE, f"truncated: {problem}")
    if profile is None:
        transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        values = header_values(ds, _plain_keywords(tuple(route_fields)))
        compressed = bool(getattr(transfer, "is_compressed", False))
        return _plain_instance(path, rel, size, values, compressed, route_fields)
    uids = {kw: _text(ds, kw) for kw in UID_FIELDS}
    missing = [kw for kw, v in uids.items() if not v]
    if missing:
        return SkippedFile(rel, MISSING_UID, f"no {', '.join(missing)}")
    routing = {name: _text(ds, name) for name in route_fields}
    classification = None
    if profile is not None:
        from hpcgear.ingest.classifier import classify
        from hpcgear.ingest.deid import apply_profile

        classification = classify({kw: json_value(_get(ds, kw)) for kw in HEADER_FIELDS})
        try:
            apply_profile(ds, profile)  # only the header_tags() elements are here
        except Exception as exc:
            # The exception text may quote a header value: name only its type.
            return SkippedFile(
                rel, DEID_FAILED, f"the profile could not be applied ({type(exc).__name__})"
            )
    header: dict[str, Any] = {}
    for kw in HEADER_FIELDS:
        value = json_value(_get(ds, kw))
        if value not in (None, [], ""):
            header[kw] = value
    keys = {kw: _text(ds, kw) or "" for kw in UID_FIELDS}
    transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return DicomInstance(
        path=path,
        rel=rel,
        size=size,
        study_uid=str(uids["StudyInstanceUID"]),
        series_uid=str(uids["SeriesInstanceUID"]),
        sop_uid=str(uids["SOPInstanceUID"]),
        study_key=keys["StudyInstanceUID"],
        series_key=keys["SeriesInstanceUID"],
        sop_key=keys["SOPInstanceUID"],
        instance_number=_int(ds, "InstanceNumber"),
        series_number=_int(ds, "SeriesNumber"),
        compressed=bool(getattr(transfer, "is_compressed", False)),
        routing=routing,
        header=header,
        fallback_subject=_fallback_subject(ds, profile),
        fallback_session=_fallback_session(ds),
        classification=classification,
    )


@functools.lru_cache(maxsize=64)
def _keyword_tags(keywords: tuple[str, ...]) -> tuple[tuple[str, int, str | None], ...]:
    """(keyword, tag, dictionary VR) of each DICOM keyword (unknown ones left out).

    From :data:`~hpcgear.ingest.dicom_tags.KEYWORDS` where listed, so a plain
    scan with the usual fields does not import pydicom; else from pydicom."""
    out = []
    for kw in keywords:
        known = KEYWORDS.get(kw)
        if known is not None:
            out.append((kw, known[0], known[1]))
            continue
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        tag = tag_for_keyword(kw)
        if tag is not None:
            out.append((kw, int(tag), dictionary_VR(tag)))
    return tuple(out)


def header_values(ds: Any, keywords: Sequence[str]) -> dict[str, Any]:
    """``json_value(ds.get(kw))`` of each keyword, decoded from the raw bytes where
    :func:`~hpcgear.ingest.dicom_values.raw_json_value` can (same result, several
    times faster), through pydicom where it declines. Absent keywords are None."""
    from pydicom.dataelem import RawDataElement

    from hpcgear.ingest.dicom_values import DECLINED, raw_json_value

    elements = {int(tag): elem for tag, elem in ds._dict.items()}
    out: dict[str, Any] = {}
    for kw, tag, dict_vr in _keyword_tags(tuple(keywords)):
        elem = elements.get(tag)
        if elem is None:
            out[kw] = None
            continue
        value: Any = DECLINED
        if isinstance(elem, RawDataElement):
            vr = elem.VR or dict_vr
            if vr != "UN" and " or " not in (vr or " or "):
                value = raw_json_value(vr, elem.value, elem.is_little_endian)
        out[kw] = json_value(_get(ds, kw)) if value is DECLINED else value
    for kw in keywords:
        out.setdefault(kw, None)
    return out


def _text_of(value: Any) -> str | None:
    """:func:`_text` of a value already made JSON-safe."""
    if isinstance(value, list):
        value = "\\".join(str(v) for v in value)
    return str(value) if value not in (None, "") else None


def _int_of(value: Any) -> int | None:
    """:func:`_int` of a value already made JSON-safe."""
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=64)
def _plain_keywords(route_fields: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*HEADER_FIELDS, *LABEL_FIELDS, *route_fields)))


def _read_plain(
    path: Path, rel: str, route_fields: Sequence[str], wanted: Sequence[int]
) -> DicomInstance | SkippedFile | None:
    """The instance read by :mod:`hpcgear.ingest.dicom_reader` (no pydicom
    dataset), or None where that reader or the value decoder defers to pydicom."""
    from hpcgear.ingest.dicom_reader import read_plain_header
    from hpcgear.ingest.dicom_values import DECLINED, cached_json_value

    try:
        head = read_plain_header(path, _tag_set(tuple(wanted)))
    except OSError:
        return None  # pydicom's path words the error
    if head is None:
        return None
    values: dict[str, Any] = {}
    for kw, tag, dict_vr in _keyword_tags(_plain_keywords(tuple(route_fields))):
        raw = head.elements.get(tag)
        if raw is None:
            values[kw] = None
            continue
        vr = raw[0] or dict_vr
        if vr is None or vr == "UN" or " or " in vr:
            return None
        value = cached_json_value(vr, raw[1])
        if value is DECLINED:
            return None
        values[kw] = value
    return _plain_instance(path, rel, head.size, values, head.compressed, route_fields)


@functools.lru_cache(maxsize=64)
def _tag_set(tags: tuple[int, ...]) -> frozenset[int]:
    return frozenset(tags)


def _plain_instance(
    path: Path,
    rel: str,
    size: int,
    values: Mapping[str, Any],
    compressed: bool,
    route_fields: Sequence[str],
) -> DicomInstance | SkippedFile:
    """The :class:`DicomInstance` of a header read without de-identification
    from its values (``json_value`` of each of :func:`_plain_keywords`)."""
    values = {**{kw: None for kw in route_fields}, **values}
    uids = {kw: _text_of(values[kw]) for kw in UID_FIELDS}
    missing = [kw for kw, v in uids.items() if not v]
    if missing:
        return SkippedFile(rel, MISSING_UID, f"no {', '.join(missing)}")
    header = {kw: values[kw] for kw in HEADER_FIELDS if values.get(kw) not in (None, [], "")}
    study, series, sop = (str(uids[kw]) for kw in UID_FIELDS)
    text = {kw: _text_of(values[kw]) for kw in ("StudyDate", "StudyTime", "StudyID")}
    return DicomInstance(
        path=path,
        rel=rel,
        size=size,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        study_key=study,
        series_key=series,
        sop_key=sop,
        instance_number=_int_of(values["InstanceNumber"]),
        series_number=_int_of(values["SeriesNumber"]),
        compressed=compressed,
        routing={name: _text_of(values[name]) for name in route_fields},
        header=header,
        fallback_subject=_cached_label(_text_of(values["PatientID"])),
        fallback_session=_session_from(text["StudyDate"], text["StudyTime"], text["StudyID"]),
        classification=None,
    )


def _fallback_subject(small: Any, profile: DeidProfile | None) -> str | None:
    # Without de-identification the PatientID is the usual subject label. With
    # it, no header value is used (a profile may keep or dummy the PatientID);
    # the ingest service gives an opaque label instead.
    if profile is not None:
        return None
    return clean_label(_text(small, "PatientID"))


def _fallback_session(small: Any) -> str | None:
    return _session_from(
        _text(small, "StudyDate"), _text(small, "StudyTime"), _text(small, "StudyID")
    )


#: :func:`clean_label` remembered: a scan meets the same PatientID in every file
#: of a study (a pure function of the value).
_cached_label = functools.lru_cache(maxsize=4096)(clean_label)


@functools.lru_cache(maxsize=4096)  # the same values in every file of a study
def _session_from(
    study_date: str | None, study_time: str | None, study_id: str | None
) -> str | None:
    # Digits only: old (ACR-NEMA style) headers write 1997.04.24 and 14:04:00.
    date = re.sub(r"\D", "", study_date or "")[:8]
    if date:
        time = re.sub(r"\D", "", (study_time or "").split(".")[0])[:6]
        return clean_label(f"{date}_{time}" if time else date)
    return clean_label(study_id)


T = TypeVar("T")
R = TypeVar("R")


def process_chunksize(items: int, jobs: int) -> int:
    """Items per hand-over to a worker process: few hand-overs, yet every worker busy."""
    return max(1, min(256, items // (jobs * 4)))


#: From this many files on, ``--jobs N`` reads headers in N processes, not threads.
PROCESS_MIN_FILES = 64


@contextmanager
def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    jobs: int,
    name: str,
    *,
    processes: bool = False,
    initializer: Callable[[], None] | None = None,
) -> Iterator[Iterator[R]]:
    """``fn`` over ``items`` in ``jobs`` threads (or processes), results in input order.

    Header parsing is pure Python, so threads share one core under the GIL;
    ``processes=True`` (``fn``, the items and ``initializer`` must pickle)
    spreads it over ``jobs`` cores, items sent in chunks so the hand-over stays
    cheap. ``initializer`` runs once here (forked workers inherit what it
    imported and cached) and once in each worker (for a spawned one, where it
    does the imports). Leaving the block early (an error, Ctrl-C) cancels the
    reads not yet started instead of waiting for thousands of them.
    """
    if initializer is not None:
        initializer()
    if jobs <= 1:
        yield map(fn, items)
        return
    pool: Executor
    chunksize = 1
    if processes:
        pool = process_pool(jobs, initializer)
        chunksize = process_chunksize(len(items), jobs)
    else:
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix=name)
    try:
        yield pool.map(fn, items, chunksize=chunksize)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read_under(
    p: Path,
    *,
    root: Path,
    root_is_dir: bool,
    route_fields: tuple[str, ...],
    profile: DeidProfile | None,
    tags: tuple[int, ...],
) -> DicomInstance | SkippedFile:
    # Module level (not a closure) so a process pool can pickle it.
    rel = relative(p, root, root_is_dir)
    return read_instance(p, rel, route_fields=route_fields, profile=profile, tags=tags)


def _warm_reader(route_fields: tuple[str, ...], profile: DeidProfile | None) -> None:
    """Import the readers and fill their caches once (before the first file).

    Without a profile pydicom is imported only by a file the plain reader
    leaves to it (or a keyword :mod:`~hpcgear.ingest.dicom_tags` lacks)."""
    if profile is not None:
        import pydicom.filereader  # noqa: F401
    else:
        import hpcgear.ingest.dicom_reader
        import hpcgear.ingest.dicom_values  # noqa: F401

        _keyword_tags(_plain_keywords(route_fields))


@dataclass(frozen=True, slots=True)
class ScanResult:
    instances: list[DicomInstance]
    skipped: list[SkippedFile]
    files_seen: int


class StartedScan:
    """A header scan of ``root`` that may already be running while its caller
    does other work; :meth:`collect` gives its :class:`ScanResult`.

    With ``jobs`` > 1 (and at least :data:`PROCESS_MIN_FILES` files) the reads
    are handed to ``jobs`` forked worker processes as soon as the scan is
    started. The CLI starts it before importing the database layer
    (SQLAlchemy and the models take about a quarter of a second), so the
    workers read headers while this process starts up; they stay up after
    the scan for the caller's other work (:attr:`workers`: the ingest builds
    series zips in them) until :meth:`close`. With one job nothing runs before
    :meth:`collect` (one process reads every header then, as before). An
    error of the listing (``root`` not a folder) is raised by :meth:`collect`,
    where the caller reads the result, never earlier; a scan that is not
    collected (the ingest stopped on a permission check, say) is cancelled by
    :meth:`close`.
    """

    def __init__(
        self,
        root: Path,
        *,
        route_fields: Sequence[str],
        profile: DeidProfile | None = None,
        jobs: int = 4,
    ) -> None:
        self.root = Path(root)
        self.route_fields = tuple(route_fields)
        self.profile = profile
        self.jobs = jobs
        self._stack = ExitStack()
        self._files: list[Path] = []
        self._results: Iterator[DicomInstance | SkippedFile] | None = None
        self._error: Exception | None = None
        #: the worker processes of the scan (None when it reads in this process)
        self.workers: ProcessPoolExecutor | None = None
        if jobs > 1:
            self._start()

    def matches(
        self, root: Path, route_fields: Sequence[str], profile: DeidProfile | None, jobs: int
    ) -> bool:
        """Whether this scan reads what ``scan_dicom`` with these arguments would."""
        same_profile = (profile is None and self.profile is None) or (
            profile is not None
            and self.profile is not None
            and profile.sha256 == self.profile.sha256
        )
        return (
            Path(root) == self.root
            and tuple(route_fields) == self.route_fields
            and same_profile
            and jobs == self.jobs
        )

    def _start(self) -> None:
        try:
            self._files = list_files(self.root)
            read = functools.partial(
                _read_under,
                root=self.root,
                root_is_dir=self.root.is_dir(),
                route_fields=self.route_fields,
                profile=self.profile,
                tags=tuple(header_tags(self.route_fields, self.profile)),
            )
            warm = functools.partial(_warm_reader, self.route_fields, self.profile)
            if self.jobs > 1 and len(self._files) >= PROCESS_MIN_FILES:
                warm()  # here, before the fork, so the workers inherit it
                pool = process_pool(self.jobs, warm)
                self._stack.callback(pool.shutdown, wait=True, cancel_futures=True)
                self.workers = pool
                chunksize = process_chunksize(len(self._files), self.jobs)
                self._results = pool.map(read, self._files, chunksize=chunksize)
            else:
                self._results = self._stack.enter_context(
                    parallel_map(read, self._files, self.jobs, "dicom-scan", initializer=warm)
                )
        except Exception as exc:  # raised where the caller collects the result
            self._error = exc

    def collect(self, progress: ProgressCallback | None = None) -> ScanResult:
        """The instances and skipped files, in file order (duplicates skipped)."""
        if self._results is None and self._error is None:
            self._start()
        if self._error is not None:
            raise self._error
        assert self._results is not None
        total = len(self._files)
        instances: list[DicomInstance] = []
        skipped: list[SkippedFile] = []
        seen_sop: dict[tuple[str, str], str] = {}
        try:
            for done, result in enumerate(self._results, start=1):
                if isinstance(result, SkippedFile):
                    skipped.append(result)
                else:
                    key = (result.series_uid, result.sop_uid)
                    if key in seen_sop:
                        skipped.append(
                            SkippedFile(
                                result.rel, DUPLICATE, f"same SOP Instance UID as {seen_sop[key]}"
                            )
                        )
                    else:
                        seen_sop[key] = result.rel
                        instances.append(result)
                if progress is not None:
                    progress(ProgressEvent("scan", done, total))
        except BaseException:
            self.close()
            raise
        return ScanResult(instances, skipped, total)

    def close(self) -> None:
        """Stop the workers (cancelling work not started yet)."""
        self.workers = None
        self._stack.close()

    def __enter__(self) -> StartedScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_scan(
    root: Path,
    *,
    route_fields: Sequence[str],
    profile: DeidProfile | None = None,
    jobs: int = 4,
) -> StartedScan:
    """Start reading every file's header under ``root`` (see :class:`StartedScan`)."""
    return StartedScan(root, route_fields=route_fields, profile=profile, jobs=jobs)


def scan_dicom(
    root: Path,
    *,
    route_fields: Sequence[str],
    profile: DeidProfile | None = None,
    jobs: int = 4,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Read every file's header under ``root`` in ``jobs`` processes (order kept)."""
    with start_scan(root, route_fields=route_fields, profile=profile, jobs=jobs) as scan:
        return scan.collect(progress)


# ------------------------------------------------------------------ grouping


def group_instances(
    instances: Iterable[DicomInstance],
) -> dict[str, dict[str, list[DicomInstance]]]:
    """study UID -> series UID -> instances (sorted by InstanceNumber, then SOP UID).

    Grouping is by header UIDs only, never by folder: one folder may hold
    several series (and studies) and one series may be spread over folders.
    """
    studies: dict[str, dict[str, list[DicomInstance]]] = {}
    for inst in instances:
        studies.setdefault(inst.study_uid, {}).setdefault(inst.series_uid, []).append(inst)
    for series in studies.values():
        for members in series.values():
            members.sort(key=lambda i: i.sort_key)
    return studies


_UNSAFE = re.compile(r"[^\w\-.+()=,@ ]+")


def series_label(series_number: int | None, header: Mapping[str, Any]) -> str:
    """``<SeriesNumber> - <SeriesDescription>`` made safe as a label and file name."""
    desc = next(
        (
            str(header[k])
            for k in ("SeriesDescription", "ProtocolName", "Modality")
            if header.get(k) and isinstance(header.get(k), str)
        ),
        "series",
    )
    cleaned = " ".join(_UNSAFE.sub("_", desc).split())
    cleaned = re.sub(r"_+", "_", cleaned).strip(" ._") or "series"
    cleaned = cleaned[:120]
    return f"{series_number} - {cleaned}" if series_number is not None else cleaned


# ----------------------------------------------------------------------- zip


@dataclass(frozen=True, slots=True)
class BuiltZip:
    path: Path
    members: int
    members_sha256: str  # sha256 over member names and member hashes
    deid: dict[str, Any] | None
    #: original -> new values per instance (only when the profile has deid-log)
    reid: tuple[dict[str, Any], ...] = ()


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")
_END_RECORD = struct.Struct("<4s4H2LH")
#: ZIP_EPOCH as MS-DOS time and date.
_DOS_TIME = ZIP_EPOCH[3] << 11 | ZIP_EPOCH[4] << 5 | ZIP_EPOCH[5] // 2
_DOS_DATE = (ZIP_EPOCH[0] - 1980) << 9 | ZIP_EPOCH[1] << 5 | ZIP_EPOCH[2]
_UTF8_NAME = 0x800
_UNIX = 3
_ZIP_VERSION = 20  # zipfile.DEFAULT_VERSION: what it writes without ZIP64


class PlainZipWriter:
    """Writes a series zip as ``zipfile`` does in :func:`build_series_zip`.

    The same local headers, central directory and end record, for archives
    within the classic format (:meth:`fits`), written in one pass: no header
    written twice (zipfile writes each local header, the member, then seeks
    back to rewrite the header with the CRC and sizes), and none of zipfile's
    per-member objects and locks. Members are deflated by ``deflate``
    (:func:`raw_deflate` unless given); with :func:`zlib_raw_deflate` the bytes
    are zipfile's, byte for byte (``tests/unit/test_ingest_dicom.py`` compares).
    """

    def __init__(self, fh: Any, deflate: Callable[[bytes], bytes] | None = None) -> None:
        self.fh = fh
        self.offset = 0
        self.central: list[bytes] = []
        self.deflate = deflate or raw_deflate

    @staticmethod
    def fits(sizes: Sequence[int]) -> bool:
        """Whether members of these sizes stay clear of every ZIP64 threshold
        zipfile applies (a member over ZIP64_LIMIT / 1.05, offsets and the
        central directory over ZIP64_LIMIT, more than 65,535 entries); the
        margin covers headers and deflate output larger than its input."""
        total = sum(sizes) * 1.05 + 1024 * (len(sizes) + 1)
        return len(sizes) < zipfile.ZIP_FILECOUNT_LIMIT and total < zipfile.ZIP64_LIMIT

    def add(self, name: str, data: bytes, *, deflate: bool) -> None:
        # zipfile.ZipInfo's name rules: cut at a NUL, os.sep as "/".
        name = name.split("\0", 1)[0]
        if os.sep != "/":
            name = name.replace(os.sep, "/")
        try:
            raw_name, flags = name.encode("ascii"), 0
        except UnicodeEncodeError:
            raw_name, flags = name.encode("utf-8"), _UTF8_NAME
        crc = zlib.crc32(data)
        if deflate:
            body = self.deflate(data)
            method = zipfile.ZIP_DEFLATED
        else:
            body, method = data, zipfile.ZIP_STORED
        head = _LOCAL_HEADER.pack(
            b"PK\x03\x04", _ZIP_VERSION, 0, flags, method, _DOS_TIME, _DOS_DATE,
            crc, len(body), len(data), len(raw_name), 0,
        )  # fmt: skip
        entry = _CENTRAL_HEADER.pack(
            b"PK\x01\x02", _ZIP_VERSION, _UNIX, _ZIP_VERSION, 0, flags, method,
            _DOS_TIME, _DOS_DATE, crc, len(body), len(data), len(raw_name), 0, 0, 0, 0,
            ZIP_MODE, self.offset,
        )  # fmt: skip
        self.central.append(entry + raw_name)
        self.fh.write(head + raw_name)
        self.fh.write(body)
        self.offset += len(head) + len(raw_name) + len(body)

    def close(self) -> None:
        directory = b"".join(self.central)
        count = len(self.central)
        self.fh.write(directory)
        self.fh.write(
            _END_RECORD.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), self.offset, 0)
        )



def _read_unchanged(inst: DicomInstance) -> bytes:
    """The bytes of ``inst``'s file, which must still have the size the scan saw.

    One open, one fstat and (for a file that does not grow meanwhile) one read
    of the whole file: a series zip reads every instance of the ingest.
    """
    fd = os.open(inst.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        _check_size(inst, size)
        return read_all(fd, size)
    finally:
        os.close(fd)


def _check_size(inst: DicomInstance, size: int) -> None:
    if size != inst.size:
        raise IngestError(
            f"{inst.rel} changed while it was being ingested ({inst.size} -> {size} bytes)",
            "rerun the ingest once the files are complete",
            transient=True,
        )


def read_all(fd: int, size: int) -> bytes:
    """Everything from ``fd``'s position to the end of the file, ``size`` expected.

    Asks for ``size + 1`` bytes: a file that still has ``size`` bytes left
    gives them in one read; one that grew since (all ``size + 1`` came back)
    or a read that came back short (some filesystems return less than asked)
    is read on to its end, as ``Path.read_bytes`` would.
    """
    chunks = [os.read(fd, size + 1)]
    if len(chunks[0]) == size + 1 or (0 < len(chunks[0]) < size):
        while chunk := os.read(fd, max(size - sum(map(len, chunks)), 0) + 65536):
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _member_bytes(inst: DicomInstance, profile: DeidProfile | None, log: DeidLog | None) -> bytes:
    if profile is None:
        return _read_unchanged(inst)
    _check_size(inst, inst.path.stat().st_size)
    from pydicom import dcmread

    from hpcgear.ingest.deid import apply_profile

    ds = dcmread(inst.path)
    one = apply_profile(ds, profile)
    if log is not None:
        log.merge(one)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def build_series_zip(
    instances: Sequence[DicomInstance],
    dest: Path,
    folder: str,
    profile: DeidProfile | None = None,
) -> BuiltZip:
    """Write one series as a reproducible zip at ``dest``.

    Members are ``<folder>/<SOPInstanceUID>.dcm`` (the stored, possibly hashed
    UID) in InstanceNumber then SOP UID order, each with the 1980-01-01 timestamp,
    mode 0644 and a compression chosen from the data alone (STORED for already
    compressed transfer syntaxes, DEFLATE level :data:`ZIP_LEVEL` otherwise: by
    :func:`raw_deflate`, or zlib for de-identified and ZIP64 series), so the
    same input gives the same bytes. ``members_sha256`` identifies the content independently
    of the zip encoding (a different zlib cannot then make a "new" version).
    """
    log: DeidLog | None = None
    if profile is not None:
        from hpcgear.ingest.deid import new_log

        log = new_log(profile)
    digest_lines = hashlib.sha256()
    ordered = sorted(instances, key=lambda i: i.sort_key)
    # Plain members have the sizes the scan saw (checked as they are read), so
    # whether the archive fits the classic (not ZIP64) format is known before
    # writing; then PlainZipWriter writes what zipfile would, byte for byte, for
    # less. De-identified members are only sized once rewritten: zipfile.
    if profile is None and PlainZipWriter.fits([i.size for i in ordered]):
        with open(dest, "wb") as fh:
            writer = PlainZipWriter(fh)
            for inst in ordered:
                name = f"{folder}/{inst.sop_key}.dcm"
                data = _member_bytes(inst, None, None)
                writer.add(name, data, deflate=not inst.compressed)
                digest_lines.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
            writer.close()
    else:
        with zipfile.ZipFile(dest, "w", allowZip64=True) as zf:
            for inst in ordered:
                name = f"{folder}/{inst.sop_key}.dcm"
                info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
                info.create_system = 3
                info.external_attr = ZIP_MODE
                method = zipfile.ZIP_STORED if inst.compressed else zipfile.ZIP_DEFLATED
                info.compress_type = method
                data = _member_bytes(inst, profile, log)
                zf.writestr(info, data, compress_type=method, compresslevel=ZIP_LEVEL)
                digest_lines.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return BuiltZip(
        path=dest,
        members=len(ordered),
        members_sha256=f"sha256:{digest_lines.hexdigest()}",
        deid=log.to_info() if log is not None else None,
        reid=tuple(log.reid) if log is not None else (),
    )
