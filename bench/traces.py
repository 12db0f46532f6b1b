"""Seeded simulated GPU traces for the predictor evaluation (bench/predictor_eval.py).

Every trace is sampled every STEP seconds (a Prometheus scrape interval) for DURATION seconds
and has a threshold. Its true crossing is where the alert would really fire: the first sample
that starts a run of samples at or above the threshold lasting ``hold`` seconds (the rule's
``for:``), so a short spike over the line is not a crossing. Families:

* ``runaway_linear``   cooling lost: a linear climb from a noisy idle plateau at 0.1–2 °C/min.
* ``runaway_accel``    leakage feedback: the excess over the plateau grows exponentially.
* ``runaway_approach`` fan failure: first-order approach to an asymptote well above 85 °C.
* ``noisy_plateau``    steady load 72–83 °C with scrape noise (and slow wander); never crosses.
* ``throttled``        climbs, then the power cap / thermal slowdown levels it off at 80–84 °C.
* ``spikes``           a plateau with short spikes (1–2 scrapes), some above the line.
* ``power_ramp``       power creeping toward 450 W, or a noisy plateau near 400 W that never crosses.
* ``ecc_drip``         correctable errors in the last 300 s (integer steps): a drip whose rate
                       grows past 10 per 5 min, or a steady drip that stays below.

Hard negatives (issue 17), from the same physics with parameters drawn from ranges:

* ``settling``         a load step: first-order approach (tau 1.5–10 min) to an asymptote 0.5–6 °C
                       below 85 °C, sometimes a second step later; never crosses.
* ``throttle_plateau`` a climb (0.5–3 °C/min) that the firmware's thermal slowdown holds at
                       82–84.6 °C; ``throttle`` is 1 while it holds (gpu_throttle_active).
* ``load_cycle``       a square-wave load (period 4–20 min): temperature relaxes toward the high
                       and low asymptotes in turn (the high one may lie above 85 °C, but the peaks
                       stay below it).

``throttle`` (0/1 per sample) is what ``gpu_throttle_active`` would show; the CSV interface sees
values only, the agent sees both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

STEP = 15.0
DURATION = 75 * 60.0
THERMAL_T = 85.0
POWER_T = 450.0
ECC_T = 10.0


@dataclass(frozen=True)
class Trace:
    name: str
    family: str
    times: np.ndarray  # seconds from the trace's start
    values: np.ndarray
    threshold: float
    hold: float  # seconds over the threshold that make a real crossing (the rule's for:)
    throttle: np.ndarray | None = None  # 1 where a slowdown or power cap is active

    @property
    def crossing(self) -> float | None:
        return true_crossing(self.times, self.values, self.threshold, self.hold)


def true_crossing(times: np.ndarray, values: np.ndarray, threshold: float, hold: float) -> float | None:
    """Start time of the first run at or above ``threshold`` lasting at least ``hold`` seconds."""
    start: float | None = None
    for t, v in zip(times, values, strict=False):
        if v >= threshold:
            if start is None:
                start = float(t)
            if t - start >= hold:
                return start
        else:
            start = None
    return None


def _t() -> np.ndarray:
    return np.arange(0.0, DURATION + STEP / 2, STEP)


def _noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    # Scrape noise with a few heavy-tailed outliers (a kernel launch caught mid-scrape).
    e = rng.normal(0.0, sigma, n)
    hits = rng.random(n) < 0.02
    e[hits] += rng.normal(0.0, 4 * sigma, hits.sum())
    return e


def runaway_linear(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    base = rng.uniform(62, 74)
    rate = rng.choice([0.1, 0.25, 0.5, 1.0, 2.0]) / 60.0
    t0 = rng.uniform(15, 35) * 60
    return base + np.clip(t - t0, 0, None) * rate + _noise(rng, t.size, rng.uniform(0.2, 1.0))


def runaway_accel(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    base = rng.uniform(62, 74)
    t0 = rng.uniform(15, 30) * 60
    r0 = rng.uniform(0.05, 0.3) / 60.0  # initial rate, per second
    k = 1.0 / rng.uniform(6, 15) / 60.0  # growth, per second
    x = np.clip(t - t0, 0, None)
    return base + r0 / k * (np.exp(k * x) - 1) + _noise(rng, t.size, rng.uniform(0.2, 1.0))


def runaway_approach(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    base = rng.uniform(62, 74)
    a = rng.uniform(92, 110)
    tau = rng.uniform(8, 25) * 60
    t0 = rng.uniform(15, 30) * 60
    x = np.clip(t - t0, 0, None)
    return base + (a - base) * (1 - np.exp(-x / tau)) + _noise(rng, t.size, rng.uniform(0.2, 1.0))


def noisy_plateau(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    level = rng.uniform(72, 82)
    wander = rng.uniform(0, 1.5) * np.sin(2 * np.pi * t / rng.uniform(15, 40) / 60 + rng.uniform(0, 6.3))
    return level + wander + _noise(rng, t.size, rng.uniform(0.3, 1.5))


def throttled(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = _t()
    base = rng.uniform(60, 70)
    cap = rng.uniform(80, 83.5)
    t0 = rng.uniform(15, 30) * 60
    x = np.clip(t - t0, 0, None)
    if rng.random() < 0.5:
        # Hard cap: a linear climb clipped (sw_thermal_slowdown holds the temperature).
        rate = rng.uniform(0.5, 2.0) / 60
        y = np.minimum(base + x * rate, cap)
        held = base + x * rate >= cap
    else:
        # Power cap: first-order approach to a cap below the threshold (sw_power_cap active
        # from the load step on).
        tau = rng.uniform(3, 10) * 60
        y = base + (cap - base) * (1 - np.exp(-x / tau))
        held = x > 0
    return y + _noise(rng, t.size, rng.uniform(0.2, 0.8)), held.astype(float)


def spikes(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    y = rng.uniform(72, 81) + _noise(rng, t.size, rng.uniform(0.2, 0.8))
    for _ in range(rng.integers(2, 7)):
        i = int(rng.integers(60, t.size - 2))
        width = int(rng.integers(1, 3))
        y[i : i + width] += rng.uniform(5, 12)
    return y


def power_ramp(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    if rng.random() < 0.5:
        base = rng.uniform(300, 380)
        rate = rng.uniform(1, 8) / 60
        t0 = rng.uniform(15, 35) * 60
        return base + np.clip(t - t0, 0, None) * rate + _noise(rng, t.size, rng.uniform(3, 10))
    return rng.uniform(380, 425) + _noise(rng, t.size, rng.uniform(3, 12))


def ecc_drip(rng: np.random.Generator) -> np.ndarray:
    """Correctable errors counted over the trailing 300 s, sampled every STEP."""
    t = _t()
    fine = np.arange(0.0, DURATION + 300 + STEP, STEP)
    if rng.random() < 0.5:
        r0 = rng.uniform(0.5, 3) / 300
        t0 = rng.uniform(15, 30) * 60
        growth = rng.uniform(0.5, 3) / 300 / 600  # errors/s gained per second
        rate = r0 + growth * np.clip(fine - 300 - t0, 0, None)
    else:
        rate = np.full(fine.size, rng.uniform(0.5, 5) / 300)
    counts = rng.poisson(rate * STEP)
    window = int(300 / STEP)
    csum = np.concatenate([[0], np.cumsum(counts)])
    in_window = csum[window:] - csum[:-window]
    return in_window[: t.size].astype(float)


def settling(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    y = np.full(t.size, rng.uniform(50, 70))
    level = y[0]
    t0 = rng.uniform(12, 40) * 60
    steps = [(t0, THERMAL_T - rng.uniform(0.5, 6))]
    if rng.random() < 0.4:
        steps.append((t0 + rng.uniform(12, 25) * 60, THERMAL_T - rng.uniform(0.5, 6)))
    for start, a in steps:
        tau = rng.uniform(1.5, 10) * 60
        x = t - start
        after = x > 0
        # Continue from wherever the previous step had got to.
        level = float(np.interp(start, t, y))
        y = np.where(after, a + (level - a) * np.exp(-np.clip(x, 0, None) / tau), y)
    return y + _noise(rng, t.size, rng.uniform(0.2, 0.8))


def throttle_plateau(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = _t()
    base = rng.uniform(60, 72)
    hold_at = THERMAL_T - rng.uniform(0.4, 3)
    rate = rng.uniform(0.5, 3) / 60
    t0 = rng.uniform(15, 40) * 60
    free = base + np.clip(t - t0, 0, None) * rate
    held = free >= hold_at
    # The slowdown holds the die a little under its target, with the clock's own wobble.
    y = np.where(held, hold_at - np.abs(rng.normal(0, 0.3, t.size)), free)
    return y + _noise(rng, t.size, rng.uniform(0.15, 0.5)), held.astype(float)


def load_cycle(rng: np.random.Generator) -> np.ndarray:
    t = _t()
    while True:
        period = rng.uniform(4, 20) * 60
        duty = rng.uniform(0.3, 0.7)
        lo, hi = rng.uniform(50, 65), rng.uniform(78, 95)
        tau = rng.uniform(1.5, 8) * 60
        phase = rng.uniform(0, period)
        load_hi = ((t + phase) % period) < duty * period
        y = np.empty(t.size)
        y[0] = lo
        for i in range(1, t.size):
            a = hi if load_hi[i] else lo
            y[i] = a + (y[i - 1] - a) * np.exp(-STEP / tau)
        if y.max() < THERMAL_T - 0.5:
            return y + _noise(rng, t.size, rng.uniform(0.2, 0.6))


FAMILIES: dict[str, tuple[Callable[[np.random.Generator], Any], float, float, int]] = {
    "runaway_linear": (runaway_linear, THERMAL_T, 30.0, 50),
    "runaway_accel": (runaway_accel, THERMAL_T, 30.0, 30),
    "runaway_approach": (runaway_approach, THERMAL_T, 30.0, 30),
    "noisy_plateau": (noisy_plateau, THERMAL_T, 30.0, 50),
    "throttled": (throttled, THERMAL_T, 30.0, 50),
    "spikes": (spikes, THERMAL_T, 30.0, 30),
    "power_ramp": (power_ramp, POWER_T, 20.0, 30),
    "ecc_drip": (ecc_drip, ECC_T, 0.0, 30),
    "settling": (settling, THERMAL_T, 30.0, 40),
    "throttle_plateau": (throttle_plateau, THERMAL_T, 30.0, 30),
    "load_cycle": (load_cycle, THERMAL_T, 30.0, 30),
}


def generate(seed: int = 6, scale: float = 1.0) -> list[Trace]:
    """All families, ``count × scale`` traces each, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out: list[Trace] = []
    for family, (gen, threshold, hold, count) in FAMILIES.items():
        for i in range(max(1, round(count * scale))):
            got = gen(rng)
            values, throttle = got if isinstance(got, tuple) else (got, None)
            out.append(Trace(f"{family}-{i:03d}", family, _t(), values, threshold, hold, throttle))
    return out
