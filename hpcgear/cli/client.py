"""The CLI as a client of ``hpcgear serve``: with an API key configured, commands go
through the HTTP API as the key's owner, so login nodes hold no database credentials.

One endpoint runs the same click command on the server (``POST /api/hpcgear/cli``);
``upload`` and ``download`` move bytes through ``/api/hpcgear/upload`` and
``/download``. ``login``, ``logout``, ``init``, ``serve``, ``db``, ``controller``
(but its read-only ``status`` and ``health``) and ``--help`` stay local.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

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

# (urllib, hashlib and the key parser are imported when a request is made: every
# local command line passes through `remote_key`, which must stay cheap.)

LOCAL_COMMANDS = frozenset({"login", "logout", "init", "serve", "controller", "db"})
#: Subcommands of a local command that still go to the server (read-only).
REMOTE_SUBCOMMANDS = {"controller": frozenset({"status", "health"})}
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

    def upload(self, dest_path: str, files: list[Path]) -> Any:
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
            f"{self.key.base_url}/api/hpcgear/upload?{q}", data=Body(), method="POST",
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
        import hashlib
        import os
        import urllib.parse

        q = {"path": path, **({"version": str(version)} if version is not None else {})}
        with self._request("GET", "/api/hpcgear/download?" + urllib.parse.urlencode(q)) as r:
            name = r.headers.get("X-Hpcgear-Name") or path.rsplit("/", 1)[-1]
            digest = r.headers.get("X-Hpcgear-Hash") or ""
            out_dir.mkdir(parents=True, exist_ok=True)
            dest = out_dir / Path(name).name
            tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
            h = hashlib.sha256()
            with tmp.open("wb") as fh:
                _copy(r, fh, h)
            if digest and "sha256:" + h.hexdigest() != digest:
                tmp.unlink(missing_ok=True)
                raise StorageError(f"download of {path} does not match {digest}",
                                   "try again; report it if it repeats")
            tmp.replace(dest)
            return dest, digest


def _copy(src: Any, dst: BinaryIO, h: Any) -> None:
    while block := src.read(1 << 20):
        h.update(block)
        dst.write(block)


def _error_from(exc: urllib.error.HTTPError) -> HpcgearError:
    try:
        data = json.loads(exc.read() or b"{}")
    except ValueError:
        data = {}
    message = str(data.get("message") or f"HTTP {exc.code}")
    hint = str(data.get("hint") or "")
    cls: type[HpcgearError] = {
        401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
        409: AlreadyExistsError, 422: InvalidInputError, 503: DatabaseError,
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
    if not rest or _is_local(rest) or any(a in ("-h", "--help", "--version") for a in argv):
        return None
    import os

    if os.environ.get("HPCGEAR_API_KEY"):
        return os.environ["HPCGEAR_API_KEY"].strip()
    from hpcgear.config.settings import load_settings

    try:
        settings = load_settings(config)
    except HpcgearError:
        return None  # the local run reports the config problem
    return settings.api_key


def _is_local(rest: list[str]) -> bool:
    if rest[0] not in LOCAL_COMMANDS:
        return False
    sub = next((a for a in rest[1:] if not a.startswith("-")), None)
    return sub not in REMOTE_SUBCOMMANDS.get(rest[0], frozenset())


def run_remote(argv: list[str], key: str) -> int:
    """Run a command line through the API; prints like the local CLI; returns the status."""
    _config, forward, rest = split_argv(argv)
    client = ApiClient(key)
    cmd = rest[0]
    if cmd == "upload":
        return _upload(client, rest[1:])
    if cmd == "download":
        return _download(client, rest[1:])
    if cmd == "export" and rest[1:2] == ["bids"]:
        return _export_bids(client, forward, rest[2:])
    if cmd == "whoami" and not forward:
        me = client.get_json("/api/users/self")
        data = {"user": me.get("_id"), "via": "key", "instance": client.key.base_url,
                "site_admin": bool(me.get("root"))}
        if "--json" in rest:
            print(json.dumps(data, indent=2))
        else:
            print(f"{data['user']} (via API key) on {data['instance']}")
        return 0
    if cmd == "report":
        return _report(client, forward, rest)
    res = client.post_json("/api/hpcgear/cli", {"argv": [*forward, *rest]})
    sys.stdout.write(str(res.get("stdout", "")))
    sys.stderr.write(str(res.get("stderr", "")))
    return int(res.get("code", 1))


def _report(client: ApiClient, forward: list[str], rest: list[str]) -> int:
    """``report P --html OUT``: the server renders the page, the caller's file gets it."""
    args = list(rest)
    out: str | None = None
    for i, a in enumerate(args):
        if a == "--html" and i + 1 < len(args):
            out, args[i + 1] = args[i + 1], "-"
        elif a.startswith("--html="):
            out, args[i] = a.split("=", 1)[1], "--html=-"
    res = client.post_json("/api/hpcgear/cli", {"argv": [*forward, *args]})
    code = int(res.get("code", 1))
    sys.stderr.write(str(res.get("stderr", "")))
    if code != 0 or out is None or out == "-":
        sys.stdout.write(str(res.get("stdout", "")))
        return code
    target = Path(out)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(str(res.get("stdout", "")), encoding="utf-8")
    tmp.replace(target)
    print(f"wrote {target}")
    return 0


def _upload(client: ApiClient, args: list[str]) -> int:
    as_json = "--json" in args
    pos = [a for a in args if a != "--json"]
    if len(pos) < 2 or any(a.startswith("-") for a in pos):
        raise InvalidInputError("upload through the API takes PATH FILE... [--json]",
                                "e.g. hpcgear upload lab/p/sub-01/ses-01/T1 scan.nii.gz")
    files = [Path(p) for p in pos[1:]]
    for f in files:
        if not f.is_file():
            raise NotFoundError(f"file {f} does not exist", "check the path and try again")
    rows = client.upload(pos[0], files)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = f"v{r['version']}" if r["created"] else "unchanged"
            print(f"{r['name']}: {state} {r['hash']}")
    return 0


def _download(client: ApiClient, args: list[str]) -> int:
    out: Path | None = None
    version = None
    pos: list[str] = []
    tree: list[str] = []  # options of a container download, passed to the server's plan
    flags = {"-r", "--recursive", "--include-analyses", "--dry-run", "--json"}
    i = 0
    while i < len(args):
        if args[i] == "--out" and i + 1 < len(args):
            out = Path(args[i + 1])
            i += 2
        elif args[i] == "--version" and i + 1 < len(args):
            version = int(args[i + 1])
            i += 2
        elif args[i] == "--type" and i + 1 < len(args):
            tree += args[i:i + 2]
            i += 2
        elif args[i] in flags:
            tree.append(args[i])
            i += 1
        elif args[i] == "--tar" or args[i].startswith("--tar="):
            raise InvalidInputError("--tar is not available through the API",
                                    "download into a directory with --out DIR")
        else:
            pos.append(args[i])
            i += 1
    if len(pos) != 1:
        raise InvalidInputError("download takes PATH [--recursive] [--type T] --out DIR",
                                "name one file or container")
    if (tree and tree != ["--json"]) or out is None:
        return _download_tree(client, pos[0], tree, out)
    dest, digest = client.download(pos[0], out, version)
    if "--json" in tree:
        print(json.dumps({"path": str(dest), "hash": digest}, indent=2))
    else:
        print(f"{dest} ({digest})")
    return 0


def _download_tree(client: ApiClient, path: str, options: list[str], out: Path | None) -> int:
    """A container download through the API: the server plans it (``download --dry-run``),
    each file comes through the download endpoint, hash-checked; files already under
    ``out`` with the right hash are skipped (a rerun resumes)."""
    as_json = "--json" in options
    dry_run = "--dry-run" in options
    if out is None and not dry_run:
        raise InvalidInputError("give --out DIR", "e.g. --out ./data")
    plan_argv = ["download", path, *[o for o in options if o not in ("--json", "--dry-run")],
                 "--dry-run", "--json"]
    res = client.post_json("/api/hpcgear/cli", {"argv": plan_argv})
    if int(res.get("code", 1)) != 0:
        sys.stderr.write(str(res.get("stderr", "")))
        return int(res.get("code", 1))
    plan = json.loads(str(res.get("stdout") or "{}"))
    if dry_run:
        from hpcgear.cli.context import safe_text

        sys.stdout.write(str(res.get("stdout", "")) if as_json else "".join(
            f"{safe_text(f['path'])}  {f['size']}\n" for f in plan["files"]))
        return 0
    assert out is not None
    written: list[str] = []
    skipped: list[str] = []
    nbytes = 0
    for f in plan["files"]:
        rel = str(f["path"])
        dest = _confined(out, rel)
        if _sha256_of(dest) == f["hash"]:
            skipped.append(rel)
            continue
        got, digest = client.download(rel, dest.parent, int(f["version"]))
        if digest != f["hash"] or got != dest:
            raise StorageError(f"download of {rel} gave {digest} at {got}",
                               "the file changed on the server meanwhile; run the download again")
        written.append(rel)
        nbytes += int(f["size"])
    if as_json:
        print(json.dumps({"written": len(written), "skipped": len(skipped),
                          "bytes_written": nbytes, "files": written + skipped}, indent=2))
    else:
        print(f"{len(written)} written, {len(skipped)} already present ({nbytes} bytes) -> {out}")
    return 0


def _confined(out: Path, rel: str) -> Path:
    from hpcgear.spec import safe_relpath

    if not safe_relpath(rel):
        raise StorageError(f"the server planned a path outside --out: {rel!r}",
                           "report this; nothing outside --out is written")
    return out / rel


def _sha256_of(path: Path) -> str | None:
    import hashlib

    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _export_bids(client: ApiClient, forward: list[str], args: list[str]) -> int:
    """``export bids PATH --out DIR`` from a login node: the server plans the tree (the same
    plan a local export writes), the client writes generated files and fetches stored ones
    by container and name, hash-checked; files already right are kept."""
    import os
    import urllib.parse

    out: Path | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--out" and i + 1 < len(args):
            out = Path(args[i + 1])
            i += 2
        elif args[i].startswith("--out="):
            out = Path(args[i].split("=", 1)[1])
            i += 1
        else:
            rest.append(args[i])
            i += 1
    dry_run, as_json = "--dry-run" in rest, "--json" in rest
    if out is None and not dry_run:
        raise InvalidInputError("export bids needs --out DIR", "e.g. --out ./bids")
    argv = [*forward, "export", "bids", *[a for a in rest if a not in ("--dry-run", "--json")],
            "--dry-run", "--json"]
    res = client.post_json("/api/hpcgear/cli", {"argv": argv})
    if int(res.get("code", 1)) != 0:
        sys.stderr.write(str(res.get("stderr", "")))
        return int(res.get("code", 1))
    plan = json.loads(str(res.get("stdout") or "{}"))
    plan["out"] = str(out) if out is not None else None
    if not dry_run:
        assert out is not None
        for f in plan["files"]:
            dest = _confined(out, str(f["path"]))
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
            if "text" in f:
                tmp.write_text(str(f["text"]), encoding="utf-8")
                tmp.replace(dest)
                continue
            if _sha256_of(dest) == f["hash"]:
                continue
            q = urllib.parse.urlencode({"version": int(f["version"])})
            name = urllib.parse.quote(str(f["name"]), safe="")
            url = f"/api/containers/{urllib.parse.quote(str(f['container_id']))}/files/{name}?{q}"
            with client._request("GET", url) as r, tmp.open("wb") as fh:
                while block := r.read(1 << 20):
                    fh.write(block)
            if _sha256_of(tmp) != f["hash"]:
                tmp.unlink(missing_ok=True)
                raise StorageError(f"{f['path']} did not arrive as {f['hash']}",
                                   "the file changed on the server meanwhile; export again")
            tmp.replace(dest)
    if as_json:
        print(json.dumps({**plan, "dry_run": dry_run}, indent=2))
    else:
        from hpcgear.cli.context import safe_text

        for rel in plan["written"]:
            print(safe_text(rel))
        for s in plan["skipped"]:
            print(f"skipped {safe_text(s['path'])}: {safe_text(s['reason'])}")
        verb = "would write" if dry_run else "wrote"
        where = f" to {out}" if out is not None else ""
        print(f"{verb} {len(plan['written'])} file(s){where}; skipped {len(plan['skipped'])}",
              file=sys.stderr)
    return 0
