"""``gpuwarden-agent serve --config FILE``: the YAML config, validated by config.schema.json.

Seam for other components: the schema accepts ``remediation:`` and ``predictor:`` as objects and
leaves them to their owners; ``AgentConfig.section("remediation")`` returns that raw mapping
(``{}`` when absent) and ``AgentConfig.error(field, message)`` builds a ``ConfigError`` naming
this file, the line and the field, so their validation reads like ours.

Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from gpuwarden.listener import Limits

from .store import Retention
from .tls import TlsFiles


class ConfigError(Exception):
    """A config problem; the message names the file, line and field and says what to do."""


@dataclass
class AgentConfig:
    path: Path
    raw: dict[str, Any]
    listen_host: str = ""
    listen_port: int = 9787
    token_file: Path = Path()
    tls: TlsFiles | None = None          # web.tls; None serves plain HTTP
    limits: Limits = Limits()            # web.limits
    database_path: Path = Path()
    synchronous: str = "NORMAL"
    retention: Retention = field(default_factory=Retention)   # database.retention
    scheduler: dict[str, Any] = field(default_factory=dict)
    executor_kind: str = "local"
    log_dir: Path = Path()
    inventory: dict[str, Any] = field(default_factory=dict)
    _lines: dict[tuple, int] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.raw.get(name) or {})

    def error(self, field_path: str, message: str) -> ConfigError:
        keys = tuple(_key(p) for p in field_path.split(".") if p)
        line = self._lines.get(keys)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {field_path}: {message}")

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.path.parent / q)


def _key(p: str) -> Any:
    return int(p) if p.isdigit() else p


def schema() -> dict:
    return json.loads(resources.files("gpuwarden.scheduler_agent").joinpath("config.schema.json").read_text())


def _line_map(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = prefix + (k.value,)
            out[key] = k.start_mark.line + 1
            _line_map(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, prefix + (i,), out)
    return out


_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (7 * 86400, 86400, 3600, 60, 1)


def duration_seconds(value: float | int | str) -> float:
    """Seconds in a number (seconds) or a duration string (``30d``, ``12h``, ``1w2d``, ``90s``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m or not str(value):
        raise ValueError(f"{value!r} is not a duration (seconds, or like 30d, 12h, 90m)")
    return float(sum(int(g) * unit for g, unit in zip(m.groups(), _UNITS) if g))


def _retention(cfg: AgentConfig, raw: dict[str, Any]) -> Retention:
    out = {}
    for key, default, least in (("max_age", "30d", 3600.0), ("interval", "1h", 1.0)):
        try:
            seconds = duration_seconds(raw.get(key, default))
        except ValueError as exc:
            raise cfg.error(f"database.retention.{key}", str(exc)) from None
        if seconds < least:
            raise cfg.error(f"database.retention.{key}", f"{raw[key]!r} is {seconds:g}s: it must "
                            f"be at least {least:g}s" + (" (older rows feed the remediation "
                                                        "budget and escalation windows)"
                                                        if key == "max_age" else ""))
        out[key] = seconds
    return Retention(enabled=bool(raw.get("enabled", True)), max_age_seconds=out["max_age"],
                     interval_seconds=out["interval"], batch_size=int(raw.get("batch_size", 500)))


def load(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    cfg = AgentConfig(path=path, raw=raw if isinstance(raw, dict) else {},
                      _lines=_line_map(node) if node is not None else {})
    if not isinstance(raw, dict):
        raise cfg.error("", "the config must be a mapping (web:, database:, ...)")
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(raw))
    if err is not None:
        field_path = ".".join(str(p) for p in err.absolute_path)
        raise cfg.error(field_path or "(top level)", err.message)
    web = raw["web"]
    host, _, port = web.get("listen_address", ":9787").rpartition(":")
    cfg.listen_host, cfg.listen_port = host, int(port)
    if not 0 <= cfg.listen_port <= 65535:
        raise cfg.error("web.listen_address", f"port {port} is out of range 0-65535")
    cfg.token_file = cfg.resolve(web["token_file"])
    if not cfg.token_file.is_file():
        raise cfg.error("web.token_file", f"{cfg.token_file} does not exist: write a random token into it "
                                          "(e.g. `openssl rand -hex 32 > FILE`)")
    lim = web.get("limits") or {}
    cfg.limits = Limits(header_timeout=lim.get("header_timeout_seconds", Limits.header_timeout),
                        body_timeout=lim.get("body_timeout_seconds", Limits.body_timeout),
                        idle_timeout=lim.get("idle_timeout_seconds", Limits.idle_timeout),
                        max_connections=lim.get("max_connections", Limits.max_connections))
    tls = web.get("tls")
    if tls is not None:
        cfg.tls = TlsFiles(cfg.resolve(tls["cert_file"]), cfg.resolve(tls["key_file"]),
                           cfg.resolve(tls["client_ca_file"]) if "client_ca_file" in tls else None)
    db = raw.get("database") or {}
    cfg.database_path = cfg.resolve(db.get("path", "gpuwarden-agent.db"))
    cfg.synchronous = db.get("synchronous", "NORMAL")
    cfg.retention = _retention(cfg, db.get("retention") or {})
    cfg.scheduler = dict(raw.get("scheduler") or {})
    ex = raw.get("executor") or {}
    cfg.executor_kind = ex.get("kind", "local")
    cfg.log_dir = cfg.resolve(ex.get("log_dir", "job-logs"))
    cfg.inventory = dict(raw.get("inventory") or {})
    if "file" in cfg.inventory:
        cfg.inventory["file"] = str(cfg.resolve(cfg.inventory["file"]))
    return cfg
