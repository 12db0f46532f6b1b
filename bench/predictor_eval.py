"""Predictor evaluation: our forecasts against Prometheus' predict_linear on seeded traces.

    python -m bench.predictor_eval [--seed 6] [--scale 1.0] [--window 600] [--horizons 300,600,900]

Both methods see the same window (the last ``--window`` seconds, inclusive, like a 2.x range
selector) at every scrape time, and warn at the same horizon H:

* ours:            ``seconds_to_threshold <= H`` (scheduler_agent.predictor, as the CSV
                   interface reports it; None never warns);
* predict_linear:  ``predict_linear(bench_trace[W], H) >= threshold``, evaluated by a real
                   Prometheus 2.42 server over a TSDB built with
                   ``promtool tsdb create-blocks-from openmetrics`` (one query_range per H);
                   also scored as the shipped forecast alerts use it, held ``for: 1m``.

Scoring (see bench/traces.py for the true crossing, which honours the rule's ``for:``):

* lead time: true crossing − first warning, over traces that cross (a trace warned only after
  its crossing, or never, scores 0);
* false alarms: traces that never cross yet got a warning. A warning on a trace that does not
  cross needs H seconds to be proven wrong, so such traces are judged up to DURATION − H;
* time-to-threshold error: |predicted − actual time left| at each warning before the crossing
  (predict_linear's implied time is (T − predict_linear(x[W], 0)) / deriv(x[W]));
* continuity: the share of scrapes from a crossing trace's first warning to its crossing that
  still warn (a forecast that flickers re-arms the agent's migration and its risk score).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

from bench.traces import DURATION, STEP, Trace, generate
from gpuwarden.procs import Proc, ProcError, free_port, wait_http
from gpuwarden.prom import PrometheusClient
from gpuwarden.scheduler_agent.predictor import models
from gpuwarden.scheduler_agent.predictor.forecast import (
    MIN_CONFIDENCE,
    PERSIST,
    RECEDE_SLACK,
    forecast_series,
    persist_for,
)
from gpuwarden.scheduler_agent.predictor.health import evaluate
from gpuwarden.scheduler_agent.predictor.specs import load_specs

METRIC = "bench_trace"


# --- ours ---------------------------------------------------------------------------------


@dataclass
class Raw:
    """Our unconfirmed, ungated forecasts at every scrape time of one trace (one batch fit)."""

    times: np.ndarray
    ttt: np.ndarray  # point forecast, inf: never; 0: over now
    conf: np.ndarray
    over: np.ndarray
    kind: str


def ours_raw(trace: Trace, window: float, use_throttle: bool) -> Raw:
    """Every window of the trace (ending at each scrape once the window is full) fitted at once."""
    m = int(round(window / STEP)) + 1
    rows = sliding_window_view(trace.values, m)
    s = (np.arange(m) - (m - 1)) * STEP
    th = trace.throttle if use_throttle else None
    kind = models.guess_kind(trace.values, trace.threshold)
    fit = models.fit_batch(s, rows, trace.threshold, kind, None if th is None else sliding_window_view(th, m))
    return Raw(trace.times[m - 1 :], fit.ttt, fit.confidence, fit.over, kind)


def ours_ttt(raw: Raw, gate: float, persist: int = PERSIST, hold: bool = False) -> dict[float, float | None]:
    """seconds_to_threshold as ``forecast_series`` reports it (gate, then persist_for(kind)
    confirmation), from the PERSIST-th full window on (checked against forecast_series in
    check_equivalence; another ``persist`` is the sweep's). ``hold``: as the agent reports it,
    a crossing once reported kept while each window still forecasts one (health.hold_firing)."""
    g = models.min_confidence_for(raw.kind, gate)
    pred = raw.over | (np.isfinite(raw.ttt) & (raw.conf >= g))
    ok = pred.copy()
    p = persist_for(raw.kind, persist)
    for k in range(1, p + 1):
        ok[k:] &= pred[:-k]
    if p:
        # Not receding: the oldest confirming window forecast the crossing no sooner (confirm()).
        then = np.full(raw.ttt.size, np.inf)
        then[p:] = np.where(pred[:-p], raw.ttt[:-p] - (raw.times[p:] - raw.times[:-p]), np.inf)
        with np.errstate(invalid="ignore"):
            ok &= ~(raw.ttt > then + RECEDE_SLACK)
    ok |= raw.over
    if hold:
        for i in range(PERSIST + 1, ok.size):
            ok[i] |= ok[i - 1] and bool(pred[i])
    return {float(t): (float(v) if c else None) for t, v, c in list(zip(raw.times, raw.ttt, ok, strict=True))[PERSIST:]}


def check_equivalence(
    traces: list[Trace], window: float, ours: dict[str, dict[float, float | None]], use_throttle: bool, n: int = 40
) -> None:
    """Spot-checks that the bench scores what the CSV interface (forecast_series) would report."""
    rng = np.random.default_rng(0)
    for k in rng.choice(len(traces), size=min(n, len(traces)), replace=False):
        tr = traces[int(k)]
        i = int(rng.integers(int(window / STEP) + PERSIST, tr.times.size))
        lo = int(np.searchsorted(tr.times, tr.times[i] - window - PERSIST * STEP, side="left"))
        th = tr.throttle[lo : i + 1] if use_throttle and tr.throttle is not None else None
        got = forecast_series(
            tr.times[lo : i + 1],
            tr.values[lo : i + 1],
            tr.threshold,
            window,
            kind=models.guess_kind(tr.values, tr.threshold),
            throttle=th,
        ).seconds_to_threshold
        want = ours[tr.name][float(tr.times[i])]
        if (got is None) != (want is None) or (got is not None and abs(got - want) > 1e-6 * max(1.0, got)):  # type: ignore[operator]
            raise AssertionError(f"{tr.name} at {tr.times[i]}: bench {want} != forecast_series {got}")


def ols_confidence(trace: Trace, window: float) -> dict[float, float]:
    """predict_linear's own line (least squares over the same window) as a gate: 2·Φ(t) − 1 of
    its slope's t-value, so both methods can be swept over a confidence gate."""
    m = int(round(window / STEP)) + 1
    rows = sliding_window_view(trace.values, m)
    x = np.arange(m) - (m - 1) / 2
    b = rows @ x / (x @ x)
    resid = rows - rows.mean(axis=1, keepdims=True) - b[:, None] * x
    se = np.sqrt((resid * resid).sum(axis=1) / (m - 2) / (x @ x))
    with np.errstate(all="ignore"):
        z = np.where(se > 0, b / se, np.where(b > 0, np.inf, -np.inf))
    conf = np.clip(2 * special.ndtr(z) - 1, 0, 1)
    return {float(t): float(c) for t, c in zip(trace.times[m - 1 :], conf, strict=True)}


# --- predict_linear in a real Prometheus ------------------------------------------------------


class PromEngine:
    """A Prometheus 2.42 server over a TSDB holding every trace as bench_trace{trace=...}."""

    def __init__(self, traces: list[Trace], workdir: Path) -> None:
        for b in ("promtool", "prometheus"):
            if not shutil.which(b):
                raise SystemExit(f"{b} not found: apt-get install prometheus (2.42) to run this benchmark")
        # Aligned to the scrape step and two hours back, inside the default retention.
        self.base = (int(time.time()) - 3 * 3600) // 7200 * 7200
        om = workdir / "traces.om"
        with om.open("w") as f:
            f.write(f"# TYPE {METRIC} gauge\n")
            for tr in traces:
                for t, v in zip(tr.times, tr.values, strict=False):
                    f.write(f'{METRIC}{{trace="{tr.name}"}} {float(v)!r} {self.base + float(t):.3f}\n')
            f.write("# EOF\n")
        data = workdir / "data"
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        cfg = workdir / "prometheus.yml"
        cfg.write_text("global: {}\n")
        self.port = free_port()
        self.proc = Proc(
            [
                "prometheus",
                f"--config.file={cfg}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=30d",
            ],
            workdir / "prometheus.log",
            name="prometheus",
        )
        try:
            wait_http(f"http://127.0.0.1:{self.port}/-/ready", 30, self.proc, interval=0.2)
        except ProcError as exc:
            self.close()
            raise SystemExit(f"prometheus did not become ready: {exc}") from None

    def query_range(self, expr: str, start: float, end: float) -> dict[str, dict[float, float]]:
        prom = PrometheusClient(f"http://127.0.0.1:{self.port}", timeout=60)
        out: dict[str, dict[float, float]] = {}
        for s in prom.query_range(expr, self.base + start, self.base + end, STEP):
            out[s.labels["trace"]] = {
                round(float(ts) - self.base, 3): float(v) for ts, v in zip(s.times, s.values, strict=False)
            }
        return out

    def close(self) -> None:
        self.proc.stop(10)


# --- scoring ------------------------------------------------------------------------------------


@dataclass
class Score:
    leads: list[float] = field(default_factory=list)
    detected: int = 0
    crossing: int = 0
    false_alarms: int = 0
    quiet: int = 0
    ttt_err_first: list[float] = field(default_factory=list)
    ttt_err_all: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)  # share of scrapes warned, 1st warning to crossing
    alarm_steps: int = 0
    steps: int = 0


def score(
    traces: list[Trace], warns: dict[str, dict[float, bool]], ttts: dict[str, dict[float, float | None]], horizon: float
) -> Score:
    s = Score()
    for tr in traces:
        cross = tr.crossing
        w = warns.get(tr.name, {})
        end = cross if cross is not None else DURATION - horizon
        times = sorted(t for t in w if t < end)
        fired = [t for t in times if w[t]]
        if cross is None:
            s.quiet += 1
            s.steps += len(times)
            s.alarm_steps += len(fired)
            if fired:
                s.false_alarms += 1
            continue
        s.crossing += 1
        if fired:
            s.detected += 1
            s.leads.append(cross - fired[0])
            after = [t for t in times if t >= fired[0]]
            s.held.append(sum(w[t] for t in after) / len(after))
            for k, t in enumerate(fired):
                p = ttts.get(tr.name, {}).get(t)
                if p is not None and np.isfinite(p):
                    err = abs(p - (cross - t))
                    s.ttt_err_all.append(err)
                    if k == 0:
                        s.ttt_err_first.append(err)
        else:
            s.leads.append(0.0)
    return s


# The shipped forecast alerts hold for 1m: the condition true at 5 evaluations in a row (15 s).
ALERT_FOR_STEPS = 5


def held_for(warns: dict[str, dict[float, bool]], steps: int = ALERT_FOR_STEPS) -> dict[str, dict[float, bool]]:
    """Each trace's warnings as an alert with ``for:`` sees them: true where the condition has
    held at the last ``steps`` scrape times (the first ``steps - 1`` scored times use what they
    have)."""
    out: dict[str, dict[float, bool]] = {}
    for name, w in warns.items():
        times = sorted(w)
        run = 0
        held: dict[float, bool] = {}
        for t in times:
            run = run + 1 if w[t] else 0
            held[t] = run >= steps
        out[name] = held
    return out


def _med(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def _row(name: str, s: Score) -> str:
    return (
        f"| {name} | {s.detected}/{s.crossing} | {_med(s.leads) / 60:.1f} | "
        f"{np.percentile(s.leads, 25) / 60 if s.leads else float('nan'):.1f} | "
        f"{s.false_alarms}/{s.quiet} | {100 * s.alarm_steps / max(1, s.steps):.2f}% | "
        f"{_med(s.ttt_err_first) / 60:.1f} | {_med(s.ttt_err_all) / 60:.1f} | "
        f"{float(np.mean(s.held)) if s.held else float('nan'):.2f} |"
    )


GATES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
PERSIST_SWEEP = (0, 1, 2, 3, 4, 5, 6)


def fleet_timing(gpus: int, window: float, seed: int) -> None:
    """One predictor cycle's model work for ``gpus`` GPUs: ``health.evaluate`` (what
    PredictorService.fetch calls after its query_range calls, one per signal) on synthetic rows
    for the four metrics and the throttle signal, each GPU's window and the PERSIST before it."""
    rng = np.random.default_rng(seed)
    n = int(round(window / STEP)) + 1 + PERSIST
    now = 1_800_000_000.0
    t = now - STEP * np.arange(n)[::-1]
    x = t - t[0]
    base = rng.uniform(40, 80, (gpus, 1)) + rng.uniform(-0.02, 0.05, (gpus, 1)) * x
    values = {
        "temperature": base + rng.normal(0, 0.7, (gpus, n)),
        "power": 5 * base + rng.normal(0, 8, (gpus, n)),
        "memory": np.clip(0.5 + rng.uniform(0, 1e-4, (gpus, 1)) * x + rng.normal(0, 0.01, (gpus, n)), 0, 1),
        "ecc": rng.poisson(rng.uniform(0, 4, (gpus, 1)), (gpus, n)) / 300.0,
    }
    labels = [{"instance": f"node{i // 8}:9786", "gpu": str(i % 8), "uuid": f"GPU-{i:05d}"} for i in range(gpus)]
    series = {k: [(labels[i], t, v[i]) for i in range(gpus)] for k, v in values.items()}
    throttle = [(labels[i], t, (rng.random(n) < 0.05).astype(float)) for i in range(gpus)]
    specs = load_specs()
    t0 = time.perf_counter()
    out = evaluate(specs, series, {}, now, window, throttle=throttle)
    dt = time.perf_counter() - t0
    print(
        f"fleet: {gpus} GPUs x {len(specs)} metrics (+ throttle), {n} samples each: health.evaluate "
        f"{dt:.2f}s per cycle ({dt / 30 * 100:.1f}% of the default 30 s period; {len(out)} GPUs judged)"
    )


def _med_lead(s: Score) -> float:
    return _med(s.leads) / 60


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.predictor_eval", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--scale", type=float, default=1.0, help="traces per family × this")
    ap.add_argument("--window", type=float, default=600.0, help="fit window, seconds (both methods)")
    ap.add_argument("--horizons", default="300,600,900", help="warning horizons H, seconds, comma-separated")
    ap.add_argument("--families", action="store_true", help="also print one table per trace family")
    ap.add_argument(
        "--curve", metavar="PNG", help="draw false alarms against lead as the gate and PERSIST move (H = 10 min)"
    )
    ap.add_argument("--fleet", type=int, metavar="GPUS", help="only time one cycle's model work for this many GPUs")
    args = ap.parse_args(argv)
    W = args.window
    if args.fleet:
        fleet_timing(args.fleet, W, args.seed)
        return 0
    horizons = [float(h) for h in args.horizons.split(",")]
    traces = generate(args.seed, args.scale)
    n_cross = sum(tr.crossing is not None for tr in traces)
    print(
        f"{len(traces)} traces (seed {args.seed}), {n_cross} cross their threshold; window {W:g}s, "
        f"scrape step {STEP:g}s, duration {DURATION / 60:g} min"
    )

    t0 = time.perf_counter()
    raw_v = {tr.name: ours_raw(tr, W, use_throttle=False) for tr in traces}
    raw_t = {tr.name: ours_raw(tr, W, use_throttle=True) for tr in traces}
    t_ours = time.perf_counter() - t0
    ours_v = {n: ours_ttt(r, MIN_CONFIDENCE) for n, r in raw_v.items()}
    ours_t = {n: ours_ttt(r, MIN_CONFIDENCE) for n, r in raw_t.items()}
    ours_agent = {n: ours_ttt(r, MIN_CONFIDENCE, hold=True) for n, r in raw_t.items()}
    check_equivalence(traces, W, ours_v, use_throttle=False)
    check_equivalence(traces, W, ours_t, use_throttle=True)
    scored = set(next(iter(ours_v.values())))  # the same scrape times for every method

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpuwarden-predeval-") as tmp:
        engine = PromEngine(traces, Path(tmp))
        try:
            rng_w = f"{int(W)}s"
            level = engine.query_range(f"predict_linear({METRIC}[{rng_w}], 0)", W, DURATION)
            slope = engine.query_range(f"deriv({METRIC}[{rng_w}])", W, DURATION)
            hs = sorted(set(horizons) | {600.0})
            pl = {h: engine.query_range(f"predict_linear({METRIC}[{rng_w}], {h:g})", W, DURATION) for h in hs}
        finally:
            engine.close()
    t_prom = time.perf_counter() - t0
    by_name = {tr.name: tr for tr in traces}
    pl_ttt: dict[str, dict[float, float | None]] = {}
    for name, series in level.items():
        thr = by_name[name].threshold
        pl_ttt[name] = {
            t: ((thr - v) / slope[name][t] if slope[name].get(t, 0) > 0 else None)
            for t, v in series.items()
            if t in scored
        }

    def pl_warns(h: float, gate: float = 0.0) -> dict[str, dict[float, bool]]:
        conf = {tr.name: ols_confidence(tr, W) for tr in traces} if gate > 0 else {}
        return {
            n: {
                t: (v >= by_name[n].threshold and (gate <= 0 or conf[n].get(t, 0.0) >= gate))
                for t, v in d.items()
                if t in scored
            }
            for n, d in pl[h].items()
        }

    def our_warns(ttt: dict[str, dict[float, float | None]], h: float) -> dict[str, dict[float, bool]]:
        return {n: {t: (v is not None and v <= h) for t, v in d.items()} for n, d in ttt.items()}

    groups: list[tuple[str, list[Trace]]] = [("all", traces)]
    if args.families:
        fams = sorted({tr.family for tr in traces})
        groups += [(f, [tr for tr in traces if tr.family == f]) for f in fams]
    for h in horizons:
        for gname, group in groups:
            print(f"\nHorizon H = {h / 60:g} min, traces: {gname}\n")
            print(
                "| method | warned before crossing | median lead (min) | p25 lead (min) | "
                "false-alarm traces | alarm steps on quiet traces | TTT abs err at 1st warning (min, median) | "
                "TTT abs err, all warnings (min, median) | scrapes warned from 1st warning to crossing (mean) |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            print(_row("gpuwarden, values only (predict --csv)", score(group, our_warns(ours_v, h), ours_v, h)))
            print(_row("gpuwarden, with gpu_throttle_active", score(group, our_warns(ours_t, h), ours_t, h)))
            print(
                _row(
                    "gpuwarden, the agent (throttle, held once reported)",
                    score(group, our_warns(ours_agent, h), ours_agent, h),
                )
            )
            print(_row("predict_linear (Prometheus 2.42)", score(group, pl_warns(h), pl_ttt, h)))
            print(_row("predict_linear, for: 1m (as alerted)", score(group, held_for(pl_warns(h)), pl_ttt, h)))

    # The curves at H = 10 min: false-alarm traces against median lead as each knob moves.
    h = 600.0
    curve: dict[str, list[tuple[str, int, float]]] = {
        "gpuwarden, confidence gate": [],
        "gpuwarden, confirming windows (PERSIST)": [],
        "predict_linear, gated by its slope's t": [],
        "predict_linear, held for k evaluations": [],
    }
    print(f"\nGate sweep, H = {h / 60:g} min: gate -> false-alarm traces, median lead (min), misses\n")
    print("| gate | gpuwarden FA | gpuwarden lead | gpuwarden misses | predict_linear FA | lead | misses |")
    print("|---|---|---|---|---|---|---|")
    for g in GATES:
        ttt = {n: ours_ttt(r, g) for n, r in raw_v.items()}
        so = score(traces, our_warns(ttt, h), ttt, h)
        sp = score(traces, pl_warns(h, g), pl_ttt, h)
        curve["gpuwarden, confidence gate"].append((f"{g:g}", so.false_alarms, _med_lead(so)))
        curve["predict_linear, gated by its slope's t"].append((f"{g:g}", sp.false_alarms, _med_lead(sp)))
        print(
            f"| {g:g} | {so.false_alarms}/{so.quiet} | {_med_lead(so):.1f} | {so.crossing - so.detected} | "
            f"{sp.false_alarms}/{sp.quiet} | {_med_lead(sp):.1f} | {sp.crossing - sp.detected} |"
        )
    print(
        f"\nPersistence sweep, H = {h / 60:g} min: gpuwarden confirmed by k earlier windows (gate "
        f"{MIN_CONFIDENCE:g}; ECC never), predict_linear held for k + 1 evaluations (for: k × 15 s)\n"
    )
    print("| k | gpuwarden FA | gpuwarden lead | gpuwarden misses | predict_linear FA | lead | misses |")
    print("|---|---|---|---|---|---|---|")
    for k in PERSIST_SWEEP:
        ttt = {n: ours_ttt(r, MIN_CONFIDENCE, k) for n, r in raw_v.items()}
        so = score(traces, our_warns(ttt, h), ttt, h)
        sp = score(traces, held_for(pl_warns(h), k + 1), pl_ttt, h)
        curve["gpuwarden, confirming windows (PERSIST)"].append((f"{k}", so.false_alarms, _med_lead(so)))
        curve["predict_linear, held for k evaluations"].append((f"{k + 1}", sp.false_alarms, _med_lead(sp)))
        print(
            f"| {k} | {so.false_alarms}/{so.quiet} | {_med_lead(so):.1f} | {so.crossing - so.detected} | "
            f"{sp.false_alarms}/{sp.quiet} | {_med_lead(sp):.1f} | {sp.crossing - sp.detected} |"
        )
    if args.curve:
        draw_curve(curve, Path(args.curve), args.seed, len(traces))
    print(
        f"\nours: {t_ours:.1f}s for {2 * sum(r.times.size for r in raw_v.values())} forecasts; "
        f"Prometheus (build TSDB, start, {2 + len(pl)} query_range): {t_prom:.1f}s"
    )
    return 0


def draw_curve(curve: dict[str, list[tuple[str, int, float]]], path: Path, seed: int, n: int) -> None:
    """False-alarm traces against median lead for each knob, with the issue 17 target region
    (at most half predict_linear's false alarms at no shorter a lead) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=110)
    for (name, pts), marker in zip(curve.items(), ("o", "D", "s", "^"), strict=False):
        xs, ys = [p[1] for p in pts], [p[2] for p in pts]
        ax.plot(xs, ys, marker=marker, label=name, alpha=0.85)
        for label, x, y in pts:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    # predict_linear as Prometheus computes it (no gate, no for:): the reference of the targets.
    ref = curve["predict_linear, held for k evaluations"][0]
    fa_max, lead_min = ref[1] / 2, ref[2]
    ax.axvline(fa_max, color="grey", linestyle="--", linewidth=1)
    ax.axhline(lead_min, color="grey", linestyle="--", linewidth=1)
    ax.fill_between([0, fa_max], lead_min, ax.get_ylim()[1], color="green", alpha=0.08, label="issue 17 target")
    ax.set_xlim(left=min(fa_max, *(p[1] for pts in curve.values() for p in pts)) - 10)
    ax.set_xlabel("false-alarm traces (never cross, warned)")
    ax.set_ylabel("median lead before the crossing (min)")
    ax.set_title(f"H = 10 min, seed {seed}, {n} traces: each knob moved alone")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"curve: {path}")


if __name__ == "__main__":
    sys.exit(main())
