"""The provenance record of one job attempt (pure: plain values in, a dict out).

The controller fills :class:`RunFacts` from the job row, the scheduler's
accounting and the job's exit record (``hpcgear.controller.record`` has a
helper), and stores :func:`build_record` once per attempt. The record is
immutable; its ``sha256`` is taken over :func:`canonical_json` (sorted keys,
no whitespace, UTF-8), so anyone can re-check a stored record. Every export
(PROV-JSON, RO-Crate, BIDS ``GeneratedBy``) is generated from this one record.

Identifiers are stable URNs, so exports made at different times merge into
one graph:

* ``urn:hpcgear:job:<job id>`` - one attempt (a retry has its own id)
* ``urn:hpcgear:file:<file id>:v<version>`` - one immutable file version
* ``urn:hpcgear:gear:<name>@<version>`` - one installed gear version
* ``urn:hpcgear:image:sha256:<hex>`` - one container image
* ``urn:hpcgear:user:<login>`` / ``urn:hpcgear:rule:<rule id>`` - who started it
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RECORD_SCHEMA = "hpcgear.provenance/1"


def job_urn(job_id: str) -> str:
    return f"urn:hpcgear:job:{job_id}"


def file_urn(file_id: str, version: int) -> str:
    return f"urn:hpcgear:file:{file_id}:v{version}"


def gear_urn(name: str, version: str) -> str:
    return f"urn:hpcgear:gear:{name}@{version}"


def image_urn(digest: str) -> str:
    return f"urn:hpcgear:image:{digest}"


def agent_urn(origin_type: str, origin_id: str) -> str:
    kind = "rule" if origin_type == "rule" else "user"
    return f"urn:hpcgear:{kind}:{origin_id}"


@dataclass(frozen=True, slots=True)
class ProvFile:
    """One file version a job read or wrote."""

    file_id: str
    version: int
    sha256: str
    size: int
    name: str
    container_type: str | None = None
    container_id: str | None = None
    role: str | None = None  # input name; None for outputs

    @property
    def urn(self) -> str:
        return file_urn(self.file_id, self.version)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.urn, "file_id": self.file_id, "version": self.version,
                "sha256": self.sha256, "size": self.size, "name": self.name,
                "container": {"type": self.container_type, "id": self.container_id},
                "role": self.role}


Timestamp = dt.datetime | str | None


@dataclass(frozen=True, slots=True)
class RunFacts:
    """Everything the record says about one attempt, as plain values."""

    job_id: str
    attempt: int
    gear_name: str
    gear_version: str
    manifest_sha256: str
    image_ref: str | None
    image_digest: str | None
    config: Mapping[str, Any]
    inputs: tuple[ProvFile, ...]
    outputs: tuple[ProvFile, ...]
    state: str  # hpcgear's final job state
    site: str
    started_by: str  # login or rule id
    origin_type: str  # "user" | "rule"
    previous_job_id: str | None = None
    gear_category: str = "utility"
    gear_label: str | None = None
    gear_url: str | None = None  # manifest url
    gear_source: str | None = None  # manifest source (code)
    gear_license: str | None = None
    destination_type: str | None = None
    destination_id: str | None = None
    analysis_id: str | None = None
    reason: str | None = None  # why it ran (the job's creation message)
    failure_kind: str | None = None
    failure_message: str | None = None
    script_sha256: str | None = None
    apptainer_argv: tuple[str, ...] = ()
    runtime: str | None = None  # "apptainer" | "singularity"
    slurm_job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    nodes: str | None = None
    scheduler_state: str | None = None
    submit_time: Timestamp = None
    start_time: Timestamp = None
    end_time: Timestamp = None
    exit_code: int | None = None  # the gear's (container's) exit status
    exit_signal: str | None = None
    elapsed_seconds: int | None = None
    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None
    alloc_cpus: int | None = None
    requested: Mapping[str, Any] = field(default_factory=dict)  # resources asked for
    hpcgear_version: str | None = None
    slurm_version: str | None = None
    runtime_version: str | None = None
    host: str | None = None
    log_sha256: str | None = None
    log_size: int | None = None
    metadata_sha256: str | None = None
    refused_outputs: tuple[tuple[str, str], ...] = ()  # (relpath, reason)


def iso(value: Timestamp) -> str | None:
    """ISO 8601 in UTC (``...Z``) for datetimes; strings pass through unchanged."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_record(facts: RunFacts) -> dict[str, Any]:
    """The JSON record for ``facts`` (deterministic: same facts, same record)."""
    return {
        "schema": RECORD_SCHEMA,
        "id": job_urn(facts.job_id),
        "job": {"id": facts.job_id, "attempt": facts.attempt, "previous": facts.previous_job_id,
                "state": facts.state, "failure_kind": facts.failure_kind,
                "failure_message": facts.failure_message, "site": facts.site},
        "started_by": {"id": agent_urn(facts.origin_type, facts.started_by),
                       "type": facts.origin_type, "name": facts.started_by,
                       "reason": facts.reason},
        "gear": {"id": gear_urn(facts.gear_name, facts.gear_version), "name": facts.gear_name,
                 "version": facts.gear_version, "category": facts.gear_category,
                 "label": facts.gear_label, "url": facts.gear_url, "source": facts.gear_source,
                 "license": facts.gear_license, "manifest_sha256": facts.manifest_sha256},
        "image": {"id": image_urn(facts.image_digest) if facts.image_digest else None,
                  "ref": facts.image_ref, "digest": facts.image_digest},
        "config": json.loads(json.dumps(dict(facts.config), allow_nan=False)),
        "destination": {"type": facts.destination_type, "id": facts.destination_id,
                        "analysis_id": facts.analysis_id},
        "inputs": [f.as_dict() for f in facts.inputs],
        "outputs": [f.as_dict() for f in facts.outputs],
        "refused_outputs": [{"path": p, "reason": r} for p, r in facts.refused_outputs],
        "log": ({"sha256": facts.log_sha256, "size": facts.log_size}
                if facts.log_sha256 else None),
        "metadata_sha256": facts.metadata_sha256,
        "execution": {
            "script_sha256": facts.script_sha256,
            "argv": list(facts.apptainer_argv),
            "runtime": facts.runtime,
            "host": facts.host,
            "exit_code": facts.exit_code,
            "signal": facts.exit_signal,
        },
        "scheduler": {
            "slurm_job_id": facts.slurm_job_id, "array_job_id": facts.array_job_id,
            "array_task_id": facts.array_task_id, "partition": facts.partition,
            "qos": facts.qos, "account": facts.account, "nodes": facts.nodes,
            "state": facts.scheduler_state, "requested": dict(facts.requested),
        },
        "times": {"submit": iso(facts.submit_time), "start": iso(facts.start_time),
                  "end": iso(facts.end_time)},
        "accounting": {"elapsed_seconds": facts.elapsed_seconds,
                       "cpu_seconds": facts.cpu_seconds, "max_rss_bytes": facts.max_rss_bytes,
                       "alloc_cpus": facts.alloc_cpus},
        "versions": {"hpcgear": facts.hpcgear_version, "slurm": facts.slurm_version,
                     "runtime": facts.runtime_version},
    }


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: the bytes that are hashed."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def record_sha256(record: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(record)).hexdigest()
