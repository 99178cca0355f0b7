"""Stage-in and stage-out through the real SSHTransport (dev sshd, 127.0.0.1:2222).

Everything goes over SSH/SFTP exactly as with a remote login node: inputs are
put by SFTP and verified with ``sha256sum`` on the far side, the output
directory is listed with one ``find`` and hashed with one ``sha256sum`` batch,
and hostile outputs made on the far side are refused.
"""

from __future__ import annotations

import hashlib
import stat
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hpcgear.errors import StagingError
from hpcgear.render.paths import JobPaths
from hpcgear.scheduler.transport import SSHTransport
from hpcgear.spec import GearRef, InputSpec, JobSpec, Resources
from hpcgear.staging.metadata import parse_metadata
from hpcgear.staging.stagein import stage_in
from hpcgear.staging.stageout import (
    fetch_file,
    fetch_outputs,
    read_metadata,
    read_text_file,
    remove_job_dir,
    scan_outputs,
)
from hpcgear.storage.objects import ObjectStore

if TYPE_CHECKING:
    from tests.integration.conftest import DevEnv

pytestmark = [pytest.mark.integration, pytest.mark.ssh]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def ssh(dev_env: DevEnv) -> Iterator[SSHTransport]:
    t = SSHTransport(dev_env.ssh_host, port=dev_env.ssh_port, user=dev_env.ssh_user,
                     key_file=dev_env.ssh_key, known_hosts=dev_env.ssh_known_hosts,
                     connect_timeout=10)
    yield t
    t.close()


@pytest.fixture
def scratch(dev_env: DevEnv, ssh: SSHTransport) -> Iterator[str]:
    root = str(dev_env.scratch / "itest-staging" / uuid.uuid4().hex[:10])
    ssh.mkdir(root)
    yield root
    ssh.remove_tree(root)


def make_spec(store: ObjectStore) -> JobSpec:
    inputs = []
    for name, (file_name, data) in {"dicom": ("scan $(one).dcm", b"DICM" * 5000),
                                    "notes": ("a'b\"c.txt", b"notes")}.items():
        obj = store.put_bytes(data)
        inputs.append(InputSpec(name=name, base="file", file_id=name, version=1,
                                file_name=file_name, sha256=obj.hash, size=obj.size))
    gear = GearRef("test-gear", "1.0.0", "sha256:" + "0" * 64, "/i.sif", "sha256:" + "1" * 64,
                   "/i.sif", None)
    return JobSpec(job_id="sshjob", attempt=1, gear=gear, config={}, inputs=tuple(inputs),
                   destination_type="acquisition", destination_id="a", resources=Resources(),
                   site="dev", user="root")


def test_stage_in_over_ssh_is_verified_and_idempotent(ssh: SSHTransport, scratch: str,
                                                      tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "storage")
    spec = make_spec(store)
    paths = JobPaths.for_job(scratch, spec.job_id, spec.attempt)
    res = stage_in(ssh, store, spec, paths, config_json={"config": {}},
                   gear_env="X='1'\n", script_text="#!/bin/bash\ntrue\n")
    assert all(f.copied for f in res.inputs)
    for d in paths.directories():
        assert ssh.stat(d).mode == 0o700, d
    assert ssh.stat(paths.env_file).mode == 0o600
    target = paths.input_file("dicom", "scan $(one).dcm")
    out = ssh.run(["sha256sum", "--", target], timeout=30)
    assert out.stdout.split()[0] == hashlib.sha256(b"DICM" * 5000).hexdigest()
    # a half-staged directory: one input gone, a stray temp file; rerun finishes it
    ssh.remove_tree(paths.input_file("notes", "a'b\"c.txt"))
    ssh.write_text(paths.input_dir + "/dicom/.tmp-leftover", "x")
    again = stage_in(ssh, store, spec, paths, config_json={"config": {}},
                     gear_env="X='1'\n", script_text="#!/bin/bash\ntrue\n")
    assert {f.input_name: f.copied for f in again.inputs} == {"dicom": False, "notes": True}
    assert ssh.listdir(paths.input_dir + "/dicom") == ["scan $(one).dcm"]
    remove_job_dir(ssh, paths)
    assert not ssh.exists(paths.root)


def test_stage_array_over_ssh_sends_one_verified_tasks_dat(ssh: SSHTransport, scratch: str,
                                                          tmp_path: Path) -> None:
    """An array is staged as ONE tasks.dat sent by SFTP and hashed on the far side; each
    record's bytes are what the task will find there (a missing object fails that task)."""
    from hpcgear.staging.stagein import ArrayTask, stage_array

    store = ObjectStore(tmp_path / "storage")
    spec = make_spec(store)
    lost = InputSpec(name="lost", base="file", file_id="l", version=1, file_name="l.txt",
                     sha256="sha256:" + "9" * 64, size=3)
    specs = [replace(spec, job_id=f"sshjob{i}") for i in range(3)]
    specs[2] = replace(specs[2], inputs=(*spec.inputs, lost))
    tasks = [ArrayTask(s, JobPaths.for_job(scratch, s.job_id, 1), {"config": {"i": i}},
                       "X='1'\n") for i, s in enumerate(specs)]
    dat = scratch + "/tasks.dat"
    res = stage_array(ssh, store, dat, tasks)
    assert list(res.errors) == [2] and res.files[2] is None
    assert "9999" in res.errors[2].message
    assert ssh.stat(dat).mode == 0o600
    local = tmp_path / "tasks.dat"
    ssh.get(dat, local)
    data = local.read_bytes()
    assert len(data) == res.bytes_written
    for files in res.files[:2]:
        assert files is not None
        for f in files:
            assert hashlib.sha256(data[f.offset:f.offset + f.length]).hexdigest() == f.sha256
    # the DICOM object is stored once for both tasks
    dicoms = [f for fs in res.files[:2] if fs for f in fs if "/dicom/" in f.relpath]
    assert len(dicoms) == 2 and dicoms[0].offset == dicoms[1].offset


def test_stage_out_over_ssh_refuses_escapes_and_verifies(ssh: SSHTransport, scratch: str,
                                                         tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "storage")
    paths = JobPaths.for_job(scratch, "sshjob", 1)
    out = paths.output_dir
    ssh.mkdir(out + "/sub/deeper")
    ssh.write_text(out + "/good file.txt", "good")
    ssh.write_text(out + "/new\nline.txt", "newline name")
    ssh.write_text(out + "/sub/a.txt", "a")
    ssh.write_text(out + "/sub/deeper/b.txt", "b")
    ssh.write_text(out + "/.metadata.json",
                   '{"acquisition": {"files": [{"name": "good file.txt", "tags": ["ok"]}]}}')
    for argv in (["ln", "-s", "/etc/passwd", out + "/passwd"],
                 ["ln", "-s", "../../../../etc", out + "/up"],
                 ["ln", "-s", "sub", out + "/dirlink"],
                 ["ln", "-s", "good file.txt", out + "/alias.txt"],
                 ["mkfifo", out + "/pipe"]):
        assert ssh.run(argv, timeout=30).ok, argv
    scan = scan_outputs(ssh, paths)
    assert {r.relpath for r in scan.refused} == {"passwd", "up", "dirlink", "pipe",
                                                  "new\nline.txt"}
    assert scan.output_names == ("alias.txt", "good file.txt", "sub.zip")
    stored = {s.name: s for s in fetch_outputs(ssh, store, scan)}
    assert stored["good file.txt"].sha256 == sha(b"good") == stored["alias.txt"].sha256
    with zipfile.ZipFile(store.path_for(stored["sub.zip"].sha256)) as zf:
        assert sorted(zf.namelist()) == ["sub/a.txt", "sub/deeper/b.txt"]
    text = read_metadata(ssh, scan)
    plan = parse_metadata(text or "", destination_type="acquisition", analysis=False,
                          output_names=scan.output_names)
    assert plan.updates[0].files[0].tags == ("ok",)
    # the same tree gives the same zip, hashed on the far side again
    again = {s.name: s.sha256 for s in fetch_outputs(ssh, store, scan_outputs(ssh, paths))}
    assert again == {n: s.sha256 for n, s in stored.items()}
    # a file changed after the scan is caught by the scratch hash
    ssh.write_text(out + "/good file.txt", "changed")
    with pytest.raises(StagingError):
        fetch_outputs(ssh, store, scan)
    # logs
    ssh.mkdir(paths.meta_dir)
    ssh.write_text(paths.log_file("77"), "line1\nline2\n")
    assert read_text_file(ssh, paths.log_file("77"), max_bytes=6) == "line2\n"
    log = fetch_file(ssh, store, paths.log_file("77"))
    assert log is not None and log.sha256 == sha(b"line1\nline2\n")
    assert stat.S_ISREG(store.path_for(log.sha256).stat().st_mode)
