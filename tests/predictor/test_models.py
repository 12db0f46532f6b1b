"""The per-kind models (models.py) and the migration decision that uses them (issue 17)."""

from __future__ import annotations

import numpy as np

from gpuwarden.scheduler_agent.predictor import models
from gpuwarden.scheduler_agent.predictor.health import evaluate, migration_candidates
from gpuwarden.scheduler_agent.predictor.specs import MetricSpec

STEP = 15.0
NOW = 1_800_000_000.0
SPEC = MetricSpec("temperature", "Temperature", "gpu_temperature_celsius", 85.0, "THERMAL_CRITICAL", "°C")


def _rows(values: dict[str, np.ndarray]) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
    out = []
    for i, (uuid, y) in enumerate(values.items()):
        t = NOW - STEP * np.arange(y.size)[::-1]
        out.append(({"gpu": str(i), "uuid": uuid, "instance": "node1:9786"}, t, y))
    return out


def test_settling_gpu_left_alone_and_runaway_migrated() -> None:
    """Both GPUs are at 79 °C and rising 1 °C/min now. One settles at 83 °C (a load step, first-order
    with tau 4 min); the other lost its cooling (asymptote 110 °C, tau 20 min). A line forecasts 85 °C
    within the lead time for both; the model migrates only the runaway."""
    rng = np.random.default_rng(5)
    s = np.arange(-1200.0, 0.0 + STEP / 2, STEP)
    onset = -600.0
    x = np.clip(s - onset, 0, None)
    settle = 83 - (83 - 60) * np.exp(-x / 240)
    runaway = 110 - (110 - 60) * np.exp(-x / 1200)
    settle += rng.normal(0, 0.3, s.size)
    runaway += rng.normal(0, 0.3, s.size)
    for y in (settle, runaway):
        line = np.polyfit(s[-41:], y[-41:], 1)
        assert (85 - np.polyval(line, 0.0)) / line[0] < 900  # predict_linear would migrate both
    gpus = evaluate([SPEC], {"temperature": _rows({"GPU-settle": settle, "GPU-runaway": runaway})}, {}, NOW, 600.0)
    cands = migration_candidates(gpus, [SPEC], lead_time=900.0)
    assert "GPU-runaway" in cands and "GPU-settle" not in cands, (cands, gpus["GPU-settle"].forecasts)
    assert gpus["GPU-settle"].forecasts["temperature"].seconds_to_threshold is None


def test_held_by_firmware_is_not_extrapolated() -> None:
    """A climb the thermal slowdown holds at 84 °C: with gpu_throttle_active the climb before it is
    not extrapolated; the values alone (a CSV) still see it rising."""
    s = np.arange(-600.0, 0.0 + STEP / 2, STEP)
    y = np.minimum(75 + (s + 600) / 60 * 2.0, 84.0)  # +2 °C/min, held for the last ~90 s
    held = (y >= 84.0).astype(float)
    fit = models.fit_batch(s, y, 85.0, "temperature", held)
    assert fit.model[0] == models.MODEL_HELD and not np.isfinite(fit.ttt[0])


def test_batch_rows_are_independent() -> None:
    """A fleet batch gives each row the result it gets alone (the service fits all GPUs at once)."""
    rng = np.random.default_rng(9)
    s = np.arange(-600.0, 0.0 + STEP / 2, STEP)
    ys = np.stack([70 + k * 0.01 * (s + 600) + rng.normal(0, 0.5, s.size) for k in range(6)])
    batch = models.fit_batch(s, ys, 85.0, "temperature")
    for k in range(6):
        one = models.fit_batch(s, ys[k : k + 1], 85.0, "temperature")
        assert one.ttt[0] == batch.ttt[k] and one.confidence[0] == batch.confidence[k]


def test_guess_kind() -> None:
    assert models.guess_kind([0, 1, 3, 2], 10.0) == "ecc"
    assert models.guess_kind([70, 71, 72], 85.0) == "temperature"  # whole degrees are not counts
    assert models.guess_kind([0.5, 1.5], 10.0) == "temperature"


def test_evaluate_reads_the_throttle_rows() -> None:
    """health.evaluate (the service's path) hands gpu_throttle_active to the temperature model."""
    s = np.arange(-600.0 - 2 * STEP, 0.0 + STEP / 2, STEP)
    y = np.minimum(75 + (s + 630) / 60 * 2.0, 84.0)
    held = (y >= 84.0).astype(float)
    rows = _rows({"GPU-held": y})
    throttle = [(rows[0][0], rows[0][1], held)]
    gpus = evaluate([SPEC], {"temperature": rows}, {}, NOW, 600.0, throttle=throttle)
    f = gpus["GPU-held"].forecasts["temperature"]
    assert f.model == "held" and f.seconds_to_threshold is None


def test_load_cycle_rise_below_its_last_peak_is_not_a_crossing() -> None:
    """A square-wave load: the window holds a peak at 82 °C, the fall after it and the next rise
    (toward a high asymptote of 92 °C that the load's end keeps it from reaching). The same rise
    with no cycle before it (a load step: a first-order approach to 92 °C) is forecast to cross."""
    rng = np.random.default_rng(3)
    s = np.arange(-600.0, 0.0 + STEP / 2, STEP)
    lo, hi, tau = 55.0, 92.0, 180.0
    y = np.empty(s.size)
    y[0] = 80.0
    high = (s < -420) | (s > -180)  # high load, low load for four minutes, high again
    for i in range(1, s.size):
        a = hi if high[i] else lo
        y[i] = a + (y[i - 1] - a) * np.exp(-STEP / tau)
    assert y[-1] < y[: s.size // 2].max()  # still below the last peak
    noise = rng.normal(0, 0.3, s.size)
    cyc = models.fit_batch(s, y + noise, 85.0, "temperature")
    assert cyc.model[0] == models.MODEL_CYCLE and not np.isfinite(cyc.ttt[0])
    step = np.where(s > -180, hi + (y[-13] - hi) * np.exp(-np.clip(s + 180, 0, None) / tau), y[-13])
    run = models.fit_batch(s, step + noise, 85.0, "temperature")
    assert np.isfinite(run.ttt[0]) and run.model[0] != models.MODEL_CYCLE


def test_levelling_off_within_noise_of_the_threshold_is_not_safe() -> None:
    """Two first-order approaches (tau 3 min, scrape noise 0.5 °C) level off under 85 °C: 0.3 °C
    under it (the noise alone will hold it over for the alert's for:) is a crossing; 4 °C under
    it is not."""
    rng = np.random.default_rng(2)
    s = np.arange(-600.0, 0.0 + STEP / 2, STEP)
    x = s + 600
    noise = rng.normal(0, 0.5, s.size)
    near = models.fit_batch(s, 84.7 - (84.7 - 70) * np.exp(-x / 180) + noise, 85.0, "temperature")
    far = models.fit_batch(s, 81.0 - (81.0 - 66) * np.exp(-x / 180) + noise, 85.0, "temperature")
    assert np.isfinite(near.ttt[0]) and not np.isfinite(far.ttt[0]), (near, far)


def test_ecc_counts_need_no_confirmation() -> None:
    """A drip's first window that forecasts the ECC threshold warns at once (no earlier windows
    must agree: a drip must warn no later than predict_linear); temperatures are confirmed."""
    from gpuwarden.scheduler_agent.predictor.forecast import PERSIST, forecast_series, persist_for, raw_forecast

    assert persist_for("ecc") == 0 and persist_for("temperature") == PERSIST
    rng = np.random.default_rng(4)
    t = np.arange(0, 2400 + STEP / 2, STEP)
    rate = 1 / 300 + np.clip(t - 900, 0, None) * 2 / 300 / 600  # errors/s, growing after 15 min
    per_step = rng.poisson(rate * STEP)
    counts = np.convolve(per_step, np.ones(20), mode="full")[: t.size]  # errors in the last 300 s
    raw = [
        raw_forecast(t[: i + 1], counts[: i + 1], 10.0, 600, kind="ecc").seconds_to_threshold if t[i] >= 600 else None
        for i in range(t.size)
    ]
    fresh = [i for i in range(42, t.size) if raw[i] is not None and raw[i] != 0.0 and raw[i - 1] is None]
    assert fresh
    for i in fresh:
        got = forecast_series(t[: i + 1], counts[: i + 1], 10.0, window=600, kind="ecc").seconds_to_threshold
        assert got == raw[i]


def test_a_spike_at_the_end_after_an_older_one_is_not_over_the_threshold() -> None:
    """A plateau at 79 °C with a one-scrape spike four scrapes back and a two-scrape spike to
    87 °C at the end: not over the threshold (the alert needs three scrapes), and no crossing."""
    rng = np.random.default_rng(8)
    s = np.arange(-600.0, 0.0 + STEP / 2, STEP)
    y = 79 + rng.normal(0, 0.3, s.size)
    y[-5] += 7.0
    y[-2:] = [87.2, 87.7]
    fit = models.fit_batch(s, y, 85.0, "temperature")
    assert not fit.over[0] and not np.isfinite(fit.ttt[0]), fit
    # Three scrapes over it is a level, not a spike.
    y[-3] = 87.0
    assert models.fit_batch(s, y, 85.0, "temperature").over[0]


def test_a_clean_climb_is_never_a_cycle_in_any_confirming_window() -> None:
    """The service fits each GPU's window and the PERSIST windows before it on one grid (the
    earlier ones end in missing samples): a clean climb (rounding-level noise, as read back from
    Prometheus' JSON) must forecast the crossing in all of them: a missing sample is no fall."""
    from gpuwarden.scheduler_agent.predictor.forecast import PERSIST

    rng = np.random.default_rng(1)
    for _ in range(20):
        now = NOW + rng.uniform(0, 1000)
        t = now - 600 - PERSIST * STEP + STEP * np.arange(41 + PERSIST)
        y = 77 + (t - now) / 60 + rng.uniform(-1e-12, 1e-12, t.size)
        gpus = evaluate([SPEC], {"temperature": [({"gpu": "0", "uuid": "GPU-a"}, t, y)]}, {}, now, 600.0)
        f = gpus["GPU-a"].forecasts["temperature"]
        assert f.seconds_to_threshold is not None and f.model != "cycle", f


def test_the_service_and_the_csv_interface_agree() -> None:
    """health.evaluate (the agent, the whole fleet in one batch) and forecast_series (predict
    --csv) give each GPU the same forecast, confirmations included: noisy climbs with spikes at
    the end of the last window or of an earlier one."""
    from gpuwarden.scheduler_agent.predictor.forecast import PERSIST, forecast_series

    rng = np.random.default_rng(12)
    t = NOW - STEP * np.arange(41 + PERSIST)[::-1]
    series = {}
    for i in range(60):
        y = 72 + rng.uniform(0, 2) * (t - t[0]) / 60 + rng.normal(0, rng.uniform(0.2, 1.0), t.size)
        end = t.size - i % (PERSIST + 2)  # a two-scrape spike at the end of one of the windows
        y[end - 2 : end] += 9.0
        y[end - 6] += 9.0  # and an older one
        series[f"GPU-{i}"] = y
    gpus = evaluate([SPEC], {"temperature": _rows(series)}, {}, NOW, 600.0)
    for uuid, y in series.items():
        want = forecast_series(t, y, 85.0, 600.0, kind="temperature")
        got = gpus[uuid].forecasts["temperature"]
        assert got.seconds_to_threshold == want.seconds_to_threshold and got.model == want.model, (uuid, got, want)


def test_a_reported_crossing_is_held_like_a_firing_alert() -> None:
    """Confirmation gates the start of a warning only: once reported, a crossing stays reported
    while its window still forecasts one (health.hold_firing), and clears when it does not."""
    from gpuwarden.scheduler_agent.predictor.forecast import Forecast
    from gpuwarden.scheduler_agent.predictor.health import GpuHealth, hold_firing

    def health(f: Forecast) -> dict[str, GpuHealth]:
        return {"GPU-a": GpuHealth("GPU-a", "0", "n1:9786", NOW, {"temperature": f})}

    withheld = Forecast(85.0, 80.0, 80.2, 0.01, None, 1.0, 0.15, "linear", "receding: ...", withheld=480.0)
    gpus, firing = hold_firing(health(withheld), set())
    assert gpus["GPU-a"].forecasts["temperature"].seconds_to_threshold is None and firing == set()
    gpus, firing = hold_firing(health(withheld), {("GPU-a", "temperature")})
    held = gpus["GPU-a"].forecasts["temperature"]
    assert held.seconds_to_threshold == 480.0 and held.risk > 0.8 and gpus["GPU-a"].risk == held.risk
    assert firing == {("GPU-a", "temperature")}
    gone = Forecast(85.0, 80.0, 80.2, 0.0, None, 0.0, 0.15, "first-order", "levelling off below the threshold")
    gpus, firing = hold_firing(health(gone), firing)
    assert gpus["GPU-a"].forecasts["temperature"].seconds_to_threshold is None and firing == set()
