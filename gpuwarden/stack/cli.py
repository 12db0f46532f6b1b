"""The ``gpuwarden`` command: ``gpuwarden up`` brings the whole loop up on this host.

Starts the exporter (real GPUs when NVML finds them, else the simulated fleet, saying so), the
agent, Alertmanager with the shipped routing pointed at the agent, and Prometheus with the
generated rules, all under one working directory (a ``Stack``); prints the URLs; shows a live
view; plays the demo (or ``--scenario``) on a simulated fleet; and on Ctrl-C, SIGTERM or
``--duration`` stops every child by pid.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from gpuwarden.procs import ProcError, pick_port

from . import configs, demo
from .launcher import ALERTMANAGER_NAMES, PROMETHEUS_NAMES, Stack, StackError, find_binary
from .view import LiveView


def detect_gpus() -> tuple[int, str]:
    """(GPU count, why) from the real NVML; 0 when NVML cannot be loaded, hangs or finds none."""
    from gpuwarden.exporter.probe import nvml_gpu_count

    count = nvml_gpu_count()
    if not count:
        return 0, "NVML found no GPU (libnvidia-ml missing, failing or without devices)"
    return count, f"NVML found {count} GPU(s)"


def scenario_file(name: str) -> Path:
    """A scenario file given by path, or one shipped with the simulator (package data) by name."""
    from gpuwarden.exporter.sim.scenario import shipped

    path = Path(name)
    if path.exists():
        return path
    known = shipped()
    if name not in known:
        raise StackError(
            f"--scenario {name!r}: no such file nor shipped scenario (shipped: demo, none, {', '.join(sorted(known))})"
        )
    return known[name]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpuwarden", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the whole loop up on this host")
    up.add_argument(
        "--workdir", type=Path, default=Path(".gpuwarden"), help="all state, configs and logs (default .gpuwarden)"
    )
    up.add_argument("--simulate", type=int, metavar="N", help="use N simulated GPUs even when NVML finds real ones")
    up.add_argument(
        "--scenario",
        default="demo",
        help="simulated fleet only: 'demo' (default), 'none', a shipped scenario name or a file",
    )
    up.add_argument("--prometheus", help="prometheus binary (default: found on PATH)")
    up.add_argument(
        "--alertmanager", help="alertmanager binary (default: prometheus-alertmanager or alertmanager on PATH)"
    )
    up.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    up.add_argument("--interval", type=float, default=2.0, help="live view refresh in seconds")
    up.add_argument("--scrape-interval", default="5s", help="Prometheus scrape and rule evaluation interval")
    return parser.parse_args(argv)


def up(args: argparse.Namespace) -> int:
    prometheus = find_binary(PROMETHEUS_NAMES, "Prometheus", args.prometheus)
    alertmanager = find_binary(ALERTMANAGER_NAMES, "Alertmanager", args.alertmanager)

    real, why = (0, "--simulate given") if args.simulate else detect_gpus()
    simulated = real == 0
    gpu_count = (args.simulate or 8) if simulated else real
    mode = (
        f"REAL GPUs: {why}" if not simulated else f"SIMULATED fleet of {gpu_count} GPUs ({why}); no real GPU is touched"
    )
    print(f"gpuwarden: {mode}", flush=True)
    demo_on = simulated and args.scenario == "demo"
    scenario = scenario_file(args.scenario) if simulated and args.scenario not in ("demo", "none") else None

    # The usual ports when free, else any (a second stack, a system Prometheus).
    taken: set[int] = set()
    ports = configs.Ports(
        exporter=pick_port(9786, taken),
        agent=pick_port(9787, taken),
        prometheus=pick_port(9090, taken),
        alertmanager=pick_port(9093, taken),
        sim_control=pick_port(9788, taken),
        sink=pick_port(9789, taken),
    )
    settings = configs.Settings(
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.scrape_interval,
        simulated=simulated,
        throttle_watts=demo.THROTTLE_WATTS if demo_on else None,
    )
    stack = Stack(
        args.workdir,
        prometheus=prometheus,
        alertmanager=alertmanager,
        settings=settings,
        ports=ports,
        gpu_count=gpu_count,
        scenario=scenario,
    )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack.start()
        assert stack.sink is not None
        header = (
            [
                f"gpuwarden: {mode}",
                f"  exporter      {stack.exporter_url}/metrics",
                f"  prometheus    {stack.prometheus_url}  (rules: {configs.RULES_DIR})",
                f"  alertmanager  {stack.alertmanager_url}",
                f"  agent         {stack.agent_url}/api/v1/gpus  (token in {stack.paths['token']})",
            ]
            + ([f"  sim control   {stack.sim_url}/api/v1/gpus"] if simulated else [])
            + [
                f"  state, configs and logs under {stack.workdir}",
            ]
        )
        print("\n".join(header[1:]), flush=True)

        if demo_on:

            def play_demo() -> None:
                try:
                    targets = demo.start(stack.agent_url, stack.token, stack.sim_url, gpu_count)
                    print(
                        f"demo: thermal runaway on gpu {targets['thermal']}, uncorrectable ECC on gpu "
                        f"{targets['ecc']}, power excursion on gpu {targets['power']} (job train-b)",
                        flush=True,
                    )
                except Exception as exc:  # noqa: BLE001 - the stack stays up; say why the demo did not start
                    print(f"demo: could not start: {exc}", flush=True)

            threading.Thread(target=play_demo, name="demo", daemon=True).start()

        view = LiveView(stack.agent_url, stack.prometheus_url, stack.token, stack.sink, header)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set():
            view.step()
            dead = stack.dead()
            if dead:
                raise StackError(dead[0].exited())
            if deadline and time.monotonic() >= deadline:
                break
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        print("gpuwarden: stopping...", flush=True)
        stack.stop()
        print("gpuwarden: stopped; nothing left running", flush=True)
    return 0


COMMANDS = {"up": up}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ProcError as exc:  # StackError included
        print(f"gpuwarden: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
