"""Issue 12's "done when": every data command answers ``--json`` with JSON and exits 0, and a
path that does not exist exits 3 (NOT_FOUND) with one ``error:`` + ``hint:`` and no traceback,
changing nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom.data
import pytest

from tests.unit.test_cli_core import assert_one_clear_error, db_snapshot
from tests.unit.test_data_cli import ACQ, SESSION, Data, data  # noqa: F401
from tests.unit.test_deid import SEEDS_PROFILE

MISSING = "imaging/study1/sub-99"
# command -> argv with --json (run in this order on one instance; @T@ is a temp dir,
# @TRASH@ the trash id of the rm before it)
JSON_CASES: list[tuple[str, list[str]]] = [
    ("ls", ["ls", SESSION, "--json"]),
    ("ls -r", ["ls", "imaging/study1", "--recursive", "--json"]),
    ("versions", ["versions", f"{ACQ}/scan.json", "--json"]),
    ("info set", ["info", "set", ACQ, "k=v", "--json"]),
    ("info unset", ["info", "unset", ACQ, "k", "--json"]),
    ("classification set", ["classification", "set", f"{ACQ}/scan.json", "Intent=Structural",
                            "--json"]),
    ("classification add", ["classification", "add", f"{ACQ}/scan.json", "Measurement=T1",
                            "--json"]),
    ("classification rm", ["classification", "rm", f"{ACQ}/scan.json", "Measurement=T1",
                           "--json"]),
    ("tag add", ["tag", "add", SESSION, "checked", "--json"]),
    ("tag rm", ["tag", "rm", SESSION, "checked", "--json"]),
    ("note add", ["note", "add", SESSION, "hello", "--json"]),
    ("note list", ["note", "list", SESSION, "--json"]),
    ("rename", ["rename", f"{SESSION}/rest", "rest2", "--json"]),
    ("mv", ["mv", f"{ACQ}/scan.json", f"{SESSION}/rest2", "--json"]),
    ("rm", ["rm", f"{SESSION}/rest2/scan.json", "--json"]),
    ("trash list", ["trash", "list", "--json"]),
    ("trash restore", ["trash", "restore", "@TRASH@", "--json"]),
    ("history", ["history", "--json"]),
    ("download -r", ["download", "imaging/study1", "--recursive", "--out", "@T@/dl", "--json"]),
    ("download --tar", ["download", "imaging/study1", "-r", "--tar", "@T@/all.tar", "--json"]),
    ("view", ["view", "imaging/study1", "--columns", "subject.label,file.name", "--json"]),
    ("view save", ["view", "save", "imaging/study1", "v1", "--columns", "file.name", "--json"]),
    ("view list", ["view", "list", "imaging/study1", "--json"]),
    ("view run", ["view", "run", "imaging/study1", "v1", "--json"]),
    ("view rm", ["view", "rm", "imaging/study1", "v1", "--json"]),
    ("find", ["find", "--label", "scan*", "--json"]),
    ("export bids", ["export", "bids", "imaging/study1", "--out", "@T@/bids", "--json"]),
    ("deid test", ["deid", "test", "ps3.15-basic", "@DICOM@", "--json"]),
    ("deid attach", ["deid", "attach", "imaging/study1", "@T@/seeds.yaml", "--json"]),
    ("deid show", ["deid", "show", "imaging/study1", "--json"]),
    ("deid map", ["deid", "map", "imaging/study1", "--json"]),
    ("deid detach", ["deid", "detach", "imaging/study1", "--json"]),
    ("ingest bids", ["ingest", "bids", "@T@/ds", "--group", "imaging", "--project", "study2",
                     "--json"]),
    ("ingest folder", ["ingest", "folder", "@T@/ds", "--group", "imaging", "--project",
                       "study2", "--template", "sub-{subject}/{session}/*", "--dry-run",
                       "--json"]),
    ("trash purge", ["trash", "purge", "--older-than", "0", "--json"]),
]

# command -> argv naming something that does not exist (exit 3, nothing changed)
MISSING_CASES: dict[str, list[str]] = {
    "ls": ["ls", MISSING],
    "versions": ["versions", f"{ACQ}/nope.json"],
    "info unset": ["info", "unset", MISSING, "k"],
    "classification set": ["classification", "set", f"{ACQ}/nope.json", "Intent=x"],
    "tag add": ["tag", "add", MISSING, "x"],
    "note add": ["note", "add", MISSING, "x"],
    "rename": ["rename", MISSING, "x"],
    "mv": ["mv", MISSING, "imaging/study2"],
    "mv to": ["mv", f"{ACQ}/scan.json", "imaging/study1/sub-99/ses/acq"],
    "rm": ["rm", MISSING],
    "trash restore": ["trash", "restore", "ffffffffff"],
    "download -r": ["download", MISSING, "-r", "--out", "@T@/x"],
    "view": ["view", "imaging/nope", "--columns", "file.name"],
    "view run": ["view", "run", "imaging/study1", "nope"],
    "view rm": ["view", "rm", "imaging/study1", "nope"],
    "find": ["find", "imaging/nope", "--label", "*"],
    "export bids": ["export", "bids", MISSING, "--out", "@T@/x"],
    "deid show": ["deid", "show", "imaging/nope"],
    "deid detach": ["deid", "detach", "imaging/study1"],
    "ingest bids": ["ingest", "bids", "@T@/ds", "--group", "nope", "--project", "p"],
}


def _fill(argv: list[str], tmp: Path, trash: str) -> list[str]:
    dicom = pydicom.data.get_testdata_file("CT_small.dcm")
    return [a.replace("@T@", str(tmp)).replace("@TRASH@", trash)
            .replace("@DICOM@", str(dicom)) for a in argv]


def _bids_source(tmp: Path) -> None:
    from tests.unit.test_bids import make_bids

    make_bids(tmp / "ds")
    shutil.rmtree(tmp / "ds" / "derivatives")
    (tmp / "seeds.yaml").write_text(SEEDS_PROFILE)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_data_command_answers_json(data: Data, tmp_path: Path) -> None:  # noqa: F811
    env = data.env
    _bids_source(tmp_path)
    trash = ""
    seen: set[str] = set()
    for name, argv in JSON_CASES:
        res = env.run(*_fill(argv, tmp_path, trash))
        assert res.code == 0, f"{name}: exit {res.code}: {res.err}"
        try:
            out = json.loads(res.out)
        except ValueError:
            pytest.fail(f"{name} --json printed no JSON: {res.out[:200]!r}")
        assert "Traceback" not in res.err, name
        if name == "rm":
            trash = out[0]["trash_id"]
        seen.add(name.split(" -")[0])
    # every issue-12 command is in the table
    assert {"mv", "rename", "rm", "trash list", "trash restore", "trash purge", "versions",
            "info unset", "classification set", "classification add", "classification rm",
            "download", "view", "view save", "view list", "view run", "view rm", "find",
            "export bids", "deid test", "deid attach", "deid show", "deid map", "deid detach",
            "ingest bids", "ingest folder", "history"} <= seen


@pytest.mark.parametrize("name", sorted(MISSING_CASES))
def test_a_missing_path_exits_3_with_one_clear_error(data: Data, name: str,  # noqa: F811
                                                     tmp_path: Path) -> None:
    env = data.env
    _bids_source(tmp_path)
    before = db_snapshot(env)
    res = env.run(*_fill(MISSING_CASES[name], tmp_path, ""))
    assert res.code == 3, f"{name}: exit {res.code}: {res.err}"
    assert_one_clear_error(res, "")
    assert db_snapshot(env) == before, f"{name} changed the database"
