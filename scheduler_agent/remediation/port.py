"""What remediation needs from a scheduler: exactly these operations, nothing more.

The embedded scheduler provides them (through a thin adapter in ``service.py``); tests use a
fake; a Slurm or Kubernetes adapter can stand in later (``scontrol update nodename=... state=drain``
for quarantine, ``scontrol requeue`` for preempt). Every operation must be idempotent: the
worker repeats an operation that a kill interrupted before its outcome was recorded.
"""

from __future__ import annotations

from typing import Mapping, Protocol


class SchedulerPort(Protocol):
    def quarantine(self, uuid: str, reason: str, actor: str) -> None:
        """Takes the GPU out of scheduling until a person releases it (no-op if already)."""

    def preempt_gpu(self, uuid: str, reason: str) -> list[int]:
        """Stops the jobs on the GPU and requeues them; returns their ids ([] when idle)."""

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> None:
        """Marks the GPU throttled or not (the state operators and placement see)."""

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> None:
        """Records a firing or resolved alert on the GPU (placement avoids critical ones)."""

    def fleet(self) -> Mapping[str, str]:
        """Every known GPU's state by UUID (``healthy``, ``throttled``, ``quarantined``, ...)."""
