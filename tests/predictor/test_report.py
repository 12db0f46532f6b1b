"""The seed's report format, word for word."""

from __future__ import annotations

from gpuwarden.scheduler_agent.predictor.forecast import Forecast
from gpuwarden.scheduler_agent.predictor.health import GpuHealth
from gpuwarden.scheduler_agent.predictor.report import fmt_duration, gpu_report, recommendation
from gpuwarden.scheduler_agent.predictor.specs import MetricSpec

TEMP = MetricSpec("temperature", "Temperature", "gpu_temperature_celsius", 85.0, "THERMAL_CRITICAL", "°C")
MEM = MetricSpec("memory", "Memory Use", "m", 0.9, "MEMORY_PRESSURE", "%", scale=100, migrate=False)


def health(ttt: float | None, errors: dict[str, float] | None = None) -> GpuHealth:
    f = Forecast(85.0, 75.0, 75.2, 0.5 / 60, ttt, 0.85, 0.65, "linear", "")
    return GpuHealth("GPU-x", "0", "n1", 0.0, {"temperature": f}, errors or {}, 0.65)


def test_seed_example_verbatim() -> None:
    assert gpu_report(health(1200.0), [TEMP], lead_time=300) == (
        "GPU-0 Temperature Trend:\n"
        "  Current: 75°C\n"
        "  Rate: +0.5°C/minute\n"
        "  Predicted Critical (85°C): 20 minutes\n"
        "  Confidence: 0.85\n"
        "  Risk Score: 0.65\n"
        "\n"
        "Recommendation: Monitor closely, plan migration within 15 minutes\n"
    )


def test_recommendations() -> None:
    assert recommendation(health(240.0), [TEMP], 300).startswith(
        "Migrate jobs now: temperature predicted critical in 4 minutes"
    )
    assert recommendation(health(0.0), [TEMP], 300).startswith("Critical now")
    assert recommendation(health(1200.0, {"uncorrectable": 2}), [TEMP], 300).startswith("Quarantine")
    assert recommendation(health(None), [TEMP], 300).startswith("Running close")  # risk 0.65, no crossing


def test_ratio_metric_shown_in_percent() -> None:
    f = Forecast(0.9, 0.8, 0.8, 0.001 / 60, 6000.0, 0.95, 0.2, "linear", "")
    h = GpuHealth("GPU-x", "3", "n1", 0.0, {"memory": f}, {}, 0.2)
    text = gpu_report(h, [MEM], 300)
    assert (
        "GPU-3 Memory Use Trend:\n  Current: 80%\n  Rate: +0.1%/minute\n  Predicted Critical (90%): 100 minutes" in text
    )


def test_durations() -> None:
    assert [fmt_duration(x) for x in (None, 0, 45, 60, 90, 7200 * 1.5)] == [
        "not predicted",
        "now",
        "45 seconds",
        "1 minute",
        "2 minutes",
        "3 hours",
    ]
