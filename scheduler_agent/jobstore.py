"""The scheduler's persistence: its rows in SQLite, its event log, counters and listeners.

``SchedulerStore`` is the only part of the scheduler that writes SQL. Every change goes through
``commit()``: a ``Database.transaction`` (holding ``db.lock``; nested use joins the outer
transaction) whose events (``record``) reach the listeners only after the *outermost* one has
committed, so a listener never sees an event that a kill or an error could still undo. A
transaction opened around the scheduler by someone else (``with db.transaction():``) counts as
the outermost one: events recorded inside it are not delivered (the next outermost ``commit``
starts a fresh batch).

``load()`` reads what the scheduler needs at start-up (GPUs with their alerts, the queue's
sequence range, the jobs not finished yet); the caller runs it inside ``commit()`` with the
recovery that follows, so both happen in one transaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .models import JOB_STATES, ActiveJob, Gpu, InvalidRequest, NotFound, job_row
from .schema import COMPONENT, MIGRATIONS
from .store import Database

log = logging.getLogger(__name__)

COUNTERS = ("submitted", "scheduled", "completed", "failed", "preempted", "cancelled")

Listener = Callable[[dict[str, Any]], None]


@dataclass
class Loaded:
    """What ``SchedulerStore.load`` read: the state to rebuild in memory."""

    gpus: list[Gpu]
    head_seq: int  # next queue_seq for a job requeued at the head
    tail_seq: int  # next queue_seq for a new job
    jobs: list[tuple[ActiveJob, dict[str, Any] | None]]  # pending/running/stopping, with the executor handle


class SchedulerStore:
    """The scheduler's tables (gpus, gpu_alerts, jobs, scheduler_events, _counters, _meta)."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock
        self.instance = ""  # this database's scheduler id (set by load)
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._listeners: list[Listener] = []
        self._pending_events: list[dict[str, Any]] = []
        db.migrate(COMPONENT, MIGRATIONS)

    # ------------------------------------------------------------------ transactions, events
    @property
    def lock(self) -> contextlib.AbstractContextManager[bool]:
        """``db.lock``: hold it to read the scheduler's state consistently."""
        return self.db.lock

    @contextlib.contextmanager
    def commit(self) -> Iterator[sqlite3.Connection]:
        """A transaction whose events reach listeners only after it commits (outermost only)."""
        with self.db.lock:
            # Under the lock, an open transaction on the connection is one this thread holds.
            outer = not self.db.conn.in_transaction
            with self.db.transaction() as c:
                if outer:
                    self._pending_events = []
                yield c
        if outer:
            events, self._pending_events = self._pending_events, []
            for e in events:
                for fn in list(self._listeners):
                    try:
                        fn(e)
                    except Exception:
                        log.exception("scheduler listener failed on %s", e["kind"])

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def record(
        self, kind: str, job_id: int | None = None, gpu: str | None = None, actor: str | None = None, **detail: object
    ) -> None:
        """Writes an event row; its listeners see it once the outermost ``commit`` is done."""
        event = {"at": self.clock(), "kind": kind, "job_id": job_id, "gpu_uuid": gpu, "actor": actor, "detail": detail}
        self.db.conn.execute(
            "INSERT INTO scheduler_events(at, kind, job_id, gpu_uuid, actor, detail) VALUES (?,?,?,?,?,?)",
            (event["at"], kind, job_id, gpu, actor, json.dumps(detail, sort_keys=True)),
        )
        self._pending_events.append(event)

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n
        self.db.conn.execute(
            "INSERT INTO scheduler_counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
            (name, n),
        )

    def counters(self) -> dict[str, int]:
        """The job counters (a copy; they survive restarts)."""
        return dict(self._counters)

    # ----------------------------------------------------------------------------- loading
    def load(self) -> Loaded:
        """Reads the instance id, counters, GPUs and unfinished jobs (call inside ``commit``)."""
        c = self.db.conn
        row = c.execute("SELECT value FROM scheduler_meta WHERE key='instance'").fetchone()
        if row is None:
            self.instance = uuidlib.uuid4().hex[:12]
            c.execute("INSERT INTO scheduler_meta VALUES ('instance', ?)", (self.instance,))
        else:
            self.instance = row[0]
        for r in c.execute("SELECT name, value FROM scheduler_counters"):
            self._counters[r["name"]] = int(r["value"])
        gpus: dict[str, Gpu] = {}
        for r in c.execute("SELECT * FROM gpus"):
            gpus[r["uuid"]] = Gpu(
                uuid=r["uuid"],
                node=r["node"],
                index=r["idx"],
                name=r["name"],
                quarantined=bool(r["quarantined"]),
                quarantine_reason=r["quarantine_reason"],
                quarantine_actor=r["quarantine_actor"],
                quarantined_at=r["quarantined_at"],
                throttled=bool(r["throttled"]),
                throttle_reason=r["throttle_reason"],
                lost=bool(r["lost"]),
                lost_reason=r["lost_reason"],
                instance=r["instance"],
            )
        for r in c.execute("SELECT uuid, rule, severity FROM gpu_alerts"):
            if r["uuid"] in gpus:
                gpus[r["uuid"]].alerts[r["rule"]] = r["severity"]
        seqs = c.execute("SELECT MIN(queue_seq), MAX(queue_seq) FROM jobs").fetchone()
        jobs = []
        for r in c.execute("SELECT * FROM jobs WHERE state IN ('pending','running','stopping')").fetchall():
            job = ActiveJob(
                id=r["id"],
                name=r["name"],
                gpus=r["gpus"],
                priority=r["priority"],
                command=json.loads(r["command"]) if r["command"] else None,
                time_limit=r["time_limit"],
                state=r["state"],
                seq=r["queue_seq"],
                preemptions=r["preemptions"],
                runs=r["runs"],
                node=r["node"],
                uuids=tuple(json.loads(r["gpu_uuids"] or "[]")),
                indexes=tuple(json.loads(r["gpu_indexes"] or "[]")),
                started_at=r["started_at"],
                stop_reason=r["stop_reason"],
                stop_detail=r["stop_detail"],
                env=json.loads(r["env"]) if r["env"] else None,
            )
            jobs.append((job, json.loads(r["handle"]) if r["handle"] else None))
        return Loaded(
            gpus=list(gpus.values()), head_seq=min(0, seqs[0] or 0) - 1, tail_seq=max(0, seqs[1] or 0) + 1, jobs=jobs
        )

    # -------------------------------------------------------------------------------- GPUs
    def insert_gpu(self, g: Gpu) -> None:
        self.db.conn.execute(
            "INSERT INTO gpus(uuid, node, idx, name, instance) VALUES (?,?,?,?,?)",
            (g.uuid, g.node, g.index, g.name, g.instance),
        )

    def save_gpu(self, g: Gpu) -> None:
        self.db.conn.execute(
            "UPDATE gpus SET node=?, idx=?, name=?, quarantined=?, quarantine_reason=?, quarantine_actor=?, "
            "quarantined_at=?, throttled=?, throttle_reason=?, lost=?, lost_reason=?, instance=?, updated_at=? "
            "WHERE uuid=?",
            (
                g.node,
                g.index,
                g.name,
                int(g.quarantined),
                g.quarantine_reason,
                g.quarantine_actor,
                g.quarantined_at,
                int(g.throttled),
                g.throttle_reason,
                int(g.lost),
                g.lost_reason,
                g.instance,
                self.clock(),
                g.uuid,
            ),
        )

    def save_alert(self, uuid: str, rule: str, severity: str) -> None:
        self.db.conn.execute(
            "INSERT OR REPLACE INTO gpu_alerts(uuid, rule, severity, since) VALUES (?,?,?,?)",
            (uuid, rule, severity, self.clock()),
        )

    def delete_alert(self, uuid: str, rule: str) -> None:
        self.db.conn.execute("DELETE FROM gpu_alerts WHERE uuid=? AND rule=?", (uuid, rule))

    # -------------------------------------------------------------------------------- jobs
    def job_by_key(self, idempotency_key: str) -> int | None:
        row = self.db.conn.execute("SELECT id FROM jobs WHERE idempotency_key=?", (idempotency_key,)).fetchone()
        return None if row is None else int(row[0])

    def insert_job(
        self,
        name: str,
        gpus: int,
        priority: int,
        command: list[str] | None,
        env: dict[str, str] | None,
        time_limit: float | None,
        idempotency_key: str | None,
        seq: int,
        submitted_at: float,
    ) -> int:
        """A new pending job's row; returns its id."""
        cur = self.db.conn.execute(
            "INSERT INTO jobs(name, gpus, priority, command, env, time_limit, idempotency_key, state, "
            "queue_seq, submitted_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                name,
                gpus,
                priority,
                json.dumps(command) if command else None,
                json.dumps(env) if env else None,
                time_limit,
                idempotency_key,
                "pending",
                seq,
                submitted_at,
            ),
        )
        return int(cur.lastrowid or 0)  # an INSERT always sets it

    def save_job(self, job: ActiveJob, **extra: object) -> None:
        """Writes the job's mutable columns, plus ``extra`` (finished_at, reason, handle...)."""
        cols = {
            "state": job.state,
            "queue_seq": job.seq,
            "preemptions": job.preemptions,
            "runs": job.runs,
            "node": job.node,
            "gpu_uuids": json.dumps(list(job.uuids)),
            "gpu_indexes": json.dumps(list(job.indexes)),
            "started_at": job.started_at,
            "stop_reason": job.stop_reason,
            "stop_detail": job.stop_detail,
        }
        cols.update(extra)
        sets = ", ".join(f"{k}=?" for k in cols)
        self.db.conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*cols.values(), job.id))

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as the API shows it; ``NotFound`` if there is none."""
        with self.db.lock:
            r = self.db.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if r is None:
            raise NotFound(f"no job with id {job_id}", field="id")
        return job_row(r)

    def jobs(self, state: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        if state is not None and state not in JOB_STATES:
            raise InvalidRequest(f"state must be one of {', '.join(JOB_STATES)}", "state")
        q, args = "SELECT * FROM jobs", []
        if state:
            q += " WHERE state=?"
            args.append(state)
        q += " ORDER BY id LIMIT ? OFFSET ?"
        with self.db.lock:
            return [job_row(r) for r in self.db.conn.execute(q, (*args, limit, offset))]
