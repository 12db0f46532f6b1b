"""Remediation's tables in the agent's SQLite file, and its versioned migrations.

Every component of the agent owns its tables and records its migrations in the shared table
``schema_migrations(component, version)``; ours are component ``remediation``. The tables:

- ``remediation_notifications``: one row per accepted webhook delivery (what was received,
  ``truncatedAlerts`` included), kept for the audit.
- ``remediation_events``: the inbox. One row per alert instance and status, unique on
  (fingerprint, starts_at, status): however often Alertmanager (or both of an HA pair) delivers
  the same instance, it is inserted once and acted on once. ``processed_at`` NULL = not done yet;
  the worker resumes such rows after a restart.
- ``remediation_actions``: the audit trail, one row per decision. A row written as ``pending``
  before a side effect and completed after it is how a kill during an action is resumed exactly
  once (the side effects are idempotent: they set a recorded value, they do not adjust one).
- ``remediation_throttles``: GPUs we lowered, with the limit to restore and the alert instances
  still holding the throttle.
- ``remediation_breaker``: the budget's circuit breaker (one row); it survives restarts, so an
  open breaker stays open until a person resets it.

The intake's commits are durable: WAL with ``synchronous=FULL`` fsyncs the log on every commit,
so a 202 is only sent for a notification that survives power loss. The worker commits with
``synchronous=NORMAL`` (see ``connect``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..store import Database

COMPONENT = "remediation"

MIGRATIONS: list[str] = [
    # 1: inbox, audit, throttles, breaker.
    """
    CREATE TABLE remediation_notifications (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,
        receiver TEXT NOT NULL,
        group_key TEXT NOT NULL,
        status TEXT NOT NULL,
        alert_count INTEGER NOT NULL,
        new_events INTEGER NOT NULL,
        truncated_alerts INTEGER NOT NULL,
        external_url TEXT NOT NULL
    );
    CREATE TABLE remediation_events (
        id INTEGER PRIMARY KEY,
        notification_id INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        ends_at TEXT NOT NULL,
        status TEXT NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        action TEXT NOT NULL,
        uuid TEXT NOT NULL,
        gpu TEXT NOT NULL,
        instance TEXT NOT NULL,
        labels TEXT NOT NULL,
        received_at REAL NOT NULL,
        deliveries INTEGER NOT NULL DEFAULT 1,
        processed_at REAL,
        UNIQUE (fingerprint, starts_at, status)
    );
    CREATE INDEX remediation_events_unprocessed ON remediation_events(id)
        WHERE processed_at IS NULL;
    CREATE TABLE remediation_actions (
        id INTEGER PRIMARY KEY,
        event_id INTEGER,
        at REAL NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        uuid TEXT NOT NULL,
        instance TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        trace_id TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX remediation_actions_event ON remediation_actions(event_id);
    CREATE INDEX remediation_actions_uuid_at ON remediation_actions(uuid, at);
    CREATE INDEX remediation_actions_at ON remediation_actions(at);
    CREATE TABLE remediation_throttles (
        uuid TEXT PRIMARY KEY,
        gpu TEXT NOT NULL,
        instance TEXT NOT NULL,
        previous_watts REAL NOT NULL,
        applied_watts REAL NOT NULL,
        since REAL NOT NULL,
        holders TEXT NOT NULL,
        restore_after REAL
    );
    CREATE TABLE remediation_breaker (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL,
        opened_at REAL,
        reason TEXT NOT NULL DEFAULT '',
        reset_at REAL,
        reset_by TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO remediation_breaker (id, state) VALUES (1, 'closed');
    """,
]


def connect(path: Path | str, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection set up the way remediation's connections must be: WAL, a busy timeout (the
    scheduler writes to the same file), transactions by explicit BEGIN (``isolation_level=None``).

    ``synchronous``: FULL (the intake: fsync on every commit, so a 202 survives power loss) or
    NORMAL (the worker: a kill -9 loses nothing, a power cut may lose the last decisions, whose
    alerts are then still unprocessed and are decided again; their actions are idempotent).
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def migrate(db: "Database") -> int:
    """Applies our migrations through the agent's shared ``Database.migrate`` seam."""
    return db.migrate(COMPONENT, MIGRATIONS)


def transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], object],
                immediate: bool = True) -> object:
    """Runs ``body`` inside BEGIN IMMEDIATE ... COMMIT (rolled back on any error)."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result
