"""The one logging convention, set up by every command (``--log.level``, ``--log.format``).

Like Prometheus and its exporters: one line per event, ``logfmt`` by default
(``ts=... level=warn logger=gpuwarden.scheduler_agent.remediation.budget msg="breaker open"
reason="..."``), ``json`` on request (one object per line, for a log shipper). Modules log
through ``logging.getLogger(__name__)`` (every name starts with ``gpuwarden.``) and pass
structured fields as ``extra={...}``, never as JSON or ``%r`` inside the message::

    log.warning("breaker open", extra={"reason": reason, "skipped": n})

so that both formats carry the same fields and a message stays greppable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMATS = ("logfmt", "json")
LEVELS = ("debug", "info", "warn", "error")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """ts, level, logger, msg, then the record's ``extra`` fields, then the exception if any."""
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": _LEVEL_NAMES.get(record.levelname, record.levelname.lower()),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    out.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
    if record.exc_info:
        out["err"] = logging.Formatter().formatException(record.exc_info)
    return out


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields(record), default=str)


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    """Configures the root logger: one stderr handler in ``fmt`` at ``level``."""
    if fmt not in FORMATS:
        raise ValueError(f"--log.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    name = level.lower()
    if name not in LEVELS and name != "warning":
        raise ValueError(f"--log.level: {level!r} is not one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter() if fmt == "logfmt" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(name, name.upper()))


def add_flags(parser: Any) -> None:
    """``--log.level`` and ``--log.format`` on an argparse parser, as Prometheus spells them."""
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=LEVELS + ("warning",),
        help="only log messages at or above this level (default info)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=FORMATS,
        help="logfmt (default) or json, one event per line",
    )
