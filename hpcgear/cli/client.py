"""The CLI as a client of ``hpcgear serve``: with an API key configured, every command
goes through the HTTP API as the key's owner, so login nodes hold no database
credentials and nobody acts as anyone else.

Where each command runs is one table, ``hpcgear/api/cliplan.py``: most run on
the server (``POST /api/hpcgear/cli``: the same click command, the identity
from the key); ``upload``, ``download`` and ``whoami`` are handled here over
their own endpoints; ``login``, ``logout`` and the checks of local files run
here without a database; server-side admin commands are refused. A forwarded
command's file parameters move content, not paths: what it reads is staged on
the server first (``POST /api/hpcgear/stage``, a tar stream), what it writes
comes back into the caller's path (``GET /api/hpcgear/transfers/{token}``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcgear.errors import (
    AlreadyExistsError,
    AuthenticationError,
    DatabaseError,
    HpcgearError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
)

if TYPE_CHECKING:
    import urllib.error

    from hpcgear.api.cliplan import Plan

# (urllib, hashlib and the key parser are imported when a request is made: every
# local command line passes through `remote_key`, which must stay cheap.)

_GLOBAL_WITH_VALUE = ("--config", "--as")


class ApiClient:
    def __init__(self, key: str, timeout: float = 300.0) -> None:
        from hpcgear.auth.keytext import parse_key

        self.key = parse_key(key)
        self.timeout = timeout

    def _request(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str]
        | None = None,
    ) -> Any:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(  # noqa: S310 - the URL comes from the user's own key
            self.key.base_url + path, data=body, method=method,
            headers={"Authorization": f"scitran-user {self.key.secret}", **(headers or {})},
        )
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise _error_from(exc) from None
        except OSError as exc:
            raise DatabaseError(
                f"cannot reach the hpcgear API at {self.key.base_url}: {exc}",
                "check that `hpcgear serve` runs there, or `hpcgear logout` to work locally",
                transient=True,
            ) from exc

    def get_json(self, path: str) -> Any:
        with self._request("GET", path) as r:
            return json.load(r)

    def post_json(self, path: str, data: Any) -> Any:
        body = json.dumps(data).encode()
        with self._request("POST", path, body=body,
                           headers={"Content-Type": "application/json"}) as r:
            return json.load(r)

    def upload(self, dest_path: str, files: list[Path], *, url: str | None = None) -> Any:
        """Multipart upload, streamed from disk by a generator (no whole-file buffering)."""
        import secrets
        import urllib.error
        import urllib.parse
        import urllib.request

        boundary = "hpcgear-" + secrets.token_hex(12)
        parts: list[tuple[bytes, Path | None]] = []
        for f in files:
            head = (
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{f.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()
            parts.append((head, f))
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + f.stat().st_size + 2 for h, f in parts if f) + len(tail)

        class Body:
            def __iter__(self) -> Any:
                for head, f in parts:
                    yield head
                    assert f is not None
                    with f.open("rb") as fh:
                        while block := fh.read(1 << 20):
                            yield block
                    yield b"\r\n"
                yield tail

        q = urllib.parse.urlencode({"path": dest_path})
        req = urllib.request.Request(  # noqa: S310
            self.key.base_url + (url or f"/api/hpcgear/upload?{q}"), data=Body(), method="POST",
            headers={"Authorization": f"scitran-user {self.key.secret}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}",
                     "Content-Length": str(length)},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310
                return json.load(r)
        except urllib.error.HTTPError as exc:
            raise _error_from(exc) from None

    def download(self, path: str, out_dir: Path, version: int | None) -> tuple[Path, str]:
        import urllib.parse

        from hpcgear.storage.objects import write_verified

        q = {"path": path, **({"version": str(version)} if version is not None else {})}
        with self._request("GET", "/api/hpcgear/download?" + urllib.parse.urlencode(q)) as r:
            name = urllib.parse.unquote(r.headers.get("X-Hpcgear-Name") or "") or path.rsplit(
                "/", 1)[-1]
            digest = r.headers.get("X-Hpcgear-Hash") or ""
            out_dir.mkdir(parents=True, exist_ok=True)
            dest = out_dir / Path(name).name
            write_verified(
                r, digest, dest, verify=bool(digest),
                mismatch=StorageError(f"download of {path} does not match {digest}",
                                      "try again; report it if it repeats"),
            )
            return dest, digest


    def open_file(self, file_id: str, version: int) -> Any:
        """A file's bytes by id and version (a streaming response; use as a context)."""
        import urllib.parse

        return self._request(
            "GET", f"/api/hpcgear/files/{urllib.parse.quote(file_id, safe='')}/content"
            f"?version={int(version)}",
        )

    def stage(self, local: Path) -> str:
        """Stream ``local`` (a file or directory, links followed) to the server as a tar;
        the server's token for it."""
        import tarfile
        import threading

        r_fd, w_fd = os.pipe()
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                with os.fdopen(w_fd, "wb") as w, tarfile.open(
                    fileobj=w, mode="w|", dereference=True
                ) as tar:
                    tar.add(local, arcname=local.resolve().name or "root", recursive=True)
            except BaseException as exc:  # reported after the upload ends
                failure.append(exc)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()

        class Body:
            def __iter__(self) -> Any:
                with os.fdopen(r_fd, "rb") as r:
                    while block := r.read(1 << 20):
                        yield block

        try:
            with self._request("POST", "/api/hpcgear/stage", body=Body(),  # type: ignore[arg-type]
                               headers={"Content-Type": "application/x-tar",
                                        "Transfer-Encoding": "chunked"}) as resp:
                token = str(json.load(resp)["stage"])
        finally:
            worker.join()
        if failure:
            exc = failure[0]
            raise StorageError(f"cannot read {local}: {exc}", "check the files' permissions")
        return token

    def fetch_output(self, token: str, target: Path, *, directory: bool) -> None:
        """Save what a forwarded command wrote: into ``target`` (a file, or a directory
        whose files are added or replaced)."""
        import shutil
        import tarfile
        import tempfile

        target = target.expanduser()
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".hpcgear-", dir=parent) as tmp, \
                self._request("GET", f"/api/hpcgear/transfers/{token}") as r:
            with tarfile.open(fileobj=r, mode="r|") as tar:
                tar.extractall(tmp, filter="data")  # no absolute names, '..', links out
            entries = list(Path(tmp).iterdir())
            if len(entries) != 1:
                raise StorageError("the server sent an output of an unexpected shape",
                                   "run the command again; report it if it repeats")
            got = entries[0]
            if not directory:
                if not got.is_file():
                    raise StorageError("the server sent a directory for a file",
                                       "report it as a bug")
                os.replace(got, target)
                return
            if not target.exists():
                os.replace(got, target)
                return
            for f in sorted(got.rglob("*")):
                dest = target / f.relative_to(got)
                if f.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif dest.is_dir():
                    raise InvalidInputError(f"{dest} is a directory, but the output has a file "
                                            "there", "write into an empty directory")
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(f, dest)
            shutil.rmtree(got, ignore_errors=True)


class _RemoteObjects:
    """Objects of a download plan read over the API (``hierarchy.export.ObjectSource``)."""

    def __init__(self, client: ApiClient, items: list[Any]) -> None:
        self.client = client
        self.root = client.key.base_url
        self._by_hash = {i.hash: (i.file_id, i.version) for i in items}

    def open(self, digest: str) -> Any:
        file_id, version = self._by_hash[digest]
        return self.client.open_file(file_id, version)

    def copy_to(self, digest: str, dest: Path, *, verify: bool = True) -> Path:
        from hpcgear.storage.objects import write_verified

        with self.open(digest) as src:
            return write_verified(
                src, digest, dest, verify=verify,
                mismatch=StorageError(f"the download of {dest.name} does not match {digest}",
                                      "try again; report it if it repeats"),
            )


def _error_from(exc: urllib.error.HTTPError) -> HpcgearError:
    try:
        data = json.loads(exc.read() or b"{}")
    except ValueError:
        data = {}
    message = str(data.get("message") or f"HTTP {exc.code}")
    hint = str(data.get("hint") or "")
    cls: type[HpcgearError] = {
        401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
        409: AlreadyExistsError, 413: InvalidInputError, 422: InvalidInputError,
        429: InvalidInputError, 503: DatabaseError,
    }.get(exc.code, HpcgearError)
    return cls(message, hint)


def split_argv(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(config path, global args to forward, the command and its args)."""
    config = None
    forward: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            if a == "--config":
                config = argv[i + 1]
            else:
                forward += [a, argv[i + 1]]
            i += 2
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
            i += 1
        elif a.startswith("--as="):
            forward.append(a)
            i += 1
        elif a == "--traceback" or (a.startswith("-v") and set(a[1:]) == {"v"}):
            i += 1
        else:
            return config, forward, argv[i:]
    return config, forward, []


def remote_key(argv: list[str]) -> str | None:
    """The API key to use for this command line, or None to run it locally."""
    config, _forward, rest = split_argv(argv)
    if not rest or any(a in ("-h", "--help", "--version") for a in argv):
        return None
    # The key first: without one (the usual local install) the command table of
    # hpcgear/api/cliplan.py need not be imported at all.
    env_key = os.environ.get("HPCGEAR_API_KEY")
    if env_key:
        key: str | None = env_key.strip()
    else:
        from hpcgear.config.settings import load_settings

        try:
            key = load_settings(config).api_key
        except HpcgearError:
            return None  # the local run reports the config problem
    if key is None:
        return None
    from hpcgear.api.cliplan import Mode, plan_for

    found = plan_for(rest)
    if found is None or found[1].mode is Mode.LOCAL:
        return None  # no such command (click says so), or one that needs no database
    return key


def run_remote(argv: list[str], key: str) -> int:
    """Run a command line through the API; prints like the local CLI; returns the status."""
    from hpcgear.api.cliplan import Mode, plan_for

    _config, forward, rest = split_argv(argv)
    found = plan_for(rest)
    assert found is not None  # remote_key said so
    name, plan = found
    if plan.mode is Mode.REFUSED:
        raise PermissionDeniedError(
            f"`hpcgear {name}` does not run through the API (an API key is configured)",
            plan.hint,
        )
    client = ApiClient(key)
    if name == "upload":
        return _upload(client, forward, rest)
    if name == "download":
        return _download(client, forward, rest)
    if name == "job logs" and not forward:
        follow = _job_logs_follow(client, rest)
        if follow is not None:
            return follow
    if name == "whoami" and not forward:
        me = client.get_json("/api/users/self")
        data = {"user": me.get("_id"), "via": "key", "instance": client.key.base_url,
                "site_admin": bool(me.get("root"))}
        if "--json" in rest:
            print(json.dumps(data, indent=2))
        else:
            print(f"{data['user']} (via API key) on {data['instance']}")
        return 0
    return _forward(client, forward, rest, plan)


def _job_logs_follow(client: ApiClient, rest: list[str]) -> int | None:
    """``job logs -f``: read the log every --interval seconds until the job ends, one short
    request each (a server thread is never held); None when not following."""
    import time
    import urllib.parse

    from hpcgear.cli.argmap import parse_raw, resolve
    from hpcgear.states import JobState
    from hpcgear.text import is_log_placeholder

    cmd, args = resolve(rest)
    opts = parse_raw(cmd, args)
    if not opts.get("follow"):
        return None
    job_id = str(opts.get("job_id") or "")
    try:
        interval = float(opts.get("interval") or 5.0)
    except ValueError:
        raise InvalidInputError(f"--interval {opts.get('interval')!r} is not a number",
                                "give seconds, e.g. --interval 5") from None
    if not job_id or not 0.2 <= interval <= 600:
        raise InvalidInputError("job logs -f takes JOB_ID [--interval 0.2..600]",
                                "e.g. hpcgear job logs -f 01J...")
    path = f"/api/jobs/{urllib.parse.quote(job_id, safe='')}/logs"
    shown = ""
    while True:
        doc = client.get_json(path)
        text = "".join(str(x.get("msg", "")) for x in doc.get("logs") or [])
        if not is_log_placeholder(text):
            new = text[len(shown):] if text.startswith(shown) else text
            if new:
                sys.stdout.write(new)
                sys.stdout.flush()
            shown = text
        state = str(doc.get("state") or "")
        if state in {s.value for s in JobState if s.final}:
            if shown and not shown.endswith("\n"):
                sys.stdout.write("\n")
            print(f"job {job_id} is {state}", file=sys.stderr)
            return 0
        time.sleep(interval)


def _forward(client: ApiClient, forward: list[str], rest: list[str], plan: Plan) -> int:
    """Run the command on the server; files it reads are staged, files it writes come back."""
    from hpcgear.api.cliplan import OUT_PREFIX, STAGE_PREFIX, PathRole
    from hpcgear.api.transfers import safe_out_name
    from hpcgear.cli.argmap import raw_values, resolve

    cmd, args = resolve(rest)
    values = raw_values(cmd, args)
    subst: dict[str, str] = {}
    outputs: dict[str, tuple[Path, PathRole]] = {}
    for pname, param in plan.paths.items():
        for v in values.get(pname, []):
            if v in subst or param.allows_literal(v):
                continue
            local = Path(v).expanduser()
            if param.role is PathRole.IN:
                if not local.exists():
                    raise NotFoundError(f"{v} does not exist", "check the path and try again")
                subst[v] = STAGE_PREFIX + client.stage(local)
            else:
                ph = OUT_PREFIX + safe_out_name(local.name)
                while ph in outputs:
                    ph += "_"
                subst[v] = ph
                outputs[ph] = (local, param.role)
    head = rest[: len(rest) - len(args)]
    new_args = _substitute(cmd, args, values, subst, set(plan.paths))
    res = client.post_json("/api/hpcgear/cli", {"argv": [*forward, *head, *new_args]})
    for stream, dest in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        text = str(res.get(stream, ""))
        for v, ph in subst.items():  # the server wrote placeholders for its private paths
            text = text.replace(ph, v)
        dest.write(text)
    code = int(res.get("code", 1))
    for ph, token in dict(res.get("outputs") or {}).items():
        if ph in outputs:
            target, role = outputs[ph]
            client.fetch_output(str(token), target, directory=role is PathRole.OUT_DIR)
    return code


def _substitute(
    cmd: Any, args: list[str], values: dict[str, list[str]], subst: dict[str, str],
    path_params: set[str],
) -> list[str]:
    """``args`` with each file value replaced by its placeholder, checked with click's
    parser: only the file parameters change (a value that is also a label stays)."""
    from hpcgear.cli.argmap import raw_values

    if not subst:
        return list(args)
    want = {p: [subst.get(v, v) if p in path_params else v for v in vs]
            for p, vs in values.items()}

    def replaced(tok: str) -> str | None:
        if tok in subst:
            return subst[tok]
        if tok.startswith("--") and "=" in tok:
            opt, val = tok.split("=", 1)
            return f"{opt}={subst[val]}" if val in subst else None
        if tok.startswith("-") and len(tok) > 2 and tok[2:] in subst:
            return tok[:2] + subst[tok[2:]]
        return None

    out = list(args)
    for i, tok in enumerate(args):
        new = replaced(tok)
        if new is None:
            continue
        trial = [*out[:i], new, *out[i + 1:]]
        now = raw_values(cmd, trial)
        if all(now.get(p) == values.get(p) for p in values if p not in path_params):
            out = trial
    if raw_values(cmd, out) != want:
        raise InvalidInputError(
            "cannot tell which argument names the file",
            "write file options as --option=PATH, and paths as ./NAME",
        )
    return out


def _upload(client: ApiClient, forward: list[str], rest: list[str]) -> int:
    """Plain files stream straight into storage; a directory goes as a staged tar and
    the server's own ``upload`` walks it (the same result as a local upload)."""
    from hpcgear.api.cliplan import IN, Mode, Plan
    from hpcgear.cli.argmap import parse_raw, resolve

    cmd, args = resolve(rest)
    opts = parse_raw(cmd, args)
    files = [Path(f).expanduser() for f in opts.get("files") or ()]
    if not opts.get("path") or not files:
        raise InvalidInputError("upload takes PATH FILE... [--json]",
                                "e.g. hpcgear upload lab/p/sub-01/ses-01/T1 scan.nii.gz")
    for f in files:
        if not f.exists():
            raise NotFoundError(f"{f} does not exist", "check the path and try again")
    if forward or any(f.is_dir() for f in files):
        return _forward(client, forward, rest, Plan(Mode.FORWARD, {"files": IN}))
    rows = client.upload(str(opts["path"]), files)
    if opts.get("as_json"):
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = f"v{r['version']}" if r["created"] else f"unchanged (v{r['version']})"
            print(f"{r['name']}: {state} {r['hash'][:19]}")
    return 0


def _download(client: ApiClient, forward: list[str], rest: list[str]) -> int:
    """The server plans the download (``download --dry-run --json``: which files, which
    paths); the client streams each file's bytes into --out, or into the --tar."""
    from hpcgear.cli.argmap import parse_raw, resolve
    from hpcgear.hierarchy.export import DownloadItem, download_tree, write_tar

    cmd, args = resolve(rest)
    o = parse_raw(cmd, args)
    path = str(o.get("path") or "")
    out, tar = o.get("out"), o.get("tar")
    version = int(o["version"]) if o.get("version") else None
    plan_argv = [*forward, "download", "--", path] if path.startswith("-") else [
        *forward, "download", path]
    plan_argv += ["-r"] if o.get("recursive") else []
    plan_argv += ["--include-analyses"] if o.get("include_analyses") else []
    for t in o.get("types") or ():
        plan_argv += [f"--type={t}"]
    if o.get("dry_run"):
        res = client.post_json("/api/hpcgear/cli", {"argv": [
            *plan_argv, "--dry-run", *(["--json"] if o.get("as_json") else [])]})
        sys.stdout.write(str(res.get("stdout", "")))
        sys.stderr.write(str(res.get("stderr", "")))
        return int(res.get("code", 1))
    if (out is None) == (tar is None):
        raise InvalidInputError("give exactly one of --out DIR and --tar FILE", "e.g. --out ./data")
    if out is not None and not o.get("recursive") and not forward:
        try:
            dest, digest = client.download(path, Path(out).expanduser(), version)
        except NotFoundError:
            if version is not None:
                raise
        else:
            if o.get("as_json"):
                print(json.dumps({"path": str(dest), "version": version, "hash": digest}))
            else:
                print(f"{dest} ({digest[:19]})")
            return 0
    if version is not None:
        raise InvalidInputError("--version applies to one file", "drop --version")
    res = client.post_json("/api/hpcgear/cli", {"argv": [*plan_argv, "--dry-run", "--json"]})
    if int(res.get("code", 1)) != 0:
        sys.stderr.write(str(res.get("stderr", "")))
        return int(res.get("code", 1))
    items = [DownloadItem(i["path"], i["hash"], int(i["size"]), int(i["version"]),
                          i["file_id"], i.get("type"))
             for i in json.loads(str(res["stdout"]))["files"]]
    source = _RemoteObjects(client, items)
    if tar is not None:
        if tar == "-":
            write_tar(source, items, sys.stdout.buffer)
            return 0
        dest_tar = Path(str(tar)).expanduser()
        tmp = dest_tar.with_name(f".{dest_tar.name}.part")
        with tmp.open("wb") as fh:
            report = write_tar(source, items, fh, gzip=dest_tar.name.endswith((".tar.gz", ".tgz")))
        tmp.replace(dest_tar)
    else:
        report = download_tree(source, items, Path(str(out)).expanduser())
    if o.get("as_json"):
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"{len(report.written)} written, {len(report.skipped)} already present "
              f"({report.bytes_written} bytes) -> {tar or out}")
    return 0
