"""The agent's plug-in entry point (see ``scheduler_agent.server``): ``install(agent, port)``.

Reads and validates the ``remediation:`` section (errors name the config file, line and field),
migrates our tables, registers the routes and the metrics collector, and returns the
``Remediation`` whose worker the agent starts once its server listens. The worker acts through
``port``, the agent's one scheduler port (the embedded scheduler's, or Slurm's).

Credentials by role: the webhook takes Alertmanager's credential (``remediation.auth``) and
nothing else does; the operator's (``web.token_file``) does everything else. The agent refuses
to start when the webhook has no credential, or when it is the operator's token: whoever can
post an alert to Alertmanager must not be able to submit jobs (which run commands) or release
quarantined GPUs.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import TYPE_CHECKING

from .config import parse
from .errors import PolicyConfigError
from .intake import read_secret
from .port import SchedulerPort
from .service import Remediation, credentials_from

if TYPE_CHECKING:
    from ..plugins import Host


def install(agent: Host, port: SchedulerPort) -> Remediation:
    cfg = agent.config
    rc = parse(cfg.section("remediation"), str(cfg.path), error=cfg.error)
    # Paths in the section are relative to the config file, like every path in it.
    if not rc.bearer_token_file and not rc.basic_username:
        raise cfg.error(
            "remediation.auth",
            "the Alertmanager webhook needs its own credential, "
            "distinct from web.token_file (the operator's): set remediation.auth."
            "bearer_token_file to a file holding a random token (`openssl rand -hex 32`) "
            "and give Alertmanager the same file (http_config.authorization."
            "credentials_file)",
        )
    rc = dataclasses.replace(
        rc,
        bearer_token_file=str(cfg.resolve(rc.bearer_token_file)) if rc.bearer_token_file else None,
        basic_password_file=str(cfg.resolve(rc.basic_password_file)) if rc.basic_password_file else None,
    )
    try:
        creds = credentials_from(rc)
        operator = read_secret(cfg.token_file, "web.token_file")
    except PolicyConfigError as exc:
        raise cfg.error("remediation.auth", str(exc)) from None
    if any(hmac.compare_digest(s, operator) for s in creds.secrets()):
        raise cfg.error(
            "remediation.auth",
            f"holds the same secret as web.token_file ({cfg.token_file}): "
            "the webhook's credential (Alertmanager's) must differ from the operator's, "
            "which submits jobs and releases GPUs; put a new random token in "
            "remediation.auth.bearer_token_file",
        )
    rem = Remediation.create(agent.db, rc, port, tracer_provider=agent.tracer_provider, credentials=creds)
    rem.worker.retention = cfg.retention  # database.retention: pruned in the worker's idle time
    rem.register_routes(agent.app)
    agent.registry.register(rem.collector)
    return rem
