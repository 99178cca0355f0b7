"""A project with ended jobs and one provenance record, for the report tests."""

from __future__ import annotations

from hpcgear.cli.context import AppContext
from hpcgear.db.models import Job, ProvenanceRecord
from tests.conftest import CliEnv
from tests.unit.test_jobs_login_node import _end, _run


def populate(env: CliEnv) -> list[str]:
    """Three ended jobs (complete, failed, complete) and a provenance record."""
    ids = [_run(env, "s1"), _run(env, "s2"), _run(env, "s1", "--config", "num_files=2")]
    _end(env, ids[0], failed=False)
    _end(env, ids[1], failed=True)
    _end(env, ids[2], failed=False)
    app = AppContext(config_path=str(env.config))
    with app.db.session() as s:
        job = s.get(Job, ids[0])
        assert job is not None
        inp = job.inputs[0]
        record = {
            "id": f"urn:hpcgear:job:{job.id}",
            "gear": {"name": "test-gear", "version": "1.0.0"},
            "inputs": [{"id": f"urn:hpcgear:file:{inp['file_id']}:v1", "name": "s1.nii.gz",
                        "version": 1}],
            "outputs": [{"id": "urn:hpcgear:file:out1:v1", "name": "out-1.txt", "version": 1},
                        {"id": "urn:hpcgear:file:out2:v1", "name": "<b>x</b>.txt",
                         "version": 1}],
        }
        s.add(ProvenanceRecord(job_id=job.id, record=record, sha256="sha256:x"))
    app.close()
    return ids
