"""Plug-in seam (scheduler_agent.server): ``install(agent, port)`` wires PredictorService into
the agent.

Enabled by a ``predictor:`` section in the agent's config, validated by ``config.schema.json``
(where the defaults are written) through the config foundation::

    predictor:
      prometheus_url: http://127.0.0.1:9090   # required
      period_seconds: 30        # how often to forecast
      window_seconds: 600       # trend window
      step_seconds: 15          # query_range step (the scrape interval)
      lead_time_seconds: 300    # migrate jobs when critical is predicted this soon
      timeout_seconds: 10       # per Prometheus request
      migrate: true             # false: forecast and score risk, never preempt
      rules_file: null          # thresholds file (default: the shipped rules/thresholds.yaml)

Where the GPUs' metrics come from (gpuwarden-exporter or dcgm-exporter) is the agent's one
setting for it, ``inventory.prometheus.source`` (and its ``job_selector``), when the inventory
is discovered from Prometheus; otherwise the thresholds file's ``settings.source``. When both
are there they must agree (the alerts and the forecasts then read the same series).

The scheduler's ``risk`` hook becomes ``service.risk``; migrations go through ``port``, the
agent's one scheduler port (the embedded scheduler's, or Slurm's when ``slurm:`` is configured),
as ``port.preempt_gpu(uuid, reason, ActionContext("predictor", migration_id, gpu))``
(``migrations.PortMigrator``); metrics land on the agent's registry; spans come from the agent's
tracer provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuwarden import config as foundation

from ..remediation.port import SchedulerPort
from .migrations import PortMigrator
from .service import PredictorService

if TYPE_CHECKING:
    from ..plugins import Host


def _schema() -> foundation.Schema:
    return foundation.Schema.packaged("gpuwarden.scheduler_agent.predictor", "config.schema.json")


def _source(agent: Host, cfg: Any) -> tuple[str | None, str | None]:
    """(source, job_selector) from inventory.prometheus; (None, None): the rules file's own."""
    discovery = (agent.config.inventory or {}).get("prometheus")
    if not discovery:
        return None, None
    source = str(discovery.get("source", "gpuwarden"))
    if source != cfg.source:
        raise agent.config.error(
            "inventory.prometheus.source",
            f"{source!r}, but the predictor's thresholds file {cfg.path} has settings.source "
            f"{cfg.source!r}: set both to the exporter the GPUs' metrics come from",
        )
    return source, discovery.get("job_selector") or None


def install(agent: Host, port: SchedulerPort) -> PredictorService | None:
    section = agent.config.section("predictor")
    if not section:
        return None
    # config.schema.json: every problem at once, named predictor.<key>; its defaults filled in.
    settings = foundation.check_section(section, _schema(), "predictor", agent.config.error)
    url, migrate, rules_file = settings["prometheus_url"], settings["migrate"], settings["rules_file"]
    nums = {key: float(value) for key, value in settings.items() if key.endswith("_seconds")}
    from gpuwarden.rules import config as rules_config

    try:
        cfg = rules_config.load(agent.config.resolve(rules_file) if rules_file else None)
    except rules_config.ConfigError as exc:
        raise agent.config.error("predictor.rules_file", str(exc)) from None
    source, job_selector = _source(agent, cfg)
    from gpuwarden.prom import PrometheusClient

    migrator = PortMigrator(agent.db, port) if migrate else None
    try:
        svc = PredictorService(
            PrometheusClient(url, nums["timeout_seconds"]),
            cfg,
            period=nums["period_seconds"],
            lead_time=nums["lead_time_seconds"],
            window=nums["window_seconds"],
            step=nums["step_seconds"],
            migrator=migrator,
            tracer_provider=agent.tracer_provider,
            source=source,
            job_selector=job_selector,
        )
    except ValueError as exc:
        if migrator is not None:
            migrator.close()
        raise agent.config.error("predictor", str(exc)) from None
    agent.scheduler.risk = svc.risk
    agent.registry.register(svc.collector())
    return svc
