"""The seed's text report for a GPU at risk.

    GPU-0 Temperature Trend:
      Current: 75°C
      Rate: +0.5°C/minute
      Predicted Critical (85°C): 20 minutes
      Confidence: 0.85
      Risk Score: 0.65

    Recommendation: Monitor closely, plan migration within 15 minutes

"Plan migration within N minutes" counts down to the moment the agent would migrate on its
own (time to critical minus the lead time), so the seed's example is a 5-minute lead time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .forecast import Forecast
from .health import GpuHealth
from .specs import MetricSpec

# A GPU is "at risk" (reported) when a crossing is predicted or its risk reaches this.
REPORT_RISK = 0.3


def fmt_value(v: float) -> str:
    """75 -> '75', 0.5 -> '0.5', 412.26 -> '412', 0.0333 -> '0.033'."""
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 0.1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.2g}"
    if "." in s and "e" not in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "not predicted"
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return f"{seconds:.0f} seconds"
    minutes = seconds / 60
    if minutes < 120:
        m = max(1, round(minutes))
        return f"{m} minute" if m == 1 else f"{m} minutes"
    return f"{fmt_value(minutes / 60)} hours"


def metric_block(gpu: str, spec: MetricSpec, f: Forecast) -> str:
    u = spec.unit
    rate = f.slope_per_second * 60 * spec.scale
    sign = "+" if rate >= 0 else "-"
    return "\n".join(
        [
            f"GPU-{gpu} {spec.title} Trend:",
            f"  Current: {fmt_value(f.current * spec.scale)}{u}",
            f"  Rate: {sign}{fmt_value(abs(rate))}{u}/minute",
            f"  Predicted Critical ({fmt_value(f.threshold * spec.scale)}{u}): {fmt_duration(f.seconds_to_threshold)}",
            f"  Confidence: {f.confidence:.2f}",
            f"  Risk Score: {f.risk:.2f}",
        ]
    )


def recommendation(h: GpuHealth, specs: Sequence[MetricSpec], lead_time: float) -> str:
    if h.recent_errors.get("uncorrectable", 0) > 0:
        return "Quarantine: uncorrectable ECC errors in the last window; drain this GPU and have it checked"
    hit = h.soonest(specs)
    if hit is not None:
        spec, f = hit
        ttt = f.seconds_to_threshold or 0.0
        if ttt <= 0:
            return f"Critical now: {spec.title.lower()} is over {fmt_value(f.threshold * spec.scale)}{spec.unit}; migrate jobs off this GPU"
        if ttt <= lead_time:
            return f"Migrate jobs now: {spec.title.lower()} predicted critical in {fmt_duration(ttt)}"
        return f"Monitor closely, plan migration within {fmt_duration(ttt - lead_time)}"
    if h.recent_errors.get("xid", 0) > 0:
        return "Investigate: XID errors in the last window"
    if h.risk >= REPORT_RISK:
        return "Running close to a threshold with no crossing predicted; keep watching"
    return "Healthy: no action needed"


def at_risk(h: GpuHealth, specs: Sequence[MetricSpec]) -> bool:
    return h.soonest(specs) is not None or h.risk >= REPORT_RISK


def gpu_report(h: GpuHealth, specs: Sequence[MetricSpec], lead_time: float) -> str:
    """Blocks for the metrics that matter (predicted, or risky), then the recommendation."""
    blocks = []
    for spec in specs:
        f = h.forecasts.get(spec.name)
        if f is not None and (f.seconds_to_threshold is not None or f.risk >= REPORT_RISK):
            blocks.append(metric_block(h.gpu, spec, f))
    if not blocks:
        first = next((s for s in specs if s.name in h.forecasts), None)
        if first is not None:
            blocks.append(metric_block(h.gpu, first, h.forecasts[first.name]))
        else:
            blocks.append(f"GPU-{h.gpu} ({h.uuid}): no series to forecast")
    errors = [f"{k} errors: {fmt_value(v)}" for k, v in sorted(h.recent_errors.items()) if v > 0]
    if errors:
        blocks.append(f"GPU-{h.gpu} Recent Errors: " + ", ".join(errors))
    return "\n\n".join(blocks) + f"\n\nRecommendation: {recommendation(h, specs, lead_time)}\n"
