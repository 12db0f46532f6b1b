"""The scheduler's GPU operations (a mixin of ``Scheduler``; see scheduler.py for the seam).

Every health change a component wants (remediation's throttle/preempt/quarantine, inventory
discovery's lost/up, an operator's release) goes through one of these methods, which commits
the new state and an event row and re-indexes the GPU for placement in the same step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from .models import SEVERITIES, Conflict, GpuSpec, Gpu, InvalidRequest

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Scheduler


class GpuOperations:
    def list_gpus(self: "Scheduler") -> list[dict]:
        with self.db.lock:
            return [g.to_dict() for g in sorted(self._gpus.values(), key=lambda g: (g.node, g.index))]

    def get_gpu(self: "Scheduler", uuid: str) -> dict:
        with self.db.lock:
            return self._gpu(uuid).to_dict()

    def register_gpu(self: "Scheduler", node: str, index: int, uuid: str, name: str = "") -> dict:
        """Adds a GPU to the inventory, or updates where it is; its health flags are kept."""
        if not uuid or not node:
            raise InvalidRequest("a GPU needs a node and a uuid", "uuid" if not uuid else "node")
        with self._commit() as c:
            g = self._gpus.get(uuid)
            if g is None:
                g = Gpu(uuid=uuid, node=node, index=int(index), name=name)
                self._gpus[uuid] = g
                c.execute("INSERT INTO gpus(uuid, node, idx, name) VALUES (?,?,?,?)",
                          (uuid, node, int(index), name))
                self._record("gpu.registered", gpu=uuid, node=node, index=int(index))
            elif (g.node, g.index, g.name) != (node, int(index), name):
                if g.job_id is None:
                    self._index.remove(uuid)
                g.node, g.index, g.name = node, int(index), name
                self._record("gpu.moved", gpu=uuid, node=node, index=int(index))
            else:
                return g.to_dict()
            self._largest = None
            self._save_gpu(g)
            return g.to_dict()

    def sync_inventory(self: "Scheduler", specs: Iterable[GpuSpec], source: str = "inventory") -> None:
        """Makes the inventory match a discovery result: new GPUs added, down or absent ones lost.

        GPUs lost for another reason are brought back only by a discovery that saw them lost.
        """
        specs = list(specs)
        seen = {s.uuid for s in specs}
        with self._commit():
            for s in specs:
                self.register_gpu(s.node, s.index, s.uuid, s.name)
                g = self._gpus[s.uuid]
                if not s.up and not g.lost:
                    self.mark_lost(s.uuid, f"{source}: gpu_up is 0")
                elif s.up and g.lost and (g.lost_reason or "").startswith(f"{source}:"):
                    self.mark_up(s.uuid)
            for uuid, g in list(self._gpus.items()):
                if uuid not in seen and not g.lost:
                    self.mark_lost(uuid, f"{source}: absent from discovery")

    def quarantine(self: "Scheduler", uuid: str, reason: str, actor: str, preempt: bool = True) -> dict:
        """Takes a GPU out of placement until ``release``; preempts its job unless told not to."""
        with self._commit():
            g = self._gpu(uuid)
            preempted: list[int] = []
            if not g.quarantined:
                g.quarantined, g.quarantine_reason = True, reason
                g.quarantine_actor, g.quarantined_at = actor, self.clock()
                self._save_gpu(g)
                self._record("gpu.quarantined", gpu=uuid, actor=actor, reason=reason)
            if preempt:
                preempted = self.preempt_gpu(uuid, f"GPU {uuid} quarantined: {reason}", actor)
            out = g.to_dict()
            out["preempted"] = preempted
            return out

    def release(self: "Scheduler", uuid: str, actor: str) -> dict:
        with self._commit():
            g = self._gpu(uuid)
            if not g.quarantined:
                raise Conflict(f"GPU {uuid} is not quarantined", field="uuid")
            g.quarantined, g.quarantine_reason, g.quarantine_actor, g.quarantined_at = False, None, None, None
            self._save_gpu(g)
            self._record("gpu.released", gpu=uuid, actor=actor)
            return g.to_dict()

    def preempt_gpu(self: "Scheduler", uuid: str, reason: str, actor: str = "scheduler") -> list[int]:
        """Stops the job running on the GPU (requeued at the head of its priority, or failed
        when it reached max_preemptions); returns the ids of the jobs preempted."""
        with self._commit():
            g = self._gpu(uuid)
            if g.job_id is None:
                return []
            job = self._jobs.get(g.job_id)
            if job is None or not self._preempt_job(job, reason, actor):
                return []
            return [job.id]

    def set_throttled(self: "Scheduler", uuid: str, throttled: bool, reason: str) -> dict:
        with self._commit():
            g = self._gpu(uuid)
            if g.throttled != bool(throttled):
                g.throttled, g.throttle_reason = bool(throttled), reason if throttled else None
                self._save_gpu(g)
                self._record("gpu.throttled" if throttled else "gpu.unthrottled", gpu=uuid, reason=reason)
            return g.to_dict()

    def set_alert(self: "Scheduler", uuid: str, rule: str, severity: str, firing: bool) -> dict:
        """Records an alert's state on a GPU; while a critical one fires the GPU gets no new job."""
        if severity not in SEVERITIES:
            raise InvalidRequest(f"severity must be one of {', '.join(SEVERITIES)}", "severity")
        if not rule:
            raise InvalidRequest("rule must not be empty", "rule")
        with self._commit() as c:
            g = self._gpu(uuid)
            if firing and g.alerts.get(rule) != severity:
                g.alerts[rule] = severity
                c.execute("INSERT OR REPLACE INTO gpu_alerts(uuid, rule, severity, since) VALUES (?,?,?,?)",
                          (uuid, rule, severity, self.clock()))
                self._save_gpu(g)
                self._record("gpu.alert_firing", gpu=uuid, rule=rule, severity=severity)
            elif not firing and rule in g.alerts:
                del g.alerts[rule]
                c.execute("DELETE FROM gpu_alerts WHERE uuid=? AND rule=?", (uuid, rule))
                self._save_gpu(g)
                self._record("gpu.alert_resolved", gpu=uuid, rule=rule, severity=severity)
            return g.to_dict()

    def mark_lost(self: "Scheduler", uuid: str, reason: str) -> dict:
        """The GPU stopped answering: no placement, and its job is preempted."""
        with self._commit():
            g = self._gpu(uuid)
            if not g.lost:
                g.lost, g.lost_reason = True, reason
                self._save_gpu(g)
                self._record("gpu.lost", gpu=uuid, reason=reason)
                self.preempt_gpu(uuid, f"GPU {uuid} lost: {reason}", "inventory")
            return g.to_dict()

    def mark_up(self: "Scheduler", uuid: str) -> dict:
        with self._commit():
            g = self._gpu(uuid)
            if g.lost:
                g.lost, g.lost_reason = False, None
                self._save_gpu(g)
                self._record("gpu.up", gpu=uuid)
            return g.to_dict()
