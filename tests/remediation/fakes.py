"""Fakes for remediation tests: a scheduler behind ``SchedulerPort`` and a power actuator."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from gpuwarden.scheduler_agent.remediation.actuators import GpuRef, PowerLimits
from gpuwarden.scheduler_agent.remediation.errors import ActuatorError
from gpuwarden.scheduler_agent.remediation.port import ActionContext


class FakeScheduler:
    def __init__(self, uuids: list[str]) -> None:
        self.states = {u: "healthy" for u in uuids}
        self.jobs: dict[str, list[int]] = {}
        self.calls: list[tuple] = []
        self.contexts: list[ActionContext | None] = []  # passed to quarantine and preempt_gpu
        self.alerts: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()

    def quarantine(self, uuid: str, reason: str, actor: str, context: ActionContext | None = None) -> None:
        with self.lock:
            self.calls.append(("quarantine", uuid))
            self.contexts.append(context)
            if uuid not in self.states:
                raise KeyError(f"unknown GPU {uuid}")
            self.states[uuid] = "quarantined"

    def release(self, uuid: str) -> None:
        self.states[uuid] = "healthy"

    def preempt_gpu(self, uuid: str, reason: str, context: ActionContext | None = None) -> list[int]:
        with self.lock:
            self.calls.append(("preempt", uuid))
            self.contexts.append(context)
            return self.jobs.pop(uuid, [])

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> None:
        with self.lock:
            self.calls.append(("set_throttled", uuid, throttled))
            if self.states.get(uuid) in ("healthy", "throttled"):
                self.states[uuid] = "throttled" if throttled else "healthy"

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> None:
        with self.lock:
            if firing:
                self.alerts[(uuid, rule)] = severity
            else:
                self.alerts.pop((uuid, rule), None)

    def fleet(self) -> Mapping[str, str]:
        with self.lock:
            return dict(self.states)

    def count(self, op: str, uuid: str | None = None) -> int:
        return sum(1 for c in self.calls if c[0] == op and (uuid is None or c[1] == uuid))


class FakeActuator:
    name = "fake"

    def __init__(self, watts: float = 400.0, lo: float = 100.0, hi: float = 500.0) -> None:
        self.limits: dict[str, float] = {}
        self.default = watts
        self.lo, self.hi = lo, hi
        self.sets: list[tuple[str, float]] = []
        self.fail = False

    def read(self, gpu: GpuRef) -> PowerLimits:
        return PowerLimits(self.limits.get(gpu.uuid, self.default), self.lo, self.hi)

    def set_limit(self, gpu: GpuRef, watts: float) -> None:
        if self.fail:
            raise ActuatorError("fake actuator failure")
        self.sets.append((gpu.uuid, watts))
        self.limits[gpu.uuid] = watts


def alert(
    uuid: str,
    status: str = "firing",
    rule: str = "THERMAL_CRITICAL",
    action: str = "throttle",
    severity: str = "critical",
    starts_at: str = "2024-05-01T10:00:00Z",
    fingerprint: str | None = None,
    ends_at: str = "0001-01-01T00:00:00Z",
) -> dict:
    return {
        "status": status,
        "labels": {
            "alertname": rule,
            "rule": rule,
            "severity": severity,
            "action": action,
            "uuid": uuid,
            "gpu": "0",
            "instance": "node1:9786",
        },
        "annotations": {"summary": "hot"},
        "startsAt": starts_at,
        "endsAt": ends_at,
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint or f"fp-{uuid}-{rule}",
    }


def notification(*alerts: dict, truncated: int = 0) -> dict:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "truncatedAlerts": truncated,
        "status": status,
        "receiver": "gpuwarden-agent",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am:9093",
        "alerts": list(alerts),
    }
