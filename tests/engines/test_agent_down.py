"""The agent down for two minutes mid-storm, with real Alertmanager delivering: the agent is
stopped (by pid) while alerts fire, started again two minutes later on the same SQLite file,
and every alert that fired meanwhile is acted on exactly once, delivered by Alertmanager's own
retries (the shipped agent route: a failed notification is retried within the flush, and the
whole group again every ``group_interval``, 10 s, until one succeeds). Nothing acted on before
the stop is acted on again."""

from __future__ import annotations

import time

from tests.engines.parts import (
    CORRECTABLE_BURST,
    UNCORRECTABLE,
    Alertmanager,
    Parts,
    shard_config,
    wait_acted_once,
    wait_scraped,
)
from tests.helpers import wait_until

DOWN_SECONDS = 120.0


def _failed(am: Alertmanager) -> float:
    """Webhook notifications Alertmanager gave up on for a flush (the agent's; the sink is up)."""
    return am.metric("alertmanager_notifications_failed_total", integration="webhook")


def _active(am: Alertmanager, uuids: set[str]) -> bool:
    return uuids <= {a["labels"].get("uuid") for a in am.alerts()}


def test_agent_down_two_minutes_mid_storm_every_alert_acted_on_once(parts: Parts) -> None:
    node = parts.node("exporter", gpus=6)
    agent = parts.agent([node])
    am = parts.alertmanager("alertmanager", agent, parts.sink())
    prometheus = parts.prometheus("prometheus", shard_config(0, 1, [node.instance], [am.url]))
    wait_scraped(prometheus, [node])

    before = [node.inject(0, CORRECTABLE_BURST)]
    wait_acted_once(agent, before, timeout=60, settle=0)

    agent.proc.stop()  # SIGTERM by pid
    down_at = time.monotonic()
    failed_at_stop = _failed(am)
    during = [node.inject(1, UNCORRECTABLE), node.inject(2, CORRECTABLE_BURST), node.inject(3, CORRECTABLE_BURST)]
    wait_until(lambda: _active(am, {u for _, u, _ in during}), 60, 0.5, "the first wave at Alertmanager")
    wait_until(lambda: _failed(am) > failed_at_stop, 60, 0.5, "Alertmanager's failed deliveries to the agent")

    time.sleep(max(0.0, down_at + DOWN_SECONDS / 2 - time.monotonic()))
    failed_mid = _failed(am)
    later = [node.inject(4, UNCORRECTABLE), node.inject(5, CORRECTABLE_BURST)]
    wait_until(lambda: _active(am, {u for _, u, _ in later}), 60, 0.5, "the second wave at Alertmanager")
    wait_until(lambda: _failed(am) > failed_mid, 60, 0.5, "failed deliveries of the second wave")

    time.sleep(max(0.0, down_at + DOWN_SECONDS - time.monotonic()))
    assert time.monotonic() - down_at >= DOWN_SECONDS and not agent.proc.alive()
    restarted_at = time.time()
    agent = parts.restart(agent)

    # settle: more than a group_interval, so any further delivery would have arrived.
    wait_acted_once(agent, before + during + later, timeout=90, settle=12)
    rows = {(r["rule"], r["uuid"]): r for r in agent.firing()}
    assert all(rows[(rule, uuid)]["at"] >= restarted_at for rule, uuid, _ in during + later)
    assert rows[before[0][:2]]["at"] < restarted_at, "acted on before the stop, and not again"
    gpus = {g["uuid"]: g for g in agent.api("/api/v1/gpus")}
    assert [gpus[u]["quarantined"] for _, u, _ in before + during + later] == [False, True, False, False, True, False]
