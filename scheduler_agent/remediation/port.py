"""The agent's scheduler port: what remediation and the predictor need from a scheduler.

Exactly these operations and parameters, nothing more (``context`` is keyword-or-positional and
may be ``None``)::

    quarantine(uuid, reason, actor, context=None) -> Mapping[str, Any] | None
    preempt_gpu(uuid, reason, context=None) -> list[int]
    set_throttled(uuid, throttled, reason) -> None
    set_alert(uuid, rule, severity, firing) -> None
    fleet() -> Mapping[str, str]

The agent (``scheduler_agent.server``) builds one port at start-up: ``SchedulerAdapter`` (in
``service.py``) over the embedded scheduler, or ``SlurmPort`` (``scheduler_agent.slurm``) when
the config has a ``slurm:`` section, and hands that same object to remediation's worker and to
the predictor's migrations. Tests use a fake. Every operation must be idempotent: the worker
repeats an operation that a kill interrupted before its outcome was recorded.

The two operations that change where jobs run take the ``ActionContext`` they are done for; a
port reads nothing else (no ambient state) to learn which action is calling it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .actuators import GpuRef

REMEDIATION = "remediation"
PREDICTOR = "predictor"


@dataclass(frozen=True)
class ActionContext:
    """The action a caller is carrying out when it calls the port.

    ``source`` says who acts (``"remediation"``, ``"predictor"``) and is the embedded
    scheduler's actor for a preemption. ``action_id`` is the caller's stable id for the action,
    unique within its source: remediation's audit row id (the same across a kill and the resume
    that repeats the call); the predictor's migration id (``predictor.migrations``: one per
    GPU and prediction episode, persisted, the same across runs and restarts until the
    migration has moved jobs). A port whose operations are not naturally idempotent (a cluster
    scheduler's requeue) keys its own journal on ``(source, action_id)``. ``gpu`` is the GPU as
    the caller saw it (instance, index, labels: the alert's, or the predictor's series'): a
    port that only knows nodes, not UUIDs, finds the GPU through it.
    """

    source: str
    action_id: int
    gpu: GpuRef


class SchedulerPort(Protocol):
    def quarantine(
        self, uuid: str, reason: str, actor: str, context: ActionContext | None = None
    ) -> Mapping[str, Any] | None:
        """Takes the GPU out of scheduling until a person releases it (no-op if already).

        May return details worth keeping in the action's audit entry (the worker merges them
        into its ``detail``), e.g. that a cluster scheduler drained a whole node."""

    def preempt_gpu(self, uuid: str, reason: str, context: ActionContext | None = None) -> list[int]:
        """Stops the jobs on the GPU and requeues them; returns their ids ([] when idle)."""

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> None:
        """Marks the GPU throttled or not (the state operators and placement see)."""

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> None:
        """Records a firing or resolved alert on the GPU (placement avoids critical ones)."""

    def fleet(self) -> Mapping[str, str]:
        """Every known GPU's state by UUID (``healthy``, ``throttled``, ``quarantined``, ...)."""
