"""Which series the predictor forecasts, and against which threshold from rules/thresholds.yaml.

One MetricSpec per forecast metric. Thresholds are never constants here: they come from
``rules.config.load(path)`` (the shipped ``rules/thresholds.yaml`` when path is None):

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


def _sel(job: str | None) -> str:
    return f'{{job="{job}"}}' if job else ""


def specs_from_rules(cfg: Any) -> list[MetricSpec]:
    """MetricSpecs built from a loaded ``rules.config.RulesConfig``."""
    from gpuwarden.rules.promql import THRESHOLD_RECORD  # cfg comes from the rules package anyway

    job = getattr(cfg, "exporter_job", None)
    sel = _sel(job)
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
        job_matcher = f', job="{job}"' if job else ""
        return f'{THRESHOLD_RECORD}{{rule="{rule_id}"{job_matcher}}}'

    r = need("THERMAL_CRITICAL")
    out.append(
        MetricSpec(
            "temperature",
            "Temperature",
            f"{r.metric}{sel}",
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
            f"{r.metric}{sel}",
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
            f"{r.metric}{sel} / {denom}{sel}",
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
            f"rate({r.metric}{sel}[{window:g}s])",
            r.threshold / window,
            r.rule,
            " errors/min",
            scale=60.0,
            hold_seconds=r.for_seconds,
            threshold_query=f"{own(r.rule)} / {window:g}",
        )
    )
    return out


def load_specs(path: Path | str | None = None) -> list[MetricSpec]:
    """Loads rules/thresholds.yaml (or ``path``) and returns the predictor's MetricSpecs.

    Raises rules.config.ConfigError (naming file, line and field) on a bad file.
    """
    from gpuwarden.rules import config  # imported here: the predictor's pure parts need no rules package

    return specs_from_rules(config.load(Path(path) if path is not None else None))
