"""PromQL for every alert kind, built from the config's values (never repeated as literals).

Threshold alerts compare the raw exporter series, so they keep the GPU's instance, gpu and uuid
labels. A rule no profile overrides compares them with its number and nothing else. A rule that
profiles override is judged against ``THRESHOLD_RECORD``, each GPU's effective threshold, built
once per rule and evaluation (costs grow with rules x GPUs, not rules x profiles x GPUs):

- ``PROFILE_RECORD``: one series per GPU naming its profile (its identity series, selected by
  the model regex: each profile's term reads only its own GPUs, first match wins);
- ``CONFIGURED_RECORD``: each overriding profile's number for the rule, as constants;
- the effective threshold: a relative profile's ``factor x limit + offset`` where the GPU reports
  that limit, else its profile's number, else (no profile, no identity series, or a profile that
  does not override the rule) the default's, on the rule's metric's own series (labels kept).

The alert is ``raw op on(instance, gpu) group_left(profile) effective``, ``or raw op default
unless`` the GPU has an effective threshold: it still fires from the raw series alone when the
records are missing. The records sit in the alerts' own group, before them: Prometheus evaluates
a group's rules in order at one timestamp, so an alert never reads a threshold one interval old.
Profiles that change a rule's ``for`` get one alert rule per distinct ``for``.
Recording rules follow Prometheus' ``level:metric:operations`` convention with the level
``instance_gpu`` (the output keeps one series per GPU of an instance). The agent's predictor and
the dashboard read ``THRESHOLD_RECORD`` too, so they judge a GPU by the numbers its alerts use.
"""

from __future__ import annotations

from gpuwarden import durations, sources

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
# Each GPU's profile (value 1, label ``profile``): the first profile whose ``match`` its model
# fits. Recorded once so that a rule's profiles cost one join, not one pass over the fleet each.
PROFILE_RECORD = f"{LEVEL}:gpu_profile:info"
# Each overriding profile's own threshold of a rule (a relative one's fallback): constants with
# the labels rule and profile, no per-GPU series (``vector``), so recording them costs nothing.
CONFIGURED_RECORD = "profile:gpu_alert_threshold:configured"


def number(value: float) -> str:
    """A threshold as PromQL prints it: 80 not 80.0, 0.9 stays 0.9."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def duration(seconds: float) -> str:
    """Seconds as the shortest exact Prometheus duration (600 -> 10m, 90 -> 90s)."""
    return durations.format_seconds(seconds)


class SourceError(ValueError):
    """A rule that the configured metrics source cannot express (says which and why)."""


def selector(cfg: RulesConfig, **matchers: str) -> str:
    """``{job="gpuwarden-exporter", ...}``; values starting with a regex marker use =~."""
    parts = [cfg.job_selector]
    for name, value in matchers.items():
        if value.startswith("~"):
            parts.append(f'{name}=~"{value[1:]}"')
        else:
            parts.append(f'{name}="{value}"')
    return "{" + ", ".join(parts) + "}"


def grouped(expr: str) -> str:
    """``expr`` in parentheses, unless it is one parenthesized group already."""
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0 and i < len(expr) - 1:
                break
        else:
            return expr
    return f"({expr})"


def promql_string(text: str) -> str:
    """``text`` as a double-quoted PromQL string (a regex's backslashes survive)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def gauge(cfg: RulesConfig, metric: str, matchers: tuple[tuple[str, str], ...] = ()) -> str:
    """gpuwarden-exporter's ``metric`` as the configured source has it, in gpuwarden's unit."""
    try:
        return sources.instant(cfg.source, metric, cfg.job_selector, matchers)
    except KeyError as exc:
        raise SourceError(f"{metric}: no {cfg.source} series for it ({exc})") from exc


def over_time(cfg: RulesConfig, function: str, metric: str, window: str, extra: str = "") -> str:
    """``function(<metric's raw series>[window]extra)`` in gpuwarden's unit (a range needs the raw
    series: the unit is converted after the function, which is linear in it)."""
    try:
        r = sources.raw(cfg.source, metric)
    except KeyError as exc:
        raise SourceError(f"{metric}: no {cfg.source} series for it ({exc})") from exc
    if r.sum_of or len(r.names) != 1:
        raise SourceError(f"{metric}: {cfg.source} has no single series for a range over it")
    expr = f"{function}({sources.selector(r.names, cfg.job_selector, r.matchers)}[{window}]{extra})"
    return f"{expr} * {number(r.scale)}" if r.scale != 1 else expr


def presence(cfg: RulesConfig) -> str:
    """The raw series name present once per reported GPU (gpu_up; dcgm: its temperature)."""
    return "gpu_up" if cfg.source == "gpuwarden" else sources.DCGM_PRESENCE[0]


def lowercase_uuid(cfg: RulesConfig, expr: str) -> str:
    """``expr`` with the GPU's uuid in lowercase ``uuid`` whatever the source calls it."""
    return sources.uuid_lowercase(cfg.source, expr)


def _model_matcher(cfg: RulesConfig, op: str, regex: str) -> str:
    return f"{sources.MODEL_LABEL[cfg.source]}{op}{promql_string(regex)}"


def _first_match(cfg: RulesConfig, profile: Profile) -> str:
    """The identity series (gpu_info) of the GPUs judged by ``profile``: its regex, minus earlier
    profiles' (first match wins; one selector can hold two matchers on the same label)."""
    matchers = [_model_matcher(cfg, "=~", profile.match)]
    earlier = [p.match for p in cfg.profiles.values() if p.index < profile.index]
    if earlier:
        matchers.append(_model_matcher(cfg, "!~", "|".join(earlier)))
    return sources.identity(cfg.source, cfg.job_selector, tuple(matchers))


def profile_exclusion(cfg: RulesConfig, rule_id: str) -> list[str]:
    """gpu_info selectors of the GPUs that a profile's version of ``rule_id`` judges, so that
    the default version leaves them out. One selector when the overriding profiles come first."""
    overriding = cfg.profiles_overriding(rule_id)
    if not overriding:
        return []
    last = max(p.index for p in overriding)
    if all(rule_id in p.alerts for p in cfg.profiles.values() if p.index <= last):
        regex = "|".join(p.match for p in overriding)
        return [sources.identity(cfg.source, cfg.job_selector, (_model_matcher(cfg, "=~", regex),))]
    return [_first_match(cfg, p) for p in overriding]


def limit_selector(cfg: RulesConfig, rule: AlertRule) -> str:
    """The GPU's own limit series; one per GPU also where dcgm-exporter repeats a GPU's series
    (per MIG instance, per pod), so that it can stand on the one side of group_left."""
    rel = rule.relative
    assert rel is not None
    expr = gauge(cfg, rel.metric, rel.matchers)
    return expr if cfg.source == "gpuwarden" else f"max by (instance, gpu) {grouped(expr)}"


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
    if rule.kind == "level":
        return gauge(cfg, rule.metric)
    if rule.kind == "ratio":
        return f"{gauge(cfg, rule.metric)} / ({gauge(cfg, str(rule.denominator))} > 0)"
    if rule.kind == "growth":
        # A lower bound of the counter's growth within the window: exact (no extrapolation,
        # unlike increase(), which can read 9 real errors as 10+) and never inflated by a counter
        # reset: after a driver reload the counter drops, min_over_time follows it down, and
        # only errors counted after the reset can reach the threshold.
        window = duration(rule.window_seconds or 0)
        return f"{gauge(cfg, rule.metric)} - {over_time(cfg, 'min_over_time', rule.metric, window)}"
    if rule.kind == "any":
        if cfg.source != "gpuwarden":
            if (rule.metric, rule.label) != ("gpu_throttle_active", "reason"):
                raise SourceError(f"{rule.rule}: {cfg.source} has no {rule.metric}{{{rule.label}}}")
            return sources.throttle_expr(cfg.source, rule.values, cfg.job_selector)
        values = "|".join(rule.values)
        inner = f"{rule.metric}{selector(cfg, **{str(rule.label): '~' + values})}"
        return f"max without ({rule.label}) ({inner})"
    raise ValueError(f"unknown alert kind {rule.kind!r}")


def alert_expr(cfg: RulesConfig, rule: AlertRule) -> str:
    return lowercase_uuid(cfg, _alert_expr(cfg, rule))


def _alert_expr(cfg: RulesConfig, rule: AlertRule) -> str:
    value = value_expr(cfg, rule)
    if rule.kind == "ratio":
        value = f"({value})"
    cmp = f"{value} {rule.op} {number(rule.threshold)}"
    if rule.profile is None:
        for excluded in profile_exclusion(cfg, rule.rule):
            cmp += f" unless {JOIN} {excluded}"
        return cmp
    # A profile's own version: only kind `any` reaches here (the others are `joined`, and only a
    # level may be relative).
    return f"({cmp}) and {JOIN} {_first_match(cfg, cfg.profiles[rule.profile])}"


def joined(cfg: RulesConfig, rule: AlertRule) -> bool:
    """Whether ``rule`` (the default version) is judged through ``THRESHOLD_RECORD``: profiles
    override it and it compares one number per GPU (``any`` keeps one alert per version)."""
    return rule.kind in THRESHOLD_KINDS and bool(cfg.profiles_overriding(rule.rule))


def profile_record_expr(cfg: RulesConfig, profile: Profile) -> str:
    """The identity series of the GPUs ``profile`` judges (recorded as ``PROFILE_RECORD``)."""
    return _first_match(cfg, profile)


def configured_expr(cfg: RulesConfig, rule_id: str) -> str:
    """Each overriding profile's number for ``rule_id`` as a constant labelled with its name."""
    return " or ".join(
        f'label_replace(vector({number(p.alerts[rule_id].threshold)}), "profile", {promql_string(p.name)}, "", "")'
        for p in cfg.profiles_overriding(rule_id)
    )


def threshold_expr(cfg: RulesConfig, rule: AlertRule) -> str:
    """Each GPU's threshold of ``rule`` (the default version), one series per GPU that has the
    rule's metric, with its labels (and ``profile`` where a profile judges it)."""
    return lowercase_uuid(cfg, _threshold_expr(cfg, rule))


def _threshold_expr(cfg: RulesConfig, rule: AlertRule) -> str:
    metric = gauge(cfg, rule.metric)
    if " " in metric:
        metric = grouped(metric)
    default = f"0 * {metric} + {number(rule.threshold)}"
    if not joined(cfg, rule):
        return default
    # Relative profiles sharing one formula share one term: the limit series of their GPUs.
    shapes: dict[str, list[str]] = {}
    for p in cfg.profiles_overriding(rule.rule):
        version = p.alerts[rule.rule]
        if version.relative is not None:
            shapes.setdefault(relative_threshold(cfg, version), []).append(p.name)
    terms = [
        f"({formula}) * {JOIN} group_left (profile) {PROFILE_RECORD}{selector(cfg, profile='~' + '|'.join(names))}"
        for formula, names in shapes.items()
    ]
    # The profile's own number (a relative one's fallback): a GPU whose profile does not
    # override the rule has no constant to match and is left to the default.
    configured = f"{CONFIGURED_RECORD}{{rule={promql_string(rule.rule)}}}"
    terms.append(f"{PROFILE_RECORD}{selector(cfg)} * on (profile) group_left () {configured}")
    profiled = f" or {JOIN} ".join(terms)
    return f"0 * {metric} + {JOIN} group_left (profile) ({profiled}) or {JOIN} {default}"


def joined_alert_expr(cfg: RulesConfig, rule: AlertRule, profiles: list[str] | None, default: bool) -> str:
    """``rule`` (a ``joined`` one) against each GPU's recorded threshold, for the GPUs of
    ``profiles`` (None: every profile) and, with ``default``, those the default judges, which
    include every GPU without a recorded threshold (the raw series alone fires it)."""
    value = value_expr(cfg, rule)
    if rule.kind == "ratio":
        value = f"({value})"
    matchers = {"rule": rule.rule}
    if profiles is not None:
        matchers["profile"] = "~" + "|".join([*profiles, *([""] if default else [])])
    own = f"{THRESHOLD_RECORD}{selector(cfg, **matchers)}"
    if cfg.source != "gpuwarden":
        own = f"max by (instance, gpu, profile) ({own})"  # one per GPU (dcgm repeats per pod/MIG)
    expr = f"{value} {rule.op} {JOIN} group_left (profile) {own}"
    if default:
        recorded = f"{THRESHOLD_RECORD}{selector(cfg, rule=rule.rule)}"
        expr += f" or {value} {rule.op} {number(rule.threshold)} unless {JOIN} {recorded}"
    return lowercase_uuid(cfg, expr)


def forecast_record(fc: Forecast) -> str:
    """e.g. ``instance_gpu:gpu_temperature_celsius:predict_linear10m_20m`` (fit over 10m, 20m
    ahead); a forecast of a ratio keeps the ratio's name: ``..:predict_linear10m_15m_ratio``."""
    t = fc.target
    op = f"predict_linear{duration(fc.lookback_seconds)}_{duration(fc.horizon_seconds)}"
    if t.kind == "level":
        return f"{LEVEL}:{t.metric}:{op}"
    return f"{LEVEL}:{t.metric}_per_{t.denominator}:{op}_ratio"


def forecast_record_expr(cfg: RulesConfig, fc: Forecast) -> str:
    lookback, horizon = duration(fc.lookback_seconds), number(fc.horizon_seconds)
    if fc.target.kind == "level":
        return over_time(cfg, "predict_linear", fc.target.metric, lookback, f", {horizon}")
    return f"predict_linear({ratio_record(fc.target)}[{lookback}], {horizon})"


def own_threshold(cfg: RulesConfig, rule_id: str) -> str:
    """Each GPU's recorded threshold of ``rule_id``, joined onto a per-GPU left-hand side."""
    return f"{JOIN} group_left () {THRESHOLD_RECORD}{selector(cfg, rule=rule_id)}"


# The comparison that is true exactly where ``op`` is false (for numbers).
NEGATED = {">": "<=", ">=": "<", "<": ">=", "<=": ">", "==": "!=", "!=": "=="}


def forecast_alert_expr(cfg: RulesConfig, fc: Forecast) -> str:
    """Forecast past the GPU's own threshold (its profile's, as recorded), while the current
    value is past the guard and that threshold is not crossed yet (then the threshold alert
    speaks). The current value is computed once: past the guard, and on the near side of the
    threshold (the negated comparison) in one join."""
    t = fc.target
    current = value_expr(cfg, t)
    if t.kind == "ratio":
        current = f"({current})"
    guard_op = ">=" if t.op in (">", ">=") else "<="
    return lowercase_uuid(
        cfg,
        f"{forecast_record(fc)} {t.op} {own_threshold(cfg, t.rule)}"
        f" and ({current} {guard_op} {number(fc.guard)}) {NEGATED[t.op]} {own_threshold(cfg, t.rule)}",
    )


# Monitoring kinds a source has no series for: dcgm-exporter reports neither its own NVML health
# nor a per-GPU up (a GPU it cannot read drops out of /metrics: GPU_METRICS_VANISHED sees it).
UNSUPPORTED = {"dcgm-exporter": ("nvml_down", "gpu_down")}


def supported(cfg: RulesConfig, m: MonitoringAlert) -> bool:
    return m.kind not in UNSUPPORTED.get(cfg.source, ())


def monitoring_expr(cfg: RulesConfig, m: MonitoringAlert) -> str:
    sel, seen = selector(cfg), presence(cfg)
    if not supported(cfg, m):
        raise SourceError(f"{m.rule}: {cfg.source} has no series for kind {m.kind}")
    if m.kind == "target_down":
        return f"up{sel} == 0"
    if m.kind == "series_absent":
        return f"absent({seen}{sel})"
    if m.kind == "series_vanished":
        # Seen within the lookback, gone now, while its exporter is scraped fine (a down exporter
        # has its own alert; without this every GPU of it would "vanish" too).
        gpu = ", ".join(GPU_LABELS) if cfg.source == "gpuwarden" else "instance, gpu, UUID"
        return lowercase_uuid(
            cfg,
            f"(present_over_time({seen}{sel}[{m.lookback_text}])"
            f" unless on ({gpu}) {seen}{sel})"
            f" and on (instance) (up{sel} == 1)",
        )
    if m.kind == "nvml_down":
        return f"gpuwarden_exporter_nvml_up{sel} == 0"
    if m.kind == "gpu_down":
        return f"gpu_up{sel} == 0"
    if m.kind == "fatal_xid" and cfg.source != "gpuwarden":
        return lowercase_uuid(cfg, _last_xid_expr(cfg, m))
    if m.kind == "fatal_xid":
        xsel = selector(cfg, xid="~" + "|".join(str(x) for x in m.xids))
        series = f"gpu_xid_errors_total{xsel}"
        # increase() > 0 is true only when the counter really grew (a reset back to 0 adds
        # nothing; an exporter restart that counts a new XID adds it). A series that first
        # appears at 1 has no earlier sample for increase(): see appeared().
        return f"increase({series}[{m.window_text}]) > 0 or {appeared(cfg, series, str(m.window_text))}"
    raise ValueError(f"unknown monitoring kind {m.kind!r}")


def appeared(cfg: RulesConfig, series: str, window: str) -> str:
    """``series`` (a selector) that appeared within ``window`` *after* this Prometheus had
    scraped its target without it: a new series on a target scraped fine before it (its first
    XID), not one that arrived with its target (a reshard moving a node that logged an XID long
    ago, a Prometheus that lost its data). The target's successful scrapes within the window
    (``sum_over_time(up)``) outnumber the series' samples exactly when some scrape succeeded
    without it; both are taken at the same scrapes, and a failed scrape adds to neither. An XID
    counted before the target's first scrape here cannot be told from an old one: no alert."""
    up = f"up{selector(cfg)}"
    return (
        f"(({series} > 0 unless {series} offset {window})"
        f" and (count_over_time({series}[{window}]) < on (job, instance) group_left ()"
        f" sum_over_time({up}[{window}])))"
    )


def _last_xid_expr(cfg: RulesConfig, m: MonitoringAlert) -> str:
    """dcgm-exporter's DCGM_FI_DEV_XID_ERRORS holds the value of the GPU's last XID (a gauge):
    fires while that value is a fatal XID (copied into an ``xid`` label, as gpuwarden's
    series have it) that changed, or appeared (``appeared``), within the window. The raw
    selector: ``offset`` and ranges need one, and a DCGM blank never equals a fatal XID."""
    r = sources.raw(cfg.source, "gpu_xid_errors_total")
    series = sources.selector(r.names, cfg.job_selector)
    fatal = " or ".join(f'label_replace({series} == {x}, "xid", "{x}", "", "")' for x in m.xids)
    window = str(m.window_text)
    recent = f"changes({series}[{window}]) > 0 or {appeared(cfg, series, window)}"
    return f"({fatal}) and on (instance, gpu) ({recent})"
