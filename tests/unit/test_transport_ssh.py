"""SSHTransport against a fake paramiko client injected via ``client_factory``.

The fake "remote side" runs the received command string with a real ``sh -c``,
so these tests prove that what SSHTransport sends is split back into exactly
the argv it was given. The real sshd is covered by
tests/integration/test_ssh_transport.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import paramiko
import pytest

from hpcgear.errors import TransportError
from hpcgear.scheduler.transport import SSHTransport, Transport


class FakeChannel:
    def __init__(self, owner: FakeClient) -> None:
        self.owner = owner
        self.closed = False
        self.command: str | None = None
        self._out = b""
        self._err = b""
        self._rc: int | None = None
        self._stdin = b""

    def settimeout(self, t: float) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.command = command
        self.owner.commands.append(command)

    def sendall(self, data: bytes) -> None:
        self._stdin += data

    def shutdown_write(self) -> None:
        if self.owner.hang:
            return
        proc = subprocess.run(["sh", "-c", self.command or ""], input=self._stdin,
                              capture_output=True, check=False, timeout=20)
        self._out, self._err, self._rc = proc.stdout, proc.stderr, proc.returncode

    def recv_ready(self) -> bool:
        return bool(self._out)

    def recv(self, n: int) -> bytes:
        data, self._out = self._out[:n], self._out[n:]
        return data

    def recv_stderr_ready(self) -> bool:
        return bool(self._err)

    def recv_stderr(self, n: int) -> bytes:
        data, self._err = self._err[:n], self._err[n:]
        return data

    def exit_status_ready(self) -> bool:
        return self._rc is not None

    def recv_exit_status(self) -> int:
        assert self._rc is not None
        return self._rc

    def close(self) -> None:
        self.closed = True


class FakeTransport:
    def __init__(self, owner: FakeClient) -> None:
        self.owner = owner
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def set_keepalive(self, seconds: int) -> None:
        self.owner.keepalive = seconds

    def open_session(self, timeout: float | None = None) -> FakeChannel:
        if self.owner.log.get("open_failures", 0):
            self.owner.log["open_failures"] -= 1
            self.active = False
            raise EOFError("connection dropped")
        return FakeChannel(self.owner)


class FakeClient:
    """Stands in for paramiko.SSHClient; one shared log across reconnects."""

    def __init__(self, log: dict[str, Any]) -> None:
        self.log = log
        self.commands: list[str] = log.setdefault("commands", [])
        self.hang = log.get("hang", False)
        self.keepalive = 0
        self.policy: Any = None
        self.transport = FakeTransport(self)
        log.setdefault("clients", []).append(self)

    def load_system_host_keys(self) -> None:
        pass

    def load_host_keys(self, path: str) -> None:
        self.log["known_hosts"] = path

    def set_missing_host_key_policy(self, policy: Any) -> None:
        self.policy = policy

    def connect(self, hostname: str, **kwargs: Any) -> None:
        self.log["connect"] = (hostname, kwargs)
        error = self.log.get("connect_error")
        if error is not None:
            raise error

    def get_transport(self) -> FakeTransport:
        return self.transport

    def close(self) -> None:
        self.transport.active = False


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("keys") / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(path))
    return str(path)


Maker = Callable[..., SSHTransport]


@pytest.fixture
def make(key_file: str) -> Maker:
    def _make(log: dict[str, Any], **kwargs: Any) -> SSHTransport:
        return SSHTransport("login.example.org", port=2222, user="svc", key_file=key_file,
                            known_hosts="/k/known_hosts",
                            client_factory=lambda: FakeClient(log),  # type: ignore[arg-type,return-value]
                            **kwargs)

    return _make


TRICKY = ["a b", "$(touch /tmp/hpcgear-pwned)", "; echo no", "'q'", '"d"', "*", ""]


def test_is_a_transport(make: Maker) -> None:
    assert isinstance(make({}), Transport)


def test_command_string_splits_back_into_the_same_argv(make: Maker) -> None:
    log: dict[str, Any] = {}
    t = make(log)
    result = t.run(["printf", "%s\\n", *TRICKY], timeout=10)
    assert result.ok, result.stderr
    assert result.stdout.split("\n")[:-1] == TRICKY
    assert result.argv == ("printf", "%s\\n", *TRICKY)
    # scheduler variables are scrubbed remotely, inside the shell
    assert "SBATCH_*" in log["commands"][0] and "SLURM_TIME_FORMAT=standard" in log["commands"][0]


def test_connection_settings_and_reject_policy(make: Maker) -> None:
    log: dict[str, Any] = {}
    t = make(log)
    t.run(["true"], timeout=5)
    client = log["clients"][0]
    assert isinstance(client.policy, paramiko.RejectPolicy)
    host, kwargs = log["connect"]
    assert host == "login.example.org"
    assert kwargs["port"] == 2222 and kwargs["username"] == "svc"
    assert isinstance(kwargs["pkey"], paramiko.PKey)
    assert kwargs["look_for_keys"] is False
    assert log["known_hosts"] == "/k/known_hosts"
    assert client.keepalive == 30


def test_site_prefix_lines_run_remotely_first(make: Maker) -> None:
    t = make({}, prefix_lines=["export SITE_MOD=ok"])
    result = t.run(["sh", "-c", 'echo "$SITE_MOD"'], timeout=10)
    assert result.stdout == "ok\n"


def test_stdin_exit_code_and_stderr(make: Maker) -> None:
    t = make({})
    result = t.run(["sh", "-c", "cat; echo oops >&2; exit 4"], timeout=10, input="in\n")
    assert (result.returncode, result.stdout, result.stderr) == (4, "in\n", "oops\n")


def test_unknown_host_names_the_fix(make: Maker) -> None:
    log = {"connect_error": paramiko.SSHException(
        "Server '[login.example.org]:2222' not found in known_hosts")}
    with pytest.raises(TransportError) as info:
        make(log).run(["true"], timeout=5)
    err = info.value
    assert not err.transient
    assert "unknown SSH host" in err.message and "/k/known_hosts" in err.message
    assert "ssh-keyscan -p 2222 login.example.org >> /k/known_hosts" in err.hint


def test_changed_host_key_is_refused(make: Maker) -> None:
    bad = paramiko.BadHostKeyException("login.example.org", _FakeKey(), _FakeKey())  # type: ignore[arg-type]
    with pytest.raises(TransportError) as info:
        make({"connect_error": bad}).run(["true"], timeout=5)
    assert "does not match known_hosts" in info.value.message
    assert not info.value.transient


def test_auth_failure_is_permanent_with_a_hint(make: Maker) -> None:
    log = {"connect_error": paramiko.AuthenticationException("Authentication failed.")}
    with pytest.raises(TransportError) as info:
        make(log).run(["true"], timeout=5)
    assert not info.value.transient
    assert "authorized_keys" in info.value.hint


def test_unreachable_host_is_transient(make: Maker) -> None:
    log = {"connect_error": ConnectionRefusedError(111, "Connection refused")}
    with pytest.raises(TransportError) as info:
        make(log).run(["true"], timeout=5)
    assert info.value.transient


def test_dropped_connection_is_reopened(make: Maker) -> None:
    log: dict[str, Any] = {}
    t = make(log)
    assert t.run(["echo", "1"], timeout=5).stdout == "1\n"
    log["clients"][0].transport.active = False  # the login node dropped us
    assert t.run(["echo", "2"], timeout=5).stdout == "2\n"
    assert len(log["clients"]) == 2


def test_session_open_failure_reconnects_once(make: Maker) -> None:
    log: dict[str, Any] = {"open_failures": 1}
    t = make(log)
    assert t.run(["echo", "ok"], timeout=5).stdout == "ok\n"
    assert len(log["clients"]) == 2


def test_timeout_is_transient(make: Maker) -> None:
    t = make({"hang": True})
    with pytest.raises(TransportError) as info:
        t.run(["sleep", "100"], timeout=0.3)
    assert info.value.transient
    assert "did not finish within" in info.value.message


class _FakeKey:
    def get_name(self) -> str:
        return "ssh-ed25519"

    def get_base64(self) -> str:
        return "AAAA"


def test_unreadable_key_is_a_clear_error(tmp_path: Any) -> None:
    bad = tmp_path / "id_bad"
    bad.write_text("not a key\n")
    t = SSHTransport("h", key_file=bad, client_factory=lambda: FakeClient({}))  # type: ignore[arg-type,return-value]
    with pytest.raises(TransportError) as info:
        t.run(["true"], timeout=5)
    assert str(bad) in info.value.message and not info.value.transient
