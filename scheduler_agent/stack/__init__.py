"""``gpuwarden up``: the whole loop on one host, from one command.

Starts the exporter (real GPUs when NVML finds them, else the simulated fleet, saying so), the
agent, Alertmanager with the shipped routing pointed at the agent, and Prometheus with the
generated rules, all under one working directory; prints the URLs; shows a live view; plays the
demo (or ``--scenario``) on a simulated fleet; and on Ctrl-C (or ``--duration``) stops every
child by pid. Modules: ``configs`` (the files written), ``processes`` (children), ``view`` (live
view and notification sink), ``demo`` (the default fault scenario).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from . import configs, demo
from .processes import Children, StackError, console_script, pick_port
from .view import LiveView, NotificationSink

INSTALL_HINT = "install them with 'apt-get install prometheus prometheus-alertmanager' (or 'make binaries')"


def _binary(flag_value: str | None, names: Sequence[str], what: str) -> str:
    if flag_value:
        if not Path(flag_value).exists() and not shutil.which(flag_value):
            raise StackError(f"{what} binary {flag_value!r} not found")
        return flag_value
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(f"{what} not found on PATH (looked for {', '.join(names)}): {INSTALL_HINT}, "
                     f"or pass --{what.lower()} PATH")


def detect_gpus() -> tuple[int, str]:
    """(GPU count, why) from the real NVML; 0 when NVML cannot be loaded, hangs or finds none."""
    from gpuwarden.exporter.probe import nvml_gpu_count
    count = nvml_gpu_count()
    if not count:
        return 0, "NVML found no GPU (libnvidia-ml missing, failing or without devices)"
    return count, f"NVML found {count} GPU(s)"


def _scenario_file(name: str) -> Path:
    from gpuwarden.exporter.sim.scenario import shipped
    path = Path(name)
    if path.exists():
        return path
    known = shipped()
    if name not in known:
        raise StackError(f"--scenario {name!r}: no such file nor shipped scenario "
                         f"(shipped: demo, none, {', '.join(sorted(known))})")
    return known[name]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpuwarden", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the whole loop up on this host")
    up.add_argument("--workdir", type=Path, default=Path(".gpuwarden"),
                    help="all state, configs and logs (default .gpuwarden)")
    up.add_argument("--simulate", type=int, metavar="N",
                    help="use N simulated GPUs even when NVML finds real ones")
    up.add_argument("--scenario", default="demo",
                    help="simulated fleet only: 'demo' (default), 'none', a shipped scenario name or a file")
    up.add_argument("--prometheus", help="prometheus binary (default: found on PATH)")
    up.add_argument("--alertmanager", help="alertmanager binary (default: prometheus-alertmanager or alertmanager on PATH)")
    up.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    up.add_argument("--interval", type=float, default=2.0, help="live view refresh in seconds")
    up.add_argument("--scrape-interval", default="5s", help="Prometheus scrape and rule evaluation interval")
    return parser.parse_args(argv)


def up(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    prometheus = _binary(args.prometheus, ["prometheus"], "Prometheus")
    alertmanager = _binary(args.alertmanager, ["prometheus-alertmanager", "alertmanager"], "Alertmanager")

    real, why = (0, "--simulate given") if args.simulate else detect_gpus()
    simulated = real == 0
    gpu_count = (args.simulate or 8) if simulated else real
    mode = (f"REAL GPUs: {why}" if not simulated else
            f"SIMULATED fleet of {gpu_count} GPUs ({why}); no real GPU is touched")
    print(f"gpuwarden: {mode}", flush=True)

    taken: set[int] = set()
    ports = configs.Ports(exporter=pick_port(9786, taken), agent=pick_port(9787, taken),
                          prometheus=pick_port(9090, taken), alertmanager=pick_port(9093, taken),
                          sim_control=pick_port(9788, taken), sink=pick_port(9789, taken))
    settings = configs.Settings(scrape_interval=args.scrape_interval, evaluation_interval=args.scrape_interval,
                                simulated=simulated,
                                throttle_watts=demo.THROTTLE_WATTS if simulated and args.scenario == "demo" else None)
    paths = configs.write_all(workdir, ports, settings)
    token = paths["token"].read_text().strip()
    children = Children(workdir / "logs")
    sink = NotificationSink(ports.sink).start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        exporter_argv = [console_script("gpuwarden-exporter"), f"--web.listen-address=127.0.0.1:{ports.exporter}"]
        if simulated:
            exporter_argv += [f"--simulate={gpu_count}", f"--sim.control-address=127.0.0.1:{ports.sim_control}"]
            if args.scenario not in ("demo", "none"):
                exporter_argv.append(f"--scenario={_scenario_file(args.scenario)}")
        exp = children.start("exporter", exporter_argv)
        children.wait_ready(exp, f"http://127.0.0.1:{ports.exporter}/metrics")
        agent = children.start("agent", [console_script("gpuwarden-agent"), "serve", f"--config={paths['agent']}"],
                               cwd=workdir / "agent")
        children.wait_ready(agent, f"http://127.0.0.1:{ports.agent}/healthz")
        am = children.start("alertmanager", [
            alertmanager, f"--config.file={paths['alertmanager']}", f"--storage.path={workdir / 'alertmanager/data'}",
            f"--web.listen-address=127.0.0.1:{ports.alertmanager}", "--cluster.listen-address="])
        children.wait_ready(am, f"http://127.0.0.1:{ports.alertmanager}/-/ready")
        prom = children.start("prometheus", [
            prometheus, f"--config.file={paths['prometheus']}", f"--storage.tsdb.path={workdir / 'prometheus/data'}",
            f"--web.listen-address=127.0.0.1:{ports.prometheus}", "--storage.tsdb.retention.time=2d"])
        children.wait_ready(prom, f"http://127.0.0.1:{ports.prometheus}/-/ready")

        agent_url = f"http://127.0.0.1:{ports.agent}"
        prom_url = f"http://127.0.0.1:{ports.prometheus}"
        header = [
            f"gpuwarden: {mode}",
            f"  exporter      http://127.0.0.1:{ports.exporter}/metrics",
            f"  prometheus    {prom_url}  (rules: {configs.RULES_DIR})",
            f"  alertmanager  http://127.0.0.1:{ports.alertmanager}",
            f"  agent         {agent_url}/api/v1/gpus  (token in {paths['token']})",
        ] + ([f"  sim control   http://127.0.0.1:{ports.sim_control}/api/v1/gpus"] if simulated else []) + [
            f"  state, configs and logs under {workdir}",
        ]
        print("\n".join(header[1:]), flush=True)

        if simulated and args.scenario == "demo":
            def play_demo() -> None:
                try:
                    targets = demo.start(agent_url, token, f"http://127.0.0.1:{ports.sim_control}", gpu_count)
                    print(f"demo: thermal runaway on gpu {targets['thermal']}, uncorrectable ECC on gpu "
                          f"{targets['ecc']}, power excursion on gpu {targets['power']} (job train-b)", flush=True)
                except Exception as exc:  # noqa: BLE001 - the stack stays up; say why the demo did not start
                    print(f"demo: could not start: {exc}", flush=True)
            threading.Thread(target=play_demo, name="demo", daemon=True).start()

        view = LiveView(agent_url, prom_url, token, sink, header)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set():
            view.step()
            dead = children.dead()
            if dead:
                raise StackError(f"{dead[0].name} exited with status {dead[0].popen.returncode}; "
                                 f"its log ({dead[0].log}) ends with:\n{dead[0].tail()}")
            if deadline and time.monotonic() >= deadline:
                break
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        print("gpuwarden: stopping...", flush=True)
        children.stop_all()
        sink.stop()
        print("gpuwarden: stopped; nothing left running", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return up(args)
    except StackError as exc:
        print(f"gpuwarden: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
