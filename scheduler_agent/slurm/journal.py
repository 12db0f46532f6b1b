"""``slurm_commands``: every command that changes Slurm, before and after it runs.

A row is written ``pending`` (with what the decision was based on, e.g. the job's ``Restarts``
count before a requeue) before the command runs and completed ``ok``/``failed`` after, with the
attempts, exit status and Slurm's words. Rows carry the key of the action they belong to
(``Key``: ``(source, action_id)``, from the port's ``ActionContext``: a remediation audit row,
or a predictor migration), so an action repeated after a kill finds what it already did and
repeats no command: an ``ok`` row is skipped, and a ``pending`` row (killed mid-command) is
settled by asking Slurm whether the effect is there. Commands done for no action (an
operator's release through the API) have no key and are never matched. Failures after every
retry stay here and in the caller's record (the remediation audit entry, the predictor's
migration row: both keep the ``SlurmError``).

Our own SQLite connection to the agent's file (component ``slurm`` in ``schema_migrations``),
from the agent's one connection factory (``scheduler_agent.store.connect``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..store import connect

if TYPE_CHECKING:
    from ..store import Database

COMPONENT = "slurm"

MIGRATIONS: list[str] = [
    """
    CREATE TABLE slurm_commands (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        action_id INTEGER,
        op TEXT NOT NULL,
        target TEXT NOT NULL,
        argv TEXT NOT NULL,
        before TEXT NOT NULL DEFAULT '{}',
        outcome TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        rc INTEGER,
        output TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL DEFAULT '',
        finished_at REAL
    );
    CREATE INDEX slurm_commands_action ON slurm_commands(action_id, op, target);
    CREATE TABLE slurm_plans (
        action_id INTEGER NOT NULL,
        op TEXT NOT NULL,
        plan TEXT NOT NULL,
        PRIMARY KEY (action_id, op)
    );
    """,
    # v2: keys are (source, action_id), so that the predictor's migration ids and remediation's
    # audit ids (both counted from 1) never meet. Rows before it were remediation's.
    """
    ALTER TABLE slurm_commands ADD COLUMN source TEXT;
    UPDATE slurm_commands SET source = 'remediation' WHERE action_id IS NOT NULL;
    DROP INDEX slurm_commands_action;
    CREATE INDEX slurm_commands_action ON slurm_commands(source, action_id, op, target);
    CREATE TABLE slurm_plans_v2 (
        source TEXT NOT NULL,
        action_id INTEGER NOT NULL,
        op TEXT NOT NULL,
        plan TEXT NOT NULL,
        PRIMARY KEY (source, action_id, op)
    );
    INSERT INTO slurm_plans_v2 SELECT 'remediation', action_id, op, plan FROM slurm_plans;
    DROP TABLE slurm_plans;
    ALTER TABLE slurm_plans_v2 RENAME TO slurm_plans;
    """,
]

# (ActionContext.source, ActionContext.action_id): the action a command was run for.
Key = tuple[str, int]

OUTCOMES = ("pending", "ok", "failed", "skipped")


class Journal:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        db.migrate(COMPONENT, MIGRATIONS)
        self.conn = connect(db.path, "NORMAL")
        self.lock = threading.Lock()
        self.clock = clock

    def close(self) -> None:
        self.conn.close()

    def begin(
        self, key: Key | None, op: str, target: str, argv: list[str], before: dict[str, Any] | None = None
    ) -> int:
        source, action_id = key if key is not None else (None, None)
        with self.lock:
            cur = self.conn.execute(
                "INSERT INTO slurm_commands (at, source, action_id, op, target, argv, before, "
                "outcome) VALUES (?,?,?,?,?,?,?,'pending')",
                (self.clock(), source, action_id, op, target, json.dumps(argv), json.dumps(before or {})),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def finish(self, row: int, outcome: str, attempts: int, rc: int | None, output: str = "", error: str = "") -> None:
        assert outcome in OUTCOMES
        with self.lock:
            self.conn.execute(
                "UPDATE slurm_commands SET outcome=?, attempts=?, rc=?, output=?, error=?, finished_at=? WHERE id=?",
                (outcome, attempts, rc, output[-2000:], error[-2000:], self.clock(), row),
            )

    def previous(self, key: Key | None, op: str, target: str) -> sqlite3.Row | None:
        """The latest row of this action for (op, target) that is done or may be (pending)."""
        if key is None:
            return None
        with self.lock:
            row: sqlite3.Row | None = self.conn.execute(
                "SELECT * FROM slurm_commands WHERE source=? AND action_id=? AND op=? AND "
                "target=? AND outcome IN ('ok', 'pending', 'skipped') ORDER BY id DESC LIMIT 1",
                (*key, op, target),
            ).fetchone()
            return row

    def plan(self, key: Key | None, op: str, make: Callable[[], Any]) -> Any:
        """The plan this action made before (e.g. which jobs to requeue), or ``make()``'s,
        stored now: a repeated action works on what it decided the first time. An empty plan
        is not stored (nothing was done under it): a repeat looks again, so a predictor
        migration that found the GPU idle finds the job placed there since under the same key."""
        if key is None:
            return make()
        with self.lock:
            row = self.conn.execute(
                "SELECT plan FROM slurm_plans WHERE source=? AND action_id=? AND op=?", (*key, op)
            ).fetchone()
        if row is not None:
            return json.loads(row[0])
        value = make()
        if value:
            with self.lock:
                self.conn.execute(
                    "INSERT OR IGNORE INTO slurm_plans (source, action_id, op, plan) VALUES (?,?,?,?)",
                    (*key, op, json.dumps(value)),
                )
        return value

    def rows(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.conn.execute("SELECT * FROM slurm_commands ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["argv"] = json.loads(d["argv"])
            d["before"] = json.loads(d["before"])
            out.append(d)
        return out
