"""Which series the predictor forecasts, and against which threshold from rules/thresholds.yaml.

One MetricSpec per forecast metric. Thresholds are never constants here: they come from
``rules.config.load(path)`` (the shipped ``rules/thresholds.yaml`` when path is None). The
queries are built by ``gpuwarden.sources`` for the metrics source (gpuwarden-exporter or
dcgm-exporter: lowercase ``instance``/``gpu``/``uuid``, gpuwarden's units either way); the names
below are gpuwarden-exporter's:

* temperature  gpu_temperature_celsius                    THERMAL_CRITICAL
* power        gpu_power_watts                            POWER_CRITICAL
* memory       gpu_memory_used_bytes / gpu_memory_total_bytes   MEMORY_PRESSURE (ratio)
* ecc          rate(gpu_ecc_errors_correctable_total[window])   ECC_ERRORS_SPIKE, as a rate:
               threshold / window errors per second (10 per 300 s ≈ 0.033/s)

Those are the default profile's thresholds. Each GPU's own (its model's profile, relative to its
own limits) comes from Prometheus: ``threshold_query`` reads the generated recording rule
``instance_gpu:gpu_alert_threshold:effective``, so the predictor judges every GPU by the number
its alerts use and falls back to ``threshold`` only where Prometheus has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuwarden import sources

# Any scrape job: bare MetricSpecs and a rules config without an exporter job select no job.
ANY_JOB = 'job=~".+"'


@dataclass(frozen=True)
class MetricSpec:
    """A per-GPU series to forecast and the upper threshold it must not reach.

    ``scale`` and ``unit`` only shape the report (memory ratio shown in %, ECC rate per minute).
    ``hold_seconds`` is the rule's ``for:``: how long the series must stay over to alert.
    ``threshold_query`` returns each GPU's own threshold, in the unit of ``query``.
    """

    name: str
    title: str
    query: str
    threshold: float
    rule: str
    unit: str = ""
    scale: float = 1.0
    hold_seconds: float = 0.0
    migrate: bool = True  # a predicted crossing of this metric moves jobs off the GPU
    threshold_query: str | None = None


def gauge(source: str, metric: str, job_selector: str) -> str:
    """gpuwarden-exporter's ``metric`` read from ``source``, with lowercase instance/gpu/uuid, in
    gpuwarden's unit (what sources.signal gives for the signals it names)."""
    return sources.uuid_lowercase(source, sources.instant(source, metric, job_selector))


def counter_rate(source: str, metric: str, job_selector: str, window: float) -> str:
    """``rate()`` of gpuwarden-exporter's counter ``metric`` as ``source`` names it."""
    r = sources.raw(source, metric)
    expr = f"rate({sources.selector(r.names, job_selector, r.matchers)}[{window:g}s])"
    if r.scale != 1:
        expr = f"{expr} * {sources.number(r.scale)}"
    return sources.uuid_lowercase(source, expr)


def resolve_source(cfg: Any, source: str | None = None, job_selector: str | None = None) -> tuple[str, str]:
    """The metrics source and job matcher to read: ``source`` (None: the rules config's
    ``settings.source``; "gpuwarden" without a config) and ``job_selector`` (None: the config's
    own when the source is its own, else the source's default; any job for bare specs)."""
    own = sources.check(getattr(cfg, "source", "gpuwarden")) if cfg is not None else "gpuwarden"
    src = sources.check(source) if source is not None else own
    if job_selector:
        return src, job_selector
    if cfg is None:
        return src, ANY_JOB
    if src != own:
        return src, sources.default_job_selector(src)
    return src, str(cfg.job_selector)


def specs_from_rules(cfg: Any, source: str | None = None, job_selector: str | None = None) -> list[MetricSpec]:
    """MetricSpecs built from a loaded ``rules.config.RulesConfig``, read from ``source`` (None:
    the config's ``settings.source``) under ``job_selector`` (one PromQL matcher; None: the
    config's, or the source's default when ``source`` differs from the config's)."""
    from gpuwarden.rules.promql import THRESHOLD_RECORD  # cfg comes from the rules package anyway

    src, job = resolve_source(cfg, source, job_selector)
    out: list[MetricSpec] = []

    def need(rule_id: str) -> Any:
        try:
            return cfg.alerts[rule_id]
        except KeyError:
            raise ValueError(
                f"{cfg.path}: alerts.{rule_id} is missing; the predictor needs its threshold "
                f"(restore it from the shipped rules/thresholds.yaml)"
            ) from None

    def own(rule_id: str) -> str:
        # The recording rule keeps the exporter's job label (rules/promql.py, threshold_expr).
        return f'{THRESHOLD_RECORD}{{rule="{rule_id}", {job}}}'

    r = need("THERMAL_CRITICAL")
    out.append(
        MetricSpec(
            "temperature",
            "Temperature",
            gauge(src, r.metric, job),
            r.threshold,
            r.rule,
            "°C",
            hold_seconds=r.for_seconds,
            threshold_query=own(r.rule),
        )
    )
    r = need("POWER_CRITICAL")
    out.append(
        MetricSpec(
            "power",
            "Power",
            gauge(src, r.metric, job),
            r.threshold,
            r.rule,
            "W",
            hold_seconds=r.for_seconds,
            threshold_query=own(r.rule),
        )
    )
    r = need("MEMORY_PRESSURE")
    denom = r.denominator or "gpu_memory_total_bytes"
    out.append(
        MetricSpec(
            "memory",
            "Memory Use",
            f"{gauge(src, r.metric, job)} / ({gauge(src, denom, job)} > 0)",
            r.threshold,
            r.rule,
            "%",
            scale=100.0,
            hold_seconds=r.for_seconds,
            migrate=False,
            threshold_query=own(r.rule),
        )
    )
    r = need("ECC_ERRORS_SPIKE")
    window = r.window_seconds or 300.0
    out.append(
        MetricSpec(
            "ecc",
            "Correctable ECC Rate",
            counter_rate(src, r.metric, job, window),
            r.threshold / window,
            r.rule,
            " errors/min",
            scale=60.0,
            hold_seconds=r.for_seconds,
            threshold_query=f"{own(r.rule)} / {window:g}",
        )
    )
    return out


def load_specs(path: Path | str | None = None, source: str | None = None) -> list[MetricSpec]:
    """Loads rules/thresholds.yaml (or ``path``) and returns the predictor's MetricSpecs (read
    from ``source``; None: the file's ``settings.source``).

    Raises rules.config.ConfigError (naming file, line and field) on a bad file.
    """
    from gpuwarden.rules import config  # imported here: the predictor's pure parts need no rules package

    return specs_from_rules(config.load(Path(path) if path is not None else None), source)
