"""Exports of a provenance record: W3C PROV-JSON, a Process Run RO-Crate, BIDS GeneratedBy.

All three are generated from the stored record (``hpcgear.provenance.record``)
and use its stable URNs, so exports of different jobs, made at different
times, merge into one graph: the output ``urn:hpcgear:file:F:v1`` of one job
is the same node as the input ``urn:hpcgear:file:F:v1`` of the next.

* :func:`to_prov_json` - PROV-JSON (https://www.w3.org/submissions/prov-json/):
  the job is a ``prov:Activity``; input and output file versions and the
  container image are entities (``used`` / ``wasGeneratedBy``); the gear is a
  ``prov:SoftwareAgent`` and the user (or rule) that started it an agent, both
  ``wasAssociatedWith`` the job. Relation ids are blank nodes prefixed with the
  job id, so merged documents never collide.
* :func:`to_ro_crate` - ``ro-crate-metadata.json`` of RO-Crate 1.1 conforming
  to the Process Run Crate profile 0.5 (https://w3id.org/ro/wfrun/process/0.5):
  root ``Dataset`` with name, description, datePublished, license,
  ``conformsTo`` the profile, ``hasPart`` every file and ``mentions`` the
  ``CreateAction``; the action has ``instrument`` (the gear as
  ``SoftwareApplication``), ``object`` (inputs), ``result`` (outputs),
  ``agent``, start/end times, ``actionStatus`` and ``containerImage`` (a SIF
  ``ContainerImage`` from the workflow-run terms).
* :func:`bids_generated_by` / :func:`bids_dataset_description` - a
  ``GeneratedBy`` entry (Name, Version, Description, CodeURL, Container
  {Type, Tag, URI}) and a derivative ``dataset_description.json``;
  :func:`merge_generated_by` adds an entry to an existing description once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.1/context"
WORKFLOW_RUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"
RO_CRATE_SPEC = "https://w3id.org/ro/crate/1.1"
PROCESS_RUN_PROFILE = "https://w3id.org/ro/wfrun/process/0.5"
SIF_IMAGE = "https://w3id.org/ro/terms/workflow-run#SIFImage"
BIDS_VERSION = "1.10.0"

PROV_PREFIXES = {
    "hpcgear": "urn:hpcgear:ns#",
    "job": "urn:hpcgear:job:",
    "file": "urn:hpcgear:file:",
    "gear": "urn:hpcgear:gear:",
    "image": "urn:hpcgear:image:",
    "user": "urn:hpcgear:user:",
    "rule": "urn:hpcgear:rule:",
}
FORMATS = ("prov-json", "ro-crate", "bids")


def _qname(urn: str) -> str:
    """``urn:hpcgear:file:F:v1`` -> ``file:F:v1`` (a QName under PROV_PREFIXES)."""
    for prefix, ns in PROV_PREFIXES.items():
        if prefix != "hpcgear" and urn.startswith(ns):
            return f"{prefix}:{urn[len(ns):]}"
    raise ValueError(f"not an hpcgear URN: {urn!r}")


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None and v != ""}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _qualified(value: str) -> dict[str, str]:
    return {"$": value, "type": "prov:QUALIFIED_NAME"}


def _file_attrs(f: Mapping[str, Any]) -> dict[str, Any]:
    container = f.get("container") or {}
    return _clean({
        "prov:type": _qualified("hpcgear:FileVersion"),
        "prov:label": f.get("name"),
        "hpcgear:sha256": f.get("sha256"),
        "hpcgear:size": f.get("size"),
        "hpcgear:fileId": f.get("file_id"),
        "hpcgear:version": f.get("version"),
        "hpcgear:containerType": container.get("type"),
        "hpcgear:containerId": container.get("id"),
    })


def to_prov_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """PROV-JSON document for one record (see the module docstring)."""
    job = record["job"]
    job_q = _qname(record["id"])
    gear = record["gear"]
    gear_q = _qname(gear["id"])
    who = record["started_by"]
    who_q = _qname(who["id"])
    times = record.get("times") or {}
    sched = record.get("scheduler") or {}
    execution = record.get("execution") or {}
    acct = record.get("accounting") or {}
    versions = record.get("versions") or {}
    image = record.get("image") or {}
    rel = f"_:{job['id']}-"

    activity = _clean({
        "prov:type": _qualified("hpcgear:GearRun"),
        "prov:label": f"{gear['name']}@{gear['version']} job {job['id']}",
        "prov:startTime": times.get("start"),
        "prov:endTime": times.get("end"),
        "hpcgear:attempt": job.get("attempt"),
        "hpcgear:state": job.get("state"),
        "hpcgear:failureKind": job.get("failure_kind"),
        "hpcgear:site": job.get("site"),
        "hpcgear:config": _compact(record.get("config") or {}),
        "hpcgear:scriptSha256": execution.get("script_sha256"),
        "hpcgear:argv": _compact(execution.get("argv") or []),
        "hpcgear:exitCode": execution.get("exit_code"),
        "hpcgear:slurmJobId": sched.get("slurm_job_id"),
        "hpcgear:partition": sched.get("partition"),
        "hpcgear:qos": sched.get("qos"),
        "hpcgear:account": sched.get("account"),
        "hpcgear:nodes": sched.get("nodes"),
        "hpcgear:submitTime": times.get("submit"),
        "hpcgear:elapsedSeconds": acct.get("elapsed_seconds"),
        "hpcgear:cpuSeconds": acct.get("cpu_seconds"),
        "hpcgear:maxRssBytes": acct.get("max_rss_bytes"),
        "hpcgear:hpcgearVersion": versions.get("hpcgear"),
        "hpcgear:slurmVersion": versions.get("slurm"),
        "hpcgear:runtimeVersion": versions.get("runtime"),
        "hpcgear:reason": who.get("reason"),
    })
    entities: dict[str, Any] = {}
    used: dict[str, Any] = {}
    generated: dict[str, Any] = {}
    for n, f in enumerate(record.get("inputs") or []):
        q = _qname(f["id"])
        entities[q] = _file_attrs(f)
        used[f"{rel}used-{n}"] = _clean({"prov:activity": job_q, "prov:entity": q,
                                         "prov:role": f.get("role")})
    if image.get("id"):
        iq = _qname(image["id"])
        entities[iq] = _clean({"prov:type": _qualified("hpcgear:ContainerImage"),
                               "prov:label": image.get("ref"),
                               "hpcgear:digest": image.get("digest")})
        used[f"{rel}used-image"] = {"prov:activity": job_q, "prov:entity": iq,
                                    "prov:role": "container-image"}
    for n, f in enumerate(record.get("outputs") or []):
        q = _qname(f["id"])
        entities[q] = _file_attrs(f)
        generated[f"{rel}gen-{n}"] = _clean({"prov:entity": q, "prov:activity": job_q,
                                             "prov:time": times.get("end")})
    agents = {
        gear_q: _clean({"prov:type": _qualified("prov:SoftwareAgent"),
                        "prov:label": gear.get("label") or gear["name"],
                        "hpcgear:name": gear["name"], "hpcgear:version": gear["version"],
                        "hpcgear:category": gear.get("category"),
                        "hpcgear:manifestSha256": gear.get("manifest_sha256"),
                        "hpcgear:source": gear.get("source") or gear.get("url")}),
        who_q: _clean({"prov:type": _qualified("prov:Person" if who.get("type") != "rule"
                                               else "prov:SoftwareAgent"),
                       "prov:label": who.get("name")}),
    }
    doc: dict[str, Any] = {
        "prefix": dict(PROV_PREFIXES),
        "activity": {job_q: activity},
        "entity": entities,
        "agent": agents,
        "wasAssociatedWith": {
            f"{rel}assoc-gear": {"prov:activity": job_q, "prov:agent": gear_q},
            f"{rel}assoc-starter": {"prov:activity": job_q, "prov:agent": who_q},
        },
        "actedOnBehalfOf": {
            f"{rel}delegation": {"prov:delegate": gear_q, "prov:responsible": who_q,
                                 "prov:activity": job_q},
        },
    }
    if used:
        doc["used"] = used
    if generated:
        doc["wasGeneratedBy"] = generated
    if job.get("previous"):
        prev_q = _qname(f"urn:hpcgear:job:{job['previous']}")
        doc["activity"][prev_q] = {"prov:type": _qualified("hpcgear:GearRun")}
        doc["wasInformedBy"] = {f"{rel}retry-of": {"prov:informed": job_q,
                                                   "prov:informant": prev_q}}
    return doc


# ------------------------------------------------------------------------ RO-Crate


def _ref(i: str) -> dict[str, str]:
    return {"@id": i}


def _ro_file(f: Mapping[str, Any], what: str) -> dict[str, Any]:
    container = f.get("container") or {}
    return _clean({
        "@id": f["id"],
        "@type": "File",
        "name": f.get("name"),
        "alternateName": f.get("name"),
        "description": f"{what}: version {f.get('version')} of file {f.get('file_id')} on "
                       f"{container.get('type') or 'container'} {container.get('id') or '?'}",
        "contentSize": str(f.get("size")) if f.get("size") is not None else None,
        "sha256": str(f.get("sha256") or "").removeprefix("sha256:") or None,
        "identifier": f["id"],
    })


def to_ro_crate(record: Mapping[str, Any]) -> dict[str, Any]:
    """``ro-crate-metadata.json`` (Process Run Crate) for one record."""
    job = record["job"]
    gear = record["gear"]
    who = record["started_by"]
    times = record.get("times") or {}
    image = record.get("image") or {}
    execution = record.get("execution") or {}
    inputs = list(record.get("inputs") or [])
    outputs = list(record.get("outputs") or [])
    action_id = record["id"]
    files: dict[str, dict[str, Any]] = {}
    for f in inputs:
        files.setdefault(f["id"], _ro_file(f, f"input {f.get('role') or ''}".strip()))
    for f in outputs:
        files.setdefault(f["id"], _ro_file(f, "output"))
    published = times.get("end") or times.get("start") or times.get("submit") or "1970-01-01"
    ok = job.get("state") == "complete"
    argv = execution.get("argv") or []
    action = _clean({
        "@id": action_id,
        "@type": "CreateAction",
        "name": f"Run of {gear['name']} {gear['version']} (hpcgear job {job['id']}, "
                f"attempt {job.get('attempt')})",
        "description": " ".join(argv) if argv else None,
        "startTime": times.get("start"),
        "endTime": times.get("end"),
        "instrument": _ref(gear["id"]),
        "object": [_ref(f["id"]) for f in inputs],
        "result": [_ref(f["id"]) for f in outputs],
        "agent": _ref(who["id"]),
        "actionStatus": _ref("http://schema.org/CompletedActionStatus" if ok
                             else "http://schema.org/FailedActionStatus"),
        "error": None if ok else (job.get("failure_message") or job.get("failure_kind")),
        "containerImage": _ref(image["id"]) if image.get("id") else None,
        "identifier": job["id"],
    })
    software = _clean({
        "@id": gear["id"],
        "@type": "SoftwareApplication",
        "name": gear.get("label") or gear["name"],
        "alternateName": gear["name"],
        "softwareVersion": gear["version"],
        "url": gear.get("source") or gear.get("url"),
        "identifier": gear.get("manifest_sha256"),
    })
    graph: list[dict[str, Any]] = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork",
         "conformsTo": _ref(RO_CRATE_SPEC), "about": _ref("./")},
        {"@id": "./", "@type": "Dataset",
         "name": f"Provenance of hpcgear job {job['id']} ({gear['name']} {gear['version']})",
         "description": f"What hpcgear job {job['id']} read and wrote: gear "
                        f"{gear['name']}@{gear['version']} on site {job.get('site')}, "
                        f"state {job.get('state')}.",
         "datePublished": published,
         "license": _ref("#license"),
         "conformsTo": _ref(PROCESS_RUN_PROFILE),
         "hasPart": [_ref(i) for i in files],
         "mentions": [_ref(action_id)]},
        {"@id": PROCESS_RUN_PROFILE, "@type": "CreativeWork", "name": "Process Run Crate",
         "version": "0.5"},
        {"@id": "#license", "@type": "CreativeWork", "name": "License not specified",
         "description": "The data described here belongs to its project; its license is set "
                        "by the project's owners."},
        software,
        action,
        *files.values(),
    ]
    if image.get("id"):
        ref = str(image.get("ref") or "")
        graph.append(_clean({
            "@id": image["id"],
            "@type": "ContainerImage",
            "additionalType": _ref(SIF_IMAGE),
            "name": ref or image["id"],
            "registry": "file" if ref.startswith("/") else None,
            "sha256": str(image.get("digest") or "").removeprefix("sha256:") or None,
        }))
    if who.get("type") == "rule":
        graph.append({"@id": who["id"], "@type": "SoftwareApplication",
                      "name": f"hpcgear gear rule {who.get('name')}"})
    else:
        graph.append({"@id": who["id"], "@type": "Person", "name": who.get("name")})
    return {"@context": [RO_CRATE_CONTEXT, WORKFLOW_RUN_CONTEXT], "@graph": graph}


# ---------------------------------------------------------------------------- BIDS

_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def bids_generated_by(record: Mapping[str, Any]) -> dict[str, Any]:
    """One ``GeneratedBy`` entry for a BIDS ``dataset_description.json``."""
    gear = record["gear"]
    image = record.get("image") or {}
    execution = record.get("execution") or {}
    code = gear.get("source") or gear.get("url") or ""
    entry: dict[str, Any] = {
        "Name": gear["name"],
        "Version": gear["version"],
        "Description": f"Run by hpcgear as job {record['job']['id']} "
                       f"({record['id']}).",
    }
    if _URL_RE.match(code):
        entry["CodeURL"] = code
    if image.get("ref") or image.get("digest"):
        entry["Container"] = _clean({
            "Type": execution.get("runtime") or "apptainer",
            "Tag": image.get("ref"),
            "URI": image.get("id"),
        })
    return entry


def bids_dataset_description(record: Mapping[str, Any], *, name: str | None = None
                             ) -> dict[str, Any]:
    """A derivative ``dataset_description.json`` whose GeneratedBy is this job."""
    gear = record["gear"]
    return {
        "Name": name or f"{gear['name']} derivatives (hpcgear job {record['job']['id']})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [bids_generated_by(record)],
    }


def merge_generated_by(description: Mapping[str, Any], record: Mapping[str, Any]
                       ) -> dict[str, Any]:
    """``description`` with this job's GeneratedBy entry added once."""
    out = dict(description)
    entries = list(out.get("GeneratedBy") or [])
    entry = bids_generated_by(record)
    if entry not in entries:
        entries.append(entry)
    out["GeneratedBy"] = entries
    return out


def export_record(record: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The export ``fmt`` (one of :data:`FORMATS`) of ``record``."""
    if fmt == "prov-json":
        return to_prov_json(record)
    if fmt == "ro-crate":
        return to_ro_crate(record)
    if fmt == "bids":
        return bids_dataset_description(record)
    raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
