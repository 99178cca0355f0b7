"""The acting user of a process without an API key: its OS account.

The name comes from the process's real uid through the password database,
never from ``$USER`` or ``$LOGNAME`` (anyone can set those, so
``USER=root hpcgear ...`` must not act as root).
"""

from __future__ import annotations

import os
import pwd

from hpcgear.errors import ConfigError


def os_login() -> str:
    """The login name of the process's real uid (``os.getuid()`` -> passwd)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise ConfigError(
            f"uid {uid} has no entry in the password database, so it has no login name",
            "run hpcgear as an account with a passwd entry, or log in with an API key "
            "(`hpcgear login KEY`)",
        ) from None
