"""The embedded health-aware scheduler: the only writer of GPU and job state.

Operations (thread-safe; each commits to SQLite before it returns and records a row in
``scheduler_events``; listeners added with ``subscribe`` see each event after its commit):

  jobs:  submit(name, gpus, priority=0, command=None, time_limit=None, idempotency_key=None,
                env=None, actor="api") -> dict
         list_jobs(state=None, limit=100, offset=0) -> list[dict];  get_job(id) -> dict
         cancel(id, actor="api") -> dict
  GPUs:  list_gpus() -> list[dict];  get_gpu(uuid) -> dict
         register_gpu(node, index, uuid, name="") -> dict;  sync_inventory(specs, source) -> None
         quarantine(uuid, reason, actor, preempt=True) -> dict (with "preempted": [job ids])
         release(uuid, actor) -> dict
         preempt_gpu(uuid, reason, actor="scheduler") -> list[int]
         set_throttled(uuid, throttled, reason) -> dict
         set_alert(uuid, rule, severity, firing) -> dict   (a firing critical alert excludes it)
         mark_lost(uuid, reason) -> dict;  mark_up(uuid) -> dict
  hook:  ``risk``: Callable[[uuid], float], 0 (default) = no known risk; set by the predictor.
  loop:  schedule_once() -> list[int];  start() / close();  stats() for metrics.

Errors are ``models.InvalidRequest`` (names the field), ``NotFound`` and ``Conflict``.

Queue order is priority (high first), then submission; a preempted job goes back at the head of
its priority. A job is preempted at most ``max_preemptions`` times: the preemption that reaches
the limit fails it, with the reason saying so. A placement is committed (job ``running``, GPUs
held) *before* the executor starts the work, and the executor's handle is committed after, so a
kill between the two is recovered like any other: on start-up every job the database says is
running or stopping is handed to ``executor.recover`` (which ends any orphaned work) and requeued
with its GPUs freed; tracking-only jobs (no command) stay placed, since nothing of theirs died.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Callable, Iterator

from opentelemetry import trace

from .executor import Executor, JobRun, TrackingExecutor
from .models import JOB_STATES, ActiveJob, Conflict, Gpu, InvalidRequest, NotFound, job_row
from .placement import FreeIndex, RiskFn, no_risk
from .schema import COMPONENT, MIGRATIONS
from .store import Database
from .stats import JobStats
from .gpu_ops import GpuOperations

log = logging.getLogger(__name__)

COUNTERS = ("submitted", "scheduled", "completed", "failed", "preempted", "cancelled")


@dataclass
class SchedulerOptions:
    max_preemptions: int = 3
    stop_grace_seconds: float = 10.0
    tick_seconds: float = 1.0
    risk_candidates: int = 16
    max_name_length: int = 200


class Scheduler(GpuOperations):
    def __init__(self, db: Database, executor: Executor | None = None,
                 options: SchedulerOptions | None = None,
                 tracer_provider: trace.TracerProvider | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.executor: Executor = executor or TrackingExecutor()
        self.tracking = TrackingExecutor()
        self.options = options or SchedulerOptions()
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("gpuwarden.scheduler")
        self.clock = clock
        self.risk: RiskFn = no_risk
        self.stats = JobStats()
        self._gpus: dict[str, Gpu] = {}
        self._jobs: dict[int, ActiveJob] = {}
        self._queue: list[tuple[int, int, int]] = []
        self._index = FreeIndex(self.options.risk_candidates)
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._listeners: list[Callable[[dict], None]] = []
        self._pending_events: list[dict] = []
        self._largest: int | None = None
        self._run_spans: dict[int, trace.Span] = {}
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        db.migrate(COMPONENT, MIGRATIONS)
        self._load()

    # ---------------------------------------------------------------- loading and recovery
    def _load(self) -> None:
        with self._commit() as c:
            row = c.execute("SELECT value FROM scheduler_meta WHERE key='instance'").fetchone()
            if row is None:
                self.instance = uuidlib.uuid4().hex[:12]
                c.execute("INSERT INTO scheduler_meta VALUES ('instance', ?)", (self.instance,))
            else:
                self.instance = row[0]
            for r in c.execute("SELECT name, value FROM scheduler_counters"):
                self._counters[r["name"]] = int(r["value"])
            for r in c.execute("SELECT * FROM gpus"):
                self._gpus[r["uuid"]] = Gpu(
                    uuid=r["uuid"], node=r["node"], index=r["idx"], name=r["name"],
                    quarantined=bool(r["quarantined"]), quarantine_reason=r["quarantine_reason"],
                    quarantine_actor=r["quarantine_actor"], quarantined_at=r["quarantined_at"],
                    throttled=bool(r["throttled"]), throttle_reason=r["throttle_reason"],
                    lost=bool(r["lost"]), lost_reason=r["lost_reason"])
            for r in c.execute("SELECT uuid, rule, severity FROM gpu_alerts"):
                if r["uuid"] in self._gpus:
                    self._gpus[r["uuid"]].alerts[r["rule"]] = r["severity"]
            seqs = c.execute("SELECT MIN(queue_seq), MAX(queue_seq) FROM jobs").fetchone()
            self._head_seq = min(0, seqs[0] or 0) - 1
            self._tail_seq = max(0, seqs[1] or 0) + 1
            rows = c.execute("SELECT * FROM jobs WHERE state IN ('pending','running','stopping')").fetchall()
            for r in rows:
                job = ActiveJob(
                    id=r["id"], name=r["name"], gpus=r["gpus"], priority=r["priority"],
                    command=json.loads(r["command"]) if r["command"] else None,
                    time_limit=r["time_limit"], state=r["state"], seq=r["queue_seq"],
                    preemptions=r["preemptions"], runs=r["runs"], node=r["node"],
                    uuids=tuple(json.loads(r["gpu_uuids"] or "[]")),
                    indexes=tuple(json.loads(r["gpu_indexes"] or "[]")),
                    started_at=r["started_at"], stop_reason=r["stop_reason"],
                    stop_detail=r["stop_detail"], env=json.loads(r["env"]) if r["env"] else None)
                self._jobs[job.id] = job
                if job.state == "pending":
                    self._enqueue(job)
                    continue
                if job.command is None:
                    self._hold(job)
                    if job.state == "stopping":
                        self._finish_stop(job, None)
                    continue
                handle = json.loads(r["handle"]) if r["handle"] else None
                self.executor.recover(self._run_of(job), handle)
                self._requeue(job, head=True, why="agent restarted while the job ran")
            for g in self._gpus.values():
                self._reindex(g)

    def _run_of(self, job: ActiveJob) -> JobRun:
        return JobRun(id=job.id, name=job.name, command=job.command, gpu_indexes=job.indexes,
                      gpu_uuids=job.uuids, node=job.node or "", env=job.env,
                      key=f"{self.instance}:{job.id}:{job.runs}")

    # ------------------------------------------------------------------------ bookkeeping
    def _record(self, kind: str, job_id: int | None = None, gpu: str | None = None,
                actor: str | None = None, **detail: object) -> None:
        event = {"at": self.clock(), "kind": kind, "job_id": job_id, "gpu_uuid": gpu,
                 "actor": actor, "detail": detail}
        self.db.conn.execute(
            "INSERT INTO scheduler_events(at, kind, job_id, gpu_uuid, actor, detail) VALUES (?,?,?,?,?,?)",
            (event["at"], kind, job_id, gpu, actor, json.dumps(detail, sort_keys=True)))
        self._pending_events.append(event)

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n
        self.db.conn.execute(
            "INSERT INTO scheduler_counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (name, n))

    @contextlib.contextmanager
    def _commit(self) -> Iterator[sqlite3.Connection]:
        """A transaction whose events reach listeners only after it commits (outermost only)."""
        with self.db.transaction() as c:
            outer = self.db._depth == 1          # read under the lock the transaction holds
            if outer:
                self._pending_events = []
            yield c
        if outer:
            events, self._pending_events = self._pending_events, []
            for e in events:
                for fn in list(self._listeners):
                    try:
                        fn(e)
                    except Exception:  # noqa: BLE001 - a listener must not undo a commit
                        log.exception("scheduler listener failed on %s", e["kind"])

    def subscribe(self, listener: Callable[[dict], None]) -> None:
        """Calls ``listener(event)`` after each committed event (from the committing thread)."""
        self._listeners.append(listener)

    def _reindex(self, g: Gpu) -> None:
        if g.placeable:
            self._index.add(g.node, g.uuid, g.index)
        else:
            self._index.remove(g.uuid)

    def _save_gpu(self, g: Gpu) -> None:
        self.db.conn.execute(
            "UPDATE gpus SET node=?, idx=?, name=?, quarantined=?, quarantine_reason=?, quarantine_actor=?, "
            "quarantined_at=?, throttled=?, throttle_reason=?, lost=?, lost_reason=?, updated_at=? WHERE uuid=?",
            (g.node, g.index, g.name, int(g.quarantined), g.quarantine_reason, g.quarantine_actor,
             g.quarantined_at, int(g.throttled), g.throttle_reason, int(g.lost), g.lost_reason,
             self.clock(), g.uuid))
        self._reindex(g)
        self._wake.set()

    def _save_job(self, job: ActiveJob, **extra: object) -> None:
        cols = {"state": job.state, "queue_seq": job.seq, "preemptions": job.preemptions,
                "runs": job.runs, "node": job.node, "gpu_uuids": json.dumps(list(job.uuids)),
                "gpu_indexes": json.dumps(list(job.indexes)), "started_at": job.started_at,
                "stop_reason": job.stop_reason, "stop_detail": job.stop_detail}
        cols.update(extra)
        sets = ", ".join(f"{k}=?" for k in cols)
        self.db.conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*cols.values(), job.id))

    def _enqueue(self, job: ActiveJob) -> None:
        bisect.insort(self._queue, job.queue_key)

    def _dequeue(self, job: ActiveJob) -> None:
        i = bisect.bisect_left(self._queue, job.queue_key)
        if i < len(self._queue) and self._queue[i] == job.queue_key:
            del self._queue[i]

    def _hold(self, job: ActiveJob) -> None:
        for u in job.uuids:
            g = self._gpus.get(u)
            if g is not None:
                g.job_id = job.id
                self._index.remove(u)

    def _free(self, job: ActiveJob) -> None:
        for u in job.uuids:
            g = self._gpus.get(u)
            if g is not None and g.job_id == job.id:
                g.job_id = None
                self._reindex(g)
        job.node, job.uuids, job.indexes, job.started_at = None, (), (), None
        self._wake.set()

    def _gpu(self, uuid: str) -> Gpu:
        g = self._gpus.get(uuid)
        if g is None:
            raise NotFound(f"no GPU with uuid {uuid!r}", field="uuid")
        return g

    # ------------------------------------------------------------------------------- jobs
    def submit(self, name: str, gpus: int, priority: int = 0, command: list[str] | None = None,
               time_limit: float | None = None, idempotency_key: str | None = None,
               env: dict[str, str] | None = None, actor: str = "api") -> dict:
        if not isinstance(name, str) or not name or len(name) > self.options.max_name_length:
            raise InvalidRequest(f"name must be 1-{self.options.max_name_length} characters", "name")
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            raise InvalidRequest("gpus must be an integer >= 1", "gpus")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidRequest("priority must be an integer", "priority")
        if command is not None and (not isinstance(command, list) or not command
                                    or not all(isinstance(a, str) and "\x00" not in a for a in command)):
            raise InvalidRequest("command must be a non-empty list of strings (argv)", "command")
        if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                       or not time_limit > 0):
            raise InvalidRequest("time_limit_seconds must be a number > 0", "time_limit_seconds")
        with self.tracer.start_as_current_span("job.submit") as span, self._commit() as c:
            if idempotency_key is not None:
                row = c.execute("SELECT id FROM jobs WHERE idempotency_key=?", (idempotency_key,)).fetchone()
                if row is not None:
                    span.set_attribute("job.id", row[0])
                    span.set_attribute("job.duplicate", True)
                    return self._job_dict(c, row[0])
            largest = self._largest_node()
            if largest and gpus > largest:
                raise InvalidRequest(f"gpus: asks for {gpus} GPUs but the largest node has {largest}", "gpus")
            now = self.clock()
            seq = self._tail_seq
            self._tail_seq += 1
            cur = c.execute(
                "INSERT INTO jobs(name, gpus, priority, command, env, time_limit, idempotency_key, state, "
                "queue_seq, submitted_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (name, gpus, priority, json.dumps(command) if command else None,
                 json.dumps(env) if env else None, time_limit, idempotency_key, "pending", seq, now))
            job = ActiveJob(id=int(cur.lastrowid), name=name, gpus=gpus, priority=priority,
                            command=command, time_limit=time_limit, state="pending", seq=seq, env=env)
            self._jobs[job.id] = job
            self._enqueue(job)
            self._count("submitted")
            self._record("job.submitted", job.id, actor=actor, gpus=gpus, priority=priority)
            span.set_attributes({"job.id": job.id, "job.name": name, "job.gpus": gpus,
                                 "job.priority": priority, "job.tracking_only": command is None})
            self._wake.set()
            return self._job_dict(c, job.id)

    def _largest_node(self) -> int:
        """GPUs on the biggest node (cached: the inventory changes rarely, submits often)."""
        if self._largest is None:
            sizes: dict[str, int] = {}
            for g in self._gpus.values():
                sizes[g.node] = sizes.get(g.node, 0) + 1
            self._largest = max(sizes.values(), default=0)
        return self._largest

    def _job_dict(self, c, job_id: int) -> dict:
        r = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if r is None:
            raise NotFound(f"no job with id {job_id}", field="id")
        return job_row(r)

    def get_job(self, job_id: int) -> dict:
        with self.db.lock:
            return self._job_dict(self.db.conn, job_id)

    def list_jobs(self, state: str | None = None, limit: int = 100, offset: int = 0) -> list[dict]:
        if state is not None and state not in JOB_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(JOB_STATES)}", "state")
        q, args = "SELECT * FROM jobs", []
        if state:
            q += " WHERE state=?"
            args.append(state)
        q += " ORDER BY id LIMIT ? OFFSET ?"
        with self.db.lock:
            return [job_row(r) for r in self.db.conn.execute(q, (*args, limit, offset))]

    def cancel(self, job_id: int, actor: str = "api") -> dict:
        with self._commit() as c:
            job = self._jobs.get(job_id)
            if job is None:
                current = self._job_dict(c, job_id)
                raise Conflict(f"job {job_id} is already {current['state']}", field="id")
            self._record("job.cancel_requested", job_id, actor=actor)
            if job.state == "pending":
                self._dequeue(job)
                self._finish(job, "cancelled", reason=f"cancelled by {actor}")
            elif job.state == "running":
                self._stop(job, "cancel", f"cancelled by {actor}")
            return self._job_dict(c, job_id)

    # ---------------------------------------------------------------------- job lifecycle
    def _finish(self, job: ActiveJob, state: str, reason: str | None = None,
                exit_code: int | None = None) -> None:
        now = self.clock()
        if state in ("completed", "failed") and job.started_at is not None:
            self.stats.observe(now - job.started_at)
        job.state = state
        self._save_job(job, finished_at=now, reason=reason, exit_code=exit_code, handle=None)
        self._free(job)
        self._jobs.pop(job.id, None)
        self._count({"completed": "completed", "failed": "failed", "cancelled": "cancelled"}[state])
        self._record(f"job.{state}", job.id, reason=reason, exit_code=exit_code)
        span = self._run_spans.pop(job.id, None)
        if span is not None:
            span.set_attribute("job.state", state)
            if exit_code is not None:
                span.set_attribute("job.exit_code", exit_code)
            if state == "failed":
                span.set_status(trace.Status(trace.StatusCode.ERROR, reason or "failed"))
            span.end()

    def _requeue(self, job: ActiveJob, head: bool, why: str) -> None:
        span = self._run_spans.pop(job.id, None)
        if span is not None:
            span.set_attribute("job.state", "requeued")
            span.end()
        self._free(job)
        job.state, job.stop_reason, job.stop_detail = "pending", None, None
        if head:
            job.seq = self._head_seq
            self._head_seq -= 1
        self._save_job(job, handle=None)
        self._enqueue(job)
        self._record("job.requeued", job.id, reason=why)

    def _stop(self, job: ActiveJob, reason: str, detail: str) -> None:
        """Asks the executor to end a running job; ``_on_exit`` finishes the bookkeeping."""
        job.state, job.stop_reason, job.stop_detail = "stopping", reason, detail
        self._save_job(job)
        self._record("job.stopping", job.id, reason=reason, detail=detail)
        ex = self.executor if job.command else self.tracking
        ex.stop(job.id, self.options.stop_grace_seconds)

    def _finish_stop(self, job: ActiveJob, exit_code: int | None) -> None:
        if job.stop_reason == "cancel":
            self._finish(job, "cancelled", reason=job.stop_detail, exit_code=exit_code)
        elif job.stop_reason == "time_limit":
            self._finish(job, "failed", reason=job.stop_detail, exit_code=exit_code)
        elif job.preemptions >= self.options.max_preemptions:
            self._finish(job, "failed", exit_code=exit_code, reason=(
                f"preempted {job.preemptions} times (scheduler.max_preemptions="
                f"{self.options.max_preemptions}); last: {job.stop_detail}"))
        else:
            self._requeue(job, head=True, why=f"preempted: {job.stop_detail}")

    def _on_exit(self, job_id: int, exit_code: int | None) -> None:
        with self._commit():
            job = self._jobs.get(job_id)
            if job is None or job.state not in ("running", "stopping"):
                return
            if job.state == "stopping":
                self._finish_stop(job, exit_code)
            elif exit_code == 0:
                self._finish(job, "completed", exit_code=0)
            elif exit_code is not None and exit_code < 0:
                self._finish(job, "failed", reason=f"killed by signal {-exit_code}", exit_code=exit_code)
            else:
                self._finish(job, "failed", reason=f"exit code {exit_code}", exit_code=exit_code)

    def _preempt_job(self, job: ActiveJob, reason: str, actor: str) -> bool:
        if job.state != "running":
            return False
        job.preemptions += 1
        self._count("preempted")
        self._record("job.preempted", job.id, actor=actor, reason=reason, preemptions=job.preemptions)
        self._stop(job, "preempt", reason)
        return True

    # ------------------------------------------------------------------------- scheduling
    def schedule_once(self) -> list[int]:
        """Places every pending job that fits now, in queue order; returns the ids started."""
        started: list[tuple[ActiveJob, JobRun]] = []
        with self._commit():
            for key in list(self._queue):
                free = self._index.max_free()
                if free == 0:
                    break
                job = self._jobs[key[2]]
                if job.gpus > free:
                    continue
                with self.tracer.start_as_current_span("job.schedule") as span:
                    span.set_attributes({"job.id": job.id, "job.name": job.name, "job.gpus": job.gpus,
                                         "job.priority": job.priority})
                    with self.tracer.start_as_current_span("scheduler.placement") as pspan:
                        placement = self._index.place(job.gpus, self.risk)
                        pspan.set_attributes({"job.id": job.id, "job.gpus": job.gpus,
                                              "placement.found": placement is not None})
                        if placement is not None:
                            pspan.set_attributes({"node": placement.node, "gpu.uuids": list(placement.uuids),
                                                  "gpu.indexes": list(placement.indexes)})
                    if placement is None:
                        continue
                    self._index.take(placement)
                    self._dequeue(job)
                    job.node, job.uuids, job.indexes = placement.node, placement.uuids, placement.indexes
                    job.state, job.started_at = "running", self.clock()
                    job.runs += 1
                    self._hold(job)
                    self._save_job(job, handle=None)
                    self._record("job.scheduled", job.id, node=job.node, gpus=list(job.uuids))
                    attrs = {"node": job.node, "gpu.uuids": list(job.uuids),
                             "gpu.indexes": list(job.indexes)}
                    span.set_attributes(attrs)
                    started.append((job, self._run_of(job)))
            if started:
                self._count("scheduled", len(started))
        # Committed: the placement survives a kill from here on. Now start the work; the
        # handles commit together (a kill before that is recovered by the job's key).
        with self._commit():
            for job, run in started:
                self._launch(job, run)
        return [job.id for job, _ in started]

    def _launch(self, job: ActiveJob, run: JobRun) -> None:
        span = self.tracer.start_span("job.run", attributes={
            "job.id": job.id, "job.name": job.name, "job.gpus": job.gpus, "node": run.node,
            "gpu.uuids": list(run.gpu_uuids), "gpu.indexes": list(run.gpu_indexes),
            "job.tracking_only": job.command is None})
        self._run_spans[job.id] = span
        ex = self.executor if job.command else self.tracking
        with self._commit():
            try:
                handle = ex.start(run, self._on_exit)
            except (OSError, ValueError) as exc:
                self._finish(job, "failed", reason=f"could not start: {exc}")
                return
            if job.state in ("running", "stopping"):
                self._save_job(job, handle=json.dumps(handle))
                self._record("job.started", job.id, handle=handle)

    def check_time_limits(self) -> list[int]:
        now, hit = self.clock(), []
        with self._commit():
            for job in list(self._jobs.values()):
                if (job.state == "running" and job.time_limit and job.started_at is not None
                        and now - job.started_at > job.time_limit):
                    self._stop(job, "time_limit", f"time limit of {job.time_limit:g}s exceeded")
                    hit.append(job.id)
        return hit

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
            except Exception:  # noqa: BLE001 - keep scheduling; the error is logged with its trace
                log.exception("scheduling pass failed")

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.executor.close()
