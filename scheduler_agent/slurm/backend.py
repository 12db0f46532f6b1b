"""``SlurmPort``: the agent's ``SchedulerPort`` (remediation's and the predictor's) acted out
through Slurm.

- ``preempt_gpu``: ``scontrol requeue`` of every running job whose allocation holds that GPU
  index on that node (``scontrol show job -d``: ``GRES=gpu:4(IDX:0-3)``), then
  ``scontrol update JobId=N StartTime=now``: a requeued job is otherwise held ~120 s
  (``Reason=BeginTime``) before it may start again. The reset waits ``REQUEUE_SETTLE_SECONDS``
  after the requeue: slurmd refuses a launch credential created in the same second as the
  revocation of the job's previous run ("Job credential revoked"), and the job then FAILS
  instead of running again (the reason for Slurm's own hold).
- ``quarantine``: ``scontrol update NodeName=X State=DRAIN Reason="gpuwarden: RULE gpu I UUID"``.
  Slurm 22.05 cannot drain one GPU, so the whole node stops taking jobs (running ones finish
  unless preempted); the audit entry says so. Several quarantined GPUs of one node share the
  drain: ``gpuwarden: R1 gpu 3 UUID3; R2 gpu 5 UUID5``. A node someone else drained is left as it
  is (their reason stays; we never take it over).
- ``release``: removes the GPU from our reason; ``State=RESUME`` when none is left, and only
  while the reason is still ours (an operator who drained the node after us keeps it drained).
- ``set_throttled``/``set_alert``: the embedded scheduler's bookkeeping (the power limit itself
  is set by the remediation actuator); nothing in Slurm.
- ``allocations``: the GPUs Slurm's running jobs hold, for the agent's ``gpu_allocation_info``.

The embedded scheduler keeps the GPU inventory (UUID -> node, index, from Prometheus or a
static list) and its state (what ``/api/v1/gpus`` shows). Slurm knows nodes and GPU indexes, not
UUIDs: a GPU is found from the ``ActionContext`` the caller passes (the GPU as its alert or its
predictor series named it: ``instance``/``node`` label and ``gpu`` index), or else from that
inventory. The context's ``(source, action_id)`` keys the journal, which makes a repeated
requeue (after a kill, or a predictor migration retried) run no command twice; without a
context (an operator's quarantine through the API) commands are journaled under no key.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..remediation.port import ActionContext
from ..scheduler import Allocation
from .errors import SlurmError, UnknownNode
from .journal import Journal, Key
from .nodemap import NodeMap
from .parse import Job, Node, parse_jobs, parse_nodes
from .runner import Runner

if TYPE_CHECKING:
    from ..scheduler import Scheduler

# Seconds between a requeue and the start-time reset (see the module docstring): past the
# second in which slurmd revoked the previous run's credential, with a second to spare.
REQUEUE_SETTLE_SECONDS = 2.0
# How long a metrics scrape waits for scontrol's answer on the allocations before it reports the
# last one read: a slow slurmctld must not make the agent's whole /metrics miss its scrape timeout.
ALLOCATIONS_WAIT_SECONDS = 3.0

log = logging.getLogger(__name__)

PREFIX = "gpuwarden:"
NODE_SCOPE_NOTE = (
    "Slurm 22.05 cannot drain a single GPU: the whole node {node} ({gpus} GPUs) "
    "is drained, so it takes no new jobs on any GPU until released"
)
RUNNING = ("RUNNING", "SUSPENDED", "CONFIGURING")
_ENTRY = re.compile(r"([^\s;]+) gpu (\d+) ([^\s;]+)")


@dataclass(frozen=True)
class Entry:
    """One quarantined GPU in our drain reason."""

    rule: str
    index: int
    uuid: str

    def __str__(self) -> str:
        return f"{self.rule} gpu {self.index} {self.uuid}"


def parse_reason(reason: str) -> list[Entry] | None:
    """Our entries, or None when the reason is not ours (someone else's drain)."""
    if not reason.startswith(PREFIX):
        return None
    return [Entry(m.group(1), int(m.group(2)), m.group(3)) for m in _ENTRY.finditer(reason[len(PREFIX) :])]


def format_reason(entries: list[Entry]) -> str:
    return f"{PREFIX} " + "; ".join(str(e) for e in entries)


def _key(context: ActionContext | None) -> Key | None:
    return (context.source, context.action_id) if context is not None else None


class SlurmPort:
    def __init__(
        self,
        runner: Runner,
        journal: Journal,
        nodemap: NodeMap,
        scheduler: Scheduler | None = None,
        start_requeued_now: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runner = runner
        self.journal = journal
        self.nodemap = nodemap
        self.scheduler = scheduler
        self.start_requeued_now = start_requeued_now
        self.sleep = sleep
        self._lock = threading.RLock()
        self._own = threading.local()  # set while we call the embedded scheduler ourselves
        # One allocations read in flight at a time (a hung scontrol never piles up threads).
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slurm-allocations")
        self._reading: concurrent.futures.Future[list[Allocation]] | None = None
        self._last_allocations: list[Allocation] = []
        self._reading_lock = threading.Lock()

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
        self.journal.close()

    # -- reading Slurm --------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return parse_nodes(self.runner.run("show", "node", "-d").stdout)

    def node(self, name: str) -> Node:
        for n in parse_nodes(self.runner.run("show", "node", "-d", name).stdout):
            if n.name == name:
                return n
        raise UnknownNode(f"scontrol show node {name}: Slurm printed no such node")

    def jobs(self) -> list[Job]:
        return parse_jobs(self.runner.run("show", "job", "-d").stdout)

    def job(self, job_id: int) -> Job | None:
        """The job, or None once Slurm has forgotten it (MinJobAge after it ended)."""
        r = self.runner.run("show", "job", "-d", str(job_id), check=False)
        if r.rc != 0:
            if "Invalid job id" in r.stderr + r.stdout:
                return None
            raise SlurmError(f"scontrol show job -d {job_id}: exit {r.rc}: {(r.stderr or r.stdout).strip()[:300]}")
        found = [j for j in parse_jobs(r.stdout) if j.id == job_id]
        return found[0] if found else None

    def locate(self, uuid: str, ctx: ActionContext | None = None) -> tuple[str, int]:
        """The GPU's Slurm node name and index; ``UnknownNode`` says why when there is none."""
        value, index = "", ""
        if ctx is not None and ctx.gpu.uuid == uuid:
            label = self.nodemap.label
            value = ctx.gpu.labels.get(label) or (ctx.gpu.instance if label == "instance" else "")
            index = ctx.gpu.gpu or ctx.gpu.labels.get("gpu", "")
        if (not value or not index.isdigit()) and self.scheduler is not None:
            try:
                g = self.scheduler.get_gpu(uuid)
                value, index = g["node"], str(g["index"])
            except Exception:  # noqa: BLE001 - NotFound: the inventory does not list it
                pass
        if not value or not str(index).isdigit():
            raise UnknownNode(
                f"GPU {uuid}: the alert has no {self.nodemap.label} label and "
                "gpu index, and the inventory does not list the GPU, so its "
                "Slurm node is unknown"
            )
        node = self.nodemap.resolve(value, self.nodes(), f"GPU {uuid} (gpu {index})")
        return node, int(index)

    # -- changing Slurm -------------------------------------------------------------------
    def _change(
        self, key: Key | None, op: str, target: str, args: list[str], before: Mapping[str, Any] | None = None
    ) -> None:
        row = self.journal.begin(key, op, target, self.runner.argv(*args), dict(before or {}))
        try:
            r = self.runner.run(*args)
        except SlurmError as exc:
            self.journal.finish(row, "failed", self.runner.attempts, None, error=str(exc))
            raise
        self.journal.finish(row, "ok", r.attempts, r.rc, (r.stdout + r.stderr).strip())

    def _embedded(self, op: str, *args: Any) -> None:
        """The same operation on the embedded scheduler's state, when it knows the GPU."""
        if self.scheduler is None:
            return
        self._own.active = True
        try:
            getattr(self.scheduler, op)(*args)
        except Exception as exc:  # noqa: BLE001 - NotFound/Conflict: not in its inventory
            log.debug("embedded %s%r: %s", op, args, exc)
        finally:
            self._own.active = False

    # -- SchedulerPort --------------------------------------------------------------------
    def quarantine(self, uuid: str, reason: str, actor: str, context: ActionContext | None = None) -> Mapping[str, Any]:
        key = _key(context)
        rule = (
            (context.gpu.labels.get("rule") if context is not None else "")
            or reason.split(":", 1)[0].strip()
            or "manual"
        ).replace(" ", "_")
        with self._lock:
            name, index = self.locate(uuid, context)
            node = self.node(name)
            detail: dict[str, Any] = {
                "slurm_node": name,
                "slurm_scope": "node",
                "slurm_note": NODE_SCOPE_NOTE.format(node=name, gpus=node.gpus),
            }
            ours = parse_reason(node.reason) if node.drained else []
            if ours is None:
                detail["slurm"] = (
                    f"node {name} was already drained by someone else "
                    f"({node.reason!r}): left as it is, and release will not "
                    "resume it"
                )
            elif any(e.uuid == uuid for e in ours):
                detail["slurm"] = f"node {name} already drained for this GPU"
            else:
                entries = [*ours, Entry(rule, index, uuid)]
                self._change(
                    key,
                    "drain",
                    name,
                    ["update", f"NodeName={name}", "State=DRAIN", f"Reason={format_reason(entries)}"],
                    {"state": node.state, "reason": node.reason},
                )
                detail["slurm"] = f"drained node {name}"
            self._embedded("quarantine", uuid, reason, actor, False)
        return detail

    def preempt_gpu(self, uuid: str, reason: str, context: ActionContext | None = None) -> list[int]:
        key = _key(context)
        with self._lock:
            name, index = self.locate(uuid, context)
            plan = self.journal.plan(
                key,
                f"preempt {name} {index}",
                lambda: [[j.id, j.restarts] for j in self.jobs() if j.state in RUNNING and j.holds(name, index)],
            )
            for job_id, restarts in plan:
                self._requeue(key, int(job_id), int(restarts))
        return [int(j) for j, _ in plan]

    def _requeue(self, key: Key | None, job_id: int, restarts: int) -> None:
        target = str(job_id)
        prev = self.journal.previous(key, "requeue", target)
        job = self.job(job_id)
        if job is None:
            return
        if prev is not None and prev["outcome"] == "pending":
            if job.restarts > restarts:  # killed after Slurm took it: settle, do not repeat
                self.journal.finish(
                    prev["id"], "ok", 0, None, f"settled on resume: Restarts {restarts} -> {job.restarts}"
                )
                prev = None
                done = True
            else:
                self.journal.finish(prev["id"], "failed", 0, None, error="interrupted before Slurm requeued the job")
                prev, done = None, False
        else:
            done = prev is not None
        if not done:
            if job.state not in RUNNING or job.restarts > restarts:
                return  # it ended, or was requeued by someone else since the plan was made
            self._change(key, "requeue", target, ["requeue", target], {"restarts": restarts, "state": job.state})
        if self.start_requeued_now:
            # (On a resumed action the requeue's time is unknown: counted from now.)
            self._start_now(key, job_id, not_before=time.monotonic() + REQUEUE_SETTLE_SECONDS)

    def _start_now(self, key: Key | None, job_id: int, not_before: float, wait: float = 10.0) -> None:
        """Resets the requeued job's start time so it may run soon (else ~120 s later), not
        before ``not_before`` (time.monotonic)."""
        target = str(job_id)
        prev = self.journal.previous(key, "start_now", target)
        if prev is not None and prev["outcome"] == "ok":
            return
        deadline = max(time.monotonic() + wait, not_before)
        job = self.job(job_id)
        while job is not None and time.monotonic() < deadline:
            if job.state == "RUNNING" and job.reason != "BeginTime":
                break  # already started again (or was never stopped): nothing to reset
            if job.state == "PENDING" and time.monotonic() >= not_before:
                break
            self.sleep(0.1)
            job = self.job(job_id)
        # Any pending reason: the begin time Slurm set on requeue holds the job whatever the
        # reason reads yet (it says BeginTime only once the scheduler has looked at it).
        if job is None or job.state != "PENDING":
            if prev is not None:
                self.journal.finish(prev["id"], "ok", 0, None, "settled on resume: not held")
            return
        if prev is not None:
            self.journal.finish(prev["id"], "failed", 0, None, error="interrupted; retried")
        self._change(
            key,
            "start_now",
            target,
            ["update", f"JobId={job_id}", "StartTime=now"],
            {"state": job.state, "reason": job.reason},
        )

    def release(self, uuid: str, actor: str = "api") -> dict[str, Any]:
        """Takes the GPU out of our drain reason; resumes the node when none is left and the
        reason is still ours. Returns what it did (for the API)."""
        with self._lock:
            for n in self.nodes():
                ours = parse_reason(n.reason) if n.drained else None
                if not ours or not any(e.uuid == uuid for e in ours):
                    continue
                rest = [e for e in ours if e.uuid != uuid]
                if rest:
                    self._change(
                        None,
                        "drain",
                        n.name,
                        ["update", f"NodeName={n.name}", "State=DRAIN", f"Reason={format_reason(rest)}"],
                        {"state": n.state, "reason": n.reason, "actor": actor},
                    )
                else:
                    self._change(
                        None,
                        "resume",
                        n.name,
                        ["update", f"NodeName={n.name}", "State=RESUME"],
                        {"state": n.state, "reason": n.reason, "actor": actor},
                    )
                self._embedded("release", uuid, actor)
                return {"slurm_node": n.name, "resumed": not rest, "still_quarantined": [e.uuid for e in rest]}
            self._embedded("release", uuid, actor)
            return {
                "slurm_node": None,
                "resumed": False,
                "reason": "no drain of ours names this GPU (never quarantined, already "
                "released, or the node's reason is someone else's now)",
            }

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> None:
        self._embedded("set_throttled", uuid, throttled, reason)

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> None:
        self._embedded("set_alert", uuid, rule, severity, firing)

    def fleet(self) -> Mapping[str, str]:
        """Known GPUs' states, with those named in our drain reasons quarantined, plus one
        entry per Slurm GPU the inventory does not list, so the budget's shares are of the
        whole cluster."""
        out: dict[str, str] = {}
        per_node: dict[str, int] = {}
        if self.scheduler is not None:
            for g in self.scheduler.list_gpus():
                out[g["uuid"]] = "quarantined" if g.get("quarantined") else g["state"]
                per_node[g["node"]] = per_node.get(g["node"], 0) + 1
        nodes = self.nodes()
        known: dict[str, int] = {}
        for value, count in per_node.items():
            try:
                name = self.nodemap.resolve(value, nodes)
            except UnknownNode:
                continue
            known[name] = known.get(name, 0) + count
        for n in nodes:
            for e in (parse_reason(n.reason) or []) if n.drained else []:
                out[e.uuid] = "quarantined"
            for i in range(known.get(n.name, 0), n.gpus):
                out.setdefault(f"slurm:{n.name}:{i}", "drained" if n.drained else "healthy")
        return out

    # -- which job holds which GPU (gpu_allocation_info) ----------------------------------
    def allocations(self) -> list[Allocation]:
        """Every GPU a running Slurm job holds, as ``Scheduler.add_allocation_source`` wants it.

        The inventory names each GPU's uuid and Prometheus instance; its node is matched to a
        Slurm node the way alerts are (``NodeMap``). A GPU the inventory does not list is still
        reported, under the Slurm node's name and without a uuid. Raises ``SlurmError`` when
        scontrol fails (the scheduler then leaves Slurm's jobs out of that scrape); when it has
        not answered within ``ALLOCATIONS_WAIT_SECONDS``, the last answer is given instead."""
        with self._reading_lock:
            if self._reading is None or self._reading.done():
                self._reading = self._reader.submit(self._read_allocations)
            reading = self._reading
        try:
            self._last_allocations = reading.result(ALLOCATIONS_WAIT_SECONDS)
        except concurrent.futures.TimeoutError:
            log.warning(
                "scontrol is slow: gpu_allocation_info shows the last allocations read",
                extra={"event": "slurm.allocations_slow", "wait_seconds": ALLOCATIONS_WAIT_SECONDS},
            )
        return list(self._last_allocations)

    def _read_allocations(self) -> list[Allocation]:
        nodes = self.nodes()
        known: dict[tuple[str, int], tuple[str, str]] = {}  # (Slurm node, index) -> (instance, uuid)
        resolved: dict[str, str | None] = {}
        for g in self.scheduler.list_gpus() if self.scheduler is not None else []:
            node = g["node"]
            if node not in resolved:
                try:
                    resolved[node] = self.nodemap.resolve(node, nodes)
                except UnknownNode:
                    resolved[node] = None
            name = resolved[node]
            if name is not None:
                known.setdefault((name, int(g["index"])), (g.get("instance") or node, g["uuid"]))
        out = []
        for job in self.jobs():
            if job.state not in RUNNING:
                continue
            for name, indexes in job.gpus.items():
                for index in sorted(indexes):
                    instance, uuid = known.get((name, index), (name, ""))
                    out.append(Allocation(instance, index, uuid, str(job.id), job.name))
        return out

    # -- the embedded scheduler's events (operators using the agent's API) ---------------
    def on_event(self, event: dict[str, Any]) -> None:
        """``gpu.released``/``gpu.quarantined`` by a person through the agent's API: the same
        in Slurm. Our own calls into the embedded scheduler are skipped."""
        if getattr(self._own, "active", False) or not event.get("gpu_uuid"):
            return
        try:
            if event["kind"] == "gpu.released":
                self.release(event["gpu_uuid"], event.get("actor") or "api")
            elif event["kind"] == "gpu.quarantined":
                reason = str(event.get("detail", {}).get("reason", "manual"))
                self.quarantine(event["gpu_uuid"], f"manual: {reason}", event.get("actor") or "api")
        except SlurmError as exc:
            log.error(
                "mirroring an API action into Slurm failed",
                extra={
                    "event": "slurm.api_action_failed",
                    "kind": event["kind"],
                    "uuid": event["gpu_uuid"],
                    "error": str(exc),
                },
            )
