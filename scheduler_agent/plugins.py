"""What a plug-in gets from the agent: ``install(agent: Host, port: SchedulerPort)``.

``Host`` is the part of ``server.Agent`` a plug-in may use, declared here so that the plug-ins
(``remediation.plugin``, ``predictor.plugin``, and ``slurm.plugin``, which builds the port) do
not import the server that imports them. The port is the agent's one ``SchedulerPort``, built
by the server before any plug-in; a plug-in acts on GPUs through it and through nothing that
another plug-in sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from .config import AgentConfig
    from .scheduler import Scheduler
    from .store import Database
    from .web import App


class Host(Protocol):
    """The agent as its plug-ins see it (``server.Agent`` is one)."""

    config: AgentConfig  # .section(name), .error(field, message), .resolve(path)
    db: Database  # .migrate(component, migrations), .path
    app: App  # .add_route(...)
    registry: CollectorRegistry  # .register(collector)
    scheduler: Scheduler  # the embedded scheduler's hooks: .risk, .subscribe(listener)
    tracer_provider: TracerProvider
