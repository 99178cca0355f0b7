"""hpcgear's own endpoints (no Flywheel counterpart), under ``/api/hpcgear``.

``POST /cli`` runs one hpcgear CLI command on the server as the key's owner: the
same click command and service functions as on the command line, with the
identity taken from the key (``--as`` still needs a site admin). This is how the
CLI works as a client without a rewrite per command (``hpcgear/cli/client.py``).
Commands that read or write files of the machine they run on are not run here:
``upload`` and ``download`` use ``/upload`` and ``/download`` instead, and the
rest (init, db, controller, serve, ingest, gear build/install, ...) stay with
the admins on the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from hpcgear.api.access import require_user_key
from hpcgear.api.app import CallerDep, StateDep
from hpcgear.errors import InvalidInputError, NotFoundError, PermissionDeniedError

router = APIRouter()

# top-level command -> subcommands allowed remotely (None: the command has none / all)
REMOTE: dict[str, frozenset[str] | None] = {
    "whoami": None,
    "ls": None,
    "info": frozenset({"set", "unset"}),
    "tag": frozenset({"add", "rm"}),
    "mv": None,
    "rename": None,
    "rm": None,
    "trash": frozenset({"list", "restore", "purge"}),
    "history": None,
    "versions": None,
    "classification": None,
    "note": frozenset({"add", "list"}),
    "view": frozenset({"save", "list", "run", "rm", "show"}),
    "find": None,
    "jobs": None,
    "job": frozenset({"show", "cancel", "retry", "logs"}),
    "usage": None,
    "run": None,
    "batch": None,
    "rule": frozenset({"add", "list", "show", "enable", "disable", "rm", "test"}),
    "rules": frozenset({"evaluate"}),
    "provenance": frozenset({"show", "trace", "export"}),
    "user": frozenset({"add", "list", "key", "promote", "demote", "disable", "enable"}),
    "report": None,  # only `--html -` is useful remotely; the client rewrites --html OUT
    "role": frozenset({"grant", "revoke", "list"}),
    "group": frozenset({"create"}),
    "project": frozenset({"create"}),
    "gear": frozenset({"list", "show", "disable", "enable"}),
    "site": frozenset({"show", "schema"}),
    # read-only: the stored cycle reports and backlog counts (run/once/metrics stay local)
    "controller": frozenset({"status", "health"}),
}
# Options that name a file on the machine the command runs on: never on the server.
_PATH_OPTIONS = ("--out", "--output", "-o", "--html", "--config")
_GLOBAL_WITH_VALUE = ("--as",)
_GLOBAL_FLAGS = ("--traceback",)


def split_global(argv: list[str]) -> tuple[str | None, list[str], int]:
    """(--as value, the rest, index of the command in the rest)."""
    as_user = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            as_user = argv[i + 1]
            i += 2
            continue
        if a.startswith("--as="):
            as_user = a.split("=", 1)[1]
            i += 1
            continue
        if a in _GLOBAL_FLAGS or (a.startswith("-v") and set(a[1:]) == {"v"}):
            i += 1
            continue
        rest = argv[i:]
        break
    return as_user, rest, 0


def check_remote(argv: list[str]) -> None:
    _as, rest, _ = split_global(argv)
    if not rest:
        raise InvalidInputError("no command given", "e.g. argv: ['ls', '--json']")
    cmd = rest[0]
    if cmd not in REMOTE:
        raise PermissionDeniedError(
            f"`hpcgear {cmd}` cannot run through the API",
            "run it on the server as an admin (or, for upload/download, use the file endpoints)",
        )
    subs = REMOTE[cmd]
    if subs is not None:
        sub = next((a for a in rest[1:] if not a.startswith("-")), None)
        if cmd == "view" and sub is not None and "/" in sub:
            sub = "show"  # `view GROUP/PROJECT --columns ...` is the ad-hoc view
        if sub not in subs:
            raise PermissionDeniedError(
                f"`hpcgear {cmd} {sub or ''}` cannot run through the API",
                f"remote subcommands of {cmd}: {', '.join(sorted(subs))}",
            )
    for i, a in enumerate(argv):
        to_stdout = argv[i + 1:i + 2] == ["-"] if a in _PATH_OPTIONS else a.endswith("=-")
        if to_stdout and a.split("=")[0] == "--html":
            continue  # `report --html -`: the page comes back as stdout, no server file
        if a in ("-h", "--help") or a in _PATH_OPTIONS or any(
            a.startswith(o + "=") for o in _PATH_OPTIONS if o.startswith("--")
        ):
            raise InvalidInputError(
                f"{a.split('=')[0]} names a file or help on the server and is not run remotely",
                "drop it; print to stdout and redirect on your side",
            )


@router.post("/cli")
def cli_endpoint(caller: CallerDep, st: StateDep,
                 body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Run ``hpcgear ARGV...`` as the key's owner: {"argv": [...]} -> {code, stdout, stderr}."""
    require_user_key(caller, "the CLI endpoint")
    argv = body.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise InvalidInputError("argv must be a list of strings", 'send {"argv": ["ls"]}')
    check_remote(argv)
    if st.cli_runner is None:
        raise NotFoundError(
            "this server does not run CLI commands", "start it with `hpcgear serve`"
        )
    return st.cli_runner(st.settings, st.db, st.store, caller.login, argv)


@router.post("/upload")
async def upload_by_path(path: str, request: Request, caller: CallerDep,
                         st: StateDep) -> list[dict[str, Any]]:
    """``hpcgear upload PATH FILE...`` from a client: missing levels below the project are made."""
    import anyio.to_thread

    form = await request.form(max_files=1000, max_fields=10)
    try:
        uploads = [v for k, v in form.multi_items() if k == "file" and not isinstance(v, str)]
        if not uploads:
            raise InvalidInputError("no file in the upload", "send multipart field 'file'")

        from hpcgear.hierarchy.paths import check_file_name

        names = [check_file_name(u.filename or "") for u in uploads]
        if len(set(names)) != len(names):
            raise InvalidInputError("two files with one name", "rename one")

        def write(s: Session) -> list[dict[str, Any]]:
            import tempfile
            from pathlib import Path

            from hpcgear.api.access import check_scope
            from hpcgear.hierarchy.service import add_file_version, ensure_path
            from hpcgear.ingest.upload import spool_for_profile, upload_deidentified

            for u in uploads:  # a retried attempt reads every file again
                u.file.seek(0)
            target = ensure_path(s, caller.login, path)
            check_scope(s, caller, target, write=True)
            out = []
            # A project with a de-identification profile: clean DICOM first (deid helper).
            with tempfile.TemporaryDirectory(prefix="api-up-", dir=st.store.tmp) as tmp:
                spooled = spool_for_profile(
                    s, st.store, target.project_id,
                    [(n, u.file) for n, u in zip(names, uploads, strict=True)], Path(tmp),
                )  # fmt: skip
                if spooled is not None:
                    results = upload_deidentified(
                        s, st.store, caller.login, path, spooled,
                        origin_type="user", origin_id=caller.login,
                    )  # fmt: skip
                    return [{"name": r.name, "file_id": r.file_id, "version": r.version,
                             "hash": r.hash, "size": r.size, "created": r.created}
                            for r in results]  # fmt: skip
            for name, up in zip(names, uploads, strict=True):
                obj = st.store.put_stream(up.file)
                r = add_file_version(s, target, name, obj.hash, obj.size, caller.login,
                                     origin_type="user", origin_id=caller.login)
                out.append({"name": r.name, "file_id": r.file_id, "version": r.version,
                            "hash": r.hash, "size": r.size, "created": r.created})
            return out

        def store_all() -> list[dict[str, Any]]:
            st.store.ensure()
            # Two clients creating the same new session race on its row: run it again.
            return st.db.write(write)

        return await anyio.to_thread.run_sync(store_all)
    finally:
        await form.close()


@router.get("/download")
def download_by_path(path: str, caller: CallerDep, st: StateDep,
                     version: int | None = None) -> StreamingResponse:
    from hpcgear.api.access import check_scope
    from hpcgear.hierarchy.permissions import RoleName
    from hpcgear.hierarchy.service import file_version, resolve_file

    with st.session() as s:
        container, row = resolve_file(s, caller.login, path, RoleName.READ_ONLY)
        check_scope(s, caller, container, write=False)
        fv = file_version(s, row, version)
        digest, size, name, ver = fv.hash, fv.size, row.name, fv.version
    store = st.store

    def chunks() -> Iterator[bytes]:
        with store.open(digest) as fh:
            while block := fh.read(1 << 20):
                yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "Content-Length": str(size), "X-Hpcgear-Hash": digest, "X-Hpcgear-Version": str(ver),
        "X-Hpcgear-Name": name,
    })


@router.get("/provenance/{job_id}")
def provenance(job_id: str, caller: CallerDep, st: StateDep) -> dict[str, Any]:
    """A job's immutable provenance record (as `hpcgear provenance show --json`)."""
    from hpcgear.controller.record import get_record, verify_record
    from hpcgear.jobs.service import get_job

    require_user_key(caller, "reading provenance")
    with st.session() as s:
        job = get_job(s, caller.login, job_id)
        row = get_record(s, job.id)
        if row is None:
            raise NotFoundError(
                f"job {job_id} has no provenance record (state {job.state})",
                "records are written when a job finishes",
            )
        return {"job_id": row.job_id, "sha256": row.sha256, "verified": verify_record(row),
                "created": row.created.isoformat() if row.created else None,
                "record": row.record}


@router.get("/rules")
def rules(caller: CallerDep, st: StateDep, project: str | None = None) -> list[dict[str, Any]]:
    """Gear rules (of PROJECT as group/project, or every project the caller may read)."""
    from hpcgear.rules.service import list_rules, rule_to_dict

    require_user_key(caller, "listing rules")
    with st.session() as s:
        return [rule_to_dict(s, r) for r in list_rules(s, caller.login, project)]


@router.get("/sites")
def sites(caller: CallerDep, st: StateDep) -> list[dict[str, Any]]:
    """The sites jobs can run on: name, scheduler, partitions, whether gears reach the API."""
    require_user_key(caller, "listing sites")
    out = []
    for name, site in sorted(st.sites.sites.items()):
        out.append({"name": name, "scheduler": site.scheduler,
                    "partitions": sorted(site.partitions), "api_url": site.api_url,
                    "default": name == st.sites.default_site})
    return out
