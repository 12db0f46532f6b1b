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
- ``remediation_throttles``: GPUs we lowered, with the limit to restore, the labels of the alert
  that lowered it (its restore renders the same command), the alert instances still holding the
  throttle, and when (and, for an operator's restore, why) the limit is to be restored.
- ``remediation_breaker``: the budget's circuit breaker (one row); it survives restarts, so an
  open breaker stays open until a person resets it.

- ``remediation_counters``: what the metrics report (alerts triggered, actions, deliveries,
  notifications, active alerts), kept by triggers as rows are written, so a scrape reads a few
  rows instead of counting every event, and counters never go back when old rows are pruned.
  Their ``rule``/``severity``/``action`` labels are only values the agent knows
  (``remediation_label_values``: the shipped rules, their severities, the actions); anything
  else is counted under ``other``, so made-up label values cannot create metric series.

The intake's commits are durable: WAL with ``synchronous=FULL`` fsyncs the log on every commit,
so a 202 is only sent for a notification that survives power loss. The worker commits with
``synchronous=NORMAL`` (see ``connect``).

Retention (``database.retention``, ``prune``): accepted alerts and actions older than
``max_age`` are deleted in small batches, one short transaction each, never an alert not yet
processed (nor one still firing: its row is what makes a re-delivery a duplicate), never a
pending action, and never the actions of a throttle still held or a quarantine still in force.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .. import store as agent_store

if TYPE_CHECKING:
    from ..store import Database

log = logging.getLogger(__name__)

OTHER = "other"
KNOWN_ACTIONS = ("notify", "throttle", "preempt", "quarantine", "restore")
KNOWN_SEVERITIES = ("critical", "warning", "info")
COMPONENT = "remediation"

MIGRATIONS: list[agent_store.Migration] = [
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


# 2: counters kept by triggers (bounded labels), for metrics that do not scan the tables.
_V2_TABLES = """
CREATE TABLE remediation_label_values (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE remediation_counters (
    name TEXT NOT NULL,
    a TEXT NOT NULL DEFAULT '',
    b TEXT NOT NULL DEFAULT '',
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, a, b)
) WITHOUT ROWID;
"""


def _bounded(column: str, kind: str) -> str:
    return (
        f"(CASE WHEN EXISTS (SELECT 1 FROM remediation_label_values WHERE kind = '{kind}' "
        f"AND value = {column}) THEN {column} ELSE '{OTHER}' END)"
    )


def _bump(name: str, a: str = "''", b: str = "''", by: str = "1") -> str:
    return (
        f"INSERT INTO remediation_counters (name, a, b, value) VALUES ('{name}', {a}, {b}, "
        f"{by}) ON CONFLICT (name, a, b) DO UPDATE SET value = value + excluded.value;"
    )


_RESOLVED_OF = (
    "SELECT 1 FROM remediation_events r WHERE r.fingerprint = {e}.fingerprint AND "
    "r.starts_at = {e}.starts_at AND r.status = 'resolved'"
)
_FIRING_OF = (
    "SELECT 1 FROM remediation_events f WHERE f.fingerprint = {e}.fingerprint AND "
    "f.starts_at = {e}.starts_at AND f.status = 'firing'"
)

_V2_TRIGGERS = f"""
CREATE TRIGGER remediation_events_counted AFTER INSERT ON remediation_events BEGIN
    {_bump("alert_deliveries", by="NEW.deliveries")}
END;
CREATE TRIGGER remediation_events_triggered AFTER INSERT ON remediation_events
WHEN NEW.status = 'firing' BEGIN
    {_bump("alerts_triggered", _bounded("NEW.rule", "rule"), _bounded("NEW.severity", "severity"))}
END;
CREATE TRIGGER remediation_events_active_firing AFTER INSERT ON remediation_events
WHEN NEW.status = 'firing' AND NOT EXISTS ({_RESOLVED_OF.format(e="NEW")}) BEGIN
    {_bump("alerts_active")}
END;
CREATE TRIGGER remediation_events_active_resolved AFTER INSERT ON remediation_events
WHEN NEW.status = 'resolved' AND EXISTS ({_FIRING_OF.format(e="NEW")}) BEGIN
    {_bump("alerts_active", by="-1")}
END;
CREATE TRIGGER remediation_events_redelivered AFTER UPDATE OF deliveries ON remediation_events
WHEN NEW.deliveries IS NOT OLD.deliveries BEGIN
    {_bump("alert_deliveries", by="NEW.deliveries - OLD.deliveries")}
END;
CREATE TRIGGER remediation_events_deleted_firing AFTER DELETE ON remediation_events
WHEN OLD.status = 'firing' AND NOT EXISTS ({_RESOLVED_OF.format(e="OLD")}) BEGIN
    {_bump("alerts_active", by="-1")}
END;
CREATE TRIGGER remediation_events_deleted_resolved AFTER DELETE ON remediation_events
WHEN OLD.status = 'resolved' AND EXISTS ({_FIRING_OF.format(e="OLD")}) BEGIN
    {_bump("alerts_active")}
END;
CREATE TRIGGER remediation_notifications_counted AFTER INSERT ON remediation_notifications BEGIN
    {_bump("notifications")}
    {_bump("truncated_alerts", by="NEW.truncated_alerts")}
END;
CREATE TRIGGER remediation_actions_counted AFTER INSERT ON remediation_actions BEGIN
    {_bump("actions", _bounded("NEW.action", "action"), "NEW.outcome")}
END;
CREATE TRIGGER remediation_actions_recounted AFTER UPDATE OF action, outcome ON remediation_actions
WHEN NEW.action IS NOT OLD.action OR NEW.outcome IS NOT OLD.outcome BEGIN
    {_bump("actions", _bounded("OLD.action", "action"), "OLD.outcome", "-1")}
    {_bump("actions", _bounded("NEW.action", "action"), "NEW.outcome")}
END;
"""


def known_label_values() -> dict[str, set[str]]:
    """The label values metrics may carry: rule ids of the shipped thresholds (alerts,
    forecasts, monitoring-health rules), their severities, and the actions."""
    rules: set[str] = set()
    severities: set[str] = set(KNOWN_SEVERITIES)
    try:
        from gpuwarden.rules import config as rules_config

        cfg = rules_config.load()
        for group in (cfg.alerts, cfg.forecasts, cfg.monitoring):
            rules.update(group)
        for a in cfg.all_alerts():
            rules.add(a.rule)
            if getattr(a, "severity", None):
                severities.add(str(a.severity))
    except Exception as exc:  # noqa: BLE001 - metrics must not stop the agent from starting
        log.warning(
            "the shipped rules could not be read",
            extra={
                "event": "remediation.rules_unreadable",
                "error": str(exc),
                "hint": "alerts of unknown rules are counted as 'other'",
            },
        )
    return {"rule": rules, "severity": severities, "action": set(KNOWN_ACTIONS)}


def set_label_values(conn: sqlite3.Connection, values: Mapping[str, Iterable[str]] | None = None) -> None:
    """Adds the known label values (inside the caller's transaction). Values are only ever
    added: a counter already kept under a value stays meaningful."""
    values = known_label_values() if values is None else values
    conn.executemany(
        "INSERT OR IGNORE INTO remediation_label_values (kind, value) VALUES (?, ?)",
        [(kind, v) for kind, vs in values.items() for v in vs],
    )


def _migration_v2(conn: sqlite3.Connection) -> None:
    for stmt in agent_store._statements(_V2_TABLES):
        conn.execute(stmt)
    set_label_values(conn)
    # Seed the counters from what is stored now, then let the triggers keep them.
    conn.execute(f"""
        INSERT INTO remediation_counters (name, a, b, value)
        SELECT 'alerts_triggered', rule, severity, count(*) FROM (
            SELECT {_bounded("rule", "rule")} AS rule, {_bounded("severity", "severity")}
                AS severity FROM remediation_events WHERE status = 'firing')
        GROUP BY rule, severity""")
    conn.execute(f"""
        INSERT INTO remediation_counters (name, a, b, value)
        SELECT 'actions', action, outcome, count(*) FROM (
            SELECT {_bounded("action", "action")} AS action, outcome FROM remediation_actions)
        GROUP BY action, outcome""")
    conn.execute(f"""
        INSERT INTO remediation_counters (name, value) VALUES
        ('alerts_active', (SELECT count(*) FROM remediation_events e WHERE e.status = 'firing'
                           AND NOT EXISTS ({_RESOLVED_OF.format(e="e")}))),
        ('alert_deliveries', (SELECT coalesce(sum(deliveries), 0) FROM remediation_events)),
        ('notifications', (SELECT count(*) FROM remediation_notifications)),
        ('truncated_alerts', (SELECT coalesce(sum(truncated_alerts), 0)
                              FROM remediation_notifications))""")
    # Triggers are created one by one (each holds several statements).
    for trigger in _V2_TRIGGERS.split("\nCREATE TRIGGER ")[1:]:
        conn.execute("CREATE TRIGGER " + trigger.strip())


MIGRATIONS.append(_migration_v2)
# v3: a throttle keeps the labels of the alert that lowered the limit, so that its restore renders
# the same command (a set_command naming ``{node}`` had no value for it at restore time); and why
# a restore is due when it is not the usual hold-down (an operator asked for it).
MIGRATIONS.append("""
ALTER TABLE remediation_throttles ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE remediation_throttles ADD COLUMN restore_reason TEXT NOT NULL DEFAULT ''
""")


def connect(path: Path | str, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection to the agent's file from the agent's one factory (``scheduler_agent.store.
    connect``: WAL, foreign keys, busy timeout, explicit BEGIN, file created 0600).

    ``synchronous``: FULL (the intake: fsync on every commit, so a 202 survives power loss) or
    NORMAL (the worker: a kill -9 loses nothing, a power cut may lose the last decisions, whose
    alerts are then still unprocessed and are decided again; their actions are idempotent).
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    return agent_store.connect(path, synchronous)


def migrate(db: Database) -> int:
    """Applies our migrations through the agent's shared ``Database.migrate`` seam, and adds
    label values this build knows that the file does not yet (new rules)."""
    version = db.migrate(COMPONENT, MIGRATIONS)
    with db.transaction() as c:
        set_label_values(c)
    return version


def transaction(
    conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], object], immediate: bool = True
) -> object:
    """Runs ``body`` inside BEGIN IMMEDIATE ... COMMIT, rolled back on any error; the error
    raised is the one that happened (SQLITE_FULL as ``DatabaseFull``, "database full: ..."),
    never the failed ROLLBACK of a transaction SQLite had already rolled back."""
    return agent_store.run_in_transaction(conn, body, "BEGIN IMMEDIATE" if immediate else "BEGIN")


def counters(conn: sqlite3.Connection) -> dict[str, list[tuple[str, str, int]]]:
    """The metrics' counters: {name: [(a, b, value), ...]} (a few rows, no table scan)."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    for name, a, b, value in conn.execute("SELECT name, a, b, value FROM remediation_counters"):
        out.setdefault(name, []).append((a, b, int(value)))
    return out


# -- retention --------------------------------------------------------------------------------

# Events of alert instances that are over: both rows (firing and resolved) processed and old.
# Whole instances go together, so a firing row is never left without its resolved row (which
# would make it look active again). ``fingerprint, starts_at`` pairs, not ids, are selected.
_OLD_INSTANCES = """
SELECT r.fingerprint, r.starts_at FROM remediation_events r
WHERE r.status = 'resolved' AND r.processed_at IS NOT NULL AND r.received_at < :cutoff
  AND NOT EXISTS (SELECT 1 FROM remediation_events o WHERE o.fingerprint = r.fingerprint
                  AND o.starts_at = r.starts_at
                  AND (o.processed_at IS NULL OR o.received_at >= :cutoff))
ORDER BY r.id LIMIT :limit
"""

_OLD_ACTIONS = """
SELECT a.id FROM remediation_actions a
WHERE a.at < :cutoff AND a.outcome != 'pending'
  AND NOT (a.action IN ('throttle', 'restore')
           AND a.uuid IN (SELECT uuid FROM remediation_throttles))
  AND NOT (a.action = 'quarantine' AND a.uuid IN (SELECT value FROM json_each(:quarantined)))
ORDER BY a.at LIMIT :limit
"""


def prune(
    conn: sqlite3.Connection,
    cutoff: float,
    quarantined: Iterable[str] = (),
    batch: int = 500,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Deletes what is older than ``cutoff`` (epoch seconds), ``batch`` rows per transaction.

    Kept whatever its age: alert instances not processed yet or not resolved, pending
    actions, throttle/restore actions of a GPU whose throttle is still held
    (``remediation_throttles``), and quarantine actions of the GPUs in ``quarantined`` (the
    fleet's quarantined GPUs). Returns the rows deleted per table and ``done`` (0 when
    ``should_stop`` interrupted it: call again later).
    """
    batch = max(1, int(batch))
    q = json.dumps(sorted(set(quarantined)))
    deleted = {"remediation_events": 0, "remediation_notifications": 0, "remediation_actions": 0, "done": 1}

    def events(c: sqlite3.Connection) -> int:
        keys = c.execute(_OLD_INSTANCES, {"cutoff": cutoff, "limit": max(1, batch // 2)}).fetchall()
        n = 0
        for fp, starts_at in keys:
            n += c.execute(
                "DELETE FROM remediation_events WHERE fingerprint = ? AND starts_at = ?", (fp, starts_at)
            ).rowcount
        return n if keys else -1

    def notifications(c: sqlite3.Connection) -> int:
        n = c.execute(
            "DELETE FROM remediation_notifications WHERE id IN (SELECT id FROM "
            "remediation_notifications WHERE received_at < ? ORDER BY id LIMIT ?)",
            (cutoff, batch),
        ).rowcount
        return n if n else -1

    def actions(c: sqlite3.Connection) -> int:
        ids = [r[0] for r in c.execute(_OLD_ACTIONS, {"cutoff": cutoff, "quarantined": q, "limit": batch})]
        c.executemany("DELETE FROM remediation_actions WHERE id = ?", [(i,) for i in ids])
        return len(ids) if ids else -1

    for table, step in (
        ("remediation_events", events),
        ("remediation_notifications", notifications),
        ("remediation_actions", actions),
    ):
        while True:
            if should_stop is not None and should_stop():
                deleted["done"] = 0
                return deleted
            n = transaction(conn, step)
            assert isinstance(n, int)
            if n < 0:
                break
            deleted[table] += n
    return deleted
