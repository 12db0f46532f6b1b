"""``Stack``: the whole loop's processes, started in order, waited for, and stopped by pid.

Exporter (the simulated fleet, or real GPUs through NVML) → agent → Alertmanager (the shipped
routing, receivers pointed at the agent and at a local notification sink) → Prometheus (the
shipped rules), each started only once the one before answers, every file under one working
directory (``configs``), every child in its own process group (``gpuwarden.procs``) and logging
to ``<workdir>/logs/<name>.log``. One ``Stack`` serves ``gpuwarden up``, the end-to-end tests,
``bench.latency`` and anything else that needs the loop running; what differs between them is
settings (ports, intervals, hold-down), never a rule or a route.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpuwarden.procs import LOOPBACK, Proc, ProcError, console_script, free_ports, stop_all, wait_http

from . import configs
from .view import NotificationSink

INSTALL_HINT = "install them with 'apt-get install prometheus prometheus-alertmanager' (or 'make binaries')"
PROMETHEUS_NAMES = ("prometheus",)
ALERTMANAGER_NAMES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's


class StackError(ProcError):
    """Something the stack needs is missing or did not start; the message says what to do."""


def find_binary(names: Sequence[str], what: str, given: str | None = None) -> str:
    """``given`` when it exists (a path or a name on PATH), else the first of ``names`` on PATH."""
    if given:
        if not Path(given).exists() and not shutil.which(given):
            raise StackError(f"{what} binary {given!r} not found")
        return given
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(
        f"{what} not found on PATH (looked for {', '.join(names)}): {INSTALL_HINT}, or pass --{what.lower()} PATH"
    )


def free_stack_ports() -> configs.Ports:
    """Six distinct free ports on 127.0.0.1."""
    p = free_ports(6)
    return configs.Ports(exporter=p[0], agent=p[1], prometheus=p[2], alertmanager=p[3], sim_control=p[4], sink=p[5])


class Stack:
    """The loop on one host. ``start()`` brings it up (stopping whatever it started when a step
    fails), ``stop()`` stops every child by process group, newest first, and the sink; also a
    context manager.

    ``settings.simulated`` chooses the simulated fleet of ``gpu_count`` GPUs (with ``scenario``,
    a scenario file the exporter plays from its start) or the real GPUs. ``ports`` default to
    free ones; ``exporter`` and ``agent`` to the console scripts of this environment.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        prometheus: str | None = None,
        alertmanager: str | None = None,
        settings: configs.Settings = configs.Settings(),
        ports: configs.Ports | None = None,
        gpu_count: int = 8,
        scenario: Path | None = None,
        exporter: str | None = None,
        agent: str | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.prometheus_bin = find_binary(PROMETHEUS_NAMES, "Prometheus", prometheus)
        self.alertmanager_bin = find_binary(ALERTMANAGER_NAMES, "Alertmanager", alertmanager)
        self.settings = settings
        self.ports = ports or free_stack_ports()
        self.gpu_count = gpu_count
        self.scenario = scenario
        self._exporter, self._agent = exporter, agent
        self.ready_timeout = ready_timeout
        self.procs: list[Proc] = []
        self.paths: dict[str, Path] = {}
        self.token = ""
        self.sink: NotificationSink | None = None
        self._sink_running = False

    # -- where things are -------------------------------------------------------------------
    def url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{port}"

    @property
    def exporter_url(self) -> str:
        return self.url(self.ports.exporter)

    @property
    def agent_url(self) -> str:
        return self.url(self.ports.agent)

    @property
    def prometheus_url(self) -> str:
        return self.url(self.ports.prometheus)

    @property
    def alertmanager_url(self) -> str:
        return self.url(self.ports.alertmanager)

    @property
    def sim_url(self) -> str:
        return self.url(self.ports.sim_control)

    @property
    def simulated(self) -> bool:
        return self.settings.simulated

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Stack:
        if self.procs:
            raise StackError("this stack was started already")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        ports, workdir = self.ports, self.workdir
        self.paths = configs.write_all(workdir, ports, self.settings)
        self.token = self.paths["token"].read_text().strip()
        self.sink = NotificationSink(ports.sink).start()
        self._sink_running = True

        exporter = [
            self._exporter or console_script("gpuwarden-exporter"),
            f"--web.listen-address={LOOPBACK}:{ports.exporter}",
        ]
        if self.simulated:
            exporter += [f"--simulate={self.gpu_count}", f"--sim.control-address={LOOPBACK}:{ports.sim_control}"]
            if self.scenario is not None:
                exporter.append(f"--scenario={self.scenario}")
        self._run("exporter", exporter, self.exporter_url + "/metrics")
        self._run(
            "agent",
            [self._agent or console_script("gpuwarden-agent"), "serve", f"--config={self.paths['agent']}"],
            self.agent_url + "/healthz",
            cwd=workdir / "agent",
        )
        self._run(
            "alertmanager",
            [
                self.alertmanager_bin,
                f"--config.file={self.paths['alertmanager']}",
                f"--storage.path={workdir / 'alertmanager/data'}",
                f"--web.listen-address={LOOPBACK}:{ports.alertmanager}",
                "--cluster.listen-address=",
            ],
            self.alertmanager_url + "/-/ready",
        )
        self._run(
            "prometheus",
            [
                self.prometheus_bin,
                f"--config.file={self.paths['prometheus']}",
                f"--storage.tsdb.path={workdir / 'prometheus/data'}",
                f"--web.listen-address={LOOPBACK}:{ports.prometheus}",
                "--storage.tsdb.retention.time=2d",
            ],
            self.prometheus_url + "/-/ready",
        )

    def _run(self, name: str, argv: list[str], ready_url: str, cwd: Path | None = None) -> Proc:
        proc = Proc(argv, self.logs / f"{name}.log", cwd=cwd, name=name, append=True)
        self.procs.append(proc)
        try:
            wait_http(ready_url, self.ready_timeout, proc)
        except ProcError as exc:
            raise StackError(str(exc)) from None
        return proc

    def wait_for_gpus(self, count: int | None = None, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The agent's GPUs once it knows ``count`` of them (default: the simulated fleet's
        size), discovered from Prometheus; StackError after ``timeout`` s."""
        from . import demo

        try:
            return demo.wait_for_gpus(self.agent_url, self.token, count or self.gpu_count, timeout)
        except TimeoutError as exc:
            raise StackError(str(exc)) from None

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def dead(self) -> list[Proc]:
        """Children that have exited (none should while the stack runs)."""
        return [p for p in self.procs if not p.alive()]

    def running(self) -> list[str]:
        return [p.name for p in self.procs if p.alive()]

    def stop(self, grace: float = 10.0) -> None:
        """Stops every child (by process group: SIGTERM, ``grace`` s, SIGKILL) and the sink. The
        sink's notifications stay readable."""
        stop_all(self.procs, grace)
        if self.sink is not None and self._sink_running:
            self.sink.stop()
            self._sink_running = False

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
