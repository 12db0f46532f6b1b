"""Per-kind forecast models, fitted to many series at once (one numpy pass per batch).

Why models and not a line. ``predict_linear`` (and a robust line) extrapolate the current slope,
so every series that *approaches* its threshold without crossing alarms: a GPU settling just
below it, a climb held on a plateau by the firmware, a short spike, a load cycle. What decides
whether a series will cross is its physics:

* temperature: under a steady load a GPU's die is a first-order thermal system (heat capacity
  C, thermal resistance R to the coolant): ``T(t) = A - (A - T0) e^(-t/tau)`` with the
  asymptote ``A = T_coolant + R·P`` and ``tau = R·C`` (about a minute to tens of minutes). The
  asymptote, not the slope, says whether it crosses. We fit
  ``y(s) = L + r · tau · (1 - e^(-s/tau))`` (s = time relative to the last sample, L the level
  now, r the slope now, asymptote ``A = L + r·tau``) for tau on a fixed grid; for fixed tau it
  is linear in (L, r), so each tau is a closed-form weighted least-squares fit of a handful of
  running sums. tau = inf is the straight line (a cooling failure with a far asymptote looks
  like one within a window), negative tau an accelerating climb (leakage feedback). A curve
  is chosen only when it beats the line by more than ONSET_PENALTY noise variances per extra
  parameter (BIC-like), so a straight runaway keeps the line's early warning. tau itself is
  uncertain: every time constant whose fit is within PLAUSIBLE noise variances of the best is
  kept, and the forecast is the latest crossing among them (none if one of them levels off
  below the threshold): a crossing is forecast only when the asymptote is above the threshold
  for every time constant the window cannot rule out. Two physical limits on that veto: a
  time constant longer than PLAUSIBLE_TAU_MAX (GPU heat sinks settle within minutes; a
  half-hour curve is a line within the window) does not veto, and a curve levelling off
  within NEAR_SIGMAS noise sigmas under the threshold does not either: its noise holds it
  over the line long enough to fire the alert, so it "crosses" when it gets that close.
* power: follows the load with no thermal lag, capped by the power limit. Same family (a ramp
  that levels off at the cap is a fast first-order approach), judged the same way.
* memory (used/total): allocations grow or stay; a leak is linear. Line only.
* ecc (correctable errors counted over the rule's window): integer Poisson counts whose rate
  may grow; a line through the counts, weighted by their Poisson variance, with the looser
  ECC_MIN_CONFIDENCE gate (counts are coarse and every error matters: an ECC drip must warn
  no later than ``predict_linear``).

Assumptions, and what guards each one:

* One regime per fit. A load step inside the window breaks any single curve, so each series'
  window is split at the onset (any sample with ONSET_MIN_SAMPLES after it) that minimises the
  residuals of a line before it plus the model after it, plus ONSET_PENALTY per parameter; the
  noise variance is estimated robustly from first differences. ECC counts are not split.
* Spikes are not the signal: a sample far (SPIKE_SIGMAS) from the running median of its five
  neighbours gets no weight (one- or two-scrape spikes; a kernel launch caught mid-scrape).
* Confidence: with the noise variance from the residuals (widened for lag-1 autocorrelation,
  which windowed counts and slow wander have), z is the slope's t-value on a line, and the
  smaller of that and ``(A - threshold) / se(A)`` on a curve: a crossing is forecast only when
  the asymptote is above the threshold *with confidence*. Reported as 2·Φ(z) − 1 and gated by
  ``min_confidence``.
* Load cycles: a window whose running median fell by FALL_SIGMAS noise sigmas from a peak and
  now rises again is a load cycle repeating (training steps, evaluation phases): no crossing is
  forecast while the level is still below the peak before the fall; once it passes that peak
  the climb is judged as usual (a cycle whose peaks grow). Runaways and settling approaches
  never fall by that much; a spike does not move the running median.
* Firmware holds: where ``gpu_throttle_active`` is 1 at the last samples (a thermal slowdown or
  power cap is active), the climb before it is not extrapolated: the series is fitted only over
  the throttled stretch, and not forecast at all until HELD_MIN_SAMPLES of it exist.

Cost: O(G·n·K) multiply-adds for G series of n samples and K grid points, done as a few matrix
products (chunks of CHUNK rows bound the memory); no per-series Python loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

KINDS = ("temperature", "power", "memory", "ecc")

# Time constants tried, seconds: first-order approaches from 45 s to 40 min, the line (inf),
# and accelerating climbs (negative: e-folding every 10 to 40 min).
TAUS = np.array([45, 60, 90, 120, 180, 240, 360, 480, 720, 960, 1440, 2400, np.inf, -2400, -1200, -600], dtype=float)
_LINE = int(np.flatnonzero(np.isinf(TAUS))[0])
# Model choice: each parameter (the curve's tau, an onset and the line before it) must pay for
# itself by lowering the residual sum of squares by this many noise variances (about BIC's
# log n for a 10-minute window at a 15 s step).
ONSET_PENALTY = 4.0
ONSET_MIN_SAMPLES = 8
# Time constants whose fit is within this many noise variances of the best stay plausible.
PLAUSIBLE = 2.0
# Longer time constants still fit, but never veto a crossing (see the docstring), seconds.
PLAUSIBLE_TAU_MAX = 1440.0
# An asymptote this many noise sigmas (or fewer) under the threshold is not a safe one.
NEAR_SIGMAS = 2.0
SPIKE_SIGMAS = 5.0
# A fall of this many scrape-noise sigmas (running median of five) marks a load cycle.
FALL_SIGMAS = 6.0
HELD_MIN_SAMPLES = 5
ECC_MIN_CONFIDENCE = 0.5
MIN_SAMPLES = 5
ECC_GUESS_MAX_THRESHOLD = 50.0
CHUNK = 512

MODEL_LINEAR, MODEL_FIRST_ORDER, MODEL_ACCEL, MODEL_HELD, MODEL_NONE, MODEL_CYCLE = 0, 1, 2, 3, 4, 5
MODEL_NAMES = ("linear", "first-order", "accelerating", "held", "none", "cycle")


@dataclass(frozen=True)
class BatchFit:
    """Per-row results of ``fit_batch`` (arrays of length G)."""

    level: np.ndarray  # fitted value at the last sample
    slope: np.ndarray  # fitted slope at the last sample, per second
    slope_se: np.ndarray
    asymptote: np.ndarray  # inf for a line or accelerating climb with r > 0; a cycle's last peak
    tau: np.ndarray
    ttt: np.ndarray  # seconds to threshold of the point forecast (inf: never), 0 when over now
    confidence: np.ndarray  # 0-1
    model: np.ndarray  # MODEL_* codes
    over: np.ndarray  # bool: over the threshold now (robust level and most recent samples)
    n: np.ndarray  # samples fitted


def _psi(s: np.ndarray, tau: float) -> np.ndarray:
    """tau·(1 − e^(−s/tau)), s <= 0: the model's shape with unit slope at s = 0 (s for tau = inf)."""
    if np.isinf(tau):
        return s
    with np.errstate(over="ignore"):
        return tau * -np.expm1(-s / tau)


def _robust_noise(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Scrape-noise sigma per row from first differences (a trend or one step barely moves it)."""
    d = np.where(valid[:, 1:] & valid[:, :-1], np.diff(y, axis=1), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(d, axis=1, keepdims=True)
        mad = np.nanmedian(np.abs(d - med), axis=1)
    out: np.ndarray = np.nan_to_num(1.4826 * mad / np.sqrt(2.0), nan=0.0)
    return out


def _running_median(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median of each sample and its four neighbours (NaN where missing). The last two samples
    are compared with the level before the last three (padding), so a jump there counts as a
    spike until it lasts three scrapes."""
    yy = np.where(valid, y, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # The level before the last three samples (median of the five before them), so that an
        # older spike among the padding cannot make a new one look like the level.
        before = np.nanmedian(yy[:, -8:-3], axis=1, keepdims=True)
        pad = np.concatenate([yy[:, 2:4], yy, before, before], axis=1)
        med: np.ndarray = np.nanmedian(sliding_window_view(pad, 5, axis=1), axis=2)
    return med


def _spikes(y: np.ndarray, valid: np.ndarray, sigma: np.ndarray, med: np.ndarray) -> np.ndarray:
    """Samples far from the running median of five (``med``): spikes of one or two scrapes."""
    dev = np.abs(np.where(valid, y, np.nan) - med)
    out: np.ndarray = valid & (dev > SPIKE_SIGMAS * np.maximum(sigma, 1e-12)[:, None])
    return out


def _peak_before_fall(med: np.ndarray, valid: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The highest (running-median) level the window reached before its last fall of at least
    FALL_SIGMAS scrape-noise sigmas, per row; -inf where the window never fell that far. A
    series that fell and now rises again is repeating a load cycle until it passes that peak."""
    sm = np.where(valid & np.isfinite(med), med, -np.inf)
    top = np.maximum.accumulate(sm, axis=1)
    with np.errstate(invalid="ignore"):
        fell = np.isfinite(sm) & (top - sm >= FALL_SIGMAS * np.maximum(sigma, 1e-12)[:, None])
    out: np.ndarray = np.where(fell, top, -np.inf).max(axis=1)
    return out


def fit_batch(
    s: np.ndarray,
    y: np.ndarray,
    threshold: np.ndarray | float,
    kind: str = "temperature",
    throttle: np.ndarray | None = None,
    noise_floor: float = 0.0,
) -> BatchFit:
    """Fits every row of ``y`` (G×n, NaN = missing) at times ``s`` (G×n or n, seconds relative to
    each row's last sample, <= 0) and forecasts against ``threshold`` (scalar or G)."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    s = np.broadcast_to(np.asarray(s, dtype=float), y.shape)
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), (y.shape[0],))
    th = None if throttle is None else np.broadcast_to(np.asarray(throttle, dtype=float), y.shape)
    parts = [
        _fit_chunk(
            s[i : i + CHUNK],
            y[i : i + CHUNK],
            thr[i : i + CHUNK],
            kind,
            None if th is None else th[i : i + CHUNK],
            noise_floor,
        )
        for i in range(0, y.shape[0], CHUNK)
    ]
    return BatchFit(*(np.concatenate([getattr(p, f) for p in parts]) for f in BatchFit.__dataclass_fields__))


def _fit_chunk(
    s: np.ndarray, y: np.ndarray, thr: np.ndarray, kind: str, throttle: np.ndarray | None, noise_floor: float
) -> BatchFit:
    g, n = y.shape
    valid = np.isfinite(s) & np.isfinite(y)
    held = np.zeros(g, dtype=bool)
    if throttle is not None:
        # Length of the run of throttled samples that ends at the last sample.
        on = (np.nan_to_num(throttle, nan=0.0) > 0) & valid
        off_idx = np.where(~on & valid, np.arange(n)[None, :], -1).max(axis=1)
        run = np.where(on, np.arange(n)[None, :] > off_idx[:, None], False)
        held = run.sum(axis=1) > 0
        restrict = held[:, None] & ~run
        valid &= ~restrict
    y0 = np.where(valid, y, 0.0)
    s0 = np.where(valid, s, 0.0)

    sigma = _robust_noise(y, valid)
    if kind == "ecc":
        # Poisson counts: the variance is the count (at least one error's worth).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            typical = np.nan_to_num(np.nanmedian(np.where(valid, y, np.nan), axis=1), nan=0.0)
            # One error's worth in the series' own unit (1 for counts, 1/300 for a 5-minute rate).
            steps = np.abs(np.diff(np.where(valid, y, np.nan), axis=1))
            unit = np.nan_to_num(np.nanmin(np.where(steps > 0, steps, np.nan), axis=1), nan=1.0)
        sigma = np.maximum(sigma, unit * np.sqrt(np.maximum(typical / unit, 1.0)))
    sigma = np.maximum(sigma, max(noise_floor, 1e-9) * np.maximum(1.0, np.abs(thr)))
    med = _running_median(y, valid) if n >= 5 else np.where(valid, y, np.nan)
    w = valid & ~_spikes(y, valid, sigma, med)
    wf = w.astype(float)

    taus = TAUS if kind in ("temperature", "power") else TAUS[_LINE : _LINE + 1]
    psi = np.stack([_psi(s0, t) for t in taus], axis=2)  # (g, n, K)
    psi = np.where(np.isfinite(psi), psi, 0.0)

    # Post-onset fits for every onset j (samples j..n-1) from suffix sums: (g, n, K).
    def suffix(a: np.ndarray) -> np.ndarray:
        return np.flip(np.cumsum(np.flip(a, axis=1), axis=1), axis=1)

    wy = wf * y0
    sw, sy, syy = suffix(wf), suffix(wy), suffix(wy * y0)
    wpsi = wf[:, :, None] * psi
    sp, spp, spy = suffix(wpsi), suffix(wpsi * psi), suffix(wpsi * y0[:, :, None])
    swk, syk = sw[:, :, None], sy[:, :, None]
    det = swk * spp - sp * sp
    ok = (det > 1e-12 * np.maximum(swk * spp, 1e-300)) & (swk >= MIN_SAMPLES)
    with np.errstate(all="ignore"):
        r = np.where(ok, (swk * spy - sp * syk) / det, 0.0)
        lv = np.where(ok, (syk - r * sp) / np.maximum(swk, 1e-300), 0.0)
    sse = np.where(ok, np.maximum(syy[:, :, None] - lv * syk - r * spy, 0.0), np.inf)

    # The previous regime (samples before j): a line, from prefix sums.
    def prefix(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((a.shape[0], 1)), np.cumsum(a, axis=1)[:, :-1]], axis=1)

    pw, ps, pss = prefix(wf), prefix(wf * s0), prefix(wf * s0 * s0)
    py, psy, pyy = prefix(wy), prefix(wy * s0), prefix(wy * y0)
    with np.errstate(all="ignore"):
        pdet = pw * pss - ps * ps
        pb = np.where(pdet > 0, (pw * psy - ps * py) / pdet, 0.0)
        pa = np.where(pw > 0, (py - pb * ps) / np.maximum(pw, 1e-300), 0.0)
    sse_pre = np.maximum(pyy - pa * py - pb * psy, 0.0)
    # An onset needs a few samples before it and ONSET_MIN_SAMPLES after it (a spike at the end
    # of the window is not a new regime); ECC counts are judged over the whole window.
    onset_ok = (pw == 0) | ((pw >= 3) & (sw >= ONSET_MIN_SAMPLES) & (kind != "ecc"))

    # One cost per (onset, model): residuals in noise variances plus ONSET_PENALTY per parameter
    # (2 for a line, 3 for a curve, 3 more for an onset and the line before it).
    var = (sigma * sigma)[:, None, None]
    nparams = np.where(np.isinf(taus), 2.0, 3.0)[None, None, :] + np.where(pw > 0, 3.0, 0.0)[:, :, None]
    cost = (sse + sse_pre[:, :, None]) / var + ONSET_PENALTY * nparams
    cost = np.where(onset_ok[:, :, None], cost, np.inf)
    flat = np.argmin(cost.reshape(g, -1), axis=1)
    rows = np.arange(g)
    p, kk = np.divmod(flat, len(taus))
    L = lv[rows, p, kk]
    R = r[rows, p, kk]
    tau = taus[kk]
    nfit = sw[rows, p]
    wsel = wf * (np.arange(n)[None, :] >= p[:, None])
    psel = psi[rows, :, kk]  # (g, n)
    a, b, c = sw[rows, p], sp[rows, p, kk], spp[rows, p, kk]
    sse_kk = sse[rows, p, :]

    # Residual variance (never below the scrape noise), widened for lag-1 autocorrelation.
    resid = np.where(wsel > 0, y0 - L[:, None] - R[:, None] * psel, 0.0)
    sse_sel = (resid * resid).sum(axis=1)
    s2 = np.maximum(sse_sel / np.maximum(nfit - np.where(np.isfinite(tau), 3.0, 2.0), 1.0), sigma * sigma)
    pair = wsel[:, 1:] * wsel[:, :-1]
    num = (resid[:, 1:] * resid[:, :-1] * pair).sum(axis=1)
    rho = np.clip(num / np.maximum(sse_sel, 1e-300), 0.0, 0.95)
    s2 = s2 * (1 + rho) / (1 - rho)
    d = np.maximum(a * c - b * b, 1e-300)
    var_l, var_r, cov = s2 * c / d, s2 * a / d, -s2 * b / d
    se_r = np.sqrt(np.maximum(var_r, 0.0))
    with np.errstate(all="ignore"):
        z = np.where(se_r > 0, R / se_r, np.where(R > 0, np.inf, -np.inf))
        first_order = np.isfinite(tau) & (tau > 0)
        asym = np.where(first_order, L + R * tau, np.where(R > 0, np.inf, L))
        se_a = np.sqrt(np.maximum(var_l + tau * tau * var_r + 2 * tau * cov, 0.0))
        za = np.where(se_a > 0, (asym - thr) / se_a, np.where(asym > thr, np.inf, -np.inf))
    z = np.where(first_order, np.minimum(z, za), z)
    conf = np.clip(2.0 * special.ndtr(z) - 1.0, 0.0, 1.0)

    # tau itself is uncertain: every time constant whose fit is within PLAUSIBLE noise variances
    # of the best one is as good an explanation of the window. The forecast is the latest
    # crossing among them (never, if one of them levels off below the threshold).
    sse_p = sse_kk  # (g, K): every model over the chosen onset's samples
    plaus = sse_p <= sse_p.min(axis=1, keepdims=True) + PLAUSIBLE * (sigma * sigma)[:, None]
    plaus &= ~(np.isfinite(taus) & (taus > PLAUSIBLE_TAU_MAX))[None, :]
    Lk, Rk, tk = lv[rows, p, :], r[rows, p, :], taus[None, :]
    thk = thr[:, None]
    with np.errstate(all="ignore"):
        ak = np.where(tk > 0, Lk + Rk * tk, np.inf)
        # A curve levelling off within NEAR_SIGMAS noise sigmas under the threshold is not safe:
        # its noise holds it over the line often enough to fire the alert. It "crosses" when it
        # gets that close.
        aim = np.where(
            (tk > 0) & (ak <= thk) & (ak > thk - NEAR_SIGMAS * sigma[:, None]), thk - NEAR_SIGMAS * sigma[:, None], thk
        )
        gk = thk - Lk
        tt_k = np.where(
            np.isinf(tk),
            gk / Rk,
            np.where(tk > 0, tk * np.log((ak - Lk) / (ak - aim)), -tk * np.log1p(gk / (-Rk * tk))),
        )
    tt_k = np.where((Rk > 0) & np.isfinite(tt_k) & ((tk <= 0) | (ak > aim)), np.maximum(tt_k, 0.0), np.inf)
    # The chosen model's crossing (point forecast), then the latest among the plausible ones.
    ttt = np.maximum(tt_k[rows, kk], np.where(plaus, tt_k, 0.0).max(axis=1))

    # A load cycle: the window fell from a peak and rises again. Until it passes that peak the
    # rise is the cycle repeating (its asymptote is the load's, not a runaway's).
    ceiling = _peak_before_fall(med, valid, sigma) if kind in ("temperature", "power") else np.full(g, -np.inf)
    cycling = np.isfinite(ceiling) & (L < ceiling) & (R > 0)
    ttt = np.where(cycling, np.inf, ttt)

    # Over the threshold now: robust level over it and most of the last three samples too.
    last3 = np.where(valid, y, np.nan)[:, -3:]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        frac = np.nanmean(np.where(np.isnan(last3), np.nan, last3 >= thr[:, None]), axis=1)
    over = (L >= thr) & (np.nan_to_num(frac) >= 0.5)
    model = np.where(np.isinf(tau), MODEL_LINEAR, np.where(tau > 0, MODEL_FIRST_ORDER, MODEL_ACCEL))
    if throttle is not None:
        waiting = held & (nfit < HELD_MIN_SAMPLES) & ~over
        model = np.where(held, MODEL_HELD, model)
        ttt = np.where(waiting, np.inf, ttt)
        conf = np.where(waiting, 0.0, conf)
    model = np.where(cycling & (model != MODEL_HELD), MODEL_CYCLE, model)
    short = nfit < MIN_SAMPLES
    model = np.where(short & ~held, MODEL_NONE, model)
    ttt = np.where(over, 0.0, ttt)
    conf = np.where(over, 1.0, conf)
    asym = np.where(model == MODEL_CYCLE, ceiling, asym)
    return BatchFit(L, R, se_r, asym, tau, ttt, conf, model, over, nfit)


def min_confidence_for(kind: str, default: float) -> float:
    """The confidence gate a kind uses (ECC: the looser ECC_MIN_CONFIDENCE unless set lower)."""
    return min(default, ECC_MIN_CONFIDENCE) if kind == "ecc" else default


def guess_kind(values: Sequence[float] | np.ndarray, threshold: float) -> str:
    """For input without a kind (the CSV interface): whole non-negative counts under a small
    threshold (errors per window; a temperature read as whole degrees has a threshold near 85)
    are an ECC count; anything else is judged as a temperature (its family nests the line)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and threshold < ECC_GUESS_MAX_THRESHOLD and np.all(v >= 0) and np.all(v == np.round(v)):
        return "ecc"
    return "temperature"
