"""Builds the agent's Slurm port (see ``scheduler_agent.server``): ``install(agent)``.

With a ``slurm:`` section (and ``enabled`` not false) it returns the ``SlurmPort``; the agent
calls it before any plug-in and hands that port to remediation and to the predictor, which act
through it instead of the embedded scheduler (``None``: the agent uses the embedded one). It
also follows the embedded scheduler's quarantine/release events (operators using
``/api/v1/gpus/{uuid}/release``), adds Slurm's running jobs to the agent's
``gpu_allocation_info``, and adds two routes:

  GET  /api/v1/slurm/commands                 the journal of Slurm commands, newest first
  POST /api/v1/slurm/gpus/{uuid}/release      release in Slurm (and in the agent), with the answer

The agent closes the port (its journal's connection) after the plug-ins that use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import SlurmPort
from .config import parse
from .errors import SlurmError
from .journal import Journal
from .nodemap import NodeMap
from .runner import Runner

if TYPE_CHECKING:
    from ..plugins import Host


def install(agent: Host) -> SlurmPort | None:
    cfg = agent.config
    if "slurm" not in cfg.raw:
        return None
    sc = parse(cfg.section("slurm"), error=cfg.error)
    if not sc.enabled:
        return None
    runner = Runner(
        sc.scontrol,
        str(cfg.resolve(sc.slurm_conf)) if sc.slurm_conf else None,
        sc.timeout_seconds,
        sc.attempts,
        sc.backoff_seconds,
    )
    port = SlurmPort(
        runner, Journal(agent.db), NodeMap(sc.nodes, sc.node_label), agent.scheduler, sc.start_requeued_now
    )
    agent.scheduler.subscribe(port.on_event)
    agent.scheduler.add_allocation_source(port.allocations)  # Slurm's jobs in gpu_allocation_info
    _routes(agent, port)
    return port


def _routes(agent: Host, port: SlurmPort) -> None:
    from ..web import Request, Response

    def commands(req: Request) -> Response:
        try:
            limit = int((req.query.get("limit") or ["100"])[-1])
        except ValueError:
            return Response(400, {"error": "limit must be an integer", "field": "limit"})
        return Response(200, {"commands": port.journal.rows(max(1, min(limit, 10000)))})

    def release(req: Request) -> Response:
        try:
            return Response(200, port.release(req.params["uuid"], "api"))
        except SlurmError as exc:
            return Response(502, {"error": str(exc), "field": None})

    agent.app.add_route(
        "GET",
        "/api/v1/slurm/commands",
        commands,
        openapi={
            "summary": "Slurm commands the agent ran (journal), newest first",
            "responses": {"200": {"description": "commands with attempts and outcome"}},
        },
    )
    agent.app.add_route(
        "POST",
        "/api/v1/slurm/gpus/{uuid}/release",
        release,
        openapi={
            "summary": "Release a quarantined GPU: resume its node when our drain holds no other GPU",
            "responses": {
                "200": {"description": "what was done in Slurm"},
                "502": {"description": "scontrol failed (the error says how)"},
            },
        },
    )
