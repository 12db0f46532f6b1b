"""Predictor evaluation: our forecasts against Prometheus' predict_linear on seeded traces.

    python -m bench.predictor_eval [--seed 6] [--scale 1.0] [--window 600] [--horizons 300,600,900]

Both methods see the same window (the last ``--window`` seconds, inclusive, like a 2.x range
selector) at every scrape time, and warn at the same horizon H:

* ours:            ``seconds_to_threshold <= H`` (scheduler_agent.predictor, as the CSV
                   interface reports it; None never warns);
* predict_linear:  ``predict_linear(bench_trace[W], H) >= threshold``, evaluated by a real
                   Prometheus 2.42 server over a TSDB built with
                   ``promtool tsdb create-blocks-from openmetrics`` (one query_range per H).

Scoring (see bench/traces.py for the true crossing, which honours the rule's ``for:``):

* lead time: true crossing − first warning, over traces that cross (a trace warned only after
  its crossing, or never, scores 0);
* false alarms: traces that never cross yet got a warning. A warning on a trace that does not
  cross needs H seconds to be proven wrong, so such traces are judged up to DURATION − H;
* time-to-threshold error: |predicted − actual time left| at each warning before the crossing
  (predict_linear's implied time is (T − predict_linear(x[W], 0)) / deriv(x[W])).
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

from bench.traces import DURATION, STEP, Trace, generate
from gpuwarden.procs import Proc, ProcError, free_port, wait_http
from gpuwarden.prom import PrometheusClient
from gpuwarden.scheduler_agent.predictor.forecast import PERSIST, Forecast, confirm, forecast_series, raw_forecast
from gpuwarden.scheduler_agent.predictor.trend import InsufficientData

METRIC = "bench_trace"


# --- ours ---------------------------------------------------------------------------------


def ours_ttt(trace: Trace, window: float) -> dict[float, float | None]:
    """seconds_to_threshold at every scrape time once the window is full (keyed by time).

    The same as ``forecast_series`` on each prefix of the trace (what ``predict --csv`` reports
    for a file ending at that scrape; checked on a sample in main()), computed once per scrape
    and confirmed against the previous PERSIST scrapes' raw forecasts instead of refitting them.
    """
    t, y = trace.times, trace.values
    raw: dict[int, Forecast | None] = {}
    out: dict[float, float | None] = {}
    for i in range(t.size):
        now = float(t[i])
        if now < window - PERSIST * STEP:
            continue
        lo = int(np.searchsorted(t, now - window, side="left"))
        try:
            raw[i] = raw_forecast(t[lo : i + 1], y[lo : i + 1], trace.threshold, window)
        except InsufficientData:
            raw[i] = None
        if now >= window:
            cur = raw[i]
            f = confirm(cur, [raw.get(i - k) for k in range(1, PERSIST + 1)]) if cur is not None else None
            out[now] = f.seconds_to_threshold if f is not None else None
    return out


def check_equivalence(
    traces: list[Trace], window: float, ours: dict[str, dict[float, float | None]], n: int = 40
) -> None:
    """Spot-checks that the bench scores what the CSV interface would report."""
    rng = np.random.default_rng(0)
    for k in rng.choice(len(traces), size=min(n, len(traces)), replace=False):
        tr = traces[int(k)]
        i = int(rng.integers(int(window / STEP), tr.times.size))
        lo = int(np.searchsorted(tr.times, tr.times[i] - window - PERSIST * STEP, side="left"))
        got = forecast_series(tr.times[lo : i + 1], tr.values[lo : i + 1], tr.threshold, window).seconds_to_threshold
        want = ours[tr.name][float(tr.times[i])]
        if (got is None) != (want is None) or (got is not None and abs(got - want) > 1e-6):  # type: ignore[operator]
            raise AssertionError(f"{tr.name} at {tr.times[i]}: bench {want} != forecast_series {got}")


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


def _med(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def _row(name: str, s: Score) -> str:
    return (
        f"| {name} | {s.detected}/{s.crossing} | {_med(s.leads) / 60:.1f} | "
        f"{np.percentile(s.leads, 25) / 60 if s.leads else float('nan'):.1f} | "
        f"{s.false_alarms}/{s.quiet} | {100 * s.alarm_steps / max(1, s.steps):.2f}% | "
        f"{_med(s.ttt_err_first) / 60:.1f} | {_med(s.ttt_err_all) / 60:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.predictor_eval", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--scale", type=float, default=1.0, help="traces per family × this")
    ap.add_argument("--window", type=float, default=600.0, help="fit window, seconds (both methods)")
    ap.add_argument("--horizons", default="300,600,900", help="warning horizons H, seconds, comma-separated")
    ap.add_argument("--families", action="store_true", help="also print one table per trace family")
    args = ap.parse_args(argv)
    horizons = [float(h) for h in args.horizons.split(",")]
    W = args.window
    traces = generate(args.seed, args.scale)
    n_cross = sum(tr.crossing is not None for tr in traces)
    print(
        f"{len(traces)} traces (seed {args.seed}), {n_cross} cross their threshold; window {W:g}s, "
        f"scrape step {STEP:g}s, duration {DURATION / 60:g} min"
    )

    t0 = time.perf_counter()
    ours = {tr.name: ours_ttt(tr, W) for tr in traces}
    t_ours = time.perf_counter() - t0
    check_equivalence(traces, W, ours)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpuwarden-predeval-") as tmp:
        engine = PromEngine(traces, Path(tmp))
        try:
            rng_w = f"{int(W)}s"
            level = engine.query_range(f"predict_linear({METRIC}[{rng_w}], 0)", W, DURATION)
            slope = engine.query_range(f"deriv({METRIC}[{rng_w}])", W, DURATION)
            pl = {h: engine.query_range(f"predict_linear({METRIC}[{rng_w}], {h:g})", W, DURATION) for h in horizons}
        finally:
            engine.close()
    t_prom = time.perf_counter() - t0
    by_name = {tr.name: tr for tr in traces}
    pl_ttt: dict[str, dict[float, float | None]] = {}
    for name, series in level.items():
        thr = by_name[name].threshold
        pl_ttt[name] = {
            t: ((thr - v) / slope[name][t] if slope[name].get(t, 0) > 0 else None) for t, v in series.items()
        }

    groups: list[tuple[str, list[Trace]]] = [("all", traces)]
    if args.families:
        fams = sorted({tr.family for tr in traces})
        groups += [(f, [tr for tr in traces if tr.family == f]) for f in fams]
    for h in horizons:
        ours_w = {n: {t: (v is not None and v <= h) for t, v in d.items()} for n, d in ours.items()}
        pl_w = {n: {t: (v >= by_name[n].threshold) for t, v in d.items()} for n, d in pl[h].items()}
        for gname, group in groups:
            print(f"\nHorizon H = {h / 60:g} min, traces: {gname}\n")
            print(
                "| method | warned before crossing | median lead (min) | p25 lead (min) | "
                "false-alarm traces | alarm steps on quiet traces | TTT abs err at 1st warning (min, median) | "
                "TTT abs err, all warnings (min, median) |"
            )
            print("|---|---|---|---|---|---|---|---|")
            print(_row("gpuwarden (Theil–Sen, 2 windows, gated)", score(group, ours_w, ours, h)))
            print(_row("predict_linear (Prometheus 2.42)", score(group, pl_w, pl_ttt, h)))
    print(
        f"\nours: {t_ours:.1f}s for {sum(len(d) for d in ours.values())} forecasts; "
        f"Prometheus (build TSDB, start, {2 + len(horizons)} query_range): {t_prom:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
