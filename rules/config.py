"""Loads and validates rules/thresholds.yaml into typed, immutable objects.

``load(path=None)`` reads the shipped thresholds file (or ``path``), validates it against
``schema.json`` and a few cross-field rules, and returns a ``RulesConfig``. Any problem raises
``ConfigError`` naming the file, the line and the field path (``alerts.THERMAL_WARNING.for``),
so an editor's mistake is found without reading a stack trace. Nothing here writes files.

``RulesConfig.alerts`` holds the threshold alerts (the seed's eight and any a user adds), keyed
by rule id; each has ``.metric``, ``.op``, ``.threshold`` (base unit), ``.for_seconds``,
``.severity`` and ``.action``. The agent's predictor and the dashboard generator read them.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jsonschema
import yaml

DEFAULT_PATH = Path(__file__).resolve().with_name("thresholds.yaml")
SCHEMA_PATH = Path(__file__).resolve().with_name("schema.json")

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}

_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a thresholds file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field or '(document)'}: {self.message}"


class ConfigError(Exception):
    """A thresholds file that cannot be used. ``.problems`` lists every problem found;
    ``.file``, ``.line`` and ``.field`` describe the first one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        self.file, self.line, self.field = first.file, first.line, first.field
        lines = [str(p) for p in problems]
        super().__init__("\n".join(lines) + "\nfix the file (schema: rules/schema.json) and run again")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration ("1m30s"); raises ValueError on anything else."""
    m = _DURATION_RE.match(text)
    if text == "0":
        return 0.0
    if not m or not text:
        raise ValueError(f"{text!r} is not a Prometheus duration (like 30s, 5m, 1h)")
    return float(sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_UNITS) if g))


@dataclass(frozen=True)
class AlertRule:
    """A threshold alert: ``value(metric) op threshold`` held for ``for_seconds``.

    ``kind`` says how the compared value is built from the raw series ``metric``:
    level (the series itself), ratio (``metric / denominator``), growth (counter growth within
    ``window_seconds``, a reset-safe lower bound) or any (max over ``values`` of ``label``).
    """

    rule: str
    alert: str
    family: str
    title: str
    kind: str
    metric: str
    op: str
    threshold: float
    for_seconds: float
    for_text: str
    severity: str
    action: str
    unit: str = ""
    humanize: str = "humanize"
    denominator: str | None = None
    window_seconds: float | None = None
    window_text: str | None = None
    label: str | None = None
    values: tuple[str, ...] = ()
    description: str | None = None

    def breached(self, value: float) -> bool:
        """Whether ``value`` (in the compared unit) is on the alerting side of the threshold."""
        return OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Forecast:
    """predict_linear of ``target``'s value ``horizon_seconds`` ahead, over ``lookback_seconds``,
    alerted while the current value is past ``guard`` and not yet past the threshold."""

    rule: str
    alert: str
    title: str
    target: AlertRule
    lookback_seconds: float
    lookback_text: str
    horizon_seconds: float
    horizon_text: str
    guard: float
    for_seconds: float
    for_text: str
    severity: str
    action: str
    description: str | None = None

    @property
    def family(self) -> str:
        return self.target.family


@dataclass(frozen=True)
class MonitoringAlert:
    """An alert on the monitoring's own health; the expression follows from ``kind``."""

    rule: str
    alert: str
    family: str
    title: str
    kind: str
    for_seconds: float
    for_text: str
    severity: str
    action: str
    lookback_text: str | None = None
    window_text: str | None = None
    xids: tuple[int, ...] = ()
    description: str | None = None


@dataclass(frozen=True)
class RulesConfig:
    path: Path
    exporter_job: str
    runbook_base_url: str
    evaluation_interval: str | None
    prometheus_rule: Mapping[str, Any]
    alerts: dict[str, AlertRule]
    forecasts: dict[str, Forecast] = field(default_factory=dict)
    monitoring: dict[str, MonitoringAlert] = field(default_factory=dict)

    def all_alerts(self) -> list[AlertRule | Forecast | MonitoringAlert]:
        """Every alert in file order: thresholds, forecasts, monitoring."""
        return [*self.alerts.values(), *self.forecasts.values(), *self.monitoring.values()]

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base_url}/{alert}.md"


# --- reading YAML with line numbers -------------------------------------------------------


def _walk_marks(node: yaml.Node, path: FieldPath, marks: dict[FieldPath, int],
                problems: list[Problem], file: str) -> None:
    """Records the 1-based line of every key/item; reports duplicate keys (YAML keeps the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = path + (key,)
            if key in seen:
                problems.append(Problem(file, key_node.start_mark.line + 1, _dotted(sub),
                                        "duplicate key (remove one of them)"))
            seen.add(key)
            marks[sub] = key_node.start_mark.line + 1
            _walk_marks(value_node, sub, marks, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[path + (i,)] = item.start_mark.line + 1
            _walk_marks(item, path + (i,), marks, problems, file)


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(marks: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    """Line of ``path``, or of its nearest ancestor that has one."""
    p = tuple(path)
    while p:
        if p in marks:
            return marks[p]
        p = p[:-1]
    return marks.get((), None)


def _read(path: Path) -> tuple[Any, dict[FieldPath, int]]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError([Problem(file, 1, "", "empty file")])
        marks: dict[FieldPath, int] = {(): node.start_mark.line + 1}
        problems: list[Problem] = []
        _walk_marks(node, (), marks, problems, file)
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(file, line, "", f"not valid YAML: {problem}")]) from exc
    finally:
        loader.dispose()
    return data, marks


# --- validation -----------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _schema_problems(data: Any, marks: Mapping[FieldPath, int], file: str) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(_schema())
    problems: list[Problem] = []
    for err in _leaf_errors(validator.iter_errors(data)):
        path: FieldPath = tuple(err.absolute_path)
        message = err.message
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = [k for k in err.validator_value if k not in err.instance]
            if missing:
                message = "missing (required field)"
                problems.append(Problem(file, _line(marks, path), _dotted(path + (missing[0],)), message))
                continue
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = set(err.schema.get("properties", {}))
            for extra in sorted(k for k in err.instance if k not in known):
                problems.append(Problem(file, _line(marks, path + (extra,)), _dotted(path + (extra,)),
                                        f"unknown field (allowed: {', '.join(sorted(known))})"))
            continue
        if err.validator == "not" and isinstance(err.instance, dict):
            message = "field not allowed for this kind (see rules/schema.json)"
        problems.append(Problem(file, _line(marks, path), _dotted(path), message))
    return sorted(set(problems), key=lambda p: (p.line or 0, p.field, p.message))


def _leaf_errors(errors: Iterable[jsonschema.ValidationError]) -> Iterable[jsonschema.ValidationError]:
    """Flattens allOf wrappers so messages point at the field, not at the schema combinator."""
    for err in errors:
        if err.validator == "allOf" and err.context:
            yield from _leaf_errors(err.context)
        else:
            yield err


def _semantic_problems(data: dict[str, Any], marks: Mapping[FieldPath, int], file: str) -> list[Problem]:
    """Cross-field rules a JSON Schema cannot say."""
    problems: list[Problem] = []

    def bad(path: FieldPath, message: str) -> None:
        problems.append(Problem(file, _line(marks, path), _dotted(path), message))

    alerts: dict[str, Any] = data.get("alerts", {})
    sections = [("alerts", alerts), ("forecasts", data.get("forecasts") or {}),
                ("monitoring", data.get("monitoring") or {})]
    seen_ids: dict[str, str] = {}
    seen_names: dict[str, str] = {}
    for section, entries in sections:
        for rule_id, entry in entries.items():
            if rule_id in seen_ids:
                bad((section, rule_id), f"rule id already used in {seen_ids[rule_id]}")
            seen_ids[rule_id] = f"{section}.{rule_id}"
            name = entry["alert"]
            if name in seen_names:
                bad((section, rule_id, "alert"), f"alert name {name!r} already used by {seen_names[name]}")
            seen_names[name] = f"{section}.{rule_id}"
            for key in ("for", "window", "lookback", "horizon"):
                if key in entry:
                    try:
                        parse_duration(entry[key])
                    except ValueError as exc:
                        bad((section, rule_id, key), str(exc))

    for rule_id, entry in alerts.items():
        kind = entry.get("kind", "level")
        if kind == "growth" and not entry["metric"].endswith("_total"):
            bad(("alerts", rule_id, "metric"), "kind growth needs a counter (a name ending in _total)")
        if kind in ("level", "ratio") and not math.isfinite(float(entry["threshold"])):
            bad(("alerts", rule_id, "threshold"), "must be a finite number")
        if kind == "growth" and entry["op"] not in (">=", ">"):
            bad(("alerts", rule_id, "op"), "kind growth counts new events: use >= or >")
        if kind == "growth" and parse_duration(entry["window"]) <= 0:
            bad(("alerts", rule_id, "window"), "must be longer than 0s")

    for rule_id, entry in (data.get("forecasts") or {}).items():
        target_id = entry["target"]
        target = alerts.get(target_id)
        path = ("forecasts", rule_id)
        if target is None:
            bad(path + ("target",), f"no alert {target_id!r} under alerts (known: {', '.join(alerts)})")
            continue
        kind = target.get("kind", "level")
        if kind not in ("level", "ratio"):
            bad(path + ("target",), f"{target_id} is of kind {kind}: predict_linear applies to gauges "
                                    "(kind level or ratio) only")
            continue
        for metric_key in ("metric", "denominator"):
            if str(target.get(metric_key, "")).endswith("_total"):
                bad(path + ("target",), f"{target_id}.{metric_key} is a counter: predict_linear "
                                        "applies to gauges only")
        op, threshold, guard = target["op"], float(target["threshold"]), float(entry["guard"])
        if op not in (">", ">=", "<", "<="):
            bad(path + ("target",), f"{target_id} compares with {op}: a forecast needs <, <=, > or >=")
        elif OPS[op](guard, threshold):
            bad(path + ("guard",), f"{guard:g} already breaches {target_id} ({op} {threshold:g}): "
                                   "the guard must sit on the safe side of the threshold")
        if parse_duration(entry["horizon"]) <= 0 or parse_duration(entry["lookback"]) <= 0:
            bad(path + ("horizon",), "lookback and horizon must be longer than 0s")
    return problems


# --- building objects -----------------------------------------------------------------------


def _alert_rule(rule_id: str, e: dict[str, Any]) -> AlertRule:
    return AlertRule(
        rule=rule_id, alert=e["alert"], family=e["family"], title=e["title"],
        kind=e.get("kind", "level"), metric=e["metric"], op=e["op"],
        threshold=float(e["threshold"]), for_seconds=parse_duration(e["for"]), for_text=e["for"],
        severity=e["severity"], action=e["action"], unit=e.get("unit", ""),
        humanize=e.get("humanize", "humanize"), denominator=e.get("denominator"),
        window_seconds=parse_duration(e["window"]) if "window" in e else None,
        window_text=e.get("window"), label=e.get("label"), values=tuple(e.get("values", ())),
        description=e.get("description"))


def load(path: Path | str | None = None) -> RulesConfig:
    """Reads and validates a thresholds file (default: the shipped rules/thresholds.yaml)."""
    cfg_path = Path(path) if path is not None else DEFAULT_PATH
    file = str(cfg_path)
    data, marks = _read(cfg_path)
    problems = _schema_problems(data, marks, file)
    if problems:
        raise ConfigError(problems)
    problems = _semantic_problems(data, marks, file)
    if problems:
        raise ConfigError(problems)

    settings = data["settings"]
    alerts = {rid: _alert_rule(rid, e) for rid, e in data["alerts"].items()}
    forecasts = {
        rid: Forecast(
            rule=rid, alert=e["alert"], title=e["title"], target=alerts[e["target"]],
            lookback_seconds=parse_duration(e["lookback"]), lookback_text=e["lookback"],
            horizon_seconds=parse_duration(e["horizon"]), horizon_text=e["horizon"],
            guard=float(e["guard"]), for_seconds=parse_duration(e["for"]), for_text=e["for"],
            severity=e["severity"], action=e["action"], description=e.get("description"))
        for rid, e in (data.get("forecasts") or {}).items()}
    monitoring = {
        rid: MonitoringAlert(
            rule=rid, alert=e["alert"], family=e["family"], title=e["title"], kind=e["kind"],
            for_seconds=parse_duration(e["for"]), for_text=e["for"], severity=e["severity"],
            action=e["action"], lookback_text=e.get("lookback"), window_text=e.get("window"),
            xids=tuple(e.get("xids", ())), description=e.get("description"))
        for rid, e in (data.get("monitoring") or {}).items()}
    return RulesConfig(
        path=cfg_path, exporter_job=settings["exporter_job"],
        runbook_base_url=settings["runbook_base_url"],
        evaluation_interval=settings.get("evaluation_interval"),
        prometheus_rule=settings.get("prometheus_rule", {"name": "gpuwarden"}),
        alerts=alerts, forecasts=forecasts, monitoring=monitoring)
