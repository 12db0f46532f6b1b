"""Scrape cost of gpuwarden-exporter against nvitop-exporter, side by side in one run.

Both read the same simulated libnvidia-ml (exporter/sim, installed at pynvml's ctypes boundary,
zero added latency unless --latency-us) in the same process, interleaved round by round so
machine noise hits both alike. Per scrape we take: CPU time of the whole process (every thread:
our GPU readers included), wall latency, NVML calls (counted by the simulated library) and the
per-GPU series produced. nvitop-exporter updates its gauges in a loop and serves the registry;
one "scrape" for it is one update of every GPU plus rendering the registry ("gpu only"), and,
as it runs by default, with its host metrics too ("with host").

    python -m bench.exporter_scrape                 # 8 and 64 GPUs
    python -m bench.exporter_scrape --gpus 8 --rounds 20

Needs the bench extra: pip install -e '.[bench]' (nvitop, nvitop-exporter).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

CONTENDERS = ("gpuwarden", "nvitop (gpu only)", "nvitop (with host)")
# Per-GPU health signals beyond plain telemetry (what operators alert on).
HEALTH = re.compile(r"ecc|throttle|xid|retired|remapped|replay|_up$|stale|energy|memory_temperature")


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _one_size(gpus: int, rounds: int, per_round: int, latency_us: float) -> dict:
    """Runs in a fresh process per fleet size (pynvml and nvitop keep process-wide state)."""
    logging.disable(logging.CRITICAL)  # nvitop logs every unsupported call; not measured
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from gpuwarden.exporter import collectors
    from gpuwarden.exporter.collector import GpuCollector
    from gpuwarden.exporter.exposition import TextRenderer
    from gpuwarden.exporter.service import ExporterService
    from gpuwarden.exporter.sim.clock import ManualClock
    from gpuwarden.exporter.sim.fleet import Fleet
    from gpuwarden.exporter.sim.library import SimLibrary, install

    fleet = Fleet(gpus, ManualClock())
    lib = SimLibrary(fleet, latency_s=latency_us / 1e6)
    service = ExporterService(collectors.enabled(), loader=lambda: install(lib)).start(wait=10)
    assert service.nvml_up, "simulated NVML did not come up"
    ours = CollectorRegistry()
    ours.register(GpuCollector(service))
    renderer = TextRenderer()

    from nvitop import Device
    from nvitop_exporter.exporter import PrometheusExporter

    devices = Device.all()
    peer = PrometheusExporter(devices, hostname="bench", registry=CollectorRegistry(), interval=1.0)

    def nvitop_gpu() -> bytes:
        for d in devices:
            peer.update_device(d)
        return generate_latest(peer.registry)

    def nvitop_host() -> bytes:
        peer.update_host()
        return nvitop_gpu()

    fns: dict[str, Callable[[], bytes]] = {
        "gpuwarden": lambda: renderer.render(ours),  # what GET /metrics runs
        "nvitop (gpu only)": nvitop_gpu,
        "nvitop (with host)": nvitop_host,
    }
    first_uuid = fleet.gpus[0].uuid
    out: dict[str, dict] = {}
    stats = {name: {"cpu": [], "wall": [], "calls": 0, "n": 0} for name in fns}
    for name, fn in fns.items():  # warm up: first scrapes learn what is unsupported
        for _ in range(5):
            text = fn().decode()
        series = [ln for ln in text.splitlines() if not ln.startswith("#") and f'"{first_uuid}"' in ln]
        names = {ln.split("{", 1)[0] for ln in series}
        out[name] = {
            "series_per_gpu": len(series),
            "metrics_per_gpu": len(names),
            "health_per_gpu": len([n for n in names if HEALTH.search(n)]),
        }
    for _ in range(rounds):
        for name, fn in fns.items():
            st = stats[name]
            before = sum(lib.calls.values())
            for _ in range(per_round):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                st["wall"].append(time.perf_counter() - t0)
                st["cpu"].append(time.process_time() - c0)
            st["calls"] += sum(lib.calls.values()) - before
            st["n"] += per_round
    service.stop()
    for name, st in stats.items():
        out[name].update(
            cpu_ms=statistics.fmean(st["cpu"]) * 1e3,
            p50_ms=_percentile(st["wall"], 0.50) * 1e3,
            p99_ms=_percentile(st["wall"], 0.99) * 1e3,
            calls=st["calls"] / st["n"],
            scrapes=st["n"],
        )
    return out


def _table(results: dict[int, dict]) -> str:
    lines = [
        "| GPUs | exporter | CPU ms/scrape | p50 ms | p99 ms | NVML calls/scrape | series/GPU | metrics/GPU | health metrics/GPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for gpus, res in results.items():
        for name in CONTENDERS:
            r = res[name]
            lines.append(
                f"| {gpus} | {name} | {r['cpu_ms']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                f"{r['calls']:.0f} | {r['series_per_gpu']} | {r['metrics_per_gpu']} | {r['health_per_gpu']} |"
            )
    lines.append("")
    lines.append(
        "| GPUs | CPU ratio nvitop(gpu only)/gpuwarden | CPU ratio nvitop(with host)/gpuwarden | "
        "NVML calls ratio | gpuwarden p99 ms |"
    )
    lines.append("|---:|---:|---:|---:|---:|")
    for gpus, res in results.items():
        o = res["gpuwarden"]
        lines.append(
            f"| {gpus} | {res['nvitop (gpu only)']['cpu_ms'] / o['cpu_ms']:.2f}x | "
            f"{res['nvitop (with host)']['cpu_ms'] / o['cpu_ms']:.2f}x | "
            f"{res['nvitop (gpu only)']['calls'] / o['calls']:.2f}x | {o['p99_ms']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.exporter_scrape",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default %(default)s)")
    p.add_argument(
        "--per-round", type=int, default=0, help="scrapes per contender per round (default: 400/GPUs, at least 5)"
    )
    p.add_argument("--latency-us", type=float, default=0.0, help="added to every simulated NVML device call")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one fleet size, JSON out
    args = p.parse_args(argv)
    if args.one:
        per = args.per_round or max(5, 400 // args.one)
        print(json.dumps(_one_size(args.one, args.rounds, per, args.latency_us)))
        return 0
    try:
        import nvitop_exporter  # noqa: F401
    except ImportError:
        print("nvitop-exporter is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    results: dict[int, dict] = {}
    for gpus in args.gpus:
        cmd = [
            sys.executable,
            "-m",
            "bench.exporter_scrape",
            "--one",
            str(gpus),
            "--rounds",
            str(args.rounds),
            "--per-round",
            str(args.per_round),
            "--latency-us",
            str(args.latency_us),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        results[gpus] = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"# exporter scrape benchmark (python {sys.version.split()[0]}, latency {args.latency_us} us/call)")
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
