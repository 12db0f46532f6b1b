"""PromQL for every alert kind, built from the config's values (never repeated as literals).

Threshold alerts read the raw exporter series (no recording rule in between), so they fire from
the GPU's own series and keep its instance, gpu and uuid labels. Profiles only narrow: the
default version of a rule fires from the raw series alone, ``unless`` the GPU's gpu_info names a
model whose profile overrides the rule; a profile's version fires only ``and on(instance, gpu)``
gpu_info names one of its models. A GPU without gpu_info is therefore judged by the default,
and every GPU by exactly one version. A relative threshold joins the GPU's own limit series
(``group_left``, so the left side's labels stay) and falls back to an absolute threshold when
the GPU does not report that limit.
Recording rules follow Prometheus' ``level:metric:operations`` convention with the level
``instance_gpu`` (the output keeps one series per GPU of an instance). ``THRESHOLD_RECORD`` holds
each GPU's effective threshold of each rule, chosen by the same profile logic as the alerts, so
the agent's predictor and the dashboard judge a GPU by the numbers its alerts use.
"""

from __future__ import annotations

from gpuwarden import durations

from .config import AlertRule, Forecast, MonitoringAlert, Profile, RulesConfig

LEVEL = "instance_gpu"
# Labels that identify one GPU; alerts keep them and Alertmanager groups/inhibits on them.
GPU_LABELS = ("instance", "gpu", "uuid")
# Labels a profile join matches on: one GPU of one exporter (uuid is on both sides anyway).
JOIN = "on (instance, gpu)"
# Each GPU's threshold of each numeric rule (labels: rule, and profile for a profile's version).
THRESHOLD_RECORD = f"{LEVEL}:gpu_alert_threshold:effective"
# Rule kinds with one number per GPU to record (``any`` compares a set of reasons with 0).
THRESHOLD_KINDS = ("level", "ratio", "growth")


def number(value: float) -> str:
    """A threshold as PromQL prints it: 80 not 80.0, 0.9 stays 0.9."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def duration(seconds: float) -> str:
    """Seconds as the shortest exact Prometheus duration (600 -> 10m, 90 -> 90s)."""
    return durations.format_seconds(seconds)


def selector(cfg: RulesConfig, **matchers: str) -> str:
    """``{job="gpuwarden-exporter", ...}``; values ending in a regex marker use =~."""
    parts = [f'job="{cfg.exporter_job}"']
    for name, value in matchers.items():
        if value.startswith("~"):
            parts.append(f'{name}=~"{value[1:]}"')
        else:
            parts.append(f'{name}="{value}"')
    return "{" + ", ".join(parts) + "}"


def promql_string(text: str) -> str:
    """``text`` as a double-quoted PromQL string (a regex's backslashes survive)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _first_match(cfg: RulesConfig, profile: Profile) -> str:
    """gpu_info of the GPUs judged by ``profile``: its regex, minus earlier profiles' (first match
    wins; one selector can hold two matchers on the same label)."""
    matchers = [f'job="{cfg.exporter_job}"', f"name=~{promql_string(profile.match)}"]
    earlier = [p.match for p in cfg.profiles.values() if p.index < profile.index]
    if earlier:
        matchers.append(f"name!~{promql_string('|'.join(earlier))}")
    return "gpu_info{" + ", ".join(matchers) + "}"


def profile_exclusion(cfg: RulesConfig, rule_id: str) -> list[str]:
    """gpu_info selectors of the GPUs that a profile's version of ``rule_id`` judges, so that
    the default version leaves them out. One selector when the overriding profiles come first."""
    overriding = cfg.profiles_overriding(rule_id)
    if not overriding:
        return []
    last = max(p.index for p in overriding)
    if all(rule_id in p.alerts for p in cfg.profiles.values() if p.index <= last):
        regex = "|".join(p.match for p in overriding)
        return [f'gpu_info{{job="{cfg.exporter_job}", name=~{promql_string(regex)}}}']
    return [_first_match(cfg, p) for p in overriding]


def limit_selector(cfg: RulesConfig, rule: AlertRule) -> str:
    rel = rule.relative
    assert rel is not None
    return f"{rel.metric}{selector(cfg, **dict(rel.matchers))}"


def relative_threshold(cfg: RulesConfig, rule: AlertRule) -> str:
    """``0.95 * gpu_power_limit_watts{...}`` / ``gpu_temperature_threshold_celsius{...} - 3``."""
    rel = rule.relative
    assert rel is not None
    expr = limit_selector(cfg, rule)
    if rel.factor != 1:
        expr = f"{number(rel.factor)} * {expr}"
    if rel.offset > 0:
        expr = f"{expr} + {number(rel.offset)}"
    elif rel.offset < 0:
        expr = f"{expr} - {number(-rel.offset)}"
    return expr


def ratio_record(rule: AlertRule) -> str:
    """Recording rule name of a ratio alert's value, e.g.
    ``instance_gpu:gpu_memory_used_bytes_per_gpu_memory_total_bytes:ratio``."""
    return f"{LEVEL}:{rule.metric}_per_{rule.denominator}:ratio"


def value_expr(cfg: RulesConfig, rule: AlertRule) -> str:
    """The expression whose value is compared with ``rule.threshold`` (raw series only)."""
    sel = selector(cfg)
    if rule.kind == "level":
        return f"{rule.metric}{sel}"
    if rule.kind == "ratio":
        return f"{rule.metric}{sel} / ({rule.denominator}{sel} > 0)"
    if rule.kind == "growth":
        # A lower bound of the counter's growth within the window: exact (no extrapolation,
        # unlike increase(), which can read 9 real errors as 10+) and never inflated by a counter
        # reset: after a driver reload the counter drops, min_over_time follows it down, and
        # only errors counted after the reset can reach the threshold.
        window = duration(rule.window_seconds or 0)
        return f"{rule.metric}{sel} - min_over_time({rule.metric}{sel}[{window}])"
    if rule.kind == "any":
        values = "|".join(rule.values)
        inner = f"{rule.metric}{selector(cfg, **{str(rule.label): '~' + values})}"
        return f"max without ({rule.label}) ({inner})"
    raise ValueError(f"unknown alert kind {rule.kind!r}")


def alert_expr(cfg: RulesConfig, rule: AlertRule) -> str:
    value = value_expr(cfg, rule)
    if rule.kind == "ratio":
        value = f"({value})"
    cmp = f"{value} {rule.op} {number(rule.threshold)}"
    if rule.profile is None:
        for excluded in profile_exclusion(cfg, rule.rule):
            cmp += f" unless {JOIN} {excluded}"
        return cmp
    if rule.relative is not None:
        # Against the GPU's own limit; where the GPU does not report it, against `threshold`.
        cmp = (
            f"({value} {rule.op} {JOIN} group_left () ({relative_threshold(cfg, rule)})"
            f" or {cmp} unless {JOIN} {limit_selector(cfg, rule)})"
        )
    elif rule.kind in ("ratio", "growth", "any"):
        cmp = f"({cmp})"
    return f"{cmp} and {JOIN} {_first_match(cfg, cfg.profiles[rule.profile])}"


def threshold_expr(cfg: RulesConfig, rule: AlertRule) -> str:
    """The threshold ``rule`` compares each GPU with, as one series per GPU that has the rule's
    metric: the same profile narrowing and limit fallback as ``alert_expr``."""
    sel = selector(cfg)
    constant = f"0 * {rule.metric}{sel} + {number(rule.threshold)}"
    if rule.profile is None:
        for excluded in profile_exclusion(cfg, rule.rule):
            constant += f" unless {JOIN} {excluded}"
        return constant
    expr = constant
    if rule.relative is not None:
        # Joined onto the metric's own series so that both branches carry its labels (the
        # limit's series has its own, e.g. threshold="slowdown").
        relative = f"0 * {rule.metric}{sel} + {JOIN} group_left () ({relative_threshold(cfg, rule)})"
        expr = f"{relative} or {constant} unless {JOIN} {limit_selector(cfg, rule)}"
    return f"({expr}) and {JOIN} {_first_match(cfg, cfg.profiles[rule.profile])}"


def forecast_source(cfg: RulesConfig, fc: Forecast) -> str:
    """The gauge series predict_linear reads: the raw metric, or the recorded ratio."""
    t = fc.target
    return f"{t.metric}{selector(cfg)}" if t.kind == "level" else ratio_record(t)


def forecast_record(fc: Forecast) -> str:
    """e.g. ``instance_gpu:gpu_temperature_celsius:predict_linear10m_20m`` (fit over 10m, 20m
    ahead); a forecast of a ratio keeps the ratio's name: ``..:predict_linear10m_15m_ratio``."""
    t = fc.target
    op = f"predict_linear{duration(fc.lookback_seconds)}_{duration(fc.horizon_seconds)}"
    if t.kind == "level":
        return f"{LEVEL}:{t.metric}:{op}"
    return f"{LEVEL}:{t.metric}_per_{t.denominator}:{op}_ratio"


def forecast_record_expr(cfg: RulesConfig, fc: Forecast) -> str:
    return f"predict_linear({forecast_source(cfg, fc)}[{duration(fc.lookback_seconds)}], {number(fc.horizon_seconds)})"


def own_threshold(cfg: RulesConfig, rule_id: str) -> str:
    """Each GPU's recorded threshold of ``rule_id``, joined onto a per-GPU left-hand side."""
    return f"{JOIN} group_left () {THRESHOLD_RECORD}{selector(cfg, rule=rule_id)}"


def forecast_alert_expr(cfg: RulesConfig, fc: Forecast) -> str:
    """Forecast past the GPU's own threshold (its profile's, as recorded), while the current
    value is past the guard and that threshold is not crossed yet (then the threshold alert
    speaks)."""
    t = fc.target
    current = value_expr(cfg, t)
    if t.kind == "ratio":
        current = f"({current})"
    guard_op = ">=" if t.op in (">", ">=") else "<="
    return (
        f"{forecast_record(fc)} {t.op} {own_threshold(cfg, t.rule)}"
        f" and {current} {guard_op} {number(fc.guard)}"
        f" unless {current} {t.op} {own_threshold(cfg, t.rule)}"
    )


def monitoring_expr(cfg: RulesConfig, m: MonitoringAlert) -> str:
    sel = selector(cfg)
    if m.kind == "target_down":
        return f"up{sel} == 0"
    if m.kind == "series_absent":
        return f"absent(gpu_up{sel})"
    if m.kind == "series_vanished":
        # Seen within the lookback, gone now, while its exporter is scraped fine (a down exporter
        # has its own alert; without this every GPU of it would "vanish" too).
        return (
            f"(present_over_time(gpu_up{sel}[{m.lookback_text}])"
            f" unless on ({', '.join(GPU_LABELS)}) gpu_up{sel})"
            f" and on (instance) (up{sel} == 1)"
        )
    if m.kind == "nvml_down":
        return f"gpuwarden_exporter_nvml_up{sel} == 0"
    if m.kind == "gpu_down":
        return f"gpu_up{sel} == 0"
    if m.kind == "fatal_xid":
        xsel = selector(cfg, xid="~" + "|".join(str(x) for x in m.xids))
        series = f"gpu_xid_errors_total{xsel}"
        # increase() > 0 is true only when the counter really grew (a reset back to 0 adds
        # nothing); a series that first appears at 1 has no earlier sample for increase(),
        # so a series absent `window` ago counts as new errors too.
        return f"increase({series}[{m.window_text}]) > 0 or ({series} > 0 unless {series} offset {m.window_text})"
    raise ValueError(f"unknown monitoring kind {m.kind!r}")
