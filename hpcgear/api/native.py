"""hpcgear's own endpoints (no Flywheel counterpart), under ``/api/hpcgear``.

``POST /cli`` runs one hpcgear CLI command on the server as the key's owner: the
same click command and service functions as on the command line, with the
identity taken from the key (``--as`` still needs a site admin). This is how the
CLI works as a client without a rewrite per command (``hpcgear/cli/client.py``);
``hpcgear/api/cliplan.py`` says which commands run here. A command's file
parameters never name a path of the server: the client stages file content
(``POST /stage``) and fetches what a command wrote (``GET /transfers/{token}``);
``upload`` streams into storage (``/upload``) and downloads stream file contents
(``/files/{id}/content``, ``/download``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from hpcgear.api.access import Caller, get_container, require_user_key
from hpcgear.api.app import ApiState, CallerDep, StateDep
from hpcgear.api.cliplan import OUT_PREFIX, STAGE_PREFIX, Mode, plan_for
from hpcgear.api.transfers import safe_out_name
from hpcgear.errors import InvalidInputError, NotFoundError, PermissionDeniedError

router = APIRouter()

_GLOBAL_WITH_VALUE = ("--as",)


def split_global(argv: list[str]) -> tuple[str | None, list[str], int]:
    """(--as value, the rest, index of the command in the rest).

    Only ``--as`` may come before the command: ``--config`` would name a file of
    the server, ``-v``/``--log-json`` would reconfigure the server's logging.
    """
    as_user = None
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
        if a.startswith("-"):
            raise InvalidInputError(
                f"global option {a.split('=')[0][:40]!r} is not run remotely",
                "only --as USER may come before the command (the client drops the others)",
            )
        return as_user, argv[i:], 0
    return as_user, [], 0


def check_remote(argv: list[str]) -> str:
    """The command's name if ``argv`` may run on the server (hpcgear/api/cliplan.py)."""
    _as, rest, _ = split_global(argv)
    if not rest:
        raise InvalidInputError("no command given", "e.g. argv: ['ls', '--json']")
    found = plan_for(rest)
    if found is None:
        raise InvalidInputError(
            f"no command {' '.join(rest[:2])[:80]!r}", "`hpcgear --help` lists the commands"
        )
    name, plan = found
    if plan.mode not in (Mode.FORWARD, Mode.CLIENT):
        raise PermissionDeniedError(
            f"`hpcgear {name}` cannot run through the API",
            plan.hint or "it runs on the client: the CLI does that itself",
        )
    if any(a in ("-h", "--help") for a in rest):
        raise InvalidInputError(
            "help is not run remotely", "`hpcgear COMMAND --help` works locally"
        )
    return name


def _stage_map(st: ApiState, caller: Caller, argv: list[str]) -> tuple[dict[str, str], Path]:
    """Placeholders in argv -> server paths: staged inputs (the caller's own, used once)
    and fresh output paths in a private directory (returned)."""
    files: dict[str, str] = {}
    out_root = st.transfers.new_out_root()
    try:
        for a in argv:
            for m in _PLACEHOLDER.finditer(a):
                ph = m.group(0)
                if ph in files:
                    continue
                if ph.startswith(STAGE_PREFIX):
                    t = st.transfers.take_input(caller.login, ph[len(STAGE_PREFIX):])
                    files[ph] = str(t.entry)
                else:
                    files[ph] = str(out_root / safe_out_name(ph[len(OUT_PREFIX):]))
    except BaseException:
        _discard_inputs(st, files)
        st.transfers.discard(out_root)
        raise
    return files, out_root


def _discard_inputs(st: ApiState, files: dict[str, str]) -> None:
    for ph, path in files.items():
        if ph.startswith(STAGE_PREFIX):
            st.transfers.discard(Path(path).parent.parent)  # <root>/in/<entry>


_PLACEHOLDER = re.compile(
    re.escape(STAGE_PREFIX) + r"[A-Za-z0-9_-]{16,64}|" + re.escape(OUT_PREFIX) + r"[^\s=/]{1,100}"
)


@router.post("/cli")
def cli_endpoint(caller: CallerDep, st: StateDep,
                 body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Run ``hpcgear ARGV...`` as the key's owner: {"argv": [...]} -> {code, stdout, stderr,
    outputs}.

    Parameters naming files hold placeholders: ``@hpcgear-stage:TOKEN`` for a
    file the caller staged with ``POST /stage``, ``@hpcgear-out:NAME`` for one
    the command writes; ``outputs`` maps each such placeholder to a token for
    ``GET /transfers/{token}``. Any other value of such a parameter is refused.
    """
    require_user_key(caller, "the CLI endpoint")
    argv = body.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise InvalidInputError("argv must be a list of strings", 'send {"argv": ["ls"]}')
    check_remote(argv)
    if st.cli_runner is None:
        raise NotFoundError(
            "this server does not run CLI commands", "start it with `hpcgear serve`"
        )
    files, out_root = _stage_map(st, caller, argv)
    keep_out = False
    try:
        res = st.cli_runner(st.settings, st.db, st.store, caller.login, argv, files)
        for ph, path in sorted(files.items(), key=lambda kv: -len(kv[1])):
            for stream in ("stdout", "stderr"):  # the caller's own names, not the server's
                res[stream] = str(res.get(stream, "")).replace(path, ph)
        outputs: dict[str, str] = {}
        for ph, path in files.items():
            if ph.startswith(OUT_PREFIX) and Path(path).exists() and res.get("code") == 0:
                outputs[ph] = st.transfers.register_output(caller.login, out_root, Path(path))
                keep_out = True
        return {**res, "outputs": outputs}
    finally:
        _discard_inputs(st, files)
        if not keep_out:
            st.transfers.discard(out_root)


@router.post("/stage")
async def stage_upload(request: Request, caller: CallerDep, st: StateDep) -> dict[str, str]:
    """Stage a file or directory for one forwarded command: the body is a tar stream
    (one top-level entry); returns {"stage": TOKEN} for ``@hpcgear-stage:TOKEN``."""
    import anyio.to_thread

    require_user_key(caller, "staging files")
    st.store.ensure()
    root = st.transfers.begin_input(caller.login)
    try:  # the body streams to disk (never whole in memory), then unpacks in a thread
        with (root / "upload.tar").open("wb") as fh:
            async for block in request.stream():
                fh.write(block)
    except BaseException:
        st.transfers.abort_input(caller.login, root)
        raise
    token = await anyio.to_thread.run_sync(
        lambda: st.transfers.finish_input(caller.login, root)
    )
    return {"stage": token}


@router.get("/transfers/{token}")
def fetch_output(token: str, caller: CallerDep, st: StateDep) -> StreamingResponse:
    """An output a forwarded command wrote, as a tar stream (once; then it is removed)."""
    import tempfile

    t = st.transfers.take_output(caller.login, token)
    spool = tempfile.TemporaryFile(dir=t.root)  # noqa: SIM115 - closed by the stream
    try:
        st.transfers.tar_to(t.entry, spool)
        spool.seek(0)
    except BaseException:
        spool.close()
        st.transfers.discard(t.root)
        raise

    def chunks() -> Iterator[bytes]:
        try:
            while block := spool.read(1 << 20):
                yield block
        finally:
            spool.close()
            st.transfers.discard(t.root)

    return StreamingResponse(chunks(), media_type="application/x-tar")


@router.get("/files/{file_id}/content")
def file_content(file_id: str, caller: CallerDep, st: StateDep,
                 version: int | None = None) -> StreamingResponse:
    """A file's bytes by id (its current version, or ``version``), streamed."""
    from hpcgear.db.models import File
    from hpcgear.hierarchy.permissions import RoleName
    from hpcgear.hierarchy.service import file_version

    with st.session() as s:
        row = s.get(File, file_id)
        if row is None:
            raise NotFoundError(f"file {file_id[:80]!r} does not exist", "check the id")
        get_container(s, caller, row.container_id, RoleName.READ_ONLY)
        fv = file_version(s, row, version)
        digest, size, name, ver = fv.hash, fv.size, row.name, fv.version
    return _stream_object(st, digest, size, name, ver)


def _stream_object(st: ApiState, digest: str, size: int, name: str, ver: int
                   ) -> StreamingResponse:
    store = st.store

    def chunks() -> Iterator[bytes]:
        with store.open(digest) as fh:
            while block := fh.read(1 << 20):
                yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "Content-Length": str(size), "X-Hpcgear-Hash": digest, "X-Hpcgear-Version": str(ver),
        "X-Hpcgear-Name": quote(name),
    })


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
    return _stream_object(st, digest, size, name, ver)


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
