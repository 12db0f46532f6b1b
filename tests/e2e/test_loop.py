"""Each seed rule, from a fault in the simulated fleet to what the policy says should happen.

Fault → exporter (NVML on the simulator) → Prometheus (shipped rules, shipped ``for:``) →
Alertmanager (shipped routing) → agent, checked through the agent's audit trail
(GET /api/v1/actions), its GPU state (GET /api/v1/gpus) and the GPU's own state read back
through NVML (the exporter's /metrics, and the simulator's control endpoint). Then the fault
clears and the action reverts (throttle) or holds (quarantine) as the policy says.

``notify`` rules: the shipped routing sends every gpuwarden alert to the agent (issue 8), so the
proof is the agent's audit entry (action notify, outcome recorded) for that GPU and rule, the
agent having done nothing else to the GPU, and the notification Alertmanager still delivers to
chat/on-call (paging stays Alertmanager's job).

Tests run in the order their rules are expected to fire; all faults run at once (conftest.py).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.rules import config as rules_config
from gpuwarden.stack import harness as L
from tests.helpers import http_get, wait_until

CFG = rules_config.load()
SLACK = 60.0  # beyond a rule's floor: heating up to the threshold, a loaded 2-core machine


def _remaining(run: L.Run, rule: str, receiver: str | None = None) -> float:
    """Seconds left until the rule's delivery to ``receiver`` (default: the agent's record of
    its action) is overdue (floor + slack after the injection)."""
    spec = run.specs[rule]
    due = run.injected_at[rule] + L.floor_seconds(spec, receiver or L.receiver_for(spec)) + SLACK
    return max(5.0, due - time.time())


def _record(run: L.Run, rule: str, at: float) -> None:
    spec = run.specs[rule]
    crossed = run.crossed_at.get(rule)
    run.latencies[rule] = {
        "floor_seconds": L.floor_seconds(spec, L.receiver_for(spec)),
        "injected_to_action_seconds": round(at - run.injected_at[rule], 2),
        **({"crossed_to_action_seconds": round(at - crossed, 2)} if crossed else {}),
    }


def _action(run: L.Run, rule: str, action: str) -> dict[str, Any]:
    """The agent's completed decision on the rule's firing alert; fails if it is not ``action``
    carried out ("acted")."""
    uuid = run.uuid[rule]

    def done() -> list[dict[str, Any]]:
        return [
            a
            for a in run.loop.actions(uuid)
            if a["rule"] == rule and a["status"] == "firing" and a["outcome"] != "pending"
        ]

    rows = wait_until(done, _remaining(run, rule), 0.2, f"the agent's {action} of {rule} on GPU {run.gpu[rule]}")
    assert len(rows) == 1, f"one alert instance, one decision: {rows}"
    row = rows[0]
    assert (row["action"], row["outcome"], row["error"]) == (action, "acted", ""), row
    assert row["severity"] == run.specs[rule].severity
    _record(run, rule, row["at"])
    return row


def _sim_gpu(run: L.Run, rule: str) -> dict[str, Any]:
    return next(g for g in run.loop.sim_gpus() if g["index"] == run.gpu[rule])


def _power_limit_is(run: L.Run, rule: str, watts: float) -> bool:
    """The enforced limit read back through NVML: the simulator's state and the exporter's
    gpu_power_limit_watts (which the exporter reads with nvmlDeviceGetEnforcedPowerLimit)."""
    sim = _sim_gpu(run, rule)["power_limit_watts"]
    exported = run.loop.exporter_value("gpu_power_limit_watts", run.gpu[rule])
    return abs(sim - watts) < 0.01 and exported is not None and abs(exported - watts) < 0.01


def _not_notify(actions: list[dict[str, Any]]) -> list[str]:
    """The actions of an audit trail other than notify records (which change nothing)."""
    assert all(a["outcome"] == "recorded" for a in actions if a["action"] == "notify"), actions
    return [a["action"] for a in actions if a["action"] != "notify"]


def _notify(run: L.Run, rule: str) -> None:
    """A notify rule: recorded in the agent's audit, nothing done to the GPU, and delivered by
    Alertmanager to chat/on-call as before."""
    spec = run.specs[rule]
    uuid = run.uuid[rule]
    assert spec.action == "notify" and L.receiver_for(spec) == L.AGENT_RECEIVER

    def recorded() -> list[dict[str, Any]]:
        return [a for a in run.loop.actions(uuid) if a["rule"] == rule and a["status"] == "firing"]

    rows = wait_until(recorded, _remaining(run, rule), 0.2, f"the agent's record of {rule} on GPU {run.gpu[rule]}")
    for row in rows:  # one per alert instance (the fault holds, so normally exactly one)
        assert (row["action"], row["outcome"], row["error"]) == ("notify", "recorded", ""), row
        assert row["severity"] == spec.severity and row["detail"] == {}, row
    _record(run, rule, rows[0]["at"])
    # The GPU's physics may fire other notify rules on it too: all are records, none an action.
    assert _not_notify(run.loop.actions(uuid)) == [], "the agent must not act on a notify alert"
    gpu = run.loop.gpus()[uuid]
    assert (gpu["state"], gpu["schedulable"], gpu["throttled"], gpu["quarantined"]) == ("healthy", True, False, False)
    assert {"rule": rule, "severity": spec.severity} in gpu["alerts"], "the agent knows the alert fires"

    pager = L.pager_for(spec)
    notes = wait_until(
        lambda: [n for n in run.loop.notifications(rule, run.gpu[rule]) if n["receiver"] == pager],
        _remaining(run, rule, pager),
        0.2,
        f"{rule} on GPU {run.gpu[rule]} delivered to {pager}",
    )
    note = notes[0]
    assert note["labels"]["uuid"] == uuid
    assert (note["labels"]["severity"], note["labels"]["action"]) == (spec.severity, "notify")
    assert _not_notify(run.loop.actions(uuid)) == [], "the agent acted on the GPU of a notify alert"
    assert not run.loop.gpus()[uuid]["throttled"]


def test_ecc_uncorrectable_quarantines_and_holds_until_released(run: L.Run) -> None:
    rule, loop = "ECC_UNCORRECTABLE", run.loop
    uuid = run.uuid[rule]
    _action(run, rule, "quarantine")
    gpu = loop.gpus()[uuid]
    assert (gpu["state"], gpu["quarantined"], gpu["schedulable"]) == ("quarantined", True, False)
    assert _sim_gpu(run, rule)["ecc_uncorrectable"] == 1
    assert loop.exporter_value("gpu_ecc_errors_uncorrectable_total", run.gpu[rule]) == 1

    run.clear(rule)  # a driver reload: the volatile count is 0 again, the alert resolves
    resolved = wait_until(
        lambda: [a for a in loop.actions(uuid) if a["status"] == "resolved" and a["rule"] == rule],
        60,
        0.2,
        f"{rule}'s resolve to reach the agent",
    )
    assert (resolved[0]["action"], resolved[0]["outcome"]) == ("quarantine", "noop")
    gpu = loop.gpus()[uuid]
    assert (gpu["state"], gpu["quarantined"], gpu["schedulable"]) == ("quarantined", True, False), (
        "a quarantine holds after the alert resolves, until a person releases it"
    )

    loop.agent(f"/api/v1/gpus/{uuid}/release", {"actor": "e2e-test"})
    gpu = loop.gpus()[uuid]
    assert (gpu["state"], gpu["quarantined"], gpu["schedulable"]) == ("healthy", False, True)
    assert _not_notify(loop.actions(uuid)) == ["quarantine", "quarantine"]


def test_ecc_errors_spike_notifies(run: L.Run) -> None:
    _notify(run, "ECC_ERRORS_SPIKE")
    run.clear("ECC_ERRORS_SPIKE")


def test_power_critical_preempts_the_job_which_runs_again_elsewhere(run: L.Run) -> None:
    rule, loop = "POWER_CRITICAL", run.loop
    uuid = run.uuid[rule]
    row = _action(run, rule, "preempt")
    assert row["detail"]["preempted_jobs"] == [run.job_id]
    sim = _sim_gpu(run, rule)
    assert sim["power_watts"] >= L.threshold_now(run.specs[rule], sim, None)

    job = wait_until(
        lambda: (j := loop.job(run.job_id))["state"] == "running" and j, 30, 0.2, f"job {run.job_id} to run again"
    )
    assert job["preemptions"] == 1 and job["runs"] == 2
    assert job["gpu_uuids"] and uuid not in job["gpu_uuids"], "requeued onto another GPU"
    gpu = loop.gpus()[uuid]
    assert gpu["state"] == "alerting" and not gpu["schedulable"] and gpu["job_id"] is None
    assert {"rule": rule, "severity": "critical"} in gpu["alerts"]

    run.clear(rule)  # back to the baseline load: the alert resolves
    resolved = wait_until(
        lambda: [a for a in loop.actions(uuid) if a["status"] == "resolved" and a["rule"] == rule],
        60,
        0.2,
        f"{rule}'s resolve to reach the agent",
    )
    assert (resolved[0]["action"], resolved[0]["outcome"]) == ("preempt", "recorded")
    gpu = loop.gpus()[uuid]
    assert gpu["schedulable"] and gpu["state"] == "healthy"
    job = loop.job(run.job_id)
    assert job["state"] == "running" and uuid not in job["gpu_uuids"] and job["preemptions"] == 1
    assert _not_notify(loop.actions(uuid)) == ["preempt", "preempt"]


def test_throttling_notifies(run: L.Run) -> None:
    _notify(run, "THROTTLING")
    run.clear("THROTTLING")


def test_thermal_critical_throttles_then_restores_the_power_limit(run: L.Run) -> None:
    rule, loop = "THERMAL_CRITICAL", run.loop
    uuid = run.uuid[rule]
    row = _action(run, rule, "throttle")
    previous, target = row["detail"]["previous_watts"], row["detail"]["target_watts"]
    assert target < previous
    wait_until(lambda: _power_limit_is(run, rule, target), 15, 0.2, f"the power limit {target} W through NVML")
    gpu = loop.gpus()[uuid]
    assert gpu["throttled"] and gpu["state"] == "alerting" and not gpu["schedulable"]
    # Physics couples this fault to THROTTLING (the GPU's own thermal slowdown) and, later, to
    # THERMAL_WARNING: both are notify (recorded by the agent, if not inhibited), so throttling
    # stays the only action on this GPU.
    assert _not_notify(loop.actions(uuid)) == ["throttle"]

    cleared = run.clear(rule)  # cooling restored: the GPU cools below 85 °C, the alert resolves
    # A restore is written "pending" before the limit is set: wait for its outcome.
    restore = wait_until(
        lambda: [a for a in loop.actions(uuid) if a["action"] == "restore" and a["outcome"] != "pending"],
        90,
        0.2,
        "the power limit to be restored after the hold-down",
    )
    assert restore[0]["outcome"] == "acted" and restore[0]["detail"]["previous_watts"] == previous
    resolved = [a for a in loop.actions(uuid) if a["status"] == "resolved" and a["rule"] == rule]
    assert resolved and resolved[0]["detail"]["still_held_by"] == 0
    assert restore[0]["at"] >= resolved[0]["at"] + L.HOLD_DOWN_SECONDS - 0.5, "restored only after the hold-down"
    assert restore[0]["at"] > cleared
    wait_until(lambda: _power_limit_is(run, rule, previous), 15, 0.2, f"the power limit {previous} W through NVML")
    gpu = loop.gpus()[uuid]
    assert not gpu["throttled"] and gpu["state"] == "healthy" and gpu["schedulable"]


def test_power_spike_notifies(run: L.Run) -> None:
    _notify(run, "POWER_SPIKE")
    run.clear("POWER_SPIKE")


def test_memory_pressure_notifies(run: L.Run) -> None:
    _notify(run, "MEMORY_PRESSURE")
    run.clear("MEMORY_PRESSURE")


def test_thermal_warning_notifies(run: L.Run) -> None:
    _notify(run, "THERMAL_WARNING")
    gpu = run.gpu["THERMAL_WARNING"]
    sim = _sim_gpu(run, "THERMAL_WARNING")
    slowdown = run.loop.exporter_value("gpu_temperature_threshold_celsius", gpu, threshold="slowdown")
    spec = CFG.rule_for("THERMAL_CRITICAL", sim["name"])
    assert sim["temperature_celsius"] <= L.threshold_now(spec, sim, slowdown), "below THERMAL_CRITICAL"
    run.clear("THERMAL_WARNING")


@pytest.mark.parametrize("rule", L.SEED_RULES)
def test_every_rule_was_detected(run: L.Run, rule: str) -> None:
    """Runs last: each rule's test recorded its latency (as data, see conftest.py)."""
    assert rule in run.latencies, f"{rule}'s test did not reach its action"
    assert rule in run.crossed_at, f"{rule}'s fault never crossed its threshold in the simulator"
    # Every rule, notify included, reaches the agent: its own metrics count each one.
    status, body = http_get(run.loop.agent_url + "/metrics")
    assert status == 200
    triggered = {
        s.labels["rule"]: s.value
        for f in text_string_to_metric_families(body.decode())
        if f.name == "alerts_triggered"
        for s in f.samples
        if s.name == "alerts_triggered_total"
    }
    assert triggered.get(rule, 0) >= 1, f"the agent's alerts_triggered_total has no {rule}: {triggered}"
