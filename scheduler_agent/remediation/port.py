"""What remediation needs from a scheduler: exactly these operations, nothing more.

The embedded scheduler provides them (through a thin adapter in ``service.py``); tests use a
fake; a Slurm or Kubernetes adapter can stand in later (``scontrol update nodename=... state=drain``
for quarantine, ``scontrol requeue`` for preempt). Every operation must be idempotent: the
worker repeats an operation that a kill interrupted before its outcome was recorded.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from .actuators import GpuRef


class SchedulerPort(Protocol):
    def quarantine(self, uuid: str, reason: str, actor: str) -> Mapping[str, Any] | None:
        """Takes the GPU out of scheduling until a person releases it (no-op if already).

        May return details worth keeping in the action's audit entry (the worker merges them
        into its ``detail``), e.g. that a cluster scheduler drained a whole node."""

    def preempt_gpu(self, uuid: str, reason: str) -> list[int]:
        """Stops the jobs on the GPU and requeues them; returns their ids ([] when idle)."""

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> None:
        """Marks the GPU throttled or not (the state operators and placement see)."""

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> None:
        """Records a firing or resolved alert on the GPU (placement avoids critical ones)."""

    def fleet(self) -> Mapping[str, str]:
        """Every known GPU's state by UUID (``healthy``, ``throttled``, ``quarantined``, ...)."""


@dataclass(frozen=True)
class ActionContext:
    """The action the worker is carrying out while it calls a port: its audit row id (stable
    across a kill and the resume that repeats the call) and the GPU as the alert named it
    (instance, index, labels). A port whose operations are not naturally idempotent (a cluster
    scheduler's requeue) keys its own journal on ``action_id``; one that only knows nodes, not
    UUIDs, finds the GPU through ``gpu``."""

    action_id: int
    gpu: GpuRef


# Set by the worker around each action's calls to the port; None outside an action.
CURRENT_ACTION: ContextVar[ActionContext | None] = ContextVar("gpuwarden_current_action",
                                                              default=None)
