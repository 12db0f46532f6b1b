"""promtool unit tests generated from the config, so edited thresholds get tests that follow.

For every alert: the moment before its ``for`` (pending, not firing), the moment it fires, both
sides of its boundary (the exact threshold value included), a series going stale, and per kind:
counter resets and gradual growth (growth), unlisted reasons (any), a ramp that the forecast
flags before the threshold is crossed and one the guard holds back (forecasts), vanished and
absent series, new XID series (monitoring). Every profile's version of a rule gets the same
cases on GPUs whose gpu_info names the profile's first example (the default's cases run without
gpu_info, so they also show a GPU without gpu_info judged by the default); a relative threshold
is tested with a limit that moves it away from its fallback, and beside a GPU without the limit
series (judged by the fallback). Expected annotations are expanded here the way Prometheus'
templates do it (``humanize`` reproduced exactly for the values used).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from functools import reduce
from typing import Any

from gpuwarden import sources

from . import promql, render
from .config import AlertRule, Forecast, MonitoringAlert, RulesConfig

TEST_FILE = "gpuwarden-alerts.test.yml"
INSTANCE = "gpu-node-1:9786"
TOTAL_BYTES = 80 * 1024**3  # an 80 GiB GPU for ratio tests
# dcgm-exporter GPUs in tests: a model no shipped profile matches (judged by the default), and a
# node name as dcgm-exporter's Hostname label carries it.
DCGM_DEFAULT_MODEL = "Tesla V100-SXM2-32GB"
DCGM_HOSTNAME = "gpu-node-1"
# The allocation the job annotation test reads (the agent's gpu_allocation_info).
ALLOCATION = {"job_id": "4711", "job_name": "train-llm"}
KNOWN_REASONS = tuple(sources.THROTTLE_BITS)

Labels = dict[str, str]


class TestGenError(ValueError):
    """The config is valid but one of its alerts cannot be tested as generated (says why)."""


# --- Go template behaviour -----------------------------------------------------------------


def go_g4(v: float) -> str:
    """Go's fmt %.4g (same rules as C's, which Python follows)."""
    return f"{v:.4g}"


def humanize(v: float) -> str:
    """Prometheus' ``humanize`` template function."""
    if v == 0 or math.isnan(v) or math.isinf(v):
        return go_g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
        return go_g4(v) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return go_g4(v) + prefix


def humanize1024(v: float) -> str:
    if abs(v) <= 1:
        return go_g4(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix, v = p, v / 1024
    return go_g4(v) + prefix


FUNCS = {"humanize": humanize, "humanizePercentage": lambda v: go_g4(v * 100) + "%", "humanize1024": humanize1024}
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


_BRANCH = re.compile(r'\{\{ (?:if|else if) eq \$labels\.(\w+)((?: "[^"]*")+) \}\}|\{\{ else \}\}|\{\{ end \}\}')


def _branch(template: str, labels: Labels) -> str:
    """The text of the branch an ``{{ if eq $labels.x "a" "b" }}..{{ else if ..}}..{{ else }}..
    {{ end }}`` chain (render's merged descriptions) takes for ``labels``; other text as is."""
    marks = list(_BRANCH.finditer(template))
    if not marks:
        return template
    if marks[-1].group(0) != "{{ end }}" or marks[0].start() != 0 or marks[-1].end() != len(template):
        raise TestGenError(f"template {template!r}: only a whole if/else-if/else chain on one label expands")
    for mark, after in zip(marks, marks[1:], strict=False):
        if mark.group(0) == "{{ else }}" or labels.get(mark.group(1), "") in re.findall(r'"([^"]*)"', mark.group(2)):
            return template[mark.end() : after.start()]
    return ""


def expand(template: str, labels: Labels, value: float, allocated: Labels | None = None) -> str:
    """Expands the template forms the generator emits: $labels.x, $value, $value | f, a chain of
    ``if eq $labels.x ...`` branches, and the job annotation (from ``allocated``, the
    gpu_allocation_info labels of the test, if any)."""
    if template == render.JOB_TEMPLATE:
        return f"{allocated['job_name']} (job_id {allocated['job_id']})" if allocated else ""
    template = _branch(template, labels)

    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("$labels."):
            return labels.get(expr[len("$labels.") :], "")
        parts = [p.strip() for p in expr.split("|")]
        if parts[0] == "$value" and len(parts) == 1:
            return go_g4(value) if not float(value).is_integer() else str(int(value))
        if parts[0] == "$value" and len(parts) == 2 and parts[1] in FUNCS:
            return FUNCS[parts[1]](value)
        raise TestGenError(
            f"template {m.group(0)!r} is beyond what generated tests expand: "
            "use $labels.<name>, $value or $value | humanize* in descriptions"
        )

    return _TEMPLATE.sub(one, template)


# --- building blocks -----------------------------------------------------------------------


def test_job(cfg: RulesConfig) -> str:
    """A job name the config's job selector matches (the GPU Operator's for dcgm-exporter)."""
    m = re.fullmatch(r'job(=~|=)"(.*)"', cfg.job_selector)
    if m is None:
        raise TestGenError(f'job_selector {cfg.job_selector!r}: generated tests need job="..." or job=~"..."')
    if m.group(1) == "=":
        return m.group(2)
    for name in ("nvidia-dcgm-exporter", "dcgm-exporter", cfg.exporter_job):
        if re.fullmatch(m.group(2), name):
            return name
    raise TestGenError(f"job_selector {cfg.job_selector!r} matches none of the usual job names")


def gpu_labels(cfg: RulesConfig, i: int, model: str | None = None) -> Labels:
    """GPU ``i``'s labels as the source's exporter writes them (dcgm-exporter: UUID, device,
    modelName, Hostname; the model is ``model`` or one no profile matches)."""
    if cfg.source == "gpuwarden":
        return {"job": test_job(cfg), "instance": INSTANCE, "gpu": str(i), "uuid": f"GPU-{i:08d}"}
    return {
        "job": test_job(cfg),
        "instance": INSTANCE,
        "gpu": str(i),
        "UUID": f"GPU-{i:08d}",
        "device": f"nvidia{i}",
        "modelName": model or DCGM_DEFAULT_MODEL,
        "Hostname": DCGM_HOSTNAME,
    }


def alert_labels(cfg: RulesConfig, labels: Labels) -> Labels:
    """The GPU labels an alert carries: the source's, plus lowercase uuid."""
    if "UUID" in labels and "uuid" not in labels:
        return {**labels, "uuid": labels["UUID"]}
    return labels


def feed(
    cfg: RulesConfig,
    metric: str,
    labels: Labels,
    samples: Sequence[float | str | None],
    matchers: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """The input series giving gpuwarden-exporter's ``metric`` these samples, as the source
    exports it (its name, its unit)."""
    r = sources.raw(cfg.source, metric, matchers)
    if r.sum_of:
        raise TestGenError(f"{metric}: fed by two {cfg.source} series; see _gauge_inputs")
    scaled = [v / r.scale if isinstance(v, (int, float)) else v for v in samples]
    return {"series": series(r.names[0], {**labels, **dict(r.matchers)}), "values": values(scaled)}


def series(metric: str, labels: Labels) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{inner}}}"


def values(samples: Sequence[float | str | None]) -> str:
    """promtool's notation: numbers, ``_`` for no sample, ``stale`` for a staleness marker."""
    out: list[str] = []
    for s in samples:
        if s is None:
            out.append("_")
        elif isinstance(s, str):
            out.append(s)
        else:
            out.append(promql.number(s))
    return " ".join(out)


def expected(
    cfg: RulesConfig,
    a: AlertRule | Forecast | MonitoringAlert,
    labels: Labels,
    value: float,
    allocated: Labels | None = None,
) -> dict[str, Any]:
    rendered = render.alert_rule(cfg, a)
    full = {**alert_labels(cfg, labels), **rendered["labels"]}
    ann = {k: expand(v, full, value, allocated) for k, v in rendered["annotations"].items()}
    return {"exp_labels": full, "exp_annotations": ann}


def check(alertname: str, t: float, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": promql.duration(t) if t else "0s", "alertname": alertname, "exp_alerts": alerts}


def step_for(cfg: RulesConfig) -> int:
    """Evaluation step of the tests: divides every duration, at most 5s."""
    secs = [5]
    for a in cfg.all_alerts():
        secs.append(int(a.for_seconds))
    for r in cfg.alerts.values():
        if r.window_seconds:
            secs.append(int(r.window_seconds))
    for f in cfg.forecasts.values():
        secs += [int(f.lookback_seconds), int(f.horizon_seconds)]
    return max(1, reduce(math.gcd, secs))


# --- per-kind cases ------------------------------------------------------------------------


def _epsilon(rule: AlertRule) -> float:
    if rule.metric.endswith("_total"):
        return 1.0  # counters count whole events
    if rule.kind == "ratio":
        return 0.001
    magnitude = abs(rule.threshold) or 1.0
    return 10.0 ** (math.floor(math.log10(magnitude)) - 2) * 10


def boundary_values(rule: AlertRule) -> tuple[float, float]:
    """(fires, quiet): the two values either side of the boundary, one being the threshold."""
    eps, thr = _epsilon(rule), rule.threshold
    fires, quiet = {
        ">=": (thr, thr - eps),
        ">": (thr + eps, thr),
        "<=": (thr, thr + eps),
        "<": (thr - eps, thr),
        "==": (thr, thr + eps),
        "!=": (thr + eps, thr),
    }[rule.op]
    fires, quiet = round(fires, 9), round(quiet, 9)
    if not rule.breached(fires) or rule.breached(quiet):
        raise TestGenError(f"{rule.rule}: cannot find values either side of {rule.op} {thr:g}")
    return fires, quiet


def _gauge_inputs(
    cfg: RulesConfig, rule: AlertRule, i: int, samples: list[Any], model: str | None = None
) -> tuple[list[dict[str, Any]], Any]:
    """Input series making the rule's value follow ``samples``; returns (inputs, value at fire)."""
    labels = gpu_labels(cfg, i, model)
    if rule.kind == "level":
        return [feed(cfg, rule.metric, labels, samples)], None
    return _memory_inputs(cfg, rule.metric, str(rule.denominator), labels, [_units_for(cfg, rule, v) for v in samples])


def _memory_inputs(
    cfg: RulesConfig, metric: str, denominator: str, labels: Labels, used: Sequence[float | str | None]
) -> tuple[list[dict[str, Any]], Any]:
    """A ratio's inputs, ``used`` counted in whole units of the source (bytes; dcgm: MiB) of a
    GPU of TOTAL_BYTES: gpuwarden's used and total series, dcgm-exporter's FB_USED and FB_FREE."""
    total = TOTAL_BYTES / _unit(cfg, metric)
    if cfg.source == "gpuwarden":
        return [
            {"series": series(metric, labels), "values": values(used)},
            {
                "series": series(denominator, labels),
                "values": values([v if isinstance(v, str) else total for v in used]),
            },
        ], None
    free = [v if isinstance(v, str) or v is None else total - v for v in used]
    used_name, free_name = sources.raw(cfg.source, denominator).sum_of
    return [
        {"series": series(used_name, labels), "values": values(used)},
        {"series": series(free_name, labels), "values": values(free)},
    ], None


def _unit(cfg: RulesConfig, metric: str) -> float:
    """Bytes per unit of the source's memory series (1; dcgm-exporter: MiB)."""
    return sources.raw(cfg.source, metric).scale


def _units_for(cfg: RulesConfig, rule: AlertRule, ratio: Any) -> Any:
    """Whole units (bytes; MiB for dcgm) giving ``ratio`` of TOTAL_BYTES on the same side of the
    threshold; markers (stale) pass through."""
    if isinstance(ratio, str) or ratio is None:
        return ratio
    total = TOTAL_BYTES / _unit(cfg, rule.metric)
    side = rule.breached(ratio)
    for used in (math.ceil(total * ratio), math.floor(total * ratio)):
        if rule.breached(used / total) == side:
            return float(used)
    raise TestGenError(f"{rule.rule}: no byte count gives ratio {ratio}")


def _shown_value(cfg: RulesConfig, rule: AlertRule, v: float) -> float:
    if rule.kind != "ratio":
        return v
    return float(_units_for(cfg, rule, v)) / (TOTAL_BYTES / _unit(cfg, rule.metric))


def threshold_cases(cfg: RulesConfig, rule: AlertRule, s: int, model: str | None = None) -> list[dict[str, Any]]:
    if rule.kind in ("level", "ratio"):
        return [_level_case(cfg, rule, s, model)]
    if rule.kind == "growth":
        return [_growth_case(cfg, rule, s, model)]
    return [_any_case(cfg, rule, s, model)]


def _level_case(cfg: RulesConfig, rule: AlertRule, s: int, model: str | None = None) -> dict[str, Any]:
    """GPU 0 sits exactly on the firing side of the boundary, GPU 1 on the quiet side; GPU 0
    fires after `for`, not before, and resolves once its series goes stale."""
    fires, quiet = boundary_values(rule)
    F = int(rule.for_seconds)
    n = F // s + 2
    inputs, _ = _gauge_inputs(cfg, rule, 0, [fires] * (n + 1) + ["stale"], model)
    more, _ = _gauge_inputs(cfg, rule, 1, [quiet] * (n + 3), model)
    firing = [expected(cfg, rule, gpu_labels(cfg, 0, model), _shown_value(cfg, rule, fires))]
    checks = [check(rule.alert, F, firing), check(rule.alert, (n + 2) * s, [])]
    if F:
        checks.insert(0, check(rule.alert, F - s, []))
    return {"interval": f"{s}s", "input_series": inputs + more, "alert_rule_test": checks}


def _growth_case(cfg: RulesConfig, rule: AlertRule, s: int, model: str | None = None) -> dict[str, Any]:
    """GPU 0 gains exactly the threshold's count at once: fires. GPU 1 gains one less, one at a
    time (increase() would extrapolate that to more): quiet. GPU 2's counter resets (driver
    reload) and stays low: quiet. GPU 3 resets, then gains the threshold's count: fires."""
    F, w = int(rule.for_seconds), int(rule.window_seconds or 0) // s
    g = math.ceil(rule.threshold) if rule.op == ">=" else math.floor(rule.threshold) + 1
    if not rule.breached(g) or rule.breached(g - 1):
        raise TestGenError(f"{rule.rule}: growth threshold {rule.threshold:g} not testable")
    j = 11  # step of the jump / reset
    length = j + w + F // s + 4
    gpu0 = [100.0 if k < j else 100.0 + g for k in range(length)]
    gpu1 = [200.0 + min(max(k - j + 1, 0), g - 1) for k in range(length)]
    gpu2 = [500.0 if k < j else 0.0 for k in range(length)]
    gpu3 = [500.0 if k < j else (0.0 if k == j else float(g)) for k in range(length)]
    inputs = [feed(cfg, rule.metric, gpu_labels(cfg, i, model), v) for i, v in enumerate((gpu0, gpu1, gpu2, gpu3))]
    both = [expected(cfg, rule, gpu_labels(cfg, 0, model), g), expected(cfg, rule, gpu_labels(cfg, 3, model), g)]
    checks = [
        check(rule.alert, (j - 1) * s, []),
        check(rule.alert, (j + g) * s + F, both),  # GPU 1 has its g-1 by now
        check(rule.alert, (j + w + 2) * s + F, []),
    ]
    if F:
        checks.insert(1, check(rule.alert, j * s + F - s, []))
    return {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}


def _any_case(cfg: RulesConfig, rule: AlertRule, s: int, model: str | None = None) -> dict[str, Any]:
    """GPU 0 has the first listed reason active, GPU 2 the last; GPU 1 only an unlisted one.
    dcgm-exporter: one bitmask per GPU, GPU 0 under the field's pre-DCGM-3.3 name
    (CLOCK_THROTTLE_REASONS), the others under its new one (CLOCKS_EVENT_REASONS)."""
    if not rule.breached(1) or rule.breached(0):
        raise TestGenError(f"{rule.rule}: kind any expects 1 (active) to breach and 0 not")
    F = int(rule.for_seconds)
    n = F // s + 2
    others = [r for r in KNOWN_REASONS if r not in rule.values] or ["not_listed"]
    label = str(rule.label)
    inputs = []
    for i, active in ((0, rule.values[0]), (1, others[0]), (2, rule.values[-1])):
        if cfg.source != "gpuwarden":
            names = sources.raw(cfg.source, rule.metric).names
            # the active reason's bit, plus gpu_idle's (never throttling) where it is unlisted
            mask = sources.THROTTLE_BITS.get(active, 0) | (0x1 if "gpu_idle" not in rule.values else 0)
            name = names[0] if i == 0 else names[-1]
            inputs.append({"series": series(name, gpu_labels(cfg, i, model)), "values": values([mask] * (n + 1))})
            continue
        for reason in (*rule.values, others[0]):
            inputs.append(
                {
                    "series": series(rule.metric, {**gpu_labels(cfg, i, model), label: reason}),
                    "values": values([1.0 if reason == active else 0.0] * (n + 1)),
                }
            )
    firing = [expected(cfg, rule, gpu_labels(cfg, i, model), 1.0) for i in (0, 2)]
    checks = [check(rule.alert, F, firing)]
    if F:
        checks.insert(0, check(rule.alert, F - s, []))
    return {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}


def blank_values(blank: float) -> list[int | float]:
    """The DCGM sentinels a field of this kind can hold (dcgm_structs.h: BLANK, NOT_FOUND,
    NOT_SUPPORTED, NOT_PERMISSIONED); an INT64 field the INT32 ones too."""
    if blank == sources.DCGM_FP64_BLANK:
        return [blank + k for k in range(4)]
    return [b + k for b in (sources.DCGM_INT32_BLANK, sources.DCGM_INT64_BLANK) for k in range(4)]


def blank_case(cfg: RulesConfig, rule: AlertRule, s: int) -> dict[str, Any]:
    """dcgm-exporter < 4.5.2 exports DCGM's sentinels for a field it cannot read: GPU i holds a
    quiet value, then sentinel i, and never fires (unfiltered, a blank temperature is 2147483632
    °C, a blank power 2**47 W, a blank throttle mask has the thermal bits set, a blank ECC count
    grows by billions)."""
    r = sources.raw(cfg.source, rule.metric)
    assert r.blank is not None
    F, j = int(rule.for_seconds), 3
    length = j + F // s + 6
    inputs: list[dict[str, Any]] = []
    for i, blank in enumerate(blank_values(r.blank)):
        labels = gpu_labels(cfg, i)
        if rule.kind == "ratio":
            used_name, free_name = sources.raw(cfg.source, str(rule.denominator)).sum_of
            total = TOTAL_BYTES / _unit(cfg, rule.metric)
            quiet = float(_units_for(cfg, rule, boundary_values(rule)[1]))
            inputs.append({"series": series(used_name, labels), "values": values([quiet] * j + [blank] * (length - j))})
            inputs.append({"series": series(free_name, labels), "values": values([total - quiet] * length)})
            continue
        if rule.kind == "any":
            name, quiet = r.names[-1], 0.0
        elif rule.kind == "growth":
            name, quiet = r.names[0], 0.0
        else:
            name, quiet = r.names[0], boundary_values(rule)[1] / r.scale
        inputs.append({"series": series(name, labels), "values": values([quiet] * j + [blank] * (length - j))})
    checks = [check(rule.alert, F + (j + 1) * s, []), check(rule.alert, (length - 1) * s, [])]
    return {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}


def forecast_case(cfg: RulesConfig, fc: Forecast, s: int) -> dict[str, Any]:
    """GPU 0 ramps up and is flagged while still short of the threshold; GPU 1 sits flat at the
    guard; GPU 2 ramps as fast but is still below the guard."""
    t = fc.target
    T, G, H, L, F = t.threshold, fc.guard, fc.horizon_seconds, fc.lookback_seconds, fc.for_seconds
    if F + s >= H:
        raise TestGenError(f"{fc.rule}: `for` must be shorter than the horizon to be testable")
    rate = (T - G) * (1 / H + 1 / (F + s)) / 2  # past the threshold in H, not before F+s
    t_guard = L
    t_fire = t_guard + F + s
    v0 = G - rate * t_guard
    n = int(t_fire // s) + 2
    ramp = [v0 + rate * k * s for k in range(n + 1)]
    flat = [G] * (n + 1)
    low = [v - rate * (F + 3 * s) for v in ramp]
    inputs: list[dict[str, Any]] = []
    for i, samples in enumerate((ramp, flat, low)):
        if t.kind == "ratio":
            total = TOTAL_BYTES / _unit(cfg, t.metric)
            used = [total * v for v in samples]
            inputs += _memory_inputs(cfg, t.metric, str(t.denominator), gpu_labels(cfg, i), used)[0]
        else:
            inputs.append(feed(cfg, t.metric, gpu_labels(cfg, i), samples))
    # group_eval_order (below) evaluates the recording group first, so the alert reads the
    # forecast of the same timestamp (in Prometheus it may read one evaluation older).
    predicted = v0 + rate * t_fire + rate * H
    if t.breached(v0 + rate * t_fire) or not t.breached(predicted):
        raise TestGenError(f"{fc.rule}: no ramp crosses {t.rule}'s threshold late enough to test")
    checks = [
        check(fc.alert, t_guard + F - s, []),
        check(fc.alert, t_fire, [expected(cfg, fc, gpu_labels(cfg, 0), predicted)]),
        check(t.alert, t_fire, []),
    ]
    return {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}


def monitoring_cases(cfg: RulesConfig, m: MonitoringAlert, s: int) -> list[dict[str, Any]]:
    F = int(m.for_seconds)
    n = F // s + 3
    job = test_job(cfg)
    inst = {"job": job, "instance": INSTANCE}
    seen = promql.presence(cfg)
    # absent() labels its output with the selector's equality matchers only.
    absent_labels = {"job": job} if cfg.job_selector == f'job="{job}"' else {}

    def before_and_at(start: float, firing: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [check(m.alert, start + F, firing)]
        if F or start:
            out.insert(0, check(m.alert, start + F - s, []))
        return out

    if m.kind in ("target_down", "nvml_down"):
        metric = "up" if m.kind == "target_down" else "gpuwarden_exporter_nvml_up"
        return [
            {
                "interval": f"{s}s",
                "input_series": [{"series": series(metric, inst), "values": values([1.0] + [0.0] * n)}],
                "alert_rule_test": before_and_at(s, [expected(cfg, m, inst, 0.0)]),
            }
        ]
    if m.kind == "series_absent":
        return [
            {
                "interval": f"{s}s",
                "input_series": [{"series": series("up", inst), "values": values([1.0] * n)}],
                "alert_rule_test": before_and_at(0, [expected(cfg, m, absent_labels, 1.0)]),
            },
            {
                "interval": f"{s}s",
                "input_series": [{"series": series(seen, gpu_labels(cfg, 0)), "values": values([1.0] * n)}],
                "alert_rule_test": [check(m.alert, F + s, [])],
            },
        ]
    if m.kind == "series_vanished":
        k = 3
        return [
            {
                "interval": f"{s}s",
                "input_series": [
                    {"series": series("up", inst), "values": values([1.0] * (k + n + 1))},
                    {"series": series(seen, gpu_labels(cfg, 0)), "values": values([1.0] * k + ["stale"])},
                    {"series": series(seen, gpu_labels(cfg, 1)), "values": values([1.0] * (k + n + 1))},
                ],
                "alert_rule_test": before_and_at(k * s, [expected(cfg, m, gpu_labels(cfg, 0), 1.0)]),
            }
        ]
    if m.kind == "gpu_down":
        return [
            {
                "interval": f"{s}s",
                "input_series": [
                    {"series": series("gpu_up", gpu_labels(cfg, 0)), "values": values([1.0] + [0.0] * n)},
                    {"series": series("gpu_up", gpu_labels(cfg, 1)), "values": values([1.0] * (n + 1))},
                ],
                "alert_rule_test": before_and_at(s, [expected(cfg, m, gpu_labels(cfg, 0), 0.0)]),
            }
        ]
    if m.kind == "fatal_xid" and cfg.source != "gpuwarden":
        return _last_xid_case(cfg, m, s)
    if m.kind == "fatal_xid":
        return _xid_case(cfg, m, s)
    raise TestGenError(f"{m.rule}: no generated test for kind {m.kind}")


def _xid_windows(m: MonitoringAlert, s: int) -> tuple[int, int, int, int]:
    """(for, window in steps, the step where series appear: past any window, the length)."""
    from .config import parse_duration

    F, w = int(m.for_seconds), int(parse_duration(str(m.window_text))) // s
    a = w + 10
    return F, w, a, a + w + F // s + 4


def _up(cfg: RulesConfig, samples: Sequence[float | str | None]) -> dict[str, Any]:
    """The exporter target's ``up`` (the scrapes a new XID series is judged against)."""
    return {"series": series("up", {"job": test_job(cfg), "instance": INSTANCE}), "values": values(samples)}


def _xid_case(cfg: RulesConfig, m: MonitoringAlert, s: int) -> list[dict[str, Any]]:
    """First XIDs on a long-scraped node: GPU 0's listed XID series appears at 1 (a new series
    must fire: increase() has no earlier sample). GPU 1: an unlisted XID appears. GPU 2: a
    listed XID counted long ago, then its counter resets to 0. Then ``_xid_reshard_case`` and
    ``_xid_restart_case``."""
    F, w, a, length = _xid_windows(m, s)
    fatal = str(m.xids[0])
    other = str(next(x for x in range(13, 10_000) if x not in m.xids))

    def xl(i: int, x: str) -> Labels:
        return {**gpu_labels(cfg, i), "xid": x}

    appear: list[float | None] = [None] * a + [1.0] * (length - a)
    inputs = [
        _up(cfg, [1.0] * length),
        {"series": series("gpu_xid_errors_total", xl(0, fatal)), "values": values(appear)},
        {"series": series("gpu_xid_errors_total", xl(1, other)), "values": values(appear)},
        {"series": series("gpu_xid_errors_total", xl(2, fatal)), "values": values([3.0] * a + [0.0] * (length - a))},
    ]
    checks = [
        check(m.alert, (a - 1) * s, []),
        check(m.alert, a * s + F, [expected(cfg, m, xl(0, fatal), 1.0)]),
        check(m.alert, (a + w + 2) * s + F, []),
    ]
    if F:
        checks.insert(1, check(m.alert, a * s + F - s, []))
    first = {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}
    return [first, _xid_reshard_case(cfg, m, s, xl), _xid_restart_case(cfg, m, s, xl)]


def _xid_reshard_case(cfg: RulesConfig, m: MonitoringAlert, s: int, xl: Any) -> dict[str, Any]:
    """A reshard (or a Prometheus that lost its data): the target and GPU 0's listed XID series,
    counted long ago, arrive at this Prometheus together: no alert (the agent would quarantine
    a GPU for an XID already acted on). GPU 1 logs its first XID 3 scrapes later: fires."""
    F, w, a, length = _xid_windows(m, s)
    fatal = str(m.xids[0])
    late = a + 3
    inputs = [
        _up(cfg, [None] * a + [1.0] * (length - a)),
        {"series": series("gpu_xid_errors_total", xl(0, fatal)), "values": values([None] * a + [3.0] * (length - a))},
        {
            "series": series("gpu_xid_errors_total", xl(1, fatal)),
            "values": values([None] * late + [1.0] * (length - late)),
        },
    ]
    checks = [
        check(m.alert, a * s + F, []),
        check(m.alert, late * s + F, [expected(cfg, m, xl(1, fatal), 1.0)]),
    ]
    return {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}


def _xid_restart_case(cfg: RulesConfig, m: MonitoringAlert, s: int, xl: Any) -> dict[str, Any]:
    """The exporter restarts (down for longer than the window: no sample of the old count is in
    it) and counts XIDs from its own start. GPU 0's listed XID series comes back at 1 two scrapes
    after the target is up again: a new XID since the restart, fires. GPU 1's comes back at 1 at
    the first scrape: an XID between the exporter's start and its first scrape cannot be told
    from one counted before a reshard, so no alert (the shorter restart, whose old count is still
    in the window, fires through increase(): rules/tests/edge-cases.test.yml)."""
    F, w, _, _ = _xid_windows(m, s)
    fatal = str(m.xids[0])
    down, back = 5, 5 + w + 2  # steps the exporter is down: [down, back)
    length = back + w + F // s + 4

    def counter(reappear: int) -> list[float | str | None]:
        return [2.0] * down + ["stale"] + [None] * (reappear - down - 1) + [1.0] * (length - reappear)

    inputs = [
        _up(cfg, [1.0] * down + [0.0] * (back - down) + [1.0] * (length - back)),
        {"series": series("gpu_xid_errors_total", xl(0, fatal)), "values": values(counter(back + 2))},
        {"series": series("gpu_xid_errors_total", xl(1, fatal)), "values": values(counter(back))},
    ]
    checks = [
        check(m.alert, back * s + F, []),
        check(m.alert, (back + 2) * s + F, [expected(cfg, m, xl(0, fatal), 1.0)]),
    ]
    return {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}


def _last_xid_case(cfg: RulesConfig, m: MonitoringAlert, s: int) -> list[dict[str, Any]]:
    """dcgm-exporter's last-XID gauge. GPU 0: 0, then a listed XID: fires with xid set, until
    the window has passed. GPU 1: an unlisted XID. GPU 2: a listed XID since long before the
    window (an old error already acted on). Then a reshard: the target and GPU 0's gauge,
    holding a listed XID from long ago, arrive together: no alert; GPU 1 of that target goes from
    0 to a listed XID 3 scrapes later: fires."""
    F, w, a, length = _xid_windows(m, s)
    fatal = float(m.xids[0])
    other = float(next(x for x in range(13, 10_000) if x not in m.xids))
    inputs = [
        _up(cfg, [1.0] * length),
        feed(cfg, "gpu_xid_errors_total", gpu_labels(cfg, 0), [0.0] * a + [fatal] * (length - a)),
        feed(cfg, "gpu_xid_errors_total", gpu_labels(cfg, 1), [0.0] * a + [other] * (length - a)),
        feed(cfg, "gpu_xid_errors_total", gpu_labels(cfg, 2), [fatal] * length),
    ]
    xid = {"xid": str(m.xids[0])}
    firing = [expected(cfg, m, {**gpu_labels(cfg, 0), **xid}, fatal)]
    checks = [
        check(m.alert, (a - 1) * s, []),
        check(m.alert, a * s + F, firing),
        check(m.alert, (a + w + 2) * s + F, []),
    ]
    if F:
        checks.insert(1, check(m.alert, a * s + F - s, []))
    late = a + 3
    reshard = [
        _up(cfg, [None] * a + [1.0] * (length - a)),
        feed(cfg, "gpu_xid_errors_total", gpu_labels(cfg, 0), [None] * a + [fatal] * (length - a)),
        feed(cfg, "gpu_xid_errors_total", gpu_labels(cfg, 1), [None] * a + [0.0] * 3 + [fatal] * (length - late)),
    ]
    reshard_checks = [
        check(m.alert, a * s + F, []),
        check(m.alert, late * s + F, [expected(cfg, m, {**gpu_labels(cfg, 1), **xid}, fatal)]),
    ]
    return [
        {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks},
        {"interval": f"{s}s", "input_series": reshard, "alert_rule_test": reshard_checks},
    ]


def _info_series(cfg: RulesConfig, i: int, name: str) -> dict[str, Any]:
    if cfg.source != "gpuwarden":
        # dcgm-exporter names the model on every series; the identity series is its temperature
        return {"series": series(sources.DCGM_PRESENCE[0], gpu_labels(cfg, i, name)), "values": "30+0x200"}
    return {"series": series("gpu_info", {**gpu_labels(cfg, i), "name": name}), "values": "1+0x200"}


def _needs_info(cfg: RulesConfig, rule: AlertRule) -> bool:
    """Whether a profile test must add the identity series (dcgm: unless the rule's own series is)."""
    if cfg.source == "gpuwarden":
        return True
    return not set(sources.raw(cfg.source, rule.metric).names) & set(sources.DCGM_PRESENCE)


def profile_cases(cfg: RulesConfig, rule: AlertRule, s: int) -> list[dict[str, Any]]:
    """A profile's version of ``rule``: the default's cases on GPUs of the profile's model, or
    for a relative threshold: GPU 0 on the firing side of factor x limit + offset with a limit
    that puts that threshold away from the fallback, GPU 1 on the quiet side, GPU 2 without the
    limit series on the firing side of the fallback."""
    prof = cfg.profiles[str(rule.profile)]
    if not prof.examples:
        raise TestGenError(f"profile {prof.name}: add `examples` (gpu_info names) to generate its tests")
    model = prof.examples[0]
    info = _needs_info(cfg, rule)
    if rule.relative is None:
        cases = threshold_cases(cfg, rule, s, model)
        for case in cases:
            case["input_series"] += [_info_series(cfg, i, model) for i in range(4) if info]
        return cases
    rel = rule.relative
    limit = float(math.floor((rule.threshold - rel.offset) / rel.factor * 0.9))
    judged = replace(rule, threshold=rel.threshold(limit))
    fires, quiet = boundary_values(judged)
    fallback, _ = boundary_values(rule)
    if rule.breached(fires):
        raise TestGenError(f"{rule.rule} ({prof.name}): the relative threshold cannot be told from the fallback")
    F = int(rule.for_seconds)
    n = F // s + 2
    inputs = [
        feed(cfg, rule.metric, gpu_labels(cfg, 0, model), [fires] * (n + 1) + ["stale"]),
        feed(cfg, rule.metric, gpu_labels(cfg, 1, model), [quiet] * (n + 3)),
        feed(cfg, rule.metric, gpu_labels(cfg, 2, model), [fallback] * (n + 1) + ["stale"]),
        feed(cfg, rel.metric, gpu_labels(cfg, 0, model), [limit] * (n + 3), rel.matchers),
        feed(cfg, rel.metric, gpu_labels(cfg, 1, model), [limit] * (n + 3), rel.matchers),
        *(_info_series(cfg, i, model) for i in range(3) if info),
    ]
    firing = [
        expected(cfg, rule, gpu_labels(cfg, 0, model), fires),
        expected(cfg, rule, gpu_labels(cfg, 2, model), fallback),
    ]
    checks = [check(rule.alert, F, firing), check(rule.alert, (n + 2) * s, [])]
    if F:
        checks.insert(0, check(rule.alert, F - s, []))
    return [{"interval": f"{s}s", "input_series": inputs, "alert_rule_test": checks}]


def test_files(cfg: RulesConfig) -> dict[str, Any]:
    """{file name: promtool test document}; rule_files are relative to the test file."""
    s = step_for(cfg)
    tests: list[dict[str, Any]] = []
    for rule in cfg.alerts.values():
        tests += threshold_cases(cfg, rule, s)
        if sources.raw(cfg.source, rule.metric).blank is not None:
            tests.append(blank_case(cfg, rule, s))
    for rule in render.threshold_rules(cfg):
        if rule.profile is not None:
            tests += profile_cases(cfg, rule, s)
    for fc in cfg.forecasts.values():
        tests.append(forecast_case(cfg, fc, s))
    for m in cfg.monitoring.values():
        if promql.supported(cfg, m):
            tests += monitoring_cases(cfg, m, s)
    tests.append(job_annotation_case(cfg, s))
    groups = [g["name"] for g in render.recording_groups(cfg) + render.alert_groups(cfg)]
    doc = {
        "rule_files": [render.RECORDING_FILE, render.ALERTS_FILE],
        "evaluation_interval": f"{s}s",
        "group_eval_order": groups,
        "tests": tests,
    }
    return {TEST_FILE: doc}


def job_annotation_case(cfg: RulesConfig, s: int) -> dict[str, Any]:
    """The first critical level alert fires for GPU 0 and GPU 1 alike; the agent's
    gpu_allocation_info names GPU 0's job, so only GPU 0's alert names it (the alert itself never
    waits for the agent: GPU 1 has no allocation and fires all the same)."""
    rule = next((r for r in cfg.alerts.values() if r.kind == "level" and r.severity == "critical"), None)
    rule = rule or next(r for r in cfg.alerts.values() if r.kind == "level")
    fires, _ = boundary_values(rule)
    F = int(rule.for_seconds)
    n = F // s + 2
    inputs = [feed(cfg, rule.metric, gpu_labels(cfg, i), [fires] * (n + 1)) for i in (0, 1)]
    gpu0 = alert_labels(cfg, gpu_labels(cfg, 0))
    allocation = {"job": "gpuwarden-agent", "instance": INSTANCE, "gpu": "0", "uuid": gpu0["uuid"], **ALLOCATION}
    inputs.append({"series": series("gpu_allocation_info", allocation), "values": values([1.0] * (n + 1))})
    firing = [
        expected(cfg, rule, gpu_labels(cfg, 0), fires, allocated=allocation),
        expected(cfg, rule, gpu_labels(cfg, 1), fires),
    ]
    return {"interval": f"{s}s", "input_series": inputs, "alert_rule_test": [check(rule.alert, F, firing)]}
