"""The agent's plug-in entry point (see ``scheduler_agent.server``): ``install(agent)``.

Reads and validates the ``remediation:`` section (errors name the config file, line and field),
migrates our tables, registers the routes and the metrics collector, and returns the
``Remediation`` whose worker the agent starts once its server listens.

Webhook credentials: ``remediation.auth`` when set; otherwise the agent's own API token file
(``web.token_file``), so the webhook is never left open by omission.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .config import parse
from .errors import PolicyConfigError
from .service import Remediation, SchedulerAdapter, credentials_from

if TYPE_CHECKING:
    from ..server import Agent


def install(agent: "Agent") -> Remediation:
    cfg = agent.config
    rc = parse(cfg.section("remediation"), str(cfg.path), error=cfg.error)
    # Paths in the section are relative to the config file, like every path in it.
    rc = dataclasses.replace(
        rc,
        bearer_token_file=str(cfg.resolve(rc.bearer_token_file)) if rc.bearer_token_file
        else (None if rc.basic_username else str(cfg.token_file)),
        basic_password_file=str(cfg.resolve(rc.basic_password_file))
        if rc.basic_password_file else None)
    try:
        creds = credentials_from(rc)
    except PolicyConfigError as exc:
        raise cfg.error("remediation.auth", str(exc)) from None
    # A cluster backend plug-in (scheduler_agent.slurm) may have set its own port.
    port = getattr(agent, "scheduler_port", None) or SchedulerAdapter(agent.scheduler)
    rem = Remediation.create(agent.db, rc, port,
                             tracer_provider=agent.tracer_provider, credentials=creds)
    rem.worker.retention = cfg.retention  # database.retention: pruned in the worker's idle time
    rem.register_routes(agent.app)
    agent.registry.register(rem.collector)
    return rem
