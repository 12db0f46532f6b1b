"""The embedded health-aware scheduler: the only writer of GPU and job state.

Operations (thread-safe; each commits to SQLite before it returns and records a row in
``scheduler_events``; listeners added with ``subscribe`` see each event after its commit):

  jobs:  submit(name, gpus, priority=0, command=None, time_limit=None, idempotency_key=None,
                env=None, actor="api") -> dict
         list_jobs(state=None, limit=100, offset=0) -> list[dict];  get_job(id) -> dict
         cancel(id, actor="api") -> dict
  GPUs:  list_gpus() -> list[dict];  get_gpu(uuid) -> dict
         register_gpu(node, index, uuid, name="", instance="") -> dict;  sync_inventory(specs, source) -> None
         quarantine(uuid, reason, actor, preempt=True) -> dict (with "preempted": [job ids])
         release(uuid, actor) -> dict
         preempt_gpu(uuid, reason, actor="scheduler") -> list[int]
         set_throttled(uuid, throttled, reason) -> dict
         set_alert(uuid, rule, severity, firing) -> dict   (a firing critical alert excludes it)
         mark_lost(uuid, reason) -> dict;  mark_up(uuid) -> dict
  hook:  ``risk``: Callable[[uuid], float], 0 (default) = no known risk; set by the predictor.
         add_allocation_source(fn): fn() -> Iterable[Allocation], jobs held elsewhere (Slurm).
  loop:  schedule_once() -> list[int];  check_time_limits() -> list[int];  start() / close()
  metrics: ``stats`` (job durations), snapshot() -> Snapshot, allocations() -> list[Allocation].

Errors are ``models.InvalidRequest`` (names the field), ``NotFound`` and ``Conflict``.

Queue order is priority (high first), then submission; a preempted job goes back at the head of
its priority. A job is preempted at most ``max_preemptions`` times: the preemption that reaches
the limit fails it, with the reason saying so. A placement is committed (job ``running``, GPUs
held) *before* the executor starts the work, and the executor's handle is committed after, so a
kill between the two is recovered like any other: on start-up every job the database says is
running or stopping is handed to ``executor.recover`` (which ends any orphaned work) and requeued
with its GPUs freed; tracking-only jobs (no command) stay placed, since nothing of theirs died.

``Scheduler`` is a facade over four parts, each owning its state: ``SchedulerStore``
(jobstore.py: SQL, events, counters, listeners, and the ``commit()`` every change runs in),
``GpuTable`` (gpus.py: inventory and health, with the placement index of placement.py kept in
step), ``JobLifecycle`` (jobs.py: queue and job transitions) and the dispatcher thread here.
The facade adds what spans parts: a GPU that is quarantined or lost has its job preempted in the
same transaction, and ``sync_inventory``. Locking: ``commit()`` holds ``db.lock`` and nests
(the outermost commit is the transaction); readers hold ``db.lock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from opentelemetry import trace

from .executor import Executor, TrackingExecutor
from .gpus import GpuTable
from .jobs import JobLifecycle
from .jobstore import SchedulerStore
from .models import GpuSpec, SchedulerOptions
from .placement import RiskFn, no_risk
from .store import Database

__all__ = ["Allocation", "GpuRow", "Scheduler", "SchedulerOptions", "Snapshot"]

log = logging.getLogger(__name__)


class GpuRow(NamedTuple):
    node: str
    gpu: int  # index on the node
    uuid: str
    state: str
    schedulable: bool
    busy: bool
    instance: str  # the node's Prometheus instance (``Gpu.prom_instance``)


class Snapshot(NamedTuple):
    """The scheduler's state at one instant, for the metrics collector."""

    counters: dict[str, int]
    job_states: list[str]  # one per unfinished job
    gpus: list[GpuRow]


class Allocation(NamedTuple):
    """A GPU held by a job: ``gpu_allocation_info``'s labels. ``instance`` is the GPU's
    Prometheus instance (its exporter target), so the series joins the exporter's on
    ``(instance, gpu)`` as well as on ``uuid``."""

    instance: str
    gpu: int
    uuid: str
    job_id: str
    job_name: str


AllocationSource = Callable[[], Iterable[Allocation]]


class Scheduler:
    def __init__(
        self,
        db: Database,
        executor: Executor | None = None,
        options: SchedulerOptions | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.executor: Executor = executor or TrackingExecutor()
        self.tracking = TrackingExecutor()
        self.options = options or SchedulerOptions()
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("gpuwarden.scheduler")
        self.clock = clock
        self.risk: RiskFn = no_risk
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = SchedulerStore(db, clock)
        self._gpus = GpuTable(self._store, self.options.risk_candidates, self._wake.set)
        self._jobs = JobLifecycle(
            self._store, self._gpus, self.executor, self.tracking, self.options, self.tracer, clock, self._wake.set
        )
        self.stats = self._jobs.stats
        with self._store.commit():  # loading and recovery: one transaction
            loaded = self._store.load()
            self._gpus.load(loaded.gpus)
            self._jobs.recover(loaded.head_seq, loaded.tail_seq, loaded.jobs)
            self._gpus.index_all()
        self.instance = self._store.instance
        self._allocation_sources: list[AllocationSource] = []

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Calls ``listener(event)`` after each committed event (from the committing thread)."""
        self._store.subscribe(listener)

    def snapshot(self) -> Snapshot:
        with self.db.lock:
            return Snapshot(
                self._store.counters(),
                self._jobs.states(),
                [
                    GpuRow(g.node, g.index, g.uuid, g.state, g.schedulable, g.job_id is not None, g.prom_instance)
                    for g in self._gpus.all()
                ],
            )

    def add_allocation_source(self, source: AllocationSource) -> None:
        """Adds jobs held outside the embedded scheduler (a cluster scheduler's: the Slurm port)
        to ``allocations()``."""
        self._allocation_sources.append(source)

    def allocations(self) -> list[Allocation]:
        """Every GPU held by a job: the embedded scheduler's, then each source's. A source that
        fails is logged and left out (the metrics scrape that asks still answers)."""
        with self.db.lock:
            names = self._jobs.names()
            out = [
                Allocation(g.prom_instance, g.index, g.uuid, str(g.job_id), names.get(g.job_id, ""))
                for g in self._gpus.all()
                if g.job_id is not None
            ]
        for source in list(self._allocation_sources):
            try:
                out.extend(source())
            except Exception as exc:  # noqa: BLE001 - any source's failure only drops its series
                log.warning("allocation source failed; its jobs are left out", extra={"error": str(exc)})
        return out

    # ------------------------------------------------------------------------------- jobs
    def submit(
        self,
        name: str,
        gpus: int,
        priority: int = 0,
        command: list[str] | None = None,
        time_limit: float | None = None,
        idempotency_key: str | None = None,
        env: dict[str, str] | None = None,
        actor: str = "api",
    ) -> dict[str, Any]:
        return self._jobs.submit(name, gpus, priority, command, time_limit, idempotency_key, env, actor)

    def get_job(self, job_id: int) -> dict[str, Any]:
        return self._store.job(job_id)

    def list_jobs(self, state: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return self._store.jobs(state, limit, offset)

    def cancel(self, job_id: int, actor: str = "api") -> dict[str, Any]:
        return self._jobs.cancel(job_id, actor)

    # ------------------------------------------------------------------------------- GPUs
    def list_gpus(self) -> list[dict[str, Any]]:
        with self.db.lock:
            return self._gpus.describe_all()

    def get_gpu(self, uuid: str) -> dict[str, Any]:
        with self.db.lock:
            return self._gpus.describe(uuid)

    def register_gpu(self, node: str, index: int, uuid: str, name: str = "", instance: str = "") -> dict[str, Any]:
        """Adds a GPU to the inventory, or updates where it is; its health flags are kept.
        ``instance``: the node's Prometheus instance where that is not ``node`` itself."""
        return self._gpus.register(node, index, uuid, name, instance)

    def sync_inventory(self, specs: Iterable[GpuSpec], source: str = "inventory") -> None:
        """Makes the inventory match a discovery result: new GPUs added, down or absent ones lost.

        GPUs lost for another reason are brought back only by a discovery that saw them lost.
        """
        specs = list(specs)
        seen = {s.uuid for s in specs}
        with self._store.commit():
            for s in specs:
                self.register_gpu(s.node, s.index, s.uuid, s.name, s.instance)
                g = self._gpus.get(s.uuid)
                if not s.up and not g.lost:
                    self.mark_lost(s.uuid, f"{source}: gpu_up is 0")
                elif s.up and g.lost and (g.lost_reason or "").startswith(f"{source}:"):
                    self.mark_up(s.uuid)
            for g in self._gpus.all():
                if g.uuid not in seen and not g.lost:
                    self.mark_lost(g.uuid, f"{source}: absent from discovery")

    def quarantine(self, uuid: str, reason: str, actor: str, preempt: bool = True) -> dict[str, Any]:
        """Takes a GPU out of placement until ``release``; preempts its job unless told not to."""
        with self._store.commit():
            self._gpus.quarantine(uuid, reason, actor)
            preempted = self.preempt_gpu(uuid, f"GPU {uuid} quarantined: {reason}", actor) if preempt else []
            out = self._gpus.describe(uuid)
            out["preempted"] = preempted
            return out

    def release(self, uuid: str, actor: str) -> dict[str, Any]:
        return self._gpus.release(uuid, actor)

    def preempt_gpu(self, uuid: str, reason: str, actor: str = "scheduler") -> list[int]:
        """Stops the job running on the GPU (requeued at the head of its priority, or failed
        when it reached max_preemptions); returns the ids of the jobs preempted."""
        with self._store.commit():
            job_id = self._gpus.job_on(uuid)
            if job_id is None or not self._jobs.preempt(job_id, reason, actor):
                return []
            return [job_id]

    def set_throttled(self, uuid: str, throttled: bool, reason: str) -> dict[str, Any]:
        return self._gpus.set_throttled(uuid, throttled, reason)

    def set_alert(self, uuid: str, rule: str, severity: str, firing: bool) -> dict[str, Any]:
        """Records an alert's state on a GPU; while a critical one fires the GPU gets no new job."""
        return self._gpus.set_alert(uuid, rule, severity, firing)

    def mark_lost(self, uuid: str, reason: str) -> dict[str, Any]:
        """The GPU stopped answering: no placement, and its job is preempted."""
        with self._store.commit():
            if self._gpus.mark_lost(uuid, reason):
                self.preempt_gpu(uuid, f"GPU {uuid} lost: {reason}", "inventory")
            return self._gpus.describe(uuid)

    def mark_up(self, uuid: str) -> dict[str, Any]:
        return self._gpus.mark_up(uuid)

    # ------------------------------------------------------------------------- dispatcher
    def schedule_once(self) -> list[int]:
        """Places every pending job that fits now, in queue order; returns the ids started."""
        return self._jobs.schedule_once(self.risk)

    def check_time_limits(self) -> list[int]:
        return self._jobs.check_time_limits()

    def start(self) -> None:
        """Starts the dispatcher thread (scheduling passes on every change and each tick)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self.options.tick_seconds)
            self._wake.clear()
            if self._closing.is_set():
                break
            try:
                self.check_time_limits()
                self.schedule_once()
            except Exception:
                log.exception("scheduling pass failed")

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.executor.close()
