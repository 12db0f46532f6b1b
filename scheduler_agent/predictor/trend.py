"""Robust trend estimation over a recent window of samples.

Estimator: Theil–Sen (``scipy.stats.theilslopes``), fitted twice, on the whole window and on its
recent half, then one of two models is chosen (a line, or an exponential approach). Why this and not least squares
(what Prometheus' ``predict_linear`` does):

* Noise. GPU gauges jitter by a degree or a few watts from one scrape to the next. Theil–Sen's
  slope is the median of all pairwise slopes; on Gaussian noise it is almost as efficient as
  least squares (about 91 %), and scipy gives it a confidence interval (Sen's normal
  approximation, ties handled), which is what turns a slope into a *confidence* below. The
  interval is widened for lag-1 autocorrelated residuals (slow wander, windowed counts), which
  Sen's interval otherwise treats as independent evidence.
* Outliers. A single scrape taken during a kernel launch, or a short spike, moves a least-squares
  line arbitrarily far (breakdown point 0); Theil–Sen tolerates about 29 % outliers. Last-sample
  spikes matter most because ``predict_linear`` extrapolates from the window's end; the level we
  extrapolate from is the robust line's value at the last sample, not the raw last sample.
* Plateaus. A GPU that hits its power cap or thermal slowdown rises, then flattens below the
  critical line: temperature follows power through a first-order thermal time constant, so the
  approach is exponential. A straight line over the whole window still sees the rise and keeps
  forecasting a crossing. Comparing the recent half's slope with the whole window's detects
  the deceleration; when the recent slope is clearly smaller (DECEL_Z standard errors below, and
  under DECEL_RATIO of it, so noise on a steep ramp rarely trips it) we fit the exponential
  approach ``A - (A - y) e^(-t/tau)`` from the two slopes and forecast a crossing only if the
  asymptote ``A`` lies beyond the threshold. Otherwise the slope is the whole window's (more
  samples, narrower interval) and the level the recent half's line at the last sample (no lag
  when the climb bends upward). A third model, extrapolating the recent half's steeper slope on
  an accelerating climb, was tried and dropped: it warned ~1.5 min earlier on runaways but
  mistook slow load wander for runaways as often (bench/predictor_eval.py). Persistence across
  scrapes and the confidence gate live in forecast.py.

Alternatives weighed: Siegel's repeated medians (``scipy.stats.siegelslopes``) has a 50 %
breakdown point but no confidence interval in scipy and a noisier slope on clean Gaussian noise;
Huber regression needs an iterative solver and a scale tuning per metric. Neither handles the
plateau by itself; the two-window comparison does, whichever slope estimator sits under it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from scipy import stats

# Fewest samples a fit accepts: Theil–Sen's interval is meaningless on fewer.
MIN_SAMPLES = 5
# Two-sided coverage of the slope intervals (0.90 -> z = 1.645).
CI_LEVEL = 0.90
_Z = float(stats.norm.ppf(0.5 + CI_LEVEL / 2))
# The recent slope must sit this many of its standard errors below the window's slope to call
# the rise decelerating (1.0: about 84 % one-sided).
DECEL_Z = 1.0
# ... and below this fraction of it: noise alone rarely halves a steep ramp's slope.
DECEL_RATIO = 0.7


class InsufficientData(ValueError):
    """Too few samples in the window to fit a trend; wait for more scrapes."""


class _Latest(TypedDict):
    """The fields of a Trend that every model shares: where the data ends."""

    last_value: float
    t_last: float
    n: int


@dataclass(frozen=True)
class Trend:
    """A trend fitted as of ``t_last``.

    ``slope`` is in value units per second, ``slope_low``/``slope_high`` its CI_LEVEL interval.
    ``level`` is the robust estimate of the value at ``t_last`` (not the raw last sample).
    ``model`` is ``linear`` or ``decelerating`` (exponential approach to ``asymptote`` with time
    constant ``tau`` seconds).
    """

    slope: float
    slope_low: float
    slope_high: float
    level: float
    last_value: float
    t_last: float
    n: int
    model: str = "linear"
    asymptote: float | None = None
    tau: float | None = None

    @property
    def slope_sigma(self) -> float:
        """Standard error of the slope implied by its interval."""
        return (self.slope_high - self.slope_low) / (2 * _Z)


@dataclass(frozen=True)
class _Fit:
    slope: float
    low: float
    high: float
    level: float  # line's value at t_last
    mid: float  # median time of the fitted samples (where the slope is best estimated)


def _autocorrelation_inflation(resid: np.ndarray) -> float:
    """Factor that widens a slope interval for serially correlated residuals.

    Sen's interval assumes independent errors. Slow wander, curvature, and windowed counts
    (an ECC increase over 5 minutes, sampled every 15 s, shares most of its errors with the
    next sample) leave residuals correlated, and the interval far too narrow. With lag-1
    autocorrelation rho the effective sample size is n(1-rho)/(1+rho); the standard error
    grows by sqrt((1+rho)/(1-rho)).
    """
    r = resid - np.median(resid)
    denom = float(np.dot(r, r))
    if r.size < 4 or denom == 0.0:
        return 1.0
    rho = float(np.dot(r[1:], r[:-1])) / denom
    rho = min(max(rho, 0.0), 0.95)
    return math.sqrt((1 + rho) / (1 - rho))


def _theil_sen(t: np.ndarray, y: np.ndarray, t_last: float) -> _Fit:
    # Times are centred on t_last: epoch seconds squared lose precision in the intercept.
    tc = t - t_last
    if np.ptp(y) == 0.0:
        # Constant data: scipy's interval degenerates with a warning on all-ties input.
        return _Fit(0.0, 0.0, 0.0, float(y[-1]), float(np.median(t)))
    slope, intercept, low, high = stats.theilslopes(y, tc, alpha=CI_LEVEL)
    k = _autocorrelation_inflation(y - (intercept + slope * tc))
    low, high = slope - k * (slope - low), slope + k * (high - slope)
    return _Fit(float(slope), float(low), float(high), float(intercept), float(np.median(t)))


def fit_trend(
    times: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    window: float | None = None,
    min_samples: int = MIN_SAMPLES,
) -> Trend:
    """Fits the trend of ``values`` over the last ``window`` seconds (all samples when None).

    Samples need not be evenly spaced; NaN samples (gaps, stale markers) are dropped.
    The window is inclusive at both ends, like Prometheus 2.x range selectors.
    Raises InsufficientData when fewer than ``min_samples`` remain.
    """
    t = np.asarray(times, dtype=float)
    y = np.asarray(values, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"times and values must be 1-D and equally long, got {t.shape} and {y.shape}")
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if t.size and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, y = t[order], y[order]
    if t.size < min_samples:
        raise InsufficientData(f"{t.size} samples, need at least {min_samples}")
    t_last = float(t[-1])
    if window is not None:
        keep = t >= t_last - window
        t, y = t[keep], y[keep]
        if t.size < min_samples:
            raise InsufficientData(f"{t.size} samples within the last {window:g}s, need at least {min_samples}")

    full = _theil_sen(t, y, t_last)
    last_value = float(y[-1])
    span = t_last - float(t[0])
    recent_mask = t >= t_last - span / 2
    base = _Latest(last_value=last_value, t_last=t_last, n=int(t.size))
    if int(recent_mask.sum()) < min_samples or span <= 0:
        return Trend(full.slope, full.low, full.high, full.level, **base)
    recent = _theil_sen(t[recent_mask], y[recent_mask], t_last)

    if (
        full.slope > 0
        and full.slope - recent.slope > DECEL_Z * (recent.high - recent.slope) / _Z
        and recent.slope < DECEL_RATIO * full.slope
    ):
        # Decelerating rise: model the first-order approach y(t) = A - B e^(-t/tau). Its slope
        # decays by e^(-dt/tau) between the two fits' centre times.
        dt = recent.mid - full.mid
        ratio = recent.slope / full.slope
        if ratio <= 0.0 or dt <= 0:
            # Already flat (or turning down): the plateau is here, at the recent level.
            return Trend(
                recent.slope,
                recent.low,
                recent.high,
                recent.level,
                model="decelerating",
                asymptote=max(recent.level, float(np.median(y[recent_mask]))),
                tau=None,
                **base,
            )
        ratio = min(ratio, 0.999)
        tau = dt / -math.log(ratio)
        asymptote = recent.level + recent.slope * tau
        return Trend(
            recent.slope,
            recent.low,
            recent.high,
            recent.level,
            model="decelerating",
            asymptote=asymptote,
            tau=tau,
            **base,
        )
    # Slope from the whole window (twice the samples: the narrower interval), level from the
    # recent half's line: on a climb that bends upward the whole window's line lags below the
    # data at its end, the recent line does not.
    return Trend(full.slope, full.low, full.high, recent.level, **base)
