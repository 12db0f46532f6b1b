"""The predictor's migrations, carried out through the agent's scheduler port.

``PortMigrator.migrate`` calls ``port.preempt_gpu(uuid, reason, context)`` with an
``ActionContext("predictor", migration_id, gpu)``: the embedded scheduler (actor ``predictor``)
or Slurm (``scontrol requeue``), whichever port the agent built.

Why the migration id is persisted rather than derived: ``SlurmPort``'s requeue is not idempotent
by itself. It journals every command under the caller's ``(source, action_id)``, and when the
same key comes again it works on the plan it made the first time and repeats no command that
is done (a pending one is settled by asking Slurm). Remediation's key is its audit row. A
predictor migration needs as much: when a call fails half-way (the job requeued, its start-time
reset not done) or the agent is killed in the middle, the next run that migrates the GPU must
come back under the same key, or it would plan afresh, miss the job it requeued (no longer
RUNNING) and leave it held by Slurm. A key derived from the data (the GPU and the start of its
prediction episode) would need that start, which the service knows only in memory and loses
on a restart; so the id is a row of ``predictor_migrations`` (our table in the agent's
database), one per GPU and prediction episode:

- the first run that migrates a GPU opens a row (``pending``); its id is the ``action_id``;
- a run whose call raised (or was killed) leaves it open: the next run reuses it, after a
  restart too;
- a run that found nothing on the GPU (``[]``) leaves it open as well: the key stays while the
  GPU stays predicted (SlurmPort keeps no empty plan; it looks again each time);
- a run that moved jobs closes it ``moved`` with their ids; the service does not migrate the GPU
  again until its prediction clears, and the next episode opens a new row;
- a GPU whose prediction cleared has its open row closed ``cleared`` (``predicted``, after every
  good run), so a later episode never inherits an old plan.

Rows are one per episode that tried to migrate, so the table stays small.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from ..remediation.actuators import GpuRef
from ..remediation.port import PREDICTOR, ActionContext, SchedulerPort
from ..store import connect
from .health import GpuHealth

if TYPE_CHECKING:
    from ..store import Database

log = logging.getLogger(__name__)

COMPONENT = "predictor"

MIGRATIONS: list[str] = [
    """
    CREATE TABLE predictor_migrations (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL,
        reason TEXT NOT NULL,
        started_at REAL NOT NULL,
        outcome TEXT NOT NULL DEFAULT 'pending',
        jobs TEXT NOT NULL DEFAULT '[]',
        error TEXT NOT NULL DEFAULT '',
        finished_at REAL
    );
    CREATE INDEX predictor_migrations_open ON predictor_migrations(uuid)
        WHERE finished_at IS NULL;
    """,
]


class PortMigrator:
    """The predictor service's migrator in the agent (``service.Migrator``)."""

    def __init__(self, db: Database, port: SchedulerPort, clock: Callable[[], float] = time.time) -> None:
        db.migrate(COMPONENT, MIGRATIONS)
        self.port = port
        self.conn = connect(db.path, "NORMAL")
        self.lock = threading.Lock()
        self.clock = clock

    def migrate(self, gpu: GpuHealth, reason: str) -> list[int]:
        """Moves the GPU's jobs through the port; returns their ids ([] when none ran there)."""
        mid = self._open(gpu.uuid, reason)
        labels = {k: v for k, v in (("instance", gpu.instance), ("gpu", gpu.gpu)) if v}
        context = ActionContext(PREDICTOR, mid, GpuRef(gpu.uuid, gpu.gpu, gpu.instance, labels))
        try:
            jobs = [int(j) for j in self.port.preempt_gpu(gpu.uuid, reason, context)]
        except Exception as exc:
            with self.lock:
                self.conn.execute(
                    "UPDATE predictor_migrations SET error = ? WHERE id = ?",
                    ((str(exc) or type(exc).__name__)[-2000:], mid),
                )
            raise
        if jobs:
            with self.lock:
                self.conn.execute(
                    "UPDATE predictor_migrations SET outcome = 'moved', jobs = ?, "
                    "error = '', finished_at = ? WHERE id = ?",
                    (json.dumps(jobs), self.clock(), mid),
                )
        return jobs

    def predicted(self, uuids: AbstractSet[str]) -> None:
        """The GPUs predicted now: the open migration of any other GPU ends (``cleared``)."""
        with self.lock:
            rows = self.conn.execute("SELECT id, uuid FROM predictor_migrations WHERE finished_at IS NULL").fetchall()
            done = [r["id"] for r in rows if r["uuid"] not in uuids]
            for mid in done:
                self.conn.execute(
                    "UPDATE predictor_migrations SET outcome = 'cleared', finished_at = ? WHERE id = ?",
                    (self.clock(), mid),
                )

    def rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The ledger, newest first (for tests and debugging)."""
        with self.lock:
            rows = self.conn.execute("SELECT * FROM predictor_migrations ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{**dict(r), "jobs": json.loads(r["jobs"])} for r in rows]

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _open(self, uuid: str, reason: str) -> int:
        """The GPU's open migration (this episode's), or a new one."""
        with self.lock:
            row = self.conn.execute(
                "SELECT id FROM predictor_migrations WHERE uuid = ? AND finished_at IS NULL ORDER BY id LIMIT 1",
                (uuid,),
            ).fetchone()
            if row is not None:
                return int(row["id"])
            cur = self.conn.execute(
                "INSERT INTO predictor_migrations (uuid, reason, started_at) VALUES (?, ?, ?)",
                (uuid, reason, self.clock()),
            )
            assert cur.lastrowid is not None
            log.debug("predictor: migration %s opened for %s", cur.lastrowid, uuid)
            return cur.lastrowid
