"""Time to threshold, its confidence, and a 0-1 risk from one fitted trend.

Confidence is the evidence that the metric really moves toward the threshold: from the slope's
interval (Theil–Sen, see trend.py) we take z = slope / stderr and report 2·Φ(z) − 1, i.e. one
minus the two-sided p-value of "no trend", clipped at 0. A clean line gives ~1, pure noise
gives values spread over 0..0.7 and a falling or flat series gives 0. A forecast whose
confidence is below ``min_confidence`` is not a forecast: ``seconds_to_threshold`` is None.
That gate is what keeps noisy plateaus from raising alarms: a least-squares extrapolation over
the same window (``predict_linear``) has no such notion and alarms whenever noise tilts its line.

Risk combines urgency and confidence: ``confidence · exp(−seconds_to_threshold / RISK_SCALE)``
(one hour scale: 20 minutes out at confidence 0.85 gives 0.61), plus a proximity term so a
metric sitting just under its threshold is never scored zero, and 1.0 once it is over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .trend import InsufficientData, Trend, fit_trend

# Forecasts less sure than this are withheld (seconds_to_threshold None). Chosen on the
# bench's traces (bench/predictor_eval.py); 0.9 ≈ slope significant at p < 0.1.
MIN_CONFIDENCE = 0.9
# Earlier scrapes whose forecasts must also predict a crossing (see confirm()).
PERSIST = 2
# Urgency scale of the risk score, seconds.
RISK_SCALE = 3600.0
# Proximity band: within this fraction of the threshold a flat metric still carries some risk.
PROXIMITY_BAND = 0.10
PROXIMITY_WEIGHT = 0.3
# Fraction of the recent samples that must be over the threshold to call it crossed already.
_OVER_FRACTION = 0.5


@dataclass(frozen=True)
class Forecast:
    """A forecast as of ``trend.t_last`` against an upper ``threshold``."""

    threshold: float
    current: float  # robust level now
    last_value: float  # raw last sample
    slope_per_second: float
    seconds_to_threshold: float | None
    confidence: float
    risk: float
    model: str
    reason: str

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


def trend_confidence(trend: Trend) -> float:
    """2·Φ(slope/stderr) − 1, clipped to [0, 1]."""
    sigma = trend.slope_sigma
    if trend.slope <= 0:
        return 0.0
    if sigma <= 0:
        return 1.0
    return max(0.0, min(1.0, 2.0 * float(stats.norm.cdf(trend.slope / sigma)) - 1.0))


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


def forecast(
    trend: Trend,
    threshold: float,
    recent_values: Sequence[float] | np.ndarray | None = None,
    min_confidence: float = MIN_CONFIDENCE,
) -> Forecast:
    """Forecast when ``trend`` reaches ``threshold`` (an upper bound: alerts fire at >= it).

    ``recent_values``: the last few raw samples, used to tell "already over" from a spike.
    """
    level = trend.level
    confidence = trend_confidence(trend)
    if recent_values is not None and len(recent_values):
        over = float(np.mean(np.asarray(recent_values, dtype=float) >= threshold))
    else:
        over = 1.0 if trend.last_value >= threshold else 0.0
    if level >= threshold and over >= _OVER_FRACTION:
        return Forecast(
            threshold, level, trend.last_value, trend.slope, 0.0, 1.0, 1.0, trend.model, "over the threshold now"
        )

    ttt: float | None = None
    if trend.slope <= 0:
        reason = "not rising"
    elif trend.model == "decelerating":
        a, tau = trend.asymptote, trend.tau
        if a is None or a <= threshold:
            reason = f"levelling off below the threshold (asymptote {a:.4g})" if a is not None else "levelling off"
        elif tau is None:
            reason = "levelling off"
        else:
            ttt = tau * math.log((a - level) / (a - threshold)) if a > level else None
            reason = f"approaching {a:.4g} with time constant {tau:.0f}s"
    else:
        ttt = max(0.0, (threshold - level) / trend.slope)
        reason = f"{trend.model} trend"
    if ttt is not None and confidence < min_confidence:
        reason = f"trend not significant (confidence {confidence:.2f} < {min_confidence:.2f})"
        ttt = None
    risk = risk_score(ttt, confidence, level, threshold)
    return Forecast(threshold, level, trend.last_value, trend.slope, ttt, confidence, risk, trend.model, reason)


def raw_forecast(
    t: np.ndarray, y: np.ndarray, threshold: float, window: float | None, min_confidence: float = MIN_CONFIDENCE
) -> Forecast:
    """One forecast as of the last of the (sorted, finite) samples, without persistence."""
    return forecast(fit_trend(t, y, window), threshold, y[-3:], min_confidence)


def confirm(current: Forecast, earlier: Sequence[Forecast | None]) -> Forecast:
    """Withholds a predicted crossing unless the forecasts at the ``earlier`` scrapes predicted one too.

    A crossing predicted from one window only is most often noise lining up; requiring the
    previous PERSIST scrapes to agree (like an alert's ``for:``, but judged from history already
    in hand, so no warning is delayed by the wait) removes those at the cost of nothing on a
    real trend. None in ``earlier`` (too little history then) counts as agreeing; "over the
    threshold now" needs no confirmation.
    """
    if current.seconds_to_threshold is None or current.seconds_to_threshold == 0.0:
        return current
    for f in earlier:
        if f is not None and f.seconds_to_threshold is None:
            return Forecast(
                current.threshold,
                current.current,
                current.last_value,
                current.slope_per_second,
                None,
                current.confidence,
                risk_score(None, current.confidence, current.current, current.threshold),
                current.model,
                f"not confirmed by the previous {len(earlier)} scrapes ({current.reason})",
            )
    return current


def forecast_series(
    times: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    threshold: float,
    window: float | None = None,
    min_confidence: float = MIN_CONFIDENCE,
    persist: int = PERSIST,
) -> Forecast:
    """Forecast as of the last sample, confirmed by the ``persist`` scrapes before it.

    Raises trend.InsufficientData when the last window holds too few samples.
    """
    t = np.asarray(times, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if t.size and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, y = t[order], y[order]
    current = raw_forecast(t, y, threshold, window, min_confidence)
    if current.seconds_to_threshold is None or current.seconds_to_threshold == 0.0:
        return current
    earlier: list[Forecast | None] = []
    for k in range(1, persist + 1):
        try:
            earlier.append(raw_forecast(t[:-k], y[:-k], threshold, window, min_confidence))
        except InsufficientData:
            earlier.append(None)
    return confirm(current, earlier)
