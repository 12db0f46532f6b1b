"""``gpuwarden-agent serve --config FILE``: the YAML config, validated by config.schema.json.

Seam for other components: the schema accepts ``remediation:`` and ``predictor:`` as objects and
leaves them to their owners; ``AgentConfig.section("remediation")`` returns that raw mapping
(``{}`` when absent) and ``AgentConfig.error(field, message)`` builds a ``ConfigError`` naming
this file, the line and the field, so their validation reads like ours.

Loading, line numbers, schema validation and defaults go through the shared foundation
(``gpuwarden.config``): every schema problem is reported at once, one ``file:line: field:
message`` line each, and the schema's ``default``s are the only defaults. Durations (
``database.retention``) are Prometheus' (``gpuwarden.durations``) or plain seconds.

Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuwarden import config as foundation
from gpuwarden.config import LineIndex, Problem
from gpuwarden.durations import seconds as duration_seconds
from gpuwarden.listener import Limits

from .store import Retention
from .tls import TlsFiles

__all__ = ["AgentConfig", "ConfigError", "duration_seconds", "load", "schema"]


class ConfigError(foundation.ConfigError):
    """A config problem; each line names the file, line and field and says what to do."""


@dataclass
class AgentConfig:
    """The validated config. Every default comes from config.schema.json (filled into ``raw``
    by the foundation), none is written here."""

    path: Path
    raw: dict[str, Any]
    listen_host: str
    listen_port: int
    token_file: Path
    tls: TlsFiles | None  # web.tls; None serves plain HTTP
    limits: Limits  # web.limits
    database_path: Path
    synchronous: str
    retention: Retention  # database.retention
    scheduler: dict[str, Any]
    executor_kind: str
    log_dir: Path
    inventory: dict[str, Any]
    _lines: LineIndex = field(default_factory=LineIndex, repr=False)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.raw.get(name) or {})

    def error(self, field_path: str, message: str) -> ConfigError:
        return _error(self.path, self._lines, field_path, message)

    def resolve(self, p: str) -> Path:
        return _resolve(self.path, p)


def _error(path: Path, lines: LineIndex, field_path: str, message: str) -> ConfigError:
    return ConfigError(Problem(str(path), lines.line(foundation.split(field_path)), field_path, message))


def _resolve(path: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (path.parent / q)


def _schema() -> foundation.Schema:
    return foundation.Schema.packaged("gpuwarden.scheduler_agent", "config.schema.json")


def schema() -> dict[str, Any]:
    """The JSON Schema of the agent's config file (shipped as package data)."""
    return _schema().schema


def _retention(path: Path, lines: LineIndex, raw: dict[str, Any]) -> Retention:
    out = {}
    for key, least in (("max_age", 3600.0), ("interval", 1.0)):
        where = f"database.retention.{key}"
        try:
            seconds = duration_seconds(raw[key])
        except ValueError as exc:
            raise _error(path, lines, where, str(exc)) from None
        if seconds < least:
            raise _error(
                path,
                lines,
                where,
                f"{raw[key]!r} is {seconds:g}s: it must be at least "
                f"{least:g}s"
                + (" (older rows feed the remediation budget and escalation windows)" if key == "max_age" else ""),
            )
        out[key] = seconds
    return Retention(
        enabled=raw["enabled"],
        max_age_seconds=out["max_age"],
        interval_seconds=out["interval"],
        batch_size=raw["batch_size"],
    )


def load(path: str | Path) -> AgentConfig:
    """Reads and validates the config file; raises ConfigError listing every problem."""
    path = Path(path)
    doc = foundation.read_yaml(path, ConfigError)
    lines = doc.lines
    raw = {} if doc.data is None else doc.data
    if not isinstance(raw, dict):
        raise _error(path, lines, "", "the config must be a mapping (web:, database:, ...)")
    problems = _schema().problems(raw, doc)
    if problems:
        raise ConfigError(problems)
    raw = _schema().with_defaults(raw)
    web = raw["web"]
    host, _, port = web["listen_address"].rpartition(":")
    if not 0 <= int(port) <= 65535:
        raise _error(path, lines, "web.listen_address", f"port {port} is out of range 0-65535")
    token_file = _resolve(path, web["token_file"])
    if not token_file.is_file():
        raise _error(
            path,
            lines,
            "web.token_file",
            f"{token_file} does not exist: write a random token into it (e.g. `openssl rand -hex 32 > FILE`)",
        )
    lim = web["limits"]
    limits = Limits(
        header_timeout=lim["header_timeout_seconds"],
        body_timeout=lim["body_timeout_seconds"],
        idle_timeout=lim["idle_timeout_seconds"],
        max_connections=lim["max_connections"],
    )
    tls = web.get("tls")
    tls_files = (
        None
        if tls is None
        else TlsFiles(
            _resolve(path, tls["cert_file"]),
            _resolve(path, tls["key_file"]),
            _resolve(path, tls["client_ca_file"]) if "client_ca_file" in tls else None,
        )
    )
    db = raw["database"]
    ex = raw["executor"]
    inventory = dict(raw.get("inventory") or {})
    if "file" in inventory:
        inventory["file"] = str(_resolve(path, inventory["file"]))
    return AgentConfig(
        path=path,
        raw=raw,
        listen_host=host,
        listen_port=int(port),
        token_file=token_file,
        tls=tls_files,
        limits=limits,
        database_path=_resolve(path, db["path"]),
        synchronous=db["synchronous"],
        retention=_retention(path, lines, db["retention"]),
        scheduler=dict(raw["scheduler"]),
        executor_kind=ex["kind"],
        log_dir=_resolve(path, ex["log_dir"]),
        inventory=inventory,
        _lines=lines,
    )
