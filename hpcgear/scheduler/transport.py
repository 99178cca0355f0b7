"""Transports: where SLURM commands run and job files live.

``LocalTransport`` runs commands with :mod:`subprocess` and touches the local file
system; ``SSHTransport`` runs them on a login node over SSH (paramiko) and moves
files with SFTP. Both implement the same ``Transport`` protocol, which extends
``CommandRunner``, so the SLURM backend does not know which one it has.

Paths are POSIX strings on the side where the scheduler runs. Writes are atomic
(temporary name in the same directory, then rename), so a reader never sees half
a file. A missing path raises ``NotFoundError``; other failures ``TransportError``
(``transient=True`` when the connection dropped or timed out).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import posixpath
import secrets
import shlex
import shutil
import socket
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import paramiko

from hpcgear.errors import NotFoundError, TransportError
from hpcgear.scheduler.runner import CommandRunner, CompletedCommand, SubprocessRunner, wrap_argv

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class FileStat:
    size: int
    mtime: float
    mode: int  # permission bits only, e.g. 0o600

    is_dir: bool = False
    is_file: bool = False


@runtime_checkable
class Transport(CommandRunner, Protocol):
    """Run commands and move files on the scheduler's side (see module docstring)."""

    def put(self, local: PathLike, remote: PathLike, *, mode: int | None = None) -> None:
        """Copy a local file to ``remote`` atomically (optionally chmod)."""
        ...

    def get(self, remote: PathLike, local: PathLike) -> None:
        """Copy ``remote`` to a local file atomically."""
        ...

    def read_text(self, path: PathLike) -> str:
        ...

    def write_text(self, path: PathLike, text: str, *, mode: int = 0o600) -> None:
        """Write ``text`` atomically with permission ``mode``."""
        ...

    def mkdir(self, path: PathLike, *, mode: int = 0o700, parents: bool = True) -> None:
        """Create a directory (and parents); an existing directory is fine."""
        ...

    def remove_tree(self, path: PathLike) -> None:
        """Remove a file or directory tree; a missing path is fine."""
        ...

    def exists(self, path: PathLike) -> bool:
        ...

    def listdir(self, path: PathLike) -> list[str]:
        """Entry names in a directory, sorted."""
        ...

    def stat(self, path: PathLike) -> FileStat:
        ...

    def close(self) -> None:
        ...


def _tmp_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.tmp-{secrets.token_hex(4)}")


def _check_removable(path: str) -> str:
    norm = posixpath.normpath(path)
    if not posixpath.isabs(norm) or norm.count("/") < 2:
        # "/", "/scratch" or a relative path: far more likely a bug than a wish.
        raise TransportError(
            f"refusing to remove {path!r}",
            "remove_tree needs an absolute path at least two levels deep",
        )
    return norm


# ------------------------------------------------------------------------------ local


def _sync_files(paths: Sequence[str]) -> None:
    """Make ``paths`` durable: one syncfs per file system, else fsync each."""
    try:
        import ctypes

        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        syncfs = None
    if syncfs is not None:
        done: set[int] = set()
        for p in paths:
            with contextlib.suppress(OSError):
                dev = os.stat(p).st_dev
                if dev in done:
                    continue
                fd = os.open(p, os.O_RDONLY)
                try:
                    if syncfs(fd) == 0:
                        done.add(dev)
                        continue
                finally:
                    os.close(fd)
            _fsync_file(p)
        return
    for p in paths:
        _fsync_file(p)


def _fsync_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.cache
def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def batch_sync(transport: object) -> contextlib.AbstractContextManager[None]:
    """``transport.batch_sync()`` where the transport has one, else a no-op block."""
    method = getattr(transport, "batch_sync", None)
    return method() if callable(method) else contextlib.nullcontext()


class LocalTransport:
    """Commands via ``SubprocessRunner`` and the local file system."""

    def __init__(self, *, prefix_lines: Sequence[str] = ()) -> None:
        self._runner = SubprocessRunner(prefix_lines=prefix_lines)
        self._deferred: list[str] | None = None

    @contextlib.contextmanager
    def batch_sync(self) -> Iterator[None]:
        """Inside the block, ``write_text`` skips its per-file fsync; leaving it syncs once.

        Staging a job array writes three small files per task; an fsync each is
        a disk flush each (thousands per array). Here every file is made durable
        by one ``syncfs`` of its file system when the block ends (fsync per file
        where ``syncfs`` is missing), before anything is submitted.
        """
        if self._deferred is not None:
            yield
            return
        self._deferred = []
        try:
            yield
        finally:
            written, self._deferred = self._deferred, None
            if written:
                _sync_files(written)

    @property
    def prefix_lines(self) -> tuple[str, ...]:
        return self._runner.prefix_lines

    def run(
        self, argv: Sequence[str], *, timeout: float, input: str | None = None
    ) -> CompletedCommand:
        return self._runner.run(argv, timeout=timeout, input=input)

    @contextlib.contextmanager
    def _errors(self, what: str, path: PathLike) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise NotFoundError(f"{what}: no such file or directory: {os.fspath(path)}",
                                "check the path") from None
        except OSError as exc:
            raise TransportError(f"{what} {os.fspath(path)}: {exc.strerror or exc}",
                                 "check permissions and free space") from None

    def put(self, local: PathLike, remote: PathLike, *, mode: int | None = None) -> None:
        dst = os.fspath(remote)
        tmp = _tmp_name(dst)
        with self._errors("put", local):
            try:
                shutil.copyfile(local, tmp)
                if mode is not None:
                    os.chmod(tmp, mode)
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def get(self, remote: PathLike, local: PathLike) -> None:
        self.put(remote, local)

    def read_text(self, path: PathLike) -> str:
        with self._errors("read", path):
            return Path(path).read_text(encoding="utf-8")

    def write_text(self, path: PathLike, text: str, *, mode: int = 0o600) -> None:
        dst = os.fspath(path)
        tmp = _tmp_name(dst)
        with self._errors("write", path):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    if self._deferred is None:
                        os.fsync(fh.fileno())
                    else:
                        self._deferred.append(dst)
                os.chmod(tmp, mode)  # umask may have narrowed it
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def mkdir(self, path: PathLike, *, mode: int = 0o700, parents: bool = True) -> None:
        # One mkdir syscall in the common case (stage-in makes ~10 directories per
        # job, thousands per array); chmod only where the umask narrowed the mode.
        p = os.fspath(path)
        with self._errors("mkdir", path):
            try:
                os.mkdir(p, mode)
            except FileExistsError:
                if os.path.isdir(p):
                    return
                raise
            except FileNotFoundError:
                if not parents:
                    raise
                Path(p).mkdir(mode=mode, parents=True, exist_ok=True)
            if mode & _umask():
                os.chmod(p, mode)

    def remove_tree(self, path: PathLike) -> None:
        target = _check_removable(os.fspath(path))
        with self._errors("remove", path):
            if os.path.islink(target) or os.path.isfile(target):
                os.unlink(target)
            elif os.path.isdir(target):
                shutil.rmtree(target)

    def exists(self, path: PathLike) -> bool:
        return os.path.lexists(path)

    def listdir(self, path: PathLike) -> list[str]:
        with self._errors("list", path):
            return sorted(os.listdir(path))

    def stat(self, path: PathLike) -> FileStat:
        with self._errors("stat", path):
            st = os.stat(path)
        return FileStat(st.st_size, st.st_mtime, stat_mod.S_IMODE(st.st_mode),
                        stat_mod.S_ISDIR(st.st_mode), stat_mod.S_ISREG(st.st_mode))

    def close(self) -> None:
        return None


# -------------------------------------------------------------------------------- ssh

_DROPPED = (paramiko.SSHException, EOFError, OSError, socket.timeout)


class SSHTransport:
    """Commands and files on a remote login node over one SSH connection.

    Host keys are checked against ``known_hosts`` (and the user's
    ``~/.ssh/known_hosts``); an unknown host is refused (``RejectPolicy``), never
    added silently. Commands are sent as ``shlex.join(argv)`` -- SSH only carries a
    string, so this is the one place a command line is built, from quoted parts --
    wrapped in a constant bash snippet that scrubs scheduler variables and runs the
    site's ``prefix_lines``. The remote login shell must be POSIX-like (bash, sh,
    zsh). A dropped connection is re-opened once per call before the command is
    sent; if it drops after, the call raises a transient ``TransportError``
    (the command may have run). A timed-out command's channel is closed, but the
    remote process may go on running.
    """

    def __init__(
        self,
        host: str,
        *,
        port: int = 22,
        user: str | None = None,
        key_file: PathLike | None = None,
        known_hosts: PathLike | None = None,
        prefix_lines: Sequence[str] = (),
        connect_timeout: float = 15.0,
        keepalive_seconds: int = 30,
        client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_file = os.fspath(key_file) if key_file is not None else None
        self.known_hosts = os.fspath(known_hosts) if known_hosts is not None else None
        self.prefix_lines = tuple(prefix_lines)
        self.connect_timeout = connect_timeout
        self.keepalive_seconds = keepalive_seconds
        self._client_factory = client_factory
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    # -- connection

    def _connected(self) -> paramiko.SSHClient:
        with self._lock:
            client = self._client
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return client
                self._drop()
            self._client = self._connect()
            return self._client

    def _connect(self) -> paramiko.SSHClient:
        client = self._client_factory()
        with contextlib.suppress(OSError):  # no ~/.ssh/known_hosts: configured file only
            client.load_system_host_keys()
        if self.known_hosts:
            try:
                client.load_host_keys(self.known_hosts)
            except OSError as exc:
                raise TransportError(
                    f"cannot read known_hosts file {self.known_hosts}: {exc.strerror or exc}",
                    "set the site's ssh known_hosts to a readable file",
                ) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pkey = self._load_key()
        logger.debug("ssh connect %s", self.target)
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                pkey=pkey,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                look_for_keys=self.key_file is None,
                allow_agent=self.key_file is None,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise TransportError(
                f"host key of {self.target} does not match known_hosts "
                f"({exc.key.get_name()})",
                "the host was reinstalled or this is not the host you meant: verify the new "
                f"key with the admins, then update {self.known_hosts or '~/.ssh/known_hosts'}",
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(
                f"ssh login to {self.target} refused: {exc}",
                "check the user and key_file in the site config, and that the public key is "
                "in ~/.ssh/authorized_keys on the login node",
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            text = str(exc)
            if "not found in known_hosts" in text:
                keyscan = f"ssh-keyscan -p {self.port} {self.host}"
                raise TransportError(
                    f"unknown SSH host {self.target}: its key is not in "
                    f"{self.known_hosts or '~/.ssh/known_hosts'}",
                    f"verify the host's fingerprint, then add it: {keyscan} >> "
                    f"{self.known_hosts or '~/.ssh/known_hosts'}",
                ) from None
            raise TransportError(f"ssh to {self.target} failed: {text}",
                                 "check the host and port; hpcgear retries",
                                 transient=True) from None
        except (OSError, EOFError) as exc:
            client.close()
            raise TransportError(
                f"cannot connect to {self.target}: {exc}",
                "check that the login node is up and the port is right; hpcgear retries",
                transient=True,
            ) from None
        transport = client.get_transport()
        if transport is not None and self.keepalive_seconds:
            transport.set_keepalive(self.keepalive_seconds)
        return client

    def _load_key(self) -> paramiko.PKey | None:
        if self.key_file is None:
            return None  # agent / ~/.ssh default keys
        try:
            return paramiko.PKey.from_path(self.key_file)
        except paramiko.PasswordRequiredException:
            raise TransportError(
                f"SSH key {self.key_file} is protected by a passphrase",
                "give hpcgear a key without a passphrase (readable only by the service "
                "account), or leave key_file unset to use ssh-agent",
            ) from None
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise TransportError(
                f"cannot read SSH key {self.key_file}: {exc}",
                "check the key_file path and that it is an OpenSSH private key",
            ) from None

    def _drop(self) -> None:
        with self._lock:
            if self._sftp is not None:
                with contextlib.suppress(Exception):
                    self._sftp.close()
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
            self._sftp = None
            self._client = None

    def close(self) -> None:
        self._drop()

    def _is_active(self) -> bool:
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands

    def run(
        self, argv: Sequence[str], *, timeout: float, input: str | None = None
    ) -> CompletedCommand:
        argv_t = tuple(argv)
        command = shlex.join(wrap_argv(argv_t, prefix_lines=self.prefix_lines,
                                       scrub_in_shell=True))
        logger.debug("ssh %s run %s (timeout %.0fs)", self.target, shlex.join(argv_t), timeout)
        start = time.monotonic()
        channel = self._open_channel(argv_t)
        try:
            try:
                channel.settimeout(1.0)
                channel.exec_command(command)
                if input is not None:
                    channel.sendall(input.encode())
                channel.shutdown_write()
            except _DROPPED as exc:
                self._drop()
                raise TransportError(
                    f"ssh connection to {self.target} dropped while starting {argv_t[0]}: {exc}",
                    "hpcgear retries; the command may or may not have run",
                    argv=argv_t, transient=True,
                ) from None
            out, err = bytearray(), bytearray()
            deadline = start + timeout
            while True:
                got = False
                if channel.recv_ready():
                    out += channel.recv(65536)
                    got = True
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    got = True
                if channel.exit_status_ready() and not channel.recv_ready() \
                        and not channel.recv_stderr_ready():
                    break
                if channel.closed and not got:
                    break
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"{argv_t[0]} on {self.target} did not finish within {timeout:.0f}s",
                        "the command may still be running remotely; retry later or raise "
                        "the timeout",
                        argv=argv_t, stdout=out.decode(errors="replace"),
                        stderr=err.decode(errors="replace"), transient=True,
                    )
                if not got:
                    time.sleep(0.01)
            # drain anything that arrived with the exit status
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if not channel.exit_status_ready():
                self._drop()
                raise TransportError(
                    f"ssh connection to {self.target} dropped while {argv_t[0]} ran",
                    "hpcgear retries; the command may or may not have run",
                    argv=argv_t, stdout=out.decode(errors="replace"),
                    stderr=err.decode(errors="replace"), transient=True,
                )
            rc = channel.recv_exit_status()
        finally:
            channel.close()
        elapsed = time.monotonic() - start
        logger.debug("ssh exit %s after %.2fs: %s", rc, elapsed, argv_t[0])
        if rc == -1:  # no exit status: killed by a signal remotely (paramiko gives -1)
            rc = 255
        return CompletedCommand(argv_t, rc, out.decode(errors="replace"),
                                err.decode(errors="replace"), elapsed)

    def _open_channel(self, argv: tuple[str, ...]) -> paramiko.Channel:
        for attempt in (1, 2):
            client = self._connected()
            transport = client.get_transport()
            try:
                if transport is None:
                    raise paramiko.SSHException("no transport")
                return transport.open_session(timeout=self.connect_timeout)
            except _DROPPED as exc:
                self._drop()
                if attempt == 2:
                    raise TransportError(
                        f"cannot open an ssh session on {self.target}: {exc}",
                        "hpcgear retries; check the login node",
                        argv=argv, transient=True,
                    ) from None
                logger.info("ssh connection to %s dropped, reconnecting", self.target)
        raise AssertionError("unreachable")

    # -- files (SFTP)

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            client = self._connected()
            if self._sftp is None or self._sftp.sock.closed:
                self._sftp = client.open_sftp()
            return self._sftp

    def _file_op(self, what: str, path: str, op: Callable[[paramiko.SFTPClient], _T]) -> _T:
        """Run an idempotent SFTP op, reconnecting once if the connection dropped."""
        for attempt in (1, 2):
            try:
                with self._lock:
                    return op(self._sftp_client())
            except FileNotFoundError:
                raise NotFoundError(f"{what}: no such file or directory on {self.target}: "
                                    f"{path}", "check the path") from None
            except PermissionError:
                raise TransportError(f"{what} {path} on {self.target}: permission denied",
                                     "check ownership and modes of the job directory") from None
            except (ConnectionError, TimeoutError, EOFError, paramiko.SSHException) as exc:
                err: Exception = exc
            except OSError as exc:
                if self._is_active():
                    # the server answered with an error: not a connection problem
                    raise TransportError(f"{what} {path} on {self.target}: {exc}",
                                         "check permissions and free space") from None
                err = exc
            self._drop()
            if attempt == 2:
                raise TransportError(f"{what} {path} on {self.target} failed: {err}",
                                     "the connection keeps dropping; hpcgear retries later",
                                     transient=True) from None
            logger.info("sftp to %s failed (%s), reconnecting", self.target, err)
        raise AssertionError("unreachable")

    def put(self, local: PathLike, remote: PathLike, *, mode: int | None = None) -> None:
        dst = os.fspath(remote)
        src = os.fspath(local)
        if not os.path.exists(src):
            raise NotFoundError(f"put: no such local file: {src}", "check the path")

        def op(sftp: paramiko.SFTPClient) -> None:
            tmp = _tmp_name(dst)
            try:
                sftp.put(src, tmp)
                if mode is not None:
                    sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, dst)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                raise

        self._file_op("put", dst, op)

    def get(self, remote: PathLike, local: PathLike) -> None:
        src = os.fspath(remote)
        dst = os.fspath(local)
        tmp = _tmp_name(dst)

        def op(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.get(src, tmp)
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

        self._file_op("get", src, op)

    def read_text(self, path: PathLike) -> str:
        p = os.fspath(path)

        def op(sftp: paramiko.SFTPClient) -> str:
            with sftp.open(p, "r") as fh:
                data: bytes = fh.read()
            return data.decode("utf-8")

        return self._file_op("read", p, op)

    def write_text(self, path: PathLike, text: str, *, mode: int = 0o600) -> None:
        dst = os.fspath(path)
        data = text.encode("utf-8")

        def op(sftp: paramiko.SFTPClient) -> None:
            tmp = _tmp_name(dst)
            try:
                with sftp.open(tmp, "wx") as fh:
                    sftp.chmod(tmp, mode)
                    fh.write(data)
                sftp.posix_rename(tmp, dst)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                raise

        self._file_op("write", dst, op)

    def mkdir(self, path: PathLike, *, mode: int = 0o700, parents: bool = True) -> None:
        target = posixpath.normpath(os.fspath(path))

        def op(sftp: paramiko.SFTPClient) -> None:
            todo: list[str] = []
            cur = target
            while cur not in ("", "/", "."):
                try:
                    st = sftp.stat(cur)
                except FileNotFoundError:
                    todo.append(cur)
                    if not parents:
                        break
                    cur = posixpath.dirname(cur)
                    continue
                if not stat_mod.S_ISDIR(st.st_mode or 0):
                    raise TransportError(f"mkdir {target} on {self.target}: {cur} is not a "
                                         "directory", "remove or rename it")
                break
            for d in reversed(todo):
                try:
                    sftp.mkdir(d, mode)
                    sftp.chmod(d, mode)
                except OSError:
                    # created meanwhile by someone else is fine
                    if not stat_mod.S_ISDIR(sftp.stat(d).st_mode or 0):
                        raise

        self._file_op("mkdir", target, op)

    def remove_tree(self, path: PathLike) -> None:
        target = _check_removable(os.fspath(path))
        result = self.run(["rm", "-rf", "--", target], timeout=600)
        if not result.ok:
            raise TransportError(f"remove {target} on {self.target} failed: "
                                 f"{result.output[:200]}", "check permissions",
                                 argv=result.argv, returncode=result.returncode,
                                 stdout=result.stdout, stderr=result.stderr)

    def exists(self, path: PathLike) -> bool:
        p = os.fspath(path)

        def op(sftp: paramiko.SFTPClient) -> bool:
            try:
                sftp.lstat(p)
            except FileNotFoundError:
                return False
            return True

        return self._file_op("exists", p, op)

    def listdir(self, path: PathLike) -> list[str]:
        p = os.fspath(path)
        return sorted(self._file_op("list", p, lambda sftp: sftp.listdir(p)))

    def stat(self, path: PathLike) -> FileStat:
        p = os.fspath(path)
        st: Any = self._file_op("stat", p, lambda sftp: sftp.stat(p))
        mode = int(st.st_mode or 0)
        return FileStat(int(st.st_size or 0), float(st.st_mtime or 0),
                        stat_mod.S_IMODE(mode), stat_mod.S_ISDIR(mode), stat_mod.S_ISREG(mode))
