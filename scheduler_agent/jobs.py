"""The scheduler's job lifecycle: the queue, the jobs not finished yet, and their transitions.

pending -> running (``schedule_once`` places it on the ``GpuTable``, then the executor starts it)
-> completed | failed (``on_exit``), or -> stopping (cancel, preemption, time limit) -> cancelled
| failed | pending again (requeued at the head of its priority). Terminal jobs live only in the
database. Every transition is written through the ``SchedulerStore`` with an event row, inside
its ``commit()``; the executor's exit callback and the dispatcher's passes open their own.

Durability: a placement commits (job running, GPUs held) *before* the executor starts the work,
and the handle commits after, so a kill between the two is recovered like any other: on
start-up (``recover``) every job the database says is running or stopping is handed to
``executor.recover`` (which ends any orphaned work) and requeued with its GPUs freed;
tracking-only jobs (no command) stay placed, since nothing of theirs died.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from .executor import Executor, JobRun
from .gpus import GpuTable
from .jobstore import SchedulerStore
from .models import ActiveJob, Conflict, InvalidRequest, SchedulerOptions
from .placement import RiskFn
from .stats import JobStats

_FINAL_COUNTER = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}


class JobLifecycle:
    def __init__(
        self,
        store: SchedulerStore,
        gpus: GpuTable,
        executor: Executor,
        tracking: Executor,
        options: SchedulerOptions,
        tracer: trace.Tracer,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self._store, self._gpus = store, gpus
        self._executor, self._tracking = executor, tracking
        self._options, self._tracer, self._clock, self._wake = options, tracer, clock, wake
        self.stats = JobStats()
        self._jobs: dict[int, ActiveJob] = {}
        self._queue: list[tuple[int, int, int]] = []
        self._head_seq = -1
        self._tail_seq = 1
        self._run_spans: dict[int, trace.Span] = {}

    # ---------------------------------------------------------------------------- start-up
    def recover(self, head_seq: int, tail_seq: int, jobs: list[tuple[ActiveJob, dict[str, Any] | None]]) -> None:
        """Rebuilds the queue from the jobs the database has not finished (inside a commit)."""
        self._head_seq, self._tail_seq = head_seq, tail_seq
        for job, handle in jobs:
            self._jobs[job.id] = job
            if job.state == "pending":
                self._enqueue(job)
                continue
            if job.command is None:
                self._gpus.assign(job.id, job.uuids)
                if job.state == "stopping":
                    self._finish_stop(job, None)
                continue
            self._executor.recover(self._run_of(job), handle)
            self._requeue(job, head=True, why="agent restarted while the job ran")

    def states(self) -> list[str]:
        """The state of each job not finished yet."""
        return [j.state for j in self._jobs.values()]

    def names(self) -> dict[int, str]:
        """Each unfinished job's name by id (for gpu_allocation_info)."""
        return {j.id: j.name for j in self._jobs.values()}

    def _run_of(self, job: ActiveJob) -> JobRun:
        return JobRun(
            id=job.id,
            name=job.name,
            command=job.command,
            gpu_indexes=job.indexes,
            gpu_uuids=job.uuids,
            node=job.node or "",
            env=job.env,
            key=f"{self._store.instance}:{job.id}:{job.runs}",
        )

    def _enqueue(self, job: ActiveJob) -> None:
        bisect.insort(self._queue, job.queue_key)

    def _dequeue(self, job: ActiveJob) -> None:
        i = bisect.bisect_left(self._queue, job.queue_key)
        if i < len(self._queue) and self._queue[i] == job.queue_key:
            del self._queue[i]

    def _free(self, job: ActiveJob) -> None:
        self._gpus.unassign(job.id, job.uuids)
        job.node, job.uuids, job.indexes, job.started_at = None, (), (), None
        self._wake()

    # ----------------------------------------------------------------------------- requests
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
        max_name = self._options.max_name_length
        if not isinstance(name, str) or not name or len(name) > max_name:
            raise InvalidRequest(f"name must be 1-{max_name} characters", "name")
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            raise InvalidRequest("gpus must be an integer >= 1", "gpus")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidRequest("priority must be an integer", "priority")
        if command is not None and (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) and "\x00" not in a for a in command)
        ):
            raise InvalidRequest("command must be a non-empty list of strings (argv)", "command")
        if time_limit is not None and (
            isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0
        ):
            raise InvalidRequest("time_limit_seconds must be a number > 0", "time_limit_seconds")
        with self._tracer.start_as_current_span("job.submit") as span, self._store.commit():
            if idempotency_key is not None:
                existing = self._store.job_by_key(idempotency_key)
                if existing is not None:
                    span.set_attribute("job.id", existing)
                    span.set_attribute("job.duplicate", True)
                    return self._store.job(existing)
            largest = self._gpus.largest_node()
            if largest and gpus > largest:
                raise InvalidRequest(f"gpus: asks for {gpus} GPUs but the largest node has {largest}", "gpus")
            seq = self._tail_seq
            self._tail_seq += 1
            job_id = self._store.insert_job(
                name, gpus, priority, command, env, time_limit, idempotency_key, seq, self._clock()
            )
            job = ActiveJob(
                id=job_id,
                name=name,
                gpus=gpus,
                priority=priority,
                command=command,
                time_limit=time_limit,
                state="pending",
                seq=seq,
                env=env,
            )
            self._jobs[job.id] = job
            self._enqueue(job)
            self._store.count("submitted")
            self._store.record("job.submitted", job.id, actor=actor, gpus=gpus, priority=priority)
            span.set_attributes(
                {
                    "job.id": job.id,
                    "job.name": name,
                    "job.gpus": gpus,
                    "job.priority": priority,
                    "job.tracking_only": command is None,
                }
            )
            self._wake()
            return self._store.job(job.id)

    def cancel(self, job_id: int, actor: str = "api") -> dict[str, Any]:
        with self._store.commit():
            job = self._jobs.get(job_id)
            if job is None:
                current = self._store.job(job_id)
                raise Conflict(f"job {job_id} is already {current['state']}", field="id")
            self._store.record("job.cancel_requested", job_id, actor=actor)
            if job.state == "pending":
                self._dequeue(job)
                self._finish(job, "cancelled", reason=f"cancelled by {actor}")
            elif job.state == "running":
                self._stop(job, "cancel", f"cancelled by {actor}")
            return self._store.job(job_id)

    def preempt(self, job_id: int, reason: str, actor: str) -> bool:
        """Stops the running job (requeued at the head of its priority, or failed when it reached
        max_preemptions); False if it is not running."""
        with self._store.commit():
            job = self._jobs.get(job_id)
            if job is None or job.state != "running":
                return False
            job.preemptions += 1
            self._store.count("preempted")
            self._store.record("job.preempted", job.id, actor=actor, reason=reason, preemptions=job.preemptions)
            self._stop(job, "preempt", reason)
            return True

    def check_time_limits(self) -> list[int]:
        now, hit = self._clock(), []
        with self._store.commit():
            for job in list(self._jobs.values()):
                if (
                    job.state == "running"
                    and job.time_limit
                    and job.started_at is not None
                    and now - job.started_at > job.time_limit
                ):
                    self._stop(job, "time_limit", f"time limit of {job.time_limit:g}s exceeded")
                    hit.append(job.id)
        return hit

    # --------------------------------------------------------------------------- transitions
    def _finish(self, job: ActiveJob, state: str, reason: str | None = None, exit_code: int | None = None) -> None:
        now = self._clock()
        if state in ("completed", "failed") and job.started_at is not None:
            self.stats.observe(now - job.started_at)
        job.state = state
        self._store.save_job(job, finished_at=now, reason=reason, exit_code=exit_code, handle=None)
        self._free(job)
        self._jobs.pop(job.id, None)
        self._store.count(_FINAL_COUNTER[state])
        self._store.record(f"job.{state}", job.id, reason=reason, exit_code=exit_code)
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
        self._store.save_job(job, handle=None)
        self._enqueue(job)
        self._store.record("job.requeued", job.id, reason=why)

    def _stop(self, job: ActiveJob, reason: str, detail: str) -> None:
        """Asks the executor to end a running job; ``_on_exit`` finishes the bookkeeping."""
        job.state, job.stop_reason, job.stop_detail = "stopping", reason, detail
        self._store.save_job(job)
        self._store.record("job.stopping", job.id, reason=reason, detail=detail)
        ex = self._executor if job.command else self._tracking
        ex.stop(job.id, self._options.stop_grace_seconds)

    def _finish_stop(self, job: ActiveJob, exit_code: int | None) -> None:
        if job.stop_reason == "cancel":
            self._finish(job, "cancelled", reason=job.stop_detail, exit_code=exit_code)
        elif job.stop_reason == "time_limit":
            self._finish(job, "failed", reason=job.stop_detail, exit_code=exit_code)
        elif job.preemptions >= self._options.max_preemptions:
            self._finish(
                job,
                "failed",
                exit_code=exit_code,
                reason=(
                    f"preempted {job.preemptions} times (scheduler.max_preemptions="
                    f"{self._options.max_preemptions}); last: {job.stop_detail}"
                ),
            )
        else:
            self._requeue(job, head=True, why=f"preempted: {job.stop_detail}")

    def _on_exit(self, job_id: int, exit_code: int | None) -> None:
        """The executor's callback (any thread): the job's work ended."""
        with self._store.commit():
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

    # --------------------------------------------------------------------------- scheduling
    def schedule_once(self, risk: RiskFn) -> list[int]:
        """Places every pending job that fits now, in queue order; returns the ids started."""
        started: list[tuple[ActiveJob, JobRun]] = []
        tracer, gpus = self._tracer, self._gpus
        with self._store.commit():
            for key in list(self._queue):
                free = gpus.max_free()
                if free == 0:
                    break
                job = self._jobs[key[2]]
                if job.gpus > free:
                    continue
                with tracer.start_as_current_span("job.schedule") as span:
                    span.set_attributes(
                        {"job.id": job.id, "job.name": job.name, "job.gpus": job.gpus, "job.priority": job.priority}
                    )
                    with tracer.start_as_current_span("scheduler.placement") as pspan:
                        placement = gpus.place(job.gpus, risk)
                        pspan.set_attributes(
                            {"job.id": job.id, "job.gpus": job.gpus, "placement.found": placement is not None}
                        )
                        if placement is not None:
                            pspan.set_attributes(
                                {
                                    "node": placement.node,
                                    "gpu.uuids": list(placement.uuids),
                                    "gpu.indexes": list(placement.indexes),
                                }
                            )
                    if placement is None:
                        continue
                    self._dequeue(job)
                    job.node, job.uuids, job.indexes = placement.node, placement.uuids, placement.indexes
                    job.state, job.started_at = "running", self._clock()
                    job.runs += 1
                    gpus.assign(job.id, job.uuids)
                    self._store.save_job(job, handle=None)
                    self._store.record("job.scheduled", job.id, node=job.node, gpus=list(job.uuids))
                    span.set_attributes(
                        {"node": job.node, "gpu.uuids": list(job.uuids), "gpu.indexes": list(job.indexes)}
                    )
                    started.append((job, self._run_of(job)))
            if started:
                self._store.count("scheduled", len(started))
        # Committed: the placement survives a kill from here on. Now start the work; the
        # handles commit together (a kill before that is recovered by the job's key).
        with self._store.commit():
            for job, run in started:
                self._launch(job, run)
        return [job.id for job, _ in started]

    def _launch(self, job: ActiveJob, run: JobRun) -> None:
        span = self._tracer.start_span(
            "job.run",
            attributes={
                "job.id": job.id,
                "job.name": job.name,
                "job.gpus": job.gpus,
                "node": run.node,
                "gpu.uuids": list(run.gpu_uuids),
                "gpu.indexes": list(run.gpu_indexes),
                "job.tracking_only": job.command is None,
            },
        )
        self._run_spans[job.id] = span
        ex = self._executor if job.command else self._tracking
        with self._store.commit():
            try:
                handle = ex.start(run, self._on_exit)
            except (OSError, ValueError) as exc:
                self._finish(job, "failed", reason=f"could not start: {exc}")
                return
            if job.state in ("running", "stopping"):
                self._store.save_job(job, handle=json.dumps(handle))
                self._store.record("job.started", job.id, handle=handle)
