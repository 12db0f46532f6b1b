"""gpuwarden-exporter: GPU metrics from NVML for Prometheus.

Real GPUs by default (libnvidia-ml.so.1 through pynvml; LD_LIBRARY_PATH picks another
implementation). Simulated GPUs only when asked for, with --simulate N or --scenario FILE.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from gpuwarden import logs

from . import collectors
from .collector import GpuCollector
from .collectors.base import Collector
from .server import MetricsServer, parse_listen_address
from .service import DEFAULT_RESCAN, DEFAULT_TIMEOUT, ExporterService
from .sim.models import DEFAULT_MODEL, MODELS

if TYPE_CHECKING:
    from .sim.control import ControlServer

DEFAULT_LISTEN = ":9786"
DEFAULT_CONTROL = "127.0.0.1:9788"

log = logging.getLogger(__name__)


def _duration(text: str) -> float:
    """A number of seconds or a Prometheus duration (gpuwarden.durations)."""
    from gpuwarden.durations import seconds

    try:
        value = seconds(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than zero")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpuwarden-exporter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        metavar="ADDRESS",
        help="address to serve /metrics on (default %(default)s)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="metrics_path",
        default="/metrics",
        metavar="PATH",
        help="path of the metrics page (default %(default)s)",
    )
    p.add_argument(
        "--collector.timeout",
        dest="timeout",
        type=_duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="longest a scrape waits for NVML; GPUs still being read are served stale "
        "(default %(default)ss; keep it under Prometheus' scrape_timeout)",
    )
    p.add_argument(
        "--nvml.rescan-interval",
        dest="rescan_interval",
        type=_duration,
        default=DEFAULT_RESCAN,
        metavar="DURATION",
        help="how often to look for GPUs added or removed (hot-plug) and to re-initialise NVML "
        "once every GPU is lost (default %(default)ss)",
    )
    for name, c in collectors.COLLECTORS.items():
        p.add_argument(
            f"--collector.{name}",
            dest=f"collector_{name}",
            action=argparse.BooleanOptionalAction,
            default=c.default_enabled,
            help=f"{c.help} (default {'on' if c.default_enabled else 'off'})",
        )
    sim = p.add_argument_group("simulation (never used unless asked for)")
    sim.add_argument(
        "--simulate", type=int, metavar="N", help="serve N simulated GPUs instead of reading NVML's library"
    )
    sim.add_argument(
        "--scenario",
        metavar="FILE",
        help="play this scenario on the simulated fleet (implies --simulate; "
        "fleet size from the scenario's 'gpus', else 8)",
    )
    sim.add_argument(
        "--sim.model",
        dest="sim_model",
        default=DEFAULT_MODEL,
        metavar="MODEL",
        help=f"simulated board ({', '.join(MODELS)}; default {DEFAULT_MODEL}, judged by the default thresholds)",
    )
    sim.add_argument(
        "--sim.control-address",
        dest="control",
        default=DEFAULT_CONTROL,
        metavar="ADDRESS",
        help="simulator control endpoint (default %(default)s; '' disables it). It has no "
        "authentication: anyone who can reach it can inject faults and set power "
        "limits, so keep it on loopback (a warning is logged otherwise)",
    )
    logs.add_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        host, port = parse_listen_address(args.listen)
        enabled = collectors.enabled({n: getattr(args, f"collector_{n}") for n in collectors.COLLECTORS})
    except ValueError as exc:
        print(f"gpuwarden-exporter: {exc}", file=sys.stderr)
        return 2

    loader = None
    control = None
    simulating = args.simulate is not None or args.scenario is not None
    if simulating:
        try:
            loader, control, banner = _simulation(args)
        except (ValueError, OSError) as exc:
            print(f"gpuwarden-exporter: {exc}", file=sys.stderr)
            return 2
        print(banner, flush=True)

    service = build_service(args, enabled, loader)
    registry = CollectorRegistry()
    registry.register(GpuCollector(service))
    try:
        server = MetricsServer(registry, host, port, args.metrics_path)
    except OSError as exc:
        print(f"gpuwarden-exporter: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        if control is not None:
            control.stop()  # bound, never started: release its port
        return 1
    service.start(wait=2.0)
    shown = host or "0.0.0.0"
    source = "simulated GPUs" if simulating else ("NVML" if service.nvml_up else "NVML (not available yet; retrying)")
    print(f"gpuwarden-exporter: serving {source} at http://{shown}:{server.port}{args.metrics_path}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if control is not None:
        control.start()
    stop.wait()
    server.stop()
    if control is not None:
        control.stop()
    service.stop()
    return 0


def build_service(
    args: argparse.Namespace, enabled: Sequence[Collector], loader: Callable[[], None] | None
) -> ExporterService:
    """The exporter's service as the flags configure it (not started)."""
    return ExporterService(enabled, timeout=args.timeout, loader=loader, rescan_interval=args.rescan_interval)


def _simulation(args: argparse.Namespace) -> tuple[Callable[[], None], ControlServer | None, str]:
    """Builds the simulated fleet, its library loader and control server, and a banner."""
    from .sim.control import ControlServer
    from .sim.fleet import Fleet
    from .sim.library import SimLibrary, install
    from .sim.scenario import load, play

    scenario = load(args.scenario) if args.scenario else None
    count = args.simulate or (scenario.gpus if scenario and scenario.gpus else 8)
    model = scenario.model if scenario and scenario.model else args.sim_model
    fleet = Fleet(count, model=model)
    if scenario is not None:
        try:
            play(fleet, scenario)
        except LookupError as exc:
            raise ValueError(f"{args.scenario}: {exc}") from exc
    lib = SimLibrary(fleet)
    control = None
    banner = f"gpuwarden-exporter: SIMULATION: {count} simulated {fleet.gpus[0].model.name} GPU(s); no real GPU is read"
    if scenario is not None:
        banner += f"; playing scenario {scenario.name!r} from {args.scenario}"
    if args.control:
        chost, cport = parse_listen_address(args.control)
        control = ControlServer(fleet, chost or "127.0.0.1", cport)
        banner += f"\ngpuwarden-exporter: simulator control at http://{control.host}:{control.port}/api/v1/gpus"
    return (lambda: install(lib)), control, banner


if __name__ == "__main__":
    sys.exit(main())
