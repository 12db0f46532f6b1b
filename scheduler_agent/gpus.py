"""The scheduler's GPU table: the inventory, each GPU's health flags and job, and the placement
index kept in step with them.

A GPU is *placeable* when it is free and schedulable (not quarantined, lost or under a firing
critical alert); ``FreeIndex`` (placement.py) holds exactly the placeable ones, and every change
here that can alter that re-indexes the GPU in the same step. Health changes are committed
through the ``SchedulerStore`` with an event row, and wake the dispatcher (a GPU may have become
placeable). Preempting the job on a GPU that went bad is the job lifecycle's business: the
``Scheduler`` does it after ``quarantine`` or ``mark_lost`` here.

Not locked on its own: the mutators commit through the store (which holds ``db.lock``); readers
hold ``store.lock``. ``Gpu`` objects returned by ``get``/``all`` belong to the table: read them,
change them only through its methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .jobstore import SchedulerStore
from .models import SEVERITIES, Conflict, Gpu, InvalidRequest, NotFound
from .placement import FreeIndex, Placement, RiskFn


class GpuTable:
    def __init__(self, store: SchedulerStore, risk_candidates: int, wake: Callable[[], None]) -> None:
        self._store = store
        self._wake = wake
        self._gpus: dict[str, Gpu] = {}
        self._index = FreeIndex(risk_candidates)
        self._largest: int | None = None

    def load(self, gpus: Iterable[Gpu]) -> None:
        """Takes the GPUs read at start-up (not indexed until ``index_all``)."""
        for g in gpus:
            self._gpus[g.uuid] = g
        self._largest = None

    def index_all(self) -> None:
        for g in self._gpus.values():
            self._reindex(g)

    # ------------------------------------------------------------------------------ reading
    def get(self, uuid: str) -> Gpu:
        g = self._gpus.get(uuid)
        if g is None:
            raise NotFound(f"no GPU with uuid {uuid!r}", field="uuid")
        return g

    def all(self) -> list[Gpu]:
        return list(self._gpus.values())

    def describe(self, uuid: str) -> dict[str, Any]:
        return self.get(uuid).to_dict()

    def describe_all(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in sorted(self._gpus.values(), key=lambda g: (g.node, g.index))]

    def job_on(self, uuid: str) -> int | None:
        """The id of the job holding the GPU, if any (``NotFound`` for an unknown uuid)."""
        return self.get(uuid).job_id

    def largest_node(self) -> int:
        """GPUs on the biggest node (cached: the inventory changes rarely, submits often)."""
        if self._largest is None:
            sizes: dict[str, int] = {}
            for g in self._gpus.values():
                sizes[g.node] = sizes.get(g.node, 0) + 1
            self._largest = max(sizes.values(), default=0)
        return self._largest

    # ---------------------------------------------------------------------------- placement
    def max_free(self) -> int:
        """The most placeable GPUs on any one node."""
        return self._index.max_free()

    def place(self, n: int, risk: RiskFn) -> Placement | None:
        """Best-fit placement of n GPUs on one node (nothing is taken: see ``assign``)."""
        return self._index.place(n, risk)

    def assign(self, job_id: int, uuids: Iterable[str]) -> None:
        """The GPUs now hold the job (out of the placement index)."""
        for u in uuids:
            g = self._gpus.get(u)
            if g is not None:
                g.job_id = job_id
                self._index.remove(u)

    def unassign(self, job_id: int, uuids: Iterable[str]) -> None:
        """The job let go of the GPUs (those it still held become placeable again if healthy)."""
        for u in uuids:
            g = self._gpus.get(u)
            if g is not None and g.job_id == job_id:
                g.job_id = None
                self._reindex(g)

    def _reindex(self, g: Gpu) -> None:
        if g.placeable:
            self._index.add(g.node, g.uuid, g.index)
        else:
            self._index.remove(g.uuid)

    def _save(self, g: Gpu) -> None:
        self._store.save_gpu(g)
        self._reindex(g)
        self._wake()

    # ----------------------------------------------------------------------- health changes
    def register(self, node: str, index: int, uuid: str, name: str = "", instance: str = "") -> dict[str, Any]:
        """Adds a GPU to the inventory, or updates where it is; its health flags are kept.
        ``instance``: the node's Prometheus instance where it is not ``node`` itself."""
        if not uuid or not node:
            raise InvalidRequest("a GPU needs a node and a uuid", "uuid" if not uuid else "node")
        instance = "" if instance == node else instance
        with self._store.commit():
            g = self._gpus.get(uuid)
            if g is None:
                g = Gpu(uuid=uuid, node=node, index=int(index), name=name, instance=instance)
                self._gpus[uuid] = g
                self._store.insert_gpu(g)
                self._store.record("gpu.registered", gpu=uuid, node=node, index=int(index))
            elif (g.node, g.index, g.name, g.instance) != (node, int(index), name, instance):
                if g.job_id is None:
                    self._index.remove(uuid)
                g.node, g.index, g.name, g.instance = node, int(index), name, instance
                self._store.record("gpu.moved", gpu=uuid, node=node, index=int(index))
            else:
                return g.to_dict()
            self._largest = None
            self._save(g)
            return g.to_dict()

    def quarantine(self, uuid: str, reason: str, actor: str) -> None:
        with self._store.commit():
            g = self.get(uuid)
            if not g.quarantined:
                g.quarantined, g.quarantine_reason = True, reason
                g.quarantine_actor, g.quarantined_at = actor, self._store.clock()
                self._save(g)
                self._store.record("gpu.quarantined", gpu=uuid, actor=actor, reason=reason)

    def release(self, uuid: str, actor: str) -> dict[str, Any]:
        with self._store.commit():
            g = self.get(uuid)
            if not g.quarantined:
                raise Conflict(f"GPU {uuid} is not quarantined", field="uuid")
            g.quarantined, g.quarantine_reason, g.quarantine_actor, g.quarantined_at = False, None, None, None
            self._save(g)
            self._store.record("gpu.released", gpu=uuid, actor=actor)
            return g.to_dict()

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> dict[str, Any]:
        with self._store.commit():
            g = self.get(uuid)
            if g.throttled != bool(throttled):
                g.throttled, g.throttle_reason = bool(throttled), reason if throttled else None
                self._save(g)
                self._store.record("gpu.throttled" if throttled else "gpu.unthrottled", gpu=uuid, reason=reason)
            return g.to_dict()

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> dict[str, Any]:
        if severity not in SEVERITIES:
            raise InvalidRequest(f"severity must be one of {', '.join(SEVERITIES)}", "severity")
        if not rule:
            raise InvalidRequest("rule must not be empty", "rule")
        with self._store.commit():
            g = self.get(uuid)
            if firing and g.alerts.get(rule) != severity:
                g.alerts[rule] = severity
                self._store.save_alert(uuid, rule, severity)
                self._save(g)
                self._store.record("gpu.alert_firing", gpu=uuid, rule=rule, severity=severity)
            elif not firing and rule in g.alerts:
                del g.alerts[rule]
                self._store.delete_alert(uuid, rule)
                self._save(g)
                self._store.record("gpu.alert_resolved", gpu=uuid, rule=rule, severity=severity)
            return g.to_dict()

    def mark_lost(self, uuid: str, reason: str) -> bool:
        """True if the GPU was not lost before (its job is then to be preempted)."""
        with self._store.commit():
            g = self.get(uuid)
            if g.lost:
                return False
            g.lost, g.lost_reason = True, reason
            self._save(g)
            self._store.record("gpu.lost", gpu=uuid, reason=reason)
            return True

    def mark_up(self, uuid: str) -> dict[str, Any]:
        with self._store.commit():
            g = self.get(uuid)
            if g.lost:
                g.lost, g.lost_reason = False, None
                self._save(g)
                self._store.record("gpu.up", gpu=uuid)
            return g.to_dict()
