"""Prometheus rule groups, annotations and the PrometheusRule manifest from a RulesConfig.

Labels and annotations are added in one place (``_alert``) so that every alert carries
``rule``, ``severity``, ``action``, ``family``, a summary, a description with the humanized
value and a runbook link. A profile's version of a rule carries one more label, ``profile``
(its name): it tells the operator which figures judged the GPU, and keeps the versions apart
for promtool's duplicate-rule lint; routing and the agent read only the labels above.
"""

from __future__ import annotations

from typing import Any

import yaml

from gpuwarden import sources

from . import promql
from .config import AlertRule, Forecast, MonitoringAlert, RulesConfig

RECORDING_FILE = "gpuwarden-recording.rules.yml"
ALERTS_FILE = "gpuwarden-alerts.rules.yml"
MANIFEST_FILE = "gpuwarden.prometheusrule.yaml"

_OP_WORDS = {
    ">=": "at or above",
    ">": "above",
    "<=": "at or below",
    "<": "below",
    "==": "equal to",
    "!=": "not equal to",
}
_GPU = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }}"
# The job the GPU runs, read at notification time from the agent's gpu_allocation_info (the
# agent's metrics carry the GPU's instance); empty when no job holds it or the agent is not
# scraped, and no alert waits on it: it is an annotation, never part of an expression.
JOB_ANNOTATION = "running_job"
JOB_TEMPLATE = (
    '{{ with printf "gpu_allocation_info{instance=%q,gpu=%q}" $labels.instance $labels.gpu | query }}'
    "{{ with . | first }}{{ .Labels.job_name }} (job_id {{ .Labels.job_id }}){{ end }}{{ end }}"
)


def shown(value: float, rule: AlertRule) -> str:
    """A threshold as the description prints it, in the same style as the humanized value."""
    if rule.humanize == "humanizePercentage":
        return f"{value * 100:g}%"
    return f"{value:g}{rule.unit}"


def _value(humanize: str = "humanize") -> str:
    return "{{ $value | " + humanize + " }}"


def _held(for_text: str, seconds: float) -> str:
    return f" for at least {for_text}" if seconds > 0 else ""


_LIMIT_WORDS = {
    "power_limit": "its enforced power limit",
    "power_limit_default": "its default power limit",
    "temperature_slowdown": "its slowdown temperature",
    "temperature_shutdown": "its shutdown temperature",
    "temperature_gpu_max": "its maximum operating temperature",
    "memory_temperature_max": "its memory's maximum operating temperature",
}


def relative_words(rule: AlertRule) -> str:
    """``112.5% of its enforced power limit`` / ``its slowdown temperature - 3°C``."""
    rel = rule.relative
    assert rel is not None
    words = _LIMIT_WORDS[rel.limit]
    if rel.factor != 1:
        words = f"{rel.factor * 100:g}% of {words}"
    if rel.offset:
        words += f" {'+' if rel.offset > 0 else '-'} {shown(abs(rel.offset), rule)}"
    return f"{words} ({rel.metric})"


def metric_words(cfg: RulesConfig | None, metric: str) -> str:
    """How the description names a metric: the source's own series (DCGM_FI_DEV_GPU_TEMP)."""
    if cfg is None or cfg.source == "gpuwarden":
        return metric
    r = sources.raw(cfg.source, metric)
    names = " + ".join(r.sum_of) if r.sum_of else " or ".join(r.names)
    return f"({names})" if len(r.sum_of or r.names) > 1 else names


def threshold_description(rule: AlertRule, cfg: RulesConfig | None = None, profile: str | None = None) -> str:
    """What the alert says; ``profile`` replaces the version's profile name in the text (a Go
    template naming it from the alert's labels, where one rule speaks for several profiles)."""
    if rule.description:
        return rule.description
    metric = metric_words(cfg, rule.metric)
    denominator = metric_words(cfg, rule.denominator) if rule.denominator else ""
    v = _value(rule.humanize)
    unit = "" if rule.humanize == "humanizePercentage" else rule.unit
    cmp = f"{_OP_WORDS[rule.op]} {shown(rule.threshold, rule)}"
    if rule.relative is not None:
        cmp = (
            f"{_OP_WORDS[rule.op]} {relative_words(rule)} (or {shown(rule.threshold, rule)} "
            "where the GPU does not report that limit)"
        )
    held = _held(rule.for_text, rule.for_seconds)
    if rule.kind == "level":
        text = f"{metric} is {v}{unit}, {cmp}{held}."
    elif rule.kind == "ratio":
        text = f"{metric} / {denominator} is {v}, {cmp}{held}."
    elif rule.kind == "growth":
        text = (
            f"{metric} grew by {v}{unit} within {rule.window_text}, {cmp}"
            " (counted from the window's lowest value, so a counter reset never adds)."
        )
    else:
        text = f"{metric} is {v} for one of {rule.label} {', '.join(rule.values)}, {cmp}{held}."
    judged = f" Thresholds of profile {profile or rule.profile}." if rule.profile else ""
    return f"{_GPU}: {text}{judged} Action: {rule.action}."


def forecast_description(fc: Forecast, cfg: RulesConfig | None = None) -> str:
    if fc.description:
        return fc.description
    t = fc.target
    guard_words = "at or above" if t.op in (">", ">=") else "at or below"
    unit = "" if t.humanize == "humanizePercentage" else t.unit
    metric = metric_words(cfg, t.metric)
    what = metric if t.kind == "level" else f"{metric} / {metric_words(cfg, str(t.denominator))}"
    return (
        f"{_GPU}: {what} is forecast at {_value(t.humanize)}{unit} in {fc.horizon_text} "
        f"(linear trend over {fc.lookback_text}), {_OP_WORDS[t.op]} its {t.rule} threshold "
        f"({shown(t.threshold, t)} unless its model's profile sets another); it is already "
        f"{guard_words} {shown(fc.guard, t)}. Action: {fc.action}."
    )


def monitoring_description(cfg: RulesConfig, m: MonitoringAlert) -> str:
    if m.description:
        return m.description
    v, held = _value(), _held(m.for_text, m.for_seconds)
    job = f"job {cfg.exporter_job}" if cfg.job_selector == f'job="{cfg.exporter_job}"' else cfg.job_selector
    seen = promql.presence(cfg)
    xid = (
        f"{_GPU}: XID {{{{ $labels.xid }}}} reported ({v} within {m.window_text}); "
        f"fatal XIDs: {', '.join(str(x) for x in m.xids)}."
    )
    if cfg.source != "gpuwarden":
        xid = (
            f"{_GPU}: its last XID (DCGM_FI_DEV_XID_ERRORS) is {{{{ $labels.xid }}}}, reported within "
            f"{m.window_text}; fatal XIDs: {', '.join(str(x) for x in m.xids)}."
        )
    text = {
        "target_down": (
            f"Prometheus cannot scrape {job} at {{{{ $labels.instance }}}} "
            f"(up = {v}){held}: its GPUs are unmonitored and get no remediation."
        ),
        "series_absent": (
            f"No {seen} series from {job} on this Prometheus{held} (absent = {v}): no exporter it scrapes "
            "is up, or they report no GPU (on a sharded setup: this shard's exporters; a shard holding "
            "no node fires this too)."
        ),
        "series_vanished": (
            f"{_GPU} reported {seen} within the last {m.lookback_text} "
            f"(present = {v}) but no longer does, while its exporter is up."
        ),
        "nvml_down": (
            f"gpuwarden_exporter_nvml_up is {v} on {{{{ $labels.instance }}}}{held}: the exporter reads no GPU."
        ),
        "gpu_down": f"{_GPU}: gpu_up is {v}{held}: the GPU errors or fell off the bus.",
        "fatal_xid": xid,
    }[m.kind]
    return f"{text} Action: {m.action}."


def summary(title: str, scope: str) -> str:
    if scope == "gpu":
        return f"{title} on GPU {{{{ $labels.gpu }}}} of {{{{ $labels.instance }}}}"
    if scope == "instance":
        return f"{title} on {{{{ $labels.instance }}}}"
    return title


def monitoring_scope(m: MonitoringAlert) -> str:
    return {"target_down": "instance", "nvml_down": "instance", "series_absent": "global"}.get(m.kind, "gpu")


def _alert(
    cfg: RulesConfig, a: AlertRule | Forecast | MonitoringAlert, expr: str, description: str, scope: str
) -> dict[str, Any]:
    return {
        "alert": a.alert,
        "expr": expr,
        "for": promql.duration(a.for_seconds),
        "labels": {
            "rule": a.rule,
            "severity": a.severity,
            "action": a.action,
            "family": a.family,
            **({"profile": a.profile} if isinstance(a, AlertRule) and a.profile else {}),
        },
        "annotations": {
            "summary": summary(a.title, scope),
            "description": description,
            "runbook_url": cfg.runbook_url(a.alert),
            **({JOB_ANNOTATION: JOB_TEMPLATE} if scope == "gpu" else {}),
        },
    }


def alert_rule(cfg: RulesConfig, a: AlertRule | Forecast | MonitoringAlert) -> dict[str, Any]:
    """The Prometheus alerting rule of any kind of configured alert; for one version of a
    ``joined`` rule: the labels and annotations its alerts carry, and the expression of the rule
    that judges that version's GPUs (``threshold_alert_rules``)."""
    if isinstance(a, AlertRule):
        if promql.joined(cfg, cfg.alerts[a.rule]):
            [expr] = [r["expr"] for r, versions in _joined_rules(cfg, cfg.alerts[a.rule]) if a in versions]
        else:
            expr = promql.alert_expr(cfg, a)
        return _alert(cfg, a, expr, threshold_description(a, cfg), "gpu")
    if isinstance(a, Forecast):
        return _alert(cfg, a, promql.forecast_alert_expr(cfg, a), forecast_description(a, cfg), "gpu")
    return _alert(cfg, a, promql.monitoring_expr(cfg, a), monitoring_description(cfg, a), monitoring_scope(a))


def recording_groups(cfg: RulesConfig) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for a in cfg.alerts.values():
        if a.kind == "ratio":
            rules.append({"record": promql.ratio_record(a), "expr": promql.value_expr(cfg, a)})
    for fc in cfg.forecasts.values():
        rules.append({"record": promql.forecast_record(fc), "expr": promql.forecast_record_expr(cfg, fc)})
    return [_group(cfg, "gpuwarden.recording", rules)] if rules else []


def threshold_records(cfg: RulesConfig) -> list[dict[str, Any]]:
    """The recording rules the threshold alerts read, in the order they need them: each GPU's
    profile, the profiles' numbers, each numeric rule's effective threshold per GPU."""
    joined = [a for a in cfg.alerts.values() if promql.joined(cfg, a)]
    rules: list[dict[str, Any]] = []
    if joined:
        rules += [
            {"record": promql.PROFILE_RECORD, "expr": promql.profile_record_expr(cfg, p), "labels": {"profile": p.name}}
            for p in cfg.profiles.values()
        ]
        rules += [
            {
                "record": promql.CONFIGURED_RECORD,
                "expr": promql.configured_expr(cfg, a.rule),
                "labels": {"rule": a.rule},
            }
            for a in joined
        ]
    rules += [
        {"record": promql.THRESHOLD_RECORD, "expr": promql.threshold_expr(cfg, a), "labels": {"rule": a.rule}}
        for a in cfg.alerts.values()
        if a.kind in promql.THRESHOLD_KINDS
    ]
    return rules


def _joined_rules(cfg: RulesConfig, rule: AlertRule) -> list[tuple[dict[str, Any], list[AlertRule]]]:
    """The alert rules of a ``joined`` rule, each with the versions it judges: one for the
    default and every profile with the default's ``for`` (the GPU's ``profile`` label from its
    recorded threshold; its description each version's own, chosen by that label), and one per
    profile that changes ``for`` (labelled with the profile, as promtool's duplicate lint needs)."""
    versions = cfg.versions(rule)
    main = [v for v in versions if v.for_seconds == rule.for_seconds]
    own = [v for v in versions if v.for_seconds != rule.for_seconds]
    names = None if not own else [str(v.profile) for v in main if v.profile]
    rendered = _alert(
        cfg, rule, promql.joined_alert_expr(cfg, rule, names, True), _merged_description(cfg, main), "gpu"
    )
    out = [(rendered, main)]
    for v in own:
        expr = promql.joined_alert_expr(cfg, rule, [str(v.profile)], False)
        out.append((_alert(cfg, v, expr, threshold_description(v, cfg), "gpu"), [v]))
    return out


def _merged_description(cfg: RulesConfig, versions: list[AlertRule]) -> str:
    """The versions' descriptions as one Go template: ``{{ if eq $labels.profile "A" "B" }}``
    per distinct text (the profile's name read from the label), the default's last."""
    texts: dict[str, list[str]] = {}
    for v in sorted(versions, key=lambda v: v.profile is None):
        text = threshold_description(v, cfg, "{{ $labels.profile }}" if v.profile else None)
        texts.setdefault(text, []).append(v.profile or "")
    if len(texts) == 1:
        return next(iter(texts))
    out = ""
    for i, (text, names) in enumerate(texts.items()):
        if i == len(texts) - 1:
            out += "{{ else }}" + text + "{{ end }}"
        else:
            test = "eq $labels.profile " + " ".join(f'"{n}"' for n in names)
            out += ("{{ if " if i == 0 else "{{ else if ") + test + " }}" + text
    return out


def threshold_alert_rules(cfg: RulesConfig) -> list[dict[str, Any]]:
    """Each rule's alert rules in file order: a ``joined`` rule's (``_joined_rules``), else one
    per version (the default's, then its profiles')."""
    out: list[dict[str, Any]] = []
    for rule in cfg.alerts.values():
        if promql.joined(cfg, rule):
            out += [r for r, _ in _joined_rules(cfg, rule)]
        else:
            versions = cfg.versions(rule)
            out += [alert_rule(cfg, v) for v in versions]
    return out


def threshold_rules(cfg: RulesConfig) -> list[AlertRule]:
    """Each rule's default version followed by its profiles' versions, in file order."""
    return [version for rule in cfg.alerts.values() for version in cfg.versions(rule)]


def alert_groups(cfg: RulesConfig) -> list[dict[str, Any]]:
    """The groups of alerting rules (thresholds, forecasts, monitoring), alerts only: the file
    holds them with the threshold records first (``alert_file_groups``)."""
    sections: tuple[tuple[str, list[dict[str, Any]]], ...] = (
        ("gpuwarden.thresholds", threshold_alert_rules(cfg)),
        ("gpuwarden.forecasts", [alert_rule(cfg, a) for a in cfg.forecasts.values()]),
        (
            "gpuwarden.monitoring",
            [alert_rule(cfg, m) for m in cfg.monitoring.values() if promql.supported(cfg, m)],
        ),
    )
    return [_group(cfg, name, rules) for name, rules in sections if rules]


def alert_file_groups(cfg: RulesConfig) -> list[dict[str, Any]]:
    """``alert_groups`` as ALERTS_FILE holds them: the threshold group starts with the records
    its alerts read, so that they are evaluated first, at the same timestamp (rules/promql.py)."""
    groups = alert_groups(cfg)
    records = threshold_records(cfg)
    for group in groups:
        if group["name"] == "gpuwarden.thresholds":
            group["rules"] = records + group["rules"]
            return groups
    return [_group(cfg, "gpuwarden.thresholds", records), *groups] if records else groups


def _group(cfg: RulesConfig, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    group: dict[str, Any] = {"name": name}
    if cfg.evaluation_interval:
        group["interval"] = cfg.evaluation_interval
    group["rules"] = rules
    return group


def manifest(cfg: RulesConfig) -> dict[str, Any]:
    """A PrometheusRule (Prometheus Operator) holding every group."""
    meta: dict[str, Any] = {"name": cfg.prometheus_rule["name"]}
    if cfg.prometheus_rule.get("namespace"):
        meta["namespace"] = cfg.prometheus_rule["namespace"]
    if cfg.prometheus_rule.get("labels"):
        meta["labels"] = dict(cfg.prometheus_rule["labels"])
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": meta,
        "spec": {"groups": recording_groups(cfg) + alert_file_groups(cfg)},
    }


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors: output that diffs well and reads like hand-written rules."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(header: str, doc: Any) -> str:
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000, default_flow_style=False)
    return header + body
