"""A live series is not forecast from a sliver of history (a just-started exporter or GPU)."""

from __future__ import annotations

import numpy as np

from gpuwarden.scheduler_agent.predictor.health import evaluate
from gpuwarden.scheduler_agent.predictor.specs import MetricSpec

POWER = MetricSpec("power", "Power", "gpu_power_watts", 450.0, "POWER_CRITICAL", "W")
LABELS = {"gpu": "0", "uuid": "GPU-0", "instance": "node:9786"}


def _load_cycle(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's healthy load drift as power: 300 W ± 31 W over a 5-minute cycle."""
    t = np.arange(0.0, seconds + 1, 15.0)
    return t, 300.0 + 31.0 * np.sin(2 * np.pi * t / 300.0 - np.pi / 2)


def test_rising_half_of_a_load_cycle_alone_is_not_forecast() -> None:
    t, v = _load_cycle(150)  # the rising half only: fitted alone it looks like a steep ramp
    health = evaluate([POWER], {"power": [(LABELS, t, v)]}, {}, at=float(t[-1]), window=600)
    assert "power" not in health["GPU-0"].forecasts
    assert health["GPU-0"].risk == 0.0


def test_whole_cycles_of_load_drift_carry_no_risk_and_a_real_ramp_does() -> None:
    t, v = _load_cycle(600)
    calm = evaluate([POWER], {"power": [(LABELS, t, v)]}, {}, at=float(t[-1]), window=600)["GPU-0"]
    assert calm.forecasts["power"].seconds_to_threshold is None
    assert calm.risk < 0.5
    ramp = 250.0 + 0.3 * t  # 18 W/min: 450 W is 100 s away at the end
    hot = evaluate([POWER], {"power": [(LABELS, t, ramp)]}, {}, at=float(t[-1]), window=600)["GPU-0"]
    assert hot.forecasts["power"].seconds_to_threshold is not None
    assert hot.risk > 0.5
