"""Value types, options and errors shared by the scheduler, the API and the plug-ins.

Errors form one small hierarchy so the HTTP layer maps them without knowing who raised them:
``InvalidRequest`` -> 400 (names the field), ``NotFound`` -> 404, ``Conflict`` -> 409.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

JOB_STATES = ("pending", "running", "stopping", "completed", "failed", "cancelled")
# gpu_state values, most severe first: a GPU reports the first that applies.
GPU_STATES = ("lost", "quarantined", "alerting", "throttled", "healthy")
SEVERITIES = ("info", "warning", "critical")


@dataclass
class SchedulerOptions:
    """The ``scheduler`` config section (see config.py)."""

    max_preemptions: int = 3
    stop_grace_seconds: float = 10.0
    tick_seconds: float = 1.0
    risk_candidates: int = 16
    max_name_length: int = 200


class SchedulerError(Exception):
    """Base of the errors the scheduler's operations raise on bad requests."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(SchedulerError):
    status = 400


class NotFound(SchedulerError):
    status = 404


class Conflict(SchedulerError):
    status = 409


@dataclass(frozen=True)
class GpuSpec:
    """One GPU as an inventory source sees it."""

    node: str
    index: int
    uuid: str
    name: str = ""
    up: bool = True
    # The node's Prometheus ``instance`` (its exporter target) when it differs from ``node``
    # (a static inventory's own node names); empty: the same as ``node``.
    instance: str = ""


@dataclass
class Gpu:
    uuid: str
    node: str
    index: int
    name: str = ""
    quarantined: bool = False
    quarantine_reason: str | None = None
    quarantine_actor: str | None = None
    quarantined_at: float | None = None
    throttled: bool = False
    throttle_reason: str | None = None
    lost: bool = False
    lost_reason: str | None = None
    alerts: dict[str, str] = field(default_factory=dict)  # firing rule -> severity
    job_id: int | None = None
    instance: str = ""  # the node's Prometheus instance; empty: the same as node

    @property
    def prom_instance(self) -> str:
        """The ``instance`` label the agent's per-GPU series carry: the GPU's exporter target."""
        return self.instance or self.node

    @property
    def critical_alert(self) -> bool:
        return any(sev == "critical" for sev in self.alerts.values())

    @property
    def state(self) -> str:
        if self.lost:
            return "lost"
        if self.quarantined:
            return "quarantined"
        if self.critical_alert:
            return "alerting"
        if self.throttled:
            return "throttled"
        return "healthy"

    @property
    def schedulable(self) -> bool:
        """May hold a job at all (free or not)."""
        return not (self.lost or self.quarantined or self.critical_alert)

    @property
    def placeable(self) -> bool:
        return self.schedulable and self.job_id is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "node": self.node,
            "instance": self.prom_instance,
            "index": self.index,
            "name": self.name,
            "state": self.state,
            "schedulable": self.schedulable,
            "job_id": self.job_id,
            "quarantined": self.quarantined,
            "quarantine_reason": self.quarantine_reason,
            "quarantine_actor": self.quarantine_actor,
            "quarantined_at": self.quarantined_at,
            "throttled": self.throttled,
            "throttle_reason": self.throttle_reason,
            "lost": self.lost,
            "lost_reason": self.lost_reason,
            "alerts": [{"rule": r, "severity": s} for r, s in sorted(self.alerts.items())],
        }


@dataclass
class ActiveJob:
    """A job that is pending, running or stopping (terminal jobs live in the database only)."""

    id: int
    name: str
    gpus: int
    priority: int
    command: list[str] | None
    time_limit: float | None
    state: str
    seq: int
    preemptions: int = 0
    runs: int = 0
    node: str | None = None
    uuids: tuple[str, ...] = ()
    indexes: tuple[int, ...] = ()
    started_at: float | None = None
    stop_reason: str | None = None  # cancel | preempt | time_limit (while stopping)
    stop_detail: str | None = None
    env: dict[str, str] | None = None

    @property
    def queue_key(self) -> tuple[int, int, int]:
        return (-self.priority, self.seq, self.id)


def job_row(r: sqlite3.Row) -> dict[str, Any]:
    """A jobs row (sqlite3.Row) as the API shows it."""
    import json

    return {
        "id": r["id"],
        "name": r["name"],
        "gpus": r["gpus"],
        "priority": r["priority"],
        "command": json.loads(r["command"]) if r["command"] else None,
        "time_limit_seconds": r["time_limit"],
        "state": r["state"],
        "reason": r["reason"],
        "exit_code": r["exit_code"],
        "preemptions": r["preemptions"],
        "runs": r["runs"],
        "node": r["node"],
        "gpu_uuids": json.loads(r["gpu_uuids"] or "[]"),
        "gpu_indexes": json.loads(r["gpu_indexes"] or "[]"),
        "submitted_at": r["submitted_at"],
        "started_at": r["started_at"],
        "finished_at": r["finished_at"],
        "idempotency_key": r["idempotency_key"],
    }
