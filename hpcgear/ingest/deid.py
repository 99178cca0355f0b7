"""De-identification profiles (Flywheel's YAML format) applied with flywheel-migration.

Profiles are the ones imaging centres already feed to Flywheel's CLI, read as
written, including ``deid-log``::

    name: site-deid
    deid-log: /data/deid/site-deid.csv   # keep a re-identification map
    dicom:
      date-increment: -17
      remove-private-tags: true
      salt: some-secret
      fields:
        - {name: PatientName, remove: true}
        - {name: StudyDate, increment-date: true}
        - {name: StudyInstanceUID, hashuid: true}

The field actions, their validation and the hashing are flywheel-migration's own
(``flywheel_migration.deidentify``): :func:`apply_profile` runs a profile's
``DicomFileProfile`` fields on an in-memory pydicom dataset, doing what its
``load_record`` does before the fields (private tags, patient age, undefined
fields) without writing a file, so nothing identifying reaches disk. A test
checks that the result equals flywheel-migration's own ``process_files`` output.

``--de-identify`` alone applies the built-in profile ``ps3.15-basic``
(``profiles/ps3.15-basic.yaml``): every attribute of DICOM PS3.15 Annex E Table
E.1-1 with its action, private attributes removed. It is two flywheel-migration
passes, because flywheel-migration's ``recurse-sequence`` (needed so attributes
inside sequences are cleaned too) refuses actions on sequence attributes: pass 1
removes or empties sequences at the top level, pass 2 applies every other action
at every depth.

``deid-log`` asks for a re-identification map. hpcgear does not write it to the
path named (a profile must not choose where identifying data goes); the map
(original -> new value of each changed attribute) is kept in the database,
readable by admins only (``hpcgear deid map``). Without ``deid-log`` no original
value is kept anywhere.

What was done is summarised as a :class:`DeidLog` (attribute names only; never a
value, the salt nor a date offset).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hpcgear.config.yamlload import LineMap, load_yaml_with_lines
from hpcgear.errors import IngestError, SchemaError

logger = logging.getLogger(__name__)

BUILTIN_PROFILE = "ps3.15-basic"
TOP_KEYS = ("name", "description", "version", "deid-log", "secret-key", "dicom")
#: Keys of flywheel-migration's dicom file profile (FileProfile + DicomFileProfile).
DICOM_KEYS = (
    "fields",
    "file-filter",
    "hash-digits",
    "date-increment",
    "datetime-format",
    "date-format",
    "jitter-range",
    "jitter-type",
    "replace-with-insert",
    "salt",
    "uid-prefix-fields",
    "uid-suffix-fields",
    "uid-numeric-name",
    "secret-key",
    "force-nonce",
    "enforce-file-filter",
    "filenames",
    "patient-age-from-birthdate",
    "patient-age-units",
    "remove-private-tags",
    "decode",
    "remove-undefined",
    "recurse-sequence",
)
#: flywheel-migration's field actions (one per field) and their options.
FIELD_ACTIONS = (
    "remove",
    "replace-with",
    "increment-date",
    "increment-datetime",
    "hash",
    "hashuid",
    "jitter",
    "keep",
    "regex-sub",
    "encrypt",
    "decrypt",
)
FIELD_KEYS = (
    "name",
    "regex",
    *FIELD_ACTIONS,
    "replace-with-insert",
    "date-format",
    "datetime-format",
    "date-increment-override",
    "datetime-min",
    "datetime-max",
    "jitter-date",
    "jitter-min",
    "jitter-max",
    "jitter-range",
    "jitter-type",
    "jitter-unit",
    "force-nonce",
)
#: Ingest groups instances and finds sessions/acquisitions by these UIDs, so a
#: profile may only keep them or map them deterministically.
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True, slots=True)
class DeidProfile:
    """A validated profile: one or more flywheel-migration passes, as written."""

    name: str
    description: str
    passes: tuple[Mapping[str, Any], ...]  # plain config dicts, deid-log left out
    reid_map: bool = False  # the profile has deid-log
    salted: bool = False
    text: str = ""  # the YAML as written (attached to projects)
    sha256: str = ""  # of the passes without salt and secret keys

    def dicom_profiles(self) -> list[Any]:
        """flywheel-migration DicomFileProfile objects, one per pass (cached per thread)."""
        cache: dict[str, list[Any]] = _local.__dict__.setdefault("profiles", {})
        # Keyed by everything in the passes, salts included (sha256 leaves them out).
        key = hashlib.sha256(
            json.dumps(self.passes, sort_keys=True, default=repr).encode()
        ).hexdigest()
        found = cache.get(key)
        if found is None:
            found = [_fw_dicom_profile(p, self.name)[0] for p in self.passes]
            cache[key] = found
        return found


_local = threading.local()


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _import_flywheel_migration() -> None:
    # Its `fs` dependency warns about pkg_resources at import; that is no user's concern.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        warnings.filterwarnings("ignore", message=".*declare_namespace.*")
        import flywheel_migration.deidentify  # noqa: F401


def _fw_dicom_profile(config: Mapping[str, Any], name: str) -> tuple[Any, list[str]]:
    _import_flywheel_migration()
    from flywheel_migration.deidentify.deid_profile import DeIdProfile

    profile = DeIdProfile()
    profile.load_config(copy.deepcopy(dict(config)))
    errors = profile.validate()
    fp = profile.get_file_profile("dicom")
    fp.deid_name = name
    if fp.pixel_actions or fp.detect:
        errors.append("alter_pixels (pixel scrubbing) is not supported by hpcgear")
    return fp, errors


def _line(node: Any, key: Any) -> str:
    if isinstance(node, LineMap):
        return f":{node.key_lines.get(key, node.line)}"
    return ""


def _check_keys(node: Mapping[Any, Any], valid: tuple[str, ...], where: str, source: str) -> None:
    for key in node:
        if key not in valid:
            raise SchemaError(
                f"{source}{_line(node, key)}: unknown key {key!r} in {where}",
                f"valid keys: {', '.join(valid)}",
            )


def _canonical_hash(passes: tuple[Mapping[str, Any], ...]) -> str:
    # Salts and keys stay out: a weak salt could be brute-forced from the hash.
    def scrub(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {
                k: scrub(v)
                for k, v in node.items()
                if k not in ("salt", "secret-key", "force-nonce", "name", "description")
            }
        if isinstance(node, list):
            return [scrub(v) for v in node]
        if isinstance(node, bytes):
            return node.hex()
        return node

    text = json.dumps([scrub(p) for p in passes], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def build_profile(
    data: Any, *, source: str, default_name: str | None = None, text: str = ""
) -> DeidProfile:
    """Validate one loaded profile document into a :class:`DeidProfile`."""
    return _build((data,), source=source, default_name=default_name, text=text)


def _build(
    docs: tuple[Any, ...], *, source: str, default_name: str | None, text: str
) -> DeidProfile:
    passes: list[dict[str, Any]] = []
    name: str | None = None
    description = ""
    reid = False
    salted = False
    for data in docs:
        if not isinstance(data, Mapping):
            raise SchemaError(
                f"{source}: a de-identification profile must be a mapping with a `dicom:` section",
                f"valid top-level keys: {', '.join(TOP_KEYS)}",
            )
        _check_keys(data, TOP_KEYS, "the profile", source)
        doc_name = data.get("name", default_name)
        if not isinstance(doc_name, str) or not doc_name.strip():
            raise SchemaError(
                f"{source}{_line(data, 'name')}: profile name must be a non-empty text",
                "add `name: <profile name>`",
            )
        name = name or doc_name.strip()
        description = description or str(data.get("description") or "")
        log_path = data.get("deid-log")
        if log_path is not None and (not isinstance(log_path, str) or not log_path.strip()):
            raise SchemaError(
                f"{source}{_line(data, 'deid-log')}: deid-log must be a path text",
                "e.g. deid-log: /data/deid/log.csv (hpcgear keeps the map in its database)",
            )
        reid = reid or bool(log_path)
        dicom = data.get("dicom") or {}
        if not isinstance(dicom, Mapping):
            raise SchemaError(
                f"{source}{_line(data, 'dicom')}: `dicom` must be a mapping",
                f"valid keys under dicom: {', '.join(DICOM_KEYS)}",
            )
        if "alter_pixels" in dicom:
            raise SchemaError(
                f"{source}{_line(dicom, 'alter_pixels')}: pixel scrubbing (alter_pixels) "
                "is not supported",
                "remove alter_pixels; scrub burnt-in text before ingesting",
            )
        _check_keys(dicom, DICOM_KEYS, "dicom", source)
        salted = salted or bool(dicom.get("salt")) or bool(data.get("secret-key"))
        fields_node = dicom.get("fields") or []
        if not isinstance(fields_node, list):
            raise SchemaError(
                f"{source}{_line(dicom, 'fields')}: dicom.fields must be a list",
                "write each field as `- name: PatientName` followed by its action",
            )
        for i, item in enumerate(fields_node):
            where = f"dicom.fields[{i}]"
            if not isinstance(item, Mapping):
                raise SchemaError(
                    f"{source}: {where} must be a mapping like {{name: PatientName, remove: true}}",
                    f"valid keys: {', '.join(FIELD_KEYS)}",
                )
            _check_keys(item, FIELD_KEYS, where, source)
            actions = [k for k in FIELD_ACTIONS if k in item]
            if len(actions) != 1:
                raise SchemaError(
                    f"{source}{_line(item, actions[1] if len(actions) > 1 else 'name')}: {where} "
                    f"({item.get('name') or item.get('regex')}) needs exactly one action, "
                    f"has {len(actions)}",
                    f"actions: {', '.join(FIELD_ACTIONS)}",
                )
        plain = _plain(dicom)
        for i, item in enumerate(plain.get("fields") or []):
            fname = item.get("name") if isinstance(item, Mapping) else None
            if fname in INSTANCE_UIDS and not ({"hashuid", "keep"} & set(item)):
                raise SchemaError(
                    f"{source}: dicom.fields[{i}]: {fname} may only be hashuid or keep",
                    "ingest groups instances and finds sessions by these UIDs; use `hashuid: true`",
                )
        config: dict[str, Any] = {"name": doc_name, "dicom": plain}
        if data.get("secret-key") is not None:
            config["secret-key"] = data["secret-key"]
        try:
            _, errors = _fw_dicom_profile(config, doc_name)
        except Exception as exc:  # flywheel-migration raises ValueError/KeyError/...
            raise SchemaError(
                f"{source}: profile {doc_name!r} is not valid: {exc}",
                "fix the dicom section (see the Flywheel de-identification profile docs)",
            ) from None
        if errors:
            raise SchemaError(
                f"{source}: profile {doc_name!r} is not valid: {'; '.join(errors)}",
                "fix the fields named (DICOM keywords or (gggg,eeee) tags, one action each)",
            )
        passes.append(config)
    if name is None:
        raise SchemaError(f"{source}: the profile is empty", "add `name:` and a `dicom:` section")
    frozen = tuple(passes)
    return DeidProfile(
        name=name,
        description=description,
        passes=frozen,
        reid_map=reid,
        salted=salted,
        text=text,
        sha256=_canonical_hash(frozen),
    )


def parse_profile_text(text: str, source: str, default_name: str | None = None) -> DeidProfile:
    """A profile from YAML text (as attached to a project or read from a file)."""
    if "\n---" in text or text.startswith("---"):
        docs = tuple(d for d in yaml.safe_load_all(text) if d is not None)
        return _build(docs, source=source, default_name=default_name, text=text)
    data = load_yaml_with_lines(text, source)
    return build_profile(data, source=source, default_name=default_name, text=text)


def load_profile(path: Path) -> DeidProfile:
    """Read and validate a profile file (YAML or JSON) as written.

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
    return parse_profile_text(text, str(path), default_name=path.stem)


@functools.lru_cache(maxsize=1)
def default_profile() -> DeidProfile:
    """What ``--de-identify`` alone applies: the PS3.15 Annex E basic profile."""
    text = (
        resources.files("hpcgear.ingest")
        .joinpath("profiles", f"{BUILTIN_PROFILE}.yaml")
        .read_text(encoding="utf-8")
    )
    return parse_profile_text(text, f"<built-in {BUILTIN_PROFILE}>")


def resolve_profile(spec: str) -> DeidProfile:
    """``ps3.15-basic`` (the built-in) or a path to a profile file."""
    if spec == BUILTIN_PROFILE:
        return default_profile()
    return load_profile(Path(spec))


# ------------------------------------------------------------------ applying


@dataclass(slots=True)
class DeidLog:
    """What a profile did to one or more instances (names only, never values)."""

    profile: str
    profile_sha256: str
    salted: bool
    removed: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    added: set[str] = field(default_factory=set)
    private_tags_removed: int = 0
    #: original -> new values per instance, only when the profile has deid-log
    reid: list[dict[str, list[str | None]]] = field(default_factory=list)

    def merge(self, other: DeidLog) -> None:
        self.removed.update(other.removed)
        self.changed.update(other.changed)
        self.added.update(other.added)
        self.private_tags_removed += other.private_tags_removed
        self.reid.extend(other.reid)

    def to_info(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "profile_sha256": self.profile_sha256,
            "salted": self.salted,
            "removed": sorted(self.removed),
            "changed": sorted(self.changed),
            "added": sorted(self.added),
            "private_tags_removed": self.private_tags_removed,
            "reid_map": bool(self.reid),
        }


def new_log(profile: DeidProfile) -> DeidLog:
    return DeidLog(profile.name, profile.sha256, profile.salted)


def _snapshot(ds: Any, prefix: str = "") -> dict[str, Any]:
    """Path -> value text for every element (sequence items flattened by name)."""
    out: dict[str, Any] = {}
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        path = f"{prefix}{name}"
        if elem.VR == "SQ":
            out[path] = f"<{len(elem.value)} items>"
            for item in elem.value:
                for k, v in _snapshot(item, f"{path}.").items():
                    out.setdefault(k, v)
        else:
            value = elem.value
            out[path] = value.hex() if isinstance(value, bytes) else str(value)
    return out


def _remove_private(fp: Any, ds: Any) -> int:
    # As flywheel-migration's load_record: private tags named in the profile stay.
    keep: set[int] = set()
    for fld in fp.fields:
        if fld.fieldname.is_private:
            group, creator, elem = fld.fieldname.dicom_tag
            try:
                block = ds.private_block(group, creator)
            except KeyError:
                continue
            keep.add(int(block.get_tag(elem)))
            keep.update(
                int(e.tag)
                for e in ds[(group << 16) | 0x10 : (group << 16) | 0x100]
                if e.value == creator
            )
    removed = 0

    def callback(dataset: Any, elem: Any) -> None:
        nonlocal removed
        if elem.tag.is_private and int(elem.tag) not in keep:
            del dataset[elem.tag]
            removed += 1

    ds.walk(callback)
    return removed


def _patient_age(fp: Any, ds: Any) -> None:
    import datetime

    from flywheel_migration.util import date_delta

    dob, study = ds.get("PatientBirthDate"), ds.get("StudyDate")
    if not dob or not study:
        return
    try:
        age, units = date_delta(
            datetime.datetime.strptime(str(dob), fp.date_format),
            datetime.datetime.strptime(str(study), fp.date_format),
            desired_unit=fp.patient_age_units,
            max_value=960,
        )
    except ValueError:
        return
    ds.PatientAge = f"{age:03d}{units}"


def _field_tags(fp: Any) -> list[tuple[Any, int | None]]:
    cached = getattr(fp, "_hpcgear_tags", None)
    if cached is None:
        from pydicom.datadict import tag_for_keyword

        cached = []
        for fld in fp.fields:
            name = fld.fieldname
            tag: Any = None
            if not (
                getattr(fld, "is_regex", False)
                or name.is_sequence
                or name.is_private
                or name.is_repeater
            ):
                tag = name.dicom_tag if name.dicom_tag is not None else tag_for_keyword(str(name))
            cached.append((fld, int(tag) if isinstance(tag, int) else None))
        fp._hpcgear_tags = cached
    return list(cached)


def _inserts(fp: Any, fld: Any) -> bool:
    if fld.key != "replace-with":
        return False
    own = getattr(fld, "replace_with_insert", None)
    return bool(fp.replace_with_insert if own is None else own)


def _apply_pass(fp: Any, ds: Any, log: DeidLog) -> None:
    state = fp.create_file_state()
    if fp.remove_private_tags:
        log.private_tags_removed += _remove_private(fp, ds)
    if fp.patient_age_from_birthdate:
        _patient_age(fp, ds)
    if fp.remove_undefined:
        fp.remove_undefined_fields(state, ds)
    # A field whose attribute is nowhere in the dataset is a no-op in
    # flywheel-migration (unless it inserts), so it is skipped unasked: with the
    # ~650 PS3.15 fields each recursive lookup would walk the whole dataset.
    present = {int(e.tag) for e in ds.iterall()}
    nested = _nested_tags(ds)
    for fld, tag in _field_tags(fp):
        if tag is not None and tag not in present and not _inserts(fp, fld):
            continue
        if tag is not None and fld.recurse_sequence and tag not in nested:
            # Only at the top level: the recursive lookup (a walk of the whole
            # dataset per field) would find just this one, so skip the walk.
            fld.recurse_sequence = False
            try:
                fld.deidentify(fp, state, ds)
            finally:
                fld.recurse_sequence = True
            continue
        fld.deidentify(fp, state, ds)


def _nested_tags(ds: Any) -> set[int]:
    out: set[int] = set()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                out.update(int(e.tag) for e in item.iterall())
    return out


def apply_profile(ds: Any, profile: DeidProfile) -> DeidLog:
    """De-identify a pydicom Dataset in place; return what was done.

    Each pass's flywheel-migration fields run in the profile's order; the file
    meta SOP Instance UID follows the dataset's. Raises IngestError when the
    profile cannot be applied (the caller skips the file, nothing is stored).
    """
    log = new_log(profile)
    before = _snapshot(ds)
    try:
        for fp in profile.dicom_profiles():
            _apply_pass(fp, ds, log)
    except SystemExit:  # flywheel-migration exits on a replace-with of an unknown VR
        raise IngestError(
            f"profile {profile.name!r} replaces an attribute whose VR is unknown",
            "name only dictionary attributes in replace-with, or the private creator",
        ) from None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    after = _snapshot(ds)
    log.removed.update(k for k in before if k not in after)
    log.added.update(k for k in after if k not in before)
    log.changed.update(k for k in before if k in after and before[k] != after[k])
    if profile.reid_map:
        log.reid.append(
            {
                k: [before.get(k), after.get(k)]
                for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)
                and "." not in k
                and not k.startswith("(")
                and len(str(before.get(k))) <= 256
            }
        )
    return log


def profile_tags(profile: DeidProfile) -> set[int]:
    """Top-level tags a profile names (so a header scan reads them)."""
    return {tag for fp in profile.dicom_profiles() for _, tag in _field_tags(fp) if tag is not None}


def _name_tag(name: Any) -> int | None:
    from pydicom.datadict import tag_for_keyword

    if not isinstance(name, str):
        return None
    tag = tag_for_keyword(name)
    if tag is not None:
        return int(tag)
    text = name.strip().strip("()").replace(",", "").replace(" ", "")
    if len(text) == 8:
        try:
            return int(text, 16)
        except ValueError:
            return None
    return None


_BASELINED: dict[tuple[Any, ...], DeidProfile] = {}


def with_baseline(profile: DeidProfile) -> DeidProfile:
    """``profile`` followed by the PS3.15 basic profile for every attribute it does not name.

    This is what "a profile implies --de-identify" means: the profile decides
    what it names (keep, hash, shift...), the standard decides the rest, so a
    profile that forgets PatientBirthDate still does not store it.
    """
    if profile.name == BUILTIN_PROFILE:
        return profile
    key = (profile.sha256, profile.name, profile.salted, profile.reid_map, profile.text)
    done = _BASELINED.get(key)
    if done is not None and done.passes[: len(profile.passes)] == profile.passes:
        return done
    named: set[int] = set()
    for config in profile.passes:
        if (config.get("dicom") or {}).get("patient-age-from-birthdate"):
            named.add(0x00101010)  # PatientAge: the profile computes it
        for item in (config.get("dicom") or {}).get("fields") or []:
            tag = _name_tag(item.get("name")) if isinstance(item, Mapping) else None
            if tag is not None:
                named.add(tag)
    base = default_profile()
    rest: list[dict[str, Any]] = []
    for config in base.passes:
        dicom = dict(config["dicom"])
        dicom["fields"] = [
            f for f in dicom.get("fields") or [] if _name_tag(f.get("name")) not in named
        ]
        rest.append({"name": f"{profile.name}+{BUILTIN_PROFILE}", "dicom": dicom})
    passes = (*profile.passes, *rest)
    done = _BASELINED[key] = DeidProfile(
        name=profile.name,
        description=profile.description,
        passes=passes,
        reid_map=profile.reid_map,
        salted=profile.salted,
        text=profile.text,
        sha256=_canonical_hash(passes),
    )
    return done
