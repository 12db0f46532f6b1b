"""``gpuwarden-agent predict``: forecasts from a CSV file, or from Prometheus for every GPU.

    gpuwarden-agent predict --csv FILE --threshold T [--window S] [--horizon S] [--metric KIND]
        Reads ``timestamp,value`` lines (seconds, float; a header line and blank lines are
        skipped), or ``timestamp,value,throttle`` where the optional third column is 1 while
        the GPU's firmware holds it (gpu_throttle_active: a thermal slowdown or power cap) and 0
        otherwise: a climb that is being held is then not extrapolated. Prints ONE JSON object
        judged as of the last sample: seconds_to_threshold
        (null when no crossing is predicted with enough confidence), confidence (0-1),
        slope_per_second, risk (0-1), warn (seconds_to_threshold <= horizon) and details.

    gpuwarden-agent predict [--prometheus.url URL] [--rules FILE] [--source S] [--lead-time S] [--all] [--json]
        Range-queries Prometheus and prints the seed's report for each GPU at risk.

Exit status: 0 done, 1 Prometheus unavailable or rejected the query, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from gpuwarden import sources

from .forecast import MIN_CONFIDENCE, InsufficientData, forecast_series
from .models import KINDS

DEFAULT_WINDOW = 600.0
DEFAULT_HORIZON = 600.0


class InputError(ValueError):
    """Bad CSV input; the message names the file and line."""


def read_csv(path: str, stream: TextIO | None = None) -> tuple[list[float], list[float], list[float] | None]:
    """``timestamp,value[,throttle]`` rows. A first line that does not parse as numbers is a
    header. The optional third column (0/1, as gpu_throttle_active) is read when the first row
    has it; then every row must."""
    times: list[float] = []
    values: list[float] = []
    throttle: list[float] = []
    width: int | None = None
    name = "<stdin>" if path == "-" else path
    try:
        fh = stream if stream is not None else (sys.stdin if path == "-" else open(path, encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        first_content = True
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split(",")]
            try:
                if len(parts) not in (2, 3) or (width is not None and len(parts) != width):
                    want = "2 or 3" if width is None else str(width)
                    raise ValueError(f"expected {want} comma-separated fields, got {len(parts)}")
                t, v = float(parts[0]), float(parts[1])
                if not math.isfinite(t):
                    raise ValueError(f"timestamp {parts[0]!r} is not finite")
                th = float(parts[2]) if len(parts) == 3 else 0.0
                if th not in (0.0, 1.0):
                    raise ValueError(f"throttle {parts[2]!r} is not 0 or 1")
            except ValueError as exc:
                if first_content:
                    first_content = False
                    continue  # a header such as "timestamp,value"
                raise InputError(
                    f"{name}:{lineno}: {exc} in {line[:80]!r}; expected 'timestamp,value[,throttle]' "
                    "(seconds, float, 0/1)"
                ) from None
            first_content = False
            width = len(parts)
            times.append(t)
            values.append(v)
            throttle.append(th)
    finally:
        if stream is None and fh is not sys.stdin:
            fh.close()
    return times, values, (throttle if width == 3 else None)


def _json_number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def predict_csv(args: argparse.Namespace, out: TextIO) -> int:
    times, values, throttle = read_csv(args.csv)
    if not times:
        raise InputError(f"{args.csv}: no samples")
    try:
        kind = None if args.metric == "auto" else args.metric
        f = forecast_series(
            times, values, args.threshold, args.window, args.min_confidence, kind=kind, throttle=throttle
        )
    except InsufficientData as exc:
        raise InputError(f"{args.csv}: {exc} (window {args.window:g}s)") from None
    d = f.as_dict()
    ttt = f.seconds_to_threshold
    d.update(
        {
            "seconds_to_threshold": _json_number(ttt),
            "slope_per_second": _json_number(f.slope_per_second),
            "warn": ttt is not None and ttt <= args.horizon,
            "horizon": args.horizon,
            "window": args.window,
            "samples": len(times),
            "throttle_column": throttle is not None,
            "as_of": times[-1] if times else None,
        }
    )
    json.dump(d, out, allow_nan=False, default=_json_number)
    out.write("\n")
    return 0


def predict_prometheus(args: argparse.Namespace, out: TextIO) -> int:
    from gpuwarden.config import ConfigError
    from gpuwarden.prom import PrometheusClient, PrometheusError
    from gpuwarden.rules import config as rules_config

    from .health import GpuHealth
    from .report import at_risk, gpu_report
    from .service import PredictorService

    try:
        cfg = rules_config.load(Path(args.rules) if args.rules else None)
    except (OSError, ConfigError) as exc:  # ConfigError names file, line and field
        print(f"gpuwarden-agent predict: {exc}", file=sys.stderr)
        return 2
    svc = PredictorService(
        PrometheusClient(args.prometheus_url, args.timeout),
        cfg,
        lead_time=args.lead_time,
        window=args.window,
        step=args.step,
        min_confidence=args.min_confidence,
        source=args.source,
    )
    try:
        gpus = svc.fetch(time.time())
    except PrometheusError as exc:
        print(f"gpuwarden-agent predict: {exc}", file=sys.stderr)
        return 1
    shown: list[GpuHealth] = [
        h for h in sorted(gpus.values(), key=lambda h: (h.instance, _idx(h.gpu))) if args.all or at_risk(h, svc.specs)
    ]
    if args.json:
        json.dump(
            [
                {
                    "gpu": h.gpu,
                    "uuid": h.uuid,
                    "instance": h.instance,
                    "risk": h.risk,
                    "recent_errors": h.recent_errors,
                    "forecasts": {k: f.as_dict() for k, f in h.forecasts.items()},
                }
                for h in shown
            ],
            out,
            indent=2,
            default=_json_number,
        )
        out.write("\n")
        return 0
    if not gpus:
        out.write(
            f"No GPU series found in Prometheus at {args.prometheus_url} "
            f"(is it scraping {svc.source} under {svc.job_selector}?)\n"
        )
        return 0
    if not shown:
        out.write(f"No GPU at risk ({len(gpus)} GPUs checked over the last {args.window / 60:g} minutes)\n")
        return 0
    out.write("\n".join(gpu_report(h, svc.specs, args.lead_time) for h in shown))
    return 0


def _idx(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuwarden-agent predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--csv",
        metavar="FILE",
        help="offline: timestamp,value[,throttle] file ('-' = stdin); throttle 0/1 is optional",
    )
    p.add_argument("--threshold", type=float, help="offline: the critical threshold (required with --csv)")
    p.add_argument(
        "--horizon",
        type=float,
        default=DEFAULT_HORIZON,
        help="offline: warn when the crossing is predicted within this many seconds (default %(default)g)",
    )
    p.add_argument(
        "--window", type=float, default=DEFAULT_WINDOW, help="fit the last this many seconds (default %(default)g)"
    )
    p.add_argument(
        "--metric",
        choices=("auto", *KINDS),
        default="auto",
        help="offline: which model judges the series (default auto: whole counts under a small threshold "
        "are ECC errors per window, anything else a temperature-like first-order series)",
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=MIN_CONFIDENCE,
        help="withhold forecasts less confident than this (default %(default)g)",
    )
    p.add_argument(
        "--prometheus.url",
        dest="prometheus_url",
        default="http://127.0.0.1:9090",
        help="Prometheus to range-query (default %(default)s)",
    )
    p.add_argument("--rules", metavar="FILE", help="thresholds file (default: the shipped rules/thresholds.yaml)")
    p.add_argument(
        "--source",
        choices=sources.SOURCES,
        help="Prometheus mode: the exporter the GPUs' metrics come from (default: the thresholds file's settings.source)",
    )
    p.add_argument(
        "--lead-time",
        type=float,
        default=300.0,
        help="migrate when critical is predicted within this many seconds (default %(default)g)",
    )
    p.add_argument("--step", type=float, default=15.0, help="query_range step, seconds (default %(default)g)")
    p.add_argument("--timeout", type=float, default=10.0, help="Prometheus request timeout, seconds")
    p.add_argument("--all", action="store_true", help="report every GPU, not only those at risk")
    p.add_argument("--json", action="store_true", help="Prometheus mode: print JSON instead of the report")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.window <= 0 or args.horizon < 0 or not 0 <= args.min_confidence <= 1:
        print(
            "gpuwarden-agent predict: --window must be > 0, --horizon >= 0, --min-confidence in 0..1", file=sys.stderr
        )
        return 2
    if args.csv is not None:
        if args.threshold is None or not math.isfinite(args.threshold):
            print(
                "gpuwarden-agent predict: --csv needs --threshold T (the critical value, same unit as the file)",
                file=sys.stderr,
            )
            return 2
        try:
            return predict_csv(args, out)
        except InputError as exc:
            print(f"gpuwarden-agent predict: {exc}", file=sys.stderr)
            return 2
    return predict_prometheus(args, out)


if __name__ == "__main__":
    sys.exit(main())
