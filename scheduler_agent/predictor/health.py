"""Per-GPU health from forecast series: combined risk, migration decisions (pure functions).

Risk of a GPU is a noisy-OR over its metrics' risks (forecast.risk_score) and its recent errors:
an uncorrectable ECC error within the window is 1.0 (the GPU is about to be quarantined), an XID
error 0.5. Noisy-OR because each is an independent way to fail: two metrics at 0.5 make 0.75.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace

import numpy as np

from .forecast import MIN_CONFIDENCE, Forecast, confirm, forecasts_from_fit, persist_for, risk_score
from .models import KINDS, MIN_SAMPLES, fit_batch, min_confidence_for
from .specs import MetricSpec

UNCORRECTABLE_RISK = 1.0
XID_RISK = 0.5


@dataclass(frozen=True)
class GpuHealth:
    """Forecasts of one GPU as of ``at`` (epoch seconds)."""

    uuid: str
    gpu: str
    instance: str
    at: float
    forecasts: dict[str, Forecast] = field(default_factory=dict)  # by MetricSpec.name
    recent_errors: dict[str, float] = field(default_factory=dict)  # "uncorrectable", "xid": increase in window
    risk: float = 0.0

    def soonest(self, specs: Sequence[MetricSpec], migrate_only: bool = False) -> tuple[MetricSpec, Forecast] | None:
        """The metric predicted to cross first (None when none is predicted)."""
        best: tuple[MetricSpec, Forecast] | None = None
        best_seconds = 0.0  # best's seconds_to_threshold
        for spec in specs:
            f = self.forecasts.get(spec.name)
            if f is None or f.seconds_to_threshold is None or (migrate_only and not spec.migrate):
                continue
            if best is None or f.seconds_to_threshold < best_seconds:
                best, best_seconds = (spec, f), f.seconds_to_threshold
        return best


def combine_risk(metric_risks: Sequence[float], recent_errors: Mapping[str, float]) -> float:
    """Noisy-OR of metric risks and error risks, 0-1."""
    parts = list(metric_risks)
    if recent_errors.get("uncorrectable", 0.0) > 0:
        parts.append(UNCORRECTABLE_RISK)
    if recent_errors.get("xid", 0.0) > 0:
        parts.append(XID_RISK)
    survive = 1.0
    for r in parts:
        survive *= 1.0 - min(1.0, max(0.0, r))
    return 1.0 - survive


def counter_increase(values: np.ndarray) -> float:
    """Increase of a counter over its samples, counting a drop as a reset (like PromQL increase)."""
    v = values[np.isfinite(values)]
    if v.size < 2:
        return 0.0
    d = np.diff(v)
    return float(np.where(d >= 0, d, v[1:]).sum())


def gpu_key(labels: Mapping[str, str]) -> tuple[str, str, str]:
    """(uuid, gpu index, instance) of a series; the uuid identifies a GPU across restarts."""
    gpu = labels.get("gpu", "")
    inst = labels.get("instance", "")
    return labels.get("uuid") or f"{inst}/{gpu}", gpu, inst


SeriesRows = Sequence[tuple[Mapping[str, str], np.ndarray, np.ndarray]]

# A live series is forecast only once its history spans this share of the window. A GPU that
# just appeared (or an exporter just started) shows a few minutes of ordinary load drift,
# which fitted alone reads as a runaway: with a 5-minute load cycle, 3 minutes of its rising
# half forecast 450 W "in 5 minutes" at full confidence. (The offline CSV interface judges
# whatever history it is given.)
MIN_COVERAGE = 0.5


def _batch_forecasts(
    rows: list[tuple[str, np.ndarray, np.ndarray]],
    thresholds: np.ndarray,
    kind: str,
    window: float,
    min_confidence: float,
    throttle: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> list[Forecast | None]:
    """One models.fit_batch for every GPU's series of one metric: each GPU's window ending at its
    last sample and the persist_for(kind) windows before it, confirmed like forecast_series."""
    grid = np.unique(np.concatenate([t for _u, t, _v in rows]))
    g, n, lags = len(rows), grid.size, persist_for(kind) + 1
    Y = np.full((g, n), np.nan)
    TH = np.zeros((g, n))
    for i, (uuid, t, v) in enumerate(rows):
        Y[i, np.searchsorted(grid, t)] = v
        if uuid in throttle:
            tt, tv = throttle[uuid]
            idx = np.searchsorted(grid, tt)
            ok = (idx < n) & (grid[np.minimum(idx, n - 1)] == tt)
            TH[i, idx[ok]] = np.nan_to_num(tv[ok])
    finite = np.isfinite(Y)
    ends = np.where(finite, np.arange(n)[None, :], -1).max(axis=1)  # each GPU's last sample
    S = np.full((g * lags, n), np.nan)
    YY = np.repeat(Y, lags, axis=0)
    THH = np.repeat(TH, lags, axis=0)
    enough = np.zeros(g * lags, dtype=bool)
    end_time = np.zeros(g * lags)  # each window's end time
    for k in range(lags):
        # The k-th earlier forecast ends at the k-th sample before the last one.
        e = ends.copy()
        for _ in range(k):
            prev = np.where(finite & (np.arange(n)[None, :] < e[:, None]), np.arange(n)[None, :], -1).max(axis=1)
            e = prev
        te = grid[np.maximum(e, 0)]
        end_time[k::lags] = te
        rel = grid[None, :] - te[:, None]
        inside = (rel <= 0) & (rel >= -window) & finite & (e[:, None] >= 0)
        S[k::lags] = np.where(inside, rel, np.nan)
        enough[k::lags] = inside.sum(axis=1) >= MIN_SAMPLES
    YY = np.where(np.isfinite(S), YY, np.nan)
    # Each row shifted so that its window ends in the last column, as forecast_series lays
    # them out: the models judge "the last samples" (spikes, over the threshold) by column.
    shift = (n - 1) - np.where(np.isfinite(S), np.arange(n)[None, :], -1).max(axis=1)
    src = np.arange(n)[None, :] - shift[:, None]
    S = np.where(src >= 0, np.take_along_axis(S, np.maximum(src, 0), axis=1), np.nan)
    YY = np.where(src >= 0, np.take_along_axis(YY, np.maximum(src, 0), axis=1), np.nan)
    THH = np.where(src >= 0, np.take_along_axis(THH, np.maximum(src, 0), axis=1), 0.0)
    fit = fit_batch(S, YY, np.repeat(thresholds, lags), kind, THH if throttle else None)
    last = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in YY])
    fcs = forecasts_from_fit(fit, np.repeat(thresholds, lags), last, min_confidence_for(kind, min_confidence))
    out: list[Forecast | None] = []
    for i in range(g):
        cur = fcs[i * lags] if enough[i * lags] else None
        if cur is not None:
            earlier = [fcs[i * lags + k] if enough[i * lags + k] else None for k in range(1, lags)]
            ages = [float(end_time[i * lags] - end_time[i * lags + k]) for k in range(1, lags)]
            cur = confirm(cur, earlier, ages)
        out.append(cur)
    return out


def evaluate(
    specs: Sequence[MetricSpec],
    series: Mapping[str, SeriesRows],
    errors: Mapping[str, SeriesRows],
    at: float,
    window: float,
    min_confidence: float = MIN_CONFIDENCE,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    throttle: SeriesRows | None = None,
) -> dict[str, GpuHealth]:
    """GpuHealth per uuid from range-query rows: ``series[spec.name]`` and ``errors[kind]``.

    ``thresholds[spec.name][uuid]`` is a GPU's own threshold (its profile's, from Prometheus);
    a GPU without one is judged by ``spec.threshold`` (the default profile's). ``throttle``: rows
    of ``gpu_throttle_active`` (any throttling reason, 0/1) for the temperature and power models.
    Every metric is fitted for all GPUs in one batch (models.fit_batch): one pass per metric.
    """
    fc: dict[str, dict[str, Forecast]] = {}
    ident: dict[str, tuple[str, str]] = {}
    held: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for labels, t, v in throttle or ():
        held[gpu_key(labels)[0]] = (np.asarray(t, dtype=float), np.asarray(v, dtype=float))
    for spec in specs:
        own = (thresholds or {}).get(spec.name, {})
        rows: list[tuple[str, np.ndarray, np.ndarray]] = []
        for labels, t, v in series.get(spec.name, ()):
            uuid, gpu, inst = gpu_key(labels)
            ident.setdefault(uuid, (gpu, inst))
            if len(t) == 0 or float(t[-1] - t[0]) < window * MIN_COVERAGE:
                continue
            rows.append((uuid, np.asarray(t, dtype=float), np.asarray(v, dtype=float)))
        if not rows:
            continue
        kind = spec.name if spec.name in KINDS else "temperature"
        thr = np.array([own.get(u, spec.threshold) for u, _t, _v in rows], dtype=float)
        uses_throttle = held if kind in ("temperature", "power") else {}
        for (uuid, _t, _v), f in zip(
            rows, _batch_forecasts(rows, thr, kind, window, min_confidence, uses_throttle), strict=True
        ):
            if f is not None:
                fc.setdefault(uuid, {})[spec.name] = f
    errs: dict[str, dict[str, float]] = {}
    for kind, err_rows in errors.items():
        for labels, _t, v in err_rows:
            uuid, gpu, inst = gpu_key(labels)
            ident.setdefault(uuid, (gpu, inst))
            e = errs.setdefault(uuid, {})
            e[kind] = e.get(kind, 0.0) + counter_increase(v)
    out: dict[str, GpuHealth] = {}
    for uuid, (gpu, inst) in ident.items():
        forecasts = fc.get(uuid, {})
        recent = errs.get(uuid, {})
        risk = combine_risk([f.risk for f in forecasts.values()], recent)
        out[uuid] = GpuHealth(uuid, gpu, inst, at, forecasts, recent, risk)
    return out


def hold_firing(
    gpus: Mapping[str, GpuHealth], firing: Set[tuple[str, str]]
) -> tuple[dict[str, GpuHealth], set[tuple[str, str]]]:
    """Forecasts as a firing alert holds: a (uuid, metric) whose crossing was reported at the
    previous run keeps being reported while its window still forecasts one, even where
    confirmation (forecast.confirm: PERSIST windows agreeing, not receding) withholds it now.
    Confirmation gates the start of a warning, like an alert's ``for:``; without this the agent's
    forecast would flicker on a noisy runaway and re-arm its migration. Returns the GPUs and the
    (uuid, metric) pairs reported now."""
    out: dict[str, GpuHealth] = {}
    now: set[tuple[str, str]] = set()
    for uuid, h in gpus.items():
        forecasts = dict(h.forecasts)
        for name, f in h.forecasts.items():
            if f.seconds_to_threshold is None and f.withheld is not None and (uuid, name) in firing:
                forecasts[name] = replace(
                    f,
                    seconds_to_threshold=f.withheld,
                    risk=risk_score(f.withheld, f.confidence, f.current, f.threshold),
                    reason=f"still forecast, reported since an earlier run ({f.reason})",
                    withheld=None,
                )
            if forecasts[name].seconds_to_threshold is not None:
                now.add((uuid, name))
        if forecasts != h.forecasts:
            risk = combine_risk([f.risk for f in forecasts.values()], h.recent_errors)
            h = replace(h, forecasts=forecasts, risk=risk)
        out[uuid] = h
    return out, now


def migration_candidates(
    gpus: Mapping[str, GpuHealth], specs: Sequence[MetricSpec], lead_time: float
) -> dict[str, str]:
    """uuid -> reason, for GPUs predicted to cross a migrating metric's threshold within lead_time.

    Forecasts below the confidence gate carry no seconds_to_threshold, so they never migrate.
    A metric already over its threshold (0 s) is included: the alert path acts on it too, and
    preempting twice is a no-op for the scheduler.
    """
    out: dict[str, str] = {}
    for uuid, h in gpus.items():
        hit = h.soonest(specs, migrate_only=True)
        if hit is None:
            continue
        spec, f = hit
        if f.seconds_to_threshold is not None and f.seconds_to_threshold <= lead_time:
            out[uuid] = (
                f"predicted {spec.rule}: {spec.name} reaches {f.threshold:g} in "
                f"{f.seconds_to_threshold:.0f}s (confidence {f.confidence:.2f}, lead time {lead_time:g}s)"
            )
    return out
