"""The generated rules, unchanged, evaluated by vmalert over VictoriaMetrics fed by vmagent
scraping the exporter (the shipped deploy/scale/vmagent-scrape.yml): a fault fires, reaches
Alertmanager (the shipped routing) and the agent acts."""

from __future__ import annotations

from tests.engines.parts import (
    CORRECTABLE_BURST,
    UNCORRECTABLE,
    Parts,
    firing_alerts,
    vmagent_config,
    wait_acted_once,
    wait_scraped,
)
from tests.helpers import wait_until


def test_vmalert_over_victoria_metrics_fires_and_the_agent_acts(parts: Parts) -> None:
    node = parts.node("exporter", gpus=4)
    agent = parts.agent([node])
    am = parts.alertmanager("alertmanager", agent, parts.sink())
    vm = parts.victoria_metrics()
    parts.vmagent(vmagent_config([node.instance]), vm)
    vmalert = parts.vmalert(vm, [am.url])
    wait_scraped(vm, [node])

    expected = [node.inject(1, UNCORRECTABLE), node.inject(2, CORRECTABLE_BURST)]
    # vmalert itself says the alerts fire (its /api/v1/alerts, Prometheus' shape) ...
    want = {(rule, uuid) for rule, uuid, _ in expected}
    wait_until(lambda: want <= firing_alerts(vmalert), 60, 0.5, f"vmalert to fire {sorted(want)}")
    # ... and the agent, reached through Alertmanager, acts on each exactly once.
    wait_acted_once(agent, expected, timeout=60, settle=3)
    quarantined = {g["uuid"]: g["quarantined"] for g in agent.api("/api/v1/gpus")}
    assert quarantined[expected[0][1]] and not quarantined[expected[1][1]]
