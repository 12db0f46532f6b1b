"""Loads and validates rules/thresholds.yaml into typed, immutable objects.

``load(path=None)`` reads the shipped thresholds file (or ``path``), validates it against
``schema.json`` and a few cross-field rules, and returns a ``RulesConfig``. Any problem raises
``ConfigError`` naming the file, the line and the field path (``alerts.THERMAL_WARNING.for``),
so an editor's mistake is found without reading a stack trace; every problem found is listed.
Reading, line numbers, schema validation and the schema's defaults come from the shared
foundation (``gpuwarden.config``), durations from ``gpuwarden.durations``. Nothing here writes
files.

``RulesConfig.alerts`` holds the threshold alerts (the seed's eight and any a user adds), keyed
by rule id; each has ``.metric``, ``.op``, ``.threshold`` (base unit), ``.for_seconds``,
``.severity`` and ``.action``: the DEFAULT profile's values, the ones a GPU whose model no profile
matches (or whose gpu_info is missing) is judged by. The agent's predictor and the dashboard
generator read them. ``RulesConfig.profiles`` holds the per-GPU-model profiles (first match on
gpu_info's ``name`` wins); ``RulesConfig.rule_for(rule_id, gpu_name)`` answers the rule one GPU
is actually judged by.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema

from gpuwarden import config as foundation
from gpuwarden import sources
from gpuwarden.config import Document, FieldPath, Problem
from gpuwarden.durations import parse as parse_duration

__all__ = ["ConfigError", "Problem", "RulesConfig", "load", "parse_duration"]

DEFAULT_PATH = Path(__file__).resolve().with_name("thresholds.yaml")
SCHEMA_PATH = Path(__file__).resolve().with_name("schema.json")

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}

# Limits a profile's threshold may be relative to: name -> (series, extra matchers, unit suffix of
# the metrics it may be compared with). The exporter publishes these per GPU (DESIGN.md).
LIMITS: dict[str, tuple[str, tuple[tuple[str, str], ...], str]] = {
    "power_limit": ("gpu_power_limit_watts", (), "_watts"),  # enforced limit
    "power_limit_default": ("gpu_power_limit_default_watts", (), "_watts"),  # the board's default
    "temperature_slowdown": ("gpu_temperature_threshold_celsius", (("threshold", "slowdown"),), "_celsius"),
    "temperature_shutdown": ("gpu_temperature_threshold_celsius", (("threshold", "shutdown"),), "_celsius"),
    "temperature_gpu_max": ("gpu_temperature_threshold_celsius", (("threshold", "gpu_max"),), "_celsius"),
    "memory_temperature_max": ("gpu_temperature_threshold_celsius", (("threshold", "memory_max"),), "_celsius"),
}


class ConfigError(foundation.ConfigError):
    """A thresholds file that cannot be used. ``.problems`` lists every problem found;
    ``.file``, ``.line`` and ``.field`` describe the first one."""

    hint = "fix the file (schema: rules/schema.json) and run again"


@dataclass(frozen=True)
class Relative:
    """A threshold of ``factor * <the GPU's own limit> + offset``, e.g. 0.95 x the enforced power
    limit, or the slowdown temperature - 3 °C. ``limit`` is a key of ``LIMITS``."""

    limit: str
    factor: float
    offset: float

    @property
    def metric(self) -> str:
        return LIMITS[self.limit][0]

    @property
    def matchers(self) -> tuple[tuple[str, str], ...]:
        return LIMITS[self.limit][1]

    def threshold(self, limit_value: float) -> float:
        """The threshold for a GPU whose limit reads ``limit_value`` (same arithmetic as PromQL)."""
        return self.factor * limit_value + self.offset


@dataclass(frozen=True)
class AlertRule:
    """A threshold alert: ``value(metric) op threshold`` held for ``for_seconds``.

    ``kind`` says how the compared value is built from the raw series ``metric``:
    level (the series itself), ratio (``metric / denominator``), growth (counter growth within
    ``window_seconds``, a reset-safe lower bound) or any (max over ``values`` of ``label``).

    A profile's version of a rule has ``profile`` set (its name, also the alert's ``profile``
    label) and may have ``relative``: then the GPU's own limit gives the threshold and
    ``threshold`` is the fallback for a GPU that does not report that limit.
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
    profile: str | None = None
    relative: Relative | None = None
    source: str | None = None

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
class Profile:
    """Thresholds for the GPU models whose gpu_info ``name`` fully matches ``match`` (a Prometheus
    RE2 regex). ``alerts`` holds the profile's version of each rule it overrides; the rest of the
    rules judge its GPUs with the default values. ``index`` is its place in the file: a GPU is
    judged by the first profile it matches."""

    name: str
    match: str
    index: int
    examples: tuple[str, ...]
    alerts: dict[str, AlertRule]
    description: str | None = None

    def matches(self, gpu_name: str) -> bool:
        return re.fullmatch(self.match, gpu_name) is not None


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
    profiles: dict[str, Profile] = field(default_factory=dict)
    # Where the metrics come from (gpuwarden.sources.SOURCES) and, when set, the scrape job
    # matcher that replaces the source's default.
    source: str = "gpuwarden"
    job_selector_setting: str | None = None

    @property
    def job_selector(self) -> str:
        """The matcher every expression selects the exporter's series with."""
        if self.job_selector_setting:
            return self.job_selector_setting
        if self.source == "gpuwarden":
            return f'job="{self.exporter_job}"'
        return sources.default_job_selector(self.source)

    def with_source(self, source: str) -> RulesConfig:
        """The same thresholds over another source's metrics (``--source``); a job_selector
        written for the file's own source does not carry over."""
        if source == self.source:
            return self
        return replace(self, source=sources.check(source), job_selector_setting=None)

    def profile_for(self, gpu_name: str | None) -> Profile | None:
        """The profile judging a GPU of this model (first match in file order), or None."""
        if gpu_name is None:
            return None
        return next((p for p in self.profiles.values() if p.matches(gpu_name)), None)

    def rule_for(self, rule_id: str, gpu_name: str | None) -> AlertRule:
        """The version of ``rule_id`` a GPU named ``gpu_name`` is judged by (the default one when
        no profile matches, the profile does not override it, or the name is unknown)."""
        profile = self.profile_for(gpu_name)
        if profile is not None and rule_id in profile.alerts:
            return profile.alerts[rule_id]
        return self.alerts[rule_id]

    def profiles_overriding(self, rule_id: str) -> list[Profile]:
        return [p for p in self.profiles.values() if rule_id in p.alerts]

    def versions(self, rule: AlertRule) -> list[AlertRule]:
        """``rule`` (the default) and each profile's override of it, in file order."""
        return [rule, *(p.alerts[rule.rule] for p in self.profiles_overriding(rule.rule))]

    def all_alerts(self) -> list[AlertRule | Forecast | MonitoringAlert]:
        """Every alert in file order: thresholds, forecasts, monitoring."""
        return [*self.alerts.values(), *self.forecasts.values(), *self.monitoring.values()]

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base_url}/{alert}.md"


# --- validation -----------------------------------------------------------------------------


def _schema() -> foundation.Schema:
    return foundation.Schema.packaged("gpuwarden.rules", "schema.json")


def _describe(err: jsonschema.ValidationError, path: FieldPath) -> list[tuple[FieldPath, str]] | None:
    """The thresholds file's wording: a missing field is named itself, a field a kind does not
    take points at the schema."""
    if err.validator == "required" and isinstance(err.instance, dict) and isinstance(err.validator_value, list):
        missing = [k for k in err.validator_value if k not in err.instance]
        if missing:
            return [(path + (missing[0],), "missing (required field)")]
    if err.validator == "not" and isinstance(err.instance, dict):
        return [(path, "field not allowed for this kind (see rules/schema.json)")]
    return None


def _schema_problems(doc: Document) -> list[Problem]:
    # Sorted by line; a missing field has no line of its own and is reported at its parent's.
    return _schema().problems(doc.data, doc, describe=_describe)


def _semantic_problems(doc: Document) -> list[Problem]:
    """Cross-field rules a JSON Schema cannot say."""
    data: dict[str, Any] = doc.data
    problems: list[Problem] = []

    def bad(path: FieldPath, message: str) -> None:
        problems.append(doc.problem(path, message))

    alerts: dict[str, Any] = data.get("alerts", {})
    sections = [
        ("alerts", alerts),
        ("forecasts", data.get("forecasts") or {}),
        ("monitoring", data.get("monitoring") or {}),
    ]
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
        kind = entry["kind"]
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
        kind = target["kind"]
        if kind not in ("level", "ratio"):
            bad(
                path + ("target",),
                f"{target_id} is of kind {kind}: predict_linear applies to gauges (kind level or ratio) only",
            )
            continue
        for metric_key in ("metric", "denominator"):
            if str(target.get(metric_key, "")).endswith("_total"):
                bad(path + ("target",), f"{target_id}.{metric_key} is a counter: predict_linear applies to gauges only")
        op, threshold, guard = target["op"], float(target["threshold"]), float(entry["guard"])
        if op not in (">", ">=", "<", "<="):
            bad(path + ("target",), f"{target_id} compares with {op}: a forecast needs <, <=, > or >=")
        elif OPS[op](guard, threshold):
            bad(
                path + ("guard",),
                f"{guard:g} already breaches {target_id} ({op} {threshold:g}): "
                "the guard must sit on the safe side of the threshold",
            )
        if parse_duration(entry["horizon"]) <= 0 or parse_duration(entry["lookback"]) <= 0:
            bad(path + ("horizon",), "lookback and horizon must be longer than 0s")
    problems += _profile_problems(doc)
    return problems


def _profile_problems(doc: Document) -> list[Problem]:
    """Profiles: a regex that compiles, overrides of rules that exist, relative thresholds only
    on levels compared with a limit of the same unit, and examples each judged by its profile."""
    data: dict[str, Any] = doc.data
    problems: list[Problem] = []

    def bad(path: FieldPath, message: str) -> None:
        problems.append(doc.problem(path, message))

    alerts: dict[str, Any] = data.get("alerts", {})
    compiled: list[tuple[str, re.Pattern[str] | None]] = []
    for name, prof in (data.get("profiles") or {}).items():
        path = ("profiles", name)
        try:
            rx: re.Pattern[str] | None = re.compile(prof["match"])
        except re.error as exc:
            bad(path + ("match",), f"not a regular expression: {exc}")
            rx = None
        for i, example in enumerate(prof.get("examples", ())):
            if rx is not None and not rx.fullmatch(example):
                bad(path + ("examples", i), f"{example!r} does not fully match {prof['match']!r}")
            earlier = next((n for n, r in compiled if r is not None and r.fullmatch(example)), None)
            if earlier:
                bad(
                    path + ("examples", i),
                    f"{example!r} is judged by the earlier profile {earlier!r} "
                    "(first match wins): narrow that profile's match or move this one up",
                )
        compiled.append((name, rx))
        for rule_id, override in prof["alerts"].items():
            rpath = path + ("alerts", rule_id)
            base = alerts.get(rule_id)
            if base is None:
                bad(rpath, f"no alert {rule_id!r} under alerts to override (known: {', '.join(alerts)})")
                continue
            if "for" in override:
                try:
                    parse_duration(override["for"])
                except ValueError as exc:
                    bad(rpath + ("for",), str(exc))
            if "threshold" in override and not math.isfinite(float(override["threshold"])):
                bad(rpath + ("threshold",), "must be a finite number")
            rel = override.get("relative")
            if rel is None:
                continue
            kind = base["kind"]
            if kind != "level":
                bad(
                    rpath + ("relative",),
                    f"{rule_id} is of kind {kind}: only a level (the raw series "
                    "itself) can be compared with a GPU limit",
                )
                continue
            suffix = LIMITS[rel["to"]][2]
            if not base["metric"].endswith(suffix):
                bad(
                    rpath + ("relative", "to"),
                    f"{rel['to']} is in {suffix[1:]} but {rule_id} compares "
                    f"{base['metric']}: pick a limit in the metric's unit",
                )
    return problems


# --- building objects -----------------------------------------------------------------------


def _alert_rule(rule_id: str, e: dict[str, Any]) -> AlertRule:
    return AlertRule(
        rule=rule_id,
        alert=e["alert"],
        family=e["family"],
        title=e["title"],
        kind=e["kind"],
        metric=e["metric"],
        op=e["op"],
        threshold=float(e["threshold"]),
        for_seconds=parse_duration(e["for"]),
        for_text=e["for"],
        severity=e["severity"],
        action=e["action"],
        unit=e["unit"],
        humanize=e["humanize"],
        denominator=e.get("denominator"),
        window_seconds=parse_duration(e["window"]) if "window" in e else None,
        window_text=e.get("window"),
        label=e.get("label"),
        values=tuple(e.get("values", ())),
        description=e.get("description"),
    )


def _profile(name: str, index: int, e: dict[str, Any], alerts: dict[str, AlertRule]) -> Profile:
    rules: dict[str, AlertRule] = {}
    for rule_id, o in e["alerts"].items():
        base = alerts[rule_id]
        changes: dict[str, Any] = {"profile": name, "source": o.get("source")}
        if "threshold" in o:
            changes["threshold"] = float(o["threshold"])
        if "for" in o:
            changes["for_seconds"], changes["for_text"] = parse_duration(o["for"]), o["for"]
        if "relative" in o:
            r = o["relative"]
            changes["relative"] = Relative(limit=r["to"], factor=float(r["factor"]), offset=float(r["offset"]))
        rules[rule_id] = replace(base, **changes)
    return Profile(
        name=name,
        match=e["match"],
        index=index,
        examples=tuple(e.get("examples", ())),
        alerts=rules,
        description=e.get("description"),
    )


def load(path: Path | str | None = None) -> RulesConfig:
    """Reads and validates a thresholds file (default: the shipped rules/thresholds.yaml)."""
    cfg_path = Path(path) if path is not None else DEFAULT_PATH
    doc = foundation.read_yaml(cfg_path, ConfigError)
    if doc.data is None:
        raise ConfigError([Problem(doc.file, 1, "", "empty file")])
    problems = _schema_problems(doc)
    if problems:
        raise ConfigError(problems)
    doc.data = _schema().with_defaults(doc.data)  # the schema's defaults: kind, humanize, ...
    problems = _semantic_problems(doc)
    if problems:
        raise ConfigError(problems)
    data = doc.data

    settings = data["settings"]
    alerts = {rid: _alert_rule(rid, e) for rid, e in data["alerts"].items()}
    forecasts = {
        rid: Forecast(
            rule=rid,
            alert=e["alert"],
            title=e["title"],
            target=alerts[e["target"]],
            lookback_seconds=parse_duration(e["lookback"]),
            lookback_text=e["lookback"],
            horizon_seconds=parse_duration(e["horizon"]),
            horizon_text=e["horizon"],
            guard=float(e["guard"]),
            for_seconds=parse_duration(e["for"]),
            for_text=e["for"],
            severity=e["severity"],
            action=e["action"],
            description=e.get("description"),
        )
        for rid, e in (data.get("forecasts") or {}).items()
    }
    monitoring = {
        rid: MonitoringAlert(
            rule=rid,
            alert=e["alert"],
            family=e["family"],
            title=e["title"],
            kind=e["kind"],
            for_seconds=parse_duration(e["for"]),
            for_text=e["for"],
            severity=e["severity"],
            action=e["action"],
            lookback_text=e.get("lookback"),
            window_text=e.get("window"),
            xids=tuple(e.get("xids", ())),
            description=e.get("description"),
        )
        for rid, e in (data.get("monitoring") or {}).items()
    }
    return RulesConfig(
        path=cfg_path,
        exporter_job=settings["exporter_job"],
        runbook_base_url=settings["runbook_base_url"],
        evaluation_interval=settings.get("evaluation_interval"),
        prometheus_rule=settings["prometheus_rule"],
        source=settings["source"],
        job_selector_setting=settings.get("job_selector"),
        alerts=alerts,
        forecasts=forecasts,
        monitoring=monitoring,
        profiles={
            name: _profile(name, i, e, alerts) for i, (name, e) in enumerate((data.get("profiles") or {}).items())
        },
    )
