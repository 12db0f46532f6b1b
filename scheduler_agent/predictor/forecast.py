"""Time to threshold, its confidence, and a 0-1 risk.

``forecast_series``/``raw_forecast`` (the CSV interface, the bench, the service) fit the
per-kind models of models.py (first-order approach, line, accelerating climb; held plateaus;
spikes ignored), gate them by confidence and confirm them by the scrapes before (``confirm``).

Confidence is the evidence that the metric really moves toward the threshold (models.py says how
each kind computes it), reported as 2·Φ(z) − 1: one minus the two-sided p-value of "no trend",
clipped at 0. A forecast whose confidence is below ``min_confidence`` is not a forecast:
``seconds_to_threshold`` is None. That gate is what keeps noisy plateaus from raising alarms: a
least-squares extrapolation over the same window (``predict_linear``) has no such notion and
alarms whenever noise tilts its line.

Risk combines urgency and confidence: ``confidence · exp(−seconds_to_threshold / RISK_SCALE)``
(one hour scale: 20 minutes out at confidence 0.85 gives 0.61), plus a proximity term so a
metric sitting just under its threshold is never scored zero, and 1.0 once it is over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import models
from .models import MIN_SAMPLES

# Forecasts less sure than this are withheld (seconds_to_threshold None). Chosen on the
# bench's traces (bench/predictor_eval.py, seed 6: 0.99 removed 5 false alarms of 95 at H =
# 10 min with no later warning than 0.9); 0.99 ≈ slope significant at p < 0.01. ECC counts
# use the looser models.ECC_MIN_CONFIDENCE.
MIN_CONFIDENCE = 0.99
# Earlier scrapes whose forecasts must also predict a crossing (see confirm()): like the shipped
# forecast alerts' ``for: 1m`` at a 15 s scrape, a crossing must be forecast from the 5 window
# ends of the last minute. On the bench (bench/predictor_eval.py, seed 6, H = 10 min) each step
# trades false alarms for lead: 2 -> 102 at 7.5 min, 3 -> 90 at 7.5, 4 -> 83 at 7.0 (predict_linear:
# 157 at 6.9), 5 -> 81 at 6.8.
PERSIST = 4
# A crossing forecast later now than the oldest confirming window forecast it, by more than this
# (seconds: two scrapes at 15 s), is receding and not confirmed (see confirm()). Seed 6, H = 10
# min: 81 -> 78 false alarms at the same lead and misses; it costs continuity: the share of
# scrapes still warned after a runaway's first warning fell from 0.78 to 0.66 (bench column).
# 1 s: 76 false alarms, 0.55 of scrapes.
RECEDE_SLACK = 30.0
# Urgency scale of the risk score, seconds.
RISK_SCALE = 3600.0
# Proximity band: within this fraction of the threshold a flat metric still carries some risk.
PROXIMITY_BAND = 0.10
PROXIMITY_WEIGHT = 0.3


class InsufficientData(ValueError):
    """Too few samples in the window to forecast; wait for more scrapes."""


@dataclass(frozen=True)
class Forecast:
    """A forecast as of the window's last sample against an upper ``threshold``."""

    threshold: float
    current: float  # robust level now
    last_value: float  # raw last sample
    slope_per_second: float
    seconds_to_threshold: float | None
    confidence: float
    risk: float
    model: str
    reason: str
    # A crossing this window forecast that confirmation withheld (seconds), else None: what a
    # caller that remembers an earlier confirmed forecast may keep reporting (health.hold_firing).
    withheld: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "seconds_to_threshold": self.seconds_to_threshold,
            "confidence": round(self.confidence, 4),
            "slope_per_second": self.slope_per_second,
            "risk": round(self.risk, 4),
            "current": self.current,
            "last_value": self.last_value,
            "threshold": self.threshold,
            "model": self.model,
            "reason": self.reason,
        }


def risk_score(seconds_to_threshold: float | None, confidence: float, level: float, threshold: float) -> float:
    """0-1: confidence·urgency of a predicted crossing, floored by proximity to the threshold."""
    forecast_term = 0.0
    if seconds_to_threshold is not None:
        forecast_term = confidence * math.exp(-max(0.0, seconds_to_threshold) / RISK_SCALE)
    proximity = 0.0
    band = abs(threshold) * PROXIMITY_BAND
    if band > 0:
        proximity = PROXIMITY_WEIGHT * min(1.0, max(0.0, (level - (threshold - band)) / band))
    return max(0.0, min(1.0, max(forecast_term, proximity)))


def _window_rows(
    t: np.ndarray, y: np.ndarray, th: np.ndarray | None, window: float | None, lags: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[bool]]:
    """One row per forecast time (the last sample, then ``lags`` earlier ones), each holding the
    samples of its window (NaN-padded on the left), times relative to its own end."""
    n = t.size
    rows_s: list[np.ndarray] = []
    rows_y: list[np.ndarray] = []
    rows_th: list[np.ndarray] = []
    enough: list[bool] = []
    for k in range(lags + 1):
        e = n - 1 - k
        if e < 0:
            rows_s.append(np.empty(0))
            rows_y.append(np.empty(0))
            rows_th.append(np.empty(0))
            enough.append(False)
            continue
        lo = 0 if window is None else int(np.searchsorted(t, t[e] - window, side="left"))
        rows_s.append(t[lo : e + 1] - t[e])
        rows_y.append(y[lo : e + 1])
        rows_th.append(th[lo : e + 1] if th is not None else np.empty(0))
        enough.append(e + 1 - lo >= MIN_SAMPLES)
    m = max(1, max(r.size for r in rows_s))
    S = np.full((len(rows_s), m), np.nan)
    Y = np.full((len(rows_s), m), np.nan)
    TH = np.zeros((len(rows_s), m)) if th is not None else None
    for i, (rs, ry) in enumerate(zip(rows_s, rows_y, strict=True)):
        if rs.size:
            S[i, m - rs.size :], Y[i, m - ry.size :] = rs, ry
            if TH is not None:
                TH[i, m - rs.size :] = rows_th[i]
    return S, Y, TH, enough


def forecasts_from_fit(
    fit: models.BatchFit,
    threshold: np.ndarray | float,
    last_values: np.ndarray,
    min_confidence: float,
) -> list[Forecast]:
    """Forecast objects from a batch fit (one per row), the confidence gate applied."""
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), fit.level.shape)
    out: list[Forecast] = []
    for i in range(fit.level.size):
        T, level, slope, conf = float(thr[i]), float(fit.level[i]), float(fit.slope[i]), float(fit.confidence[i])
        name = models.MODEL_NAMES[int(fit.model[i])]
        if fit.over[i]:
            out.append(Forecast(T, level, float(last_values[i]), slope, 0.0, 1.0, 1.0, name, "over the threshold now"))
            continue
        a, tau, ttt_f = float(fit.asymptote[i]), float(fit.tau[i]), float(fit.ttt[i])
        ttt: float | None = ttt_f if math.isfinite(ttt_f) else None
        if name == "held" and ttt is None:
            reason = "held by the firmware (a slowdown or power cap is active)"
        elif name == "cycle":
            reason = f"repeating a load cycle (rising again, still below its last peak {a:.4g})"
        elif slope <= 0:
            reason = "not rising"
        elif name == "first-order" and a <= T:
            reason = f"levelling off below the threshold (asymptote {a:.4g}, time constant {tau:.0f}s)"
        elif name == "first-order":
            reason = f"approaching {a:.4g} with time constant {tau:.0f}s"
        else:
            reason = f"{name} trend"
        if ttt is not None and conf < min_confidence:
            reason = f"trend not significant (confidence {conf:.2f} < {min_confidence:.2f})"
            ttt = None
        risk = risk_score(ttt, conf, level, T)
        out.append(Forecast(T, level, float(last_values[i]), slope, ttt, conf, risk, name, reason))
    return out


def _forecast_rows(
    t: np.ndarray,
    y: np.ndarray,
    threshold: float,
    window: float | None,
    min_confidence: float,
    kind: str | None,
    throttle: np.ndarray | None,
    lags: int,
) -> list[Forecast | None]:
    kind = kind or models.guess_kind(y, threshold)
    S, Y, TH, enough = _window_rows(t, y, throttle, window, lags)
    fit = models.fit_batch(S, Y, threshold, kind, TH)
    last = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in Y])
    fcs = forecasts_from_fit(fit, threshold, last, models.min_confidence_for(kind, min_confidence))
    return [f if ok else None for f, ok in zip(fcs, enough, strict=True)]


def _clean(
    times: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    throttle: Sequence[float] | np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    t = np.asarray(times, dtype=float)
    y = np.asarray(values, dtype=float)
    th = None if throttle is None else np.asarray(throttle, dtype=float)
    if t.shape != y.shape or t.ndim != 1 or (th is not None and th.shape != t.shape):
        raise ValueError(f"times and values must be 1-D and equally long, got {t.shape} and {y.shape}")
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    th = th[ok] if th is not None else None
    if t.size and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, y = t[order], y[order]
        th = th[order] if th is not None else None
    return t, y, th


def raw_forecast(
    t: np.ndarray,
    y: np.ndarray,
    threshold: float,
    window: float | None,
    min_confidence: float = MIN_CONFIDENCE,
    kind: str | None = None,
    throttle: np.ndarray | None = None,
) -> Forecast:
    """One forecast as of the last of the (sorted, finite) samples, without persistence.

    ``kind``: one of models.KINDS (None: guessed from the values, see models.guess_kind).
    Raises InsufficientData when the window holds fewer than MIN_SAMPLES samples.
    """
    t, y, th = _clean(t, y, throttle)
    f = _forecast_rows(t, y, threshold, window, min_confidence, kind, th, 0)[0]
    if f is None:
        raise InsufficientData(f"{t.size} samples in the window, need at least {MIN_SAMPLES}")
    return f


def persist_for(kind: str, persist: int = PERSIST) -> int:
    """Earlier scrapes that must agree for ``kind``: none for ECC counts (every error matters and
    a drip must warn no later than ``predict_linear``), ``persist`` otherwise."""
    return 0 if kind == "ecc" else persist


def confirm(current: Forecast, earlier: Sequence[Forecast | None], ages: Sequence[float] | None = None) -> Forecast:
    """Withholds a predicted crossing unless the forecasts at the ``earlier`` scrapes (made
    ``ages`` seconds before ``current``, oldest last) predicted one too, and the oldest of them
    predicted it no sooner than ``current`` does (within RECEDE_SLACK).

    A crossing predicted from one window only is most often noise lining up; requiring the
    previous PERSIST scrapes to agree (like an alert's ``for:``, but judged from history already
    in hand, so no warning waits for later scrapes) removes those; what it costs is the warnings
    whose crossing shows in fewer windows (a climb that starts fast: see the PERSIST sweep in
    bench/predictor_eval.py). A crossing that recedes over those scrapes is an approach levelling
    off (a load step settling, a load cycle's rise), while a runaway's forecast crossing stays
    put or comes nearer. Only the oldest is compared: the soonest of several noisy forecasts is
    biased early, and withheld real ramps. None in ``earlier`` (too little history then) counts
    as agreeing; "over the threshold now" needs no confirmation.
    """
    ttt = current.seconds_to_threshold
    if ttt is None or ttt == 0.0:
        return current
    why = ""
    old = earlier[-1] if earlier else None
    if any(f is not None and f.seconds_to_threshold is None for f in earlier):
        why = f"not confirmed by the previous {len(earlier)} scrapes"
    elif old is not None and old.seconds_to_threshold is not None and ages is not None:
        then = old.seconds_to_threshold - ages[-1]
        if ttt > then + RECEDE_SLACK:
            why = f"receding: forecast {ttt - then:.0f}s later than {ages[-1]:.0f}s ago"
    if not why:
        return current
    return Forecast(
        current.threshold,
        current.current,
        current.last_value,
        current.slope_per_second,
        None,
        current.confidence,
        risk_score(None, current.confidence, current.current, current.threshold),
        current.model,
        f"{why} ({current.reason})",
        withheld=ttt,
    )


def forecast_series(
    times: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    threshold: float,
    window: float | None = None,
    min_confidence: float = MIN_CONFIDENCE,
    persist: int = PERSIST,
    kind: str | None = None,
    throttle: Sequence[float] | np.ndarray | None = None,
) -> Forecast:
    """Forecast as of the last sample, confirmed by the ``persist`` scrapes before it (ECC
    counts: by none, see persist_for).

    ``kind``: one of models.KINDS, None to guess (models.guess_kind). ``throttle``: 0/1 per
    sample, 1 where a slowdown or power cap was active (gpu_throttle_active), or None.
    Raises InsufficientData when the last window holds too few samples.
    """
    t, y, th = _clean(times, values, throttle)
    kind = kind or models.guess_kind(y, threshold)
    rows = _forecast_rows(t, y, threshold, window, min_confidence, kind, th, persist_for(kind, persist))
    current = rows[0]
    if current is None:
        n = t.size if window is None else int(np.sum(t >= t[-1] - window)) if t.size else 0
        raise InsufficientData(f"{n} samples in the window, need at least {MIN_SAMPLES}")
    ages = [float(t[-1] - t[t.size - 1 - k]) if t.size - 1 - k >= 0 else 0.0 for k in range(1, len(rows))]
    return confirm(current, rows[1:], ages)
