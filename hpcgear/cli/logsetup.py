"""Logging for the CLI and the daemon: timestamps, optional JSON lines, quiet Alembic.

Only the CLI configures logging (library code only logs). Lines carry an ISO
timestamp with its zone, the level and the logger, so journald, cron mail and
log files read the same; ``--log-json`` writes one JSON object per line for log
shippers. Alembic's per-command chatter ("Context impl SQLiteImpl ...") stays
out of ``-v`` and ``-vv``; ``-vvv`` shows it too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MARK = "_hpcgear_handler"


class _TextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return dt.datetime.fromtimestamp(record.created, dt.UTC).astimezone().isoformat(
            timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO, with zone), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(level: int, *, as_json: bool = False, verbose: int = 0) -> None:
    """Send records at ``level`` and above to stderr (replacing an earlier call's handler)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else _TextFormatter(TEXT_FORMAT))
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.INFO if verbose >= 3 else logging.WARNING)
