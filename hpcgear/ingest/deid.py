"""De-identification profiles (Flywheel's YAML shape) applied to pydicom datasets.

A profile looks like the ones imaging centres already feed to Flywheel's CLI::

    name: site-deid
    description: what this profile is for
    dicom:
      date-increment: -17            # days, used by increment-date/-datetime
      patient-age-from-birthdate: true
      patient-age-units: Y           # Y, M or D (default: the largest that fits)
      remove-private-tags: true
      recurse-sequence: false        # also apply field actions inside sequences
      salt: some-secret              # prefixed to values before hashing
      fields:
        - {name: PatientName, remove: true}
        - {name: StationName, replace-with: XXXX}
        - {name: StudyDate, increment-date: true}
        - {name: AccessionNumber, hash: true}
        - {name: StudyInstanceUID, hashuid: true}

Field names are DICOM keywords or tags (``(0010,0010)``, ``00100010``). Unknown
keys anywhere are errors that name the valid keys and the file line.

``hash`` is sha256(salt + value) truncated to 16 hex digits; ``hashuid`` is the
deterministic UID ``2.25.<int of the first 128 bits of sha256(salt + uid)>``, so
the same input always gives the same UID and references stay consistent (and
re-ingesting the same data finds what the first ingest stored).

What was done is summarised as a :class:`DeidLog` (field names and actions, the
profile name and a hash of the profile; never an original value, never the salt
nor the date offset).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgear.config.yamlload import LineMap, LineSeq, load_yaml_with_lines
from hpcgear.errors import SchemaError

logger = logging.getLogger(__name__)

TOP_KEYS = ("name", "description", "version", "dicom")
DICOM_KEYS = (
    "date-increment",
    "patient-age-from-birthdate",
    "patient-age-units",
    "remove-private-tags",
    "recurse-sequence",
    "salt",
    "fields",
)
ACTIONS = (
    "remove",
    "replace-with",
    "increment-date",
    "increment-datetime",
    "hash",
    "hashuid",
    "keep",
)
FIELD_KEYS = ("name", *ACTIONS)
AGE_UNITS = ("Y", "M", "D")

#: Ingest groups instances and finds sessions/acquisitions by these UIDs, so a
#: profile may only keep them or map them deterministically.
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

_HASHABLE_VRS = ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR")
_TAG_RE = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?$")
HASH_LENGTH = 16


@dataclass(frozen=True, slots=True)
class FieldAction:
    """One ``fields`` entry: the tag, its keyword (for the log) and the action."""

    tag: int
    keyword: str
    action: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class DeidProfile:
    """A parsed, validated de-identification profile."""

    name: str
    description: str = ""
    date_increment: int | None = None
    patient_age_from_birthdate: bool = False
    patient_age_units: str | None = None
    remove_private_tags: bool = False
    recurse_sequence: bool = False
    salt: str = ""
    fields: tuple[FieldAction, ...] = ()
    sha256: str = ""  # of the canonical profile without the salt

    def action_for(self, keyword: str) -> FieldAction | None:
        for fa in self.fields:
            if fa.keyword == keyword:
                return fa
        return None

    def hash_value(self, value: str) -> str:
        return hash_value(self.salt, value)

    def hash_uid(self, uid: str) -> str:
        return hash_uid(self.salt, uid)


def hash_value(salt: str, value: str) -> str:
    """sha256(salt + value) as hex, truncated to fit short string VRs (SH is 16)."""
    return hashlib.sha256(f"{salt}{value}".encode()).hexdigest()[:HASH_LENGTH]


def hash_uid(salt: str, uid: str) -> str:
    """A deterministic DICOM UID under the UUID-derived root 2.25 (at most 44 chars)."""
    digest = hashlib.sha256(f"{salt}{uid}".encode()).hexdigest()[:32]
    return f"2.25.{int(digest, 16)}"


def default_profile() -> DeidProfile:
    """What ``--de-identify`` alone applies: remove name, ID and birth date."""
    return build_profile(
        {
            "name": "hpcgear-default",
            "description": "remove PatientName, PatientID and PatientBirthDate",
            "dicom": {
                "fields": [
                    {"name": "PatientName", "remove": True},
                    {"name": "PatientID", "remove": True},
                    {"name": "PatientBirthDate", "remove": True},
                ]
            },
        },
        source="<built-in default profile>",
    )


def load_profile(path: Path) -> DeidProfile:
    """Read and validate a profile file (YAML or JSON).

    Raises
    ------
    SchemaError
        Naming ``file:line`` and the valid keys for any unknown or bad entry.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(
            f"de-identification profile {path} does not exist", "check the --deid-profile path"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(
            f"cannot read de-identification profile {path}: {exc}",
            "give a readable UTF-8 YAML file",
        ) from None
    data = load_yaml_with_lines(text, str(path))
    return build_profile(data, source=str(path), default_name=path.stem)


def _line(node: Any, key: Any = None) -> str:
    if isinstance(node, LineMap):
        return f":{node.key_lines.get(key, node.line)}" if key is not None else f":{node.line}"
    if isinstance(node, LineSeq) and isinstance(key, int) and key < len(node.item_lines):
        return f":{node.item_lines[key]}"
    line = getattr(node, "line", 0)
    return f":{line}" if line else ""


def _check_keys(node: Mapping[Any, Any], valid: tuple[str, ...], where: str, source: str) -> None:
    for key in node:
        if key not in valid:
            raise SchemaError(
                f"{source}{_line(node, key)}: unknown key {key!r} in {where}",
                f"valid keys: {', '.join(valid)}",
            )


def _bool(node: Mapping[Any, Any], key: str, where: str, source: str) -> bool:
    value = node.get(key, False)
    if not isinstance(value, bool):
        raise SchemaError(
            f"{source}{_line(node, key)}: {where}.{key} must be true or false, not {value!r}",
            f"write `{key}: true` or `{key}: false`",
        )
    return value


def resolve_field_name(name: Any, where: str) -> tuple[int, str]:
    """A keyword or tag text -> (tag, keyword); raises ValueError with the reason."""
    from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword

    if isinstance(name, int) and not isinstance(name, bool):
        text = f"{name:08X}"
    elif isinstance(name, str) and name.strip():
        text = name.strip()
    else:
        raise ValueError(f"{where}.name must be a DICOM keyword or tag, not {name!r}")
    tag = tag_for_keyword(text)
    if tag is not None:
        return int(tag), text
    m = _TAG_RE.fullmatch(text.removeprefix("0x").removeprefix("0X"))
    if m is None:
        raise ValueError(f"{where}.name {text!r} is not a DICOM keyword or tag")
    tag = int(m.group(1) + m.group(2), 16)
    if (tag >> 16) % 2 == 1:  # private tags: kept by number
        return tag, f"({m.group(1)},{m.group(2)})".upper()
    if not dictionary_has_tag(tag):
        raise ValueError(f"{where}.name {text!r} is not a tag in the DICOM dictionary")
    return tag, str(keyword_for_tag(tag)) or f"({m.group(1)},{m.group(2)})".upper()


def _vr_of(tag: int) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _field_action(item: Any, index: int, seq: Any, date_increment: Any, source: str) -> FieldAction:
    where = f"dicom.fields[{index}]"
    if not isinstance(item, Mapping):
        raise SchemaError(
            f"{source}{_line(seq, index)}: {where} must be a mapping like "
            "{name: PatientName, remove: true}",
            f"valid keys: {', '.join(FIELD_KEYS)}",
        )
    _check_keys(item, FIELD_KEYS, where, source)
    if "name" not in item:
        raise SchemaError(
            f"{source}{_line(item)}: {where} has no name", "add `name: <DICOM keyword or tag>`"
        )
    try:
        tag, keyword = resolve_field_name(item["name"], where)
    except ValueError as exc:
        raise SchemaError(
            f"{source}{_line(item, 'name')}: {exc}",
            "use a keyword such as PatientName or a tag such as (0010,0010)",
        ) from None
    actions = [k for k in ACTIONS if k in item]
    if len(actions) != 1:
        raise SchemaError(
            f"{source}{_line(item)}: {where} ({keyword}) needs exactly one action, "
            f"has {len(actions)}",
            f"actions: {', '.join(ACTIONS)}",
        )
    action = actions[0]
    value = item[action]
    if action != "replace-with" and value is not True:
        raise SchemaError(
            f"{source}{_line(item, action)}: {where} ({keyword}): {action} must be true",
            f"write `{action}: true`, or leave the field out of the profile",
        )
    vr = _vr_of(tag)
    if keyword in INSTANCE_UIDS and action not in ("hashuid", "keep"):
        raise SchemaError(
            f"{source}{_line(item, action)}: {where}: {keyword} may only be hashuid or keep",
            "ingest groups instances and finds sessions by these UIDs; use `hashuid: true`",
        )
    if action in ("increment-date", "increment-datetime"):
        if date_increment is None:
            raise SchemaError(
                f"{source}{_line(item, action)}: {where} ({keyword}) uses {action} "
                "but dicom.date-increment is not set",
                "add `date-increment: <days>` under dicom",
            )
        allowed = ("DA", "DT") if action == "increment-date" else ("DT",)
        if vr not in allowed:
            raise SchemaError(
                f"{source}{_line(item, action)}: {where}: {keyword} has VR {vr}, "
                f"{action} needs {' or '.join(allowed)}",
                "use remove or replace-with for this field",
            )
    if action == "hashuid" and vr != "UI":
        raise SchemaError(
            f"{source}{_line(item, action)}: {where}: {keyword} has VR {vr}, hashuid needs UI",
            "use hash for text fields",
        )
    if action == "hash" and vr not in _HASHABLE_VRS:
        raise SchemaError(
            f"{source}{_line(item, action)}: {where}: {keyword} has VR {vr}, "
            "which cannot hold a hash",
            f"hash works on {', '.join(_HASHABLE_VRS)}; use remove, replace-with, "
            "increment-date or hashuid",
        )
    if action == "replace-with" and not isinstance(value, (str, int, float, list)):
        raise SchemaError(
            f"{source}{_line(item, action)}: {where} ({keyword}): replace-with needs a "
            f"text, number or list value, not {value!r}",
            "quote the value, e.g. replace-with: 'ANON'",
        )
    return FieldAction(tag=tag, keyword=keyword, action=action, value=value)


def build_profile(data: Any, *, source: str, default_name: str | None = None) -> DeidProfile:
    """Validate a loaded profile document (mapping) into a :class:`DeidProfile`."""
    if not isinstance(data, Mapping):
        raise SchemaError(
            f"{source}: a de-identification profile must be a mapping with a `dicom:` section",
            f"valid top-level keys: {', '.join(TOP_KEYS)}",
        )
    _check_keys(data, TOP_KEYS, "the profile", source)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(
            f"{source}{_line(data, 'name')}: profile name must be a non-empty text",
            "add `name: <profile name>`",
        )
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SchemaError(
            f"{source}{_line(data, 'description')}: description must be text", "quote it"
        )
    dicom = data.get("dicom")
    if dicom is None:
        dicom = {}
    if not isinstance(dicom, Mapping):
        raise SchemaError(
            f"{source}{_line(data, 'dicom')}: `dicom` must be a mapping",
            f"valid keys under dicom: {', '.join(DICOM_KEYS)}",
        )
    _check_keys(dicom, DICOM_KEYS, "dicom", source)
    inc = dicom.get("date-increment")
    if inc is not None and (isinstance(inc, bool) or not isinstance(inc, int)):
        raise SchemaError(
            f"{source}{_line(dicom, 'date-increment')}: dicom.date-increment must be a whole "
            f"number of days, not {inc!r}",
            "e.g. date-increment: -17",
        )
    units = dicom.get("patient-age-units")
    if units is not None and units not in AGE_UNITS:
        raise SchemaError(
            f"{source}{_line(dicom, 'patient-age-units')}: patient-age-units must be one of "
            f"{', '.join(AGE_UNITS)}, not {units!r}",
            "Y = years, M = months, D = days",
        )
    salt = dicom.get("salt", "")
    if not isinstance(salt, str):
        raise SchemaError(
            f"{source}{_line(dicom, 'salt')}: dicom.salt must be text", "quote the salt"
        )
    fields_node = dicom.get("fields") or []
    if not isinstance(fields_node, list):
        raise SchemaError(
            f"{source}{_line(dicom, 'fields')}: dicom.fields must be a list",
            "write each field as `- name: PatientName` followed by its action",
        )
    actions = tuple(
        _field_action(item, i, fields_node, inc, source) for i, item in enumerate(fields_node)
    )
    seen: dict[int, int] = {}
    for i, fa in enumerate(actions):
        if fa.tag in seen:
            raise SchemaError(
                f"{source}{_line(fields_node, i)}: {fa.keyword} is listed twice in dicom.fields "
                f"(entries {seen[fa.tag]} and {i})",
                "give each field one action",
            )
        seen[fa.tag] = i
    profile = DeidProfile(
        name=name.strip(),
        description=description,
        date_increment=inc,
        patient_age_from_birthdate=_bool(dicom, "patient-age-from-birthdate", "dicom", source),
        patient_age_units=units,
        remove_private_tags=_bool(dicom, "remove-private-tags", "dicom", source),
        recurse_sequence=_bool(dicom, "recurse-sequence", "dicom", source),
        salt=salt,
        fields=actions,
    )
    return _with_hash(profile)


def _with_hash(profile: DeidProfile) -> DeidProfile:
    # The salt stays out of the hash: a weak salt could otherwise be brute-forced
    # from the recorded profile hash. ``salted`` in the log says whether one was set.
    canonical = {
        "name": profile.name,
        "description": profile.description,
        "date-increment": profile.date_increment,
        "patient-age-from-birthdate": profile.patient_age_from_birthdate,
        "patient-age-units": profile.patient_age_units,
        "remove-private-tags": profile.remove_private_tags,
        "recurse-sequence": profile.recurse_sequence,
        "fields": [[f"{fa.tag:08X}", fa.action, fa.value] for fa in profile.fields],
    }
    digest = hashlib.sha256(
        json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()
    return DeidProfile(
        name=profile.name,
        description=profile.description,
        date_increment=profile.date_increment,
        patient_age_from_birthdate=profile.patient_age_from_birthdate,
        patient_age_units=profile.patient_age_units,
        remove_private_tags=profile.remove_private_tags,
        recurse_sequence=profile.recurse_sequence,
        salt=profile.salt,
        fields=profile.fields,
        sha256=f"sha256:{digest}",
    )


# ------------------------------------------------------------------ applying


@dataclass(slots=True)
class DeidLog:
    """What a profile did to one or more instances (names only, never values)."""

    profile: str
    profile_sha256: str
    salted: bool
    removed: set[str] = field(default_factory=set)
    replaced: set[str] = field(default_factory=set)
    hashed: set[str] = field(default_factory=set)
    hashuid: set[str] = field(default_factory=set)
    shifted: set[str] = field(default_factory=set)
    added: set[str] = field(default_factory=set)
    private_tags_removed: int = 0

    def merge(self, other: DeidLog) -> None:
        for name in ("removed", "replaced", "hashed", "hashuid", "shifted", "added"):
            getattr(self, name).update(getattr(other, name))
        self.private_tags_removed += other.private_tags_removed

    def to_info(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "profile_sha256": self.profile_sha256,
            "salted": self.salted,
            "removed": sorted(self.removed),
            "replaced": sorted(self.replaced),
            "hashed": sorted(self.hashed),
            "hashuid": sorted(self.hashuid),
            "shifted": sorted(self.shifted),
            "added": sorted(self.added),
            "private_tags_removed": self.private_tags_removed,
        }


def new_log(profile: DeidProfile) -> DeidLog:
    return DeidLog(profile.name, profile.sha256, bool(profile.salt))


def _parse_da(text: str) -> dt.date | None:
    digits = text.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def shift_date(text: str, days: int) -> str | None:
    """Shift a DA value (YYYYMMDD) by ``days``; None when it is not a valid date."""
    d = _parse_da(text)
    if d is None:
        return None
    return (d + dt.timedelta(days=days)).strftime("%Y%m%d")


def shift_datetime(text: str, days: int) -> str | None:
    """Shift the date part of a DT value (YYYYMMDD[HHMMSS[.F]][&ZZXX]) by ``days``."""
    text = text.strip()
    shifted = shift_date(text[:8], days)
    if shifted is None:
        return None
    return shifted + text[8:]


def _values(raw: Any) -> list[str]:
    from pydicom.multival import MultiValue

    if isinstance(raw, (list, MultiValue)):
        return [str(v) for v in raw]
    return [str(raw)] if raw is not None else []


def _set(elem: Any, values: list[str]) -> None:
    elem.value = values if len(values) > 1 else (values[0] if values else "")


def _walk(ds: Any, prefix: str, recurse: bool) -> Iterator[tuple[Any, str]]:
    yield ds, prefix
    if not recurse:
        return
    for elem in list(ds):
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, f"{prefix}{elem.keyword or elem.tag}[{i}].", recurse)


def _patient_age(ds: Any, units: str | None) -> str | None:
    birth = _parse_da(str(ds.get("PatientBirthDate", "") or ""))
    if birth is None:
        return None
    ref = None
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        ref = _parse_da(str(ds.get(kw, "") or ""))
        if ref is not None:
            break
    if ref is None or ref < birth:
        return None
    days = (ref - birth).days
    months = (ref.year - birth.year) * 12 + ref.month - birth.month - (ref.day < birth.day)
    years = months // 12
    amounts = {"Y": years, "M": months, "D": days}
    if units is None:
        unit = "Y" if years >= 1 else ("M" if months >= 1 else "D")
    else:
        # An age too large for the asked unit (over 999) moves up to the next that fits.
        larger = ("D", "M", "Y")[("D", "M", "Y").index(units) :]
        unit = next((u for u in larger if amounts[u] <= 999), "Y")
    return f"{min(amounts[unit], 999):03d}{unit}"


def apply_profile(ds: Any, profile: DeidProfile) -> DeidLog:
    """De-identify a pydicom Dataset in place and return what was done.

    Order: patient age (needs the original dates), private tags, field actions
    (top level, then sequence items when ``recurse-sequence``), then the file
    meta SOP Instance UID follows a hashed SOPInstanceUID, and the dataset is
    marked PatientIdentityRemoved=YES with the profile named in
    DeidentificationMethod.
    """
    log = new_log(profile)
    if profile.patient_age_from_birthdate:
        age = _patient_age(ds, profile.patient_age_units)
        if age is not None:
            (log.replaced if "PatientAge" in ds else log.added).add("PatientAge")
            ds.PatientAge = age
    if profile.remove_private_tags:
        before = sum(1 for _ in ds.iterall())
        ds.remove_private_tags()
        log.private_tags_removed = before - sum(1 for _ in ds.iterall())
    for node, prefix in _walk(ds, "", profile.recurse_sequence):
        for fa in profile.fields:
            _apply_field(node, fa, profile, log, prefix)
    sop_action = profile.action_for("SOPInstanceUID")
    meta = getattr(ds, "file_meta", None)
    if (
        sop_action is not None
        and sop_action.action == "hashuid"
        and meta is not None
        and "MediaStorageSOPInstanceUID" in meta
        and "SOPInstanceUID" in ds
    ):
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if ds.get("PatientIdentityRemoved") != "YES":
        (log.replaced if "PatientIdentityRemoved" in ds else log.added).add(
            "PatientIdentityRemoved"
        )
        ds.PatientIdentityRemoved = "YES"
    (log.replaced if "DeidentificationMethod" in ds else log.added).add("DeidentificationMethod")
    ds.DeidentificationMethod = f"hpcgear deid profile {profile.name}"[:64]
    return log


def _apply_field(
    node: Any, fa: FieldAction, profile: DeidProfile, log: DeidLog, prefix: str
) -> None:
    name = f"{prefix}{fa.keyword}"
    if fa.action == "keep":
        return
    if fa.tag not in node:
        if fa.action == "replace-with" and not prefix:
            from pydicom.datadict import dictionary_VR

            node.add_new(fa.tag, dictionary_VR(fa.tag), _replacement(fa.value))
            log.added.add(name)
        return
    elem = node[fa.tag]
    if fa.action == "remove":
        del node[fa.tag]
        log.removed.add(name)
    elif fa.action == "replace-with":
        elem.value = _replacement(fa.value)
        log.replaced.add(name)
    elif fa.action in ("increment-date", "increment-datetime"):
        days = profile.date_increment or 0
        shift = shift_datetime if elem.VR == "DT" else shift_date
        out: list[str] = []
        for v in _values(elem.value):
            if not v.strip():
                out.append(v)
                continue
            new = shift(v, days)
            if new is None:
                # An unparseable date is removed rather than kept as it was.
                del node[fa.tag]
                log.removed.add(name)
                logger.warning("deid: %s is not a valid date; removed it", name)
                return
            out.append(new)
        _set(elem, out)
        log.shifted.add(name)
    elif fa.action == "hash":
        _set(elem, [profile.hash_value(v) if v else v for v in _values(elem.value)])
        log.hashed.add(name)
    elif fa.action == "hashuid":
        _set(elem, [profile.hash_uid(v) if v else v for v in _values(elem.value)])
        log.hashuid.add(name)


def _replacement(value: Any) -> Any:
    if isinstance(value, list):
        return [str(v) for v in value]
    return value
