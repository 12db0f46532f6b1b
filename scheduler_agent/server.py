"""Wires the agent together: database, scheduler, executor, HTTP app, metrics, tracing, the
scheduler port, plug-ins.

The scheduler port (``remediation.port.SchedulerPort``) is built once, here, before any
plug-in: ``SlurmPort`` when the config has a ``slurm:`` section (``slurm.plugin.install``), else
``SchedulerAdapter`` over the embedded scheduler. It is ``agent.port``, and every plug-in gets
that same object as an argument; no plug-in sets anything another reads, so their order in
``PLUGINS`` is only the order in which they start (and, reversed, close).

Plug-in seam (each module in ``PLUGINS``: predictor, remediation):
``install(agent: plugins.Host, port: SchedulerPort) -> object | None`` (``Host``: the part of
``Agent`` a plug-in may use). ``install`` runs after the scheduler has recovered and before the
HTTP server starts, so it can::

    agent.db.migrate("remediation", MIGRATIONS)          # its own tables
    agent.config.section("remediation")                  # its raw config (validate it yourself,
    agent.config.error("remediation.budget", "...")      #   raising errors that name the line)
    agent.app.add_route("POST", "/webhook/alertmanager", handler, auth=BearerAuth(path), openapi={...})
    agent.registry.register(MyCollector(...))            # its metrics on the agent's registry
    port.preempt_gpu(uuid, reason, context), port.quarantine(...)   # act on GPUs: the port
    agent.scheduler.risk = fn, .subscribe(listener)                # the embedded scheduler's hooks
    agent.tracer_provider.get_tracer("gpuwarden.remediation")

If the returned object has ``start()`` it is called once the server listens, and ``close()`` at
shutdown (plug-ins are closed before the port, and the port before the scheduler).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from . import api
from .config import AgentConfig
from .executor import Executor, LocalExecutor, TrackingExecutor
from .inventory import PrometheusDiscovery, load_file, static_specs
from .metrics import SchedulerCollector
from .predictor import plugin as predictor
from .remediation import plugin as remediation
from .remediation.port import SchedulerPort
from .remediation.service import SchedulerAdapter
from .scheduler import Scheduler, SchedulerOptions
from .slurm import plugin as slurm
from .store import Database
from .tls import ExpiryCollector, ReloadingContext
from .tracing import provider_from_env
from .web import App, BearerAuth

log = logging.getLogger(__name__)

# Installed in this order with the agent and its port; started in it, closed in reverse.
PLUGINS = (predictor, remediation)


class Agent:
    def __init__(self, config: AgentConfig, tracer_provider: TracerProvider | None = None) -> None:
        self.config = config
        # First, before the database is opened: a bad cert or key stops start-up naming the field.
        self.tls_context = ReloadingContext(config.tls, config.error) if config.tls is not None else None
        self.tracer_provider = tracer_provider or provider_from_env()
        self.registry = CollectorRegistry()
        self.db = Database(config.database_path, config.synchronous)
        self.executor: Executor = (
            LocalExecutor(config.log_dir) if config.executor_kind == "local" else TrackingExecutor()
        )
        opts = SchedulerOptions(**config.scheduler)
        self.scheduler = Scheduler(self.db, self.executor, opts, tracer_provider=self.tracer_provider)
        self.app = App(BearerAuth(config.token_file))
        api.install(self.app, self.scheduler, self.registry)
        self.registry.register(SchedulerCollector(self.scheduler))
        if self.tls_context is not None:
            self.registry.register(ExpiryCollector(self.tls_context))
        self.discovery: PrometheusDiscovery | None = None
        inv = config.inventory
        if "nodes" in inv:
            self.scheduler.sync_inventory(static_specs(inv["nodes"], f"{config.path}: inventory.nodes"))
        if "file" in inv:
            self.scheduler.sync_inventory(load_file(inv["file"]))
        if "prometheus" in inv:
            p = inv["prometheus"]
            self.discovery = PrometheusDiscovery(
                self.scheduler.sync_inventory,
                p["url"],
                p["refresh_seconds"],
                p["node_label"],
                p["timeout_seconds"],
                source=p["source"],
                job_selector=p.get("job_selector"),
            )
            self.registry.register(self.discovery)
        # The one scheduler port, before any plug-in that acts through it.
        slurm_port = slurm.install(self)
        self.port: SchedulerPort = slurm_port if slurm_port is not None else SchedulerAdapter(self.scheduler)
        # The Slurm port first: closed after the plug-ins that use it.
        self.plugins: list[Any] = [slurm_port] if slurm_port is not None else []
        for component in PLUGINS:
            plugin = component.install(self, self.port)
            if plugin is not None:
                self.plugins.append(plugin)

    def start(self) -> tuple[str, int]:
        host = self.config.listen_host
        listener = self.app.serve(host, self.config.listen_port, self.tls_context, self.config.limits)
        self.scheduler.start()
        if self.discovery is not None:
            self.discovery.start()
        for p in self.plugins:
            if hasattr(p, "start"):
                p.start()
        log.info(
            "gpuwarden-agent listening on %s://%s:%s",
            "https" if self.tls_context else "http",
            listener.host,
            listener.port,
        )
        if self.tls_context is None and not _loopback(host):
            log.warning(
                "serving plain HTTP on %s: tokens and alert labels cross the network "
                "readable and replayable by anyone on the path; set web.tls (cert_file, "
                "key_file) or listen on 127.0.0.1 behind a TLS proxy",
                host or "every address",
            )
        return listener.host, listener.port

    def close(self) -> None:
        self.app.shutdown()
        if self.discovery is not None:
            self.discovery.close()
        for p in reversed(self.plugins):
            if hasattr(p, "close"):
                p.close()
        self.scheduler.close()
        self.tracer_provider.shutdown()
        self.db.close()


def _loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every address) or a name that may resolve anywhere
