"""The text of an API key, as the Flywheel SDK parses it (no database imports here).

``host:port:secret``, or ``host:port:__force_insecure:secret`` for a plain-HTTP
server; ``host:secret`` means port 443.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from hpcgear.errors import InvalidInputError

INSECURE_FLAG = "__force_insecure"


@dataclass(frozen=True, slots=True)
class KeyText:
    """A parsed key: where the server is and the secret sent to it."""

    host: str
    port: int
    insecure: bool
    secret: str

    @property
    def base_url(self) -> str:
        scheme = "http" if self.insecure else "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        parts = [self.host, str(self.port)]
        if self.insecure:
            parts.append(INSECURE_FLAG)
        return ":".join([*parts, self.secret])


def format_key(api_url: str, secret: str) -> str:
    """The key text for ``secret`` on the server at ``api_url`` (http[s]://host[:port])."""
    parts = urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            f"api_url {api_url!r} is not an http(s) URL",
            "write it as http://HOST:PORT or https://HOST[:PORT] (the server's address)",
        )
    if ":" in parts.hostname:
        raise InvalidInputError(
            f"api_url {api_url!r} uses an IPv6 address, which a key cannot carry",
            "use a host name (the SDK splits a key at ':')",
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return str(KeyText(parts.hostname, port, parts.scheme == "http", secret))


def parse_key(text: str) -> KeyText:
    """Parse key text the way the Flywheel SDK does (``host:port[:__force_insecure]:secret``)."""
    parts = text.strip().split(":")
    if len(parts) < 2 or not parts[0] or not parts[-1]:
        raise InvalidInputError(
            "the API key is not of the form host:port:secret",
            "copy the whole key printed by `hpcgear user key create`",
        )
    host = parts[0]
    port_text = parts[1] if len(parts) > 2 else "443"
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidInputError(
            f"the API key's port {port_text!r} is not a number",
            "copy the whole key printed by `hpcgear user key create`",
        ) from None
    return KeyText(host, port, INSECURE_FLAG in parts, parts[-1])
